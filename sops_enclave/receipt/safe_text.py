"""Printing strings that come from a receipt: control characters become visible escapes.

A receipt is attacker-controlled until its signature is checked, and even a genuine one
carries strings the host chose (the repository name). Nothing from it reaches a terminal
as is: C0 and C1 controls, DEL, Unicode bidi controls (U+202A-U+202E, U+2066-U+2069, the
marks U+200E, U+200F, U+061C), line/paragraph separators and lone surrogates are written
as ``\\x1b`` or ``\\u202e`` style escapes, and a backslash as ``\\\\`` so an escape in the
output cannot be mistaken for one in the data::

    escape("ok\\x1b[8m")   ->  'ok\\\\x1b[8m'   (prints as  ok\\x1b[8m )
"""

from __future__ import annotations

import re

__all__ = ["escape", "has_unsafe"]

_UNSAFE = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                     "\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _one(m: re.Match[str]) -> str:
    c = m.group()
    if c == "\\":
        return "\\\\"
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}"


def escape(text: str) -> str:
    """``text`` with every unsafe character (and backslash) written as an escape."""
    return _UNSAFE.sub(_one, text)


def has_unsafe(text: str) -> bool:
    """Whether ``text`` holds a character :func:`escape` would rewrite, other than ``\\``."""
    return any(c != "\\" for c in _UNSAFE.findall(text))
