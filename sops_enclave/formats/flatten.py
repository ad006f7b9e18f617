"""Flattened metadata for the flat stores (dotenv, INI), as sops does it.

A nested metadata tree becomes single keys joined with ``__map_`` (a map child) and
``__list_<N>`` (a list element; N counts from 0 and skips comments)::

    age__list_0__map_recipient = age1...
    kms__list_0__map_context__map_Environment = prod

:func:`unflatten` rebuilds the tree with the rules of sops' ``unflattenTreeBranch``: map keys
come back sorted by byte order, list indices must be exactly ``0..n-1`` ("Incomplete list"),
a key that is both a leaf and a parent (or both a map and a list) is a "Type mismatch", and
the same key twice is a "Duplicate value". Errors are :class:`ValueError` with sops' wording.
"""

from __future__ import annotations

from typing import Any, Iterable

from sops_enclave.tree import Branch, Comment

__all__ = ["MAP_SEPARATOR", "LIST_SEPARATOR", "flatten", "unflatten", "tokenize",
           "byte_key", "go_quote", "flat_metadata"]

MAP_SEPARATOR = "__map_"
LIST_SEPARATOR = "__list_"

_INT64_MAX = (1 << 63) - 1
_INT64_MIN = -(1 << 63)


def byte_key(s: str) -> bytes:
    """Sort key giving Go's ``sort.Strings`` order (byte order of the UTF-8 bytes)."""
    return s.encode("utf-8", "surrogateescape")


# ------------------------------------------------------------------ flatten

def flatten(branch: Branch, prefix: str = "") -> list[tuple[str, Any]]:
    """Flatten a nested branch into ``(key, leaf)`` pairs, in document order.

    Top-level keys get ``prefix`` (``"sops_"`` for dotenv, ``""`` for INI); nested maps add
    ``__map_<key>`` and lists ``__list_<index>``. Comments are skipped (and do not count as
    list elements); empty maps and lists produce no pair at all; ``None`` leaves are kept
    (the emitters leave them out, as sops does with JSON nulls).
    """
    out: list[tuple[str, Any]] = []
    seen: set[str] = set()
    _flatten_map(branch, prefix, out, seen)
    return out


def _flatten_value(value: Any, key: str, out: list[tuple[str, Any]], seen: set[str]) -> None:
    if isinstance(value, Branch):
        _flatten_map(value, key + MAP_SEPARATOR, out, seen)
        return
    if isinstance(value, dict):
        _flatten_map(Branch(value.items()), key + MAP_SEPARATOR, out, seen)
        return
    if isinstance(value, (list, tuple)):
        i = 0
        for item in value:
            if isinstance(item, Comment):
                continue
            _flatten_value(item, f"{key}{LIST_SEPARATOR}{i}", out, seen)
            i += 1
        return
    if key in seen:
        raise ValueError(f"Found key collision {go_quote(key)} while flattening")
    seen.add(key)
    out.append((key, value))


def _flatten_map(branch: Iterable[tuple[Any, Any]], prefix: str, out: list[tuple[str, Any]],
                 seen: set[str]) -> None:
    for k, v in branch:
        if isinstance(k, Comment):
            continue
        if not isinstance(k, str):
            raise ValueError(f"Found non-string key {k!r} when flattening")
        _flatten_value(v, prefix + k, out, seen)


def _metadata_string(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float) and v.is_integer():
        return "%.0f" % v
    if isinstance(v, str):
        return v
    from sops_enclave.goformat import val_to_string
    return val_to_string(v)


def flat_metadata(metadata: Branch, prefix: str = "") -> list[tuple[str, str]]:
    """Flattened metadata as sops writes it in dotenv and INI files.

    ``None`` leaves are left out, bools become ``true``/``false``, ints their decimal form
    (sops' ``EncodeNonStrings``), newlines in strings become the two characters ``\\n``
    (``EncodeNewLines``), and the keys are sorted by byte order.
    """
    items = []
    for k, v in flatten(metadata, prefix):
        if v is None:
            continue
        items.append((k, _metadata_string(v).replace("\n", "\\n")))
    items.sort(key=lambda kv: byte_key(kv[0]))
    return items


# ------------------------------------------------------------------ unflatten

class _Map:
    __slots__ = ("key",)

    def __init__(self, key: str):
        self.key = key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Map) and other.key == self.key

    def __repr__(self) -> str:
        return f"map({self.key!r})"


class _List:
    __slots__ = ("position",)

    def __init__(self, position: int):
        self.position = position

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _List) and other.position == self.position

    def __repr__(self) -> str:
        return f"list({self.position})"


def _atoi(s: str) -> int:
    """Go ``strconv.Atoi`` with the error ignored: 0 on a syntax error, clamped on overflow."""
    body = s[1:] if s[:1] in ("+", "-") else s
    if not body or not all("0" <= c <= "9" for c in body):
        return 0
    n = int(s)
    return max(_INT64_MIN, min(_INT64_MAX, n))


#: Flattened keys may nest at most this deep (unflattening recurses once per level).
MAX_DEPTH = 64


def tokenize(path: str) -> list[_Map | _List]:
    """Split a flattened key into map/list tokens (sops ``tokenize``)."""
    tokens: list[_Map | _List] = []
    state = 0  # 0 normal, 1 map, 2 list
    last = 0
    i = 0
    n = len(path)

    def finish(end: int) -> None:
        if state == 0:
            tokens.append(_Map(path[last:end]))
        elif state == 1:
            tokens.append(_Map(path[last + len(MAP_SEPARATOR):end]))
        else:
            tokens.append(_List(_atoi(path[last + len(LIST_SEPARATOR):end])))

    while i < n:
        if path.startswith(MAP_SEPARATOR, i):
            finish(i)
            last = i
            state = 1
            i += len(MAP_SEPARATOR)
        elif path.startswith(LIST_SEPARATOR, i):
            finish(i)
            last = i
            state = 2
            i += len(LIST_SEPARATOR)
        else:
            i += 1
    finish(i)
    return tokens


_NO_VALUE = object()


class _Node:
    __slots__ = ("value", "subkeys", "indices")

    def __init__(self) -> None:
        self.value: Any = _NO_VALUE
        self.subkeys: dict[str, _Node] = {}
        self.indices: dict[int, _Node] = {}


def _place(value: Any, path: list[_Map | _List], root: _Node) -> None:
    for tok in path:
        if isinstance(tok, _Map):
            root = root.subkeys.setdefault(tok.key, _Node())
        else:
            root = root.indices.setdefault(tok.position, _Node())
    if root.value is not _NO_VALUE:
        raise ValueError("Duplicate value")
    root.value = value


def _convert(node: _Node) -> Any:
    has_value = node.value is not _NO_VALUE
    has_sub = bool(node.subkeys)
    has_idx = bool(node.indices)
    if has_value + has_sub + has_idx > 1:
        raise ValueError("Type mismatch")
    if has_value:
        return node.value
    if has_sub:
        return Branch((k, _convert(node.subkeys[k])) for k in sorted(node.subkeys, key=byte_key))
    if has_idx:
        lo, hi = min(node.indices), max(node.indices)
        if lo != 0 or hi + 1 != len(node.indices):
            raise ValueError("Incomplete list")
        return [_convert(node.indices[i]) for i in range(hi + 1)]
    return Branch()


def unflatten(pairs: Iterable[tuple[Any, Any]]) -> Branch:
    """Rebuild a nested :class:`Branch` from flattened ``(key, value)`` pairs.

    ``pairs`` may also be a :class:`Branch` (its comments are skipped). Raises
    :class:`ValueError` mentioning "Duplicate value", "Type mismatch" or "Incomplete list".
    """
    root = _Node()
    for key, value in pairs:
        if isinstance(key, Comment):
            continue
        if not isinstance(key, str):
            raise ValueError(f"Found non-string key {key!r} when unflattening")
        try:
            tokens = tokenize(key)
            if len(tokens) > MAX_DEPTH:
                raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
            _place(value, tokens, root)
        except ValueError as e:
            raise ValueError(f"Error while unflattening {go_quote(key)}: {e}") from None
    try:
        result = _convert(root)
    except ValueError as e:
        raise ValueError(f"Error while unflattening: {e}") from None
    if not isinstance(result, Branch):  # pragma: no cover - the first token is always a map
        raise ValueError("Internal error: cannot find root")
    return result


def go_quote(s: str) -> str:
    """Go ``strconv.Quote`` (``%q``) of a tree string (surrogate-escaped bytes as ``\\xNN``)."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif 0xDC80 <= o <= 0xDCFF:
            out.append("\\x%02x" % (o - 0xDC00))
        elif ch.isprintable():
            out.append(ch)
        elif ch in _GO_ESC:
            out.append(_GO_ESC[ch])
        elif o < 0x20 or o == 0x7F:
            out.append("\\x%02x" % o)
        elif 0xD800 <= o <= 0xDFFF:
            out.append("\\ufffd")
        elif o < 0x10000:
            out.append("\\u%04x" % o)
        else:
            out.append("\\U%08x" % o)
    out.append('"')
    return "".join(out)


_GO_ESC = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
           "\v": "\\v"}
