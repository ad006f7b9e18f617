#!/usr/bin/env python3
"""Growth benchmark: -d and -e of the same generated data at several sizes (default 1,000,
10,000 and 100,000 values), both tools, whole processes, tools alternated run by run.

Reports, per size, the medians, the ratio sops-enclave / sops and seconds per 1,000 values;
and per operation whether time grows linearly: the marginal cost (seconds per 1,000 extra
values) between consecutive sizes, which removes the constant process start-up. Growth is
called linear when the marginal cost of the last step is at most LINEAR_TOLERANCE times that
of the previous step (so a 10x larger file costs at most about 10x more, not 100x).

Run standalone: python bench/growth.py [--sizes 1000,10000,100000] [--runs 5] [--big-runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import shutil
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import alternate, log, make_data, to_yaml, tool  # noqa: E402

LINEAR_TOLERANCE = 1.25
#: Sizes above this get ``big_runs`` runs instead of ``runs``.
BIG = 50_000


def _fmt_n(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 and n >= 1000 else str(n)


def run_growth(sops: str, ours: str, env: dict, recipient: str, work: Path, *,
               sizes: list[int], runs: int, big_runs: int, formats: list[str]) -> dict:
    rows = []
    for n in sizes:
        data = make_data(n)
        r = big_runs if n > BIG else runs
        for fmt in formats:
            plain = work / f"growth-{n}.{fmt}"
            plain.write_bytes(to_yaml(data) if fmt == "yaml"
                              else json.dumps(data, indent="\t").encode())
            enc = work / f"growth-{n}.enc.{fmt}"
            p = subprocess.run([sops, "encrypt", "--age", recipient, str(plain)], env=env,
                               capture_output=True, timeout=600)
            if p.returncode:
                raise SystemExit(f"bench: sops encrypt {plain}: {p.stderr.decode()[-300:]}")
            enc.write_bytes(p.stdout)
            for op in ("-d", "-e"):
                if op == "-d":
                    a, b = [ours, "-d", str(enc)], [sops, "-d", str(enc)]
                else:
                    a = [ours, "encrypt", "--age", recipient, str(plain)]
                    b = [sops, "encrypt", "--age", recipient, str(plain)]
                res = alternate(a, b, r, env)
                out = res["outputs"]
                row = {"op": op, "format": fmt, "values": n, "runs": r,
                       "sops_s": res["sops_s"], "enclave_s": res["enclave_s"],
                       "ratio": res["enclave_s"] / res["sops_s"],
                       "sops_rss_mib": res["peaks"][1] / 1024,
                       "enclave_rss_mib": res["peaks"][0] / 1024,
                       "sops_s_per_1k": res["sops_s"] / (n / 1000),
                       "enclave_s_per_1k": res["enclave_s"] / (n / 1000),
                       "identical_output": (out[0] == out[1]) if op == "-d" else None,
                       "encrypted_mb": enc.stat().st_size / 1e6}
                rows.append(row)
                log(f"  growth {op} {fmt.upper()} {n} values ({r} runs): sops "
                    f"{row['sops_s']:.3f}s, sops-enclave {row['enclave_s']:.3f}s, ratio "
                    f"{row['ratio']:.2f}")
            plain.unlink()
            enc.unlink()
    return {"rows": rows, "verdicts": verdicts(rows, sizes, formats)}


def verdicts(rows: list[dict], sizes: list[int], formats: list[str]) -> list[dict]:
    """Per operation: marginal seconds per 1,000 values between consecutive sizes, whether
    each tool grows linearly, and whether the ratio holds at the largest size."""
    out = []
    for fmt in formats:
        for op in ("-d", "-e"):
            rs = sorted((r for r in rows if r["op"] == op and r["format"] == fmt),
                        key=lambda r: r["values"])
            if len(rs) < 2:
                continue
            slopes = {"sops": [], "enclave": []}
            for a, b in zip(rs, rs[1:]):
                dn = (b["values"] - a["values"]) / 1000
                for side in slopes:
                    slopes[side].append((b[f"{side}_s"] - a[f"{side}_s"]) / dn)
            growth = {}
            for side, sl in slopes.items():
                # With only two sizes there is one step: compare it with the raw per-1k cost
                # at the small size (start-up included, so this is the lenient reading).
                prev = sl[-2] if len(sl) > 1 else rs[0][f"{side}_s_per_1k"]
                growth[side] = sl[-1] / prev if prev > 0 else float("inf")
            ratios = [r["ratio"] for r in rs]
            out.append({
                "op": op, "format": fmt, "sizes": [r["values"] for r in rs],
                "sops_marginal_s_per_1k": slopes["sops"],
                "enclave_marginal_s_per_1k": slopes["enclave"],
                "slope_ratio": slopes["enclave"][-1] / slopes["sops"][-1]
                if slopes["sops"][-1] > 0 else float("inf"),
                "sops_slope_growth": growth["sops"], "enclave_slope_growth": growth["enclave"],
                "enclave_linear": growth["enclave"] <= LINEAR_TOLERANCE,
                "sops_linear": growth["sops"] <= LINEAR_TOLERANCE,
                "ratios": ratios,
                # "ratio holding": not worse at the largest size than at the one before it.
                "ratio_holds": ratios[-1] <= ratios[-2] * 1.10,
            })
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--big-runs", type=int, default=3)
    ap.add_argument("--formats", default="yaml,json")
    args = ap.parse_args()
    import pyrage

    sops, ours = tool("sops"), tool("sops-enclave")
    ident = pyrage.x25519.Identity.generate()
    work = Path(tempfile.mkdtemp(prefix="sops-enclave-bench-growth-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOPS_")}
    env.update(SOPS_AGE_KEY=str(ident), HOME=str(work), SOPS_DISABLE_VERSION_CHECK="1")
    try:
        res = run_growth(sops, ours, env, str(ident.to_public()), work,
                         sizes=[int(s) for s in args.sizes.split(",")], runs=args.runs,
                         big_runs=args.big_runs, formats=args.formats.split(","))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
