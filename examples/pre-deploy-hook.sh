#!/usr/bin/env bash
# Pre-deploy hook: refuse to ship any secrets output whose receipt does not verify.
#
# Usage: pre-deploy-hook.sh OUTPUT [OUTPUT ...]
# Each OUTPUT is checked with
#   sops-enclave verify OUTPUT --repo "$REPO" $VERIFY_FLAGS
# REPO defaults to the current directory (the secrets repository); VERIFY_FLAGS defaults to
# "--policy <this directory>/audit-policy.yaml" (production: pinned PCRs, signers, enclave
# policy). For dev runs pass the dev flags, e.g.
#   VERIFY_FLAGS="--allow-dev --pcr 0=<dev PCR0> --enclave-policy enclave-policy.yaml"
# (examples/Makefile does). Exit 0 only when every output verified.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
flags="${VERIFY_FLAGS:---policy $here/audit-policy.yaml}"
repo="${REPO:-.}"
if [ "$#" -eq 0 ]; then
  echo "pre-deploy: no output given; refusing" >&2
  exit 1
fi
status=0
for out in "$@"; do
  if [ ! -f "$out.receipt.json" ]; then
    echo "pre-deploy: $out has no receipt ($out.receipt.json); refusing" >&2
    status=1
    continue
  fi
  # $flags is split into words on purpose (several flags in one variable).
  # shellcheck disable=SC2086
  if ! sops-enclave verify "$out" --repo "$repo" $flags >/dev/null; then
    echo "pre-deploy: the receipt of $out does not verify; refusing (see: sops-enclave verify $out --repo $repo $flags)" >&2
    status=1
  fi
done
exit "$status"
