#!/usr/bin/env python3
"""Fuzz target `config`: sops_enclave.config.load_config(bytes, '/x/.sops.yaml') and .creation_rule_for('/x/a.yaml') -> only SopsError.

Run: `python fuzz/fuzz_config.py --seconds 60` (atheris when installed, else a Hypothesis loop;
see fuzz/README.md). The contract itself is `fuzzlib.TARGETS["config"]`.
"""

from _harness import main

if __name__ == "__main__":
    main("config")
