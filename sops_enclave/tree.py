"""The ordered document model shared by every store.

A document is a list of :class:`Branch` objects (one per YAML document, one for every other
format). A branch is an ordered list of ``(key, value)`` tuples; a key is a ``str`` or a
:class:`Comment` (whose value is ``None``). Sequences are plain Python lists whose elements may
be :class:`Comment` objects. Scalars are ``str``, ``int``, ``float``, ``bool``, ``None``,
:class:`Timestamp` and ``bytes`` (the sops ``bytes`` type).

Strings that are not valid UTF-8 (the binary store, YAML ``!!binary``) are held as ``str``
decoded with ``surrogateescape``; :func:`to_bytes` gives back the exact bytes.
"""

from __future__ import annotations

from typing import Any, Iterator

__all__ = ["Branch", "Comment", "Timestamp", "to_bytes", "is_valid_utf8", "walk_leaves",
           "max_depth", "extract"]


class Comment:
    """A comment line, without its leading ``#`` (YAML) or prefix (INI)."""

    __slots__ = ("value",)

    def __init__(self, value: str):
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Comment) and other.value == self.value

    def __hash__(self) -> int:
        return hash(("comment", self.value))

    def __repr__(self) -> str:
        return f"Comment({self.value!r})"


class Timestamp:
    """A YAML timestamp, kept as its RFC 3339 text with nanoseconds (Go ``MarshalText``)."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Timestamp) and other.text == self.text

    def __hash__(self) -> int:
        return hash(("ts", self.text))

    def __repr__(self) -> str:
        return f"Timestamp({self.text!r})"

    def __str__(self) -> str:
        return self.text


class Branch(list[tuple[Any, Any]]):
    """An ordered mapping: a list of ``(key, value)`` tuples, duplicates and comments kept."""

    __slots__ = ()

    def get(self, key: str, default: Any = None) -> Any:
        for k, v in self:
            if k == key and not isinstance(k, Comment):
                return v
        return default

    def index_of(self, key: str) -> int:
        for i, (k, _) in enumerate(self):
            if k == key and not isinstance(k, Comment):
                return i
        return -1

    def keys_(self) -> list[str]:
        return [k for k, _ in self if not isinstance(k, Comment)]


def to_bytes(s: str) -> bytes:
    """The exact bytes of a tree string (inverse of ``bytes.decode('utf-8', 'surrogateescape')``)."""
    return s.encode("utf-8", "surrogateescape")


def is_valid_utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def walk_leaves(value: Any) -> Iterator[Any]:
    """Yield every non-comment scalar under ``value`` in document order."""
    if isinstance(value, Branch):
        for k, v in value:
            if not isinstance(k, Comment):
                yield from walk_leaves(v)
    elif isinstance(value, list):
        for v in value:
            if not isinstance(v, Comment):
                yield from walk_leaves(v)
    else:
        yield value


def max_depth(value: Any, limit: int) -> int:
    """Nesting depth of ``value`` (iterative), stopping early once ``limit`` is exceeded."""
    deepest = 0
    todo = [(value, 0)]
    while todo:
        v, d = todo.pop()
        if d > deepest:
            deepest = d
            if deepest > limit:
                return deepest
        if isinstance(v, Branch):
            todo.extend((x, d + 1) for k, x in v if isinstance(x, list))
        elif isinstance(v, list):
            todo.extend((x, d + 1) for x in v if isinstance(x, list))
    return deepest


def extract(branch: Branch, path: list[str | int]) -> Any:
    """The subtree at ``path`` (map keys and list indices), as ``sops --extract`` reads it;
    ``SopsError`` (``error truncating tree: ...``) when a component is missing."""
    from sops_enclave.errors import SopsError

    cur: Any = branch
    for comp in path:
        if isinstance(comp, str) and isinstance(cur, Branch):
            i = cur.index_of(comp)
            if i < 0:
                raise SopsError(f"error truncating tree: component ['{comp}'] not found")
            cur = cur[i][1]
        elif isinstance(comp, int) and isinstance(cur, list) and not isinstance(cur, Branch):
            items = [x for x in cur if not isinstance(x, Comment)]
            if comp < 0 or comp >= len(items):
                raise SopsError(f"error truncating tree: component [{comp}] not found")
            cur = items[comp]
        else:
            shown = f"'{comp}'" if isinstance(comp, str) else comp
            raise SopsError(f"error truncating tree: component [{shown}] not found")
    return cur
