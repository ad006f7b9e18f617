"""The dotenv store, byte-compatible with sops 3.11.

Parsing is deliberately naive (as in sops): the input is split on ``\\n`` only, empty lines are
dropped, a line starting with ``#`` is a comment (its text is the rest of the line), and every
other line is ``key=value`` split at the first ``=``. Nothing is trimmed, quotes and ``export``
are kept literally, a ``\\r`` from CRLF input stays in the value. The only escape is the two
characters ``\\n``, which become a newline (and go back to ``\\n`` on output).

Metadata is flattened (``sops_`` prefix, ``__map_``/``__list_N`` separators) and written after
the data, sorted by byte order.
"""

from __future__ import annotations

from typing import Any

from sops_enclave.errors import ErrorDumpingTree
from sops_enclave.formats.flatten import flat_metadata, unflatten
from sops_enclave.goformat import val_to_string
from sops_enclave.tree import Branch, Comment, Timestamp

__all__ = ["SOPS_PREFIX", "load_plain", "load_encrypted", "emit_plain", "emit_encrypted",
           "emit_value", "go_type_name"]

SOPS_PREFIX = "sops_"


def _s(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def load_plain(data: bytes) -> list[Branch]:
    """Parse a dotenv file into one branch (comments are ``(Comment(text), None)`` items)."""
    branch = Branch()
    for line in data.split(b"\n"):
        if not line:
            continue
        if line[:1] == b"#":
            branch.append((Comment(_s(line[1:])), None))
            continue
        pos = line.find(b"=")
        if pos < 0:
            raise ValueError(f"invalid dotenv input line: {_s(line)}")
        branch.append((_s(line[:pos]), _s(line[pos + 1:]).replace("\\n", "\n")))
    return [branch]


def load_encrypted(data: bytes) -> tuple[list[Branch], Branch | None]:
    """Split off the ``sops_*`` items (wherever they are) and unflatten them.

    As in sops, a repeated metadata key keeps its last value. Values stay strings.
    Returns ``None`` for the metadata when the file has no ``sops_`` key at all.
    """
    branch = load_plain(data)[0]
    rest = Branch()
    md: dict[str, Any] = {}
    for k, v in branch:
        if isinstance(k, str) and k.startswith(SOPS_PREFIX):
            md[k[len(SOPS_PREFIX):]] = v
        else:
            rest.append((k, v))
    if not md:
        return [rest], None
    return [rest], unflatten(md.items())


def _is_complex(v: Any) -> bool:
    return isinstance(v, (list, Branch))


def _key_text(k: Any) -> str:
    if isinstance(k, Comment):
        return "{" + k.value + "}"
    return k if isinstance(k, str) else val_to_string(k)


def emit_plain(branches: list[Branch]) -> bytes:
    """``key=value`` lines (newlines in string values escaped as ``\\n``), ``#text`` comments."""
    if not branches:
        return b""
    out: list[str] = []
    for k, v in branches[0]:
        if _is_complex(v):
            raise ErrorDumpingTree("Error dumping file: cannot use complex value in dotenv file; "
                                   f"offending key {_key_text(k)}")
        if isinstance(k, Comment):
            out.append(f"#{k.value}\n")
            continue
        value = v.replace("\n", "\\n") if isinstance(v, str) else val_to_string(v)
        out.append(f"{_key_text(k)}={value}\n")
    return "".join(out).encode("utf-8", "surrogateescape")


def emit_encrypted(branches: list[Branch], metadata: Branch) -> bytes:
    """The data lines, then the ``sops_*`` metadata lines sorted by byte order."""
    br = Branch(branches[0] if branches else ())
    br.extend(flat_metadata(metadata, SOPS_PREFIX))
    return emit_plain([br])


def go_type_name(v: Any) -> str:
    """Go's ``%T`` of the value sops would hold for ``v``."""
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, Timestamp):
        return "time.Time"
    if isinstance(v, (bytes, bytearray)):
        return "[]uint8"
    if isinstance(v, Branch):
        return "sops.TreeBranch"
    if isinstance(v, Comment):
        return "sops.Comment"
    if isinstance(v, list):
        return "[]interface {}"
    return type(v).__name__


def emit_value(value: Any) -> bytes:
    """``--extract`` of a single value: strings only (raw bytes, no newline)."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    raise ErrorDumpingTree("Error dumping tree: the dotenv store only supports emitting strings, "
                           f"got {go_type_name(value)}")
