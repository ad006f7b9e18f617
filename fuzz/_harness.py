"""Runs one fuzz target for a while: under atheris when it is installed, else a Hypothesis loop.

Used by every ``fuzz/fuzz_<target>.py``::

    python fuzz/fuzz_yaml_store.py --seconds 60            # atheris if importable
    python fuzz/fuzz_yaml_store.py --seconds 60 --engine hypothesis
    python fuzz/fuzz_yaml_store.py --seconds 60 -- -jobs=4  # extra libFuzzer flags

atheris: the corpus is ``fuzz/corpus/<target>/`` (seeded from :func:`fuzzlib.seeds_for` and
``tests/regressions/<target>/``), the dictionary ``fuzz/corpus/<target>.dict``, crashing inputs
go to ``fuzz/crashes/<target>-*``; libFuzzer's ``-timeout`` and ``-rss_limit_mb`` catch hangs
and memory blow-ups. Hypothesis: rounds of 200 examples from :func:`strategies.inputs` until
the time is up, with the per-input time and memory limits of :func:`fuzzlib.execute`.

Exit status 0 when nothing new was found. Known findings (``fuzzlib.KNOWN``) are counted and
printed, not failed, unless ``FUZZ_STRICT=1``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
import traceback
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(FUZZ_DIR))
os.environ.setdefault("FUZZ_CA_DIR", str(FUZZ_DIR / "corpus" / "dev-ca"))

import fuzzlib  # noqa: E402


def _print_stats(name: str, engine: str, started: float) -> None:
    s = fuzzlib.STATS.get(name)
    if s is None:
        return
    known = ", ".join(f"{k}={n}" for k, n in sorted(s.known.items())) or "none"
    print(f"[{name}] {engine}: {s.examples} inputs in {time.time() - started:.1f} s "
          f"({s.accepted} accepted, {s.refused} refused); known findings hit: {known}",
          flush=True)


def _seed_corpus(name: str) -> Path:
    corpus = FUZZ_DIR / "corpus" / name
    corpus.mkdir(parents=True, exist_ok=True)
    seeds = list(fuzzlib.seeds_for(name))
    reg = fuzzlib.REGRESSIONS / name
    if reg.is_dir():
        seeds += [p.read_bytes() for p in sorted(reg.glob("*.bin"))]
    for data in seeds:
        (corpus / hashlib.sha1(data).hexdigest()).write_bytes(data)
    return corpus


def run_atheris(name: str, seconds: int, extra: list[str]) -> int:
    import atheris

    fuzzlib.USE_LIMITS = False  # libFuzzer owns SIGALRM (-timeout) and -rss_limit_mb
    target = fuzzlib.TARGETS[name]
    corpus = _seed_corpus(name)
    # Import everything the target touches before instrumenting.
    for data in fuzzlib.seeds_for(name)[:3]:
        try:
            fuzzlib.execute(name, target, data)
        except BaseException:  # noqa: BLE001 - a seed that crashes is reported by the run
            pass
    fuzzlib.STATS.clear()
    atheris.instrument_all()
    crashes = FUZZ_DIR / "crashes"
    crashes.mkdir(exist_ok=True)
    argv = [sys.argv[0], str(corpus), f"-max_total_time={seconds}", "-timeout=10",
            "-rss_limit_mb=2560", "-max_len=65536", "-print_final_stats=1",
            f"-dict={fuzzlib.write_dictionary(name, FUZZ_DIR / 'corpus' / f'{name}.dict')}",
            f"-artifact_prefix={crashes}/{name}-", *extra]

    seen: set[str] = set()

    def one(data: bytes) -> None:
        outcome = fuzzlib.execute(name, target, data)
        if outcome.startswith("known:") and outcome not in seen:
            seen.add(outcome)
            print(f"[{name}] {outcome} (first hit; counted, not failed: see fuzzlib.KNOWN)",
                  flush=True)

    print(f"[{name}] atheris {getattr(atheris, '__version__', '')}: {seconds} s, corpus "
          f"{corpus}", flush=True)
    atheris.Setup(argv, one)
    atheris.Fuzz()  # exits the process (libFuzzer prints the number of runs)
    return 0


def run_hypothesis(name: str, seconds: int) -> int:
    from hypothesis import HealthCheck, Phase, given, settings

    import strategies

    fn = strategies.function(name)
    started = time.time()

    @settings(max_examples=200, deadline=None, database=None, print_blob=True,
              suppress_health_check=list(HealthCheck),
              phases=[p for p in Phase if p is not Phase.explain])
    @given(strategies.inputs(name))
    def one_round(x):
        fuzzlib.execute(name, fn, x)

    why = "FUZZ_ENGINE=hypothesis" if os.environ.get("FUZZ_ENGINE") == "hypothesis" else \
        "atheris not installed"
    print(f"[{name}] hypothesis loop ({why}): {seconds} s", flush=True)
    try:
        while time.time() - started < seconds:
            one_round()
    except Exception:  # a new finding: Hypothesis printed the shrunk input
        traceback.print_exc()
        _print_stats(name, "hypothesis", started)
        return 1
    _print_stats(name, "hypothesis", started)
    return 0


def main(name: str) -> None:
    ap = argparse.ArgumentParser(description=f"Fuzz the {name} target.")
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", "60")))
    ap.add_argument("--engine", choices=["auto", "atheris", "hypothesis"],
                    default=os.environ.get("FUZZ_ENGINE", "auto"))
    ap.add_argument("extra", nargs="*", help="after --: extra libFuzzer flags")
    args = ap.parse_args()
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401
            engine = "atheris"
        except ImportError:
            engine = "hypothesis"
    if engine == "atheris":
        sys.exit(run_atheris(name, args.seconds, args.extra))
    sys.exit(run_hypothesis(name, args.seconds))
