#!/usr/bin/env python3
"""Fuzz target `binary_store`: sops_enclave.formats.binary_store load_encrypted/load_plain -> only ValueError/SopsError; emit_plain of what load_plain accepted -> no exception.

Run: `python fuzz/fuzz_binary_store.py --seconds 60` (atheris when installed, else a Hypothesis loop;
see fuzz/README.md). The contract itself is `fuzzlib.TARGETS["binary_store"]`.
"""

from _harness import main

if __name__ == "__main__":
    main("binary_store")
