"""The INI store (go-ini rules), checked against the real sops 3.11 binary wherever possible."""

from __future__ import annotations

import math
import subprocess

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sops_enclave.errors import ErrorDumpingTree
from sops_enclave.formats import ini
from sops_enclave.tree import Branch, Comment, Timestamp

from sops_cli import VECTORS, needs_sops
from sops_cli import age_key as _age, run_sops as _run


def sops_encrypt(data: bytes, fmt: str = "ini", name: str = "f.ini"
                 ) -> subprocess.CompletedProcess:
    return _run(["encrypt", "--age", _age()[1], "--input-type", fmt, "--output-type", "ini",
                 name], {name: data})


def sops_decrypt(enc: bytes, *extra: str, name: str = "f.enc.ini"
                 ) -> subprocess.CompletedProcess:
    return _run(["decrypt", *extra, name], {name: enc})


def _unmarshal_msg(stderr: bytes) -> str:
    text = stderr.decode("utf-8", "surrogateescape")
    prefix = "Error unmarshalling file: "
    assert text.startswith(prefix), text
    return text[len(prefix):][:-1]  # sops adds one newline after the message


def _go_panicked(stderr: bytes) -> bool:
    return b"panic: runtime error: index out of range" in stderr


def _masked(tree: Branch) -> Branch:
    """The tree as sops writes it encrypted: every non-empty value/comment an ENC string."""
    enc = "ENC[AES256_GCM,data:x,iv:y,tag:z,type:str]"
    return Branch((name, Branch(((Comment(enc if k.value else ""), None)
                                 if isinstance(k, Comment) else (k, enc if v else ""))
                                for k, v in sec)) for name, sec in tree)


def _rereads_the_same(tree: Branch) -> bool:
    """Whether go-ini reads the encrypted file sops writes for ``tree`` back with the same keys.

    It does not for a few key names: ``-`` is loaded as the auto-increment key ``#1`` and
    written back as ``#1 = ...``, a comment line; a key holding both a backtick and a ``"`` is
    written between backticks and cut at the inner one. sops then cannot decrypt its own
    file (or decrypts other keys), so there is nothing to compare with.
    """
    masked = _masked(tree)
    # empty comments are not written at all, by sops or by us
    expected = Branch((name, Branch((k, v) for k, v in sec if k != Comment("")))
                      for name, sec in masked)
    return ini.load_plain(ini.emit_plain([masked]))[0] == expected


def check_against_sops(data: bytes) -> None:
    """emit_plain(load_plain(x)) == sops decrypt (sops encrypt x); parse errors agree."""
    enc = sops_encrypt(data)
    if enc.returncode == 203:  # a [sops] section: refused, not the store's business
        assume(False)
    if enc.returncode == 2:
        with pytest.raises(ValueError) as ei:
            ini.load_plain(data)
        assert str(ei.value) == _unmarshal_msg(enc.stderr)
        return
    assert enc.returncode == 0, enc.stderr
    tree = ini.load_plain(data)
    if not _rereads_the_same(tree[0]):
        assume(False)
    dec = sops_decrypt(enc.stdout)
    if dec.returncode != 0 and _go_panicked(dec.stderr):
        # go-ini indexes line[0] of every comment line and panics on an empty one
        with pytest.raises(ErrorDumpingTree):
            ini.emit_plain(tree)
        return
    assert dec.returncode == 0, dec.stderr
    assert ini.emit_plain(tree) == dec.stdout


# ------------------------------------------------------------------ differential round trip

EDGE_CASES = [
    b"[foo]\nbar = baz\n",
    b"; top comment\nk1=v1\n;c2\n[sec]\na = 1 ; inline\n# above b\nb: \"x\"\n",
    b"x = a#b\na = 1 ; c\nc = \"quoted ; not comment\"\nd = \"a\"\ne = 'a'\n"
    b"f = \"  spaced  \"\ng = \"a\"b\"\nh = \"unterminated\n",
    b"e = `backtick # x`\nf = \"\"\"triple\nmulti\"\"\"\nj = x\\\n  continued\n"
    b"k3 = \\;escaped\nk =\n",
    b"[sec]\nk=1\n[sec]\nk=2\n[SEC]\nKey=1\nkey=2\nkey=3\n",
    b"top = v\n[DEFAULT]\ndk = dv\n[sec]\nx=1\n",
    b"x          = a\nlonger_key = v\ng: colon\ni =   padded   \n",
    b"",
    b"\n\n  \n",
    b"novalue\n",
    b"[unclosed\n",
    b"[]\nk=v\n",
    b"= v\n",
    b";; double\n#  hash sp\n[s]\nk=v\n",
    b"[s]\nk=v\n; trailing comment\n",
    b"a=1\r\nb = 2 ; c\r\n; above\r\n; above2\r\nc=3\r\n[s]\r\nd = \"\"\"x\r\ny\"\"\"\r\n",
    b"; sec comment\r\n# second line\r\n[s]\r\nk = v\r\n",
    b"k = `unterminated\nmore\n",
    b"k = \"\"\"a\nb\n",
    b"\"quoted key\" = v\n`bt key` = w\n\"\"\"tq key\"\"\" = z\n\"unclosed = 1\n",
    b"k = v\nk2 = x ; c1\nk2 = y\n",
    b"; c1\nk = 1\nk = 2\n",
    b"[s] ; header comment\nk=v\n",
    b"k = \"\"\"a\"\"\" trailing ; c\nk2 = `b` # c2\n",
    b"\xef\xbb\xbfk = v\n",
    b"k = caf\xc3\xa9\n\xc3\xa9\xc3\xa9 = 1\nlongish = 2\n",
    b"k = \xff\xfe\n",
    b"j = x\\\n\nk = y\n",
    b"j = x\\\n  y\\\n  z ; c\n",
    b"j = x \\\n",
    b"a = \t tab\t\nb = \xc2\xa0nbsp\xc2\xa0\nc = \x1cfs\x1c\n",
    b"[ spaced ]\nk=v\n[a]b]\nk=v\n",
    b"k = v\n[empty]\n[s2]\nx=1\n",
    b"k=v\n#\n",
    b"#\nk=v\n",
    b"[s]\n;\nk=v\n",
    b";\n; b\nk = v\n",
    b"[default]\nk=v\n",
    b"  [indented]\n  k = v\n\t; c\n\tk2 = w\n",
    b"k = 'it''s'\nk2 = ''\nk3 = \"\"\nk4 = \"\"\"\n",
    b"path = C:\\dir\\\nnext = 1\n",
    b"k_unencrypted = plain\n[s_unencrypted]\nk = plain too\n",
    b"a:b = c\nurl = http://x.y/z?q=1\n",
    b"k = \"\"\"multi\nline\"\"\" ; after\nk2 = `one\ntwo` # c\n",
    # go-ini 1.67.1: a closing line ending in a backslash does not close a multi-line value
    b"k = \"\"\"a\nb\"\"\"\\\nc\"\"\"\nz=1\n",
    b"k = `a\nb` \\ \nc`\n",
    b"k = \"\"\"a\nb\"\"\" ; c\\\nd\"\"\"  ; cm\n",
    b"k = \"\"\"a\"\"\"\\\n",
    b"k=\"\"\"\n\"\"\"\\",
    b"k=\"\"\"\nab\"\"\"cd\\\nx\n",
]


@needs_sops
@pytest.mark.parametrize("data", EDGE_CASES, ids=[repr(c)[:40] for c in EDGE_CASES])
def test_plain_round_trip_matches_sops(data):
    check_against_sops(data)


_NAME = list("abXY09 _.-é") + ["\xa0"]
_VALUE = list("ab09 _.=:é\t\"'`#;\\") + ["\xa0", "\x1c", "\\n", "\r", "\xff"]


def _piece(chars, min_size, max_size):
    return st.lists(st.sampled_from(chars), min_size=min_size, max_size=max_size).map("".join)


@st.composite
def ini_files(draw) -> bytes:
    lines: list[str] = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["kv", "kv", "kv", "kv", "section", "comment", "blank",
                                     "multi", "cont", "quoted", "bad"]))
        ind = draw(st.sampled_from(["", "", " ", "\t"]))
        if kind in ("kv", "multi", "cont", "quoted"):
            key = draw(_piece(_NAME, 1, 5))
            if draw(st.integers(0, 9)) == 0:
                key = draw(st.sampled_from(['"k=1"', "`k`", '"""q"""'])) + key
            head = ind + key + draw(st.sampled_from(["=", " = ", ": ", " :", "=  "]))
            val = draw(_piece(_VALUE, 0, 8))
            if kind == "kv":
                lines.append(head + val)
            elif kind == "multi":
                q = draw(st.sampled_from(['"""', "`"]))
                lines.append(head + q + val)
                for _ in range(draw(st.integers(0, 1))):
                    lines.append(draw(_piece(_VALUE, 0, 6)))
                lines.append(draw(_piece(_VALUE, 0, 6)) + q + draw(_piece(_VALUE, 0, 4))
                             + draw(st.sampled_from(["", "", "\\", " \\ ", " ; c"])))
            elif kind == "cont":
                lines.append(head + val + "\\")
                for _ in range(draw(st.integers(0, 2))):
                    lines.append(ind + draw(_piece(_VALUE, 0, 6)) + "\\")
                lines.append(ind + draw(_piece(_VALUE, 0, 6)))
            else:
                q = draw(st.sampled_from(['"', "'"]))
                lines.append(head + q + val + q + draw(st.sampled_from(["", " ", " ; c"])))
        elif kind == "section":
            name = draw(_piece(_NAME, 1, 5))
            assume(name != "sops")
            lines.append(ind + "[" + name + "]" + draw(st.sampled_from(["", " ", " ; c", "x"])))
        elif kind == "comment":
            lines.append(ind + draw(st.sampled_from([";", "#", ";;", "# ", "; #"]))
                         + draw(_piece(_VALUE, 0, 6)))
        elif kind == "blank":
            lines.append(draw(st.sampled_from(["", " ", "\t"])))
        else:
            lines.append(ind + draw(_piece(["x", " ", "y"], 1, 4)))
    eol = draw(st.sampled_from(["\n", "\n", "\r\n"]))
    text = eol.join(lines) + draw(st.sampled_from(["", eol]))
    # "\xff" stands for one raw byte that is not UTF-8
    return text.encode("utf-8").replace("\xff".encode("utf-8"), b"\xff")


@needs_sops
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(ini_files())
def test_plain_round_trip_matches_sops_hypothesis(data):
    check_against_sops(data)


@needs_sops
@pytest.mark.parametrize("data,rc", [(b"- = x\n", 51), (b"a`\"\"\"= v\n", 25),
                                     (b"a`\"\"\"=\n", 0)])
def test_keys_sops_cannot_read_back(data, rc):
    """sops encrypts these, but its own file does not parse back to the same keys."""
    tree = ini.load_plain(data)[0]
    assert not _rereads_the_same(tree)
    enc = sops_encrypt(data)
    assert enc.returncode == 0, enc.stderr
    # the data part sops wrote has our layout (keys, alignment, quoting); only values differ
    head = enc.stdout.partition(b"[sops]\n")[0]
    mine = ini.emit_plain([_masked(tree)])
    assert [ln.partition(b" = ")[0] for ln in head.splitlines()] == \
        [ln.partition(b" = ")[0] for ln in (mine + b"\n").splitlines()]
    dec = sops_decrypt(enc.stdout)
    assert dec.returncode == rc


def test_auto_increment_keys():
    """go-ini turns a key `-` into `#1`, `#2`... per section; sops writes them back as-is."""
    tree = ini.load_plain(b"- = x\n- = y\n[s]\n- = z\n")[0]
    assert tree == Branch([("DEFAULT", Branch([("#1", "x"), ("#2", "y")])),
                           ("s", Branch([("#1", "z")]))])
    assert ini.emit_plain([tree]) == b"#1 = x\n#2 = y\n\n[s]\n#1 = z\n"


def test_tree_structure():
    data = (b"; c0\nk0 = v0\n; s1\n[s1]\n; about a\na = 1 ; inline\nb = 2\n"
            b"[s2] ; hdr\nc: \"q\"\n; dropped\n")
    assert ini.load_plain(data) == [Branch([
        ("DEFAULT", Branch([("k0", "v0"), (Comment("c0"), None)])),
        ("s1", Branch([(Comment("s1"), None), ("a", "1"), (Comment("about a\n; inline"), None),
                       ("b", "2")])),
        ("s2", Branch([(Comment("hdr"), None), ("c", "q")])),
    ])]
    assert ini.load_plain(b"")[0] == Branch([("DEFAULT", Branch())])


# ------------------------------------------------------------------ load_encrypted

def _shape(branch: Branch) -> list:
    out = []
    for name, sec in branch:
        items = []
        for k, v in sec:
            if isinstance(k, Comment):
                items.append(("#", "" if k.value == "" else "ENC"))
            else:
                plain = v == "" or k.endswith("_unencrypted") or name.endswith("_unencrypted")
                items.append((k, v if plain else "ENC"))
        out.append((name, items))
    return out


def _check_age_metadata(md: Branch) -> None:
    assert md.keys_() == ["age", "lastmodified", "mac", "unencrypted_suffix", "version"]
    age = md.get("age")
    assert isinstance(age, list) and len(age) == 1
    assert age[0].keys_() == ["enc", "recipient"]
    assert age[0].get("recipient") == _age()[1]
    enc = age[0].get("enc")
    assert enc.startswith("-----BEGIN AGE ENCRYPTED FILE-----\n")
    assert enc.endswith("-----END AGE ENCRYPTED FILE-----\n")
    assert "\\n" not in enc
    assert md.get("mac").startswith("ENC[AES256_GCM,data:")
    assert md.get("unencrypted_suffix") == "_unencrypted"
    assert md.get("version") == "3.11.0"
    lm = md.get("lastmodified")
    assert len(lm) == 20 and lm.endswith("Z") and lm[10] == "T"


ENCRYPT_CASES = [
    b"; top\nk1 = v1\nempty =\n[sec]\n; about a\na = 1 ; inline\nb_unencrypted = plain\n"
    b"m = \"\"\"x\ny\"\"\"\n[other_unencrypted]\nz = 1\n[sec]\nagain = 2\n",
    b"",
    b"[foo]\nbar = baz\n",
    b"top = v\n[DEFAULT]\ndk = dv\n",
    b"a=1\r\n[s]\r\nb = 2\r\n",
]


def _split_sops_section(data: bytes) -> tuple[bytes, list[bytes]]:
    head, sep, tail = data.partition(b"[sops]\n")
    assert sep, data
    return head, tail.splitlines()


@needs_sops
@pytest.mark.parametrize("data", ENCRYPT_CASES, ids=[repr(c)[:30] for c in ENCRYPT_CASES])
def test_load_encrypted_on_sops_files(data):
    enc = sops_encrypt(data)
    assert enc.returncode == 0, enc.stderr
    branches, md = ini.load_encrypted(enc.stdout)
    assert len(branches) == 1
    assert branches[0][0][0] == "DEFAULT"
    assert _shape(branches[0]) == _shape(ini.load_plain(data)[0])
    for name, sec in branches[0]:
        for k, v in sec:
            if isinstance(k, Comment):
                assert k.value.startswith("ENC[AES256_GCM,data:")
                assert k.value.endswith(",type:comment]")
            elif v and not k.endswith("_unencrypted") and not name.endswith("_unencrypted"):
                assert v.startswith("ENC[AES256_GCM,data:") and v.endswith(",type:str]")
    _check_age_metadata(md)


@needs_sops
@pytest.mark.parametrize("data", ENCRYPT_CASES, ids=[repr(c)[:30] for c in ENCRYPT_CASES])
def test_emit_encrypted_matches_sops_file(data):
    enc = sops_encrypt(data)
    assert enc.returncode == 0, enc.stderr
    branches, md = ini.load_encrypted(enc.stdout)
    out = ini.emit_encrypted(branches, md)
    # the data part and the section layout are byte-identical; sops 3.11 writes the [sops]
    # keys in random order (a Go map), so compare those lines as a set
    their_head, their_md = _split_sops_section(enc.stdout)
    my_head, my_md = _split_sops_section(out)
    assert my_head == their_head
    assert sorted(my_md) == sorted(their_md)
    assert len(my_md) == len(their_md)
    keys = [ln.split(b" ", 1)[0] for ln in my_md]
    assert keys == sorted(keys)
    # and the real sops can decrypt what we wrote
    dec_theirs = sops_decrypt(enc.stdout)
    dec_mine = sops_decrypt(out)
    assert dec_mine.returncode == 0, dec_mine.stderr
    assert dec_mine.stdout == dec_theirs.stdout


@needs_sops
def test_emit_encrypted_typed_metadata_decrypts():
    enc = sops_encrypt(b"[s]\nk = v\n")
    branches, md = ini.load_encrypted(enc.stdout)
    typed = Branch([
        ("shamir_threshold", 0 + 1),
        ("key_groups", [Branch([("hc_vault", []), ("age", md.get("age"))])]),
        ("lastmodified", md.get("lastmodified")),
        ("mac", md.get("mac")),
        ("unencrypted_suffix", "_unencrypted"),
        ("mac_only_encrypted", False),
        ("version", md.get("version")),
    ])
    out = ini.emit_encrypted(branches, typed)
    assert b"\nshamir_threshold" in out and b"= 1\n" in out
    assert b"\nmac_only_encrypted " in out and b"= false\n" in out
    assert b"hc_vault" not in out
    dec = sops_decrypt(out)
    assert dec.returncode == 0, dec.stderr
    assert dec.stdout == b"[s]\nk = v\n"


def test_load_encrypted_without_metadata_and_multiline_metadata():
    branches, md = ini.load_encrypted(b"[s]\nk = v\n")
    assert md is None
    assert branches == [Branch([("DEFAULT", Branch()), ("s", Branch([("k", "v")]))])]
    data = (b"[s]\nk = v\n\n[sops]\nb__list_0__map_enc = \"\"\"line1\nline2\n\"\"\"\n"
            b"a = x\\ny\nversion = 3.13.1\n")
    branches, md = ini.load_encrypted(data)
    assert branches == [Branch([("DEFAULT", Branch()), ("s", Branch([("k", "v")]))])]
    assert md == Branch([("a", "x\ny"), ("b", [Branch([("enc", "line1\nline2\n")])]),
                         ("version", "3.13.1")])
    # metadata newlines are written back escaped, as 3.11 and 3.13.2 do
    out = ini.emit_encrypted(branches, md)
    assert out == (b"[s]\nk = v\n\n[sops]\na                  = x\\ny\n"
                   b"b__list_0__map_enc = line1\\nline2\\n\nversion            = 3.13.1\n")


# ------------------------------------------------------------------ real vectors

def _vector(name: str) -> bytes:
    p = VECTORS / name
    if not p.is_file():
        pytest.skip(f"test vector {p} not found (../shared/vectors is not part of a checkout)")
    return p.read_bytes()


def _check_pgp_metadata(md: Branch, version: str, n_keys: int = 1) -> None:
    assert md.keys_() == ["lastmodified", "mac", "pgp", "unencrypted_suffix", "version"]
    pgp = md.get("pgp")
    assert len(pgp) == n_keys
    assert pgp[0].get("fp") == "FBC7B9E2A4F9289AC0C1D4843D16CEE4A27381B4"
    for entry in pgp:
        assert entry.keys_() == ["created_at", "enc", "fp"]
        assert entry.get("enc").startswith("-----BEGIN PGP MESSAGE-----\n\n")
        assert entry.get("enc").endswith("\n-----END PGP MESSAGE-----")
    assert md.get("version") == version
    assert md.get("mac").startswith("ENC[AES256_GCM,data:")


def test_vector_example_ini():
    data = _vector("example.ini")
    branches, md = ini.load_encrypted(data)
    tree = branches[0]
    assert [name for name, _ in tree] == ["DEFAULT", "name", "address", "phoneNumbers",
                                         "not private"]
    assert tree[0][1] == Branch()
    name = tree.get("name")
    assert isinstance(name[0][0], Comment) and name[0][0].value.endswith(",type:comment]")
    assert name.keys_() == ["firstName", "lastName", "age"]
    assert tree.get("not private") == Branch([("notsecret_unencrypted", "hi there!")])
    _check_pgp_metadata(md, "3.5.0", n_keys=2)
    assert md.get("pgp")[1].get("fp") == "D7229043384BCC60326C6FB9D8720D957C3D3074"
    # the data part is written back exactly (3.5.0 ended the file with an extra blank line)
    out = ini.emit_encrypted(branches, md)
    assert out.partition(b"[sops]\n")[0] == data.partition(b"[sops]\n")[0]
    assert sorted(out.partition(b"[sops]\n")[2].splitlines()) == \
        sorted(data.partition(b"[sops]\n")[2].splitlines()[:-1])


def test_vector_format_enc_ini():
    data = _vector("functional-tests_res_format.enc.ini")
    branches, md = ini.load_encrypted(data)
    assert [n for n, _ in branches[0]] == ["DEFAULT", "foo"]
    assert branches[0].get("foo").keys_() == ["bar"]
    _check_pgp_metadata(md, "3.13.2")
    # 3.13.2 sorts the [sops] keys and escapes newlines: byte for byte
    assert ini.emit_encrypted(branches, md) == data


def test_vector_format_2_enc_ini_triple_quoted_metadata():
    data = _vector("functional-tests_res_format-2.enc.ini")
    assert b'= """-----BEGIN PGP MESSAGE-----\n' in data
    branches, md = ini.load_encrypted(data)
    assert [n for n, _ in branches[0]] == ["DEFAULT", "foo"]
    _check_pgp_metadata(md, "3.13.1")
    out = ini.emit_encrypted(branches, md)
    assert out.partition(b"[sops]\n")[0] == data.partition(b"[sops]\n")[0]
    assert b'"""' not in out and b"= -----BEGIN PGP MESSAGE-----\\n\\n" in out
    assert ini.load_encrypted(out) == (branches, md)


# ------------------------------------------------------------------ non-string and nested values

@needs_sops
def test_non_string_and_nested_values_like_sops():
    """A YAML file decrypted with --output-type ini: ValToString, Go %v for nested values."""
    yaml_src = (b"sec:\n  a: 100.0\n  b: 1e6\n  c: true\n  d: null\n  e: 2024-01-01\n"
                b"  f: [1, 2]\n  g: {x: 1, y: [a, b]}\n  h: 1.23\n  i: \"x\\ny\"\n  j: \" s\"\n"
                b"  k: \"a#b\"\n  l: -.inf\n  m: \"\"\n  n: {}\n  o: []\n  p: 5\n"
                b"  'key=eq': 1\n  'k\"q': 2\n  'k`b': 3\n  'k:c': 4\n"
                b"  q: [1.5, 1e6, true, null, '', 2024-01-01, 2001-12-14t21:59:43.10-05:00,\n"
                b"      2024-01-01T10:00:00.123456789Z, [], {}, 'a b', 100.0, -0.0, .nan, x]\n"
                b"  r: {a: [1, {b: null}], c: {}}\n"
                b"  cl:\n    # c\n    - 1\n  cm:\n    # mc\n    a: 1\n"
                b"other:\n  z: 1\nempty: {}\n")
    tree = Branch([
        ("sec", Branch([
            ("a", 100.0), ("b", 1e6), ("c", True), ("d", None),
            ("e", Timestamp("2024-01-01T00:00:00Z")), ("f", [1, 2]),
            ("g", Branch([("x", 1), ("y", ["a", "b"])])), ("h", 1.23), ("i", "x\ny"),
            ("j", " s"), ("k", "a#b"), ("l", -math.inf), ("m", ""), ("n", Branch()), ("o", []),
            ("p", 5), ("key=eq", 1), ('k"q', 2), ("k`b", 3), ("k:c", 4),
            ("q", [1.5, 1e6, True, None, "", Timestamp("2024-01-01T00:00:00Z"),
                   Timestamp("2001-12-14T21:59:43.1-05:00"),
                   Timestamp("2024-01-01T10:00:00.123456789Z"), [], Branch(), "a b", 100.0,
                   -0.0, math.nan, "x"]),
            ("r", Branch([("a", [1, Branch([("b", None)])]), ("c", Branch())])),
            ("cl", [Comment(" c"), 1]),
            ("cm", Branch([(Comment(" mc"), None), ("a", 1)])),
        ])),
        ("other", Branch([("z", 1)])),
        ("empty", Branch()),
    ])
    enc = _run(["encrypt", "--age", _age()[1], "f.yaml"], {"f.yaml": yaml_src})
    assert enc.returncode == 0, enc.stderr
    dec = sops_decrypt(enc.stdout, "--output-type", "ini", name="f.enc.yaml")
    assert dec.returncode == 0, dec.stderr
    assert ini.emit_plain([tree]) == dec.stdout


@needs_sops
@pytest.mark.parametrize("yaml_src,tree", [
    (b"a: 1\n", Branch([("a", 1)])),
    (b"s:\n  - 1\n", Branch([("s", [1])])),
    (b"DEFAULT:\n  x: 1\ns: v\n", Branch([("DEFAULT", Branch([("x", 1)])), ("s", "v")])),
])
def test_top_level_non_section_error_like_sops(yaml_src, tree):
    enc = _run(["encrypt", "--age", _age()[1], "f.yaml"], {"f.yaml": yaml_src})
    assert enc.returncode == 0, enc.stderr
    dec = sops_decrypt(enc.stdout, "--output-type", "ini", name="f.enc.yaml")
    assert dec.returncode == 4
    with pytest.raises(ErrorDumpingTree) as ei:
        ini.emit_plain([tree])
    assert ei.value.message == dec.stderr.decode().removesuffix("\n")


@needs_sops
@pytest.mark.parametrize("yaml_src,tree", [
    (b"default:\n  x: 1\n", Branch([("default", Branch([("x", 1)]))])),
    (b"DEFAULT: {}\ns:\n  k: v\n", Branch([("DEFAULT", Branch()), ("s", Branch([("k", "v")]))])),
    (b"s:\n  k: v\nDEFAULT:\n  x: 1\n",
     Branch([("s", Branch([("k", "v")])), ("DEFAULT", Branch([("x", 1)]))])),
])
def test_default_section_output_like_sops(yaml_src, tree):
    enc = _run(["encrypt", "--age", _age()[1], "f.yaml"], {"f.yaml": yaml_src})
    assert enc.returncode == 0, enc.stderr
    dec = sops_decrypt(enc.stdout, "--output-type", "ini", name="f.enc.yaml")
    assert dec.returncode == 0, dec.stderr
    assert ini.emit_plain([tree]) == dec.stdout


@needs_sops
def test_emit_value_like_sops_extract():
    """--extract of a non-string with the INI store prints Go's json.Marshal of it."""
    yaml_src = (b"a: 5\nb: [1, 'a<', {c: 1}]\nc: null\nd: 1.5\ne: true\n"
                b"f: 2024-01-01T00:00:00.5Z\ng: 1e21\ns: str\n")
    values = {"a": 5, "b": [1, "a<", Branch([("c", 1)])], "c": None, "d": 1.5, "e": True,
              "f": Timestamp("2024-01-01T00:00:00.5Z"), "g": 1e21, "s": "str"}
    enc = _run(["encrypt", "--age", _age()[1], "f.yaml"], {"f.yaml": yaml_src})
    assert enc.returncode == 0, enc.stderr
    for key, value in values.items():
        dec = sops_decrypt(enc.stdout, "--output-type", "ini", "--extract", f'["{key}"]',
                           name="f.enc.yaml")
        assert dec.returncode == 0, dec.stderr
        assert ini.emit_value(value) == dec.stdout, key


def test_writer_details():
    tree = Branch([
        ("DEFAULT", Branch([(Comment("default comment"), None)])),
        ("s", Branch([
            (Comment("  plain\n#  hashed\n;x"), None),
            (Comment("orphan, dropped"), None),
            ("k", "v"), (Comment("c1"), None), (Comment("c2 wins"), None),
            ("long_key", "x"), ("k", "again"),
        ])),
    ])
    assert ini.emit_plain([tree]) == (
        b"; default comment\n;   plain\n# hashed\n; x\n[s]\n; c2 wins\nk        = again\n"
        b"long_key = x\n")
    with pytest.raises(ErrorDumpingTree, match="empty section name"):
        ini.emit_plain([Branch([("", Branch())])])
    with pytest.raises(ErrorDumpingTree, match="empty key name"):
        ini.emit_plain([Branch([("s", Branch([("", "v")]))])])


# ------------------------------------------------------------------ writer vs sops, any tree

_W_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), max_codepoint=0x2100)
                  | st.sampled_from(list(" \t\r\n\"'`#;=:[]\\\xa0\x1cé")), max_size=8)
_W_SCALAR = st.one_of(_W_TEXT, _W_TEXT, st.floats(allow_nan=False, allow_infinity=False),
                      st.booleans(), st.none())
_W_VALUE = st.one_of(_W_SCALAR, st.lists(_W_SCALAR, max_size=3),
                     st.dictionaries(_W_TEXT, _W_SCALAR, max_size=2))
_W_TREE = st.dictionaries(_W_TEXT.filter(lambda s: s != "sops"),
                          st.dictionaries(_W_TEXT, _W_VALUE, max_size=5), max_size=4)


def _to_tree(v):
    if isinstance(v, dict):
        return Branch((k, _to_tree(x)) for k, x in v.items())
    if isinstance(v, list):
        return [_to_tree(x) for x in v]
    if isinstance(v, int) and not isinstance(v, bool):
        return float(v)  # sops 3.11 decodes every JSON number as a float64
    return v


@needs_sops
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_W_TREE)
def test_writer_matches_sops_on_json_trees(doc):
    """Any sections/keys/values (as a JSON file) decrypted with --output-type ini."""
    import json

    src = json.dumps(doc).encode()
    enc = _run(["encrypt", "--age", _age()[1], "f.json"], {"f.json": src})
    assert enc.returncode == 0, enc.stderr
    dec = sops_decrypt(enc.stdout, "--output-type", "ini", name="f.enc.json")
    tree = _to_tree(doc)
    if dec.returncode != 0:
        assert dec.returncode == 4, dec.stderr
        with pytest.raises(ErrorDumpingTree) as ei:
            ini.emit_plain([tree])
        assert ei.value.message == dec.stderr.decode().removesuffix("\n")
        return
    assert ini.emit_plain([tree]) == dec.stdout
