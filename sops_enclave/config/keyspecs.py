"""Key specifications named by ``.sops.yaml`` and the CLI flags, and the pure parsers of those
flags (``--kms``, ``--encryption-context``, comma-separated key lists, age recipients), with
sops 3.11's splitting rules and messages."""

from __future__ import annotations

import re
from typing import Mapping

from sops_enclave.errors import ConfigError, InvalidEncryptionContext
from sops_enclave.goformat import go_quote
from sops_enclave.record import record

__all__ = ["KeySpec", "AgeKeySpec", "PGPKeySpec", "KMSKeySpec", "UnsupportedKeySpec",
           "context_tuple", "parse_kms_arg", "parse_encryption_context", "parse_csv_keys",
           "validate_age_recipient", "age_keys", "hckms_key", "azure_keys"]



@record(frozen=True)
class AgeKeySpec:
    recipient: str

    def to_string(self) -> str:
        return self.recipient


@record(frozen=True)
class PGPKeySpec:
    fingerprint: str

    def to_string(self) -> str:
        return self.fingerprint


@record(frozen=True)
class KMSKeySpec:
    arn: str
    role: str = ""
    context: tuple[tuple[str, str], ...] = ()  # sorted by key
    aws_profile: str = ""

    def to_string(self) -> str:
        """sops' identity string: ``arn[+role][|k1:v1,k2:v2][|profile]``."""
        s = f"{self.arn}+{self.role}" if self.role else self.arn
        ctx = ",".join(f"{k}:{v}" for k, v in self.context)
        if self.aws_profile:
            return f"{s}|{ctx}|{self.aws_profile}"
        return f"{s}|{ctx}" if ctx else s


@record(frozen=True)
class UnsupportedKeySpec:
    """A key type sops-enclave cannot use: gcp_kms, azure_keyvault, hc_vault_transit_uri, hckms."""

    type: str
    value: str

    def to_string(self) -> str:
        return self.value


KeySpec = AgeKeySpec | PGPKeySpec | KMSKeySpec | UnsupportedKeySpec


def context_tuple(ctx: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((ctx or {}).items()))




def parse_kms_arg(s: str, context: Mapping[str, str] | None = None,
                  profile: str = "") -> list[KMSKeySpec]:
    """``--kms``/``SOPS_KMS_ARN``/``kms:``: comma-separated ARNs, each optionally ``ARN+ROLE_ARN``.

    As sops 3.11 (``kms.MasterKeysFromArnString``): "" gives no keys, every space is removed,
    the role is split off at the first ``+arn:aws:iam::`` (not found at index 0). Empty items
    are kept (sops makes a key with an empty ARN of them).
    """
    if not s:
        return []
    ctx = context_tuple(context)
    keys = []
    for item in s.split(","):
        arn = item.replace(" ", "")
        role = ""
        i = arn.find("+arn:aws:iam::")
        if i > 0:
            arn, role = arn[:i], arn[i + 1:]
        keys.append(KMSKeySpec(arn, role, ctx, profile))
    return keys


def parse_encryption_context(s: str) -> dict[str, str]:
    """``--encryption-context k1:v1,k2:v2``: a dict ("" gives ``{}``, i.e. no context).

    Each comma-separated part must split on ``:`` into exactly two pieces (so neither keys
    nor values can hold ``:``; values are not trimmed; a later key wins); otherwise exit 6.
    """
    if s == "":
        return {}
    out: dict[str, str] = {}
    for part in s.split(","):
        kv = part.split(":")
        if len(kv) != 2:
            raise InvalidEncryptionContext("Invalid KMS encryption context format")
        out[kv[0]] = kv[1]
    return out


def parse_csv_keys(s: str | None, kind: str = "age") -> list[str]:
    """A comma-separated key list as sops splits it for ``kind``.

    "" or None gives ``[]``. ``age``: every item whitespace-trimmed (empty items are kept; sops
    rejects them as an unknown recipient type). ``pgp``/``gcp_kms``: spaces removed from each
    item. ``hc_vault_transit_uri``: empty items dropped. ``hckms``: trimmed, empty items
    dropped. Anything else: split only.
    """
    if not s:
        return []
    parts = s.split(",")
    if kind == "age":
        return [p.strip() for p in parts]
    if kind in ("pgp", "gcp_kms"):
        return [p.replace(" ", "") for p in parts]
    if kind == "hc_vault_transit_uri":
        return [p for p in parts if p]
    if kind == "hckms":
        return [p.strip() for p in parts if p.strip()]
    return parts


def validate_age_recipient(recipient: str) -> str:
    """The trimmed recipient, or :class:`SopsError` (exit 1) with sops' ``parseRecipient`` text.

    X25519 (``age1...``) and SSH (``ssh-...``) recipients are parsed with pyrage; plugin
    recipients (``age1<name>1...``) are accepted as they are (sops only parses them too).
    """
    r = recipient.strip()
    if r.startswith("age1") and r.count("1") > 1:
        return r
    from sops_enclave.keys.age import parse_recipient

    parse_recipient(r)
    return r


def age_keys(comma_separated: str) -> list[AgeKeySpec]:
    """sops' ``age.MasterKeysFromRecipients``."""
    if comma_separated == "":
        return []
    return [AgeKeySpec(validate_age_recipient(r)) for r in comma_separated.split(",")]


def hckms_key(key_id: str) -> UnsupportedKeySpec:
    k = key_id.strip()
    parts = k.split(":", 1)
    if len(parts) != 2:
        raise ConfigError(f"invalid key ID format: expected 'region:key-uuid', got {go_quote(k)}")
    if not parts[0].strip():
        raise ConfigError(f"region cannot be empty in key ID: {go_quote(k)}")
    if not parts[1].strip():
        raise ConfigError(f"key UUID cannot be empty in key ID: {go_quote(k)}")
    return UnsupportedKeySpec("hckms", key_id)


_AZKV_URL_RE = re.compile(r"^(https://[^/]+)/keys/([^/]+)(/[^/]*)?$")


def azure_keys(urls: str) -> list[UnsupportedKeySpec]:
    if urls == "":
        return []
    out = []
    for u in urls.split(","):
        u = u.strip()
        m = _AZKV_URL_RE.match(u)
        if not m:
            raise ConfigError(f"could not parse {go_quote(u)} into a valid Azure Key Vault "
                              "MasterKey []")
        version = (m.group(3) or "")[1:]
        out.append(UnsupportedKeySpec("azure_keyvault",
                                      f"{m.group(1)}/keys/{m.group(2)}/{version}"))
    return out

