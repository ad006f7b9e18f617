"""The YAML store: bytes <-> documents, as sops 3.11 (go-yaml v3) reads and writes them.

Parsing uses libyaml through PyYAML's C event parser (fast, no Python-level scanner). libyaml
drops comments, so they are recovered from the source text between events and attached the
way go-yaml and sops attach them: a comment on the line of an item goes before that item; a
comment on its own line goes before the next item of the collection it is indented into, or
at the end of that collection. Scalars are resolved with go-yaml v3's rules
(:mod:`yaml_resolve`), anchors are expanded, tags other than the standard ones are dropped.
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
from collections.abc import Iterable
from typing import Any

import yaml as _pyyaml

from sops_enclave.formats import yaml_emit
from sops_enclave.formats.yaml_resolve import resolve_plain, timestamp_text
from sops_enclave.tree import Branch, Comment, Timestamp

__all__ = ["load_plain", "load_encrypted", "emit_plain", "emit_encrypted", "emit_value",
           "YAMLError"]

_Loader = getattr(_pyyaml, "CSafeLoader", _pyyaml.SafeLoader)

#: Nesting deeper than this is refused (sops' own tree walk would overflow long before).
MAX_DEPTH = 256
#: A document may expand (aliases included) to at most this many nodes: a "billion laughs"
#: alias bomb is refused instead of exhausting memory.
MAX_NODES = 2_000_000
_HASH_RE = re.compile(r"(?:^|(?<=[ \t]))#", re.M)
_STR_TAGS = ("tag:yaml.org,2002:str",)
_TAG = "tag:yaml.org,2002:"


class YAMLError(ValueError):
    """A document go-yaml would refuse; the message follows go-yaml's wording."""


def _decode(data: bytes) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise YAMLError("yaml: invalid leading UTF-8 octet") from None


def _tagged(tag: str, value: str, style: str | None) -> Any:
    """The value of an explicitly tagged scalar (``!!str 5``, ``!!binary ...``, ``!Ref x``)."""
    if not tag.startswith(_TAG):
        return value  # custom tags are dropped; the scalar stays a string
    short = tag[len(_TAG):]
    if short == "str":
        return value
    if short == "binary":
        try:
            raw = base64.b64decode("".join(value.split()), validate=True)
        except (binascii.Error, ValueError):
            raise YAMLError("yaml: cannot decode !!binary data: illegal base64 data") from None
        return raw.decode("utf-8", "surrogateescape")
    resolved = resolve_plain(value) if value not in ("<<",) else value
    if short == "float" and isinstance(resolved, int) and not isinstance(resolved, bool):
        return float(resolved)
    if short == "timestamp":
        ts = timestamp_text(value)
        if ts is not None:
            return Timestamp(ts)
    kinds = {"int": int, "float": float, "bool": bool, "null": type(None)}
    want = kinds.get(short)
    if want is not None and type(resolved) is want or (short == "int" and isinstance(resolved, int)
                                                       and not isinstance(resolved, bool)):
        return resolved
    if short == "merge":
        return value
    raise YAMLError(f"yaml: cannot decode !!{_short_of(resolved)} `{value}` as a !!{short}")


def _short_of(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if v is None:
        return "null"
    if isinstance(v, Timestamp):
        return "timestamp"
    return "str"


class _Frame:
    __slots__ = ("node", "is_map", "indent", "key", "key_line", "key_index", "anchor",
                 "has_key", "start_line", "start_nodes", "seen")

    def __init__(self, node: Any, is_map: bool, indent: int, anchor: str | None, line: int):
        self.node = node
        self.is_map = is_map
        self.indent = indent
        self.anchor = anchor
        self.has_key = False
        self.key: Any = None
        self.key_line = -1
        self.key_index = 0
        self.start_line = line
        self.start_nodes = 0
        self.seen: set[tuple[type, Any]] | None = None


class _Builder:
    """Turns libyaml events plus the source's comments into sops documents."""

    def __init__(self, text: str, check_dupes_first_doc: bool):
        self.text = text
        self.hashes = [m.start() for m in _HASH_RE.finditer(text)] if "#" in text else []
        self.hpos = 0
        self.pending: list[tuple[int, str]] = []  # standalone comments: (column, text)
        self.line_items: dict[int, tuple[Any, int]] = {}
        self.anchors: dict[str, Any] = {}
        self.check_dupes = check_dupes_first_doc
        self.doc_index = 0
        self.nodes = 0
        self.anchor_sizes: dict[str, int] = {}

    # -- comments
    def _line_start(self, pos: int) -> int:
        return self.text.rfind("\n", 0, pos) + 1

    def _take_comments(self, upto: int) -> list[tuple[int, int, str, bool]]:
        out = []
        hashes = self.hashes
        text = self.text
        while self.hpos < len(hashes) and hashes[self.hpos] < upto:
            pos = hashes[self.hpos]
            self.hpos += 1
            ls = self._line_start(pos)
            end = text.find("\n", pos)
            if end < 0:
                end = len(text)
            body = text[pos + 1:end]
            if body.endswith("\r"):
                body = body[:-1]
            standalone = not text[ls:pos].strip(" \t")
            line = text.count("\n", 0, pos) if not standalone else 0
            out.append((pos - ls, line, body, standalone))
        return out

    def _skip_span(self, start: int, end: int) -> None:
        hashes = self.hashes
        while self.hpos < len(hashes) and hashes[self.hpos] < end:
            self.hpos += 1

    def _place(self, upto: int, stack: list[_Frame]) -> None:
        if self.hpos >= len(self.hashes) or self.hashes[self.hpos] >= upto:
            return
        for col, line, body, standalone in self._take_comments(upto):
            if standalone:
                self.pending.append((col, body))
                continue
            target = self.line_items.get(line)
            if target is None:
                self.pending.append((col, body))
                continue
            container, idx = target
            c = Comment(body)
            if isinstance(container, Branch):
                container.insert(idx, (c, None))
            else:
                container.insert(idx, c)

    def _flush_into(self, node: Any, only_from_col: int | None = None) -> None:
        keep = []
        pend = self.pending
        i = 0
        if only_from_col is not None:
            while i < len(pend) and pend[i][0] >= only_from_col:
                i += 1
            keep = pend[i:]
            pend = pend[:i]
        for _, body in pend:
            if isinstance(node, Branch):
                node.append((Comment(body), None))
            else:
                node.append(Comment(body))
        self.pending = keep

    # -- events
    def build(self, events: Iterable[_pyyaml.Event]) -> list[Branch]:
        docs: list[Branch] = []
        stack: list[_Frame] = []
        root: Any = None
        text_len = len(self.text)
        ev_types = _pyyaml.events
        for ev in events:
            t = type(ev)
            start = ev.start_mark.index if ev.start_mark is not None else text_len
            self._place(start, stack)
            if t is ev_types.ScalarEvent:
                self._skip_span(start, ev.end_mark.index)
                tag = ev.tag
                if ev.style is None or ev.style == "":
                    if tag is None or tag == "!":
                        value = resolve_plain(ev.value) if tag is None else ev.value
                    else:
                        value = _tagged(tag, ev.value, ev.style)
                else:
                    value = ev.value if tag is None or tag == "!" else _tagged(tag, ev.value, ev.style)
                # Long strings weigh more, so aliasing one cannot amplify memory unnoticed.
                weight = 1 + (len(value) >> 8 if isinstance(value, str) else 0)
                if ev.anchor:
                    self.anchors[ev.anchor] = value
                    self.anchor_sizes[ev.anchor] = weight
                self._count(weight)
                root = self._add(stack, value, ev.start_mark.line, root)
            elif t is ev_types.MappingStartEvent or t is ev_types.SequenceStartEvent:
                if len(stack) >= MAX_DEPTH:
                    raise YAMLError(f"yaml: line {ev.start_mark.line + 1}: nesting deeper than "
                                    f"{MAX_DEPTH} levels")
                self._count(1)
                is_map = t is ev_types.MappingStartEvent
                node: Any = Branch() if is_map else []
                line = ev.start_mark.line
                if stack:
                    top = stack[-1]
                    if top.is_map and not top.has_key:
                        raise YAMLError(f"yaml: line {line + 1}: complex (non-scalar) mapping "
                                        "keys are not supported")
                    if not top.is_map:
                        self.line_items[line] = (top.node, len(top.node))
                        self._flush_into(top.node)
                frame = _Frame(node, is_map, ev.start_mark.column, ev.anchor, line)
                frame.start_nodes = self.nodes
                stack.append(frame)
                self._flush_into(node)
            elif t is ev_types.MappingEndEvent or t is ev_types.SequenceEndEvent:
                frame = stack.pop()
                parent_indent = stack[-1].indent if stack else -1
                if self.pending:
                    col = frame.indent
                    if not frame.is_map and stack and stack[-1].is_map and col <= parent_indent:
                        col = parent_indent + 1
                    self._flush_into(frame.node, only_from_col=col)
                if frame.anchor:
                    self.anchors[frame.anchor] = frame.node
                    self.anchor_sizes[frame.anchor] = self.nodes - frame.start_nodes + 1
                root = self._add(stack, frame.node, frame.start_line, root, collection=True)
            elif t is ev_types.AliasEvent:
                if ev.anchor not in self.anchors:
                    raise YAMLError(f'yaml: unknown anchor \'{ev.anchor}\' referenced')
                self._count(self.anchor_sizes.get(ev.anchor, 1))
                root = self._add(stack, copy.deepcopy(self.anchors[ev.anchor]),
                                 ev.start_mark.line, root)
            elif t is ev_types.DocumentStartEvent:
                root = None
                self.line_items.clear()
            elif t is ev_types.DocumentEndEvent:
                docs.append(self._finish_doc(root))
                self.doc_index += 1
                root = None
        return docs

    def _count(self, n: int) -> None:
        self.nodes += n
        if self.nodes > MAX_NODES:
            raise YAMLError(f"yaml: document expands to more than {MAX_NODES} values "
                            "(alias expansion)")

    def _finish_doc(self, root: Any) -> Branch:
        if root is None:
            br = Branch()
        elif isinstance(root, Branch):
            br = root
        elif isinstance(root, list):
            raise YAMLError("YAML documents that are sequences are not supported")
        else:
            raise YAMLError("YAML documents that are values are not supported")
        self._flush_into(br)
        return br

    def _add(self, stack: list[_Frame], value: Any, line: int, root: Any,
             collection: bool = False) -> Any:
        if not stack:
            if self.pending and isinstance(value, Branch):
                self._flush_into(value)
            return value if not (value is None and not collection) else None
        top = stack[-1]
        if top.is_map:
            if not top.has_key:
                if collection:
                    raise YAMLError(f"yaml: line {line + 1}: complex (non-scalar) mapping keys "
                                    "are not supported")
                self._flush_into(top.node)
                if self.check_dupes and self.doc_index == 0:
                    self._check_dupe(top, value, line)
                top.key = value
                top.key_line = line
                top.key_index = len(top.node)
                top.has_key = True
                self.line_items[line] = (top.node, len(top.node))
            else:
                if not collection:
                    self._flush_into(top.node)
                top.node.append((top.key, value))
                top.has_key = False
        else:
            if not collection:
                self._flush_into(top.node)
                self.line_items[line] = (top.node, len(top.node))
            top.node.append(value)
        return root

    def _check_dupe(self, frame: _Frame, key: Any, line: int) -> None:
        if frame.seen is None:
            frame.seen = set()
        marker = (type(key), key)
        if marker in frame.seen:
            raise YAMLError(f'yaml: unmarshal errors:\n  line {line + 1}: mapping key '
                            f'"{key}" already defined')
        frame.seen.add(marker)


def _parse(data: bytes, check_dupes: bool) -> list[Branch]:
    text = _decode(data)
    b = _Builder(text, check_dupes)
    try:
        return b.build(_pyyaml.parse(text, Loader=_Loader))
    except _pyyaml.MarkedYAMLError as e:
        line = (e.problem_mark.line + 1) if e.problem_mark is not None else 0
        raise YAMLError(f"yaml: line {line}: {e.problem}") from None
    except _pyyaml.YAMLError as e:
        raise YAMLError(f"yaml: {e}") from None


def load_plain(data: bytes) -> list[Branch]:
    """Plaintext YAML -> documents. Raises :class:`YAMLError` (sops exit 2 on encrypt)."""
    if not data:
        return []
    try:
        docs = _parse(data, check_dupes=True)
    except YAMLError as e:
        msg = str(e)
        if msg.startswith("YAML documents that are sequences"):
            raise YAMLError("yaml: unmarshal errors:\n  line 1: cannot unmarshal !!seq into "
                            "map[string]interface {}") from None
        raise
    if not docs:
        raise YAMLError("EOF")
    return docs


def load_encrypted(data: bytes) -> tuple[list[Branch], Any]:
    """Encrypted YAML -> (documents without ``sops``, the first document's ``sops`` value)."""
    docs = _parse(data, check_dupes=False)
    meta = None
    found = False
    out = []
    for i, d in enumerate(docs):
        keep = Branch()
        for k, v in d:
            if k == "sops" and not isinstance(k, Comment):
                if i == 0:
                    if found:
                        raise YAMLError('yaml: unmarshal errors:\n  mapping key "sops" already '
                                        "defined")
                    meta, found = v, True
                continue
            keep.append((k, v))
        out.append(keep)
    if not found:
        return out, None
    return out, meta


def emit_plain(branches: list[Branch], indent: int = 4) -> bytes:
    return yaml_emit.emit_documents(branches, indent)


def emit_encrypted(branches: list[Branch], metadata: Branch, indent: int = 4) -> bytes:
    docs = []
    for br in branches:
        d = Branch(br)
        d.append(("sops", metadata))
        docs.append(d)
    return yaml_emit.emit_documents(docs, indent)


def emit_value(value: Any, indent: int = 4) -> bytes:
    if isinstance(value, Branch):
        return yaml_emit.emit_documents([value], indent)
    return yaml_emit.emit_single_value(value, indent)
