#!/usr/bin/env python3
"""Fuzz target `receipt`: sops_enclave.receipt.verifier.verify_receipt(bytes, output, policy), with and without allow_dev -> only SopsError. Seeds: receipts built with the software NSM.

Run: `python fuzz/fuzz_receipt.py --seconds 60` (atheris when installed, else a Hypothesis loop;
see fuzz/README.md). The contract itself is `fuzzlib.TARGETS["receipt"]`.
"""

from _harness import main

if __name__ == "__main__":
    main("receipt")
