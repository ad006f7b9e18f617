"""The JSON store (and the binary store, which is a JSON envelope), as sops 3.11 writes them.

Key order and duplicate keys are kept. Every number is a float, as sops 3.11 decodes JSON
(3.13.2 later keeps integers); it prints without a fraction when it has none. Strings are
escaped as Go's ``json.Marshal`` does (HTML characters as ``\\u003c``...).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from sops_enclave.errors import ErrorDumpingTree
from sops_enclave.goformat import format_json_float
from sops_enclave.tree import Branch, Comment, Timestamp, max_depth

#: Documents nested deeper than this are refused (emission and the tree walks recurse).
MAX_DEPTH = 256

__all__ = ["load_plain", "load_encrypted", "emit_plain", "emit_encrypted", "emit_value",
           "JSONError", "encode_string"]


class JSONError(ValueError):
    """Input sops would refuse; the message follows Go's wording."""


_ESC_RE = re.compile("[\x00-\x1f\"\\\\<>&\u2028\u2029\ud800-\udfff]")
_ESC = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
        "<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _esc(m: re.Match[str]) -> str:
    c = m.group(0)
    r = _ESC.get(c)
    if r is not None:
        return r
    o = ord(c)
    if 0xD800 <= o <= 0xDFFF:
        # an invalid byte (a surrogateescape'd one, or a lone surrogate): Go writes the
        # six-character escape \ufffd for each
        return "\\ufffd"
    return "\\u%04x" % o


def encode_string(s: str) -> str:
    """Go ``json.Marshal`` of a string (each invalid UTF-8 byte becomes ``\\ufffd``)."""
    return '"' + _ESC_RE.sub(_esc, s) + '"'


def _scalar(v: Any) -> str:
    if isinstance(v, str):
        return encode_string(v)
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        try:
            return format_json_float(v)
        except ValueError as e:
            raise ErrorDumpingTree(f"Error dumping file: Error marshaling to json: Error encoding "
                                   f"value : {e}") from None
    if isinstance(v, Timestamp):
        return '"' + v.text + '"'
    if isinstance(v, bytes):
        import base64
        return '"' + base64.b64encode(v).decode() + '"'
    raise ErrorDumpingTree(f"Error dumping file: cannot encode {type(v).__name__} as JSON")


def _encode(v: Any, indent: str, depth: int, out: list[str]) -> None:
    if isinstance(v, Branch):
        items = [(k, x) for k, x in v if not isinstance(k, Comment)]
        if not items:
            out.append("{}")
            return
        nl = "\n" + indent * (depth + 1)
        out.append("{")
        first = True
        for k, x in items:
            out.append(nl if first else "," + nl)
            first = False
            out.append(encode_string(k if isinstance(k, str) else str(k)))
            out.append(": ")
            _encode(x, indent, depth + 1, out)
        out.append("\n" + indent * depth + "}")
    elif isinstance(v, list):
        items = [x for x in v if not isinstance(x, Comment)]
        if not items:
            out.append("[]")
            return
        nl = "\n" + indent * (depth + 1)
        out.append("[")
        first = True
        for x in items:
            out.append(nl if first else "," + nl)
            first = False
            _encode(x, indent, depth + 1, out)
        out.append("\n" + indent * depth + "]")
    else:
        out.append(_scalar(v))


def _indent_str(indent: int) -> str:
    if indent < -1:
        raise ErrorDumpingTree("Error dumping file: JSON Indentation parameter smaller than -1 is "
                               "not accepted")
    return "\t" if indent == -1 else " " * indent


def _bad_const(name: str) -> Any:
    raise JSONError(f"invalid character '{name[0]}' looking for beginning of value")


def _float(s: str) -> float:
    v = float(s)
    if math.isinf(v):
        raise JSONError(f"json: cannot unmarshal number {s} into Go value of type float64")
    return v


_DECODER = json.JSONDecoder(object_pairs_hook=Branch, parse_int=_float, parse_float=_float,
                            parse_constant=_bad_const)


def _go_json_message(e: json.JSONDecodeError, text: str) -> str:
    if e.pos >= len(text.rstrip()):
        return "unexpected end of JSON input"
    c = text[e.pos]
    return f"invalid character '{c}' looking for beginning of value"


def _load(data: bytes) -> Branch:
    text = data.decode("utf-8", "replace")
    i = 0
    n = len(text)
    while i < n and text[i] in " \t\r\n":
        i += 1
    if i >= n:
        raise JSONError("EOF")
    c = text[i]
    if c != "{":
        if c == "[":
            raise JSONError("Expected JSON object start, got delimiter [ instead")
        try:
            v, _ = _DECODER.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise JSONError(_go_json_message(e, text)) from None
        raise JSONError(f"Expected JSON object start, got {_go_repr(v)} instead")
    doc: Branch  # the text starts with "{": object_pairs_hook makes it a Branch
    try:
        doc, _ = _DECODER.raw_decode(text, i)
    except json.JSONDecodeError as e:
        raise JSONError(_go_json_message(e, text)) from None
    except RecursionError:
        raise JSONError("exceeded max depth") from None
    if max_depth(doc, MAX_DEPTH) > MAX_DEPTH:
        raise JSONError(f"nesting deeper than {MAX_DEPTH} levels")
    return doc


def _go_repr(v: Any) -> str:
    if isinstance(v, str):
        return f'"{v}" of type string'
    if isinstance(v, bool):
        return f"{'true' if v else 'false'} of type bool"
    if isinstance(v, float):
        return f"{format_json_float(v)} of type float64"
    if v is None:
        return "<nil> of type <nil>"
    return f"{v!r}"


def load_plain(data: bytes) -> list[Branch]:
    """Plaintext JSON -> one branch (only the first top-level value is read, as sops)."""
    try:
        return [_load(data)]
    except JSONError as e:
        raise JSONError(f"Could not unmarshal input data: {e}") from None


def load_encrypted(data: bytes) -> tuple[list[Branch], Any]:
    if not data.strip(b" \t\r\n"):  # sops reads the metadata with json.Unmarshal first
        raise JSONError("unexpected end of JSON input")
    br = _load(data)
    meta = None
    found = False
    keep = Branch()
    for k, v in br:
        if k == "sops":
            meta, found = v, True
            continue
        keep.append((k, v))
    return [keep], (meta if found else None)


def emit_plain(branches: list[Branch], indent: int = -1) -> bytes:
    out: list[str] = []
    _encode(branches[0], _indent_str(indent), 0, out)
    out.append("\n")
    return "".join(out).encode("utf-8", "surrogateescape")


def emit_encrypted(branches: list[Branch], metadata: Branch, indent: int = -1) -> bytes:
    br = Branch(branches[0])
    br.append(("sops", metadata))
    return emit_plain([br], indent)


def emit_value(value: Any, indent: int = -1) -> bytes:
    out: list[str] = []
    _encode(value, _indent_str(indent), 0, out)
    return "".join(out).encode("utf-8", "surrogateescape")
