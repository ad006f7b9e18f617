"""A strict, bounded CBOR decoder for untrusted attestation documents (private).

Only what a Nitro attestation document uses is accepted: unsigned and negative
integers, byte and text strings, arrays, maps, ``false``/``true``/``null`` and tag 18
at the top level. Everything else is refused: indefinite lengths, floats, other tags
and simple values, duplicate map keys, map keys that are not int/str/bytes, nesting
deeper than ``max_depth``, lengths beyond the end of the input and trailing bytes.

cbor2 is used to *encode* (the COSE ``Sig_structure``); decoding of hostile input is
done here so that the rules above do not depend on the installed cbor2 version
(``allow_duplicate_keys`` appeared in cbor2 6.1, and ``loads`` ignores trailing bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["CBORDecodeError", "Tagged", "decode"]


class CBORDecodeError(ValueError):
    """The bytes are not CBOR in the accepted subset."""


@dataclass(frozen=True)
class Tagged:
    """A tagged item (only ever returned for the top level, when allowed)."""

    tag: int
    value: Any


class _Reader:
    __slots__ = ("data", "pos", "max_depth")

    def __init__(self, data: bytes, max_depth: int) -> None:
        self.data = data
        self.pos = 0
        self.max_depth = max_depth

    def take(self, n: int) -> bytes:
        if n < 0 or n > len(self.data) - self.pos:
            raise CBORDecodeError(
                f"length {n} at offset {self.pos} runs past the end of the input")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def head(self) -> tuple[int, int, int]:
        """Return (major type, additional info, argument) of the next item."""
        start = self.pos
        (b,) = self.take(1)
        major, info = b >> 5, b & 0x1F
        if info < 24:
            return major, info, info
        if info in (24, 25, 26, 27):
            size = 1 << (info - 24)
            return major, info, int.from_bytes(self.take(size), "big")
        if info == 31:
            raise CBORDecodeError(f"indefinite length at offset {start} is not accepted")
        raise CBORDecodeError(f"reserved additional info {info} at offset {start}")

    def item(self, depth: int) -> Any:
        if depth > self.max_depth:
            raise CBORDecodeError(f"nesting deeper than {self.max_depth}")
        start = self.pos
        major, info, arg = self.head()
        if major == 0:
            return arg
        if major == 1:
            return -1 - arg
        if major == 2:
            return self.take(arg)
        if major == 3:
            try:
                return self.take(arg).decode("utf-8")
            except UnicodeDecodeError as e:
                raise CBORDecodeError(f"invalid UTF-8 in text string at offset {start}") from e
        if major == 4:
            # Every element takes at least one byte: refuse impossible counts up front.
            if arg > len(self.data) - self.pos:
                raise CBORDecodeError(f"array of {arg} items at offset {start} is longer "
                                      "than the input")
            return [self.item(depth + 1) for _ in range(arg)]
        if major == 5:
            if arg > (len(self.data) - self.pos) // 2:
                raise CBORDecodeError(f"map of {arg} pairs at offset {start} is longer "
                                      "than the input")
            out: dict[Any, Any] = {}
            for _ in range(arg):
                key_at = self.pos
                key = self.item(depth + 1)
                if type(key) not in (int, str, bytes):
                    raise CBORDecodeError(f"map key of type {type(key).__name__} at offset "
                                          f"{key_at} is not accepted")
                if key in out:
                    raise CBORDecodeError(f"duplicate map key {key!r} at offset {key_at}")
                out[key] = self.item(depth + 1)
            return out
        if major == 6:
            raise CBORDecodeError(f"tag {arg} at offset {start} is not accepted here")
        # Major type 7: simple values and floats.
        if info == 20:
            return False
        if info == 21:
            return True
        if info == 22:
            return None
        raise CBORDecodeError(f"simple value or float (info {info}) at offset {start} "
                              "is not accepted")


def decode(data: bytes, *, max_depth: int = 8, top_level_tags: frozenset[int] = frozenset()
           ) -> Any:
    """Decode exactly one CBOR item filling all of ``data``.

    A tag listed in ``top_level_tags`` may wrap the top-level item; it is returned as
    :class:`Tagged`. Raises :class:`CBORDecodeError` for anything outside the subset.
    """
    r = _Reader(bytes(data), max_depth)
    if not r.data:
        raise CBORDecodeError("empty input")
    tag: int | None = None
    if r.data[0] >> 5 == 6:
        _, _, tag = r.head()
        if tag not in top_level_tags:
            raise CBORDecodeError(f"tag {tag} at offset 0 is not accepted")
    value = r.item(1)
    if r.pos != len(r.data):
        raise CBORDecodeError(f"{len(r.data) - r.pos} trailing bytes after the CBOR item")
    return Tagged(tag, value) if tag is not None else value
