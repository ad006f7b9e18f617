"""The dotenv store, checked against the real sops 3.11 binary wherever possible."""

from __future__ import annotations

import math
import subprocess

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sops_enclave.errors import ErrorDumpingTree
from sops_enclave.formats import dotenv
from sops_enclave.tree import Branch, Comment, Timestamp

from sops_cli import VECTORS, needs_sops
from sops_cli import age_key as _age, run_sops as _run


def sops_encrypt(data: bytes, fmt: str = "dotenv", name: str = "f.env"
                 ) -> subprocess.CompletedProcess:
    return _run(["encrypt", "--age", _age()[1], "--input-type", fmt, "--output-type", "dotenv",
                 name], {name: data})


def sops_decrypt(enc: bytes, *extra: str, name: str = "f.enc.env"
                 ) -> subprocess.CompletedProcess:
    return _run(["decrypt", *extra, name], {name: enc})


def _unmarshal_msg(stderr: bytes) -> str:
    text = stderr.decode("utf-8", "surrogateescape")
    prefix = "Error unmarshalling file: "
    assert text.startswith(prefix), text
    return text[len(prefix):].rstrip("\n")


def check_against_sops(data: bytes) -> None:
    """emit_plain(load_plain(x)) == sops decrypt (sops encrypt x); parse errors agree."""
    enc = sops_encrypt(data)
    if enc.returncode == 203:  # a data key starting with sops_: refused, not our business
        assume(False)
    if enc.returncode == 2:
        with pytest.raises(ValueError) as ei:
            dotenv.load_plain(data)
        assert str(ei.value).rstrip("\r") == _unmarshal_msg(enc.stderr).rstrip("\r")
        return
    assert enc.returncode == 0, enc.stderr
    dec = sops_decrypt(enc.stdout)
    assert dec.returncode == 0, dec.stderr
    assert dotenv.emit_plain(dotenv.load_plain(data)) == dec.stdout


# ------------------------------------------------------------------ differential round trip

EDGE_CASES = [
    b"A=1\n",
    b'B="quoted value"\nC=\'single\'\nK="unterminated\n',
    b"export D=exported\nF=a=b=c\nH = spaced = x\nI=trailing space   \n",
    b"J=x # not a comment\n=emptykey\nE=\n#\n# a comment\n#no space\n",
    b"G=multi\\nline\nN=back\\\\nslash\nM=tab\\there\nT=\ttab\n",
    b"  # indented comment\n",
    b"no equals sign\n",
    b"A=1\r\nB=2\r\n",
    b"A=1\r\n\r\nB=2\r\n",
    b"A=1",
    b"",
    b"\n\n\n",
    b"A=1\n\n\nA=2\n",
    b"#\xc3\xa9t\xc3\xa9\nU=\xe2\x98\xba\nX=\xff\xfe raw\n",
    b"A=\\n\nB=\\n\\n\nC=x\\\n",
    b"Q=\"a\\nb\"\nR='#'\n",
    b"a=1\n#c1\n#c2\nb=2\n#trailing\n",
    b"S=x\x00y\n",
    b"K_unencrypted=plain\nk=secret\n",
]


@needs_sops
@pytest.mark.parametrize("data", EDGE_CASES, ids=[repr(c)[:40] for c in EDGE_CASES])
def test_plain_round_trip_matches_sops(data):
    check_against_sops(data)


_KEY_CHARS = list("AbZ_09 .-'\"=é\t") + ["export ", "\\n"]
_VAL_CHARS = list("ab09 =#'\"\\\t;:é☺$") + ["\\n", "\\\\n", "\r", "\xff"]


def _piece(chars, max_size):
    return st.lists(st.sampled_from(chars), max_size=max_size).map("".join)


@st.composite
def dotenv_files(draw) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["kv", "kv", "kv", "comment", "blank", "bad"]))
        if kind == "kv":
            key = draw(_piece([c for c in _KEY_CHARS if c != "="], 5))
            lines.append(key + "=" + draw(_piece(_VAL_CHARS, 8)))
        elif kind == "comment":
            lines.append(draw(st.sampled_from(["#", "  #", "# "])) + draw(_piece(_VAL_CHARS, 6)))
        elif kind == "blank":
            lines.append(draw(st.sampled_from(["", " ", "\r"])))
        else:
            lines.append(draw(_piece(["x", " ", "y"], 4)))
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    text = eol.join(lines) + draw(st.sampled_from(["", eol]))
    # "\xff" stands for one raw byte that is not UTF-8
    return text.encode("utf-8").replace("\xff".encode("utf-8"), b"\xff")


@needs_sops
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(dotenv_files())
def test_plain_round_trip_matches_sops_hypothesis(data):
    check_against_sops(data)


# ------------------------------------------------------------------ load_encrypted

def _shape(branch: Branch) -> list:
    out = []
    for k, v in branch:
        if isinstance(k, Comment):
            out.append(("#", "" if k.value == "" else "ENC"))
        else:
            out.append((k, v if (v == "" or k.endswith("_unencrypted")) else "ENC"))
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
    assert all(isinstance(v, str) for k, v in md if k != "age")


ENCRYPT_CASES = [
    b"A=1\nB=\n#comment\n#\nC_unencrypted=plain\nD=multi\\nline\n",
    b"",
    b"foo = bar\n",
    b"X=1\r\nY=\"q\"\r\n",
    b"dup=1\ndup=2\n",
]


@needs_sops
@pytest.mark.parametrize("data", ENCRYPT_CASES, ids=[repr(c)[:30] for c in ENCRYPT_CASES])
def test_load_encrypted_on_sops_files(data):
    enc = sops_encrypt(data)
    assert enc.returncode == 0, enc.stderr
    branches, md = dotenv.load_encrypted(enc.stdout)
    assert len(branches) == 1
    plain = dotenv.load_plain(data)[0]
    assert _shape(branches[0]) == _shape(plain)
    for k, v in branches[0]:
        if isinstance(k, Comment):
            assert k.value == "" or k.value.startswith("ENC[AES256_GCM,data:")
            assert k.value == "" or k.value.endswith(",type:comment]")
        elif v and not k.endswith("_unencrypted"):
            assert v.startswith("ENC[AES256_GCM,data:") and v.endswith(",type:str]")
    _check_age_metadata(md)


@needs_sops
@pytest.mark.parametrize("data", ENCRYPT_CASES, ids=[repr(c)[:30] for c in ENCRYPT_CASES])
def test_emit_encrypted_reproduces_sops_file(data):
    enc = sops_encrypt(data)
    assert enc.returncode == 0, enc.stderr
    branches, md = dotenv.load_encrypted(enc.stdout)
    assert dotenv.emit_encrypted(branches, md) == enc.stdout


@needs_sops
def test_emit_encrypted_from_typed_metadata_decrypts():
    """Metadata as the core hands it over (ints, bools, unsorted keys, empty lists)."""
    enc = sops_encrypt(b"A=1\n")
    branches, md = dotenv.load_encrypted(enc.stdout)
    typed = Branch([
        ("key_groups", [Branch([("hc_vault", []), ("age", md.get("age"))])]),
        ("lastmodified", md.get("lastmodified")),
        ("mac", md.get("mac")),
        ("unencrypted_suffix", "_unencrypted"),
        ("version", md.get("version")),
    ])
    # a single key group written as key_groups is unusual but valid; keys come out sorted
    out = dotenv.emit_encrypted(branches, typed)
    lines = out.decode().splitlines()
    meta = [ln.split("=", 1)[0] for ln in lines if ln.startswith("sops_")]
    assert meta == sorted(meta)
    assert "sops_key_groups__list_0__map_age__list_0__map_recipient" in meta
    assert not any("hc_vault" in k for k in meta)
    dec = sops_decrypt(out)
    assert dec.returncode == 0, dec.stderr
    assert dec.stdout == b"A=1\n"

    out2 = dotenv.emit_encrypted(branches, Branch(list(md) + [("shamir_threshold", 3),
                                                             ("mac_only_encrypted", True)]))
    assert b"\nsops_mac_only_encrypted=true\n" in out2
    assert b"\nsops_shamir_threshold=3\n" in out2


def test_load_encrypted_without_metadata():
    branches, md = dotenv.load_encrypted(b"A=1\n#c\n")
    assert md is None
    assert branches == [Branch([("A", "1"), (Comment("c"), None)])]


def test_load_encrypted_metadata_anywhere_last_wins():
    data = (b"sops_version=3.0\nA=1\nsops_age__list_0__map_enc=x\\ny\n#c\n"
            b"sops_version=3.11.0\nsops_lastmodified=t\n")
    branches, md = dotenv.load_encrypted(data)
    assert branches == [Branch([("A", "1"), (Comment("c"), None)])]
    assert md == Branch([("age", [Branch([("enc", "x\ny")])]), ("lastmodified", "t"),
                         ("version", "3.11.0")])


def test_load_encrypted_bad_flattening():
    with pytest.raises(ValueError, match="Incomplete list"):
        dotenv.load_encrypted(b"sops_age__list_1__map_enc=x\n")
    with pytest.raises(ValueError, match="Type mismatch"):
        dotenv.load_encrypted(b"sops_age=x\nsops_age__list_0__map_enc=y\n")


# ------------------------------------------------------------------ real vectors

def _vector(name: str) -> bytes:
    p = VECTORS / name
    if not p.is_file():
        pytest.skip(f"test vector {p} not found (../shared/vectors is not part of a checkout)")
    return p.read_bytes()


def test_vector_format_enc_env():
    data = _vector("functional-tests_res_format.enc.env")
    branches, md = dotenv.load_encrypted(data)
    assert len(branches) == 1 and len(branches[0]) == 1
    key, value = branches[0][0]
    assert key == "foo "
    assert value.startswith("ENC[AES256_GCM,data:") and value.endswith(",type:str]")
    assert md.keys_() == ["lastmodified", "mac", "pgp", "unencrypted_suffix", "version"]
    pgp = md.get("pgp")
    assert len(pgp) == 1 and pgp[0].keys_() == ["created_at", "enc", "fp"]
    assert pgp[0].get("fp") == "FBC7B9E2A4F9289AC0C1D4843D16CEE4A27381B4"
    assert pgp[0].get("enc").startswith("-----BEGIN PGP MESSAGE-----\n\n")
    assert md.get("version") == "3.13.1"
    # 3.13 also sorts the flattened keys, so the file comes back byte for byte
    assert dotenv.emit_encrypted(branches, md) == data


# ------------------------------------------------------------------ non-string values

@needs_sops
def test_non_string_values_like_sops():
    """A YAML file decrypted with --output-type dotenv (ValToString; null is <nil>)."""
    yaml_src = (b"a: 100.0\nb: 1e6\nc: 1.23\nd: true\ne: 5\nf: 2024-01-01\ng: \"x\\ny\"\n"
                b"h: 1e21\ni: 1e-7\nj: 0.1\nk: null\nl: .inf\nm: -0.0\nn: false\n"
                b"o: 2001-12-14t21:59:43.10-05:00\n")
    tree = Branch([("a", 100.0), ("b", 1e6), ("c", 1.23), ("d", True), ("e", 5),
                   ("f", Timestamp("2024-01-01T00:00:00Z")), ("g", "x\ny"), ("h", 1e21),
                   ("i", 1e-7), ("j", 0.1), ("k", None), ("l", math.inf), ("m", -0.0),
                   ("n", False), ("o", Timestamp("2001-12-14T21:59:43.1-05:00"))])
    enc = _run(["encrypt", "--age", _age()[1], "f.yaml"], {"f.yaml": yaml_src})
    assert enc.returncode == 0, enc.stderr
    dec = sops_decrypt(enc.stdout, "--output-type", "dotenv", name="f.enc.yaml")
    assert dec.returncode == 0, dec.stderr
    assert dotenv.emit_plain([tree]) == dec.stdout


@needs_sops
@pytest.mark.parametrize("yaml_src,tree", [
    (b"x: 1\na:\n  b: 1\n", Branch([("x", 1), ("a", Branch([("b", 1)]))])),
    (b"a: [1, 2]\n", Branch([("a", [1, 2])])),
])
def test_complex_value_error_like_sops(yaml_src, tree):
    enc = _run(["encrypt", "--age", _age()[1], "f.yaml"], {"f.yaml": yaml_src})
    dec = sops_decrypt(enc.stdout, "--output-type", "dotenv", name="f.enc.yaml")
    assert dec.returncode == 4
    with pytest.raises(ErrorDumpingTree) as ei:
        dotenv.emit_plain([tree])
    assert ei.value.exit_code == 4
    assert ei.value.message == dec.stderr.decode().removesuffix("\n")


@needs_sops
def test_emit_value_like_sops_extract():
    yaml_src = (b"s: text\ni: 5\nf: 1.5\nb: true\nn: null\nt: 2024-01-01\nl: [1]\n")
    values = {"s": "text", "i": 5, "f": 1.5, "b": True, "n": None,
              "t": Timestamp("2024-01-01T00:00:00Z"), "l": [1]}
    enc = _run(["encrypt", "--age", _age()[1], "f.yaml"], {"f.yaml": yaml_src})
    assert enc.returncode == 0, enc.stderr
    for key, value in values.items():
        dec = sops_decrypt(enc.stdout, "--output-type", "dotenv", "--extract", f'["{key}"]',
                           name="f.enc.yaml")
        if dec.returncode == 0:
            assert dotenv.emit_value(value) == dec.stdout
        else:
            assert dec.returncode == 4
            with pytest.raises(ErrorDumpingTree) as ei:
                dotenv.emit_value(value)
            assert ei.value.message == dec.stderr.decode().removesuffix("\n")


def test_emit_plain_details():
    tree = Branch([(Comment(" c\nraw"), None), ("k", "a\nb"), ("e", ""), ("sp ", " v ")])
    assert dotenv.emit_plain([tree]) == b"# c\nraw\nk=a\\nb\ne=\nsp = v \n"
    assert dotenv.emit_plain([Branch()]) == b""
    assert dotenv.emit_value("x\ny") == b"x\ny"


# ------------------------------------------------------------------ writer vs sops, any tree

_W_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), max_codepoint=0x2100)
                  | st.sampled_from(list(" \t\r\n\"'`#=\\é")), max_size=8)
_W_SCALAR = st.one_of(_W_TEXT, _W_TEXT, st.floats(allow_nan=False, allow_infinity=False),
                      st.booleans(), st.none())
_W_DOC = st.dictionaries(_W_TEXT.filter(lambda s: not s.startswith("sops_") and s != "sops"),
                         st.one_of(_W_SCALAR, _W_SCALAR, _W_SCALAR,
                                   st.lists(_W_SCALAR, max_size=2)), max_size=6)


@needs_sops
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_W_DOC)
def test_writer_matches_sops_on_json_trees(doc):
    """Any keys/values (as a JSON file) decrypted with --output-type dotenv."""
    import json

    src = json.dumps(doc).encode()
    enc = _run(["encrypt", "--age", _age()[1], "f.json"], {"f.json": src})
    assert enc.returncode == 0, enc.stderr
    dec = sops_decrypt(enc.stdout, "--output-type", "dotenv", name="f.enc.json")
    tree = Branch((k, float(v) if isinstance(v, int) and not isinstance(v, bool) else v)
                  for k, v in doc.items())
    if dec.returncode != 0:
        assert dec.returncode == 4, dec.stderr
        with pytest.raises(ErrorDumpingTree) as ei:
            dotenv.emit_plain([tree])
        assert ei.value.message == dec.stderr.decode().removesuffix("\n")
        return
    assert dotenv.emit_plain([tree]) == dec.stdout
