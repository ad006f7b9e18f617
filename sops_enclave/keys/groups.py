"""Key groups: protect the data key with every master key, and recover it (Shamir for N>1).

A *key service* has ``encrypt(entry, plaintext) -> enc`` and ``decrypt(entry) -> plaintext``;
:class:`LocalKeyService` does the work in-process. "Not my key" (:class:`KeyMismatch`) is
recorded per key and the next key is tried; when no group (or too few groups) succeed the
error lists every group and key, as sops prints it, with exit code 128.
"""

from __future__ import annotations

import datetime as _dt
import os
from typing import Mapping, Sequence


from sops_enclave.errors import CouldNotRetrieveKey, KeyMismatch, SopsError, go_wordwrap
from sops_enclave.goformat import go_quote
from sops_enclave.metadata import AgeEntry, KeyEntry, Metadata, OtherEntry
from sops_enclave.metadata import format_time, typed_entry

__all__ = ["LocalKeyService", "get_data_key", "protect_data_key", "DEFAULT_DECRYPTION_ORDER",
           "parse_decryption_order"]

DEFAULT_DECRYPTION_ORDER = ("age", "pgp")


def parse_decryption_order(s: str | None) -> list[str]:
    """``--decryption-order``/``SOPS_DECRYPTION_ORDER``; empty gives the default ``age,pgp``.

    Split on ``,`` as is (no trimming, like sops); a repeated entry is exit 112. Unknown names
    are kept (sops ignores them when sorting)."""
    from sops_enclave.errors import DuplicateDecryptionKeyType

    if not s:
        return list(DEFAULT_DECRYPTION_ORDER)
    order = s.split(",")
    seen: set[str] = set()
    for v in order:
        if v in seen:
            raise DuplicateDecryptionKeyType(f"Duplicate decryption key type: {v}")
        seen.add(v)
    return order


class LocalKeyService:
    """Wraps and unwraps with the keys this process can reach (its environment), through the
    key type registered for each entry's metadata type (:mod:`sops_enclave.keys.registry`)."""

    def __init__(self, env: Mapping[str, str] | None = None):
        from sops_enclave.keys.base import KeyContext

        self.env = dict(os.environ if env is None else env)
        self.context = KeyContext(self.env)

    def age_identities(self, recipient: str = ""):
        """Identity discovery for one age key, as sops does it: afresh for every key (so
        ``SOPS_AGE_KEY_CMD`` sees that key's ``SOPS_AGE_RECIPIENT``)."""
        return self.context.age_identities(recipient)

    def encrypt(self, entry: KeyEntry, plaintext: bytes) -> str:
        from sops_enclave.keys import registry

        entry = typed_entry(entry)
        if not registry.known(entry.type) or isinstance(entry, OtherEntry):
            raise SopsError(f"sops-enclave cannot encrypt with {entry.type} keys")
        return registry.key_type(entry.type).wrap(entry, plaintext, self.context)

    def decrypt(self, entry: KeyEntry) -> bytes:
        from sops_enclave.keys import registry

        entry = typed_entry(entry)
        if not registry.known(entry.type) or isinstance(entry, OtherEntry):
            raise KeyMismatch(f"sops-enclave does not support {entry.type} keys")
        return registry.key_type(entry.type).unwrap(entry, self.context)


def _key_name(e: KeyEntry) -> str:
    """sops' ``MasterKey.ToString()`` of a key, the name the failure report shows."""
    return typed_entry(e).ident()


def _order(group: Sequence[KeyEntry], order: Sequence[str]) -> list[KeyEntry]:
    rank = {t: i for i, t in enumerate(order)}
    return sorted(group, key=lambda e: rank.get(e.type, len(rank)))


def _prefix_lines(text: str, prefix: str) -> str:
    """goware/prefixer: ``prefix`` before every line, empty ones too (none after a final
    newline)."""
    parts = text.split("\n")
    out = [prefix + p for p in parts[:-1]]
    if parts[-1]:
        out.append(prefix + parts[-1])
        return "\n".join(out)
    return "\n".join(out) + "\n" if out else ""


def _colored(status: str, code: int) -> str:
    """fatih/color as sops uses it: colour only when stdout is a terminal, TERM is not
    ``dumb`` and NO_COLOR is unset."""
    import sys

    try:
        tty = sys.stdout.isatty()
    except (AttributeError, ValueError):
        tty = False
    if not tty or os.environ.get("TERM") == "dumb" or os.environ.get("NO_COLOR"):
        return status
    return f"\x1b[{code}m{status}\x1b[0m"


def _key_error_text(name: str, errs: list[str]) -> str:
    msgs = []
    for err in errs:
        m = _prefix_lines(go_wordwrap(err, 60), "  | ")
        msgs.append("-" + m[1:])
    body = _prefix_lines("\n\n".join(msgs), "  ")
    return f"{name}: {_colored('FAILED', 31)}\n{body}"


def _trailer(threshold: int, successful: int) -> str:
    if threshold == 0:
        t = ("Recovery failed because no master key was able to decrypt the file. In "
             "order for SOPS to recover the file, at least one key has to be successful, "
             "but none were.")
    else:
        t = (f"Recovery failed because the file was encrypted with a Shamir threshold of "
             f"{threshold}, but only {successful} part(s) were successfully recovered, one for "
             f"each successful key group. In order for SOPS to recover the file, at least "
             f"{threshold} groups have to be successful. In order for a group to be "
             f"successful, decryption has to succeed with any of the keys in that key group.")
    return go_wordwrap(t, 75)


def _decrypt_entry(entry: KeyEntry, services: Sequence) -> tuple[bytes | None, list[str]]:
    errs: list[str] = []
    for svc in services:
        try:
            return svc.decrypt(entry), errs
        except KeyMismatch as e:
            errs.append(str(e))
        except SopsError as e:
            errs.append(e.message)
    return None, errs


def get_data_key(md: Metadata, services: Sequence, order: Sequence[str] = DEFAULT_DECRYPTION_ORDER) -> bytes:
    """The data key, from any key of the only group, or from >= threshold groups.

    As sops, every group is tried; a group stops at its first key that works. The failure
    report (exit 128) is sops' text byte for byte: key errors wrapped at 60 columns behind
    ``  | ``, every line of a group indented (the blank line between two keys too)."""
    reports: list[str] = []
    parts: list[bytes] = []
    for gi, group in enumerate(md.key_groups):
        got = None
        key_reports = []
        for entry in _order(group, order):
            got, errs = _decrypt_entry(entry, services)
            if got is not None:
                break
            key_reports.append(_key_error_text(_key_name(entry), errs))
        if got is not None:
            parts.append(got)
            reports.append(f"Group {gi}: {_colored('SUCCESS', 32)}")
        else:
            body = _prefix_lines("\n\n".join(key_reports), "  ")
            reports.append(f"Group {gi}: {_colored('FAILED', 31)}\n{body}")
    threshold = md.shamir_threshold
    if len(md.key_groups) > 1:
        if len(parts) >= threshold:
            try:
                from sops_enclave import shamir
                return shamir.combine(parts)
            except ValueError as e:
                raise CouldNotRetrieveKey(f"could not get data key from shamir parts: {e}") from None
    elif len(parts) == 1:
        return parts[0]
    raise CouldNotRetrieveKey("Failed to get the data key required to decrypt the SOPS file.\n\n"
                              + "\n\n".join(reports) + "\n\n" + _trailer(threshold, len(parts)))


def protect_data_key(md: Metadata, data_key: bytes, services: Sequence,
                     now: _dt.datetime | None = None) -> None:
    """Fill every entry's ``enc`` (the whole key for one group, a Shamir share per group)."""
    groups = md.key_groups
    if not services or not groups or any(len(g) == 0 for g in groups):  # a Go []error: [..]
        why = ("no key services provided, cannot update master keys" if not services else
               "no key groups provided" if not groups else "empty key group provided")
        raise SopsError(f"Could not generate data key: [{why}]")
    if len(groups) == 1:
        shares = [data_key]
    else:
        threshold = md.shamir_threshold or len(groups)
        if md.shamir_threshold == 0:
            md.shamir_threshold = len(groups)
        from sops_enclave import shamir
        shares = shamir.split(data_key, len(groups), threshold)
    created = format_time(now or _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0))
    errors: list[str] = []
    for share, group in zip(shares, groups):
        for gi, entry in enumerate(group):
            if isinstance(entry, OtherEntry):
                entry = group[gi] = typed_entry(entry)
            key_errors: list[str] = []
            for svc in services:
                try:
                    entry.enc = svc.encrypt(entry, share)
                    key_errors = []
                    break
                except (SopsError, KeyMismatch) as e:
                    msg = e.message if isinstance(e, SopsError) else str(e)
                    key_errors.append(f"failed to encrypt new data key with master key "
                                      f"{go_quote(_key_name(entry))}: {msg}")
            if key_errors:
                errors += key_errors
            elif not isinstance(entry, AgeEntry) and not entry.created_at:  # type: ignore[union-attr]
                # a new key is dated now; a key read from the file keeps its date (sops' rotate)
                entry.created_at = created  # type: ignore[union-attr]
    if errors:
        raise SopsError("Could not generate data key: [" + " ".join(errors) + "]")
