"""Helpers shared by the benchmark scripts (bench/run.py, bench/growth.py, bench/pack.py).

Not part of the package and not collected by pytest (``testpaths = tests``).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if not path:
        sys.exit(f"bench: {name} not found (run `make install` first)")
    return path


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_data(n_values: int, prefix: str = "service") -> dict:
    """Nested maps of strings, ints and floats: exactly n_values leaves, in sections of 16
    (the last one shorter when n_values is not a multiple of 16)."""
    data: dict = {}
    for s in range(max(1, -(-n_values // 16))):
        sec = {}
        for k in range(min(16, n_values - s * 16) if n_values > 0 else 16):
            i = s * 16 + k
            if k % 4 == 0:
                sec[f"port_{k}"] = 1000 + i
            elif k % 4 == 1:
                sec[f"ratio_{k}"] = i / 7
            else:
                sec[f"secret_{k}"] = f"value-{i}-" + "x" * (i % 23)
        data[f"{prefix}_{s:05d}"] = sec
    return data


def to_yaml(data: dict) -> bytes:
    """Two-level maps as YAML (block style, 4-space indent, like sops emits)."""
    out = []
    for sec, kv in data.items():
        out.append(f"{sec}:\n")
        for k, v in kv.items():
            out.append(f"    {k}: {v}\n")
    return "".join(out).encode()


GNU_TIME = shutil.which("time", path="/usr/bin:/bin")


def measure(cmd: list[str], env: dict, timeout: float = 600.0, *,
            rss: bool = False, cwd: str | os.PathLike | None = None) -> tuple[float, int, bytes]:
    """(wall seconds, peak RSS in KiB or 0, stdout) of one child process.

    Timing runs start the command directly (no wrapper in the timed path). With ``rss``,
    the command runs under GNU time (``/usr/bin/time -f %M``) instead, which reports the
    largest RSS of the command and of the descendants it waited for (a shell pipeline: its
    largest stage; sops-enclave exec: exec or its dev enclave). Not wait4() on our own
    child: Linux starts a child's maxrss at the RSS of the process that spawned it (the
    bench process, tens to hundreds of MiB), which would floor every reading. A run with
    ``rss`` is not timed by the callers (the wrapper adds a couple of milliseconds)."""
    wrapped = cmd
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(prefix="bench-rss-") as rss_file:
        if rss:
            if not GNU_TIME:
                raise SystemExit("bench: GNU time (/usr/bin/time) is needed for peak memory")
            wrapped = [GNU_TIME, "-f", "%M", "-o", rss_file.name, *cmd]
        t0 = time.perf_counter()
        p = subprocess.Popen(wrapped, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                             cwd=cwd)
        timer = threading.Timer(timeout, p.kill)  # bounded: a hung child is killed
        timer.start()
        try:
            _, status, _ = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        dt = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if p.returncode != 0:
            raise SystemExit(f"bench: {' '.join(cmd)} failed ({p.returncode}): "
                             f"{err.read().decode(errors='replace')[-800:]}")
        peak = 0
        if rss:
            lines = [ln for ln in open(rss_file.name).read().split() if ln.isdigit()]
            peak = int(lines[-1]) if lines else 0
        return dt, peak, out.read()


def alternate(ours: list[str], theirs: list[str], runs: int, env: dict, *,
              cwd: str | os.PathLike | None = None, ours_env: dict | None = None) -> dict:
    """One untimed run of each command under GNU time (peak memory; also a warm-up), then
    ``runs`` timed runs of both, alternating which goes first. Returns times, peaks (KiB),
    medians and the last stdout of each side (0 = sops-enclave, 1 = sops)."""
    times: dict[int, list[float]] = {0: [], 1: []}
    peaks: dict[int, int] = {}
    outputs: dict[int, bytes] = {}
    for which in (0, 1):
        _, peaks[which], _ = measure(ours if which == 0 else theirs,
                                     (ours_env or env) if which == 0 else env, rss=True, cwd=cwd)
    for i in range(runs):
        for which in ((0, 1) if i % 2 == 0 else (1, 0)):
            dt, _, out = measure(ours if which == 0 else theirs,
                                 (ours_env or env) if which == 0 else env, cwd=cwd)
            times[which].append(dt)
            outputs[which] = out
    return {"times": times, "peaks": peaks, "outputs": outputs,
            "enclave_s": statistics.median(times[0]), "sops_s": statistics.median(times[1])}


def compile_bytecode() -> str:
    """Write the package's bytecode (``__pycache__``) before anything is timed, as ``pip
    install`` does for a wheel. Without it, a checkout whose ``.pyc`` files are missing or
    stale (a fresh clone, an edit, ``PYTHONDONTWRITEBYTECODE=1`` in the environment) compiles
    every module from source in every process, and that would be timed."""
    dirs = [str(ROOT / "sops_enclave"), str(ROOT / "enclave")]
    p = subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", *dirs],
                       capture_output=True, timeout=600)
    if p.returncode != 0:
        raise SystemExit("bench: compileall failed: " + p.stdout.decode()[-400:])
    return "bytecode compiled beforehand (`python -m compileall`, as a wheel install does)"


def installed_wheel(work: Path) -> tuple[str | None, str]:
    """``(console script, how)`` of sops-enclave installed from a wheel of this checkout, as a
    user gets it: a virtual environment of its own with the package's files and their
    bytecode in site-packages and the entry-point script pip writes; no editable finder. The
    dependencies are this virtualenv's (a ``.pth`` line adds its site-packages to the path,
    without running its ``.pth`` files, so the editable install's finder is not loaded).
    ``(None, why)`` when the wheel cannot be built here (its build backend comes from PyPI)."""
    import sysconfig

    wheels = work / "wheel"
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                        str(wheels), str(ROOT)], capture_output=True, timeout=600)
    built = sorted(wheels.glob("sops_enclave-*.whl"))
    if p.returncode != 0 or not built:
        return None, "no wheel: " + (p.stderr.decode().strip().splitlines() or ["?"])[-1][:200]
    venv = work / "wheel-venv"
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(venv)], check=True,
                   capture_output=True, timeout=120)
    site = next((venv / "lib").glob("python*/site-packages"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
                    "--target", str(site), str(built[-1])], check=True, capture_output=True,
                   timeout=600)
    (site / "zz-bench-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0",
                    str(site / "sops_enclave")], check=True, capture_output=True, timeout=600)
    script = venv / "bin" / "sops-enclave"
    script.write_text(f"#!{venv / 'bin' / 'python'}\nimport sys\n"
                      "from sops_enclave.cli import main\n"
                      "if __name__ == '__main__':\n    sys.exit(main())\n")
    script.chmod(0o755)
    return str(script), f"wheel {built[-1].name} in a virtualenv of its own"
