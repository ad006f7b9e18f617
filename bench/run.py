#!/usr/bin/env python3
"""Side-by-side benchmark: sops-enclave against the sops 3.11 binary, in one run.

Three parts, all whole processes (start-up included), the two tools alternated run by run,
medians, ratio = sops-enclave / sops (below 1 is faster):

* core: ``-d``/``-e`` of a 16,000-value YAML file and the same data as JSON (about 2 MB once
  encrypted), ``-d`` of a 20-value YAML file, all for a throwaway age key; peak memory
  (maxrss, from one extra untimed run of each tool under GNU time).
* growth (bench/growth.py): ``-d``/``-e`` of YAML and JSON at 1,000, 10,000 and 100,000
  values: the ratio at every size, seconds per 1,000 values, whether time grows linearly.
* pack (bench/pack.py): 200 KMS-encrypted inputs merged into 20 outputs, 10 inputs each:
  ``sops-enclave exec --enclave dev`` against the dev stack (moto + the KMS-with-attestation
  layer on 127.0.0.1) versus a bash pipeline of ``sops decrypt`` | jq merge | ``sops
  encrypt``; KMS Decrypt calls counted on both sides.

``--write-readme`` puts one table (every row, the targets of the performance issue and
whether each is met) and the measurement conditions into README.md between the bench
markers. ``--quick`` is a smoke run (2 runs, smaller sizes, a smaller pack).

Usage: python bench/run.py [--quick] [--runs N] [--values N] [--parts core,growth,pack]
                           [--write-readme] [--json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (ROOT, alternate, compile_bytecode, installed_wheel, log,  # noqa: E402
                      make_data, to_yaml, tool)

# Targets of the performance issue: (comparison, limit) on the ratio sops-enclave / sops.
TARGETS = {"-d YAML": 1.0, "-d JSON": 0.5, "-e YAML": 1.0, "-e JSON": 0.5, "small": 1.0,
           "small -e cfg": 1.0, "pack": 0.2, "pack big": 0.3, "keyservice": 1.0,
           # pack growth: x10 work may cost at most x11 time and x11 peak memory
           "pack growth": 11.0}
ALL_PARTS = ("core", "growth", "pack", "packbig", "packgrowth", "keyservice")
# The modules `-d` of a YAML age file imports that are not sops-enclave's (argparse for the
# command line, PyYAML, cryptography's Rust bindings for AES-GCM, pyrage, the standard modules
# of the MAC and metadata): the start-up floor rows time a Python that imports only these.
FLOOR_IMPORTS = ("import argparse, typing, base64, hashlib, hmac, datetime, yaml, pyrage, "
                 "cryptography.hazmat.bindings._rust")


# ---------------------------------------------------------------------------------- core

def run_core(sops: str, ours: str, env: dict, recipient: str, work: Path, *, values: int,
             runs: int, wheel: str | None = None) -> list[dict]:
    """The core cases; with ``wheel`` (sops-enclave installed from a wheel), the two 20-value
    cases once more with that installation (what a user's ``pip install`` gives)."""
    data = make_data(values)
    small = make_data(20)
    files = {"large.yaml": to_yaml(data), "large.json": json.dumps(data, indent="\t").encode(),
             "small.yaml": to_yaml({"app": dict(list(small["service_00000"].items()) +
                                                [(f"extra_{i}", f"v{i}") for i in range(4)])})}
    for name, content in files.items():
        (work / name).write_bytes(content)
        p = subprocess.run([sops, "encrypt", "--age", recipient, str(work / name)], env=env,
                           capture_output=True, check=True, timeout=600)
        (work / ("enc." + name)).write_bytes(p.stdout)
    cases = []
    for name, key, label in (("large.yaml", "-d YAML", f"-d YAML, {values:,} values"),
                             ("large.json", "-d JSON", f"-d JSON, {values:,} values"),
                             ("small.yaml", "small", "-d YAML, 20 values (age)")):
        f = str(work / ("enc." + name))
        cases.append((key, label, [ours, "-d", f], [sops, "-d", f]))
    for name, key, label in (("large.yaml", "-e YAML", f"-e YAML, {values:,} values"),
                             ("large.json", "-e JSON", f"-e JSON, {values:,} values")):
        f = str(work / name)
        cases.append((key, label, [ours, "encrypt", "--age", recipient, f],
                      [sops, "encrypt", "--age", recipient, f]))
    # -e of the small file with a .sops.yaml creation rule found by the lookup (no key flag):
    # both tools run in a directory below the one holding .sops.yaml.
    cfgdir = work / "cfg"
    (cfgdir / "app").mkdir(parents=True, exist_ok=True)
    (cfgdir / ".sops.yaml").write_text(
        f"creation_rules:\n  - path_regex: \\.yaml$\n    age: {recipient}\n")
    (cfgdir / "app" / "small.yaml").write_bytes(files["small.yaml"])
    cases.append(("small -e cfg", "-e YAML, 20 values, .sops.yaml lookup (age)",
                  [ours, "encrypt", "small.yaml"], [sops, "encrypt", "small.yaml"],
                  cfgdir / "app"))
    if wheel:
        f = str(work / "enc.small.yaml")
        cases.append(("small", "-d YAML, 20 values (age), installed wheel", [wheel, "-d", f],
                      [sops, "-d", f]))
        cases.append(("small -e cfg", "-e YAML, 20 values, .sops.yaml lookup (age), installed "
                      "wheel", [wheel, "encrypt", "small.yaml"], [sops, "encrypt", "small.yaml"],
                      cfgdir / "app"))
    # The start-up floor, timed against the same `sops -d` of the 20-value file: what any
    # Python program with these dependencies pays before sops-enclave's own code runs.
    f = str(work / "enc.small.yaml")
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    cases.append(("floor", "start-up floor: `python -I -S -c pass` (the interpreter alone)",
                  [str(base), "-I", "-S", "-c", "pass"], [sops, "-d", f]))
    py, where = ((str(Path(wheel).parent / "python"), "the installed wheel's virtualenv")
                 if wheel else (sys.executable, "this virtualenv (editable install)"))
    cases.append(("floor", f"start-up floor: python of {where} importing only what the -d path "
                  f"cannot avoid ({FLOOR_IMPORTS.removeprefix('import ')})",
                  [py, "-c", FLOOR_IMPORTS], [sops, "-d", f]))
    sizes = {n: (work / ("enc." + n)).stat().st_size / 1e6 for n in files}
    rows = []
    for key, label, a, b, *cwd in cases:
        res = alternate(a, b, runs, env, cwd=cwd[0] if cwd else None)
        mo, mt = res["enclave_s"], res["sops_s"]
        decrypt = "-d" in a
        rows.append({"key": key, "case": label, "runs": runs, "sops_s": mt, "enclave_s": mo,
                     "ratio": mo / mt, "sops_rss_mib": res["peaks"][1] / 1024,
                     "enclave_rss_mib": res["peaks"][0] / 1024,
                     "identical_output": (res["outputs"][0] == res["outputs"][1])
                     if decrypt else None})
        log(f"  {label}: sops {mt:.3f}s, sops-enclave {mo:.3f}s, ratio {mo / mt:.2f}")
    for r in rows:
        r["encrypted_mb"] = sizes["large.yaml" if "YAML" in r["case"] and " 20 " not in r["case"]
                                  else "large.json" if "JSON" in r["case"] else "small.yaml"]
    return rows


# ---------------------------------------------------------------------------- keyservice

KS_LOOP = ('ks=$1; shift; for f in "$@"; do "$SOPS" decrypt --keyservice "$ks" '
           '--enable-local-keyservice=false "$f" > /dev/null || exit 1; done')


def _free_port() -> int:
    import socket

    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]


def run_keyservice(sops: str, ours: str, env: dict, recipient: str, work: Path, *,
                   runs: int, files: int = 100) -> dict:
    """``sops decrypt --keyservice`` of ``files`` small age files, one after the other,
    through ``sops-enclave keyservice`` against through ``sops keyservice``. The client is
    the sops binary on both sides and holds no key (SOPS_AGE_KEY only in the servers'
    environment, ``--enable-local-keyservice=false``): only the server differs."""
    ksdir = work / "ks"
    ksdir.mkdir(exist_ok=True)
    small = make_data(20)
    paths = []
    for i in range(files):
        plain = ksdir / f"f{i:03d}.yaml"
        plain.write_bytes(to_yaml({"app": {**small["service_00000"], "n": i}}))
        p = subprocess.run([sops, "encrypt", "--age", recipient, str(plain)], env=env,
                           capture_output=True, check=True, timeout=120)
        enc = ksdir / f"f{i:03d}.enc.yaml"
        enc.write_bytes(p.stdout)
        plain.unlink()
        paths.append(str(enc))
    client_env = {k: v for k, v in env.items() if k != "SOPS_AGE_KEY"}
    client_env["SOPS"] = sops
    servers, addrs = [], []
    try:
        for exe in (ours, sops):
            port = _free_port()
            servers.append(subprocess.Popen(
                [exe, "keyservice", "--network", "tcp", "--address", f"127.0.0.1:{port}"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            addrs.append(f"tcp://127.0.0.1:{port}")
        import socket

        for (addr, srv) in zip(addrs, servers):
            port = int(addr.rsplit(":", 1)[1])
            deadline = time.monotonic() + 30
            while True:
                if srv.poll() is not None:
                    raise SystemExit(f"bench: keyservice {addr} exited ({srv.returncode})")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"bench: keyservice {addr} did not start")
                    time.sleep(0.05)
        # Same output through both servers (and the same as a local decrypt).
        one = [subprocess.run([sops, "decrypt", "--keyservice", a,
                               "--enable-local-keyservice=false", paths[0]], env=client_env,
                              capture_output=True, timeout=60) for a in addrs]
        same = one[0].returncode == 0 and one[0].stdout == one[1].stdout
        res = alternate(["bash", "-c", KS_LOOP, "_", addrs[0], *paths],
                        ["bash", "-c", KS_LOOP, "_", addrs[1], *paths], runs, client_env)
    finally:
        for srv in servers:
            srv.terminate()
            try:
                srv.wait(10)
            except subprocess.TimeoutExpired:
                srv.kill()
                srv.wait()
    log(f"  keyservice, {files} files: sops keyservice {res['sops_s']:.3f}s, sops-enclave "
        f"keyservice {res['enclave_s']:.3f}s, ratio {res['enclave_s'] / res['sops_s']:.2f}")
    return {"files": files, "runs": runs, "sops_s": res["sops_s"],
            "enclave_s": res["enclave_s"], "ratio": res["enclave_s"] / res["sops_s"],
            "identical_output": same, "times": res["times"]}


# ---------------------------------------------------------------------------------- table

def _yes(b: bool | None) -> str:
    return "—" if b is None else ("yes" if b else "**no**")


def _n(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else f"{n:,}"


def build_rows(core: list[dict], growth: dict | None, pack: dict | None, *,
               packbig: dict | None = None, packgrowth: dict | None = None,
               keyservice: dict | None = None) -> list[dict]:
    """Every table row: case, target, sops s, enclave s, ratio, meets, rss, notes."""
    out = []
    for r in core:
        if r["key"] == "floor":
            out.append({"case": r["case"], "target": "— (information)",
                        "sops": f"{r['sops_s']:.3f}", "enclave": f"{r['enclave_s']:.3f}",
                        "ratio": f"{r['ratio']:.2f}", "meets": "—",
                        "rss": f"{r['sops_rss_mib']:.0f} / {r['enclave_rss_mib']:.0f}",
                        "notes": f"{r['runs']} runs; the sops-enclave column is this process, "
                                 "the sops column `sops -d` of the 20-value file"})
            continue
        limit = TARGETS[r["key"]]
        notes = [f"{r['runs']} runs"]
        if r["identical_output"] is not None:
            notes.append("decrypted output byte-identical: " + _yes(r["identical_output"]))
        out.append({"case": r["case"], "target": f"≤ {limit:.1f}", "sops": f"{r['sops_s']:.3f}",
                    "enclave": f"{r['enclave_s']:.3f}", "ratio": f"{r['ratio']:.2f}",
                    "meets": _yes(r["ratio"] <= limit),
                    "rss": f"{r['sops_rss_mib']:.0f} / {r['enclave_rss_mib']:.0f}",
                    "notes": "; ".join(notes)})
    if growth:
        for r in growth["rows"]:
            notes = [f"{r['runs']} runs", f"s per 1,000 values: sops {r['sops_s_per_1k']:.4f},"
                     f" sops-enclave {r['enclave_s_per_1k']:.4f}"]
            if r["identical_output"] is not None:
                notes.append("output identical: " + _yes(r["identical_output"]))
            out.append({"case": f"growth: {r['op']} {r['format'].upper()}, {r['values']:,} values",
                        "target": "see growth row", "sops": f"{r['sops_s']:.3f}",
                        "enclave": f"{r['enclave_s']:.3f}", "ratio": f"{r['ratio']:.2f}",
                        "meets": "—", "rss": f"{r['sops_rss_mib']:.0f} / {r['enclave_rss_mib']:.0f}",
                        "notes": "; ".join(notes)})
        for v in growth["verdicts"]:
            sizes = " → ".join(_n(n) for n in v["sizes"])
            steps = [f"{_n(a)}→{_n(b)}" for a, b in zip(v["sizes"], v["sizes"][1:])]
            big = max((r for r in growth["rows"] if r["op"] == v["op"] and
                       r["format"] == v["format"]), key=lambda r: r["values"])
            notes = ("marginal s per 1,000 values (" + ", ".join(steps) + "): sops "
                     + " / ".join(f"{x:.4f}" for x in v["sops_marginal_s_per_1k"])
                     + ", sops-enclave "
                     + " / ".join(f"{x:.4f}" for x in v["enclave_marginal_s_per_1k"])
                     + ("; last step vs previous" if len(steps) > 1 else
                        f"; step vs the whole cost per 1,000 values at {_n(v['sizes'][0])}")
                     + f": sops ×{v['sops_slope_growth']:.2f}, "
                     f"sops-enclave ×{v['enclave_slope_growth']:.2f}"
                     + "; ratio by size " + " / ".join(f"{x:.2f}" for x in v["ratios"]))
            out.append({"case": f"growth {v['op']} {v['format'].upper()}, {sizes} "
                                "(marginal s per 1,000 values, last step)",
                        "target": "linear, ratio holds",
                        "sops": f"{v['sops_marginal_s_per_1k'][-1]:.4f}",
                        "enclave": f"{v['enclave_marginal_s_per_1k'][-1]:.4f}",
                        "ratio": f"{v['slope_ratio']:.2f}",
                        "meets": _yes(v["enclave_linear"] and v["ratio_holds"]),
                        "rss": f"{big['sops_rss_mib']:.0f} / {big['enclave_rss_mib']:.0f}",
                        "notes": notes})
    if pack:
        e, s = pack["enclave"], pack["sops"]
        dec_e = "/".join(map(str, e["decrypt_calls"]))
        dec_s = "/".join(map(str, s["decrypt_calls"]))
        notes = (f"{pack['runs']} runs; KMS Decrypt calls per run: sops-enclave {dec_e} "
                 f"({pack['inputs']} distinct data keys → one per key: "
                 f"{_yes(pack['one_decrypt_per_data_key'])}), sops {dec_s}; KMS Encrypt per "
                 f"run: {e['kms_calls'].get('Encrypt', 0)} / {s['kms_calls'].get('Encrypt', 0)}; "
                 f"outputs decrypt to the same content: {_yes(pack['identical_output'])}; "
                 f"CPU of the dev KMS stack (attestation layer + moto) per run: "
                 f"{e['kms_cpu_s']:.2f} s / {s['kms_cpu_s']:.2f} s"
                 + (f"; the gated key's policy was re-pinned {pack['pcr0_repins']}× to a new "
                    "dev PCR0 (enclave code edited during the run)" if pack.get("pcr0_repins")
                    else ""))
        out.append({"case": f"pack: {pack['inputs']} inputs → {pack['outputs']} outputs "
                            f"(exec --enclave dev vs sequential sops | jq | sops)",
                    "target": f"≤ {TARGETS['pack']:.1f}", "sops": f"{s['s']:.3f}",
                    "enclave": f"{e['s']:.3f}", "ratio": f"{pack['ratio']:.2f}",
                    "meets": _yes(pack["ratio"] <= TARGETS["pack"]),
                    "rss": f"{s['rss_mib']:.0f} / {e['rss_mib']:.0f}", "notes": notes})
        if "sops_par" in pack:
            p = pack["sops_par"]
            out.append({"case": f"pack, baseline run {pack['parallel']} outputs at a time "
                                f"(xargs -P {pack['parallel']})",
                        "target": "— (information)", "sops": f"{p['s']:.3f}",
                        "enclave": f"{e['s']:.3f}", "ratio": f"{pack['ratio_par']:.2f}",
                        "meets": "—", "rss": f"{p['rss_mib']:.0f} / {e['rss_mib']:.0f}",
                        "notes": f"KMS Decrypt calls per run: sops "
                                 f"{'/'.join(map(str, p['decrypt_calls']))}; CPU of the dev "
                                 f"KMS stack per run: {p['kms_cpu_s']:.2f} s"})
    if packbig:
        e, s = packbig["enclave"], packbig["sops"]
        out.append({"case": f"pack: one output from {packbig['inputs']} inputs of "
                            f"{packbig['values']:,} keys each (exec --enclave dev vs "
                            "sops | jq | sops)",
                    "target": f"≤ {TARGETS['pack big']:.1f}", "sops": f"{s['s']:.3f}",
                    "enclave": f"{e['s']:.3f}", "ratio": f"{packbig['ratio']:.2f}",
                    "meets": _yes(packbig["ratio"] <= TARGETS["pack big"]),
                    "rss": f"{s['rss_mib']:.0f} / {e['rss_mib']:.0f}",
                    "notes": f"{packbig['runs']} runs; KMS Decrypt calls per run: sops-enclave "
                             f"{'/'.join(map(str, e['decrypt_calls']))}, sops "
                             f"{'/'.join(map(str, s['decrypt_calls']))}; outputs decrypt to "
                             f"the same content: {_yes(packbig['identical_output'])}"})
    if packgrowth:
        g, sm, bg = packgrowth, packgrowth["small"], packgrowth["big"]
        lim = TARGETS["pack growth"]
        worst = max(g["time_factor"], g["rss_factor"])
        out.append({"case": f"pack growth: {bg['inputs']:,} inputs → {bg['outputs']} outputs "
                            f"vs {sm['inputs']} → {sm['outputs']} (sops-enclave only; columns: "
                            f"{sm['inputs']} → {sm['outputs']} / {bg['inputs']:,} → "
                            f"{bg['outputs']})",
                    "target": f"×{g['work_factor']:.0f} work: time and peak memory ≤ ×{lim:.0f}",
                    "sops": f"{sm['s']:.3f}", "enclave": f"{bg['s']:.3f}",
                    "ratio": f"×{g['time_factor']:.2f} time, ×{g['rss_factor']:.2f} memory",
                    "meets": _yes(worst <= lim),
                    "rss": f"{sm['rss_mib']:.0f} / {bg['rss_mib']:.0f}",
                    "notes": f"{g['runs']} runs of each, alternated; KMS Decrypt calls per run "
                             f"{'/'.join(map(str, sm['decrypt_calls']))} / "
                             f"{'/'.join(map(str, bg['decrypt_calls']))} (one per data key: "
                             f"{_yes(sm['decrypt_calls'] == [sm['inputs']] and bg['decrypt_calls'] == [bg['inputs']])})"
                             "; the sops and sops-enclave columns hold the small and the big "
                             "pack, the RSS column their peaks"})
    if keyservice:
        k = keyservice
        out.append({"case": f"`sops decrypt --keyservice` of {k['files']} small age files, "
                            "through sops-enclave keyservice vs sops keyservice",
                    "target": f"≤ {TARGETS['keyservice']:.1f}", "sops": f"{k['sops_s']:.3f}",
                    "enclave": f"{k['enclave_s']:.3f}", "ratio": f"{k['ratio']:.2f}",
                    "meets": _yes(k["ratio"] <= TARGETS["keyservice"]), "rss": "—",
                    "notes": f"{k['runs']} runs; the client is the sops binary on both sides "
                             "(no local key, --enable-local-keyservice=false), files decrypted "
                             "one after the other; decrypted output identical: "
                             + _yes(k["identical_output"])})
    # Peak memory: every drop-in case (core and growth), sops-enclave <= sops. The pack is
    # shown in its row but not counted: a bash pipeline's largest stage against exec plus
    # its dev enclave process is not the same comparison.
    mem = [(r["case"], r["sops_rss_mib"], r["enclave_rss_mib"]) for r in core
           if r["key"] != "floor"]
    if growth:
        mem += [(f"growth {r['op']} {r['format'].upper()} {_n(r['values'])}", r["sops_rss_mib"],
                 r["enclave_rss_mib"]) for r in growth["rows"]]
    if mem:
        worst = max(mem, key=lambda m: m[2] / m[1])
        above = [m for m in mem if m[2] > m[1]]
        notes = (f"ratio = worst case ({worst[0]}: {worst[2]:.0f} vs {worst[1]:.0f} MiB); "
                 + ("above sops in: " + ", ".join(f"{c} ({a:.0f} vs {b:.0f} MiB)"
                                                  for c, b, a in above) if above
                    else "sops-enclave at or below sops in every case"))
        if pack:
            notes += (f"; not counted: pack {pack['enclave']['rss_mib']:.0f} (exec and its dev "
                      f"enclave) vs {pack['sops']['rss_mib']:.0f} MiB (largest pipeline stage)")
        out.append({"case": f"peak memory (maxrss), each of the {len(mem)} -d/-e cases above",
                    "target": "≤ sops", "sops": "", "enclave": "",
                    "ratio": f"{worst[2] / worst[1]:.2f}", "meets": _yes(not above),
                    "rss": f"{max(m[1] for m in mem):.0f} / {max(m[2] for m in mem):.0f} (max)",
                    "notes": notes})
    return out


def render(rows: list[dict], conditions: str) -> str:
    lines = ["| case | target (ratio) | sops 3.11 (s) | sops-enclave (s) | ratio | meets target "
             "| peak RSS sops / sops-enclave (MiB) | notes |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join(r[k].replace("|", "\\|") for k in (
            "case", "target", "sops", "enclave", "ratio", "meets", "rss", "notes")) + " |")
    return "\n".join(lines) + "\n\n" + conditions + "\n"


def _code_state() -> str:
    """The commit under test and how many paths differ from it (others may be editing)."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"],
                               capture_output=True, text=True, timeout=30).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head or 'unknown'}" + (f" + {len(dirty)} uncommitted paths" if dirty else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _mem_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1048576:.0f} GiB RAM"
    except OSError:
        pass
    return "RAM unknown"


def _version(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, SOPS_DISABLE_VERSION_CHECK="1"))
        return (p.stdout or p.stderr).splitlines()[0].strip()
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def conditions(args, cfg: dict, core: list[dict], growth: dict | None, pack: dict | None,
               elapsed: float, sops: str, ours: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    def pkg(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return "?"

    cmd = "python bench/run.py" + (" --quick" if args.quick else "") + \
        (f" --runs {args.runs}" if args.runs else "") + \
        (f" --values {args.values}" if args.values else "") + \
        (f" --parts {args.parts}" if set(args.parts.split(",")) != set(ALL_PARTS) else "") + \
        (" --write-readme" if args.write_readme else "")
    size = next((r["encrypted_mb"] for r in core if r["key"] == "-d YAML"), None)
    make = "" if args.quick or args.runs or args.values or set(args.parts.split(",")) != set(ALL_PARTS) \
        else " (`make bench`)"
    parts = [f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by "
             f"`{cmd}`{make} in {elapsed / 60:.1f} min: {_cpu_model()}, "
             f"{os.cpu_count()} cores, {_mem_gib()}, Linux {platform.release()}, Python "
             f"{platform.python_version()}, {_version([sops, '--version'])}, "
             f"sops-enclave {pkg('sops-enclave')}, moto {pkg('moto')}, jq "
             f"{_version(['jq', '--version']).removeprefix('jq-')}."
             + f" Code: commit {cfg['code_before']} at the start, {cfg['code_after']} at the end."
             + (" Load average (1/5/15 min) at the start "
                + "/".join(f"{x:.2f}" for x in cfg["load_before"]) + ", at the end "
                + "/".join(f"{x:.2f}" for x in cfg["load_after"])
                + " (the machine is shared; other processes add noise to both tools alike)."
                if "load_after" in cfg else "")
             + (" **Quick smoke run (`--quick`): few runs, small sizes; not the reference "
                "numbers.**" if args.quick else ""),
             "Whole processes, start-up included; the two tools alternate run by run (which one "
             "goes first flips each run); times are medians; ratio = sops-enclave / sops, below "
             "1 is faster. Peak RSS: one extra, untimed run of each tool per case (also a "
             "warm-up) under GNU time (`/usr/bin/time -f %M`: the largest RSS of the process "
             "and of the children it waited for); timed runs are started directly, unwrapped. "
             "(Not `wait4` in the bench process: Linux starts a child's maxrss at the RSS of "
             "the process that spawned it, which would floor every reading.) age keys "
             "throughout, except the pack."
             + (f" Core cases: {cfg['runs']} runs each; the {cfg['values']:,}-value YAML file "
                f"is {size:.1f} MB encrypted." if core else "")
             + (f" sops-enclave: the project's virtualenv (an editable install), "
                f"{cfg.get('bytecode', 'bytecode as found')}; the rows marked *installed "
                f"wheel* run the {cfg['wheel']} (no editable-install finder at start-up)."
                if core and cfg.get("wheel", "").startswith("wheel ") else
                f" sops-enclave: the project's virtualenv (an editable install), "
                f"{cfg.get('bytecode', 'bytecode as found')}; installed wheel not measured "
                f"({cfg.get('wheel', '?')})." if core else "")]
    if growth:
        sizes = ", ".join(f"{n:,}" for n in cfg["growth_sizes"])
        parts.append(
            f"Growth: {sizes} values, {cfg['growth_runs']} runs per size"
            + (f" ({cfg['growth_big_runs']} at sizes above 50,000, to bound the run time)"
               if any(n > 50_000 for n in cfg["growth_sizes"]) else "")
            + ". \"Linear\" means the marginal cost per 1,000 values of the last step is at most "
              "1.25 × that of the step before (the marginal cost removes the constant start-up "
              "that dominates small files); \"ratio holds\" means the ratio at the largest size "
              "is at most 1.1 × the ratio at the size before. The growth row's ratio is the "
              "ratio of the marginal costs.")
    if pack:
        parts.append(
            f"Pack: {pack['inputs']} YAML inputs ({pack['per_output']} per output, each "
            "encrypted separately, so as many distinct data keys) into "
            f"{pack['outputs']} JSON outputs encrypted for a KMS key (with an encryption "
            "context) and an age recipient, "
            f"{pack['runs']} runs. sops-enclave: `sops-enclave exec --enclave dev` on a git "
            "repository whose inputs are encrypted for a KMS key whose key policy allows "
            "Decrypt only with an attestation document carrying the dev enclave's PCR0 "
            "(dev enclave process start, git object collection and receipts included). "
            "Baseline: a bash loop, per output `sops decrypt` of its inputs | `jq -s 'reduce "
            ".[] as $x ({}; . * $x)'` | `sops encrypt`, one output after the other. The sops "
            "binary cannot attest, so the gated key refuses it; the baseline decrypts its own "
            "copy of the same plaintexts, encrypted for a second KMS key with no attestation "
            "condition, through the same attested KMS URL (same HTTP hops, same request "
            "counter). KMS is moto's server behind the dev KMS-with-attestation layer, both on "
            "127.0.0.1 on the same machine (they compete for the same cores).")
    return "\n\n".join(p for p in parts if p)


# ---------------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=0, help="runs per case (5; 2 with --quick)")
    ap.add_argument("--values", type=int, default=0,
                    help="values of the core YAML/JSON cases (16000; 4000 with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 2 runs, growth 1k/5k YAML only, pack of 40 inputs into 4")
    ap.add_argument("--parts", default=",".join(ALL_PARTS),
                    help="comma-separated subset of " + ",".join(ALL_PARTS))
    ap.add_argument("--write-readme", action="store_true")
    ap.add_argument("--json", action="store_true", help="print every measurement as JSON")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    if parts - set(ALL_PARTS):
        ap.error("--parts takes " + ", ".join(ALL_PARTS))
    q = args.quick
    cfg = {"runs": args.runs or (2 if q else 5), "values": args.values or (4000 if q else 16000),
           "growth_sizes": [1000, 5000] if q else [1000, 10000, 100000],
           "growth_formats": ["yaml"] if q else ["yaml", "json"],
           "pack_outputs": 4 if q else 20, "pack_per_output": 10,
           "pack_parallel": os.cpu_count() or 2}
    cfg["growth_runs"] = cfg["runs"]
    cfg["growth_big_runs"] = min(cfg["runs"], 3)
    cfg["pack_runs"] = cfg["runs"]
    import pyrage

    t_start = time.perf_counter()
    cfg["load_before"] = os.getloadavg()
    sops, ours = tool("sops"), tool("sops-enclave")
    ident = pyrage.x25519.Identity.generate()
    recipient = str(ident.to_public())
    work = Path(tempfile.mkdtemp(prefix="sops-enclave-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOPS_", "AWS_"))}
    env.update(SOPS_AGE_KEY=str(ident), HOME=str(work), SOPS_DISABLE_VERSION_CHECK="1")
    core: list[dict] = []
    growth = pack = packbig = packgrowth = keyservice = None
    failed: dict[str, str] = {}
    cfg["code_before"] = _code_state()
    cfg["bytecode"] = compile_bytecode()

    def part(name, fn):
        # A part that fails is reported in the table; the other parts still count.
        try:
            return fn()
        except (Exception, SystemExit) as e:
            failed[name] = str(e).strip().splitlines()[-1][:300] if str(e).strip() else repr(e)
            log(f"bench: the {name} part failed: {e}")
            return None

    def do_core():
        wheel, cfg["wheel"] = installed_wheel(work)
        log(f"core: {cfg['runs']} runs per case; {cfg['wheel']}")
        return run_core(sops, ours, env, recipient, work, values=cfg["values"], runs=cfg["runs"],
                        wheel=wheel)

    def do_growth():
        from growth import run_growth

        log(f"growth: sizes {cfg['growth_sizes']}")
        return run_growth(sops, ours, env, recipient, work, sizes=cfg["growth_sizes"],
                          runs=cfg["growth_runs"], big_runs=cfg["growth_big_runs"],
                          formats=cfg["growth_formats"])

    def do_pack():
        from pack import PackBench

        log(f"pack: {cfg['pack_outputs'] * cfg['pack_per_output']} inputs into "
            f"{cfg['pack_outputs']} outputs, {cfg['pack_runs']} runs")
        with PackBench(cfg["pack_outputs"], cfg["pack_per_output"]) as pb:
            return pb.run(cfg["pack_runs"], cfg["pack_parallel"])

    def do_packbig():
        from pack import PackBench

        n = 4000 if q else 16000
        log(f"pack, big inputs: one output from 2 inputs of {n:,} keys, {cfg['pack_runs']} runs")
        with PackBench(1, 2, values=n) as pb:
            res = pb.run(cfg["pack_runs"])
        res["values"] = n
        return res

    def do_packgrowth():
        from pack import PackBench

        big, small = (40, 4) if q else (200, 20)
        runs = min(cfg["pack_runs"], 3)
        log(f"pack growth: {big * 10} inputs → {big} outputs vs {small * 10} → {small}, "
            f"{runs} runs")
        with PackBench(big, 10, baseline=False, small_outputs=small) as pb:
            return pb.run_growth(runs)

    def do_keyservice():
        log(f"keyservice: 100 files, {cfg['runs']} runs")
        return run_keyservice(sops, ours, env, recipient, work, runs=cfg["runs"])

    try:
        if "core" in parts:
            core = part("core", do_core) or []
        if "growth" in parts:
            growth = part("growth", do_growth)
        if "pack" in parts:
            pack = part("pack", do_pack)
        if "packbig" in parts:
            packbig = part("packbig", do_packbig)
        if "packgrowth" in parts:
            packgrowth = part("packgrowth", do_packgrowth)
        if "keyservice" in parts:
            keyservice = part("keyservice", do_keyservice)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cfg["code_after"] = _code_state()
    elapsed = time.perf_counter() - t_start
    cfg["load_after"] = os.getloadavg()
    rows = build_rows(core, growth, pack, packbig=packbig, packgrowth=packgrowth,
                      keyservice=keyservice)
    for name, why in failed.items():
        rows.append({"case": f"{name}: NOT MEASURED", "target": "", "sops": "", "enclave": "",
                     "ratio": "", "meets": "—", "rss": "", "notes": why})
    out = render(rows, conditions(args, cfg, core, growth, pack, elapsed, sops, ours))
    if args.json:
        print(json.dumps({"config": cfg, "core": core, "growth": growth, "pack": pack,
                          "packbig": packbig, "packgrowth": packgrowth,
                          "keyservice": keyservice,
                          "failed": failed, "elapsed_s": elapsed}, indent=2))
    else:
        print(out)
    log(f"bench: done in {elapsed:.0f} s")
    if args.write_readme:
        readme = ROOT / "README.md"
        text = readme.read_text()
        new, n = re.subn(r"(<!-- bench:start -->\n).*?(<!-- bench:end -->)",
                         lambda m: m.group(1) + out + m.group(2), text, flags=re.S)
        if n != 1:
            raise SystemExit("bench: README.md has no <!-- bench:start --> ... "
                             "<!-- bench:end --> markers")
        readme.write_text(new)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
