"""Go's number and value formatting, reproduced exactly (pure functions).

sops prints numbers through four different Go formatters: ``strconv.FormatFloat(f, 'f', -1)``
for the cipher and MAC bytes, ``'g'`` in YAML, encoding/json's rule in JSON, and ``'G'`` (via
``ValToString``) in dotenv, INI and exec-env. Python's ``repr`` gives the same shortest
round-trip digits as Go, so each formatter is built from those digits.
"""

from __future__ import annotations

import math

from sops_enclave.tree import Timestamp

__all__ = ["format_f", "format_g", "format_json_float", "val_to_string", "plain_bytes", "go_quote"]


def _digits(f: float) -> tuple[str, int]:
    """Shortest digits and the decimal point position: value = 0.DIGITS * 10**dp."""
    r = repr(abs(f))
    if "e" in r:
        mant, exp_s = r.split("e")
        exp = int(exp_s)
    else:
        mant, exp = r, 0
    if "." in mant:
        ip, fp = mant.split(".")
    else:
        ip, fp = mant, ""
    if fp == "0":
        fp = ""
    digits = (ip + fp).lstrip("0")
    lead = len(ip + fp) - len((ip + fp).lstrip("0"))
    dp = len(ip) + exp - lead
    digits = digits.rstrip("0")
    if not digits:
        return "0", 1
    return digits, dp


def _special(f: float) -> str | None:
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    return None


def format_f(f: float) -> str:
    """Go ``strconv.FormatFloat(f, 'f', -1, 64)``."""
    s = _special(f)
    if s:
        return s
    sign = "-" if math.copysign(1.0, f) < 0 else ""
    if f == 0:
        return sign + "0"
    d, dp = _digits(f)
    if dp <= 0:
        return sign + "0." + "0" * (-dp) + d
    if dp >= len(d):
        return sign + d + "0" * (dp - len(d))
    return sign + d[:dp] + "." + d[dp:]


def _format_e(sign: str, d: str, dp: int, e: str) -> str:
    exp = dp - 1
    mant = d[0] + ("." + d[1:] if len(d) > 1 else "")
    es = "-" if exp < 0 else "+"
    ev = abs(exp)
    return f"{sign}{mant}{e}{es}{ev:02d}"


def format_g(f: float, upper: bool = False) -> str:
    """Go ``strconv.FormatFloat(f, 'g'|'G', -1, 64)``: exponent form when exp < -4 or >= 6."""
    s = _special(f)
    if s:
        return s
    sign = "-" if math.copysign(1.0, f) < 0 else ""
    if f == 0:
        return sign + "0"
    d, dp = _digits(f)
    # Go uses precision 6 for the %e/%f decision when formatting the shortest digits.
    if dp - 1 < -4 or dp - 1 >= 6:
        return _format_e(sign, d, dp, "E" if upper else "e")
    return format_f(f)


def format_json_float(f: float) -> str:
    """Go encoding/json float64: 'f' unless |f| < 1e-6 or >= 1e21, then 'e' with e-7 not e-07."""
    if math.isnan(f) or math.isinf(f):
        raise ValueError(f"json: unsupported value: {format_f(f)}")
    a = abs(f)
    if a != 0 and (a < 1e-6 or a >= 1e21):
        sign = "-" if f < 0 else ""
        d, dp = _digits(f)
        s = _format_e(sign, d, dp, "e")
        if len(s) >= 4 and s[-4] == "e" and s[-3] == "-" and s[-2] == "0":
            s = s[:-2] + s[-1]
        return s
    return format_f(f)


def val_to_string(v: object) -> str:
    """sops ``stores.ValToString`` (dotenv, INI and exec-env values)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        r = format_g(v, upper=True)
        if "." not in r and "E" not in r and not math.isinf(v) and not math.isnan(v):
            # strconv.FormatFloat(v, 'f', 1, 64)
            r = f"{v:.1f}"
        return r
    if isinstance(v, Timestamp):
        return _rfc3339_seconds(v.text)
    if v is None:
        return "<nil>"
    if isinstance(v, bytes):
        return v.decode("utf-8", "surrogateescape")
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return v
    raise TypeError(f"cannot format {type(v).__name__} as a flat value")


def _rfc3339_seconds(text: str) -> str:
    """Drop the fractional seconds of an RFC 3339 Nano string (Go ``time.RFC3339``)."""
    t = text.find("T")
    dot = text.find(".", t)
    if dot < 0:
        return text
    end = dot + 1
    while end < len(text) and text[end].isdigit():
        end += 1
    return text[:dot] + text[end:]


def plain_bytes(v: object) -> tuple[bytes, str]:
    """The bytes sops encrypts (and hashes into the MAC) for a scalar, and its type tag."""
    if isinstance(v, str):
        return v.encode("utf-8", "surrogateescape"), "str"
    if isinstance(v, bool):
        return (b"True" if v else b"False"), "bool"
    if isinstance(v, int):
        return str(v).encode(), "int"
    if isinstance(v, float):
        return format_f(v).encode(), "float"
    if isinstance(v, Timestamp):
        return v.text.encode(), "time"
    if isinstance(v, bytes):
        return v, "bytes"
    raise TypeError(f"Cannot walk value, unknown type: {type(v).__name__}")


def go_quote(s: str) -> str:
    """Go's ``strconv.Quote`` (``%q``), near enough for messages."""
    out = ['"']
    esc = {'"': '\\"', "\\": "\\\\", "\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n",
           "\r": "\\r", "\t": "\\t", "\v": "\\v"}
    for ch in s:
        if ch in esc:
            out.append(esc[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80 or 0xDC80 <= ord(ch) <= 0xDCFF:
            out.append("\\x%02x" % (ord(ch) & 0xFF))
        elif ord(ch) < 0x10000:
            out.append("\\u%04x" % ord(ch))
        else:
            out.append("\\U%08x" % ord(ch))
    out.append('"')
    return "".join(out)
