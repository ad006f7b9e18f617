"""PGP master keys through the ``gpg`` binary (``SOPS_GPG_EXEC``, ``GNUPGHOME``)."""

from __future__ import annotations

import os
import subprocess
from typing import Mapping

from sops_enclave.errors import KeyMismatch, SopsError, go_errno_text
from sops_enclave.keys.base import KeyUnavailable

__all__ = ["wrap", "unwrap", "gnupg_home"]


def wrap(data_key: bytes, fingerprint: str, gpg: str = "gpg", env: dict | None = None) -> str:
    fp = fingerprint.replace(" ", "")
    args = [gpg, "--no-default-recipient", "--yes", "--encrypt", "-a", "-r", fp,
            "--trusted-key", fp.rstrip("!")[-16:], "--no-encrypt-to"]
    try:
        p = subprocess.run(args, input=data_key, capture_output=True, env=env, timeout=120)
    except FileNotFoundError:
        raise KeyUnavailable(f"gpg binary {gpg!r} not found (set SOPS_GPG_EXEC)") from None
    if p.returncode != 0 or not p.stdout.strip():
        err = p.stderr.decode("utf-8", "replace").strip().splitlines()
        raise SopsError(err[-1] if err else "gpg failed")
    return p.stdout.decode("ascii").strip()


def gnupg_home(env: Mapping[str, str] | None = None) -> str:
    """sops' ``gnuPGHome``: ``$GNUPGHOME``, else the user's home directory + ``.gnupg``."""
    env = os.environ if env is None else env
    d = env.get("GNUPGHOME", "")
    if d:
        return d
    try:
        import pwd

        return os.path.join(pwd.getpwuid(os.getuid()).pw_dir, ".gnupg")
    except (ImportError, KeyError):
        return os.path.join(env.get("HOME", ""), ".gnupg")


def _openpgp_attempt(env: Mapping[str, str] | None) -> str:
    """What sops' built-in OpenPGP attempt reports. sops first reads the legacy keyrings
    (``secring.gpg``, else ``pubring.gpg``) with go-crypto; GnuPG >= 2.1 homes have neither,
    so this is nearly always "could not load secring: open ...: no such file or directory".
    A legacy keyring that exists is not read here (gpg reads it): the text is then sops'
    usual one for a key that is not in it."""
    home = gnupg_home(env)
    path = os.path.join(home, "secring.gpg")
    try:
        os.lstat(path)
    except FileNotFoundError:
        path = os.path.join(home, "pubring.gpg")
    except OSError as e:
        return f"could not load secring: lstat {path}: {go_errno_text(e)}"
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        return f"could not load secring: open {path}: {go_errno_text(e)}"
    return "reading PGP message failed: openpgp: incorrect key"


def unwrap(enc: str, gpg: str = "gpg", env: dict | None = None) -> bytes:
    """The data key through ``gpg -d`` (the arguments sops uses). The error text is sops':
    the built-in keyring attempt, then gpg's whole stderr."""
    try:
        p = subprocess.run([gpg, "-d"], input=enc.encode(), capture_output=True, env=env,
                           timeout=120)
        out, err, rc = p.stdout, p.stderr.decode("utf-8", "replace").strip(), p.returncode
    except FileNotFoundError:
        out, err, rc = b"", "", 1
    if rc != 0:
        why = f"failed to decrypt sops data key with pgp: {err}"
    elif not out:
        why = "failed to decrypt sops data key with pgp: zero bytes returned"
    else:
        return out
    raise KeyMismatch("could not decrypt data key with PGP key: github.com/ProtonMail/go-crypto/"
                      f"openpgp error: {_openpgp_attempt(env)}; GnuPG binary error: {why}")


class PGPKeyType:
    """PGP keys through gpg (metadata ``pgp``: ``created_at``, ``enc``, ``fp``)."""

    type = "pgp"

    def wrap(self, entry, data_key: bytes, ctx) -> str:
        return wrap(data_key, entry.fp, ctx.gpg(), dict(ctx.env))

    def unwrap(self, entry, ctx) -> bytes:
        return unwrap(entry.enc, ctx.gpg(), dict(ctx.env))

    def from_arg(self, value: str, ctx, **_opts) -> list:
        """``--pgp``/``SOPS_PGP_FP``: comma-separated fingerprints, spaces removed (as sops'
        ``NewMasterKeyFromFingerprint``), empty items dropped."""
        from sops_enclave.metadata import PGPEntry

        return [PGPEntry(f.replace(" ", "")) for f in value.split(",") if f.strip()]


KEY_TYPE = PGPKeyType()
