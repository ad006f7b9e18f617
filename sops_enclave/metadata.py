"""The ``sops`` metadata block: wire form (a generic tree from a store) <-> :class:`Metadata`.

The in-memory :class:`Metadata` never holds the decrypted data key. :meth:`Metadata.to_branch`
gives the block in the key order sops 3.11 writes (struct declaration order), so emitted files
match sops byte for byte.
"""

from __future__ import annotations

import datetime as _dt
import re
from typing import Any, ClassVar

from sops_enclave.errors import SopsError
from sops_enclave.record import field, record
from sops_enclave.tree import Branch, Comment, Timestamp
from sops_enclave.walk import CRYPT_RULE_NAMES, CryptRule

__all__ = ["Metadata", "AgeEntry", "PGPEntry", "KMSEntry", "GCPKMSEntry", "AzureKVEntry",
           "VaultEntry", "HCKMSEntry", "OtherEntry", "KeyEntry", "ENTRY_TYPES", "typed_entry",
           "parse_metadata", "format_time", "parse_time"]


@record
class AgeEntry:
    recipient: str
    enc: str = ""
    type = "age"

    def ident(self) -> str:
        return self.recipient


@record
class PGPEntry:
    fp: str
    enc: str = ""
    created_at: str = ""
    type = "pgp"

    def ident(self) -> str:
        return self.fp


@record
class KMSEntry:
    arn: str
    role: str = ""
    context: tuple[tuple[str, str], ...] = ()
    aws_profile: str = ""
    enc: str = ""
    created_at: str = ""
    type = "kms"

    def ident(self) -> str:
        """sops' key string: ``arn[+role]|k1:v1,k2:v2[|profile]`` (used for dedup and --rm)."""
        s = self.arn + (f"+{self.role}" if self.role else "")
        if self.context:
            s += "|" + ",".join(f"{k}:{v}" for k, v in sorted(self.context))
        if self.aws_profile:
            s += "|" + self.aws_profile
        return s


class _IdEntry:
    """A key named by a few string fields (``FIELDS``, in the order sops 3.11's store struct
    writes them), then ``created_at`` and ``enc``."""

    FIELDS: ClassVar[tuple[str, ...]] = ()
    enc: str
    created_at: str

    def id_fields(self) -> list[tuple[str, str]]:
        return [(f, getattr(self, f)) for f in self.FIELDS]


@record
class GCPKMSEntry(_IdEntry):
    resource_id: str
    enc: str = ""
    created_at: str = ""
    type = "gcp_kms"
    FIELDS = ("resource_id",)

    def ident(self) -> str:
        return self.resource_id


@record
class AzureKVEntry(_IdEntry):
    vault_url: str
    name: str
    version: str = ""
    enc: str = ""
    created_at: str = ""
    type = "azure_kv"
    FIELDS = ("vault_url", "name", "version")

    def ident(self) -> str:
        return f"{self.vault_url}/keys/{self.name}/{self.version}"


@record
class VaultEntry(_IdEntry):
    vault_address: str
    engine_path: str
    key_name: str
    enc: str = ""
    created_at: str = ""
    type = "hc_vault"
    FIELDS = ("vault_address", "engine_path", "key_name")

    def ident(self) -> str:
        return f"{self.vault_address}/v1/{self.engine_path}/keys/{self.key_name}"


@record
class HCKMSEntry(_IdEntry):
    key_id: str
    enc: str = ""
    created_at: str = ""
    type = "hckms"
    FIELDS = ("key_id",)

    def ident(self) -> str:
        return self.key_id


#: metadata list name -> entry class, for the key types named by string fields only.
ENTRY_TYPES: dict[str, type[_IdEntry]] = {
    c.type: c for c in (GCPKMSEntry, AzureKVEntry, VaultEntry, HCKMSEntry)}


@record
class OtherEntry:
    """A key entry given as its raw fields (``type`` and a branch). The parser never makes
    these; :func:`typed_entry` turns one of a known type into its entry class."""

    type: str
    fields: Branch = field(default_factory=Branch)

    def ident(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.fields if k not in ("enc", "created_at"))


KeyEntry = (AgeEntry | PGPEntry | KMSEntry | GCPKMSEntry | AzureKVEntry | VaultEntry
            | HCKMSEntry | OtherEntry)


def typed_entry(e: Any) -> Any:
    """``e``, or for an :class:`OtherEntry` of a known id-field type, that type's entry."""
    if isinstance(e, OtherEntry) and e.type in ENTRY_TYPES:
        cls = ENTRY_TYPES[e.type]
        f = {k: _s(v) for k, v in e.fields if isinstance(k, str)}
        return cls(*[f.get(n, "") for n in cls.FIELDS], enc=f.get("enc", ""),  # type: ignore[call-arg]
                   created_at=f.get("created_at", ""))
    return e

#: Load order of the key types inside one group (sops ``keyGroups`` loading order).
_TYPE_ORDER = ("kms", "gcp_kms", "hckms", "azure_kv", "hc_vault", "pgp", "age")


def parse_time(s: str) -> _dt.datetime:
    """RFC 3339 as Go's ``time.Parse(time.RFC3339, s)`` accepts it."""
    m = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?"
                     r"([Zz]|[+-]\d{2}:\d{2})", s)
    if not m:
        raise SopsError(f'parsing time "{s}" as "2006-01-02T15:04:05Z07:00": cannot parse')
    y, mo, d, h, mi, se = (int(x) for x in m.groups()[:6])
    frac = m.group(7) or ""
    micro = int((frac[1:] + "000000")[:6]) if frac else 0
    z = m.group(8)
    try:
        if z in ("Z", "z"):
            tz = _dt.timezone.utc
        else:
            sign = 1 if z[0] == "+" else -1
            tz = _dt.timezone(sign * _dt.timedelta(hours=int(z[1:3]), minutes=int(z[4:6])))
        return _dt.datetime(y, mo, d, h, mi, se, micro, tzinfo=tz)
    except ValueError as e:
        raise SopsError(f'parsing time "{s}": {e}') from None


def format_time(t: _dt.datetime) -> str:
    """Go ``t.Format(time.RFC3339)``: second precision, ``Z`` for a zero offset."""
    off = t.utcoffset() or _dt.timedelta(0)
    base = t.strftime("%Y-%m-%dT%H:%M:%S")
    if off == _dt.timedelta(0):
        return base + "Z"
    total = int(off.total_seconds())
    sign = "+" if total >= 0 else "-"
    total = abs(total)
    return f"{base}{sign}{total // 3600:02d}:{(total % 3600) // 60:02d}"


def _s(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, Timestamp):
        return v.text
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _as_list(v: Any) -> list:
    if v is None or v == "":
        return []
    if isinstance(v, list):
        return [x for x in v if not isinstance(x, Comment)]
    raise SopsError("Error unmarshalling metadata: a key list is not a list")


def _get(b: Any, key: str) -> Any:
    if isinstance(b, Branch):
        return b.get(key)
    if isinstance(b, dict):
        return b.get(key)
    return None


def _entries(b: Any) -> list[KeyEntry]:
    """The master keys of one group (or of the top level), in sops' load order."""
    out: list[KeyEntry] = []
    for typ in _TYPE_ORDER:
        for e in _as_list(_get(b, typ)):
            if not isinstance(e, (Branch, dict)):
                raise SopsError(f"Error unmarshalling metadata: bad {typ} entry")
            if typ == "age":
                out.append(AgeEntry(_s(_get(e, "recipient")), _s(_get(e, "enc"))))
            elif typ == "pgp":
                out.append(PGPEntry(_s(_get(e, "fp")), _s(_get(e, "enc")),
                                    _s(_get(e, "created_at"))))
            elif typ == "kms":
                ctx = _get(e, "context")
                pairs: list[tuple[str, str]] = []
                if isinstance(ctx, Branch):
                    pairs = [(str(k), _s(v)) for k, v in ctx if not isinstance(k, Comment)]
                elif isinstance(ctx, dict):
                    pairs = [(str(k), _s(v)) for k, v in ctx.items()]
                out.append(KMSEntry(_s(_get(e, "arn")), _s(_get(e, "role")),
                                    tuple(sorted(pairs)), _s(_get(e, "aws_profile")),
                                    _s(_get(e, "enc")), _s(_get(e, "created_at"))))
            else:
                cls = ENTRY_TYPES[typ]
                out.append(cls(*[_s(_get(e, n)) for n in cls.FIELDS],  # type: ignore[call-arg]
                               enc=_s(_get(e, "enc")), created_at=_s(_get(e, "created_at"))))
    return out


@record
class Metadata:
    """Everything in the ``sops`` block except the data (and never the data key)."""

    key_groups: list[list[KeyEntry]]
    lastmodified: str = ""
    mac: str = ""
    version: str = ""
    shamir_threshold: int = 0
    crypt_rule: CryptRule = field(default_factory=CryptRule)
    mac_only_encrypted: bool = False

    @property
    def rule(self) -> CryptRule:
        return self.crypt_rule

    def mac_aad(self) -> bytes:
        """The MAC's associated data: ``lastmodified`` re-formatted as Go RFC 3339."""
        return format_time(parse_time(self.lastmodified)).encode()

    def to_branch(self, *, json_nulls: bool = False, binary: bool = False) -> Branch:
        """The block in sops 3.11's order; ``json_nulls`` writes empty group lists as null."""
        b = Branch()
        if self.shamir_threshold:
            b.append(("shamir_threshold", self.shamir_threshold))
        groups = self.key_groups
        if len(groups) > 1:
            b.append(("key_groups", [self._group_branch(g, json_nulls) for g in groups]))
        single = groups[0] if len(groups) == 1 else []
        for typ in ("kms", "gcp_kms", "hckms", "azure_kv", "hc_vault", "age"):
            lst = [self._entry_branch(e) for e in single if e.type == typ]
            if lst:
                b.append((typ, lst))
        b.append(("lastmodified", self.lastmodified))
        b.append(("mac", self.mac))
        lst = [self._entry_branch(e) for e in single if e.type == "pgp"]
        if lst:
            b.append(("pgp", lst))
        if self.crypt_rule.kind and not binary:  # 3.11's binary store writes no rule
            b.append((self.crypt_rule.kind, self.crypt_rule.value))
        if self.mac_only_encrypted:
            b.append(("mac_only_encrypted", True))
        b.append(("version", self.version))
        return b

    def _group_branch(self, group: list[KeyEntry], json_nulls: bool) -> Branch:
        g = Branch()
        for typ in ("pgp", "kms", "gcp_kms", "hckms", "azure_kv", "hc_vault", "age"):
            lst = [self._entry_branch(e) for e in group if e.type == typ]
            if lst:
                g.append((typ, lst))
            elif typ in ("hc_vault", "age"):
                g.append((typ, None if json_nulls else []))
        return g

    @staticmethod
    def _entry_branch(e: KeyEntry) -> Branch:
        if isinstance(e, AgeEntry):
            return Branch([("recipient", e.recipient), ("enc", e.enc)])
        if isinstance(e, PGPEntry):
            return Branch([("created_at", e.created_at), ("enc", e.enc), ("fp", e.fp)])
        if isinstance(e, KMSEntry):
            b = Branch([("arn", e.arn)])
            if e.role:
                b.append(("role", e.role))
            if e.context:
                b.append(("context", Branch(sorted(e.context))))
            b += [("created_at", e.created_at), ("enc", e.enc), ("aws_profile", e.aws_profile)]
            return b
        e = typed_entry(e)
        if isinstance(e, _IdEntry):
            return Branch(e.id_fields() + [("created_at", e.created_at), ("enc", e.enc)])
        return Branch(e.fields)


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if v is None:
        return False
    s = str(v)
    if s in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if s in ("", "0", "f", "F", "FALSE", "false", "False"):
        return False
    raise SopsError(f"Error unmarshalling metadata: invalid bool {s!r}")


def _int(v: Any) -> int:
    if v is None or v == "":
        return 0
    if isinstance(v, bool):
        raise SopsError("Error unmarshalling metadata: shamir_threshold is not a number")
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    try:
        return int(str(v))
    except ValueError:
        raise SopsError("Error unmarshalling metadata: shamir_threshold is not a number") from None


def parse_metadata(raw: Any) -> Metadata:
    """Build :class:`Metadata` from the ``sops`` value a store loaded (lenient, as sops)."""
    if not isinstance(raw, (Branch, dict)):
        raise SopsError("Error unmarshalling metadata: the sops value is not a mapping")
    top = _entries(raw)
    if top:
        groups = [top]
    else:
        kg = _as_list(_get(raw, "key_groups"))
        groups = [_entries(g) for g in kg]
        if not groups:
            raise SopsError("No keys found in file")
    rules = [(n, _s(_get(raw, n))) for n in CRYPT_RULE_NAMES if _s(_get(raw, n))]
    if len(rules) > 1:
        raise SopsError("Cannot use more than one of encrypted_suffix, unencrypted_suffix, "
                        "encrypted_regex, unencrypted_regex, encrypted_comment_regex, or "
                        "unencrypted_comment_regex in the same file")
    rule = CryptRule(*rules[0]) if rules else CryptRule("unencrypted_suffix", "_unencrypted")
    version = _s(_get(raw, "version"))
    if not version:
        raise SopsError("Version string empty")
    lastmod = _s(_get(raw, "lastmodified"))
    parse_time(lastmod)
    return Metadata(key_groups=groups, lastmodified=lastmod, mac=_s(_get(raw, "mac")),
                    version=version, shamir_threshold=_int(_get(raw, "shamir_threshold")),
                    crypt_rule=rule, mac_only_encrypted=_bool(_get(raw, "mac_only_encrypted")))
