#!/usr/bin/env python3
"""Print the per-target input counts of the bounded fuzzing in `make test`, as a Markdown table.

    .venv/bin/python fuzz/counts.py            # the budgets of tests/test_fuzz_parsers.py
    FUZZ_SCALE=10 .venv/bin/python fuzz/counts.py

Runs ``pytest tests/test_fuzz_parsers.py -k test_fuzz`` with ``FUZZ_COUNTS_JSON`` set and
formats what the test module wrote. "s wall" includes generating the inputs; "s in target"
is the time spent in the parsers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "counts.json"
        env = dict(os.environ, FUZZ_COUNTS_JSON=str(out))
        rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              "tests/test_fuzz_parsers.py", "-k", "test_fuzz["],
                             cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        if not out.exists():
            print("no counts written (pytest exit status %d)" % rc, file=sys.stderr)
            return 1
        data = json.loads(out.read_text())
    print("| target | inputs | accepted | refused | s in target | s wall | known findings hit |")
    print("|---|---:|---:|---:|---:|---:|---|")
    total = 0
    for name, s in sorted(data.items()):
        total += s["inputs"]
        known = ", ".join(f"{k} ({n})" for k, n in sorted(s["known"].items())) or ""
        print(f"| {name} | {s['inputs']} | {s['accepted']} | {s['refused']} | "
              f"{s['seconds']:.2f} | {s['wall']:.2f} | {known} |")
    print(f"\n{total} inputs; pytest exit status {rc}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
