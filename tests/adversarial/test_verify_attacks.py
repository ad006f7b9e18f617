"""The receipt forger and the hostile host against `sops-enclave verify` (issue #12).

Each test plays an attacker who holds genuine receipts (or the host's power to choose the
commit and the strings it asserts) and tries to make `verify` accept something it should
not, or to make its output lie:

1. a receipt copied next to another output (or reached through a symbolic link);
2. a PCR policy that pins no image (PCR1 alone, PCR3 alone), on the command line or in a
   policy file;
3. a commit that no branch holds, a branch other than the one the auditor names, and a
   rollback to an older signed commit;
4. control characters and bidi overrides in receipt strings, printed before the signature
   is checked or printed raw afterwards.

The receipts come from the software NSM (a dev CA in a temporary directory) and are
UNRESTRICTED dev receipts, so every accepted run passes ``--allow-dev
--allow-unrestricted``: what is attacked here is each check, not the dev gate.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from sops_enclave.devtools.nsm_soft import SoftNSM, measure_bundle
from sops_enclave.errors import ConfigError, ConflictingParameters, SopsError
from sops_enclave.receipt import (
    InputRecord, PCRPolicy, ReceiptError, ReceiptFacts, ReceiptPolicy, build_receipt,
    verify_receipt)
from sops_enclave.receipt.cli import register
from sops_enclave.receipt.dsse import Envelope

UTC = timezone.utc
MANIFEST = ".sops-enclave.yaml"
INPUT = "secrets/prod.enc.yaml"
PROD = "deploy/api/prod.enc.json"
STAGING = "deploy/api/staging.enc.json"
PROD_OUT = b'{"token":"ENC[AES256_GCM,data:prod,iv:1]","sops":{"version":"3.11.0"}}\n'
STAGING_OUT = b'{"token":"ENC[AES256_GCM,data:stg,iv:2]","sops":{"version":"3.11.0"}}\n'
OLD_TIME = "2024-01-01T00:00:00+00:00"
MAIN_TIME = "2025-01-01T00:00:00+00:00"
LATER_TIME = "2025-02-01T00:00:00+00:00"


# ------------------------------------------------------------------------------ the world

def _git(repo: Path, *args: str, when: str = MAIN_TIME, stdin: bytes | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_AUTHOR_NAME="dev", GIT_AUTHOR_EMAIL="dev@example.invalid",
               GIT_COMMITTER_NAME="dev", GIT_COMMITTER_EMAIL="dev@example.invalid",
               GIT_AUTHOR_DATE=when, GIT_COMMITTER_DATE=when, GIT_CONFIG_NOSYSTEM="1",
               HOME=str(repo))
    return subprocess.run(["git", "-C", str(repo), *args], env=env, check=True,
                          capture_output=True, input=stdin).stdout.decode().strip()


def _commit(repo: Path, content: bytes, message: str, when: str) -> str:
    (repo / INPUT).write_bytes(content)
    _git(repo, "add", "-A", when=when)
    _git(repo, "commit", "-qm", message, when=when)
    return _git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path) -> dict[str, object]:
    """A repository with history: ``old`` (2024, on main), ``main`` (2025, the tip of
    main), ``side`` (on branch ``attacker`` only) and ``dangling`` (held by no ref)."""
    if not shutil.which("git"):
        pytest.skip("git is not installed")
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q", "-b", "main")
    (root / "secrets").mkdir()
    (root / MANIFEST).write_bytes(b"version: 1\n")
    old = _commit(root, b"token: ENC[AES256_GCM,data:v1,iv:a]\n", "old secrets", OLD_TIME)
    main = _commit(root, b"token: ENC[AES256_GCM,data:v2,iv:b]\n", "new secrets", MAIN_TIME)
    _git(root, "checkout", "-qb", "attacker")
    side = _commit(root, b"token: ENC[AES256_GCM,data:evil,iv:c]\n", "side", LATER_TIME)
    _git(root, "checkout", "-q", "main")
    # A commit object nobody merged: the host made it up for one run and never pushed it.
    dangling = _git(root, "commit-tree", f"{side}^{{tree}}", "-p", main, "-m", "made up",
                    when=LATER_TIME)
    _git(root, "checkout", "-q", "main")
    return {"root": root, "old": old, "main": main, "side": side, "dangling": dangling}


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dev-ca") / "ca"


@pytest.fixture(scope="module")
def genuine(ca_dir) -> SoftNSM:
    return SoftNSM(ca_dir, pcrs=measure_bundle({"enclave/app.py": b"serve()\n"}))


@pytest.fixture(scope="module")
def evil(ca_dir) -> SoftNSM:
    """Another image (one changed line) under the same root: same PCR1, other PCR0/2."""
    return SoftNSM(ca_dir, pcrs=measure_bundle({"enclave/app.py": b"serve(); leak()\n"}))


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _facts(repo: dict, commit_name: str, output_name: str, *,
           repository: str = "git+https://example.invalid/org/secrets",
           target: str = "api/prod") -> ReceiptFacts:
    root, commit = repo["root"], repo[commit_name]
    blob = _git(root, "rev-parse", f"{commit}:{INPUT}")
    content = subprocess.run(["git", "-C", str(root), "cat-file", "blob", blob],
                             check=True, capture_output=True).stdout
    now = datetime(2025, 3, 1, tzinfo=UTC)
    return ReceiptFacts(
        output_name=output_name, repository=repository, commit=commit,
        manifest_path=MANIFEST, manifest_blob=_git(root, "rev-parse", f"{commit}:{MANIFEST}"),
        target=target, inputs=[InputRecord(INPUT, blob, hashlib.sha256(content).hexdigest())],
        started_on=now, finished_on=now)


def _place(repo: dict, name: str, output: bytes, receipt: bytes) -> Path:
    path = repo["root"] / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(output)
    Path(str(path) + ".receipt.json").write_bytes(receipt)
    return path


def _pcrs(nsm: SoftNSM, *indexes: int) -> list[str]:
    return [a for i in indexes for a in ("--pcr", f"{i}={nsm.describe_pcr(i).data.hex()}")]


def _verify(argv: list[str], monkeypatch, ca_dir) -> tuple[int, str]:
    """Run ``sops-enclave verify`` in-process: (exit code, stdout), or (the error's exit
    code, its message) for a usage error, as the CLI would print it on stderr."""
    monkeypatch.setenv("SOPS_ENCLAVE_DEV_CA_DIR", str(ca_dir))
    p = argparse.ArgumentParser()
    register(p.add_subparsers())
    args = p.parse_args(["verify", *argv])
    out = io.StringIO()
    try:
        return args.func(args, out=out), out.getvalue()
    except SopsError as e:
        assert not out.getvalue(), "a refused invocation prints no check lines"
        return e.exit_code, str(e)


DEV = ["--allow-dev", "--allow-unrestricted"]


# ------------------------------------------------------------------------------ 1. the path

def test_prod_receipt_copied_over_staging_is_refused(repo, genuine, key, monkeypatch, ca_dir):
    prod_receipt = build_receipt(_facts(repo, "main", PROD), PROD_OUT, signing_key=key,
                                 nsm=genuine)
    prod = _place(repo, PROD, PROD_OUT, prod_receipt)
    # Control: the genuine pair verifies, by the work tree and by --repo.
    rc, out = _verify([str(prod), *_pcrs(genuine, 0, 1, 2), *DEV], monkeypatch, ca_dir)
    assert rc == 0, out
    rc, out = _verify([str(prod), *_pcrs(genuine, 0, 1, 2), *DEV, "--repo", str(repo["root"])],
                      monkeypatch, ca_dir)
    assert rc == 0, out
    # The attack: prod's output and receipt copied to staging's place. Digest and
    # signature are genuine; only the path gives it away.
    staging = _place(repo, STAGING, PROD_OUT, prod_receipt)
    for extra in ([], ["--repo", str(repo["root"])]):
        rc, out = _verify([str(staging), *_pcrs(genuine, 0, 1, 2), *DEV, *extra],
                          monkeypatch, ca_dir)
        lines = out.splitlines()
        assert rc == 1, out
        assert lines[5].startswith("[6] subject") and "FAILED" in lines[5]
        assert f"the receipt is for {PROD}, not for {STAGING}" in lines[5]
        assert lines[-1].startswith("receipt NOT verified (dev): check [6] subject")
    # The library refuses it the same way.
    with pytest.raises(ReceiptError) as e:
        verify_receipt(prod_receipt, PROD_OUT,
                       ReceiptPolicy(pcrs=PCRPolicy([{0: genuine.describe_pcr(0).data}]),
                                     dev_root_fingerprint=genuine.root_fingerprint),
                       allow_dev=True, allow_unrestricted=True, expected_subject=STAGING)
    assert e.value.step == 6 and STAGING in e.value.reason


def test_subject_override_is_explicit_and_printed(repo, genuine, key, monkeypatch, ca_dir,
                                                  tmp_path):
    receipt = build_receipt(_facts(repo, "main", PROD), PROD_OUT, signing_key=key, nsm=genuine)
    moved = tmp_path / "artifacts" / "prod.enc.json"      # downloaded, outside any work tree
    moved.parent.mkdir()
    moved.write_bytes(PROD_OUT)
    Path(str(moved) + ".receipt.json").write_bytes(receipt)
    rc, msg = _verify([str(moved), *_pcrs(genuine, 0), *DEV], monkeypatch, ca_dir)
    assert rc == ConflictingParameters.exit_code
    assert "--subject NAME" in msg and "--repo DIR" in msg and "not inside a git" in msg
    rc, out = _verify([str(moved), *_pcrs(genuine, 0), *DEV, "--subject", PROD],
                      monkeypatch, ca_dir)
    assert rc == 0, out
    assert f"given with --subject: {PROD}" in out
    rc, out = _verify([str(moved), *_pcrs(genuine, 0), *DEV, "--subject", STAGING],
                      monkeypatch, ca_dir)
    assert rc == 1 and "[6] subject" in out and "FAILED" in out
    # --repo names the root: an output outside it is refused, not guessed.
    rc, msg = _verify([str(moved), *_pcrs(genuine, 0), *DEV, "--repo", str(repo["root"])],
                      monkeypatch, ca_dir)
    assert rc == ConflictingParameters.exit_code and "not inside the repository" in msg


@pytest.mark.parametrize("link", ["file", "directory"])
def test_symlink_to_the_prod_output_is_refused(repo, genuine, key, monkeypatch, ca_dir, link):
    receipt = build_receipt(_facts(repo, "main", PROD), PROD_OUT, signing_key=key, nsm=genuine)
    prod = _place(repo, PROD, PROD_OUT, receipt)
    if link == "file":
        victim = repo["root"] / STAGING
        victim.symlink_to(prod.name)
        Path(str(victim) + ".receipt.json").write_bytes(receipt)
    else:   # deploy/staging -> deploy/api: deploy/staging/prod.enc.json "is" deploy/api/...
        (repo["root"] / "deploy" / "staging").symlink_to("api")
        victim = repo["root"] / "deploy" / "staging" / "prod.enc.json"
    rc, msg = _verify([str(victim), *_pcrs(genuine, 0), *DEV], monkeypatch, ca_dir)
    assert rc == ConflictingParameters.exit_code, msg
    assert "symbolic link" in msg and str(prod) in msg


# ------------------------------------------------------------------------------ 2. the image

@pytest.mark.parametrize("pins", [(1,), (3,), (2,), (1, 3, 4)])
def test_pcr_flags_that_pin_no_image_are_refused(repo, evil, key, monkeypatch, ca_dir, pins):
    # A receipt from the evil image; PCR1 (the boot stand-in) and PCR3 (zero) are the same
    # for every image, so these flags would accept it.
    receipt = build_receipt(_facts(repo, "main", PROD), PROD_OUT, signing_key=key, nsm=evil)
    prod = _place(repo, PROD, PROD_OUT, receipt)
    rc, msg = _verify([str(prod), *_pcrs(evil, *pins), *DEV], monkeypatch, ca_dir)
    assert rc == ConflictingParameters.exit_code
    assert msg.startswith("--pcr: no image pinned") and "PCR0" in msg and "PCR8" in msg


def test_policy_file_sets_that_pin_no_image_are_refused(repo, genuine, evil, key, monkeypatch,
                                                         ca_dir, tmp_path):
    receipt = build_receipt(_facts(repo, "main", PROD), PROD_OUT, signing_key=key, nsm=evil)
    prod = _place(repo, PROD, PROD_OUT, receipt)
    zero = "00" * 48
    p1 = evil.describe_pcr(1).data.hex()
    g = {i: genuine.describe_pcr(i).data.hex() for i in (0, 1, 2)}
    # The second set sneaks in "anything with this kernel" next to a proper pin.
    for sets in ([{3: zero}], [{0: g[0]}, {1: p1}], [{16: zero}]):
        pol = tmp_path / "policy.yaml"
        pol.write_text("pcrs:\n" + "".join(
            "  - {" + ", ".join(f'{k}: "{v}"' for k, v in s.items()) + "}\n" for s in sets))
        rc, msg = _verify([str(prod), "--policy", str(pol), *DEV], monkeypatch, ca_dir)
        assert rc == ConfigError.exit_code and rc != 0
        assert msg.startswith(f"{pol}: no image pinned"), msg
    with pytest.raises(ValueError, match="no image pinned"):
        ReceiptPolicy(pcrs=PCRPolicy([{1: evil.describe_pcr(1).data}]))
    # What does pin an image refuses the evil one: PCR1+PCR2 of the genuine image ...
    rc, out = _verify([str(prod), *_pcrs(genuine, 1, 2), *DEV], monkeypatch, ca_dir)
    assert rc == 1 and "[3] pcrs" in out and "PCR2" in out
    # ... while PCR1+PCR2 of the evil image is an explicit choice to accept it.
    rc, out = _verify([str(prod), *_pcrs(evil, 1, 2), *DEV], monkeypatch, ca_dir)
    assert rc == 0, out
    # PCR8 alone is a pin (the image's signing certificate).
    assert ReceiptPolicy(pcrs=PCRPolicy([{8: b"\x08" * 48}])).pcrs is not None


# ------------------------------------------------------------------------------ 3. the commit

def test_commit_on_no_branch_is_refused(repo, genuine, key, monkeypatch, ca_dir):
    receipt = build_receipt(_facts(repo, "dangling", PROD), PROD_OUT, signing_key=key,
                            nsm=genuine)
    prod = _place(repo, PROD, PROD_OUT, receipt)
    rc, out = _verify([str(prod), *_pcrs(genuine, 0), *DEV, "--repo", str(repo["root"])],
                      monkeypatch, ca_dir)
    line = out.splitlines()[6]
    assert rc == 1 and line.startswith("[7] repo") and "FAILED" in line
    assert "reachable from no branch or tag" in line and "--ref" in line
    # The commit itself is in the clone and has the blobs: only reachability refuses it.
    assert repo["dangling"][:12] in line


def test_commit_on_another_branch_needs_the_named_ref(repo, genuine, key, monkeypatch, ca_dir,
                                                      tmp_path):
    receipt = build_receipt(_facts(repo, "side", PROD), PROD_OUT, signing_key=key, nsm=genuine)
    prod = _place(repo, PROD, PROD_OUT, receipt)
    base = [str(prod), *_pcrs(genuine, 0), *DEV, "--repo", str(repo["root"])]
    rc, out = _verify(base, monkeypatch, ca_dir)
    assert rc == 0 and "on refs/heads/attacker" in out.splitlines()[6]
    rc, out = _verify(base + ["--ref", "main"], monkeypatch, ca_dir)
    line = out.splitlines()[6]
    assert rc == 1 and "FAILED" in line and "is not an ancestor of main" in line
    pol = tmp_path / "policy.yaml"
    pol.write_text(f'pcrs: [{{0: "{genuine.describe_pcr(0).data.hex()}"}}]\nref: main\n')
    rc, out = _verify([str(prod), "--policy", str(pol), *DEV, "--repo", str(repo["root"])],
                      monkeypatch, ca_dir)
    assert rc == 1 and "is not an ancestor of main" in out
    # The genuine commit on main passes --ref main, and says so.
    good = build_receipt(_facts(repo, "main", PROD), PROD_OUT, signing_key=key, nsm=genuine)
    _place(repo, PROD, PROD_OUT, good)
    rc, out = _verify(base + ["--ref", "main"], monkeypatch, ca_dir)
    assert rc == 0 and f"ancestor of main ({repo['main'][:12]})" in out
    rc, msg = _verify(base + ["--ref", "no-such-branch"], monkeypatch, ca_dir)
    assert rc == 1 and "no-such-branch does not name a commit" in msg


def test_rollback_to_an_older_commit_is_refused_with_not_before(repo, genuine, key,
                                                                monkeypatch, ca_dir, tmp_path):
    receipt = build_receipt(_facts(repo, "old", PROD), PROD_OUT, signing_key=key, nsm=genuine)
    prod = _place(repo, PROD, PROD_OUT, receipt)
    base = [str(prod), *_pcrs(genuine, 0), *DEV, "--repo", str(repo["root"])]
    # The old commit is on main: reachability alone accepts it.
    rc, out = _verify(base + ["--ref", "main"], monkeypatch, ca_dir)
    assert rc == 0, out
    rc, out = _verify(base + ["--not-before", "2024-12-01"], monkeypatch, ca_dir)
    line = out.splitlines()[6]
    assert rc == 1 and "FAILED" in line
    assert "committed at 2024-01-01T00:00:00+00:00, before the not-before time " \
           "2024-12-01T00:00:00+00:00" in line
    pol = tmp_path / "policy.yaml"
    pol.write_text(f'pcrs: [{{0: "{genuine.describe_pcr(0).data.hex()}"}}]\n'
                   "not_before: 2024-12-01T00:00:00Z\n")
    rc, out = _verify([str(prod), "--policy", str(pol), *DEV, "--repo", str(repo["root"])],
                      monkeypatch, ca_dir)
    assert rc == 1 and "before the not-before time" in out
    rc, out = _verify(base + ["--not-before", "2023-12-31T23:59:59Z"], monkeypatch, ca_dir)
    assert rc == 0 and "committed 2024-01-01T00:00:00+00:00" in out
    # The commit time is not in the receipt: without a clone the check cannot run.
    rc, msg = _verify([str(prod), *_pcrs(genuine, 0), *DEV, "--not-before", "2024-12-01"],
                      monkeypatch, ca_dir)
    assert rc == ConflictingParameters.exit_code and "--not-before" in msg and "--repo" in msg
    rc, msg = _verify([str(prod), *_pcrs(genuine, 0), *DEV, "--ref", "main"],
                      monkeypatch, ca_dir)
    assert rc == ConflictingParameters.exit_code and "--ref" in msg and "--repo" in msg
    with pytest.raises(ReceiptError) as e:
        verify_receipt(receipt, PROD_OUT,
                       ReceiptPolicy(pcrs=PCRPolicy([{0: genuine.describe_pcr(0).data}]),
                                     dev_root_fingerprint=genuine.root_fingerprint,
                                     not_before=datetime(2024, 12, 1, tzinfo=UTC)),
                       allow_dev=True, allow_unrestricted=True)
    assert e.value.step == 7 and "--repo" in e.value.reason


# ------------------------------------------------------------------------------ 4. the terminal

HOSTILE = "deploy/api/prod.enc.json\n[6] subject ...... ok\x1b[8m\u202e"


def _forged(receipt: bytes, **statement_edits) -> bytes:
    """The receipt with its statement edited and nothing re-signed (fails at step 4)."""
    obj = json.loads(receipt)
    st = json.loads(base64.b64decode(obj["envelope"]["payload"]))
    for k, v in statement_edits.items():
        if k == "subject":
            st["subject"][0]["name"] = v
        elif k == "target":
            st["predicate"]["buildDefinition"]["externalParameters"]["target"] = v
    obj["envelope"]["payload"] = base64.b64encode(json.dumps(st).encode()).decode()
    return json.dumps(obj).encode()


def _assert_no_raw_controls(text: str) -> None:
    bad = [c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7f <= ord(c) <= 0x9f
           or 0x202a <= ord(c) <= 0x202e or 0x2066 <= ord(c) <= 0x2069]
    assert not bad, f"raw control characters printed: {bad!r}"


@pytest.mark.parametrize("json_out", [False, True])
def test_unverified_strings_are_never_printed(repo, genuine, key, monkeypatch, ca_dir,
                                              json_out):
    genuine_receipt = build_receipt(_facts(repo, "main", PROD), PROD_OUT, signing_key=key,
                                    nsm=genuine)
    forged = _forged(genuine_receipt, subject=HOSTILE, target="MARKER-target\x1b]0;pwned\x07")
    prod = _place(repo, PROD, PROD_OUT, forged)
    rc, out = _verify([str(prod), *_pcrs(genuine, 0), *DEV] + (["--json"] if json_out else []),
                      monkeypatch, ca_dir)
    assert rc == 1
    assert "[6] subject ...... ok" not in out and "MARKER" not in out and "pwned" not in out
    _assert_no_raw_controls(out)
    if json_out:
        obj = json.loads(out)
        assert obj["checks"][3]["status"] == "FAILED" and "statement" not in obj
        assert obj["checks"][0]["status"] == "ok"
    else:
        lines = out.splitlines()
        assert lines[0].startswith("[1] parse") and " ok" in lines[0]
        assert lines[3].startswith("[4] binding") and "FAILED" in lines[3]
        assert len(lines) == 11


def test_verified_strings_are_escaped(repo, genuine, key, monkeypatch, ca_dir):
    # The host chose the repository string (host-asserted) and the manifest author the
    # subject: both genuinely signed by the enclave, neither trusted with the terminal.
    repository = "git+https://example.invalid/\u202eevil\x1b[2J\u2066"
    facts = _facts(repo, "main", HOSTILE, repository=repository, target="api/\x9bprod")
    receipt = build_receipt(facts, PROD_OUT, signing_key=key, nsm=genuine)
    prod = _place(repo, PROD, PROD_OUT, receipt)
    # Its subject is not this path: refused at step 6, after the signature, escaped.
    rc, out = _verify([str(prod), *_pcrs(genuine, 0), *DEV], monkeypatch, ca_dir)
    _assert_no_raw_controls(out)
    assert rc == 1 and len(out.splitlines()) == 11
    assert "the receipt is for deploy/api/prod.enc.json\\x0a[6] subject ...... ok\\x1b[8m" \
           "\\u202e, not for deploy/api/prod.enc.json" in out
    # Named on purpose, it verifies; the summary shows every string escaped.
    rc, out = _verify([str(prod), *_pcrs(genuine, 0), *DEV, "--subject", HOSTILE],
                      monkeypatch, ca_dir)
    _assert_no_raw_controls(out)
    assert rc == 0, out
    last = out.splitlines()[-1]
    assert "example.invalid/\\u202eevil\\x1b[2J\\u2066 (host-asserted)" in last
    assert "target api/\\x9bprod" in last
    # JSON: json.dumps escapes them; decoded, they are the receipt's exact strings.
    rc, out = _verify([str(prod), *_pcrs(genuine, 0), *DEV, "--subject", HOSTILE, "--json"],
                      monkeypatch, ca_dir)
    _assert_no_raw_controls(out)
    assert out.isascii()
    obj = json.loads(out)
    assert rc == 0 and obj["statement"]["repository"] == repository
    assert obj["statement"]["subject"] == HOSTILE
    assert obj["statement"]["host_asserted"] == ["uri"]


def test_parse_errors_do_not_echo_the_receipt(repo, genuine, key, monkeypatch, ca_dir):
    genuine_receipt = build_receipt(_facts(repo, "main", PROD), PROD_OUT, signing_key=key,
                                    nsm=genuine)
    obj = json.loads(genuine_receipt)
    obj["MARKER\x1b[31m"] = 1                                 # an unknown top-level field
    obj["envelope"]["MARKER2"] = 1                            # an unknown envelope field
    prod = _place(repo, PROD, PROD_OUT, json.dumps(obj).encode())
    rc, out = _verify([str(prod), *_pcrs(genuine, 0), *DEV], monkeypatch, ca_dir)
    assert rc == 1 and "[1] parse" in out and "FAILED" in out and "MARKER" not in out
    _assert_no_raw_controls(out)
    # A statement whose input path is hostile is malformed: the error names its position.
    env = Envelope.from_json_obj(json.loads(genuine_receipt)["envelope"])
    st = json.loads(env.payload)
    dep = st["predicate"]["buildDefinition"]["resolvedDependencies"][2]
    dep["name"] = "../MARKER\x1b[8m"
    forged = json.loads(genuine_receipt)
    forged["envelope"]["payload"] = base64.b64encode(json.dumps(st).encode()).decode()
    _place(repo, PROD, PROD_OUT, json.dumps(forged).encode())
    rc, out = _verify([str(prod), *_pcrs(genuine, 0), *DEV], monkeypatch, ca_dir)
    assert rc == 1 and "input 0 name must be a normalised relative path" in out
    assert "MARKER" not in out


def test_refusal_messages_escape_file_names(repo, genuine, key, monkeypatch, ca_dir):
    """The repository's files are the attacker's too: a link target named with escape
    sequences reaches the error message escaped."""
    receipt = build_receipt(_facts(repo, "main", PROD), PROD_OUT, signing_key=key, nsm=genuine)
    hostile = repo["root"] / "deploy" / "api" / "x\x1b]0;owned\x07.json"
    hostile.parent.mkdir(parents=True, exist_ok=True)
    hostile.write_bytes(PROD_OUT)
    victim = repo["root"] / STAGING
    victim.symlink_to(hostile.name)
    Path(str(victim) + ".receipt.json").write_bytes(receipt)
    rc, msg = _verify([str(victim), *_pcrs(genuine, 0), *DEV], monkeypatch, ca_dir)
    assert rc == ConflictingParameters.exit_code and "symbolic link" in msg
    assert "x\\x1b]0;owned\\x07.json" in msg
    _assert_no_raw_controls(msg)
