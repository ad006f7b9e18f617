""".sops.yaml: finding it, reading it the way sops 3.11 (go-yaml v3) does, picking a creation rule.

* :func:`find_config` / :func:`lookup_config` walk up from a directory (at most 100 levels)
  to the first ``.sops.yaml``; a ``.sops.yml`` seen on the way is ignored with sops' warning.
* :func:`load_config` decodes the file into sops' Go structs with go-yaml v3's rules:
  unknown keys are ignored, a value of the wrong type is an ``unmarshal errors`` message with
  the line, ``null`` leaves the default, ``null`` items of typed lists are dropped,
  duplicate mapping keys are an error, ``<<`` merges only fill keys not set explicitly.
* :meth:`Config.creation_rule_for` picks the rule for a target path and builds its key
  groups, like sops' ``LoadCreationRuleForFile`` (errors about keys only surface for the
  rule that matched).
* Pure helpers for the CLI: :func:`parse_kms_arg`, :func:`parse_encryption_context`,
  :func:`parse_csv_keys`, :func:`decryption_order`, :func:`validate_age_recipient`.

Errors are :class:`~sops_enclave.errors.ConfigError` (exit 1) with sops' wording, except
:class:`InvalidEncryptionContext` (exit 6) and :class:`DuplicateDecryptionKeyType` (exit 112).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import yaml

from sops_enclave import goregex
from sops_enclave.keys.groups import parse_decryption_order as decryption_order
from sops_enclave.errors import (ConfigError,
                                 InvalidEncryptionContext, SopsError)
from sops_enclave.formats.yaml_resolve import GoUint, resolve_plain, timestamp_text
from sops_enclave.tree import Timestamp

__all__ = [
    "CONFIG_FILE_NAME", "ALTERNATE_CONFIG_NAME", "MAX_DEPTH", "CRYPT_RULE_FIELDS",
    "DEFAULT_DECRYPTION_ORDER", "ConfigWarning", "ConfigLookup", "lookup_config", "find_config",
    "load_config", "Config", "StoresConfig", "CreationRule", "KeySpec", "AgeKeySpec",
    "PGPKeySpec", "KMSKeySpec", "UnsupportedKeySpec", "parse_kms_arg",
    "parse_encryption_context", "parse_csv_keys", "decryption_order", "validate_age_recipient",
]

CONFIG_FILE_NAME = ".sops.yaml"
ALTERNATE_CONFIG_NAME = ".sops.yml"
MAX_DEPTH = 100
DEFAULT_DECRYPTION_ORDER = ("age", "pgp")
# sops' creationRule field order (the order of its "more than one" check).
CRYPT_RULE_FIELDS = ("unencrypted_suffix", "encrypted_suffix", "unencrypted_regex",
                     "encrypted_regex", "unencrypted_comment_regex", "encrypted_comment_regex")
_CRYPT_CONFLICT = ("error loading config: cannot use more than one of encrypted_suffix, "
                   "unencrypted_suffix, encrypted_regex, unencrypted_regex, "
                   "encrypted_comment_regex, or unencrypted_comment_regex for the same rule")
_UNMARSHAL = "error loading config: Could not unmarshal config file: "


class ConfigWarning(UserWarning):
    """Issued by :func:`find_config` when a ``.sops.yml`` was skipped."""


# ------------------------------------------------------------------------------ key specs

@dataclass(frozen=True)
class AgeKeySpec:
    recipient: str

    def to_string(self) -> str:
        return self.recipient


@dataclass(frozen=True)
class PGPKeySpec:
    fingerprint: str

    def to_string(self) -> str:
        return self.fingerprint


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class UnsupportedKeySpec:
    """A key type sops-enclave cannot use: gcp_kms, azure_keyvault, hc_vault_transit_uri, hckms."""

    type: str
    value: str

    def to_string(self) -> str:
        return self.value


KeySpec = AgeKeySpec | PGPKeySpec | KMSKeySpec | UnsupportedKeySpec


def _context_tuple(ctx: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((ctx or {}).items()))


# ------------------------------------------------------------------------------ CLI helpers

from sops_enclave.goformat import go_quote as _go_quote  # noqa: E402


def parse_kms_arg(s: str, context: Mapping[str, str] | None = None,
                  profile: str = "") -> list[KMSKeySpec]:
    """``--kms``/``SOPS_KMS_ARN``/``kms:``: comma-separated ARNs, each optionally ``ARN+ROLE_ARN``.

    As sops 3.11 (``kms.MasterKeysFromArnString``): "" gives no keys, every space is removed,
    the role is split off at the first ``+arn:aws:iam::`` (not found at index 0). Empty items
    are kept (sops makes a key with an empty ARN of them).
    """
    if not s:
        return []
    ctx = _context_tuple(context)
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


def _age_keys(comma_separated: str) -> list[AgeKeySpec]:
    """sops' ``age.MasterKeysFromRecipients``."""
    if comma_separated == "":
        return []
    return [AgeKeySpec(validate_age_recipient(r)) for r in comma_separated.split(",")]


def _hckms_key(key_id: str) -> UnsupportedKeySpec:
    k = key_id.strip()
    parts = k.split(":", 1)
    if len(parts) != 2:
        raise ConfigError(f"invalid key ID format: expected 'region:key-uuid', got {_go_quote(k)}")
    if not parts[0].strip():
        raise ConfigError(f"region cannot be empty in key ID: {_go_quote(k)}")
    if not parts[1].strip():
        raise ConfigError(f"key UUID cannot be empty in key ID: {_go_quote(k)}")
    return UnsupportedKeySpec("hckms", key_id)


_AZKV_URL_RE = re.compile(r"^(https://[^/]+)/keys/([^/]+)(/[^/]*)?$")


def _azure_keys(urls: str) -> list[UnsupportedKeySpec]:
    if urls == "":
        return []
    out = []
    for u in urls.split(","):
        u = u.strip()
        m = _AZKV_URL_RE.match(u)
        if not m:
            raise ConfigError(f"could not parse {_go_quote(u)} into a valid Azure Key Vault "
                              "MasterKey []")
        version = (m.group(3) or "")[1:]
        out.append(UnsupportedKeySpec("azure_keyvault",
                                      f"{m.group(1)}/keys/{m.group(2)}/{version}"))
    return out


# ------------------------------------------------------------------------------ go-yaml decoding

_TAG_PREFIX = "tag:yaml.org,2002:"
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_RESOLVER = yaml.resolver.Resolver()
_UNSET = object()


class _Fatal(Exception):
    """A go-yaml ``failf`` (decoding stops)."""


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_TAG_PREFIX):] if tag.startswith(_TAG_PREFIX) else tag


def _tag_of(v: Any) -> str:
    if v is None:
        return "!!null"
    if isinstance(v, bool):
        return "!!bool"
    if isinstance(v, int):
        return "!!int"
    if isinstance(v, float):
        return "!!float"
    if isinstance(v, Timestamp):
        return "!!timestamp"
    return "!!str"


def _go_type(v: Any) -> str:
    """Go's ``%T`` of what go-yaml puts in an ``interface{}``."""
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, GoUint):
        return "uint64"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, Timestamp):
        return "time.Time"
    if isinstance(v, list):
        return "[]interface {}"
    if isinstance(v, dict):
        return "map[string]interface {}"
    return "string"


def _scalar(node: yaml.ScalarNode) -> tuple[str, Any]:
    """(short tag, value) of a scalar node, resolved as go-yaml v3 does."""
    value = node.value
    plain = not node.style  # None (pure-Python loader) or "" (libyaml) for plain scalars
    implicit = _RESOLVER.resolve(yaml.ScalarNode, value, (plain, not plain))
    explicit = "" if node.tag in (implicit, "!") else _short_tag(node.tag)
    if explicit == "!!str" or (not explicit and not plain):
        return "!!str", value
    if explicit and explicit not in ("!!bool", "!!int", "!!float", "!!null", "!!timestamp"):
        if explicit == "!!binary":
            import base64
            import binascii
            try:
                raw = base64.b64decode("".join(value.split()), validate=True)
            except (binascii.Error, ValueError):
                raise _Fatal("!!binary value contains invalid base64 data") from None
            return "!!binary", raw.decode("utf-8", "surrogateescape")
        return explicit, value  # custom tags: the text, tagged
    resolved = resolve_plain(value)
    rtag = _tag_of(resolved)
    if explicit and explicit != rtag:
        if explicit == "!!float" and rtag == "!!int":
            return "!!float", float(resolved)
        if explicit == "!!timestamp" and rtag == "!!str":
            ts = timestamp_text(value)
            if ts is not None:
                return "!!timestamp", Timestamp(ts)
        raise _Fatal(f"cannot decode {rtag} `{value}` as a {explicit}")
    return rtag, resolved


class _Decoder:
    """Decodes composed PyYAML nodes into plain values following a Go struct schema."""

    #: interface{} values may nest this deep and expand (aliases included) to this many nodes.
    MAX_DEPTH = 64
    MAX_NODES = 100_000

    def __init__(self, stores_current: dict[str, Any]) -> None:
        self.terrors: list[str] = []
        self.stores_current = stores_current  # decoded in place over the defaults, as sops does
        self.depth = 0
        self.nodes = 0

    # -- errors
    def terror(self, node: yaml.Node, tag: str, go_type: str) -> None:
        line = node.start_mark.line + 1
        if isinstance(node, yaml.SequenceNode):
            shown, tag = "", "!!seq"
        elif isinstance(node, yaml.MappingNode):
            shown, tag = "", "!!map"
        else:
            v = node.value
            shown = " `" + (v[:7] + "..." if len(v) > 10 else v) + "`"
        self.terrors.append(f"line {line}: cannot unmarshal {tag}{shown} into {go_type}")

    def check_unique(self, node: yaml.MappingNode) -> bool:
        n0 = len(self.terrors)
        items = node.value
        for i, (ki, _) in enumerate(items):
            if not isinstance(ki, yaml.ScalarNode) or (ki.value == "<<" and not ki.style):
                continue
            for kj, _ in items[i + 1:]:
                if isinstance(kj, yaml.ScalarNode) and kj.value == ki.value:
                    self.terrors.append(
                        f"line {kj.start_mark.line + 1}: mapping key {_go_quote(ki.value)} "
                        f"already defined at line {ki.start_mark.line + 1}")
        return len(self.terrors) == n0

    # -- kinds: each returns (ok, value); value is _UNSET when the target keeps its default
    def string(self, node: yaml.Node) -> tuple[bool, Any]:
        if isinstance(node, yaml.ScalarNode):
            tag, v = _scalar(node)
            if v is None:
                return False, _UNSET
            return True, (v if tag == "!!binary" else node.value)
        self.terror(node, "", "string")
        return False, _UNSET

    def integer(self, node: yaml.Node) -> tuple[bool, Any]:
        if isinstance(node, yaml.ScalarNode):
            tag, v = _scalar(node)
            if v is None:
                return False, _UNSET
            if tag == "!!int" and -(1 << 63) <= v < (1 << 63):
                return True, int(v)
            if tag == "!!float" and v == v and v <= float(1 << 63) and v > -float(1 << 63):
                return True, int(v)
            self.terror(node, tag, "int")
            return False, _UNSET
        self.terror(node, "", "int")
        return False, _UNSET

    def boolean(self, node: yaml.Node) -> tuple[bool, Any]:
        if isinstance(node, yaml.ScalarNode):
            tag, v = _scalar(node)
            if v is None:
                return False, _UNSET
            if tag == "!!bool":
                return True, v
            if tag == "!!str":
                if v in ("y", "Y", "yes", "Yes", "YES", "on", "On", "ON"):
                    return True, True
                if v in ("n", "N", "no", "No", "NO", "off", "Off", "OFF"):
                    return True, False
            self.terror(node, tag, "bool")
            return False, _UNSET
        self.terror(node, "", "bool")
        return False, _UNSET

    def any(self, node: yaml.Node) -> tuple[bool, Any]:
        """``interface{}`` (bounded: nesting depth and expanded size, aliases included)."""
        self.nodes += 1
        if self.nodes > self.MAX_NODES:
            raise ConfigError(f"value expands to more than {self.MAX_NODES} nodes (aliases)")
        if self.depth >= self.MAX_DEPTH:
            raise ConfigError(f"value nested deeper than {self.MAX_DEPTH} levels")
        self.depth += 1
        try:
            return self._any(node)
        finally:
            self.depth -= 1

    def _any(self, node: yaml.Node) -> tuple[bool, Any]:
        if isinstance(node, yaml.ScalarNode):
            return True, _scalar(node)[1]
        if isinstance(node, yaml.SequenceNode):
            return True, [self.any(n)[1] for n in node.value]
        if not self.check_unique(node):
            return False, _UNSET
        out: dict[Any, Any] = {}
        for k, v in node.value:
            key = self.any(k)[1]
            try:
                out[key] = self.any(v)[1]
            except TypeError:  # unhashable key (a list/map as a key)
                out[repr(key)] = self.any(v)[1]
        return True, out

    def str_ptr_map(self, node: yaml.Node) -> tuple[bool, Any]:
        """``map[string]*string`` (a KMS context): null values are nil pointers (None)."""
        if isinstance(node, yaml.ScalarNode) and _scalar(node)[1] is None:
            return True, None
        if not isinstance(node, yaml.MappingNode):
            self.terror(node, _scalar(node)[0] if isinstance(node, yaml.ScalarNode) else "",
                        "map[string]*string")
            return False, _UNSET
        if not self.check_unique(node):
            return False, _UNSET
        out: dict[str, str | None] = {}
        for k, v in node.value:
            ok, key = self.string(k)
            if not ok:
                if isinstance(k, yaml.ScalarNode):
                    key = ""
                else:
                    continue
            if isinstance(v, yaml.ScalarNode) and _scalar(v)[1] is None:
                out[key] = None
                continue
            ok, val = self.string(v)
            if ok:
                out[key] = val
        return True, out

    def seq(self, node: yaml.Node, elem: Callable[[yaml.Node], tuple[bool, Any]],
            go_type: str) -> tuple[bool, Any]:
        """``[]T``: failed or null items are dropped, like go-yaml."""
        if isinstance(node, yaml.ScalarNode):
            tag, v = _scalar(node)
            if v is None:
                return True, None  # nil slice
            self.terror(node, tag, go_type)
            return False, _UNSET
        if isinstance(node, yaml.MappingNode):
            self.terror(node, "", go_type)
            return False, _UNSET
        out = []
        for n in node.value:
            ok, v = elem(n)
            if ok:
                out.append(v)
        return True, out

    def struct(self, node: yaml.Node, schema: "_Struct",
               current: dict[str, Any] | None = None) -> tuple[bool, Any]:
        target = schema.defaults() if current is None else current
        if isinstance(node, yaml.ScalarNode):
            tag, v = _scalar(node)
            if v is None:
                return False, target
            self.terror(node, tag, schema.go_type)
            return False, target
        if isinstance(node, yaml.SequenceNode):
            self.terror(node, "", schema.go_type)
            return False, target
        if not self.check_unique(node):
            return False, target
        done: set[str] = set()
        self._struct_fields(node, schema, target, done, merging=False)
        return True, target

    def _struct_fields(self, node: yaml.MappingNode, schema: "_Struct", target: dict[str, Any],
                       done: set[str], merging: bool) -> None:
        merge_node = None
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == "<<" and not k.style:
                merge_node = v
                continue
            if not isinstance(k, yaml.ScalarNode):
                continue
            name = k.value
            if merging and name in done:
                continue
            done.add(name)
            kind = schema.fields.get(name)
            if kind is None:
                continue  # unknown keys are ignored
            ok, val = kind(self, v)
            if val is not _UNSET:
                target[name] = val
        if merge_node is not None:
            self._merge(merge_node, schema, target, done)

    def _merge(self, node: yaml.Node, schema: "_Struct", target: dict[str, Any],
               done: set[str]) -> None:
        if isinstance(node, yaml.MappingNode):
            self._struct_fields(node, schema, target, done, merging=True)
        elif isinstance(node, yaml.SequenceNode):
            for n in node.value:
                if isinstance(n, yaml.MappingNode):
                    self._struct_fields(n, schema, target, done, merging=True)
                else:
                    raise _Fatal("map merge requires map or sequence of maps as the value")
        else:
            raise _Fatal("map merge requires map or sequence of maps as the value")


@dataclass
class _Struct:
    go_type: str
    fields: dict[str, Callable[[_Decoder, yaml.Node], tuple[bool, Any]]]
    default_values: Callable[[], dict[str, Any]]

    def defaults(self) -> dict[str, Any]:
        return self.default_values()


def _s(d: _Decoder, n: yaml.Node) -> tuple[bool, Any]:
    return d.string(n)


def _i(d: _Decoder, n: yaml.Node) -> tuple[bool, Any]:
    return d.integer(n)


def _b(d: _Decoder, n: yaml.Node) -> tuple[bool, Any]:
    return d.boolean(n)


def _a(d: _Decoder, n: yaml.Node) -> tuple[bool, Any]:
    return d.any(n)


def _list_of(elem: Callable[[_Decoder, yaml.Node], tuple[bool, Any]], go_type: str):
    return lambda d, n: d.seq(n, lambda m: elem(d, m), go_type)


def _struct_of(name: str):
    return lambda d, n: d.struct(n, _SCHEMAS[name])


def _list_of_structs(name: str):
    return lambda d, n: d.seq(n, lambda m: d.struct(m, _SCHEMAS[name]),
                              "[]" + _SCHEMAS[name].go_type)


def _zero(**extra: Any) -> Callable[[], dict[str, Any]]:
    return lambda: dict(extra)


_CREATION_RULE_FIELDS = {
    "path_regex": _s, "kms": _a, "aws_profile": _s, "age": _a, "pgp": _a, "gcp_kms": _a,
    "hckms": _list_of(_s, "[]string"), "azure_keyvault": _a, "hc_vault_transit_uri": _a,
    "key_groups": _list_of_structs("keyGroup"), "shamir_threshold": _i,
    **{name: _s for name in CRYPT_RULE_FIELDS}, "mac_only_encrypted": _b,
}

_SCHEMAS: dict[str, _Struct] = {
    "configFile": _Struct("config.configFile", {
        "creation_rules": _list_of_structs("creationRule"),
        "destination_rules": _list_of_structs("destinationRule"),
        "stores": lambda d, n: d.struct(n, _SCHEMAS["StoresConfig"], d.stores_current),
    }, _zero()),
    "creationRule": _Struct("config.creationRule", _CREATION_RULE_FIELDS, _zero()),
    "keyGroup": _Struct("config.keyGroup", {
        "merge": _list_of_structs("keyGroup"), "kms": _list_of_structs("kmsKey"),
        "gcp_kms": _list_of_structs("gcpKmsKey"), "hckms": _list_of_structs("hckmsKey"),
        "azure_keyvault": _list_of_structs("azureKVKey"), "hc_vault": _list_of(_s, "[]string"),
        "age": _list_of(_s, "[]string"), "pgp": _list_of(_s, "[]string"),
    }, _zero()),
    "kmsKey": _Struct("config.kmsKey", {
        "arn": _s, "role": _s, "context": lambda d, n: d.str_ptr_map(n), "aws_profile": _s,
    }, _zero()),
    "gcpKmsKey": _Struct("config.gcpKmsKey", {"resource_id": _s}, _zero()),
    "hckmsKey": _Struct("config.hckmsKey", {"key_id": _s}, _zero()),
    "azureKVKey": _Struct("config.azureKVKey", {"vaultUrl": _s, "key": _s, "version": _s},
                          _zero()),
    "destinationRule": _Struct("config.destinationRule", {
        "path_regex": _s, "s3_bucket": _s, "s3_prefix": _s, "gcs_bucket": _s, "gcs_prefix": _s,
        "vault_path": _s, "vault_address": _s, "vault_kv_mount_name": _s,
        "vault_kv_version": _i, "recreation_rule": _struct_of("creationRule"),
        "omit_extensions": _b,
    }, _zero()),
    "StoresConfig": _Struct("config.StoresConfig", {
        "dotenv": _struct_of("DotenvStoreConfig"), "ini": _struct_of("INIStoreConfig"),
        "json_binary": lambda d, n: d.struct(n, _SCHEMAS["JSONBinaryStoreConfig"],
                                             d.stores_current.get("json_binary")),
        "json": lambda d, n: d.struct(n, _SCHEMAS["JSONStoreConfig"],
                                      d.stores_current.get("json")),
        "yaml": lambda d, n: d.struct(n, _SCHEMAS["YAMLStoreConfig"],
                                      d.stores_current.get("yaml")),
    }, _zero()),
    "DotenvStoreConfig": _Struct("config.DotenvStoreConfig", {}, _zero()),
    "INIStoreConfig": _Struct("config.INIStoreConfig", {}, _zero()),
    "JSONBinaryStoreConfig": _Struct("config.JSONBinaryStoreConfig", {"indent": _i},
                                     _zero(indent=-1)),
    "JSONStoreConfig": _Struct("config.JSONStoreConfig", {"indent": _i}, _zero(indent=-1)),
    "YAMLStoreConfig": _Struct("config.YAMLStoreConfig", {"indent": _i}, _zero(indent=4)),
}


def _parse_error_line(e: yaml.MarkedYAMLError) -> int:
    """The line go-yaml's ``parser.fail`` reports (0-based for parser errors, a libyaml quirk)."""
    scanner = isinstance(e, yaml.scanner.ScannerError) or type(e).__name__ == "ScannerError"
    for mark in (e.context_mark, e.problem_mark):
        if mark is not None and mark.line != 0:
            return mark.line + (1 if scanner else 0)
    return 0


def _decode_file(data: bytes, config_path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(configFile fields, stores) or ConfigError with sops' message."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    hint = f"config file: {config_path}"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(_UNMARSHAL + "yaml: invalid leading UTF-8 octet", hint=hint) from None
    try:
        root = next(iter(yaml.compose_all(text, Loader=_Loader)), None)
    except yaml.MarkedYAMLError as e:
        if isinstance(e, yaml.composer.ComposerError) and (e.problem or "").startswith(
                "found undefined alias"):
            at = e.problem_mark.index if e.problem_mark else len(text)
            m = re.match(r"\*([^\s,\[\]{}]+)", text[at:])
            name = m.group(1) if m else ""
            raise ConfigError(_UNMARSHAL + f"yaml: unknown anchor '{name}' referenced",
                              hint=hint) from None
        line = _parse_error_line(e)
        where = f"line {line}: " if line else ""
        problem = e.problem or "unknown problem parsing YAML content"
        raise ConfigError(_UNMARSHAL + f"yaml: {where}{problem}", hint=hint) from None
    except yaml.reader.ReaderError:
        raise ConfigError(_UNMARSHAL + "yaml: control characters are not allowed",
                          hint=hint) from None
    except yaml.YAMLError as e:
        raise ConfigError(_UNMARSHAL + f"yaml: {e}", hint=hint) from None
    stores: dict[str, Any] = {"json": {"indent": -1}, "json_binary": {"indent": -1},
                              "yaml": {"indent": 4}}
    dec = _Decoder(stores)
    try:
        if root is None:
            fields: dict[str, Any] = {}
        else:
            _, fields = dec.struct(root, _SCHEMAS["configFile"])
    except _Fatal as e:
        raise ConfigError(_UNMARSHAL + f"yaml: {e}", hint=hint) from None
    if dec.terrors:
        raise ConfigError(_UNMARSHAL + "yaml: unmarshal errors:\n  " + "\n  ".join(dec.terrors),
                          hint=hint)
    return fields, stores


# ------------------------------------------------------------------------------ config objects

@dataclass(frozen=True)
class StoresConfig:
    """``stores:``. Defaults: ``yaml_indent`` 4, ``json_indent``/``json_binary_indent`` -1 (tab)."""

    yaml_indent: int = 4
    json_indent: int = -1
    json_binary_indent: int = -1


@dataclass
class CreationRule:
    """The matching rule, resolved: key groups, threshold, crypt rule, mac_only_encrypted."""

    key_groups: list[list[KeySpec]] = field(default_factory=list)
    shamir_threshold: int = 0
    crypt_rule: tuple[str, str] | None = None
    mac_only_encrypted: bool = False
    path_regex: str = ""


def _key_field(value: Any, field_name: str, key_type: str) -> list[str]:
    """sops' ``parseKeyField`` wrapped by ``getKeysWithValidation`` (its doubled prefix too)."""
    def fail(msg: str) -> ConfigError:
        return ConfigError(f"invalid {key_type} key configuration: invalid {field_name} key "
                           f"configuration: {msg}")

    if value is None:
        return []
    if isinstance(value, str):
        return [k.strip() for k in value.split(",") if k.strip()]
    if isinstance(value, list):
        out = []
        for item in value:
            if not isinstance(item, str):
                raise fail(f"expected string in list, got {_go_type(item)}")
            out.append(item)
        return out
    raise fail(f"expected string, []string, or nil, got {_go_type(value)}")


def _kms_context(raw: dict[str, str | None] | None) -> tuple[tuple[str, str], ...]:
    if not raw:
        return ()
    for k, v in raw.items():
        if v is None:
            # sops dereferences the nil pointer and crashes; refuse it with a message instead
            raise ConfigError(f"error loading config: KMS context value for {_go_quote(k)} is null")
    return _context_tuple(raw)  # type: ignore[arg-type]


def _vault_value(uri: str) -> UnsupportedKeySpec:
    return UnsupportedKeySpec("hc_vault_transit_uri", uri)


def _dedup(group: list[KeySpec]) -> list[KeySpec]:
    seen: set[tuple[str, str]] = set()
    out = []
    for k in group:
        ident = (type(k).__name__ + "/" + getattr(k, "type", ""), k.to_string())
        if ident in seen:
            continue
        seen.add(ident)
        out.append(k)
    return out


def _extract_group(g: dict[str, Any]) -> list[KeySpec]:
    """sops' ``extractMasterKeys``: merge, age, pgp, kms, gcp_kms, hckms, azure, vault; dedup."""
    group: list[KeySpec] = []
    for sub in g.get("merge") or []:
        group.extend(_extract_group(sub))
    for item in g.get("age") or []:
        group.extend(_age_keys_cfg(item))
    for fp in g.get("pgp") or []:
        group.append(PGPKeySpec(fp.replace(" ", "")))
    for k in g.get("kms") or []:
        group.append(KMSKeySpec(k.get("arn", ""), k.get("role", ""),
                                _kms_context(k.get("context")), k.get("aws_profile", "")))
    for k in g.get("gcp_kms") or []:
        group.append(UnsupportedKeySpec("gcp_kms", k.get("resource_id", "").replace(" ", "")))
    for k in g.get("hckms") or []:
        group.append(_hckms_key(k.get("key_id", "")))
    for k in g.get("azure_keyvault") or []:
        url = f"{k.get('vaultUrl', '')}/keys/{k.get('key', '')}/{k.get('version', '')}"
        group.append(UnsupportedKeySpec("azure_keyvault", url))
    for uri in g.get("hc_vault") or []:
        group.append(_vault_value(uri))
    return _dedup(group)


def _age_keys_cfg(s: str) -> list[AgeKeySpec]:
    try:
        return _age_keys(s)
    except SopsError as e:
        raise ConfigError(e.message) from None


def _rule_groups(r: dict[str, Any], kms_context: Mapping[str, str] | None) -> list[list[KeySpec]]:
    """sops' ``getKeyGroupsFromCreationRule``."""
    key_groups = r.get("key_groups") or []
    if key_groups:
        return [_extract_group(g) for g in key_groups]
    group: list[KeySpec] = []
    age = _key_field(r.get("age"), "age", "age")
    if age:
        group.extend(_age_keys_cfg(",".join(age)))
    pgp = _key_field(r.get("pgp"), "pgp", "pgp")
    group.extend(PGPKeySpec(fp) for fp in parse_csv_keys(",".join(pgp), "pgp"))
    kms = _key_field(r.get("kms"), "kms", "kms")
    group.extend(parse_kms_arg(",".join(kms), kms_context, r.get("aws_profile", "")))
    gcp = _key_field(r.get("gcp_kms"), "gcp_kms", "gcpkms")
    group.extend(UnsupportedKeySpec("gcp_kms", k) for k in parse_csv_keys(",".join(gcp), "gcp_kms"))
    group.extend(_hckms_key(k) for k in parse_csv_keys(",".join(r.get("hckms") or []), "hckms"))
    az = _key_field(r.get("azure_keyvault"), "azure_keyvault", "azure_keyvault")
    group.extend(_azure_keys(",".join(az)))
    vault = _key_field(r.get("hc_vault_transit_uri"), "hc_vault_transit_uri", "vault")
    group.extend(_vault_value(u) for u in parse_csv_keys(",".join(vault), "hc_vault_transit_uri"))
    return [group]


def _compile(pattern: str) -> re.Pattern[str]:
    """``regexp.Compile(path_regex)`` with Go's RE2 syntax; sops' message when it fails."""
    try:
        return goregex.compile_go(pattern)
    except (goregex.GoRegexError, goregex.GoRegexUnsupported) as e:
        raise ConfigError(f"can not compile regexp: {e}") from None


@dataclass
class Config:
    """A loaded ``.sops.yaml``. ``creation_rules`` is None when the file has none (then sops
    behaves as if there were no config file for key selection)."""

    path: str
    creation_rules: list[dict[str, Any]] | None
    destination_rules: list[dict[str, Any]] | None
    stores: StoresConfig

    @property
    def config_dir(self) -> str:
        return os.path.abspath(os.path.dirname(self.path))

    def relative_target(self, path: str) -> str:
        """The string path_regex is matched against: ``path`` minus ``<config dir>/``."""
        prefix = self.config_dir + os.sep
        return path[len(prefix):] if path.startswith(prefix) else path

    def creation_rule_for(self, path: str, kms_context: Mapping[str, str] | None = None
                          ) -> CreationRule | None:
        """The first rule whose ``path_regex`` (searched, unanchored) matches ``path``.

        ``path`` is the target's absolute path; ``kms_context`` is the ``--encryption-context``
        sops gives to the single-group ``kms:`` keys. Returns None when the file has no
        ``creation_rules`` at all (sops: "config file not found, or has no creation rules").
        """
        if self.creation_rules is None:
            return None
        target = self.relative_target(path)
        chosen = None
        for r in self.creation_rules:
            rx = r.get("path_regex", "")
            if rx == "" or _compile(rx).search(goregex.go_text(target)):
                chosen = r
                break
        if chosen is None:
            raise ConfigError("error loading config: no matching creation rules found")
        set_rules = [(n, chosen[n]) for n in CRYPT_RULE_FIELDS if chosen.get(n, "")]
        if len(set_rules) > 1:
            raise ConfigError(_CRYPT_CONFLICT)
        groups = _rule_groups(chosen, kms_context)
        return CreationRule(key_groups=groups, shamir_threshold=chosen.get("shamir_threshold", 0),
                            crypt_rule=set_rules[0] if set_rules else None,
                            mac_only_encrypted=chosen.get("mac_only_encrypted", False),
                            path_regex=chosen.get("path_regex", ""))


def load_config(data: bytes, config_path: str) -> Config:
    """Decode ``.sops.yaml`` bytes; structural errors (YAML syntax, wrong types) raise here."""
    fields, stores = _decode_file(data, config_path)
    return Config(
        path=config_path,
        creation_rules=fields.get("creation_rules"),
        destination_rules=fields.get("destination_rules"),
        stores=StoresConfig(yaml_indent=stores["yaml"].get("indent", 4),
                            json_indent=stores["json"].get("indent", -1),
                            json_binary_indent=stores["json_binary"].get("indent", -1)),
    )


# ------------------------------------------------------------------------------ finding it

@dataclass(frozen=True)
class ConfigLookup:
    path: str | None
    warning: str | None


def _shown(depth: int, name: str) -> str:
    """The path as sops prints it: it searches from ``.``, so ``../../.sops.yml``."""
    return "/".join([".."] * depth + [name])


def lookup_config(start_dir: str, *, exists: Callable[[str], bool] = os.path.exists
                  ) -> ConfigLookup:
    """sops' ``LookupConfigFile``: ``start_dir`` and up to 99 parents, lexically (``..``).

    ``path`` is joined onto ``start_dir``; the warning names files relative to ``start_dir``
    the way sops (which always starts at ``.``) prints them.
    """
    d = start_dir
    alternate = None
    for depth in range(MAX_DEPTH):
        candidate = os.path.join(d, CONFIG_FILE_NAME)
        if exists(candidate):
            warning = None
            if alternate:
                warning = (f"ignoring {_go_quote(alternate)} when searching for config file; "
                           f"the config file must be called {_go_quote(CONFIG_FILE_NAME)}; "
                           f"using {_go_quote(_shown(depth, CONFIG_FILE_NAME))} instead")
            return ConfigLookup(candidate, warning)
        if alternate is None and exists(os.path.join(d, ALTERNATE_CONFIG_NAME)):
            alternate = _shown(depth, ALTERNATE_CONFIG_NAME)
        d = os.path.normpath(os.path.join(d, os.pardir))
    warning = None
    if alternate:
        warning = (f"ignoring {_go_quote(alternate)} when searching for config file; the config "
                   f"file must be called {_go_quote(CONFIG_FILE_NAME)}")
    return ConfigLookup(None, warning)


def find_config(start_dir: str) -> str | None:
    """Path of the ``.sops.yaml`` that applies to ``start_dir``, or None.

    A skipped ``.sops.yml`` is reported with :func:`warnings.warn` (:class:`ConfigWarning`);
    use :func:`lookup_config` to get the warning text instead.
    """
    res = lookup_config(start_dir)
    if res.warning:
        warnings.warn(res.warning, ConfigWarning, stacklevel=2)
    return res.path
