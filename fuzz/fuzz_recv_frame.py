#!/usr/bin/env python3
"""Fuzz target `recv_frame`: sops_enclave.rpc.recv_frame on a socketpair fed the bytes, then closed -> only FrameError.

Run: `python fuzz/fuzz_recv_frame.py --seconds 60` (atheris when installed, else a Hypothesis loop;
see fuzz/README.md). The contract itself is `fuzzlib.TARGETS["recv_frame"]`.
"""

from _harness import main

if __name__ == "__main__":
    main("recv_frame")
