#!/usr/bin/env python3
"""Fuzz target `json_store`: sops_enclave.formats.json_store load_encrypted/load_plain -> only ValueError/SopsError; emit_plain of what load_plain accepted -> no exception.

Run: `python fuzz/fuzz_json_store.py --seconds 60` (atheris when installed, else a Hypothesis loop;
see fuzz/README.md). The contract itself is `fuzzlib.TARGETS["json_store"]`.
"""

from _harness import main

if __name__ == "__main__":
    main("json_store")
