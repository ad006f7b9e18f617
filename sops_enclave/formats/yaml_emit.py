"""A YAML emitter that writes what go-yaml v3 (as driven by sops 3.11) writes, byte for byte.

It follows go-yaml's emitter state machine for the subset sops produces: block mappings and
sequences, ``{}``/``[]`` for empty collections, plain/single/double-quoted/literal scalars, and
head, foot and tail comments. The line width is unlimited, as sops sets it.
"""

from __future__ import annotations

import base64
import math
import re

from sops_enclave.goformat import format_g
from sops_enclave.tree import Branch, Comment, Timestamp

__all__ = ["emit_documents", "emit_single_value", "scalar_text"]

# Event kinds.
_SCALAR, _SEQ_START, _SEQ_END, _MAP_START, _MAP_END = range(5)
# Scalar styles.
_PLAIN, _SINGLE, _DOUBLE, _LITERAL = range(4)
# Emitter states that matter for indentation decisions.
_ST_SEQ_ITEM, _ST_MAP_KEY, _ST_MAP_VALUE, _ST_MAP_SIMPLE_VALUE, _ST_DOC_END = range(5)

_BREAKS = "\n\r\x85\u2028\u2029"


def _is_printable(c: str) -> bool:
    o = ord(c)
    if o == 0x0A or 0x20 <= o <= 0x7E:
        return True
    if 0xA0 <= o <= 0xD7FF:
        return True
    if 0xE000 <= o <= 0xFFFD:
        return o != 0xFEFF
    return False


class _Analysis:
    """Which scalar styles a string allows (go-yaml's analyzeScalar)."""

    __slots__ = ("multiline", "flow_plain", "block_plain", "single", "block")
    multiline: bool
    flow_plain: bool
    block_plain: bool
    single: bool
    block: bool


def _const_analysis(multiline: bool, flow_plain: bool, block_plain: bool, single: bool,
                    block: bool) -> _Analysis:
    a = _Analysis()
    a.multiline, a.flow_plain, a.block_plain, a.single, a.block = (
        multiline, flow_plain, block_plain, single, block)
    return a


# Fast paths: strings made only of these characters analyse the same way every time.
_ALL_ALLOWED = _const_analysis(False, True, True, True, True)
_BLOCK_PLAIN_ONLY = _const_analysis(False, False, True, True, True)
_SIMPLE_RE = re.compile(r"[A-Za-z0-9_/][A-Za-z0-9_./+=-]*(?: [A-Za-z0-9_./+=-]+)*")
_ENC_RE = re.compile(r"ENC\[AES256_GCM,data:[A-Za-z0-9+/=]*,iv:[A-Za-z0-9+/=]*,"
                     r"tag:[A-Za-z0-9+/=]*,type:[a-z]+\]")


def _analyze(value: str) -> _Analysis:
    if _SIMPLE_RE.fullmatch(value):
        return _ALL_ALLOWED
    if _ENC_RE.fullmatch(value):
        return _BLOCK_PLAIN_ONLY
    return _analyze_slow(value)


def _analyze_slow(value: str) -> _Analysis:
    a = _Analysis()
    if not value:
        a.multiline = False
        a.flow_plain = False
        a.block_plain = True
        a.single = True
        a.block = False
        return a
    block_ind = flow_ind = line_breaks = special = tabs = False
    leading_space = leading_break = trailing_space = trailing_break = False
    break_space = space_break = False
    prev_space = prev_break = False
    if value.startswith("---") or value.startswith("..."):
        block_ind = flow_ind = True
    preceded_ws = True
    n = len(value)
    for i, c in enumerate(value):
        followed_ws = i + 1 >= n or value[i + 1] in " \t" or value[i + 1] in _BREAKS
        if i == 0:
            if c in "#,[]{}&*!|>'\"%@`":
                flow_ind = block_ind = True
            elif c in "?:":
                flow_ind = True
                if followed_ws:
                    block_ind = True
            elif c == "-":
                if followed_ws:
                    flow_ind = block_ind = True
        else:
            if c in ",?[]{}":
                flow_ind = True
            elif c == ":":
                flow_ind = True
                if followed_ws:
                    block_ind = True
            elif c == "#":
                if preceded_ws:
                    flow_ind = block_ind = True
        if c == "\t":
            tabs = True
        elif not _is_printable(c):
            special = True
        if c == " ":
            if i == 0:
                leading_space = True
            if i == n - 1:
                trailing_space = True
            if prev_break:
                break_space = True
            prev_space, prev_break = True, False
        elif c in _BREAKS:
            line_breaks = True
            if i == 0:
                leading_break = True
            if i == n - 1:
                trailing_break = True
            if prev_space:
                space_break = True
            prev_space, prev_break = False, True
        else:
            prev_space = prev_break = False
        preceded_ws = c in " \t" or c in _BREAKS
    a.multiline = line_breaks
    a.flow_plain = a.block_plain = a.single = a.block = True
    if leading_space or leading_break or trailing_space or trailing_break:
        a.flow_plain = a.block_plain = False
    if trailing_space:
        a.block = False
    if break_space:
        a.flow_plain = a.block_plain = a.single = False
    if space_break or tabs or special:
        a.flow_plain = a.block_plain = a.single = False
    if space_break or special:
        a.block = False
    if line_breaks:
        a.flow_plain = a.block_plain = False
    if flow_ind:
        a.flow_plain = False
    if block_ind:
        a.block_plain = False
    return a


# ---------------------------------------------------------------- go-yaml v3 resolver (encode side)

_FLOAT_RE = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_BASE60_RE = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")
_OLD_BOOL = frozenset("y Y yes Yes YES on On ON n N no No NO off Off OFF".split())
_MAP_VALUES = frozenset(["true", "True", "TRUE", "false", "False", "FALSE", "", "~", "null", "Null",
                         "NULL", ".nan", ".NaN", ".NAN", ".inf", ".Inf", ".INF", "+.inf", "+.Inf",
                         "+.INF", "-.inf", "-.Inf", "-.INF", "<<"])


def resolves_to_str(s: str) -> bool:
    """True when go-yaml would read ``s`` written plain back as a string."""
    from sops_enclave.formats.yaml_resolve import resolve_plain

    if s in _MAP_VALUES:
        return False
    c = s[0]
    if c in "+-0123456789.":
        return isinstance(resolve_plain(s), str)
    return True


def _string_style(s: str) -> tuple[str, str, int]:
    """(value, tag, style) as go-yaml's ``stringv`` then ``node()`` choose them."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raw = s.encode("utf-8", "surrogateescape")
        enc = base64.b64encode(raw).decode()
        if len(enc) >= 70:
            enc = "".join(enc[i:i + 70] + "\n" for i in range(0, len(enc), 70))
        return enc, "!!binary", _LITERAL if "\n" in enc else _PLAIN
    if "\n" in s:
        return s, "", _LITERAL
    if resolves_to_str(s) and not (s in _OLD_BOOL or (s[:1] in "+-0123456789" and ":" in s
                                                      and _BASE60_RE.match(s))):
        return s, "", _PLAIN
    return s, "", _DOUBLE


def scalar_text(v: object) -> tuple[str, str, int]:
    """(text, tag, style) of a scalar tree value."""
    if isinstance(v, str):
        return _string_style(v)
    if v is None:
        return "null", "", _PLAIN
    if isinstance(v, bool):
        return ("true" if v else "false"), "", _PLAIN
    if isinstance(v, int):
        return str(v), "", _PLAIN
    if isinstance(v, float):
        if math.isnan(v):
            return ".nan", "", _PLAIN
        if math.isinf(v):
            return (".inf" if v > 0 else "-.inf"), "", _PLAIN
        return format_g(v), "", _PLAIN
    if isinstance(v, Timestamp):
        return v.text, "", _PLAIN
    if isinstance(v, bytes):
        return _string_style(v.decode("utf-8", "surrogateescape"))
    raise TypeError(f"cannot emit {type(v).__name__}")


# ---------------------------------------------------------------- events from the tree

class _Ev:
    __slots__ = ("kind", "value", "tag", "style", "head", "line", "foot", "tail")

    def __init__(self, kind: int, value: str = "", tag: str = "", style: int = _PLAIN):
        self.kind = kind
        self.value = value
        self.tag = tag
        self.style = style
        self.head = self.line = self.foot = self.tail = ""


def _comment_text(comments: list[str]) -> str:
    return "#" + "\n#".join(comments)


class _Node:
    """A tiny yaml.Node: what sops builds before go-yaml encodes it."""

    __slots__ = ("kind", "value", "tag", "style", "content", "head", "foot")

    def __init__(self, kind: int, value: str = "", tag: str = "", style: int = _PLAIN):
        self.kind = kind
        self.value = value
        self.tag = tag
        self.style = style
        self.content: list[_Node] = []
        self.head = ""
        self.foot = ""


def _add_head(node: _Node, comments: list[str]) -> None:
    if comments:
        c = _comment_text(comments)
        node.head = c + "\n" + node.head if node.head else c


def _add_foot(node: _Node, comments: list[str]) -> None:
    if comments:
        c = _comment_text(comments)
        node.foot = node.foot + "\n" + c if node.foot else c


def _to_node(v: object) -> _Node:
    if isinstance(v, Branch):
        n = _Node(_MAP_START)
        _append_branch(v, n)
        return n
    if isinstance(v, list):
        n = _Node(_SEQ_START)
        comments: list[str] = []
        beginning = True
        for item in v:
            if isinstance(item, Comment):
                comments.append(item.value)
                continue
            if beginning:
                _add_head(n, comments)
                comments = []
                beginning = False
            child = _to_node(item)
            _add_head(child, comments)
            comments = []
            n.content.append(child)
        if comments:
            if beginning:
                _add_head(n, comments)
            else:
                _add_foot(n.content[-1], comments)
        return n
    text, tag, style = scalar_text(v)
    return _Node(_SCALAR, text, tag, style)


def _append_branch(br: Branch, n: _Node) -> None:
    comments: list[str] = []
    beginning = True
    content = n.content
    for k, v in br:
        if isinstance(k, Comment):
            comments.append(k.value)
            continue
        if beginning:
            _add_head(n, comments)
            comments = []
            beginning = False
        if k == "<<":
            kn = _Node(_SCALAR, "<<", "!!merge", _PLAIN)
        else:
            text, tag, style = scalar_text(k)
            kn = _Node(_SCALAR, text, tag, style)
        _add_head(kn, comments)
        comments = []
        content.append(kn)
        content.append(_to_node(v))
    if comments:
        if beginning:
            _add_head(n, comments)
        else:
            _add_foot(content[-2], comments)


def _events(node: _Node, tail: str, out: list[_Ev]) -> None:
    kind = node.kind
    if kind == _SCALAR:
        e = _Ev(_SCALAR, node.value, node.tag, node.style)
        e.head, e.foot, e.tail = node.head, node.foot, tail
        out.append(e)
        return
    if kind == _SEQ_START:
        e = _Ev(_SEQ_START)
        e.head = node.head
        out.append(e)
        for c in node.content:
            _events(c, "", out)
        e = _Ev(_SEQ_END)
        e.foot = node.foot
        out.append(e)
        return
    e = _Ev(_MAP_START)
    e.tail, e.head = tail, node.head
    out.append(e)
    t = ""
    content = node.content
    for i in range(0, len(content), 2):
        k = content[i]
        foot = k.foot
        if foot:
            kc = _Node(k.kind, k.value, k.tag, k.style)
            kc.head = k.head
            k = kc
        _events(k, t, out)
        t = foot
        _events(content[i + 1], "", out)
    e = _Ev(_MAP_END)
    e.tail, e.foot = t, node.foot
    out.append(e)


# ---------------------------------------------------------------- the emitter

class _Emitter:
    def __init__(self, best_indent: int):
        self.best_indent = best_indent if 2 <= best_indent <= 9 else 2
        self.out: list[str] = []
        self.column = 0
        self.whitespace = True
        self.indention = True
        self.open_ended = False
        self.foot_indent = -1
        self.indent = -1
        self.indents: list[int] = []
        self.states: list[int] = []
        self.head = self.line = self.foot = self.tail = self.key_line = ""
        self.simple_key_context = False
        self.root_context = False
        self.events: list[_Ev] = []
        self.pos = 0
        self.flow_level = 0

    # -- low-level writing
    def put(self, s: str) -> None:
        self.out.append(s)
        self.column += len(s)

    def put_break(self) -> None:
        self.out.append("\n")
        self.column = 0
        self.indention = True

    def write_break_char(self, c: str) -> None:
        if c == "\n":
            self.put_break()
        else:
            self.out.append(c)
            self.column = 0
            self.indention = True

    def write_indent(self) -> None:
        indent = max(self.indent, 0)
        if not self.indention or self.column > indent or (self.column == indent and not self.whitespace):
            self.put_break()
        if self.foot_indent == indent:
            self.put_break()
        if self.column < indent:
            self.put(" " * (indent - self.column))
        self.whitespace = True
        self.foot_indent = -1

    def write_indicator(self, ind: str, need_ws: bool, is_ws: bool, is_indention: bool) -> None:
        if need_ws and not self.whitespace:
            self.put(" ")
        self.put(ind)
        self.whitespace = is_ws
        self.indention = self.indention and is_indention
        self.open_ended = False

    def write_comment(self, comment: str) -> None:
        breaks = False
        pound = False
        i = 0
        n = len(comment)
        while i < n:
            c = comment[i]
            if c in _BREAKS:
                self.write_break_char(c)
                breaks = True
                pound = False
                i += 1
            else:
                if breaks:
                    self.write_indent()
                if not pound:
                    if c != "#":
                        self.put("# ")
                    pound = True
                j = i
                while j < n and comment[j] not in _BREAKS:
                    j += 1
                self.put(comment[i:j])
                i = j
                self.indention = False
                breaks = False
        if not breaks:
            self.put_break()
        self.whitespace = True

    def process_head_comment(self) -> None:
        if self.tail:
            self.write_indent()
            self.write_comment(self.tail)
            self.tail = ""
            self.foot_indent = max(self.indent, 0)
        if not self.head:
            return
        self.write_indent()
        self.write_comment(self.head)
        self.head = ""

    def process_line_comment(self) -> None:
        if not self.line:
            return
        if not self.whitespace:
            self.put(" ")
        self.write_comment(self.line)
        self.line = ""

    def process_foot_comment(self) -> None:
        if not self.foot:
            return
        self.write_indent()
        self.write_comment(self.foot)
        self.foot = ""
        self.foot_indent = max(self.indent, 0)

    def increase_indent(self, flow: bool, indentless: bool) -> None:
        self.indents.append(self.indent)
        if self.indent < 0:
            self.indent = self.best_indent if flow else 0
        elif not indentless:
            if self.states and self.states[-1] == _ST_SEQ_ITEM:
                self.indent += 2
            else:
                b = self.best_indent
                self.indent = b * ((self.indent + b) // b)

    # -- driving
    def analyze(self, ev: _Ev) -> None:
        if ev.head:
            self.head = ev.head
        if ev.line:
            self.line = ev.line
        if ev.foot:
            self.foot = ev.foot
        if ev.tail:
            self.tail = ev.tail
        if ev.kind == _SCALAR:
            self.analysis = _analyze(ev.value)

    def next_event(self) -> _Ev:
        ev = self.events[self.pos]
        self.pos += 1
        self.analyze(ev)
        return ev

    def peek_empty(self, kind_start: int, kind_end: int) -> bool:
        evs = self.events
        p = self.pos - 1
        return p + 1 < len(evs) and evs[p].kind == kind_start and evs[p + 1].kind == kind_end

    def emit_document(self, events: list[_Ev], first: bool) -> None:
        self.events = events
        self.pos = 0
        if not first:
            self.write_indent()
            self.write_indicator("---", True, False, False)
            self.write_indent()
        ev = self.next_event()
        # Document content.
        self.states.append(_ST_DOC_END)
        self.process_head_comment()
        self.emit_node(ev, root=True, sequence=False, mapping=False, simple_key=False)
        self.states.pop()
        # Document end.
        self.foot_indent = 0
        self.process_foot_comment()
        self.foot_indent = -1
        self.write_indent()

    def emit_node(self, ev: _Ev, root: bool, sequence: bool, mapping: bool, simple_key: bool) -> None:
        """Emit a node, then the line and foot comments pending in the parent context.

        go-yaml's state machine processes those comments right after a collection *starts*
        (before its content), and after a scalar is written; this keeps that order.
        """
        self.root_context = root
        self.simple_key_context = simple_key
        kind = ev.kind
        if kind == _SCALAR:
            self.emit_scalar(ev)
            if not simple_key and not (mapping and self.states[-1] in (_ST_MAP_SIMPLE_VALUE, _ST_MAP_VALUE)):
                self.process_line_comment()
                self.process_foot_comment()
            return
        empty = self.peek_empty(kind, _SEQ_END if kind == _SEQ_START else _MAP_END)
        self.process_line_comment()
        self.process_foot_comment()
        if kind == _SEQ_START:
            if empty:
                self.emit_flow_empty("[", "]", False)
            else:
                self.emit_block_sequence()
        else:
            if empty:
                self.emit_flow_empty("{", "}", True)
            else:
                self.emit_block_mapping()

    def emit_flow_empty(self, open_: str, close: str, is_map: bool) -> None:
        self.write_indicator(open_, True, True, False)
        self.increase_indent(True, False)
        self.flow_level += 1
        self.next_event()
        if is_map:
            self.process_head_comment()
        self.flow_level -= 1
        self.indent = self.indents.pop()
        if not is_map and self.column == 0:
            self.write_indent()
        self.write_indicator(close, False, False, False)
        self.process_line_comment()
        self.process_foot_comment()

    def select_style(self, ev: _Ev) -> int:
        a = self.analysis
        style = ev.style
        if self.simple_key_context and a.multiline:
            style = _DOUBLE
        if style == _PLAIN:
            if (self.flow_level > 0 and not a.flow_plain) or (self.flow_level == 0 and not a.block_plain):
                style = _SINGLE
            if not ev.value and (self.flow_level > 0 or self.simple_key_context):
                style = _SINGLE
        if style == _SINGLE and not a.single:
            style = _DOUBLE
        if style == _LITERAL and (not a.block or self.flow_level > 0 or self.simple_key_context):
            style = _DOUBLE
        return style

    def emit_scalar(self, ev: _Ev) -> None:
        style = self.select_style(ev)
        if ev.tag:
            self.write_indicator(ev.tag, True, False, False)
        self.increase_indent(True, False)
        value = ev.value
        if style == _PLAIN:
            self.write_plain(value)
        elif style == _SINGLE:
            self.write_single(value, not self.simple_key_context)
        elif style == _DOUBLE:
            self.write_double(value, not self.simple_key_context)
        else:
            self.write_literal(value)
        self.indent = self.indents.pop()

    def write_plain(self, value: str) -> None:
        if value and not self.whitespace:
            self.put(" ")
        # Plain scalars here never hold line breaks (analysis forbids it).
        self.put(value)
        if value:
            self.whitespace = False
        self.indention = False
        if self.root_context:
            self.open_ended = True

    def write_single(self, value: str, allow_breaks: bool) -> None:
        self.write_indicator("'", True, False, False)
        breaks = False
        for c in value:
            if c in _BREAKS:
                if not breaks and c == "\n":
                    self.put_break()
                self.write_break_char(c)
                breaks = True
            else:
                if breaks:
                    self.write_indent()
                self.put("''" if c == "'" else c)
                self.indention = False
                breaks = False
        self.write_indicator("'", False, False, False)
        self.whitespace = False
        self.indention = False

    def write_double(self, value: str, allow_breaks: bool) -> None:
        self.write_indicator('"', True, False, False)
        bom = value.startswith("\ufeff")
        parts: list[str] = []
        for c in value:
            o = ord(c)
            if bom or not _is_printable(c) or c in _BREAKS or c == '"' or c == "\\" or \
                    0xD800 <= o <= 0xDFFF:
                parts.append(_ESCAPES.get(o) or (
                    "\\x%02X" % o if o <= 0xFF else "\\u%04X" % o if o <= 0xFFFF else "\\U%08X" % o))
            else:
                parts.append(c)
        self.put("".join(parts))
        self.write_indicator('"', False, False, False)
        self.whitespace = False
        self.indention = False

    def write_literal(self, value: str) -> None:
        self.write_indicator("|", True, False, False)
        # Block scalar hints.
        if value[:1] == " " or value[:1] in _BREAKS and value:
            self.write_indicator(str(self.best_indent), False, False, False)
        self.open_ended = False
        chomp = ""
        if not value:
            chomp = "-"
        else:
            if value[-1] not in _BREAKS:
                chomp = "-"
            elif len(value) == 1:
                chomp = "+"
                self.open_ended = True
            elif value[-2] in _BREAKS:
                chomp = "+"
                self.open_ended = True
        if chomp:
            self.write_indicator(chomp, False, False, False)
        self.process_line_comment()
        self.whitespace = True
        breaks = True
        i = 0
        n = len(value)
        while i < n:
            c = value[i]
            if c in _BREAKS:
                self.write_break_char(c)
                breaks = True
                i += 1
            else:
                if breaks:
                    self.write_indent()
                j = i
                while j < n and value[j] not in _BREAKS:
                    j += 1
                self.put(value[i:j])
                i = j
                self.indention = False
                breaks = False

    def check_simple_key(self, ev: _Ev) -> bool:
        if ev.kind == _SCALAR:
            if self.analysis.multiline:
                return False
            return len(ev.tag) + len(ev.value.encode("utf-8", "surrogateescape")) <= 128
        if ev.kind == _SEQ_START:
            return self.peek_empty(_SEQ_START, _SEQ_END)
        if ev.kind == _MAP_START:
            return self.peek_empty(_MAP_START, _MAP_END)
        return False

    def emit_block_sequence(self) -> None:
        first = True
        while True:
            ev = self.next_event()
            if first:
                self.increase_indent(False, False)
                first = False
            if ev.kind == _SEQ_END:
                self.indent = self.indents.pop()
                return
            self.process_head_comment()
            self.write_indent()
            self.write_indicator("-", True, False, True)
            self.states.append(_ST_SEQ_ITEM)
            self.emit_node(ev, root=False, sequence=True, mapping=False, simple_key=False)
            self.states.pop()

    def emit_block_mapping(self) -> None:
        first = True
        while True:
            ev = self.next_event()
            if first:
                self.increase_indent(False, False)
                first = False
            self.process_head_comment()
            if ev.kind == _MAP_END:
                self.indent = self.indents.pop()
                return
            self.write_indent()
            if self.line:
                self.key_line = self.line
                self.line = ""
            simple = self.check_simple_key(ev)
            if simple:
                self.states.append(_ST_MAP_SIMPLE_VALUE)
                self.emit_node(ev, root=False, sequence=False, mapping=True, simple_key=True)
            else:
                self.write_indicator("?", True, False, True)
                self.states.append(_ST_MAP_VALUE)
                self.emit_node(ev, root=False, sequence=False, mapping=True, simple_key=False)
            self.states.pop()
            # The value.
            ev = self.next_event()
            if simple:
                self.write_indicator(":", False, False, False)
            else:
                self.write_indent()
                self.write_indicator(":", True, False, True)
            if self.key_line:
                if ev.kind == _SCALAR:
                    if not self.line:
                        self.line, self.key_line = self.key_line, ""
                else:
                    self.line, self.key_line = self.key_line, self.line
                    self.process_line_comment()
                    self.line, self.key_line = self.key_line, self.line
            self.states.append(_ST_MAP_KEY)
            self.emit_node(ev, root=False, sequence=False, mapping=True, simple_key=False)
            self.states.pop()

    def result(self) -> str:
        return "".join(self.out)


_ESCAPES = {0x00: "\\0", 0x07: "\\a", 0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0B: "\\v",
            0x0C: "\\f", 0x0D: "\\r", 0x1B: "\\e", 0x22: '\\"', 0x5C: "\\\\", 0x85: "\\N",
            0xA0: "\\_", 0x2028: "\\L", 0x2029: "\\P"}


def emit_documents(branches: list[Branch], indent: int = 4) -> bytes:
    """The YAML stream sops writes for these documents (one mapping per document)."""
    em = _Emitter(indent)
    for i, br in enumerate(branches):
        root = _Node(_MAP_START)
        _append_branch(br, root)
        evs: list[_Ev] = []
        _events(root, "", evs)
        em.emit_document(evs, first=(i == 0))
    return em.result().encode("utf-8", "surrogateescape")


def emit_single_value(value: object, indent: int = 4) -> bytes:
    """A lone value as ``yaml.Marshal`` would print it (``--extract`` of a non-mapping)."""
    em = _Emitter(indent)
    node = _to_node(value)
    evs: list[_Ev] = []
    _events(node, "", evs)
    em.emit_document(evs, first=True)
    return em.result().encode("utf-8", "surrogateescape")
