#!/usr/bin/env python3
"""Fuzz target `attestation`: sops_enclave.receipt.attestation.parse_attestation / verify_attestation (AWS root; the document's own root with a PCR policy) -> only SopsError.

Run: `python fuzz/fuzz_attestation.py --seconds 60` (atheris when installed, else a Hypothesis loop;
see fuzz/README.md). The contract itself is `fuzzlib.TARGETS["attestation"]`.
"""

from _harness import main

if __name__ == "__main__":
    main("attestation")
