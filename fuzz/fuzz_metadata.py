#!/usr/bin/env python3
"""Fuzz target `metadata`: sops_enclave.metadata.parse_metadata(tree) -> only SopsError. The bytes describe a Branch/list/scalar tree (fuzzlib.tree_from_bytes).

Run: `python fuzz/fuzz_metadata.py --seconds 60` (atheris when installed, else a Hypothesis loop;
see fuzz/README.md). The contract itself is `fuzzlib.TARGETS["metadata"]`.
"""

from _harness import main

if __name__ == "__main__":
    main("metadata")
