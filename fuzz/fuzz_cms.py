#!/usr/bin/env python3
"""Fuzz target `cms`: sops_enclave.cms.open_ciphertext_for_recipient(bytes, key) -> only SopsError (CMSError). Key: the KMS sample's test key from ../shared, else a fresh RSA-2048 key.

Run: `python fuzz/fuzz_cms.py --seconds 60` (atheris when installed, else a Hypothesis loop;
see fuzz/README.md). The contract itself is `fuzzlib.TARGETS["cms"]`.
"""

from _harness import main

if __name__ == "__main__":
    main("cms")
