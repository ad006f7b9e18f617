#!/usr/bin/env python3
"""Side-by-side benchmark: sops-enclave against the sops 3.11 binary, in one run.

Generates the files (a 16,000-value YAML file and the same data as JSON, about 2 MB once
encrypted, and a 20-value YAML file), encrypts them for a throwaway age key, then times
``-d`` and ``-e`` of each with both tools (whole processes, start-up included), alternating
the tools run by run. Prints medians, the ratio sops-enclave / sops, and peak memory (maxrss
of each child). ``--write-readme`` puts the table into README.md between the bench markers.

Usage: python bench/run.py [--runs N] [--values N] [--write-readme]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if not path:
        sys.exit(f"bench: {name} not found (run `make install` first)")
    return path


def make_data(n_values: int) -> dict:
    """Nested maps of strings, ints and floats: n_values leaves in sections of 16."""
    data: dict = {}
    for s in range(max(1, n_values // 16)):
        sec = {}
        for k in range(16):
            i = s * 16 + k
            if k % 4 == 0:
                sec[f"port_{k}"] = 1000 + i
            elif k % 4 == 1:
                sec[f"ratio_{k}"] = i / 7
            else:
                sec[f"secret_{k}"] = f"value-{i}-" + "x" * (i % 23)
        data[f"service_{s:05d}"] = sec
    return data


def to_yaml(data: dict) -> bytes:
    out = []
    for sec, kv in data.items():
        out.append(f"{sec}:\n")
        for k, v in kv.items():
            out.append(f"    {k}: {v}\n")
    return "".join(out).encode()


def _measure(cmd: list[str], env: dict) -> tuple[float, int, bytes]:
    """(wall seconds, peak RSS in KiB, stdout) of one child process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        _, status, ru = os.wait4(p.pid, 0)
        dt = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if p.returncode != 0:
            raise SystemExit(f"bench: {' '.join(cmd)} failed: {err.read().decode()[-500:]}")
        return dt, ru.ru_maxrss, out.read()


def run_pair(cases, runs: int, env: dict) -> list[dict]:
    rows = []
    for label, ours, theirs in cases:
        times: dict[int, list[float]] = {0: [], 1: []}
        peaks: dict[int, int] = {0: 0, 1: 0}
        outputs: dict[int, bytes] = {}
        for i in range(runs):
            for which in ((0, 1) if i % 2 == 0 else (1, 0)):
                dt, rss, out = _measure(ours if which == 0 else theirs, env)
                times[which].append(dt)
                peaks[which] = max(peaks[which], rss)
                outputs[which] = out
        decrypt = "-d" in ours
        mo, mt = statistics.median(times[0]), statistics.median(times[1])
        rows.append({"case": label, "sops_s": mt, "enclave_s": mo, "ratio": mo / mt,
                     "sops_rss_mib": peaks[1] / 1024, "enclave_rss_mib": peaks[0] / 1024,
                     "identical_output": (outputs[0] == outputs[1]) if decrypt else None})
        print(f"  {label}: sops {mt:.3f}s, sops-enclave {mo:.3f}s, ratio {mo / mt:.2f}",
              file=sys.stderr)
    return rows


def table(rows: list[dict], meta: str) -> str:
    lines = [meta, "", "| case | sops 3.11 (s) | sops-enclave (s) | ratio | peak RSS sops / "
             "sops-enclave (MiB) | output identical |", "|---|---|---|---|---|---|"]
    for r in rows:
        ident = "" if r["identical_output"] is None else ("yes" if r["identical_output"] else "NO")
        lines.append(f"| {r['case']} | {r['sops_s']:.3f} | {r['enclave_s']:.3f} | "
                     f"{r['ratio']:.2f} | {r['sops_rss_mib']:.0f} / {r['enclave_rss_mib']:.0f} | "
                     f"{ident} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--values", type=int, default=16000)
    ap.add_argument("--write-readme", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import pyrage

    sops, ours = _tool("sops"), _tool("sops-enclave")
    ident = pyrage.x25519.Identity.generate()
    recipient = str(ident.to_public())
    work = Path(tempfile.mkdtemp(prefix="sops-enclave-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOPS_")}
    env.update(SOPS_AGE_KEY=str(ident), HOME=str(work), SOPS_DISABLE_VERSION_CHECK="1")
    data = make_data(args.values)
    small = make_data(20)
    files = {"large.yaml": to_yaml(data), "large.json": json.dumps(data, indent="\t").encode(),
             "small.yaml": to_yaml({"app": dict(list(small["service_00000"].items()) +
                                                [(f"extra_{i}", f"v{i}") for i in range(4)])})}
    for name, content in files.items():
        (work / name).write_bytes(content)
        p = subprocess.run([sops, "encrypt", "--age", recipient, str(work / name)], env=env,
                           capture_output=True, check=True)
        (work / ("enc." + name)).write_bytes(p.stdout)
    size = (work / "enc.large.yaml").stat().st_size
    cases = []
    for name, label in (("large.yaml", f"-d YAML, {args.values} values"),
                        ("large.json", f"-d JSON, {args.values} values"),
                        ("small.yaml", "-d YAML, 20 values (age)")):
        f = str(work / ("enc." + name))
        cases.append((label, [ours, "-d", f], [sops, "-d", f]))
    for name, label in (("large.yaml", f"-e YAML, {args.values} values"),
                        ("large.json", f"-e JSON, {args.values} values")):
        f = str(work / name)
        cases.append((label, [ours, "encrypt", "--age", recipient, f],
                      [sops, "encrypt", "--age", recipient, f]))
    rows = run_pair(cases, args.runs, env)
    meta = (f"Measured by `make bench` ({args.runs} runs each, medians, tools alternated; "
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
            f"encrypted YAML file {size / 1e6:.1f} MB). Ratio = sops-enclave / sops; below 1 "
            "is faster.")
    out = table(rows, meta)
    print(json.dumps(rows, indent=2) if args.json else out)
    if args.write_readme:
        readme = ROOT / "README.md"
        text = readme.read_text()
        new = re.sub(r"(<!-- bench:start -->\n).*?(<!-- bench:end -->)",
                     lambda m: m.group(1) + out + m.group(2), text, flags=re.S)
        readme.write_text(new)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
