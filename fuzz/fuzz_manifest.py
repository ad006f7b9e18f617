#!/usr/bin/env python3
"""Fuzz target `manifest`: sops_enclave.pack.manifest.load_manifest(bytes), .plan() (all, by target, with an exists callback) and .describe() -> only SopsError.

Run: `python fuzz/fuzz_manifest.py --seconds 60` (atheris when installed, else a Hypothesis loop;
see fuzz/README.md). The contract itself is `fuzzlib.TARGETS["manifest"]`.
"""

from _harness import main

if __name__ == "__main__":
    main("manifest")
