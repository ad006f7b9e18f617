"""Decoding ``.sops.yaml`` the way sops 3.11 does: go-yaml v3 into sops' Go structs.

Unknown keys are ignored, a value of the wrong type is an ``unmarshal errors`` message with the
line, ``null`` leaves the default, ``null`` items of typed lists are dropped, duplicate mapping
keys are an error, ``<<`` merges only fill keys not set explicitly. :func:`decode_file` gives
the fields as plain values (rules are built from them in :mod:`.rules`).
"""

from __future__ import annotations

import re
from typing import Any, Callable, cast

import yaml

from sops_enclave.errors import ConfigError
from sops_enclave.formats.yaml_resolve import GoUint, resolve_plain, timestamp_text
from sops_enclave.goformat import go_quote
from sops_enclave.record import record
from sops_enclave.tree import Timestamp

__all__ = ["CRYPT_RULE_FIELDS", "decode_file", "go_type"]

# sops' creationRule field order (the order of its "more than one" check).
CRYPT_RULE_FIELDS = ("unencrypted_suffix", "encrypted_suffix", "unencrypted_regex",
                     "encrypted_regex", "unencrypted_comment_regex", "encrypted_comment_regex")

_UNMARSHAL = "error loading config: Could not unmarshal config file: "

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


def go_type(v: Any) -> str:
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
            return "!!float", float(cast(int, resolved))
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
                        f"line {kj.start_mark.line + 1}: mapping key {go_quote(ki.value)} "
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


@record
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


def decode_file(data: bytes, config_path: str) -> tuple[dict[str, Any], dict[str, Any]]:
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


