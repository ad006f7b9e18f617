"""The only reader of ``SOPS_*`` key variables and default key paths.

Everything here takes an explicit environment mapping so callers and tests decide what it sees.
"""

from __future__ import annotations

import os
from typing import Mapping

from sops_enclave.errors import SopsError

__all__ = ["age_identities", "gpg_exec", "default_age_keys_path"]


def default_age_keys_path(env: Mapping[str, str]) -> str:
    base = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME", os.path.expanduser("~")),
                                                      ".config")
    return os.path.join(base, "sops", "age", "keys.txt")


def age_identities(env: Mapping[str, str]) -> list:
    """All age identities sops would find: SOPS_AGE_KEY, _FILE, _CMD and the default keys.txt."""
    from sops_enclave.keys.age import parse_identities

    out: list = []
    if env.get("SOPS_AGE_KEY"):
        text = "\n".join(env["SOPS_AGE_KEY"].split())
        out += parse_identities(text, "SOPS_AGE_KEY")
    path = env.get("SOPS_AGE_KEY_FILE")
    if path:
        try:
            with open(os.path.expanduser(path), encoding="utf-8") as f:
                out += parse_identities(f.read(), path)
        except OSError as e:
            raise SopsError(f"failed to open file {path}: {e.strerror}") from None
    cmd = env.get("SOPS_AGE_KEY_CMD")
    if cmd:
        import shlex
        import subprocess

        try:
            p = subprocess.run(shlex.split(cmd), capture_output=True, env=dict(env), timeout=60)
        except (OSError, ValueError) as e:
            raise SopsError(f"failed to execute SOPS_AGE_KEY_CMD: {e}") from None
        if p.returncode != 0:
            raise SopsError(f"failed to execute SOPS_AGE_KEY_CMD: exit status {p.returncode}")
        out += parse_identities(p.stdout.decode("utf-8", "replace"), "SOPS_AGE_KEY_CMD")
    default = default_age_keys_path(env)
    if os.path.isfile(default):
        with open(default, encoding="utf-8") as f:
            out += parse_identities(f.read(), default)
    return out


def gpg_exec(env: Mapping[str, str]) -> str:
    return env.get("SOPS_GPG_EXEC") or "gpg"
