"""age master keys through pyrage: an ASCII-armored age file holding the data key."""

from __future__ import annotations

from typing import Sequence

import pyrage

from sops_enclave.errors import KeyMismatch, SopsError

__all__ = ["parse_recipient", "parse_identities", "wrap", "unwrap"]


def parse_recipient(s: str):
    """A pyrage recipient for an ``age1...`` or ``ssh-...`` string, with sops' error text."""
    r = s.strip()
    if r.startswith("age1"):
        try:
            return pyrage.x25519.Recipient.from_str(r)
        except Exception:
            raise SopsError("failed to parse input as Bech32-encoded age public key: "
                            f"malformed recipient {_quoted(r)}") from None
    if r.startswith("ssh-"):
        try:
            return pyrage.ssh.Recipient.from_str(r)
        except Exception:
            raise SopsError("failed to parse input as age-ssh public key: malformed SSH "
                            f"recipient: {_quoted(r)}") from None
    raise SopsError(f"failed to parse input, unknown recipient type: {_quoted(r)}")


def _quoted(r: str) -> str:
    """Go's %q of the recipient (only on the error path, so the config module loads lazily)."""
    from sops_enclave.config import _go_quote

    return _go_quote(r)


def parse_identities(text: str, source: str) -> list:
    """Identities from a keys.txt-style text (one per line, ``#`` comments)."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            out.append(pyrage.x25519.Identity.from_str(line))
        except Exception:
            raise SopsError(f"failed to parse age identity from {source}, line {n}") from None
    return out


def wrap(data_key: bytes, recipient: str) -> str:
    r = parse_recipient(recipient)
    return pyrage.encrypt(data_key, [r], armored=True).decode("ascii")


def unwrap(enc: str, identities: Sequence) -> bytes:
    if not identities:
        raise KeyMismatch("failed to load age identities. Did not find keys in locations "
                          "'SOPS_AGE_KEY', 'SOPS_AGE_KEY_FILE', 'SOPS_AGE_KEY_CMD', and the "
                          "default keys.txt ($XDG_CONFIG_HOME/sops/age/keys.txt).")
    try:
        return pyrage.decrypt(enc.encode("ascii"), list(identities))
    except Exception as e:
        raise KeyMismatch(f"failed to create reader for decrypting sops data key with age: {e}") from None
