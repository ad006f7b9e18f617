#!/usr/bin/env python3
"""Fuzz target `frame`: sops_enclave.rpc.decode_frame(bytes) -> only FrameError.

Run: `python fuzz/fuzz_frame.py --seconds 60` (atheris when installed, else a Hypothesis loop;
see fuzz/README.md). The contract itself is `fuzzlib.TARGETS["frame"]`.
"""

from _harness import main

if __name__ == "__main__":
    main("frame")
