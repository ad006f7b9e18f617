"""Go regexp (RE2) patterns as sops 3.11 uses them: sops_enclave.goregex and its call sites.

The expectations below are Go's answers; ``test_table_is_what_go_decides`` and
``test_errors_are_what_go_says`` check them against the real sops binary, which compiles
crypt-rule regexps and ``path_regex`` with Go's ``regexp``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from sops_enclave import goregex
from sops_enclave.errors import SopsError
from sops_enclave.goregex import GoRegexError, GoRegexUnsupported, compile_go, translate
from sops_enclave.walk import CryptRule

TALOS = r"((?i)(pass|secret($|[^N])|ca|crt|key|token|^data$|^stringData$))"

# (pattern, keys Go matches, keys Go does not match)
TABLE = [
    (TALOS, ["password", "SECRET", "secretX", "apiKey", "CA", "data", "stringData", "myToken",
             "\u212aey"], ["secretN", "secretn", "mydata", "username", "Datas"]),
    (r"^[[:alpha:]]+Key$", ["apiKey", "xKey"], ["Key", "a1Key", "apiKey\n", "[:Key", "\u00e9Key"]),
    (r"^[[:^alpha:]]+$", ["12", "-_"], ["a1"]),
    (r"^[[:digit:][:upper:]]+$", ["A1"], ["a1"]),
    (r"^[[:xdigit:]]+$", ["09afAF"], ["g"]),
    (r"^[[:punct:]]+$", ["!/:@[`{~"], ["a!"]),
    (r"^[[:space:]]+$", [" \t\n\x0b\x0c\r"], ["\u00a0"]),
    (r"^[[:blank:]]+$", [" \t"], ["\n"]),
    (r"^[[:word:]]+$", ["a_1"], ["a-1"]),
    (r"\Qpass.word\E", ["pass.word", "my.pass.word"], ["passXword"]),
    (r"^\Q[x]*\E$", ["[x]*"], ["x", "[x]"]),
    (r"^\Qa\E*$", ["", "aaa"], ["b"]),
    (r"^\pL+$", ["abc", "\u00e9t\u00e9", "\u03a9\u03bc\u03ad\u03b3\u03b1"], ["a1", "\u0663", "a b"]),
    (r"^\p{Lu}", ["Abc", "\u03a9x"], ["abc"]),
    (r"^\PL$", ["1", "-"], ["a", "\u00e9"]),
    (r"^\p{^L}$", ["1"], ["a"]),
    (r"^\P{^L}$", ["a"], ["1"]),
    (r"^\p{Nd}$", ["\u0663", "7"], ["x"]),
    (r"^\pl\p{ u_p-p e r case letter }$", ["aB"], ["ab"]),
    (r"^\p{Letter}\p{Any}\p{ASCII}$", ["a\nb"], ["a\n\u00e9"]),
    (r"^\pC$", ["\u0378", "\ue000", "\u00ad"], ["a"]),
    (r"^\p{Assigned}$", ["a"], ["\u0378"]),
    (r"^[\p{Nd}a]$", ["\u0663", "a"], ["b"]),
    (r"^[^\pL]$", ["1"], ["a"]),
    (r"^(?i:ab)c$", ["ABc", "aBc"], ["ABC"]),
    (r"a(?i)b|c", ["aB", "C"], ["AB", "Ab"]),
    (r"^(a(?i)b)c$", ["aBc"], ["aBC"]),
    (r"(?i)^k$", ["K", "k", "\u212a"], ["x"]),
    (r"(?i)^s$", ["S", "\u017f"], ["x"]),
    (r"(?i)^i$", ["I"], ["\u0131", "\u0130"]),
    (r"(?i)^\x{1E9E}$", ["\u00df"], ["ss"]),
    (r"(?i)^\x{3A3}$", ["\u03c2", "\u03c3"], ["s"]),
    (r"(?i)^\x{3F4}$", ["\u03b8", "\u03d1"], ["x"]),
    (r"(?i)^\x{390}$", ["\u0390"], ["\u1fd3"]),
    (r"(?i)^[^k]$", ["x"], ["K", "\u212a"]),
    (r"(?i)^\W$", ["-"], ["\u212a", "\u017f"]),
    (r"(?i)^\w$", ["\u212a", "\u017f"], ["-"]),
    (r"(?i)^[[:upper:]]$", ["a"], ["1"]),
    (r"(?i)^\p{Lu}$", ["a", "\u0345"], ["1"]),
    (r"(?i)^\p{LC}$", ["a"], ["\u0345"]),
    (r"(?i)^[k-m]$", ["\u212a", "L"], ["n"]),
    (r"^(?i)A(?-i)B$", ["aB"], ["ab"]),
    (r"^(?U)a+$", ["aaa"], ["b"]),
    (r"^(?U)(a+?)(b*)$", ["aab"], ["ba"]),
    (r"(?i-s)^A.B$", ["a-b"], ["a\nb"]),
    (r"(?s)^a.b$", ["a\nb"], ["ab"]),
    (r"^a.b$", ["a-b", "a\u00e9b", "a\U0001f600b"], ["a\nb"]),
    (r"a$", ["ba"], ["a\n"]),
    (r"(?m)a$", ["a\nb", "a\n"], ["ab"]),
    (r"^b", ["b"], ["a\nb"]),
    (r"(?m)^b", ["a\nb"], ["ab"]),
    (r"(?sm)^a.b$", ["x\na\nb\ny"], ["x\na\ncb"]),
    (r"a\z", ["a"], ["a\n"]),
    (r"\Aa", ["ab"], ["ba"]),
    (r"\bx", ["\u00e9x", " x", "x"], ["_x", "ax"]),
    (r"^\B$", [""], ["a"]),
    (r"a\B", ["ab"], ["a", "a-"]),
    (r"^\d+$", ["123"], ["\u0663"]),
    (r"^\w+$", ["a_1"], ["\u00e9"]),
    (r"^\s$", [" ", "\t", "\x0c"], ["\x0b", "\u00a0"]),
    (r"^[\d\s]+$", ["1 2"], ["\x0b"]),
    (r"^[^\S\n]$", [" "], ["\n"]),
    (r"^[^a]$", ["\n"], ["a"]),
    (r"^.$", ["\u00e9", "\U0001f600"], ["\n"]),
    (r"^\x{10FFFF}|\x7f|^\101\x{263a}$", ["\U0010ffff", "\x7f", "A\u263a"], ["A"]),
    (r"^\123\12$", ["S\n"], ["S"]),
    (r"^\a\f\t\n\r\v$", ["\x07\x0c\t\n\r\x0b"], ["afv"]),
    (r"^a{2,3}$", ["aa", "aaa"], ["a", "aaaa"]),
    (r"^a{2,}?$", ["aaaa"], ["a"]),
    (r"^a{,3}$", ["a{,3}"], ["aaa"]),
    (r"^a{01}$", ["a{01}"], ["a"]),
    (r"^x{0}y$", ["y"], ["xy"]),
    (r"^(?P<n>a)(?<m>b)(?:c)$", ["abc"], ["ab"]),
    (r"^(?P<n>a)(?P<n>b)$", ["ab"], ["a"]),
    (r"^[]a]+$", ["]a"], ["b"]),
    (r"^[a-]+$", ["a-"], ["b"]),
    (r"^[\d-z]+$", ["1-z"], ["y"]),
    (r"^(|a)$", ["", "a"], ["b"]),
    (r"^()$", [""], ["a"]),
    (r"^(a*)*b", ["aab"], ["a"]),
    (r"^a(?i)*$", ["aaa"], ["A"]),
    (r"^\.\$\^\-\_\ \{$", [".$^-_ {"], ["x"]),
    (r"^(?)a$", ["a"], ["b"]),
]

# (pattern, Go's regexp.Compile error)
ERRORS = [
    (r"(?<=a)b", "invalid named capture: `(?<=a)b`"),
    (r"(?<!a)b", "invalid named capture: `(?<!a)b`"),
    (r"(?=a)", "invalid or unsupported Perl syntax: `(?=`"),
    (r"(?!a)", "invalid or unsupported Perl syntax: `(?!`"),
    (r"(?>a)", "invalid or unsupported Perl syntax: `(?>`"),
    (r"(?<", "invalid or unsupported Perl syntax: `(?<`"),
    (r"(?P=n)", "invalid or unsupported Perl syntax: `(?P`"),
    (r"(?#x)", "invalid or unsupported Perl syntax: `(?#`"),
    (r"(?i", "invalid or unsupported Perl syntax: `(?i`"),
    (r"(?-)", "invalid or unsupported Perl syntax: `(?-)`"),
    (r"(?i-)", "invalid or unsupported Perl syntax: `(?i-)`"),
    (r"(?--i)", "invalid or unsupported Perl syntax: `(?--`"),
    (r"(?P<a-b>x)", "invalid named capture: `(?P<a-b>`"),
    (r"(?P<>a)", "invalid named capture: `(?P<>`"),
    (r"(?P<a", "invalid named capture: `(?P<a`"),
    (r"(a)\1", "invalid escape sequence: `\\1`"),
    (r"\18", "invalid escape sequence: `\\1`"),
    (r"\8", "invalid escape sequence: `\\8`"),
    (r"a\Z", "invalid escape sequence: `\\Z`"),
    (r"\G", "invalid escape sequence: `\\G`"),
    (r"\C", "invalid escape sequence: `\\C`"),
    (r"\y", "invalid escape sequence: `\\y`"),
    ("\\\u00e9", "invalid escape sequence: `\\\u00e9`"),
    (r"[\Qab\E]", "invalid escape sequence: `\\Q`"),
    (r"[\b]", "invalid escape sequence: `\\b`"),
    (r"[a-\d]", "invalid escape sequence: `\\d`"),
    (r"\x{110000}", "invalid escape sequence: `\\x{110000`"),
    (r"\xZ1", "invalid escape sequence: `\\xZ1`"),
    (r"\x1", "invalid escape sequence: `\\x1`"),
    (r"\x{}", "invalid escape sequence: `\\x{}`"),
    (r"a++", "invalid nested repetition operator: `++`"),
    (r"a**", "invalid nested repetition operator: `**`"),
    (r"x*?+", "invalid nested repetition operator: `*?+`"),
    (r"x{2}{3}", "invalid nested repetition operator: `{2}{3}`"),
    (r"a{1001}", "invalid repeat count: `{1001}`"),
    (r"a{2,1}", "invalid repeat count: `{2,1}`"),
    (r"(a{2}){501}", "invalid repeat count: `{501}`"),
    (r"((a{1000}){1,}){2}", "invalid repeat count: `{2}`"),
    (r"*", "missing argument to repetition operator: `*`"),
    (r"(*)", "missing argument to repetition operator: `*`"),
    (r"a|*", "missing argument to repetition operator: `*`"),
    (r"(?i)+", "missing argument to repetition operator: `+`"),
    (r"a)", "unexpected ): `a)`"),
    (r"(a", "missing closing ): `(a`"),
    (r"((", "missing closing ): `((`"),
    (r"ab[cd", "missing closing ]: `[cd`"),
    (r"[^]", "missing closing ]: `[^]`"),
    (r"[[:alpha:]", "missing closing ]: `[[:alpha:]`"),
    (r"[[:foo:]]", "invalid character class range: `[:foo:]`"),
    (r"[z-a]", "invalid character class range: `z-a`"),
    (r"\p", "invalid character class range: `\\p`"),
    (r"\pX", "invalid character class range: `\\pX`"),
    (r"\p{Foo", "invalid character class range: `\\p{Foo`"),
    (r"\p{}", "invalid character class range: `\\p{}`"),
    (r"\p{^}", "invalid character class range: `\\p{^}`"),
    (r"\p{Old_Italic}", "invalid character class range: `\\p{Old_Italic}`"),
    ("a\\", "trailing backslash at end of expression: ``"),
    ("(" * 1000 + "a" + ")" * 1000,
     "expression nests too deeply: `" + "(" * 1000 + "a" + ")" * 1000 + "`"),
    ("a{1000}" * 3400, "expression too large: `" + "a{1000}" * 3400 + "`"),
]


def _sops_matches(sops_bin, env, age_key, pattern, keys, tmp_path) -> dict[str, bool]:
    """Which of ``keys`` Go's regexp matches, as sops decides: encrypt a JSON document with
    one top-level key per string and ``--encrypted-regex pattern``, see which got ENC[."""
    keys = list(dict.fromkeys(keys))
    src = tmp_path / "keys.json"
    src.write_text(json.dumps({k: "v" for k in keys}), encoding="utf-8")
    out = subprocess.run([sops_bin, "encrypt", "--age", age_key[1], "--encrypted-regex",
                          pattern, str(src)], env=env, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    enc = json.loads(out.stdout)
    return {k: enc[k].startswith("ENC[") for k in keys}


def _ours(pattern: str, keys) -> dict[str, bool]:
    rx = compile_go(pattern)
    return {k: rx.search(k) is not None for k in dict.fromkeys(keys)}


# ================================================================ the translator alone

@pytest.mark.parametrize("pattern,yes,no", TABLE, ids=[t[0][:40] for t in TABLE])
def test_table(pattern, yes, no):
    got = _ours(pattern, yes + no)
    assert got == {**{k: True for k in yes}, **{k: False for k in no}}


@pytest.mark.parametrize("pattern,message", ERRORS, ids=[e[0][:30] for e in ERRORS])
def test_refused_with_gos_message(pattern, message):
    with pytest.raises(GoRegexError) as ei:
        translate(pattern)
    assert str(ei.value) == f"error parsing regexp: {message}"
    assert isinstance(ei.value, ValueError)


@pytest.mark.filterwarnings("ignore:Possible nested set:FutureWarning")
def test_python_would_read_these_differently():
    # the bug: Python's re compiles the RE2 text to something else (or refuses it)
    assert re.search(r"^[[:alpha:]]+Key$", "apiKey") is None
    assert compile_go(r"^[[:alpha:]]+Key$").search("apiKey")
    assert re.search("a$", "a\n") and not compile_go("a$").search("a\n")
    assert re.search(r"^\d$", "\u0663") and not compile_go(r"^\d$").search("\u0663")
    assert re.search(r"(?i)^i$", "\u0131") and not compile_go(r"(?i)^i$").search("\u0131")
    with pytest.raises(re.error):
        re.compile(TALOS)
    assert compile_go(TALOS).search("dbPassword")


def test_all_fourteen_posix_classes_are_ascii():
    ascii_ = [chr(c) for c in range(128)]
    want = {"alnum": str.isalnum, "alpha": str.isalpha, "ascii": lambda c: True,
            "blank": lambda c: c in " \t", "cntrl": lambda c: ord(c) < 32 or ord(c) == 127,
            "digit": str.isdigit, "graph": lambda c: 33 <= ord(c) <= 126,
            "lower": str.islower, "print": lambda c: 32 <= ord(c) <= 126,
            "punct": lambda c: 33 <= ord(c) <= 126 and not c.isalnum(),
            "space": lambda c: c in " \t\n\v\f\r", "upper": str.isupper,
            "word": lambda c: c.isalnum() or c == "_",
            "xdigit": lambda c: c in "0123456789abcdefABCDEF"}
    assert len(want) == 14
    for name, pred in want.items():
        rx = compile_go(f"^[[:{name}:]]$")
        neg = compile_go(f"^[[:^{name}:]]$")
        for c in ascii_:
            assert bool(rx.search(c)) == pred(c), (name, c)
            assert bool(neg.search(c)) != pred(c), (name, c)
        assert not rx.search("\u00e9") and neg.search("\u00e9")


def test_flags_scope_and_ungreedy_output():
    assert translate(r"(?U)a+b*?") == "a+?b*"
    assert translate(r"(?U)a+?(?-U)b+") == "a+b+"
    assert translate(r"(?i:a)b") == "[Aa]b"
    assert translate(r"(a(?i)b)c") == "(?:a[Bb])c"
    assert translate(r"a(?i)b|c") == "(?:a[Bb]|[Cc])"
    assert translate(r"^x$") == r"\Ax\Z"
    assert translate(r"(?m)^x$") == "(?m:^)x(?m:$)"
    assert translate(".") == "[^\\x0a]" and translate("(?s).") == "(?s:.)"
    assert translate(r"\d\w\s") == "[0-9][0-9A-Z_a-z][\\x09\\x0a\\x0c\\x0d\\ ]"


def test_unicode_script_classes_are_refused_clearly():
    for p in (r"\p{Greek}", r"[\p{Han}a]", r"\P{latin}", r"x|\p{^Cyrillic}"):
        with pytest.raises(GoRegexUnsupported, match="Unicode script class"):
            compile_go(p)
    # a later syntax error is what Go reports (the pattern never compiles there)
    with pytest.raises(GoRegexError, match="missing closing"):
        compile_go(r"\p{Greek}(")


def test_invalid_utf8_in_pattern_and_text():
    with pytest.raises(GoRegexError, match="invalid UTF-8"):
        translate("a\udc80")
    # a key holding bytes that are not UTF-8 reads as U+FFFD in Go
    assert goregex.match_string(r"^a\x{FFFD}$", "a\udcff")
    assert not goregex.match_string(r"\x{DCFF}", "a\udcff")


def test_deep_but_valid_nesting_compiles():
    p = "(" * 999 + "a" + ")" * 999
    assert compile_go(p).search("xa")
    p = "(?:" * 3000 + "a" + ")" * 3000  # non-capturing groups leave no node in Go's tree
    assert compile_go(p).search("a")
    assert compile_go("a{1000}" * 3000).search("a" * 3000000)


def test_crypt_rule_is_compiled_lazily_and_bad_regex_matches_nothing():
    # Loading a rule never compiles it (filestatus, metadata); sops' regexp.Match ignores
    # the compile error, so a refused pattern matches nothing.
    assert not CryptRule("encrypted_regex", r"\1").should_encrypt(["a"], [[]], False)
    assert CryptRule("unencrypted_regex", r"(?<=x)").should_encrypt(["x"], [[]], False)
    rule = CryptRule("encrypted_regex", r"\p{Greek}")
    with pytest.raises(SopsError, match="encrypted_regex: .*script class"):
        rule.should_encrypt(["a"], [[]], False)
    assert CryptRule("encrypted_regex", TALOS).should_encrypt(["db", "apiKey"], [[]], False)
    assert not CryptRule("encrypted_regex", TALOS).should_encrypt(["secretN"], [[]], False)


def test_config_path_regex_uses_go_syntax():
    from sops_enclave.config import ConfigError, load_config

    cfg = load_config(b"creation_rules:\n  - path_regex: '(?i)SECRETS/[[:alnum:]]+\\.ya?ml\\z'\n"
                      b"    age: age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\n"
                      b"  - age: age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\n"
                      b"    path_regex: '\\.bak$'\n", "/p/.sops.yaml")
    assert cfg.creation_rule_for("/p/secrets/app1.yml").path_regex.startswith("(?i)")
    assert cfg.creation_rule_for("/p/secrets/app1.yaml.bak").path_regex == "\\.bak$"
    bad = load_config(b"creation_rules:\n  - path_regex: '(?=x)'\n    age: a\n", "/p/.sops.yaml")
    with pytest.raises(ConfigError) as ei:
        bad.creation_rule_for("/p/x")
    assert ei.value.message == ("can not compile regexp: error parsing regexp: invalid or "
                                "unsupported Perl syntax: `(?=`")


# ================================================================ against the real sops

def test_table_is_what_go_decides(sops_bin, base_env, age_key, tmp_path):
    for pattern, yes, no in TABLE:
        want = {**{k: True for k in yes}, **{k: False for k in no}}
        assert _sops_matches(sops_bin, base_env, age_key, pattern, yes + no, tmp_path) == want, \
            pattern


def _sops_path_regex_error(sops_bin, env, age_key, pattern, d: Path) -> tuple[int, str]:
    d.mkdir()
    (d / ".sops.yaml").write_text("creation_rules:\n  - path_regex: " + json.dumps(pattern)
                                  + "\n    age: " + age_key[1] + "\n")
    (d / "x.json").write_text('{"a": "b"}')
    out = subprocess.run([sops_bin, "encrypt", "x.json"], cwd=d, env=env, capture_output=True,
                         timeout=60)
    return out.returncode, out.stderr.decode().strip()


def test_errors_are_what_go_says(sops_bin, base_env, age_key, tmp_path):
    for k, (pattern, message) in enumerate(ERRORS):
        rc, err = _sops_path_regex_error(sops_bin, base_env, age_key, pattern, tmp_path / str(k))
        assert (rc, err) == (1, f"can not compile regexp: error parsing regexp: {message}"), \
            pattern[:80]


@pytest.mark.parametrize("pattern", [r"(?<=a)b", r"\1", r"a{1001}", r"[[:foo:]]", TALOS + "("])
def test_bad_path_regex_same_exit_and_message_as_sops(sops_bin, enclave_bin, base_env,
                                                      age_key, tmp_path, pattern):
    want = _sops_path_regex_error(sops_bin, base_env, age_key, pattern, tmp_path / "s")
    d = tmp_path / "e"
    d.mkdir()
    for name in (".sops.yaml", "x.json"):
        (d / name).write_bytes((tmp_path / "s" / name).read_bytes())
    out = subprocess.run([*enclave_bin, "encrypt", "x.json"], cwd=d, env=base_env,
                         capture_output=True, timeout=60)
    assert (out.returncode, out.stderr.decode().strip()) == want
    assert want[0] == 1 and want[1].startswith("can not compile regexp: error parsing regexp:")


# ---------------------------------------------------------------- property test

_KEY_CHARS = "aAbBkKsSxX1_ -.\n\u00e9\u212a\u017f\u0131\u0130\u0663\u03c3\u03a3"
_LIT_CHARS = "abkKsSxX1_-. \u00e9\u03c3"
_CLASS_ITEMS = ["a", "b-k", "K", "0-9", "_", "\\-", "\\.", "\\d", "\\w", "\\s", "\\D", "\\W",
                "[:alpha:]", "[:^digit:]", "[:upper:]", "[:punct:]", "[:space:]", "\\pL",
                "\\p{Lu}", "\\PN", "\\x{e9}", "\\n"]
_FLAGS = ["i", "s", "m", "U", "i-s", "-i", "im", "sU"]


@st.composite
def _regex(draw, depth: int = 0) -> tuple[str, str]:
    """A random RE2 pattern and a string built alongside it that often (not always) matches."""
    choices = ["lit", "lit", "dot", "class", "perl", "anchor", "quote", "escape", "unicode"]
    if depth < 3:
        choices += ["concat", "concat", "alt", "group", "repeat", "repeat", "flags"]
    kind = draw(st.sampled_from(choices))
    if kind == "lit":
        c = draw(st.sampled_from(_LIT_CHARS))
        return ("\\" + c if c in ".-" else c), draw(st.sampled_from([c, c.swapcase()]))
    if kind == "dot":
        return ".", draw(st.sampled_from(_KEY_CHARS))
    if kind == "class":
        items = draw(st.lists(st.sampled_from(_CLASS_ITEMS), min_size=1, max_size=3))
        neg = draw(st.booleans())
        return "[" + ("^" if neg else "") + "".join(items) + "]", draw(st.sampled_from(_KEY_CHARS))
    if kind == "perl":
        return draw(st.sampled_from(["\\d", "\\w", "\\s", "\\D", "\\W", "\\S"])), \
            draw(st.sampled_from(_KEY_CHARS))
    if kind == "anchor":
        return draw(st.sampled_from(["^", "$", "\\A", "\\z", "\\b", "\\B"])), ""
    if kind == "quote":
        text = draw(st.text(alphabet="ab.*(", min_size=0, max_size=3))
        return "\\Q" + text + "\\E", text
    if kind == "escape":
        return draw(st.sampled_from([("\\x41", "A"), ("\\x{3c3}", "\u03c3"), ("\\101", "A"),
                                     ("\\t", "\t"), ("\\n", "\n"), ("\\_", "_")]))
    if kind == "unicode":
        return draw(st.sampled_from(["\\pL", "\\p{Lu}", "\\PL", "\\p{Nd}", "\\p{^Ll}"])), \
            draw(st.sampled_from(_KEY_CHARS))
    if kind == "concat":
        parts = draw(st.lists(_regex(depth + 1), min_size=2, max_size=3))
        return "".join(p for p, _ in parts), "".join(s for _, s in parts)
    if kind == "alt":
        parts = draw(st.lists(_regex(depth + 1), min_size=2, max_size=3))
        return "(?:" + "|".join(p for p, _ in parts) + ")", draw(st.sampled_from(parts))[1]
    if kind == "group":
        p, s = draw(_regex(depth + 1))
        return draw(st.sampled_from(["(%s)", "(?:%s)", "(?P<g>%s)", "(?<h>%s)"])) % p, s
    if kind == "flags":
        p, s = draw(_regex(depth + 1))
        f = draw(st.sampled_from(_FLAGS))
        return draw(st.sampled_from(["(?%s:%s)", "((?%s)%s)"])) % (f, p), \
            draw(st.sampled_from([s, s.swapcase()]))
    p, s = draw(_regex(depth + 1))
    op, times = draw(st.sampled_from([("*", 2), ("+", 1), ("?", 1), ("{2}", 2), ("{1,3}", 3),
                                      ("{0,}", 0), ("{2,}", 3), ("*?", 1), ("+?", 2)]))
    return "(?:" + p + ")" + op, s * times


@settings(max_examples=int(os.environ.get("SOPS_ENCLAVE_PROPERTY_EXAMPLES", "40")),
          deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                HealthCheck.too_slow])
@given(rx=_regex(), extra=st.lists(st.text(alphabet=_KEY_CHARS, max_size=5), min_size=20,
                                   max_size=30))
def test_property_encrypted_keys_agree_with_sops(sops_bin, base_env, age_key, tmp_path, rx,
                                                 extra):
    pattern, sample = rx
    keys = [sample, "x" + sample, sample + "\n", sample.upper(), sample.lower(), *extra]
    keys = list(dict.fromkeys(keys))
    want = _sops_matches(sops_bin, base_env, age_key, pattern, keys, tmp_path)
    assert _ours(pattern, keys) == want, (pattern, translate(pattern))


# ---------------------------------------------------------------- end to end

DOC = b"""\
apiKey: k1
username: u1
db:
    password: p1
    user_1: u2
    nested:
        token: t1
        plain: x
stringData:
    anything: v
data: d
caBundle: c
secretName: sn
port_2: 5432
list:
    - secretKey: s
    - name: nm
    - 3
"""

E2E = [
    TALOS,
    r"^[[:alpha:]]+Key$",
    r"\Qpassword\E|\Qtoken\E",
    r"^\pL+$",
    r"^\p{Ll}+$",
    r"(?i:PASSWORD|^DATA$)",
    r"(?U)^(s.+)Key$",
    r"(?i)^[[:upper:]]{4}$",
]


def _enc_paths(text: bytes) -> set[str]:
    """Dotted paths of values that are ENC[...] (the sops block left out)."""
    out: set[str] = set()

    def walk(v, path):
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, f"{path}.{k}")
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(x, f"{path}[{i}]")
        elif isinstance(v, str) and v.startswith("ENC["):
            out.add(path)

    data = yaml.safe_load(text)
    data.pop("sops")
    walk(data, "")
    return out


def _run(cmd, env, cwd=None):
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, timeout=120)


@pytest.mark.parametrize("pattern", E2E)
def test_end_to_end_with_sops(sops_bin, enclave_bin, base_env, age_key, tmp_path, pattern):
    src = tmp_path / "doc.yaml"
    src.write_bytes(DOC)
    theirs = _run([sops_bin, "encrypt", "--age", age_key[1], "--encrypted-regex", pattern,
                   str(src)], base_env)
    assert theirs.returncode == 0, theirs.stderr
    enc = _enc_paths(theirs.stdout)
    assert 0 < len(enc) < 14, enc  # the rule selects some of the 14 values, not all
    f_theirs = tmp_path / "theirs.yaml"
    f_theirs.write_bytes(theirs.stdout)
    # sops' file decrypts to sops' bytes (the MAC checks: the same values are encrypted)
    want = _run([sops_bin, "decrypt", str(f_theirs)], base_env)
    got = _run([*enclave_bin, "-d", str(f_theirs)], base_env)
    assert want.returncode == 0 and want.stdout == DOC
    assert (got.returncode, got.stdout) == (0, want.stdout), got.stderr
    # and our file encrypts exactly the same values, and sops decrypts it
    ours = _run([*enclave_bin, "encrypt", "--age", age_key[1], "--encrypted-regex", pattern,
                 str(src)], base_env)
    assert ours.returncode == 0, ours.stderr
    assert _enc_paths(ours.stdout) == enc
    assert _masked(ours.stdout) == _masked(theirs.stdout)
    f_ours = tmp_path / "ours.yaml"
    f_ours.write_bytes(ours.stdout)
    back = _run([sops_bin, "decrypt", str(f_ours)], base_env)
    assert (back.returncode, back.stdout) == (0, DOC), back.stderr


def test_posix_class_key_is_encrypted_like_sops(sops_bin, enclave_bin, base_env, age_key,
                                               tmp_path):
    # the worst case: apiKey written in clear where sops encrypts it
    src = tmp_path / "doc.yaml"
    src.write_bytes(DOC)
    ours = _run([*enclave_bin, "encrypt", "--age", age_key[1], "--encrypted-regex",
                 r"^[[:alpha:]]+Key$", str(src)], base_env)
    assert ours.returncode == 0, ours.stderr
    assert _enc_paths(ours.stdout) == {".apiKey", ".list[0].secretKey"}


def test_sops_yaml_rules_with_re2_regexes(sops_bin, enclave_bin, base_env, age_key, tmp_path):
    cfg = (f"creation_rules:\n"
           f"  - path_regex: '(?i)^SECRETS/[[:alnum:]]+\\.ya?ml\\z'\n"
           f"    encrypted_regex: '{TALOS}'\n"
           f"    age: {age_key[1]}\n"
           f"  - path_regex: '\\.ya?ml$'\n"
           f"    encrypted_regex: '^\\Qusername\\E$'\n"
           f"    age: {age_key[1]}\n")
    results = {}
    for who, cmd in (("sops", [sops_bin]), ("ours", enclave_bin)):
        d = tmp_path / who
        (d / "Secrets").mkdir(parents=True)
        (d / ".sops.yaml").write_text(cfg)
        for name in ("Secrets/app1.yaml", "Secrets/app-1.yaml"):
            (d / name).write_bytes(DOC)
            out = _run([*cmd, "encrypt", name], base_env, cwd=d)
            assert out.returncode == 0, out.stderr
            results[who, name] = out.stdout
            (d / (name + ".enc")).write_bytes(out.stdout)
            back = _run([sops_bin, "decrypt", "--input-type", "yaml", "--output-type", "yaml",
                         name + ".enc"], base_env, cwd=d)
            assert (back.returncode, back.stdout) == (0, DOC), back.stderr
    for name in ("Secrets/app1.yaml", "Secrets/app-1.yaml"):
        assert _enc_paths(results["ours", name]) == _enc_paths(results["sops", name])
    assert ".db.password" in _enc_paths(results["ours", "Secrets/app1.yaml"])
    assert _enc_paths(results["ours", "Secrets/app-1.yaml"]) == {".username"}


def _masked(text: bytes) -> bytes:
    """The document part of an encrypted YAML file with every ENC[...] replaced by <enc>."""
    body = text[:text.index(b"\nsops:\n") + 1]
    return re.sub(rb"ENC\[AES256_GCM,[^\]]*\]", b"<enc>", body)


COMMENTED = b"""\
# sops:enc
db_password: p1
user: u1
# SOPS:ENC
token: t1
#  plain
other: o1
"""


@pytest.mark.parametrize("flag,pattern,doc,expect_any", [
    ("--encrypted-regex", r"(a)\1", DOC, False),       # Go refuses it: matches nothing
    ("--unencrypted-regex", r"(?<=x)y", DOC, True),    # ... so everything is encrypted
    ("--encrypted-comment-regex", r"[[:nope:]]", COMMENTED, False),
    ("--encrypted-comment-regex", r"^\s?[[:lower:]]+:enc\z", COMMENTED, True),
    ("--unencrypted-comment-regex", r"(?i)^ SOPS:ENC$", COMMENTED, True),
])
def test_rules_as_in_sops(sops_bin, enclave_bin, base_env, age_key, tmp_path, flag, pattern,
                          doc, expect_any):
    """Legacy form (``-e``), the only one with the comment-regex flags in sops 3.11."""
    src = tmp_path / "doc.yaml"
    src.write_bytes(doc)
    args = ["-e", "--age", age_key[1], flag, pattern, str(src)]
    theirs = _run([sops_bin, *args], base_env)
    ours = _run([*enclave_bin, *args], base_env)
    assert theirs.returncode == 0, theirs.stderr
    assert ours.returncode == 0, ours.stderr
    assert _masked(ours.stdout) == _masked(theirs.stdout)
    assert (b"<enc>" in _masked(theirs.stdout)) == expect_any
    for who, out in (("theirs", theirs.stdout), ("ours", ours.stdout)):
        f = tmp_path / f"{who}.yaml"
        f.write_bytes(out)
        want = _run([sops_bin, "-d", str(f)], base_env)
        got = _run([*enclave_bin, "-d", str(f)], base_env)
        assert want.returncode == 0, want.stderr
        assert (got.returncode, got.stdout) == (0, want.stdout), got.stderr


def test_filestatus_never_compiles_the_stored_regex(sops_bin, enclave_bin, base_env, age_key,
                                                   tmp_path):
    src = tmp_path / "doc.yaml"
    src.write_bytes(DOC)
    for k, pattern in enumerate([TALOS, r"(a)\1", r"\p{Greek}", "(("]):
        enc = _run([sops_bin, "encrypt", "--age", age_key[1], "--encrypted-regex", pattern,
                    str(src)], base_env)
        assert enc.returncode == 0
        f = tmp_path / f"f{k}.yaml"
        f.write_bytes(enc.stdout)
        want = _run([sops_bin, "filestatus", str(f)], base_env)
        got = _run([*enclave_bin, "filestatus", str(f)], base_env)
        assert (got.returncode, got.stdout) == (want.returncode, want.stdout) \
            == (0, b'{"encrypted":true}\n'), (pattern, got.stderr)


def test_script_class_is_an_error_not_a_different_file(sops_bin, enclave_bin, base_env,
                                                      age_key, tmp_path):
    src = tmp_path / "doc.yaml"
    src.write_bytes(b"\xce\xb1\xce\xb2: greek\nplain: x\n")
    theirs = _run([sops_bin, "encrypt", "--age", age_key[1], "--encrypted-regex",
                   r"^\p{Greek}+$", str(src)], base_env)
    assert theirs.returncode == 0 and _enc_paths(theirs.stdout) == {".\u03b1\u03b2"}
    ours = _run([*enclave_bin, "encrypt", "--age", age_key[1], "--encrypted-regex",
                 r"^\p{Greek}+$", str(src)], base_env)
    assert ours.returncode != 0 and not ours.stdout
    assert b"script class \\p{Greek} is not supported" in ours.stderr
    f = tmp_path / "theirs.yaml"
    f.write_bytes(theirs.stdout)
    got = _run([*enclave_bin, "-d", str(f)], base_env)
    assert got.returncode != 0 and not got.stdout
    assert b"script class" in got.stderr

