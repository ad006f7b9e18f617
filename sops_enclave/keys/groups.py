"""Key groups: protect the data key with every master key, and recover it (Shamir for N>1).

A *key service* has ``encrypt(entry, plaintext) -> enc`` and ``decrypt(entry) -> plaintext``;
:class:`LocalKeyService` does the work in-process. "Not my key" (:class:`KeyMismatch`) is
recorded per key and the next key is tried; when no group (or too few groups) succeed the
error lists every group and key, as sops prints it, with exit code 128.
"""

from __future__ import annotations

import datetime as _dt
import os
import textwrap
from typing import Mapping, Sequence


from sops_enclave.errors import CouldNotRetrieveKey, KeyMismatch, SopsError
from sops_enclave.metadata import AgeEntry, KeyEntry, KMSEntry, Metadata, PGPEntry
from sops_enclave.metadata import format_time

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
    """Wraps and unwraps with the keys this process can reach (its environment)."""

    def __init__(self, env: Mapping[str, str] | None = None):
        self.env = dict(os.environ if env is None else env)
        self._age_ids: list | None = None

    def age_identities(self) -> list:
        if self._age_ids is None:
            from sops_enclave.keys.discovery import age_identities
            self._age_ids = age_identities(self.env)
        return self._age_ids

    def encrypt(self, entry: KeyEntry, plaintext: bytes) -> str:
        if isinstance(entry, AgeEntry):
            from sops_enclave.keys import age
            return age.wrap(plaintext, entry.recipient)
        if isinstance(entry, PGPEntry):
            from sops_enclave.keys import pgp
            from sops_enclave.keys.discovery import gpg_exec
            return pgp.wrap(plaintext, entry.fp, gpg_exec(self.env), self.env)
        if isinstance(entry, KMSEntry):
            from sops_enclave.keys import kms
            return kms.wrap(plaintext, entry.arn, entry.role, dict(entry.context), entry.aws_profile)
        raise SopsError(f"sops-enclave cannot encrypt with {entry.type} keys")

    def decrypt(self, entry: KeyEntry) -> bytes:
        if isinstance(entry, AgeEntry):
            from sops_enclave.keys import age
            return age.unwrap(entry.enc, self.age_identities())
        if isinstance(entry, PGPEntry):
            from sops_enclave.keys import pgp
            from sops_enclave.keys.discovery import gpg_exec
            return pgp.unwrap(entry.enc, gpg_exec(self.env), self.env)
        if isinstance(entry, KMSEntry):
            from sops_enclave.keys import kms
            return kms.unwrap(entry.enc, entry.arn, entry.role, dict(entry.context),
                              entry.aws_profile)
        raise KeyMismatch(f"sops-enclave does not support {entry.type} keys")


def _key_name(e: KeyEntry) -> str:
    if isinstance(e, KMSEntry):
        return e.arn
    return e.ident()


def _order(group: Sequence[KeyEntry], order: Sequence[str]) -> list[KeyEntry]:
    rank = {t: i for i, t in enumerate(order)}
    return sorted(group, key=lambda e: rank.get(e.type, len(rank)))


def _wrap_lines(s: str, width: int) -> str:
    out = []
    for para in s.split("\n"):
        out.append(textwrap.fill(para, width, break_long_words=False, break_on_hyphens=False)
                   if len(para) > width else para)
    return "\n".join(out)


def _key_error_text(name: str, errs: list[str]) -> str:
    msgs = []
    for err in errs:
        wrapped = _wrap_lines(err, 60)
        m = "\n".join("  | " + ln for ln in wrapped.split("\n"))
        msgs.append("-" + m[1:])
    joined = "\n\n".join(msgs)
    return f"{name}: FAILED\n" + "\n".join("  " + ln for ln in joined.split("\n"))


def get_data_key(md: Metadata, services: Sequence, order: Sequence[str] = DEFAULT_DECRYPTION_ORDER) -> bytes:
    """The data key, from any key of the only group, or from >= threshold groups."""
    results: list[bytes | None] = []
    reports: list[str] = []
    needed = 1 if len(md.key_groups) <= 1 else (md.shamir_threshold or len(md.key_groups))
    parts: list[bytes] = []
    for gi, group in enumerate(md.key_groups):
        got = None
        key_reports = []
        for entry in _order(group, order):
            errs = []
            for svc in services:
                try:
                    got = svc.decrypt(entry)
                    break
                except KeyMismatch as e:
                    errs.append(str(e))
                except SopsError as e:
                    errs.append(e.message)
            if got is not None:
                break
            key_reports.append(_key_error_text(_key_name(entry), errs))
        if got is not None:
            parts.append(got)
            reports.append(f"Group {gi}: SUCCESS")
            if len(parts) >= needed:
                break
        else:
            body = "\n\n".join(key_reports)
            reports.append(f"Group {gi}: FAILED\n" + "\n".join("  " + ln if ln else ln
                                                                for ln in body.split("\n")))
        results.append(got)
    if len(parts) >= needed:
        if len(md.key_groups) <= 1:
            return parts[0]
        try:
            from sops_enclave import shamir
            return shamir.combine(parts)
        except ValueError as e:
            raise CouldNotRetrieveKey(f"could not combine Shamir shares: {e}") from None
    if len(md.key_groups) <= 1:
        trailer = ("Recovery failed because no master key was able to decrypt the file. In "
                   "order for SOPS to recover the file, at least one key has to be successful, "
                   "but none were.")
    else:
        trailer = (f"Recovery failed because the file was encrypted with a Shamir threshold of "
                   f"{needed}, but only {len(parts)} part(s) were successfully recovered, one for "
                   f"each successful key group. In order for SOPS to recover the file, at least "
                   f"{needed} groups have to be successful. In order for a group to be "
                   f"successful, decryption has to succeed with any of the keys in that key group.")
    trailer = textwrap.fill(trailer, 75, break_long_words=False, break_on_hyphens=False)
    raise CouldNotRetrieveKey("Failed to get the data key required to decrypt the SOPS file.\n\n"
                              + "\n\n".join(reports) + "\n\n" + trailer)


def protect_data_key(md: Metadata, data_key: bytes, services: Sequence,
                     now: _dt.datetime | None = None) -> None:
    """Fill every entry's ``enc`` (the whole key for one group, a Shamir share per group)."""
    groups = md.key_groups
    if not groups or any(len(g) == 0 for g in groups):
        raise SopsError("Could not generate data key: empty key group provided")
    if len(groups) == 1:
        shares = [data_key]
    else:
        threshold = md.shamir_threshold or len(groups)
        if md.shamir_threshold == 0:
            md.shamir_threshold = len(groups)
        from sops_enclave import shamir
        shares = shamir.split(data_key, len(groups), threshold)
    created = format_time(now or _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0))
    errors = []
    for share, group in zip(shares, groups):
        for entry in group:
            last: Exception | None = None
            for svc in services:
                try:
                    entry.enc = svc.encrypt(entry, share)
                    last = None
                    break
                except SopsError as e:
                    last = e
            if last is not None:
                errors.append(str(last))
            elif isinstance(entry, (PGPEntry, KMSEntry)):
                entry.created_at = created
    if errors:
        raise SopsError("Could not generate data key: [" + ", ".join(errors) + "]")
