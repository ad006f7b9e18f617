"""Hypothesis input generators for the fuzz targets in :mod:`fuzzlib`.

Three kinds of input per target, mixed by :func:`inputs`:

* raw bytes;
* mutations of valid seeds (bit flips, interesting bytes, deletions, insertions of format
  tokens (also repeated), duplicated ranges, truncation, splicing two seeds, deep nesting,
  huge numbers and huge declared lengths);
* structured generation: documents built from random trees in the target's format, with the
  format's tricky features added (anchors, aliases, merge keys, tags, comments, duplicate keys,
  multi-documents, flattened metadata keys, regexes, placeholders, CBOR and BER re-encodings,
  receipts re-signed around edited statements...).
"""

from __future__ import annotations

import base64
import json
import string
from typing import Any, Callable

import cbor2
import yaml
from hypothesis import strategies as st

import fuzzlib

__all__ = ["inputs", "mutate", "metadata_trees", "STRATEGIES"]

_INTERESTING = [0x00, 0x01, 0x7F, 0x80, 0xFF, 0x0A, 0x0D, 0x09, 0x20, 0x22, 0x27, 0x5B, 0x5D,
                0x7B, 0x7D, 0x3A, 0x23, 0x3D, 0x5C, 0xC0, 0xED, 0xEF, 0xF0]
_HUGE = [b"9" * 40, b"-9223372036854775809", b"18446744073709551616", b"1e999", b"0x" + b"f" * 20,
         b"\xff" * 8, b"\x7f\xff\xff\xff", b"4294967296", b"1" * 5000]


def mutate(draw: Callable, data: bytes, name: str, max_ops: int = 6) -> bytes:
    """Apply 1..max_ops random edits to ``data`` (a seed of target ``name``)."""
    buf = bytearray(data)
    tokens = fuzzlib.tokens_for(name)
    nesting = fuzzlib.nesting_for(name)
    for _ in range(draw(st.integers(1, max_ops))):
        n = len(buf)
        op = draw(st.integers(0, 10))
        pos = draw(st.integers(0, n))
        if op == 0 and n:
            i = min(pos, n - 1)
            buf[i] ^= 1 << draw(st.integers(0, 7))
        elif op == 1 and n:
            buf[min(pos, n - 1)] = draw(st.sampled_from(_INTERESTING))
        elif op == 2:
            del buf[pos:pos + draw(st.integers(1, 64))]
        elif op == 3:
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == 4:
            tok = draw(st.sampled_from(tokens))
            buf[pos:pos] = tok * draw(st.sampled_from([1, 1, 1, 2, 3, 8, 40]))
        elif op == 5 and n:
            a = draw(st.integers(0, n - 1))
            b = draw(st.integers(a, min(n, a + 256)))
            buf[pos:pos] = buf[a:b]
        elif op == 6:
            del buf[pos:]
        elif op == 7:
            other = draw(st.sampled_from(fuzzlib.seeds_for(name)))
            buf = buf[:pos] + other[draw(st.integers(0, len(other))):]
        elif op == 8:
            opener, closer = draw(st.sampled_from(nesting))
            k = draw(st.sampled_from([2, 10, 100, 600, 1200]))
            end = draw(st.integers(pos, n))
            buf = buf[:pos] + opener * k + buf[pos:end] + closer * k + buf[end:]
        elif op == 9:
            buf[pos:pos] = draw(st.sampled_from(_HUGE))
        elif op == 10 and n:
            # overwrite with a token (lengths, headers, tags)
            tok = draw(st.sampled_from(tokens))
            buf[pos:pos + len(tok)] = tok
    return bytes(buf)


def mutations(name: str) -> st.SearchStrategy[bytes]:
    @st.composite
    def _m(draw):
        return mutate(draw, draw(st.sampled_from(fuzzlib.seeds_for(name))), name)
    return _m()


# ------------------------------------------------------------------------------ trees

_TRICKY = ["", "~", "null", "Null", "yes", "no", "on", "0x1F", "0o17", "017", "08", "1e3", ".inf",
           "-.Inf", ".nan", "2001-12-14", "2001-12-14t21:59:43.10-05:00", "2001-02-30",
           "12:30:45", "<<", "- a", "a: b", "#x", "'", '"', "\\", "\t", "\n", "a\nb", " lead",
           "trail ", "ENC[AES256_GCM,data:AA==,iv:AA==,tag:AA==,type:str]", "\u2028", "\x85",
           "\ufeff", "é", "18446744073709551615", "9223372036854775808",
           "-9223372036854775809", "+1", "1_000", "0b101", "!!binary", "*a", "&a", "---",
           "...", "? x", "%", "@", "`", "{}", "[]", "sops", "data", "\x00", "\x7f"]
_scalar_text = st.text(max_size=12) | st.sampled_from(_TRICKY)
_keys = _scalar_text | st.sampled_from(["sops", "data", "a", "b"])


def _trees(scalars: st.SearchStrategy, keys: st.SearchStrategy, leaves: int = 24):
    return st.recursive(scalars, lambda c: st.lists(c, max_size=4)
                        | st.dictionaries(keys, c, max_size=4), max_leaves=leaves)


_yaml_scalars = (st.none() | st.booleans() | st.integers() | st.floats() | _scalar_text
                 | st.binary(max_size=8))
_json_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                 | _scalar_text)

_YAML_SNIPPETS = ["# comment\n", "#\n", "anchor: &a {x: [1, 2]}\n", "alias: *a\n", "<<: *a\n",
                  "merge:\n  <<: [*a]\n", "bin: !!binary aGk=\n", "bad: !!binary ***\n",
                  "t: !!timestamp 2001-12-14\n", "i: !!int 0x1f\n", "f: !!float 1\n",
                  "bi: !!int 1.5\n", "c: !custom x\n", "? [a, b]\n: complex\n", "---\n",
                  "...\n", "%YAML 1.1\n", "lit: |-\n  x\n   y\n", "fold: >+\n  x\n\n",
                  "q: 'a''b'\n", "d: \"\\x00\\u2028\"\n", "- seq\n", "dup: 1\n", "dup: 2\n",
                  "sops:\n    version: 3.11.0\n    lastmodified: '2024-01-02T03:04:05Z'\n",
                  "  - nested # tail\n", "k:    # after key\n  v\n", "\t\n", "\ufeff\n"]


@st.composite
def yaml_text(draw) -> bytes:
    top = draw(st.dictionaries(_keys | st.integers(), _trees(_yaml_scalars, _keys), max_size=6))
    text = yaml.safe_dump(top, default_flow_style=draw(st.sampled_from([False, True, None])),
                          allow_unicode=draw(st.booleans()), sort_keys=False,
                          indent=draw(st.integers(2, 6)), width=draw(st.sampled_from([20, 10**6])),
                          explicit_start=draw(st.booleans()))
    lines = text.splitlines(keepends=True)
    for _ in range(draw(st.integers(0, 5))):
        i = draw(st.integers(0, len(lines)))
        if draw(st.booleans()) and i < len(lines):
            lines[i] = lines[i].rstrip("\n") + draw(st.sampled_from([" # c\n", " #\n", "\n"]))
        else:
            lines.insert(i, " " * draw(st.sampled_from([0, 0, 2, 4, 1])) +
                         draw(st.sampled_from(_YAML_SNIPPETS)))
    out = "".join(lines)
    if draw(st.booleans()):
        out += draw(st.sampled_from(["---\n", "--- |\n  x\n", "---\n- a\n", "---\n"])) + out
    return out.encode("utf-8", "surrogatepass")


@st.composite
def json_text(draw) -> bytes:
    top = draw(st.dictionaries(_scalar_text, _trees(_json_scalars, _scalar_text), max_size=6))
    text = json.dumps(top, indent=draw(st.sampled_from([None, 0, 2, "\t"])),
                      ensure_ascii=draw(st.booleans()))
    if draw(st.booleans()):  # duplicated keys
        k = json.dumps(draw(_keys))
        body = text[1:].lstrip()
        text = "{" + f"{k}: 1, {k}: [2]" + ("" if body.startswith("}") else ", ") + body
    if draw(st.booleans()):
        text = text[:-1].rstrip() + (", " if len(top) else "") + \
            '"sops": {"version": "3.11.0", "lastmodified": "2024-01-02T03:04:05Z", "age": []}}'
    text = draw(st.sampled_from(["", " ", "\n\t"])) + text + \
        draw(st.sampled_from(["", "\n", " garbage", "{}", "\x00"]))
    return text.encode("utf-8", "surrogatepass")


_FLAT = ["__map_a", "__map_b", "__map_", "__list_0", "__list_1", "__list_-1", "__list_x",
         "__list_00", "__map_version"]
_env_key = st.text(alphabet=st.characters(blacklist_characters="\n="), max_size=10)
_env_val = st.text(alphabet=st.characters(blacklist_characters="\n"), max_size=16) | \
    st.sampled_from(["\\n", "a\\nb", "ENC[AES256_GCM,data:AA==,iv:AA==,tag:AA==,type:str]", ""])


@st.composite
def _flat_key(draw) -> str:
    head = draw(st.sampled_from(["version", "lastmodified", "mac", "age", "kms", "key_groups",
                                 "pgp", "unencrypted_suffix", "encrypted_regex", "x", ""]))
    return head + "".join(draw(st.lists(st.sampled_from(_FLAT), max_size=6)))


@st.composite
def dotenv_text(draw) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 10))):
        kind = draw(st.integers(0, 4))
        if kind == 0:
            lines.append("#" + draw(_env_val))
        elif kind == 1:
            lines.append("")
        elif kind == 2:
            lines.append("sops_" + draw(_flat_key()) + "=" + draw(_env_val))
        else:
            lines.append(draw(_env_key) + "=" + draw(_env_val))
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    return eol.join(lines).encode("utf-8", "surrogatepass") + draw(st.sampled_from([b"", b"\n"]))


_ini_text = st.text(alphabet=st.characters(blacklist_characters="\n"), max_size=12)


@st.composite
def ini_text(draw) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            lines.append("[" + draw(_ini_text | st.sampled_from(["sops", "DEFAULT", "a]b"])) + "]")
        elif kind == 1:
            lines.append(draw(st.sampled_from([";", "#", "; ", "#;"])) + draw(_ini_text))
        elif kind == 2:
            lines.append("")
        elif kind == 3:
            lines.append(draw(_ini_text) + " = \"\"\"" + draw(_ini_text))
            lines.append(draw(_ini_text) + draw(st.sampled_from(['"""', '""" \\', '"""  ; c'])))
        elif kind == 4:
            lines.append("k = " + draw(_ini_text) + " \\")
        elif kind == 5:
            lines.append(draw(st.sampled_from(["- = x", '"q k" = v', "`t k` = v", '"""t""" = v',
                                               "=novalue", "nokey"])))
        elif kind == 6:
            lines.append(draw(_flat_key()) + " = " + draw(_ini_text))
        else:
            lines.append(draw(_ini_text) + draw(st.sampled_from([" = ", ":", "="]))
                         + draw(_ini_text | st.sampled_from(["`x`", "\"y\"", "'z'", "a ; c",
                                                              "\"\"\"x\"\"\""])))
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    prefix = draw(st.sampled_from(["", "\ufeff"]))
    return (prefix + eol.join(lines)).encode("utf-8", "surrogatepass")


# ------------------------------------------------------------------------------ metadata trees

def metadata_trees() -> st.SearchStrategy:
    """Branch/list/scalar trees shaped like (and unlike) a sops metadata block."""
    from sops_enclave.tree import Branch, Comment, Timestamp

    names = st.sampled_from(fuzzlib._META_KEYS)
    scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=16)
               | st.sampled_from(fuzzlib._META_STRINGS) | st.binary(max_size=8)
               | st.sampled_from(fuzzlib._META_STRINGS[:8]).map(Timestamp))

    def branch(children):
        item = st.tuples(names | st.text(max_size=6), children) | \
            st.text(max_size=8).map(lambda t: (Comment(t), None))
        return st.lists(item, max_size=6).map(Branch)

    def lists(children):
        return st.lists(children | st.text(max_size=6).map(Comment), max_size=4)

    tree = st.recursive(scalars, lambda c: branch(c) | lists(c), max_leaves=30)

    @st.composite
    def edited_valid(draw):
        base = [("age", [Branch([("recipient", "age1x"), ("enc", "x")])]),
                ("lastmodified", "2024-01-02T03:04:05Z"), ("mac", "m"),
                ("unencrypted_suffix", "_unencrypted"), ("version", "3.11.0")]
        items = list(base)
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.integers(0, 3))
            i = draw(st.integers(0, max(0, len(items) - 1)))
            if op == 0 and items:
                items[i] = (items[i][0], draw(tree))
            elif op == 1 and items:
                del items[i]
            elif op == 2:
                items.insert(i, (draw(names), draw(tree)))
            elif items:
                items.insert(i, items[i])
        return Branch(items)

    return edited_valid() | tree | st.dictionaries(names, tree, max_size=6)


# ------------------------------------------------------------------------------ config, manifest

_REGEX_PIECES = ["a", ".*", "\\.yaml$", "^", "$", "(", ")", "[", "]", "[^/]", "{2,1}",
                 "{4294967296}", "\\z", "\\", "\\p{L}", "(?i)", "(?P<n>x)", "*", "+?", "|",
                 "(?:", "\\d", "é", "(" * 120, ")" * 120, "{", "}"]
_regex = st.lists(st.sampled_from(_REGEX_PIECES), max_size=6).map("".join)
_AGE = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
_ARN = "arn:aws:kms:us-east-1:111122223333:key/k"
_any_value = _trees(_yaml_scalars, _keys, leaves=8)


def _rarely(draw) -> bool:
    """True about one time in ten. (A drawn integer would be "rare" far more often: Hypothesis
    steers towards choices it has not tried yet.)"""
    return draw(st.randoms(use_true_random=True)).random() < 0.1


def _maybe(draw, good: st.SearchStrategy) -> Any:
    return draw(_any_value if _rarely(draw) else good)


@st.composite
def config_text(draw) -> bytes:
    def keys_field():
        return _maybe(draw, st.sampled_from([_AGE, _ARN, f"{_ARN},{_ARN}+arn:aws:iam::1:role/r",
                                             "FBC7B9E2A4F9289AC0C1D4843D16CEE4A27381B4", "",
                                             "age1bad", [_AGE, "x"], None]))

    def group():
        g = {}
        for name in draw(st.lists(st.sampled_from(["kms", "age", "pgp", "merge", "hc_vault",
                                                   "gcp_kms", "azure_keyvault", "hckms"]),
                                  max_size=3)):
            if name == "kms":
                g[name] = [{"arn": _maybe(draw, st.just(_ARN)),
                            "context": _maybe(draw, st.just({"env": "prod", "n": None}))}]
            elif name == "merge":
                g[name] = [{"age": [_AGE]}]
            else:
                g[name] = _maybe(draw, st.just([_AGE]))
        return g

    rules = []
    for _ in range(draw(st.integers(0, 3))):
        r: dict[str, Any] = {}
        for name in draw(st.lists(st.sampled_from(
                ["path_regex", "age", "kms", "pgp", "key_groups", "shamir_threshold",
                 "encrypted_regex", "unencrypted_suffix", "mac_only_encrypted", "hckms",
                 "azure_keyvault", "hc_vault_transit_uri", "aws_profile"]), max_size=5)):
            if name in ("path_regex", "encrypted_regex"):
                r[name] = _maybe(draw, _regex)
            elif name == "key_groups":
                r[name] = [group() for _ in range(draw(st.integers(0, 3)))]
            elif name == "shamir_threshold":
                r[name] = _maybe(draw, st.integers(-1, 5))
            elif name == "mac_only_encrypted":
                r[name] = _maybe(draw, st.sampled_from([True, "yes", "off", 1]))
            else:
                r[name] = keys_field()
        rules.append(r)
    doc: dict[str, Any] = {}
    if rules or draw(st.booleans()):
        doc["creation_rules"] = rules
    if draw(st.booleans()):
        doc["stores"] = {draw(st.sampled_from(["yaml", "json", "json_binary", "dotenv"])):
                         {"indent": _maybe(draw, st.integers(-3, 10))}}
    if draw(st.booleans()):
        doc["destination_rules"] = [{"path_regex": draw(_regex), "s3_bucket": "b",
                                     "recreation_rule": rules[0] if rules else {}}]
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=draw(st.sampled_from(
        [False, None])))
    if draw(st.booleans()):
        text = "base: &a {age: " + _AGE + "}\n" + text.replace("- path_regex", "- <<: *a\n  path_regex", 1)
    return text.encode("utf-8", "surrogatepass")


_TEMPLATE = st.lists(st.sampled_from(["{a}", "{b}", "{{", "}}", "{", "}", "x", "/", "..",
                                      ".git", "\\", " ", "-", "\u202e", ".receipt.json",
                                      "out", ".enc.yaml", "{c}", "{ a }", "A"]), max_size=6
                     ).map("".join)


_GOOD = {
    "target": ["t", "{a}", "{a}/{b}", "api-{a}", "x{{y}}", "t2"],
    "path": ["out/t.enc.yaml", "out/{a}.enc.json", "deploy/{a}/{b}.env", "o.ini", "x/{a}.bin",
             "./a/../out/{b}.yaml"],
    "input": ["s/a.enc.yaml", "s/{a}.enc.yaml", "s/{b}/c.enc.json", "s/d.enc.env"],
}


def _tmpl(draw, kind: str) -> str:
    return draw(_TEMPLATE if _rarely(draw) else st.sampled_from(_GOOD[kind]))


@st.composite
def manifest_text(draw) -> bytes:
    """Mostly valid manifests (so that expansion, collisions and plan() run), each field
    sometimes replaced by a wrong one."""
    doc: dict[str, Any] = {"version": draw(st.sampled_from([2, "1", True, None])) if
                           _rarely(draw) else 1}
    if _rarely(draw):
        doc["matrix"] = _maybe(draw, st.sampled_from([
            {"a": ["x"]}, {"a": ["x", "x"]}, {"a": ["..", "x"], "b": ["p q"]}, {"1x": ["a"]},
            {"a": []}, {"a": ["{b}"], "b": ["z"]}, {"a": ["x" * 300], "b": ["p", "q", "r"]},
            None]))
    else:
        doc["matrix"] = {"a": ["x", "y"], "b": ["p", "q"]}
    outputs = []
    for n in range(0 if _rarely(draw) else draw(st.integers(1, 3))):
        inputs = []
        for _ in range(draw(st.integers(1, 3))):
            if draw(st.booleans()):
                inputs.append(_tmpl(draw, "input"))
            else:
                d: dict[str, Any] = {"file": _tmpl(draw, "input")}
                if draw(st.booleans()):
                    d["extract"] = draw(st.sampled_from(["x", "", '["a"', "[-1]"]) if
                                        _rarely(draw) else st.sampled_from(
                                            ['["a"]', "[0]", '["{a}"]', '["a"][1]', "['k']",
                                             '["a"]["b"]']))
                if draw(st.booleans()):
                    d["optional"] = "yes" if _rarely(draw) else draw(st.booleans())
                inputs.append(d)
        good_encrypt = [{"age": [_AGE]}, {"kms": [_ARN + str(n)]},
                        {"kms": ["arn:aws:kms:eu-west-1:111122223333:key/k-{a}"],
                         "encryption_context": {"env": "{a}"}},
                        {"kms": ["arn:aws:kms:eu-west-1:111122223333:alias/a"], "age": [_AGE]}]
        bad_encrypt = [{"kms": [_ARN, _ARN]}, {"age": ["age1", _AGE]}, {},
                       {"encryption_context": {}}, {"age": [_AGE], "encryption_context": {"a": "b"}},
                       {"kms": [_ARN], "encryption_context": {"{a}": "x"}}]
        encrypt = draw(st.sampled_from(bad_encrypt if _rarely(draw) else good_encrypt))
        o: dict[str, Any] = {"target": _tmpl(draw, "target"), "path": _tmpl(draw, "path"),
                             "inputs": _maybe(draw, st.just(inputs)),
                             "encrypt": _maybe(draw, st.just(encrypt))}
        if draw(st.booleans()):
            o["format"] = draw(st.sampled_from(["toml", 1, "YAML"]) if _rarely(draw) else
                               st.sampled_from(["yaml", "json", "dotenv", "ini", "binary"]))
        outputs.append(o)
    doc["outputs"] = outputs
    if _rarely(draw):
        doc[draw(st.sampled_from(["outputz", "extra"]))] = 1
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    return text.encode("utf-8", "surrogatepass")


# ------------------------------------------------------------------------------ CBOR and BER

_cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**64, 2**64 - 1) | st.binary(max_size=64)
    | st.text(max_size=16) | st.floats(),
    lambda c: st.lists(c, max_size=5) | st.dictionaries(st.integers(-2, 40) | st.text(max_size=8),
                                                        c, max_size=5),
    max_leaves=20)
_PAYLOAD_FIELDS = ["module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle",
                   "public_key", "user_data", "nonce"]


def _cbor_head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | info]) + n.to_bytes(size, "big")
    raise ValueError(n)


def _dup_map(items: list[tuple[Any, Any]]) -> bytes:
    """A CBOR map with the pairs as given (duplicates kept)."""
    return _cbor_head(5, len(items)) + b"".join(cbor2.dumps(k) + cbor2.dumps(v)
                                                 for k, v in items)


@st.composite
def _payload_edit(draw, payload: dict) -> bytes:
    items = list(payload.items())
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.integers(0, 5))
        i = draw(st.integers(0, len(items) - 1)) if items else 0
        if op == 0 and items:
            items[i] = (items[i][0], draw(_cbor_values))
        elif op == 1 and items:
            del items[i]
        elif op == 2:
            items.append((draw(st.sampled_from(_PAYLOAD_FIELDS) | st.integers(0, 3)),
                          draw(_cbor_values)))
        elif op == 3 and items:
            items.append(items[i])  # duplicate key
        elif op == 4 and items and isinstance(items[i][1], dict):
            inner = dict(items[i][1])
            if inner:
                k = draw(st.sampled_from(sorted(inner, key=repr)))
                inner[k] = draw(st.binary(max_size=70) | _cbor_values)
            inner[draw(st.integers(-1, 40))] = draw(st.binary(min_size=48, max_size=48))
            items[i] = (items[i][0], inner)
        elif op == 5 and items and isinstance(items[i][1], list) and items[i][1]:
            lst = list(items[i][1])
            j = draw(st.integers(0, len(lst) - 1))
            lst[j] = mutate(draw, lst[j], "cms", 3) if isinstance(lst[j], bytes) else lst[j]
            lst += lst[:draw(st.integers(0, 20))]
            items[i] = (items[i][0], lst)
    return _dup_map(items)


@st.composite
def attestation_docs(draw) -> bytes:
    """Genuine documents re-encoded around an edited payload (signature then wrong), or
    re-signed by the dev CA (signature right, so checks 5-8 run on the edited fields)."""
    from sops_enclave.receipt.cose import ES384_PROTECTED, sign_es384

    seed = draw(st.sampled_from(fuzzlib.seeds_for("attestation")))
    item = cbor2.loads(seed)
    tagged = isinstance(item, cbor2.CBORTag)
    arr = list(item.value if tagged else item)
    payload = cbor2.loads(arr[2])
    new_payload = draw(_payload_edit(payload))
    arr[2] = new_payload
    if draw(st.booleans()):
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import Encoding

        kit = fuzzlib.receipt_kit()
        leaf_key = ec.generate_private_key(ec.SECP384R1())
        from datetime import datetime, timezone
        leaf = kit.nsm.ca.issue_leaf("fuzz", leaf_key.public_key(), datetime.now(timezone.utc))
        p = cbor2.loads(new_payload) if draw(st.booleans()) else None
        if isinstance(p, dict):
            p["certificate"] = leaf.public_bytes(Encoding.DER)
            p["cabundle"] = [kit.nsm.ca.root_der,
                             kit.nsm.ca.intermediate_cert.public_bytes(Encoding.DER)]
            arr[2] = cbor2.dumps(p)
        arr[0] = ES384_PROTECTED
        arr[3] = sign_es384(leaf_key, ES384_PROTECTED, arr[2])
    if draw(st.integers(0, 3)) == 3:
        arr[draw(st.integers(0, 3))] = draw(_cbor_values)
    body = cbor2.dumps(arr)
    if tagged or draw(st.booleans()):
        body = cbor2.dumps(cbor2.CBORTag(draw(st.sampled_from([18, 18, 98, 0])), arr))
    return body


@st.composite
def cms_structured(draw) -> bytes:
    """CiphertextForRecipient built field by field, each field possibly wrong, so that the
    checks after parsing (key id, key length, OAEP, content key length, padding) all run."""
    import hashlib
    import os

    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from sops_enclave import cms as c

    key = fuzzlib.cms_key()
    pub = key.public_key()
    cek = draw(st.sampled_from([os.urandom(32), os.urandom(16), b"", os.urandom(33)]))
    iv = draw(st.sampled_from([b"\x00" * 16, b"\x00" * 8, b"\x01" * 17]))
    pt = draw(st.binary(max_size=40) | st.sampled_from([b"x" * 4096, b"x" * 4097]))
    if draw(st.booleans()):
        padder = padding.PKCS7(128).padder()
        padded = padder.update(pt) + padder.finalize()
    else:
        padded = pt + b"\x00" * (-len(pt) % 16)
    aes_key = cek if len(cek) in (16, 24, 32) else b"\x00" * 32
    aes_iv = iv if len(iv) == 16 else b"\x00" * 16
    content = Cipher(algorithms.AES(aes_key), modes.CBC(aes_iv)).encryptor().update(padded)
    if draw(st.integers(0, 3)) == 3:
        content = content[:draw(st.integers(0, len(content)))]
    ek = pub.encrypt(cek, c._oaep()) if draw(st.integers(0, 4)) < 4 else os.urandom(256)
    ski = hashlib.sha256(c._spki(pub)).digest() if draw(st.integers(0, 4)) < 4 else os.urandom(32)
    alg = draw(st.sampled_from(sorted(c._OAEP_ENCODINGS)) | st.just(c._oaep_alg(True, True)[:-2]
                                                                    + b"\x05\x00"))
    ktri = c._tlv(0x30, b"\x02\x01" + bytes([draw(st.sampled_from([2, 2, 0, 3]))]),
                  c._tlv(draw(st.sampled_from([0x80, 0x80, 0x30])), ski), alg, c._tlv(0x04, ek))
    chunk = draw(st.sampled_from([1024, 16, 1]))
    chunks = [c._tlv(0x04, content[i:i + chunk]) for i in range(0, len(content), chunk)]
    definite = draw(st.booleans())
    wrap = (lambda tag, *p: c._tlv(tag, *p)) if definite else c._indefinite
    eci = wrap(0x30, c._oid(c._OID_DATA), c._aes_cbc_alg(iv), wrap(0xA0, *chunks))
    recips = c._tlv(0x31, *([ktri] * draw(st.sampled_from([1, 1, 1, 0, 2]))))
    enveloped = wrap(0x30, b"\x02\x01\x02", recips, eci)
    return wrap(0x30, c._oid(draw(st.sampled_from([c._OID_ENVELOPED_DATA,
                                                    c._OID_ENVELOPED_DATA, c._OID_DATA]))),
                wrap(0xA0, enveloped))


# ------------------------------------------------------------------------------ receipts

def _paths(obj: Any) -> list[tuple]:
    out, todo = [], [((), obj)]
    while todo:
        prefix, v = todo.pop()
        out.append(prefix)
        if isinstance(v, dict):
            todo += [(prefix + (k,), x) for k, x in v.items()]
        elif isinstance(v, list):
            todo += [(prefix + (i,), x) for i, x in enumerate(v)]
    return out


def _json_values():
    return _trees(_json_scalars, st.text(max_size=8), leaves=6)


_DEEP_MARK = "\x00deep:%d\x00"


def _dumps(obj: Any) -> str:
    """json.dumps, with each deep-nesting marker replaced by that many nested lists."""
    text = json.dumps(obj)
    for k in (50, 400, 5000):
        mark = json.dumps(_DEEP_MARK % k)
        text = text.replace(mark, "[" * k + "1" + "]" * k)
    return text


@st.composite
def _edit_json(draw, obj: Any) -> Any:
    """Replace, delete, deepen or duplicate the value at a random path of a JSON object."""
    obj = json.loads(json.dumps(obj))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(obj)))
        if not path:
            continue
        parent = obj
        for p in path[:-1]:
            parent = parent[p]
        last = path[-1]
        op = draw(st.integers(0, 4))
        if op == 0:
            parent[last] = draw(_json_values())
        elif op == 1:
            del parent[last]
        elif op == 2:
            parent[last] = _DEEP_MARK % draw(st.sampled_from([50, 400, 5000]))
        elif op == 3 and isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = parent[last]
        else:
            v = parent[last]
            parent[last] = (v * draw(st.integers(2, 3)) if isinstance(v, (str, list))
                            else draw(_json_values()))
    return obj


@st.composite
def receipt_inputs(draw) -> bytes:
    kit = fuzzlib.receipt_kit()
    seed = draw(st.sampled_from([kit.receipt, kit.receipt_with_kms]))
    obj = json.loads(seed)
    how = draw(st.integers(0, 4))
    if how == 0:  # edit the receipt JSON itself
        return _dumps(draw(_edit_json(obj))).encode()
    statement = base64.b64decode(obj["envelope"]["payload"])
    if how == 1:  # edit the statement; envelope re-encoded but not re-signed
        st_obj = draw(_edit_json(json.loads(statement)))
        obj["envelope"]["payload"] = base64.b64encode(_dumps(st_obj).encode()).decode()
        return json.dumps(obj).encode()
    if how == 2:  # edit the statement and sign and attest it for real
        text = _dumps(draw(_edit_json(json.loads(statement)))).encode()
        if draw(st.integers(0, 5)) == 5:
            text = draw(st.sampled_from([b"[" * 5000 + b"]" * 5000, b"\xff", b"{}", b""]))
        return fuzzlib.resign(text)
    if how == 3:  # genuine signature, odd attested key or user_data
        pk = draw(st.sampled_from([None, b"", b"\x30\x00", b"dummy"]) | st.binary(max_size=120))
        ud = draw(st.sampled_from([None, b""]) | st.binary(max_size=40))
        return fuzzlib.resign(statement, public_key=pk, user_data=ud)
    # mutate the attestation bytes inside
    which = "kms_attestation" if "kms_attestation" in obj and draw(st.booleans()) else \
        "attestation"
    doc = base64.b64decode(obj[which])
    obj[which] = base64.b64encode(mutate(draw, doc, "attestation", 3)).decode()
    return json.dumps(obj).encode()


# ------------------------------------------------------------------------------ frames and cipher

@st.composite
def frame_inputs(draw) -> bytes:
    value = draw(_cbor_values | st.dictionaries(st.text(max_size=6), _cbor_values, max_size=5))
    try:
        body = cbor2.dumps(value)
    except (ValueError, TypeError, OverflowError):
        body = b"\xa0"
    if draw(st.integers(0, 3)) == 3:
        tag = draw(st.sampled_from([1, 2, 4, 5, 28, 29, 30, 256, 258, 55799]))
        body = _cbor_head(6, tag) + body
    return body


@st.composite
def recv_inputs(draw) -> bytes:
    body = draw(frame_inputs() | mutations("frame"))
    declared = draw(st.sampled_from([len(body), len(body), 0, len(body) + 1,
                                     max(0, len(body) - 1), 64 * 1024 * 1024,
                                     64 * 1024 * 1024 + 1, 2**32 - 1]))
    extra = draw(st.sampled_from([b"", b"", b"\x00\x00\x00\x01\xa0", b"\xff"]))
    cut = draw(st.sampled_from([None, None, 0, 2, 5]))
    out = declared.to_bytes(4, "big") + body + extra
    return out[:cut] if cut is not None else out


_B64 = string.ascii_letters + string.digits + "+/="


@st.composite
def cipher_inputs(draw) -> bytes:
    kind = draw(st.integers(0, 3))
    types = st.sampled_from(["str", "int", "float", "bool", "time", "comment", "bytes", "",
                             "STR", "str]", "uint", "x" * 70]) | st.text(max_size=6)
    if kind == 0:  # authentic value, arbitrary plaintext and type
        pt = draw(st.binary(max_size=24) | st.sampled_from(
            [b"1_000", b"0x10", b" 1", b"1e999", b"nan", b"-0", b"\xff", b"\xc3\xa9",
             b"2024-01-02T03:04:05Z", b"9" * 5000, b"\xd9\xa1", b"true", b"T"]))
        return b"\x01" + draw(types).encode("utf-8", "surrogatepass") + b"\x00" + pt
    if kind == 1:  # well-formed frame, fields of any length and alphabet
        part = st.text(alphabet=_B64, max_size=40) | st.binary(max_size=150).map(
            lambda b: base64.b64encode(b).decode())
        s = (f"ENC[AES256_GCM,data:{draw(part)},iv:{draw(part)},tag:{draw(part)},"
             f"type:{draw(types)}]{draw(st.sampled_from(['', ']', 'x', chr(10)]))}")
        return b"\x00" + s.encode("utf-8", "surrogatepass")
    if kind == 2:  # separators repeated (regex backtracking), kept small enough to be quick
        seps = draw(st.lists(st.sampled_from([",iv:", ",tag:", ",type:", "data:", "]", "a"]),
                             max_size=40))
        return b"\x00ENC[AES256_GCM,data:" + "".join(seps).encode()
    return b"\x00" + draw(st.text(max_size=60)).encode("utf-8", "surrogatepass")


# ------------------------------------------------------------------------------ per target

def _raw() -> st.SearchStrategy[bytes]:
    return st.binary(max_size=256)


#: name -> (strategy of inputs, function to call with one input)
def _table() -> dict[str, tuple[Callable[[], st.SearchStrategy], Callable[[Any], str]]]:
    T = fuzzlib.TARGETS

    def both(structured):
        return lambda name: st.one_of(_raw(), mutations(name), structured)

    return {
        "cipher": (lambda: st.one_of(_raw(), mutations("cipher"), cipher_inputs()), T["cipher"]),
        "yaml_store": (lambda: both(yaml_text())("yaml_store"), T["yaml_store"]),
        "json_store": (lambda: both(json_text())("json_store"), T["json_store"]),
        "binary_store": (lambda: both(json_text())("binary_store"), T["binary_store"]),
        "dotenv_store": (lambda: both(dotenv_text())("dotenv_store"), T["dotenv_store"]),
        "ini_store": (lambda: both(ini_text())("ini_store"), T["ini_store"]),
        "metadata": (lambda: st.one_of(metadata_trees(),
                                       st.one_of(_raw(), mutations("metadata")).map(
                                           fuzzlib.tree_from_bytes)),
                     fuzzlib.metadata_tree),
        "config": (lambda: both(config_text())("config"), T["config"]),
        "manifest": (lambda: both(manifest_text())("manifest"), T["manifest"]),
        "attestation": (lambda: both(attestation_docs())("attestation"), T["attestation"]),
        "cms": (lambda: both(cms_structured())("cms"), T["cms"]),
        "receipt": (lambda: both(receipt_inputs())("receipt"), T["receipt"]),
        "frame": (lambda: both(frame_inputs())("frame"), T["frame"]),
        "recv_frame": (lambda: st.one_of(_raw(), recv_inputs()), T["recv_frame"]),
    }


STRATEGIES = _table()


def inputs(name: str) -> st.SearchStrategy:
    return STRATEGIES[name][0]()


def function(name: str) -> Callable[[Any], str]:
    return STRATEGIES[name][1]
