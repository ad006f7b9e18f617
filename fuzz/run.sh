#!/usr/bin/env bash
# Run every fuzz target for SECONDS each (default 60): `bash fuzz/run.sh 300`.
#
# Uses atheris (coverage-guided libFuzzer) when it is importable; if it is not, tries once to
# `pip install atheris` into the project's venv (set FUZZ_NO_INSTALL=1 to skip that), and
# otherwise falls back to a Hypothesis-driven loop per target. FUZZ_ENGINE=hypothesis forces
# the fallback. TARGETS="cipher config" runs only those. Extra arguments after SECONDS are
# passed to libFuzzer (e.g. -jobs=4).
# Exit status: 0 when no target found anything new (known findings are counted, not failed).
set -u
cd "$(dirname "$0")/.."
SECONDS_EACH="${1:-60}"
shift || true
PY=".venv/bin/python"
[ -x "$PY" ] || PY="$(command -v python3)"

ALL="cipher yaml_store json_store dotenv_store ini_store binary_store metadata config manifest attestation cms receipt frame recv_frame"
TARGETS="${TARGETS:-$ALL}"

if [ "${FUZZ_ENGINE:-auto}" != "hypothesis" ] && ! "$PY" -c "import atheris" 2>/dev/null; then
    if [ "${FUZZ_NO_INSTALL:-0}" != "1" ]; then
        echo "atheris is not installed; trying: $PY -m pip install atheris"
        "$PY" -m pip install -q atheris >/dev/null 2>&1 || true
    fi
    if ! "$PY" -c "import atheris" 2>/dev/null; then
        echo "atheris unavailable: falling back to the Hypothesis loop"
        export FUZZ_ENGINE=hypothesis
    fi
fi

failed=""
for t in $TARGETS; do
    echo "=== $t (${SECONDS_EACH}s)"
    if ! "$PY" "fuzz/fuzz_$t.py" --seconds "$SECONDS_EACH" -- "$@"; then
        failed="$failed $t"
    fi
done
if [ -n "$failed" ]; then
    echo "fuzz: new findings in:$failed (inputs in fuzz/crashes/ or printed above)"
    exit 1
fi
echo "fuzz: no new findings"
