"""PGP master keys through the ``gpg`` binary (``SOPS_GPG_EXEC``, ``GNUPGHOME``)."""

from __future__ import annotations

import subprocess

from sops_enclave.errors import KeyMismatch, SopsError

__all__ = ["wrap", "unwrap"]


def wrap(data_key: bytes, fingerprint: str, gpg: str = "gpg", env: dict | None = None) -> str:
    fp = fingerprint.replace(" ", "")
    args = [gpg, "--no-default-recipient", "--yes", "--encrypt", "-a", "-r", fp,
            "--trusted-key", fp.rstrip("!")[-16:], "--no-encrypt-to"]
    try:
        p = subprocess.run(args, input=data_key, capture_output=True, env=env, timeout=120)
    except FileNotFoundError:
        raise SopsError(f"failed to encrypt new data key with master key \"{fp}\": gpg binary "
                        f"{gpg!r} not found (set SOPS_GPG_EXEC)") from None
    if p.returncode != 0 or not p.stdout.strip():
        err = p.stderr.decode("utf-8", "replace").strip().splitlines()
        raise SopsError(f"failed to encrypt new data key with master key \"{fp}\": "
                        f"{err[-1] if err else 'gpg failed'}")
    return p.stdout.decode("ascii").strip()


def unwrap(enc: str, gpg: str = "gpg", env: dict | None = None) -> bytes:
    try:
        p = subprocess.run([gpg, "--use-agent", "--quiet", "--batch", "-d"], input=enc.encode(),
                           capture_output=True, env=env, timeout=120)
    except FileNotFoundError:
        raise KeyMismatch(f"gpg binary {gpg!r} not found (set SOPS_GPG_EXEC)") from None
    if p.returncode != 0 or not p.stdout:
        lines = p.stderr.decode("utf-8", "replace").strip().splitlines()
        raise KeyMismatch("failed to decrypt sops data key with pgp: " +
                          (lines[-1] if lines else "gpg returned no data"))
    return p.stdout
