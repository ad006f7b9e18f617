#!/usr/bin/env python3
"""Fuzz target `cipher`: the ENC[...] value parser: ValueCipher(key).decrypt(s, aad) -> only SopsError. Input: text, or 0x01 type 0x00 plaintext for an authentic value of any type.

Run: `python fuzz/fuzz_cipher.py --seconds 60` (atheris when installed, else a Hypothesis loop;
see fuzz/README.md). The contract itself is `fuzzlib.TARGETS["cipher"]`.
"""

from _harness import main

if __name__ == "__main__":
    main("cipher")
