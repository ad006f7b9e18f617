"""The only reader of ``SOPS_*`` key variables and default key paths.

Everything here takes an explicit environment mapping so callers and tests decide what it sees.

age identities are found as sops 3.11 finds them (``age/keysource.go: loadIdentities``), in
this order: the SSH private key in ``SOPS_AGE_SSH_PRIVATE_KEY_FILE``, ``~/.ssh/id_ed25519`` and
``~/.ssh/id_rsa`` (all of them that exist), then ``SOPS_AGE_KEY``, ``SOPS_AGE_KEY_FILE``, the
output of ``SOPS_AGE_KEY_CMD`` (run with ``SOPS_AGE_RECIPIENT`` set to the key being
decrypted) and ``$XDG_CONFIG_HOME/sops/age/keys.txt`` (read only when nothing else gave a
source, or when it exists). A source that fails is reported, not fatal: the errors and the
locations where no key was found go into sops' error text (:func:`AgeIdentities`).
"""

from __future__ import annotations

import os
from sops_enclave.record import field, record
from typing import Mapping

from sops_enclave.errors import SopsError, go_errno_text

__all__ = ["AgeIdentities", "load_age_identities", "age_identities", "x25519_identity_lines",
           "gpg_exec", "default_age_keys_path", "user_config_dir"]

SSH_KEY_FILE_ENV = "SOPS_AGE_SSH_PRIVATE_KEY_FILE"


@record
class AgeIdentities:
    """What identity discovery found: identities, load errors, sources with no key."""

    identities: list = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)


def user_config_dir(env: Mapping[str, str]) -> str:
    """Go's ``os.UserConfigDir`` on Linux (raises SopsError with Go's text)."""
    d = env.get("XDG_CONFIG_HOME", "")
    if d:
        if not os.path.isabs(d):
            raise SopsError("path in $XDG_CONFIG_HOME is relative")
        return d
    home = env.get("HOME", "")
    if not home:
        raise SopsError("neither $XDG_CONFIG_HOME nor $HOME are defined")
    return home + "/.config"


def default_age_keys_path(env: Mapping[str, str]) -> str:
    try:
        base = user_config_dir(env)
    except SopsError:
        base = os.path.join(os.path.expanduser("~"), ".config")
    return os.path.normpath(os.path.join(base, "sops", "age", "keys.txt"))


def _ssh_identities(env: Mapping[str, str], out: AgeIdentities) -> None:
    from sops_enclave.keys.age import parse_ssh_identity

    if SSH_KEY_FILE_ENV in env:
        try:
            out.identities.append(parse_ssh_identity(env[SSH_KEY_FILE_ENV]))
        except SopsError as e:
            out.errors.append(e.message)
    else:
        out.unused.append(SSH_KEY_FILE_ENV)
    home = env.get("HOME", "")
    if not home:
        out.errors.append("$HOME is not defined")
        return
    for name in ("id_ed25519", "id_rsa"):
        path = os.path.normpath(os.path.join(home, ".ssh", name))
        try:
            os.stat(path)
        except OSError:
            out.unused.append(path)
            continue
        try:
            out.identities.append(parse_ssh_identity(path))
        except SopsError as e:
            out.errors.append(e.message)


def _run_key_cmd(cmd: str, env: Mapping[str, str], recipient: str) -> bytes:
    import shlex
    import subprocess

    try:
        args = shlex.split(cmd)
    except ValueError as e:
        raise SopsError(f"failed to parse command {cmd} from SOPS_AGE_KEY_CMD: {e}") from None
    if not args:
        raise SopsError(f"failed to parse command {cmd} from SOPS_AGE_KEY_CMD: empty command")
    child = dict(env)
    child["SOPS_AGE_RECIPIENT"] = recipient
    import shutil

    exe = args[0] if "/" in args[0] else shutil.which(args[0], path=child.get("PATH", os.defpath))
    why = None
    if exe is None:
        why = f'exec: "{args[0]}": executable file not found in $PATH'
    else:
        try:
            p = subprocess.run([exe, *args[1:]], capture_output=True, env=child,
                               stdin=subprocess.DEVNULL)
        except OSError as e:
            why = f"fork/exec {exe}: {go_errno_text(e)}"
        else:
            if p.returncode < 0:
                import signal

                why = f"signal: {_signal_text(signal.Signals(-p.returncode))}"
            elif p.returncode != 0:
                why = f"exit status {p.returncode}"
            else:
                return p.stdout
    raise SopsError(f"failed to execute command {cmd} from SOPS_AGE_KEY_CMD: {why}")


def _signal_text(sig) -> str:
    names = {"SIGKILL": "killed", "SIGTERM": "terminated", "SIGINT": "interrupt",
             "SIGSEGV": "segmentation fault", "SIGABRT": "aborted", "SIGHUP": "hangup",
             "SIGPIPE": "broken pipe", "SIGQUIT": "quit"}
    return names.get(sig.name, sig.name)


def load_age_identities(env: Mapping[str, str], recipient: str = "") -> AgeIdentities:
    """Every age identity sops would find for the key ``recipient``, with the errors and
    unused locations sops reports (in sops' order; sops ranges over a Go map for the key
    sources, so with several of them its order varies from run to run)."""
    from sops_enclave.keys.age import identities_from_bytes

    out = AgeIdentities()
    _ssh_identities(env, out)
    readers: list[tuple[str, bytes]] = []
    if "SOPS_AGE_KEY" in env:
        readers.append(("SOPS_AGE_KEY", env["SOPS_AGE_KEY"].encode("utf-8", "surrogateescape")))
    else:
        out.unused.append("SOPS_AGE_KEY")
    if "SOPS_AGE_KEY_FILE" in env:
        path = env["SOPS_AGE_KEY_FILE"]
        try:
            with open(path, "rb") as f:
                readers.append(("SOPS_AGE_KEY_FILE", f.read()))
        except IsADirectoryError:
            readers.append(("SOPS_AGE_KEY_FILE", b""))
        except OSError as e:
            out.errors.append(f"failed to open SOPS_AGE_KEY_FILE file: open {path}: "
                              f"{go_errno_text(e)}")
    else:
        out.unused.append("SOPS_AGE_KEY_FILE")
    if "SOPS_AGE_KEY_CMD" in env:
        try:
            readers.append(("SOPS_AGE_KEY_CMD", _run_key_cmd(env["SOPS_AGE_KEY_CMD"], env,
                                                             recipient)))
        except SopsError as e:
            out.errors.append(e.message)
    else:
        out.unused.append("SOPS_AGE_KEY_CMD")
    try:
        cfg = user_config_dir(env)
    except SopsError as e:
        if not readers and not out.identities:
            out.errors.append(f"user config directory could not be determined: {e.message}")
        cfg = ""
    if cfg:
        path = os.path.normpath(os.path.join(cfg, "sops", "age", "keys.txt"))
        try:
            with open(path, "rb") as f:
                readers.append((path, f.read()))
        except FileNotFoundError:
            if not readers and not out.identities:
                out.unused.append(path)
        except IsADirectoryError:
            readers.append((path, b""))
        except OSError as e:
            out.errors.append(f"failed to open file: open {path}: {go_errno_text(e)}")
    for location, data in readers:
        try:
            ids = identities_from_bytes(location, data)
        except SopsError as e:
            out.errors.append(e.message)
            continue
        out.identities += ids
        if not ids:
            out.unused.append(location)
    return out


def age_identities(env: Mapping[str, str], recipient: str = "") -> list:
    """The identities of :func:`load_age_identities` (errors and empty sources dropped)."""
    return load_age_identities(env, recipient).identities


def x25519_identity_lines(env: Mapping[str, str]) -> str:
    """The plain X25519 identities sops would find (``AGE-SECRET-KEY-1...`` lines, one per
    line), for a process that takes identities as text (the dev enclave). SSH, plugin and
    passphrase-protected identities are left out; ``SOPS_AGE_KEY_CMD`` runs with an empty
    ``SOPS_AGE_RECIPIENT``."""
    import pyrage

    found = load_age_identities(env)
    return "\n".join(str(i) for i in found.identities if isinstance(i, pyrage.x25519.Identity))


def gpg_exec(env: Mapping[str, str]) -> str:
    return env.get("SOPS_GPG_EXEC") or "gpg"
