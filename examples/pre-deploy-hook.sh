#!/usr/bin/env bash
# Pre-deploy hook: refuse to ship any secrets output whose receipt does not verify.
# Usage: pre-deploy-hook.sh OUTPUT [OUTPUT ...]   (POLICY=audit-policy.yaml by default)
set -euo pipefail
policy="${POLICY:-$(dirname "$0")/audit-policy.yaml}"
status=0
for out in "$@"; do
  if [ ! -f "$out.receipt.json" ]; then
    echo "pre-deploy: $out has no receipt ($out.receipt.json); refusing" >&2
    status=1
    continue
  fi
  if ! sops-enclave verify "$out" --policy "$policy" --repo "${REPO:-.}" >/dev/null; then
    echo "pre-deploy: the receipt of $out does not verify; refusing (run: sops-enclave verify $out --policy $policy)" >&2
    status=1
  fi
done
exit "$status"
