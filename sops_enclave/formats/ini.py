"""The INI store, byte-compatible with sops 3.11 (gopkg.in/ini.v1 1.67.1, non-unique sections).

The parser and writer follow go-ini as sops configures it, not Python's ``configparser``:

* a file always has a ``DEFAULT`` section first (keys before the first header live there);
  ``[x]`` headers are not trimmed; a repeated header starts a second section of that name;
* ``=`` or ``:`` separates key and value, both trimmed (Go ``unicode.IsSpace``);
  ``-`` as a key name becomes ``#1``, ``#2``... (go-ini's auto-increment keys);
* an unquoted value loses everything from the first ``#`` or ``;`` (the inline comment, which
  becomes the key's comment), then one surrounding pair of ``"`` or ``'``; a value starting with
  ``\"\"\"`` or a backtick runs to the last such quote and may span lines (a closing line that
  ends in ``\\`` does not close it); a trailing ``\\`` on an unquoted value joins the next line
  (leading and trailing spaces of that line dropped, no comment or quote handling);
* a repeated key keeps the last value (and the comment of its last occurrence) at the first
  key's position; comments after the last key of the file are dropped.

In the tree, a section comment is the first item of its section; a key's comment is a comment
item right *after* the key (written back above it). The leading run of ``;``/``#`` and spaces
is removed from the first comment line. All values are strings.

The writer aligns ``=`` within a section (byte lengths), separates sections with one blank
line, writes a first ``DEFAULT`` section without header (and not at all when it has no keys),
and quotes values with ``\"\"\"`` (newline or backtick), backticks (``#``/``;``) or ``"``
(leading/trailing space).
"""

from __future__ import annotations

from typing import Any

from sops_enclave.errors import ErrorDumpingTree
from sops_enclave.formats.flatten import flat_metadata, go_quote, unflatten
from sops_enclave.goformat import format_g, format_json_float, val_to_string
from sops_enclave.tree import Branch, Comment, Timestamp

__all__ = ["DEFAULT_SECTION", "SOPS_SECTION", "load_plain", "load_encrypted", "emit_plain",
           "emit_encrypted", "emit_value", "parse_sections", "go_trim_space", "go_v"]

DEFAULT_SECTION = "DEFAULT"
SOPS_SECTION = "sops"

#: Go ``unicode.IsSpace``.
_GO_SPACE = ("\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
             "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
_DELIMITERS = "=:"


def go_trim_space(s: str) -> str:
    """Go ``strings.TrimSpace``."""
    return s.strip(_GO_SPACE)


def _blen(s: str) -> int:
    """Go ``len(s)``: the byte length."""
    return len(s.encode("utf-8", "surrogateescape"))


def _index_any(s: str, chars: str) -> int:
    best = -1
    for c in chars:
        i = s.find(c)
        if i >= 0 and (best < 0 or i < best):
            best = i
    return best


# ------------------------------------------------------------------ go-ini parser

class _Key:
    __slots__ = ("name", "value", "comment")

    def __init__(self, name: str, value: str):
        self.name = name
        self.value = value
        self.comment = ""


class _Section:
    __slots__ = ("name", "comment", "keys", "key_list")

    def __init__(self, name: str):
        self.name = name
        self.comment = ""
        self.keys: dict[str, _Key] = {}
        self.key_list: list[str] = []

    def new_key(self, name: str, value: str) -> _Key:
        if not name:
            raise ValueError("error creating new key: empty key name")
        key = self.keys.get(name)
        if key is not None:
            key.value = value
            return key
        key = self.keys[name] = _Key(name, value)
        self.key_list.append(name)
        return key


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.eof = False
        self.comment: list[str] = []

    def read_line(self) -> str:
        """bufio ``ReadBytes('\\n')``: the line with its newline; sets ``eof`` on the last one."""
        i = self.text.find("\n", self.pos)
        if i < 0:
            line = self.text[self.pos:]
            self.pos = len(self.text)
            self.eof = True
            return line
        line = self.text[self.pos:i + 1]
        self.pos = i + 1
        return line

    def take_comment(self) -> str:
        c = go_trim_space("".join(self.comment))
        self.comment.clear()
        return c

    def read_multilines(self, line: str, val: str, quote: str) -> str:
        while True:
            nxt = self.read_line()
            pos = nxt.rfind(quote)
            if pos > -1:
                rest = go_trim_space(nxt[pos + len(quote):])
                if rest.endswith("\\"):
                    # go-ini 1.67.1: a backslash after the closing quote continues the value
                    # (the whole line, quote included, is kept and the search goes on)
                    val += nxt
                    continue
                val += nxt[:pos]
                i = _index_any(nxt[pos:], "#;")
                if i >= 0:
                    self.comment.append(go_trim_space(nxt[pos + i:]))
                return val
            val += nxt
            if self.eof:
                raise ValueError(f"missing closing key quote from {go_quote(line)} to "
                                 f"{go_quote(nxt)}")

    def read_continuation_lines(self, val: str) -> str:
        while True:
            nxt = go_trim_space(self.read_line())
            if not nxt:
                return val
            val += nxt
            if val[-1] != "\\":
                return val
            val = val[:-1]

    def read_value(self, raw: str) -> str:
        line = raw.lstrip(_GO_SPACE)
        if not line:
            return ""
        quote = ""
        if len(line) > 3 and line[:3] == '"""':
            quote = '"""'
        elif line[0] == "`":
            quote = "`"
        if quote:
            start = len(quote)
            pos = line.rfind(quote, start)
            if pos == -1:
                return self.read_multilines(line, line[start:], quote)
            return line[start:pos]
        line = go_trim_space(line)
        if line[-1] == "\\":
            return self.read_continuation_lines(line[:-1])
        i = _index_any(line, "#;")
        if i > -1:
            self.comment.append(line[i:])
            line = go_trim_space(line[:i])
        if _has_surrounded_quote(line, "'") or _has_surrounded_quote(line, '"'):
            line = line[1:-1]
        return line

    def parse(self) -> list[_Section]:
        sections = [_Section(DEFAULT_SECTION)]
        section = sections[0]
        count = 1
        while not self.eof:
            line = self.read_line().lstrip(_GO_SPACE)
            if not line:
                continue
            if line[0] in "#;":
                self.comment.append(line)
                continue
            if line[0] == "[":
                close = line.rfind("]")
                if close == -1:
                    raise ValueError(f"unclosed section: {line}")
                name = line[1:close]
                if not name:
                    raise ValueError("empty section name")
                section = _Section(name)
                sections.append(section)
                i = _index_any(line[close + 1:], "#;")
                if i >= 0:
                    self.comment.append(line[close + 1 + i:])
                section.comment = self.take_comment()
                count = 1
                continue
            kname, offset = _read_key_name(line)
            if kname == "-":
                kname = f"#{count}"
                count += 1
            value = self.read_value(line[offset:])
            key = section.new_key(kname, value)
            key.comment = self.take_comment()
        return sections


def _has_surrounded_quote(s: str, q: str) -> bool:
    return len(s) >= 2 and s[0] == q and s[-1] == q and s.find(q, 1) == len(s) - 1


def _read_key_name(line: str) -> tuple[str, int]:
    quote = ""
    if line[0] == '"':
        quote = '"""' if _blen(line) > 6 and line[:3] == '"""' else '"'
    elif line[0] == "`":
        quote = "`"
    if quote:
        start = len(quote)
        pos = line.find(quote, start)
        if pos == -1:
            raise ValueError(f"missing closing key quote: {line}")
        i = _index_any(line[pos + start:], _DELIMITERS)
        if i < 0:
            raise ValueError(f"key-value delimiter not found: {line}")
        return go_trim_space(line[start:pos]), pos + i + start + 1
    end = _index_any(line, _DELIMITERS)
    if end < 0:
        raise ValueError(f"key-value delimiter not found: {line}")
    if end == 0:
        raise ValueError(f"empty key name: {line}")
    return go_trim_space(line[:end]), end + 1


def _strip_bom(data: bytes) -> bytes:
    if data[:2] in (b"\xfe\xff", b"\xff\xfe"):
        return data[2:]
    if data[:3] == b"\xef\xbb\xbf":
        return data[3:]
    return data


def parse_sections(data: bytes) -> list[_Section]:
    """go-ini's view of the file (raises :class:`ValueError` with go-ini's message)."""
    text = _strip_bom(data).decode("utf-8", "surrogateescape")
    return _Parser(text).parse()


def _strip_comment_char(c: str) -> str:
    if c.startswith(";"):
        return c.lstrip("; ")
    if c.startswith("#"):
        return c.lstrip("# ")
    return c


def _to_branch(sections: list[_Section]) -> Branch:
    branch = Branch()
    for sec in sections:
        items = Branch()
        if sec.comment:
            items.append((Comment(_strip_comment_char(sec.comment)), None))
        for name in sec.key_list:
            key = sec.keys[name]
            items.append((name, key.value))
            if key.comment:
                items.append((Comment(_strip_comment_char(key.comment)), None))
        branch.append((sec.name, items))
    return branch


def load_plain(data: bytes) -> list[Branch]:
    """One branch of ``(section, Branch)`` items, ``DEFAULT`` first."""
    try:
        sections = parse_sections(data)
    except ValueError as e:
        raise ValueError(f"Could not unmarshal input data: {e}") from None
    return [_to_branch(sections)]


def load_encrypted(data: bytes) -> tuple[list[Branch], Branch | None]:
    """The data sections without ``[sops]``, and the unflattened metadata of the first
    ``[sops]`` section (``None`` when there is none). Values stay strings; ``\\n`` becomes a
    newline and ``\"\"\"`` multi-line values are accepted."""
    sections = parse_sections(data)
    md_sec = next((s for s in sections if s.name == SOPS_SECTION), None)
    data_sections = [s for s in sections if s.name != SOPS_SECTION]
    branch = _to_branch(data_sections)
    if md_sec is None:
        return [branch], None
    pairs = [(n, md_sec.keys[n].value.replace("\\n", "\n")) for n in md_sec.key_list]
    return [branch], unflatten(pairs)


# ------------------------------------------------------------------ go-ini writer

def _go_upper(s: str) -> str:
    return "".join(c.upper() if len(c.upper()) == 1 else c for c in s)


def _go_time_string(text: str) -> str:
    """Go ``time.Time.String()`` of a parsed RFC 3339 timestamp (a fixed zone is printed by its
    offset; Go would print the local zone's name when the offset matches it)."""
    date, _, rest = text.partition("T")
    if rest.endswith(("Z", "z")):
        return f"{date} {rest[:-1]} +0000 UTC"
    for i in range(len(rest) - 1, -1, -1):
        if rest[i] in "+-":
            off = rest[i] + rest[i + 1:].replace(":", "")
            return f"{date} {rest[:i]} {off} {off}"
    return f"{date} {rest}"


def go_v(v: Any) -> str:
    """Go ``fmt.Sprintf("%v", v)`` of a tree value, as sops writes nested values into INI."""
    if isinstance(v, Branch):
        return "[" + " ".join("{" + go_v(k) + " " + go_v(x) + "}" for k, x in v) + "]"
    if isinstance(v, list):
        return "[" + " ".join(go_v(x) for x in v) + "]"
    if isinstance(v, Comment):
        return "{" + v.value + "}"
    if isinstance(v, float):
        return format_g(v)
    if isinstance(v, Timestamp):
        return _go_time_string(v.text)
    if isinstance(v, (bytes, bytearray)):
        return "[" + " ".join(str(b) for b in bytes(v)) + "]"
    return val_to_string(v)


def _dump_error(msg: str) -> ErrorDumpingTree:
    return ErrorDumpingTree(f"Error dumping file: Error marshaling to ini: {msg}")


def _build_sections(branches: list[Branch]) -> list[_Section]:
    sections: list[_Section] = []
    for branch in branches:
        for name, value in branch:
            if isinstance(name, Comment):
                continue
            if not isinstance(name, str):
                raise _dump_error(f"Error encoding section {val_to_string(name)}: section names "
                                  "must be strings")
            if not name:
                raise _dump_error("Error encoding section : empty section name")
            if not isinstance(value, Branch):
                raise _dump_error("Error encoding section: Section values should always be "
                                  "TreeBranches")
            sec = _Section(name)
            sections.append(sec)
            first = 0
            if value and isinstance(value[0][0], Comment):
                sec.comment = value[0][0].value
                first = 1
            last: _Key | None = None
            for k, v in value[first:]:
                if isinstance(k, Comment):
                    if last is not None:
                        last.comment = k.value
                    continue
                if not isinstance(k, str):
                    raise _dump_error(f"Error encoding key: key names must be strings, got "
                                      f"{val_to_string(k)}")
                try:
                    text = go_v(v) if isinstance(v, list) else val_to_string(v)
                    last = sec.new_key(k, text)
                except ValueError as e:
                    raise _dump_error(f"Error encoding key: {e}") from None
    return sections


def _comment_lines(comment: str, trim_plain: bool) -> list[str]:
    out = []
    for line in comment.split("\n"):
        if not line:
            # go-ini indexes line[0] here and panics; sops crashes.
            raise _dump_error("comment contains an empty line")
        if line[0] not in "#;":
            out.append("; " + (go_trim_space(line) if trim_plain else line))
        else:
            out.append(line[0] + " " + go_trim_space(line[1:]))
    return out


def _quote_key(k: str) -> str:
    if '"' in k or _index_any(k, _DELIMITERS) >= 0:
        return "`" + k + "`"
    if "`" in k:
        return '"""' + k + '"""'
    return k


def _quote_value(v: str) -> str:
    if "\n" in v or "`" in v:
        return '"""' + v + '"""'
    if "#" in v or ";" in v:
        return "`" + v + "`"
    if go_trim_space(v) != v:
        return '"' + v + '"'
    return v


def _write(sections: list[_Section]) -> str:
    out: list[str] = []
    last_idx = len(sections) - 1
    for i, sec in enumerate(sections):
        if sec.comment:
            out.extend(line + "\n" for line in _comment_lines(sec.comment, False))
        if i > 0 or _go_upper(sec.name) != DEFAULT_SECTION:
            out.append("[" + sec.name + "]\n")
        elif not sec.key_list:
            continue
        names = [_quote_key(k) for k in sec.key_list]
        align = max((_blen(n) for n in names), default=0)
        for name, qname in zip(sec.key_list, names):
            key = sec.keys[name]
            if key.comment:
                out.extend(line + "\n" for line in _comment_lines(key.comment, True))
            pad = " " * (align - _blen(qname))
            out.append(qname + pad + " = " + _quote_value(key.value) + "\n")
        if i != last_idx:
            out.append("\n")
    return "".join(out)


def emit_plain(branches: list[Branch]) -> bytes:
    """Write every section of every branch as go-ini does."""
    return _write(_build_sections(branches)).encode("utf-8", "surrogateescape")


def emit_encrypted(branches: list[Branch], metadata: Branch) -> bytes:
    """The data sections, then ``[sops]`` with the flattened metadata sorted by byte order
    (sops 3.11 writes them in random order; 3.13 sorts)."""
    md = Branch(flat_metadata(metadata, ""))
    return emit_plain(list(branches) + [Branch([(SOPS_SECTION, md)])])


# ------------------------------------------------------------------ --extract

def _json(v: Any) -> str:
    """Go ``json.Marshal`` (compact) of a tree value."""
    from sops_enclave.formats.json_store import encode_string

    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return format_json_float(v)
    if isinstance(v, str):
        return encode_string(v)
    if isinstance(v, Timestamp):
        return '"' + v.text + '"'
    if isinstance(v, (bytes, bytearray)):
        import base64
        return '"' + base64.b64encode(bytes(v)).decode() + '"'
    if isinstance(v, Comment):
        return '{"Value":' + encode_string(v.value) + "}"
    if isinstance(v, Branch):
        return "[" + ",".join('{"Key":' + _json(k) + ',"Value":' + _json(x) + "}"
                              for k, x in v) + "]"
    if isinstance(v, list):
        return "[" + ",".join(_json(x) for x in v) + "]"
    raise TypeError(f"json: unsupported type: {type(v).__name__}")


def emit_value(value: Any) -> bytes:
    """``--extract`` of a single value: a string as raw bytes, anything else as Go's
    ``json.Marshal`` (what sops' INI store does)."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    try:
        return _json(value).encode("utf-8", "surrogateescape")
    except (TypeError, ValueError) as e:
        raise ErrorDumpingTree(f"Error dumping tree: {e}") from None
