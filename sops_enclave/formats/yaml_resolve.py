"""go-yaml v3's scalar resolution (what an untagged plain scalar means), reproduced.

YAML 1.2-ish with go-yaml's quirks: only ``true/True/TRUE`` and ``false/...`` are booleans,
``yes``/``no`` are strings, ``017`` is octal 15, ``08`` is the float 8, unquoted dates are
timestamps, and integers that only fit uint64 become :class:`GoUint` (which sops cannot walk).
"""

from __future__ import annotations

import calendar
import math
import re

from sops_enclave.tree import Timestamp

__all__ = ["resolve_plain", "GoUint", "parse_go_int", "timestamp_text"]

_INT64_MIN, _INT64_MAX, _UINT64_MAX = -(1 << 63), (1 << 63) - 1, (1 << 64) - 1
_FLOAT_RE = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_MAP = {
    "true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False,
    "": None, "~": None, "null": None, "Null": None, "NULL": None,
    ".nan": float("nan"), ".NaN": float("nan"), ".NAN": float("nan"),
    ".inf": float("inf"), ".Inf": float("inf"), ".INF": float("inf"),
    "+.inf": float("inf"), "+.Inf": float("inf"), "+.INF": float("inf"),
    "-.inf": float("-inf"), "-.Inf": float("-inf"), "-.INF": float("-inf"),
}
_TS_RE = re.compile(
    r"^(\d{4})-(\d{1,2})-(\d{1,2})"
    r"(?:(?:([Tt])(\d{1,2}):(\d{1,2}):(\d{1,2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2}))"
    r"|(?: (\d{1,2}):(\d{1,2}):(\d{1,2})(?:\.(\d+))?))?$")


class GoUint(int):
    """An integer go-yaml decodes as uint64; sops' tree walk rejects it."""


def _digits_ok(s: str, base: int) -> bool:
    allowed = "0123456789abcdef"[:base]
    return bool(s) and all(c in allowed for c in s.lower())


def parse_go_int(s: str) -> int | None:
    """Go ``strconv.ParseInt(s, 0, 64)``/``ParseUint`` value, or None when neither parses."""
    neg = False
    body = s
    if body[:1] in "+-":
        neg = body[0] == "-"
        body = body[1:]
    low = body.lower()
    if low.startswith("0x"):
        base, digits = 16, body[2:]
    elif low.startswith("0o"):
        base, digits = 8, body[2:]
    elif low.startswith("0b"):
        base, digits = 2, body[2:]
    elif len(body) > 1 and body[0] == "0":
        base, digits = 8, body[1:]
    else:
        base, digits = 10, body
    if not _digits_ok(digits, base) or len(digits.lstrip("0")) > 64:
        return None  # longer than any 64-bit value: Go's ParseInt/ParseUint fail too
    v = int(digits, base)
    if neg:
        v = -v
        return v if v >= _INT64_MIN else None
    if v <= _INT64_MAX:
        return v
    if v <= _UINT64_MAX and s[0] != "+":
        return GoUint(v)
    if v <= _UINT64_MAX:
        return None
    return None


def timestamp_text(s: str) -> str | None:
    """RFC 3339 Nano text of a YAML timestamp as go-yaml accepts it, else None."""
    m = _TS_RE.match(s)
    if not m:
        return None
    y, mo, d = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if not (1 <= mo <= 12 and 1 <= d <= calendar.monthrange(y, mo)[1]):
        return None
    if m.group(4):
        h, mi, se, frac, zone = int(m.group(5)), int(m.group(6)), int(m.group(7)), m.group(8), m.group(9)
    elif m.group(10):
        h, mi, se, frac, zone = int(m.group(10)), int(m.group(11)), int(m.group(12)), m.group(13), "Z"
    else:
        h = mi = se = 0
        frac, zone = None, "Z"
    if h > 23 or mi > 59 or se > 59:
        return None
    out = f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{se:02d}"
    if frac:
        frac = frac[:9].rstrip("0")
        if frac:
            out += "." + frac
    if zone in ("Z", "z") or zone in ("+00:00", "-00:00"):
        out += "Z"
    else:
        out += zone
    return out


def resolve_plain(s: str) -> object:
    """The value of an untagged plain scalar."""
    if s in _MAP:
        return _MAP[s]
    if s == "<<":
        return s
    c = s[:1]
    if c == ".":
        try:
            return float(s)
        except ValueError:
            return s
    if c and (c in "+-" or c.isdigit()) and c.isascii():
        if c.isdigit() and len(s) > 4 and s[4] == "-":
            ts = timestamp_text(s)
            if ts is not None:
                return Timestamp(ts)
        plain = s.replace("_", "")
        if not plain or not plain.isascii():
            return s
        v = parse_go_int(plain)
        if v is not None:
            return v
        if _FLOAT_RE.match(plain):
            try:
                f = float(plain)
            except ValueError:
                return s
            # Go's ParseFloat reports out-of-range values as an error: they stay strings.
            return s if math.isinf(f) else f
    return s
