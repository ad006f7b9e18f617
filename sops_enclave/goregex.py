"""Go ``regexp`` patterns (RE2 syntax, as sops 3.11's Go 1.25 parses them) for Python's ``re``.

sops compiles every user regexp (``path_regex`` in ``.sops.yaml``, the four crypt-rule regexps
stored in a file or given on the command line) with Go's ``regexp``. Python's ``re`` reads the
same text differently (``[[:alpha:]]`` is a set of ``[:alph`` followed by ``]``, ``$`` also
matches before a final newline, ``\\d`` is Unicode, ``(?i)`` mid-pattern is refused, ...), so a
pattern is parsed here with Go's rules into a small tree and written back out as a Python
pattern that matches exactly the same strings:

* flags ``i m s U`` (also negated and scoped, ``(?i)`` anywhere, ``(?flags:...)``) are applied
  while parsing, as Go does, so the output needs no inline flags: case-insensitive literals and
  classes are expanded to their simple case-folding orbits (Go's, not Python's ``re.I``: ``i``
  does not match ``ı`` or ``İ``, ``k`` matches the Kelvin sign), ungreedy swaps ``*``/``*?``;
* every character class (``.``, ``[...]``, ``\\d\\s\\w``, POSIX ``[[:alpha:]]``, ``\\pL``) is
  computed as code-point ranges with Go's semantics (ASCII ``\\d\\s\\w``, ``\\s`` without ``\\v``)
  and written as an explicit set;
* ``^ $ \\A \\z \\b \\B`` become ``\\A``/``(?m:^)``, ``\\Z``/``(?m:$)``, ``\\A``, ``\\Z``, and ASCII
  word boundaries (``(?a:\\b)``, and lookarounds for ``\\B``, which Python never matches in an
  empty string).

Everything Go refuses is refused with :class:`GoRegexError`, whose text is the one Go's
``regexp.Compile`` gives (``error parsing regexp: invalid escape sequence: `\\1```).
:class:`GoRegexUnsupported` is for the few patterns Go accepts that cannot be translated: the
Unicode *script* classes (``\\p{Greek}``); Python's ``unicodedata`` has no script property.
General categories (``\\pL``, ``\\p{Lu}``, ``\\p{Letter}``, ...) come from ``unicodedata``, i.e.
the running Python's Unicode version (3.11: 14.0; Go 1.25: 15.0).

sops only asks "does the pattern match anywhere in this string" (``regexp.Match``), and for that
Go's leftmost-first engine and Python's backtracking one agree once the syntax is the same.

Pure: no I/O. Tables (general categories, case folding) are built from ``unicodedata`` the
first time a pattern needs them.
"""

from __future__ import annotations

import bisect
import functools
import re
import sys
import threading
import unicodedata
from collections.abc import Callable
from typing import TypeAlias, TypeVar, TypeVarTuple, Unpack

__all__ = ["GoRegexError", "GoRegexUnsupported", "translate", "compile_go", "match_string",
           "go_text"]

MAX_RUNE = 0x10FFFF

# Go's regexp/syntax error codes (ErrorCode strings).
INVALID_CHAR_RANGE = "invalid character class range"
INVALID_ESCAPE = "invalid escape sequence"
INVALID_NAMED_CAPTURE = "invalid named capture"
INVALID_PERL_OP = "invalid or unsupported Perl syntax"
INVALID_REPEAT_OP = "invalid nested repetition operator"
INVALID_REPEAT_SIZE = "invalid repeat count"
INVALID_UTF8 = "invalid UTF-8"
MISSING_BRACKET = "missing closing ]"
MISSING_PAREN = "missing closing )"
MISSING_REPEAT_ARGUMENT = "missing argument to repetition operator"
TRAILING_BACKSLASH = "trailing backslash at end of expression"
UNEXPECTED_PAREN = "unexpected )"
NESTING_DEPTH = "expression nests too deeply"
LARGE = "expression too large"

_MAX_REPEAT = 1000          # largest count in x{n,m}, and of nested counts multiplied
_MAX_HEIGHT = 1000          # deepest parse tree
_MAX_SIZE = (128 << 20) // 40   # compiled program size, in instructions
_MAX_RUNES = (128 << 20) // 4   # runes held by all character classes


class GoRegexError(ValueError):
    """A pattern Go's ``regexp.Compile`` refuses; ``str()`` is Go's error text."""

    def __init__(self, code: str, expr: str):
        self.code = code
        self.expr = expr
        super().__init__(f"error parsing regexp: {code}: `{expr}`")


class GoRegexUnsupported(ValueError):
    """A pattern Go accepts that sops-enclave cannot translate (Unicode script classes)."""

    def __init__(self, pattern: str, what: str):
        self.pattern = pattern
        super().__init__(
            f"sops-enclave cannot use the regexp `{pattern}`: {what} (Python's re module and "
            "unicodedata have no Unicode script data; use explicit ranges such as "
            "[\\x{370}-\\x{3FF}] or a general category such as \\pL)")


# ------------------------------------------------------------------------------ flags

_FOLD = 1        # i
_ONE_LINE = 2    # not m: ^ and $ match at text boundaries only
_DOT_NL = 4      # s
_NON_GREEDY = 8  # U

# ------------------------------------------------------------------------------ range sets
# A class is a sorted list of disjoint, non-adjacent inclusive (lo, hi) code-point ranges.

_Ranges: TypeAlias = list[tuple[int, int]]


def _clean(rs: list[tuple[int, int]]) -> _Ranges:
    out: _Ranges = []
    for lo, hi in sorted(rs):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def _negate(rs: _Ranges) -> _Ranges:
    out: _Ranges = []
    nxt = 0
    for lo, hi in rs:
        if nxt <= lo - 1:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= MAX_RUNE:
        out.append((nxt, MAX_RUNE))
    return out


# ------------------------------------------------------------------------------ case folding

_MIN_FOLD, _MAX_FOLD = 0x41, 0x1E943


@functools.lru_cache(maxsize=None)
def _fold_tables() -> tuple[dict[int, tuple[int, ...]], list[int]]:
    """Go's simple case-folding orbits (``unicode.SimpleFold``), from ``unicodedata``.

    Two code points are equivalent when they have the same simple case folding (CaseFolding.txt
    statuses C and S). ``str.casefold`` gives status C where it is one code point; where it
    is several (status F), the S folding, when there is one, is the simple lowercase.
    Returns ``{code point: its orbit}`` for code points whose orbit is not only themselves, and
    those code points sorted.
    """
    key: dict[int, int] = {}
    for cp in range(_MIN_FOLD, _MAX_FOLD + 1):
        ch = chr(cp)
        cf = ch.casefold()
        if len(cf) == 1:
            k = ord(cf)
        else:
            low = ch.lower()
            k = ord(low) if len(low) == 1 else cp
        if k != cp:
            key[cp] = k
    groups: dict[int, set[int]] = {}
    for cp, k in key.items():
        for _ in range(4):  # folding is idempotent; follow at most a short chain
            if k not in key:
                break
            k = key[k]
        groups.setdefault(k, {k}).add(cp)
    orbit: dict[int, tuple[int, ...]] = {}
    for members in groups.values():
        t = tuple(sorted(members))
        for m in t:
            orbit[m] = t
    return orbit, sorted(orbit)


def _fold(rs: _Ranges) -> _Ranges:
    """``rs`` plus every code point case-equivalent to one in it (Go's appendFoldedRange)."""
    orbit, points = _fold_tables()
    extra: list[tuple[int, int]] = []
    for lo, hi in rs:
        if hi < _MIN_FOLD or lo > _MAX_FOLD:
            continue
        for k in range(bisect.bisect_left(points, lo), bisect.bisect_right(points, hi)):
            extra.extend((m, m) for m in orbit[points[k]])
    return _clean(rs + extra) if extra else rs


def _orbit(c: int) -> tuple[int, ...]:
    if c < _MIN_FOLD or c > _MAX_FOLD:
        return (c,)
    return _fold_tables()[0].get(c, (c,))


# ------------------------------------------------------------------------------ named classes

_PERL_GROUPS: dict[str, tuple[int, _Ranges]] = {
    "\\d": (+1, [(0x30, 0x39)]),
    "\\D": (-1, [(0x30, 0x39)]),
    "\\s": (+1, [(0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20)]),
    "\\S": (-1, [(0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20)]),
    "\\w": (+1, [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]),
    "\\W": (-1, [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]),
}

_POSIX = {  # ASCII only, as in Go
    "alnum": [(0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)],
    "alpha": [(0x41, 0x5A), (0x61, 0x7A)],
    "ascii": [(0x00, 0x7F)],
    "blank": [(0x09, 0x09), (0x20, 0x20)],
    "cntrl": [(0x00, 0x1F), (0x7F, 0x7F)],
    "digit": [(0x30, 0x39)],
    "graph": [(0x21, 0x7E)],
    "lower": [(0x61, 0x7A)],
    "print": [(0x20, 0x7E)],
    "punct": [(0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)],
    "space": [(0x09, 0x0D), (0x20, 0x20)],
    "upper": [(0x41, 0x5A)],
    "word": [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
    "xdigit": [(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)],
}
_POSIX_GROUPS: dict[str, tuple[int, _Ranges]] = {}
for _name, _rs in _POSIX.items():
    _POSIX_GROUPS[f"[:{_name}:]"] = (+1, _rs)
    _POSIX_GROUPS[f"[:^{_name}:]"] = (-1, _rs)
del _name, _rs

_CATEGORIES = ("C", "Cc", "Cf", "Cn", "Co", "Cs", "L", "Ll", "Lm", "Lo", "Lt", "Lu", "M", "Mc",
               "Me", "Mn", "N", "Nd", "Nl", "No", "P", "Pc", "Pd", "Pe", "Pf", "Pi", "Po", "Ps",
               "S", "Sc", "Sk", "Sm", "So", "Z", "Zl", "Zp", "Zs")

# Unicode's general-category long names and aliases (PropertyValueAliases.txt), which Go 1.25
# accepts in \p{...} after the same canonicalisation as the short names.
_CATEGORY_ALIASES = {
    "Other": "C", "Control": "Cc", "cntrl": "Cc", "Format": "Cf", "Unassigned": "Cn",
    "Private_Use": "Co", "Surrogate": "Cs", "Letter": "L", "Cased_Letter": "LC",
    "Lowercase_Letter": "Ll", "Modifier_Letter": "Lm", "Other_Letter": "Lo",
    "Titlecase_Letter": "Lt", "Uppercase_Letter": "Lu", "Mark": "M", "Combining_Mark": "M",
    "Spacing_Mark": "Mc", "Enclosing_Mark": "Me", "Nonspacing_Mark": "Mn", "Number": "N",
    "Decimal_Number": "Nd", "digit": "Nd", "Letter_Number": "Nl", "Other_Number": "No",
    "Punctuation": "P", "punct": "P", "Connector_Punctuation": "Pc", "Dash_Punctuation": "Pd",
    "Close_Punctuation": "Pe", "Final_Punctuation": "Pf", "Initial_Punctuation": "Pi",
    "Other_Punctuation": "Po", "Open_Punctuation": "Ps", "Symbol": "S", "Currency_Symbol": "Sc",
    "Modifier_Symbol": "Sk", "Math_Symbol": "Sm", "Other_Symbol": "So", "Separator": "Z",
    "Line_Separator": "Zl", "Paragraph_Separator": "Zp", "Space_Separator": "Zs",
}

# The Unicode 15.0 scripts Go 1.25 finds in \p{...}: it looks the canonicalised name up in
# unicode.Scripts, whose keys keep their underscores, so only one-word names are reachable
# (\p{Old_Italic} is refused by Go itself).
_GO_SCRIPTS = frozenset("""
Adlam Ahom Arabic Armenian Avestan Balinese Bamum Batak Bengali Bhaiksuki Bopomofo Brahmi Braille
Buginese Buhid Carian Chakma Cham Cherokee Chorasmian Common Coptic Cuneiform Cypriot Cyrillic
Deseret Devanagari Dogra Duployan Elbasan Elymaic Ethiopic Georgian Glagolitic Gothic Grantha
Greek Gujarati Gurmukhi Han Hangul Hanunoo Hatran Hebrew Hiragana Inherited Javanese Kaithi
Kannada Katakana Kawi Kharoshthi Khmer Khojki Khudawadi Lao Latin Lepcha Limbu Lisu Lycian Lydian
Mahajani Makasar Malayalam Mandaic Manichaean Marchen Medefaidrin Miao Modi Mongolian Mro Multani
Myanmar Nabataean Nandinagari Newa Nko Nushu Ogham Oriya Osage Osmanya Palmyrene Phoenician
Rejang Runic Samaritan Saurashtra Sharada Shavian Siddham Sinhala Sogdian Soyombo Sundanese
Syriac Tagalog Tagbanwa Takri Tamil Tangsa Tangut Telugu Thaana Thai Tibetan Tifinagh Tirhuta
Toto Ugaritic Vai Vithkuqi Wancho Yezidi Yi
""".split())


def _canonical_name(name: str) -> str:
    """Go's ``canonicalName``: drop ``_ - space``, first letter upper case, the rest lower."""
    out = []
    first = True
    for c in name:
        if c in "_- ":
            continue
        if first:
            c = c.upper() if "a" <= c <= "z" else c
            first = False
        elif "A" <= c <= "Z":
            c = c.lower()
        out.append(c)
    return "".join(out)


_CANONICAL_CATEGORIES = {_canonical_name(n): n for n in _CATEGORIES}
_CANONICAL_CATEGORIES.update({_canonical_name(a): n for a, n in _CATEGORY_ALIASES.items()})
_CANONICAL_CATEGORIES["Lc"] = "LC"


@functools.lru_cache(maxsize=None)
def _general_categories() -> dict[str, tuple[tuple[int, int], ...]]:
    """Two-letter general category -> ranges, over every code point (``unicodedata``)."""
    cats: dict[str, list[tuple[int, int]]] = {}
    category = unicodedata.category
    start, cur = 0, category("\x00")
    for cp in range(1, MAX_RUNE + 1):
        c = category(chr(cp))
        if c != cur:
            cats.setdefault(cur, []).append((start, cp - 1))
            start, cur = cp, c
    cats.setdefault(cur, []).append((start, MAX_RUNE))
    return {k: tuple(v) for k, v in cats.items()}


@functools.lru_cache(maxsize=None)
def _category(name: str) -> tuple[tuple[int, int], ...]:
    cats = _general_categories()
    parts: tuple[str, ...]
    if name == "LC":
        parts = ("Lu", "Ll", "Lt")
    elif len(name) == 1:
        parts = tuple(k for k in cats if k[0] == name)
    else:
        parts = (name,)
    rs: list[tuple[int, int]] = []
    for p in parts:
        rs.extend(cats.get(p, ()))
    return tuple(_clean(rs))


def _unicode_table(name: str) -> tuple[str, _Ranges | None, bool, int]:
    """Go's ``unicodeTable``: (kind, ranges, fold with (?i), sign); kind '' = unknown name."""
    canon = _canonical_name(name)
    if canon == "Any":
        return "any", [(0, MAX_RUNE)], True, +1
    if canon == "Assigned":
        return "cat", list(_category("Cn")), True, -1
    if canon == "Ascii":
        return "ascii", [(0, 0x7F)], True, +1
    cat = _CANONICAL_CATEGORIES.get(canon)
    if cat is not None:
        # Go has no case-folding table for the synthetic LC, so (?i) does not widen it.
        return "cat", list(_category(cat)), cat != "LC", +1
    if canon in _GO_SCRIPTS:
        return "script", None, True, +1
    return "", None, False, 0


# ------------------------------------------------------------------------------ the tree

class _Node:
    """One node: ``op`` is lit, class, empty, bot/eot (text anchors), bol/eol (line anchors),
    wb/nwb (word boundaries), cap, star, plus, quest, repeat, concat or alt; ``flags`` are the
    parser's flags when it was made (case folding for lit, ungreedy for the repetitions)."""

    __slots__ = ("op", "flags", "subs", "ranges", "rune", "min", "max")

    def __init__(self, op: str, flags: int = 0, subs: list[_Node] | None = None,
                 ranges: _Ranges | None = None, rune: int = -1, lo: int = 0, hi: int = 0):
        self.op = op
        self.flags = flags
        self.subs = subs or []
        self.ranges = ranges
        self.rune = rune
        self.min = lo
        self.max = hi


class _Frame:
    __slots__ = ("saved", "cap", "alts", "items")

    def __init__(self, saved: int, cap: bool):
        self.saved = saved   # the flags to restore at the closing paren
        self.cap = cap
        self.alts: list[_Node] = []
        self.items: list[_Node] = []


def _isalnum(c: str) -> bool:
    return "0" <= c <= "9" or "A" <= c <= "Z" or "a" <= c <= "z"


def _unhex(c: str) -> int:
    if "0" <= c <= "9":
        return ord(c) - 48
    if "a" <= c <= "f":
        return ord(c) - 87
    if "A" <= c <= "F":
        return ord(c) - 55
    return -1


def _is_surrogate(c: str) -> bool:
    return "\ud800" <= c <= "\udfff"


_ESCAPES = {"a": 7, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11}


class _Parser:
    """Go's regexp/syntax ``parse`` with the ``Perl`` flags, step for step where it matters:
    the same left-to-right order, so the first error found is the one Go reports."""

    def __init__(self, s: str):
        self.s = s
        self.flags = _ONE_LINE
        self.frames = [_Frame(_ONE_LINE, False)]
        self.unsupported: str | None = None
        self.num_runes = 0

    # -- helpers
    def _rune(self, j: int) -> int:
        c = self.s[j]
        if _is_surrogate(c):  # a Python str holding bytes that are not UTF-8
            raise GoRegexError(INVALID_UTF8, self.s[j:])
        return ord(c)

    def _check_utf8(self, text: str) -> None:
        for k, c in enumerate(text):
            if _is_surrogate(c):
                raise GoRegexError(INVALID_UTF8, text[k:])

    def _push(self, node: _Node) -> None:
        if node.ranges is not None:
            self.num_runes += 2 * len(node.ranges)
        else:
            self.num_runes += node.op == "lit"
        self.frames[-1].items.append(node)

    def _op(self, op: str) -> None:
        self._push(_Node(op, self.flags))

    def _literal(self, r: int) -> None:
        self._push(_Node("lit", self.flags, rune=r))

    def _class(self, ranges: _Ranges) -> None:
        self._push(_Node("class", self.flags, ranges=ranges))

    # -- the main loop
    def parse(self) -> _Node:
        s = self.s
        n = len(s)
        i = 0
        last_repeat = -1
        while i < n:
            repeat = -1
            c = s[i]
            if c == "(":
                if i + 1 < n and s[i + 1] == "?":
                    i = self._perl_flags(i)
                else:
                    self.frames.append(_Frame(self.flags, True))
                    i += 1
            elif c == "|":
                f = self.frames[-1]
                f.alts.append(_concat(f.items))
                f.items = []
                i += 1
            elif c == ")":
                self._right_paren()
                i += 1
            elif c == "^":
                self._op("bot" if self.flags & _ONE_LINE else "bol")
                i += 1
            elif c == "$":
                self._op("eot" if self.flags & _ONE_LINE else "eol")
                i += 1
            elif c == ".":
                self._class([(0, MAX_RUNE)] if self.flags & _DOT_NL
                            else [(0, 9), (11, MAX_RUNE)])
                i += 1
            elif c == "[":
                i = self._parse_class(i)
            elif c in "*+?":
                op = {"*": "star", "+": "plus", "?": "quest"}[c]
                repeat = i
                i = self._repeat(op, 0, 0, i, i + 1, last_repeat)
            elif c == "{":
                parsed = self._parse_repeat(i)
                if parsed is None:  # not a repetition: { is a literal
                    self._literal(ord("{"))
                    i += 1
                else:
                    lo, hi, after = parsed
                    if lo < 0 or lo > _MAX_REPEAT or hi > _MAX_REPEAT or (0 <= hi < lo):
                        raise GoRegexError(INVALID_REPEAT_SIZE, s[i:after])
                    repeat = i
                    i = self._repeat("repeat", lo, hi, i, after, last_repeat)
            elif c == "\\":
                i = self._backslash(i)
            else:
                self._literal(self._rune(i))
                i += 1
            last_repeat = repeat
        if len(self.frames) > 1:
            raise GoRegexError(MISSING_PAREN, s)
        root = _alternate(self.frames[0])
        _check_limits(root, s, self.num_runes)
        return root

    def _repeat(self, op: str, lo: int, hi: int, before: int, after: int,
                last_repeat: int) -> int:
        s = self.s
        flags = self.flags
        if after < len(s) and s[after] == "?":
            after += 1
            flags ^= _NON_GREEDY
        if last_repeat >= 0:
            # a** and a++ are errors in Perl syntax, not a doubled star or possessive.
            raise GoRegexError(INVALID_REPEAT_OP, s[last_repeat:after])
        items = self.frames[-1].items
        if not items:
            raise GoRegexError(MISSING_REPEAT_ARGUMENT, s[before:after])
        node = _Node(op, flags, subs=[items[-1]], lo=lo, hi=hi)
        items[-1] = node
        if op == "repeat" and (lo >= 2 or hi >= 2) and not _repeat_is_valid(node, _MAX_REPEAT):
            raise GoRegexError(INVALID_REPEAT_SIZE, s[before:after])
        return after

    def _parse_repeat(self, i: int) -> tuple[int, int, int] | None:
        """``{n}``, ``{n,}``, ``{n,m}`` at ``i``: (min, max or -1, end), None if not one."""
        s = self.s
        n = len(s)
        j = i + 1
        lo, j = self._parse_int(j)
        if lo is None or j >= n:
            return None
        if s[j] != ",":
            hi = lo
        else:
            j += 1
            if j >= n:
                return None
            if s[j] == "}":
                hi = -1
            else:
                max_, j = self._parse_int(j)
                if max_ is None:
                    return None
                hi = max_
        if j >= n or s[j] != "}":
            return None
        return lo, hi, j + 1

    def _parse_int(self, j: int) -> tuple[int | None, int]:
        s = self.s
        n = len(s)
        if j >= n or not "0" <= s[j] <= "9":
            return None, j
        if j + 1 < n and s[j] == "0" and "0" <= s[j + 1] <= "9":
            return None, j  # no leading zeros
        k = j
        while k < n and "0" <= s[k] <= "9":
            k += 1
        digits = s[j:k]
        # Go stops counting at 1e8; anything that large is an invalid count either way.
        return (int(digits) if len(digits) <= 9 else 10 ** 9), k

    def _right_paren(self) -> None:
        if len(self.frames) == 1:
            raise GoRegexError(UNEXPECTED_PAREN, self.s)
        f = self.frames.pop()
        node = _alternate(f)
        self.flags = f.saved
        if f.cap:
            node = _Node("cap", f.saved, subs=[node])
        self.frames[-1].items.append(node)

    def _perl_flags(self, i: int) -> int:
        """``(?`` at ``i``: named capture, flag change, non-capturing group."""
        s = self.s
        t = s[i:]
        starts_with_p = len(t) > 4 and t[2] == "P" and t[3] == "<"
        starts_with_name = len(t) > 3 and t[2] == "<"
        if starts_with_p or starts_with_name:
            start = 4 if starts_with_p else 3
            end = t.find(">")
            if end < 0:
                self._check_utf8(t)
                raise GoRegexError(INVALID_NAMED_CAPTURE, t)
            capture = t[:end + 1]
            name = t[start:end]
            self._check_utf8(name)
            if not name or not all(c == "_" or _isalnum(c) for c in name):
                raise GoRegexError(INVALID_NAMED_CAPTURE, capture)
            self.frames.append(_Frame(self.flags, True))
            return i + end + 1
        j = i + 2
        flags = self.flags
        sign = +1
        saw_flag = False
        n = len(s)
        while j < n:
            c = s[j]
            self._rune(j)
            j += 1
            if c in "imsU":
                bit = {"i": _FOLD, "m": _ONE_LINE, "s": _DOT_NL, "U": _NON_GREEDY}[c]
                on = sign > 0
                if c == "m":  # m turns the one-line mode off
                    on = not on
                flags = flags | bit if on else flags & ~bit
                saw_flag = True
            elif c == "-":
                if sign < 0:
                    break
                sign = -1
                saw_flag = False
            elif c in ":)":
                if sign < 0 and not saw_flag:
                    break
                if c == ":":
                    self.frames.append(_Frame(self.flags, False))
                self.flags = flags
                return j
            else:
                break
        raise GoRegexError(INVALID_PERL_OP, s[i:j])

    def _backslash(self, i: int) -> int:
        s = self.s
        n = len(s)
        if i + 1 < n:
            c = s[i + 1]
            if c == "A":
                self._op("bot")
                return i + 2
            if c == "b":
                self._op("wb")
                return i + 2
            if c == "B":
                self._op("nwb")
                return i + 2
            if c == "C":  # any byte: not supported by Go either
                raise GoRegexError(INVALID_ESCAPE, s[i:i + 2])
            if c == "Q":  # \Q...\E: literal text up to \E or the end
                end = s.find("\\E", i + 2)
                stop = n if end < 0 else end
                for j in range(i + 2, stop):
                    self._literal(self._rune(j))
                return n if end < 0 else end + 2
            if c == "z":
                self._op("eot")
                return i + 2
            if c in "pP":
                ranges, j = self._unicode_class(i)
                self._class(ranges)
                return j
            group = _PERL_GROUPS.get(s[i:i + 2])
            if group is not None:
                self._class(self._group(group))
                return i + 2
        r, j = self._escape(i)
        self._literal(r)
        return j

    def _group(self, group: tuple[int, _Ranges]) -> _Ranges:
        sign, rs = group
        if self.flags & _FOLD:
            rs = _fold(rs)
        return _negate(rs) if sign < 0 else list(rs)

    def _unicode_class(self, i: int) -> tuple[_Ranges, int]:
        """``\\p``/``\\P`` at ``i`` (Go commits to parsing it or failing)."""
        s = self.s
        n = len(s)
        sign = -1 if s[i + 1] == "P" else +1
        j = i + 2
        if j < n:
            self._rune(j)
        if j >= n or s[j] != "{":
            end = min(j + 1, n)
            seq, name = s[i:end], s[i + 2:end]
        else:
            close = s.find("}", i)
            if close < 0:
                self._check_utf8(s[i:])
                raise GoRegexError(INVALID_CHAR_RANGE, s[i:])
            end = close + 1
            seq, name = s[i:end], s[i + 3:close]
            self._check_utf8(name)
        if name.startswith("^"):
            sign = -sign
            name = name[1:]
        kind, tab, folds, tsign = _unicode_table(name)
        if not kind:
            raise GoRegexError(INVALID_CHAR_RANGE, seq)
        if kind == "script":
            if self.unsupported is None:
                self.unsupported = (f"the Unicode script class {seq} is not supported")
            return [], end
        if tsign < 0:
            sign = -sign
        assert tab is not None
        if self.flags & _FOLD and folds:
            tab = _fold(tab)
        return (_negate(tab) if sign < 0 else tab), end

    def _escape(self, i: int) -> tuple[int, int]:
        """Go's ``parseEscape``: one escaped character at ``i`` -> (code point, end)."""
        s = self.s
        n = len(s)
        j = i + 1
        if j >= n:
            raise GoRegexError(TRAILING_BACKSLASH, "")
        c = s[j]
        self._rune(j)
        j += 1
        if c in "1234567" and not (j < n and "0" <= s[j] <= "7"):
            pass  # a single non-zero digit is a backreference: not supported
        elif c in "01234567":
            r = ord(c) - 48
            for _ in range(2):
                if j < n and "0" <= s[j] <= "7":
                    r = r * 8 + ord(s[j]) - 48
                    j += 1
                else:
                    break
            return r, j
        elif c == "x":
            if j < n:
                c2 = s[j]
                self._rune(j)
                j += 1
                if c2 == "{":
                    nhex = 0
                    r = 0
                    while True:
                        if j >= n:
                            break
                        c3 = s[j]
                        self._rune(j)
                        j += 1
                        if c3 == "}":
                            if nhex:
                                return r, j
                            break
                        v = _unhex(c3)
                        if v < 0:
                            break
                        r = r * 16 + v
                        if r > MAX_RUNE:
                            break
                        nhex += 1
                else:
                    x = _unhex(c2)
                    if j < n:
                        self._rune(j)
                        y = _unhex(s[j])
                        j += 1
                        if x >= 0 and y >= 0:
                            return x * 16 + y, j
        elif c in _ESCAPES:
            return _ESCAPES[c], j
        elif ord(c) < 0x80 and not _isalnum(c):
            return ord(c), j  # escaped punctuation is itself (\_ included)
        raise GoRegexError(INVALID_ESCAPE, s[i:j])

    def _parse_class(self, i: int) -> int:
        """A bracketed class at ``i``; pushes it and returns the index after ``]``."""
        s = self.s
        n = len(s)
        j = i + 1
        sign = +1
        if j < n and s[j] == "^":
            sign = -1
            j += 1
        fold = self.flags & _FOLD
        parts: list[tuple[int, int]] = []
        first = True  # ] is a literal as the first character
        while j >= n or s[j] != "]" or first:
            first = False
            if j + 2 < n and s[j] == "[" and s[j + 1] == ":":
                k = s.find(":]", j + 2)
                if k >= 0:
                    name = s[j:k + 2]
                    group = _POSIX_GROUPS.get(name)
                    if group is None:
                        raise GoRegexError(INVALID_CHAR_RANGE, name)
                    parts.extend(self._group(group))
                    j = k + 2
                    continue
            if j + 1 < n and s[j] == "\\" and s[j + 1] in "pP":
                ranges, j = self._unicode_class(j)
                parts.extend(ranges)
                continue
            if j + 1 < n and s[j] == "\\":
                group = _PERL_GROUPS.get(s[j:j + 2])
                if group is not None:
                    parts.extend(self._group(group))
                    j += 2
                    continue
            start = j
            lo, j = self._class_char(j, i)
            hi = lo
            if j + 1 < n and s[j] == "-" and s[j + 1] != "]":  # [a-] is a and -
                hi, j = self._class_char(j + 1, i)
                if hi < lo:
                    raise GoRegexError(INVALID_CHAR_RANGE, s[start:j])
            parts.extend(_fold([(lo, hi)]) if fold else [(lo, hi)])
        ranges = _clean(parts)
        if sign < 0:
            ranges = _negate(ranges)
        self._class(ranges)
        return j + 1

    def _class_char(self, j: int, class_start: int) -> tuple[int, int]:
        s = self.s
        if j >= len(s):
            raise GoRegexError(MISSING_BRACKET, s[class_start:])
        if s[j] == "\\":
            return self._escape(j)
        return self._rune(j), j + 1


def _collapse(op: str, subs: list[_Node]) -> _Node:
    """One ``op`` node over ``subs``; as in Go, never a concat of a concat (or alt of alt)."""
    if len(subs) == 1:
        return subs[0]
    flat: list[_Node] = []
    for sub in subs:
        if sub.op == op:
            flat.extend(sub.subs)
        else:
            flat.append(sub)
    return _Node(op, subs=flat)


def _concat(items: list[_Node]) -> _Node:
    return _collapse("concat", items) if items else _Node("empty")


def _alternate(f: _Frame) -> _Node:
    return _collapse("alt", f.alts + [_concat(f.items)])


def _repeat_is_valid(node: _Node, n: int) -> bool:
    """Go's ``repeatIsValid``: nested counts multiplied stay within ``n``."""
    if node.op == "repeat":
        m = node.max
        if m == 0:
            return True
        if m < 0:
            m = node.min
        if m > n:
            return False
        if m > 0:
            n //= m
    return all(_repeat_is_valid(sub, n) for sub in node.subs)


def _check_limits(root: _Node, s: str, num_runes: int) -> None:
    """Go's size limits: tree height, compiled size, runes in classes (error text = Go's).

    Heights and sizes follow Go's formulas on this tree; Go also merges alternatives while
    parsing, so a pattern within a few percent of the limits may be judged differently.
    """
    if num_runes > _MAX_RUNES:
        raise GoRegexError(LARGE, s)
    height: dict[int, int] = {}
    size: dict[int, int] = {}
    # post-order without recursion (the tree may be ~1000 deep)
    stack: list[tuple[_Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if not done:
            stack.append((node, True))
            stack.extend((sub, False) for sub in node.subs)
            continue
        subs = node.subs
        op = node.op
        if op == "concat":
            # runs of literals with the same case flag are one node in Go's tree
            kids: list[_Node] = []
            for sub in subs:
                if (sub.op == "lit" and kids and kids[-1].op == "lit"
                        and (kids[-1].flags ^ sub.flags) & _FOLD == 0):
                    continue
                kids.append(sub)
            h = max(height[id(k)] for k in kids) + (len(kids) > 1)
        else:
            h = 1 + max((height[id(k)] for k in subs), default=0)
        if h > _MAX_HEIGHT:
            raise GoRegexError(NESTING_DEPTH, s)
        height[id(node)] = h
        if op in ("concat", "alt"):
            z = sum(size[id(k)] for k in subs) + (len(subs) - 1 if op == "alt" else 0)
        elif op in ("cap", "star"):
            z = 2 + size[id(subs[0])]
        elif op in ("plus", "quest"):
            z = 1 + size[id(subs[0])]
        elif op == "repeat":
            sub_size = size[id(subs[0])]
            if node.max == -1:
                z = 2 + sub_size if node.min == 0 else 1 + node.min * sub_size
            else:
                z = node.max * sub_size + (node.max - node.min)
        else:
            z = 1
        z = max(1, z)
        if z > _MAX_SIZE:
            raise GoRegexError(LARGE, s)
        size[id(node)] = z


# ------------------------------------------------------------------------------ emitting

def _lit(c: int) -> str:
    ch = chr(c)
    if _isalnum(ch) or ch == "_":
        return ch
    if 0x20 <= c < 0x7F:
        return "\\" + ch
    if c < 0x100:
        return f"\\x{c:02x}"
    if c < 0x10000:
        return f"\\u{c:04x}"
    return f"\\U{c:08x}"


def _class_items(rs: _Ranges) -> str:
    out = []
    for lo, hi in rs:
        if lo == hi:
            out.append(_lit(lo))
        elif hi == lo + 1:
            out.append(_lit(lo) + _lit(hi))
        else:
            out.append(_lit(lo) + "-" + _lit(hi))
    return "".join(out)


def _emit_class(rs: _Ranges) -> str:
    if not rs:
        return "(?!)"
    if rs == [(0, MAX_RUNE)]:
        return "(?s:.)"
    if len(rs) == 1 and rs[0][0] == rs[0][1]:
        return _lit(rs[0][0])
    neg = _negate(rs)
    if len(neg) < len(rs):
        return "[^" + _class_items(neg) + "]"
    return "[" + _class_items(rs) + "]"


_ASSERTIONS = {"bot": "\\A", "eot": "\\Z", "bol": "(?m:^)", "eol": "(?m:$)",
               "wb": "(?a:\\b)", "empty": "",
               # not (?a:\B): Python's \B never matches in an empty string, Go's does
               "nwb": "(?:(?<=[0-9A-Za-z_])(?=[0-9A-Za-z_])|(?<![0-9A-Za-z_])(?![0-9A-Za-z_]))"}
_QUANT = {"star": "*", "plus": "+", "quest": "?"}


def _emit(node: _Node) -> str:
    op = node.op
    if op == "lit":
        if node.flags & _FOLD:
            orbit = _orbit(node.rune)
            if len(orbit) > 1:
                return _emit_class(_clean([(c, c) for c in orbit]))
        return _lit(node.rune)
    if op == "class":
        return _emit_class(node.ranges or [])
    if op in _ASSERTIONS:
        return _ASSERTIONS[op]
    if op == "cap":
        inner = _emit(node.subs[0])
        return inner if node.subs[0].op == "alt" else "(?:" + inner + ")"
    if op == "concat":
        return "".join(_emit(sub) for sub in node.subs)
    if op == "alt":
        return "(?:" + "|".join(_emit(sub) for sub in node.subs) + ")"
    sub = node.subs[0]
    inner = _emit(sub)
    atomic = sub.op in ("lit", "cap", "alt") or (sub.op == "class" and bool(sub.ranges))
    if not atomic:
        inner = "(?:" + inner + ")"
    q = _QUANT.get(op)
    if q is None:
        if node.max == node.min:
            q = "{%d}" % node.min
        elif node.max < 0:
            q = "{%d,}" % node.min
        else:
            q = "{%d,%d}" % (node.min, node.max)
    if node.flags & _NON_GREEDY:
        q += "?"
    return inner + q


# ------------------------------------------------------------------------------ API

_DEEP = threading.Lock()


_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")


def _deep(fn: Callable[[Unpack[_Ts]], _T], *args: Unpack[_Ts]) -> _T:
    """Run ``fn`` with room for the ~1000-deep trees Go accepts (Python's re recurses too)."""
    try:
        return fn(*args)
    except RecursionError:
        pass
    with _DEEP:
        old = sys.getrecursionlimit()
        sys.setrecursionlimit(max(old, 20000))
        try:
            return fn(*args)
        finally:
            sys.setrecursionlimit(old)


def _translate(pattern: str) -> str:
    p = _Parser(pattern)
    root = p.parse()
    if p.unsupported:
        raise GoRegexUnsupported(pattern, p.unsupported)
    return _emit(root)


def translate(pattern: str) -> str:
    """The Python ``re`` pattern matching exactly what Go's ``regexp`` matches with ``pattern``.

    Raises :class:`GoRegexError` (Go's message) for what Go refuses, and
    :class:`GoRegexUnsupported` for Unicode script classes.
    """
    return _deep(_translate, pattern)


@functools.lru_cache(maxsize=256)
def compile_go(pattern: str) -> re.Pattern[str]:
    """``regexp.Compile(pattern)`` as a Python pattern; search it with :func:`go_text` input."""
    return _deep(re.compile, translate(pattern))


_SURROGATES = re.compile("[\ud800-\udfff]")


def go_text(text: str) -> str:
    """The string Go's regexp sees: each byte of invalid UTF-8 (held here as a surrogate, as
    ``surrogateescape`` decodes it) reads as U+FFFD."""
    return _SURROGATES.sub("\ufffd", text) if _SURROGATES.search(text) else text


def match_string(pattern: str, text: str) -> bool:
    """Go's ``regexp.MatchString(pattern, text)``: matches anywhere; raises on a bad pattern."""
    return compile_go(pattern).search(go_text(text)) is not None
