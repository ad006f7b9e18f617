# sops-enclave: `make demo` and `make test` do all the set-up on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean install reproduce fuzz

$(STAMP): setup.cfg setup.py pyproject.toml
	@command -v gpg >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq gnupg >/dev/null)
	@command -v ssh-keygen >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq openssh-client >/dev/null)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python fixtures/demo.py

# Files mypy checks, strictly (setup.cfg gives these modules the flags of --strict): the core,
# the in-enclave program, receipts, the enclave policy and what it verifies (the rest is typed
# in part; see issue #16).
MYPY_FILES := sops_enclave/receipt enclave/executor.py enclave/app.py enclave/nsm.py \
	enclave/kms_forwarder.py sops_enclave/tree.py sops_enclave/cipher.py sops_enclave/walk.py \
	sops_enclave/merge.py sops_enclave/shamir.py sops_enclave/goregex.py sops_enclave/goformat.py \
	sops_enclave/errors.py sops_enclave/formats sops_enclave/pack/enclave_policy.py \
	sops_enclave/pack/sshsig.py sops_enclave/pack/gitobjects.py sops_enclave/pack/manifest.py \
	sops_enclave/cms.py sops_enclave/rpc.py sops_enclave/record.py

lint: $(STAMP)
	$(BIN)/python -m ruff check sops_enclave enclave tests fixtures bench
	$(BIN)/python -m mypy $(MYPY_FILES)

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/run.py --write-readme

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis

include Makefile.reproduce

fuzz: $(STAMP)
	bash fuzz/run.sh $(or $(FUZZ_SECONDS),60)
