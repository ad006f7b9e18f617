"""Flattened metadata (``__map_`` / ``__list_N``) for the dotenv and INI stores."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sops_enclave.formats.flatten import (byte_key, flat_metadata, flatten, go_quote, tokenize,
                                          unflatten)
from sops_enclave.tree import Branch, Comment


def _metadata() -> Branch:
    return Branch([
        ("shamir_threshold", 2),
        ("key_groups", [
            Branch([("pgp", [Branch([("created_at", "2024-01-01T00:00:00Z"),
                                     ("enc", "-----BEGIN PGP MESSAGE-----\n\nabc\n"),
                                     ("fp", "FBC7")])]),
                    ("hc_vault", []), ("age", [])]),
            Branch([("hc_vault", []),
                    ("age", [Branch([("recipient", "age1x"), ("enc", "E\n")])])]),
        ]),
        ("kms", [Branch([("arn", "arn:aws:kms:us-east-1:1:key/k"),
                         ("context", Branch([("Environment", "prod"), ("App", "x")])),
                         ("created_at", "t"), ("enc", "Zm9v"), ("aws_profile", "")])]),
        ("lastmodified", "2024-01-01T00:00:00Z"),
        ("mac", "ENC[AES256_GCM,data:x,iv:y,tag:z,type:str]"),
        ("unencrypted_suffix", "_unencrypted"),
        ("mac_only_encrypted", True),
        ("version", "3.11.0"),
    ])


def test_flatten_keys_and_order():
    flat = flatten(_metadata(), "sops_")
    keys = [k for k, _ in flat]
    assert keys == [
        "sops_shamir_threshold",
        "sops_key_groups__list_0__map_pgp__list_0__map_created_at",
        "sops_key_groups__list_0__map_pgp__list_0__map_enc",
        "sops_key_groups__list_0__map_pgp__list_0__map_fp",
        "sops_key_groups__list_1__map_age__list_0__map_recipient",
        "sops_key_groups__list_1__map_age__list_0__map_enc",
        "sops_kms__list_0__map_arn",
        "sops_kms__list_0__map_context__map_Environment",
        "sops_kms__list_0__map_context__map_App",
        "sops_kms__list_0__map_created_at",
        "sops_kms__list_0__map_enc",
        "sops_kms__list_0__map_aws_profile",
        "sops_lastmodified",
        "sops_mac",
        "sops_unencrypted_suffix",
        "sops_mac_only_encrypted",
        "sops_version",
    ]
    # the empty hc_vault/age lists of the groups leave no trace
    assert not any("hc_vault" in k for k in keys)
    assert dict(flat)["sops_shamir_threshold"] == 2


def test_flat_metadata_encodes_like_sops():
    items = flat_metadata(_metadata(), "")
    d = dict(items)
    assert [k for k, _ in items] == sorted(d, key=byte_key)
    assert d["shamir_threshold"] == "2"
    assert d["mac_only_encrypted"] == "true"
    assert d["key_groups__list_0__map_pgp__list_0__map_enc"] == \
        "-----BEGIN PGP MESSAGE-----\\n\\nabc\\n"
    assert d["kms__list_0__map_aws_profile"] == ""
    assert all("\n" not in v for v in d.values())


def test_flatten_skips_comments_and_none_kept():
    b = Branch([(Comment("c"), None), ("l", [Comment("x"), "a", Comment("y"), "b"]),
                ("n", None)])
    assert flatten(b) == [("l__list_0", "a"), ("l__list_1", "b"), ("n", None)]
    assert flat_metadata(b) == [("l__list_0", "a"), ("l__list_1", "b")]


def test_flatten_collision_and_bad_key():
    with pytest.raises(ValueError, match="collision"):
        flatten(Branch([("a__map_b", "1"), ("a", Branch([("b", "2")]))]))
    with pytest.raises(ValueError, match="non-string key"):
        flatten(Branch([(1, "x")]))


def test_unflatten_sorted_maps_and_lists():
    pairs = [("b", "1"), ("a__list_1__map_z", "z"), ("a__list_1__map_y", "y"),
             ("a__list_0", "first"), ("é", "e"), ("B", "up"), ("z__map_k", "v")]
    assert unflatten(pairs) == Branch([
        ("B", "up"),
        ("a", ["first", Branch([("y", "y"), ("z", "z")])]),
        ("b", "1"),
        ("z", Branch([("k", "v")])),
        ("é", "e"),
    ])
    assert unflatten([]) == Branch()


def test_unflatten_round_trips_metadata():
    md = _metadata()
    back = unflatten(flatten(md))
    assert back.get("version") == "3.11.0"
    groups = back.get("key_groups")
    assert [g.keys_() for g in groups] == [["pgp"], ["age"]]
    assert groups[1].get("age")[0] == Branch([("enc", "E\n"), ("recipient", "age1x")])
    assert back.get("kms")[0].get("context") == Branch([("App", "x"), ("Environment", "prod")])


def test_tokenize_like_sops():
    t = tokenize("a__list_01__map_b__list_x__map___list_2")
    assert [repr(x) for x in t] == ["map('a')", "list(1)", "map('b')", "list(0)", "map('')",
                                    "list(2)"]
    assert [repr(x) for x in tokenize("")] == ["map('')"]
    assert [repr(x) for x in tokenize("__map_x")] == ["map('')", "map('x')"]
    assert [repr(x) for x in tokenize("l__list_-1")] == ["map('l')", "list(-1)"]


# ------------------------------------------------------------------ the three errors

def test_duplicate_value():
    with pytest.raises(ValueError, match="Duplicate value"):
        unflatten([("a", "1"), ("a", "2")])
    with pytest.raises(ValueError, match="Duplicate value"):
        unflatten([("l__list_0", "1"), ("l__list_00", "2")])


def test_type_mismatch():
    with pytest.raises(ValueError, match="Type mismatch"):
        unflatten([("a", "1"), ("a__map_b", "2")])
    with pytest.raises(ValueError, match="Type mismatch"):
        unflatten([("a__list_0", "1"), ("a__map_b", "2")])


def test_incomplete_list():
    with pytest.raises(ValueError, match="Incomplete list"):
        unflatten([("a__list_1", "x")])
    with pytest.raises(ValueError, match="Incomplete list"):
        unflatten([("a__list_0", "x"), ("a__list_2", "y")])
    with pytest.raises(ValueError, match="Incomplete list"):
        unflatten([("a__list_-1", "x"), ("a__list_0", "y")])


def test_go_quote():
    assert go_quote('a"b\\c\n\t\x01é\udcff\u2028') == '"a\\"b\\\\c\\n\\t\\x01é\\xff\\u2028"'


# ------------------------------------------------------------------ properties

_KEY = st.text(alphabet=st.sampled_from(list("abcXYZ09-. é☺")), max_size=6)
_LEAF = st.one_of(st.text(max_size=8), st.integers(-5, 5), st.booleans())


def _branch_from(d: dict) -> Branch:
    return Branch((k, _convert_in(v)) for k, v in d.items())


def _convert_in(v):
    if isinstance(v, dict):
        return _branch_from(v)
    if isinstance(v, list):
        return [_convert_in(x) for x in v]
    return v


_TREE = st.recursive(
    _LEAF,
    lambda inner: st.one_of(st.lists(inner, min_size=1, max_size=3),
                            st.dictionaries(_KEY, inner, min_size=1, max_size=3)),
    max_leaves=12,
)
_TOP = st.dictionaries(_KEY, _TREE, max_size=5).map(_branch_from)


def _canonical(v):
    """What unflatten rebuilds: map keys sorted by byte order."""
    if isinstance(v, Branch):
        return Branch((k, _canonical(x)) for k, x in sorted(v, key=lambda kv: byte_key(kv[0])))
    if isinstance(v, list):
        return [_canonical(x) for x in v]
    return v


def _sprinkle_comments(v, flip: bool = True):
    """The same tree with comment items added (they must not change anything)."""
    if isinstance(v, Branch):
        out = Branch([(Comment("c"), None)] if flip else [])
        for k, x in v:
            out.append((k, _sprinkle_comments(x, not flip)))
        return out
    if isinstance(v, list):
        out = []
        for x in v:
            if flip:
                out.append(Comment("l"))
            out.append(_sprinkle_comments(x, not flip))
        return out
    return v


@settings(max_examples=150, deadline=None)
@given(_TOP, st.sampled_from(["", "sops_"]))
def test_flatten_unflatten_round_trip(tree, prefix):
    flat = flatten(tree, prefix)
    keys = [k for k, _ in flat]
    assert len(set(keys)) == len(keys)
    assert all(k.startswith(prefix) for k in keys)
    stripped = [(k[len(prefix):], v) for k, v in flat]
    assert unflatten(stripped) == _canonical(tree)
    # comments are invisible to flattening, and so is the input order of the pairs
    assert flatten(_sprinkle_comments(tree), prefix) == flat
    assert unflatten(list(reversed(stripped))) == _canonical(tree)


@settings(max_examples=100, deadline=None)
@given(_TOP, st.data())
def test_dropping_a_list_element_is_detected(tree, data):
    flat = flatten(tree)
    listed = [i for i, (k, _) in enumerate(flat) if "__list_" in k]
    if not listed:
        return
    victim_key = flat[data.draw(st.sampled_from(listed))][0]
    # remove every pair under one list element that is not the last one of its list
    head, _, tail = victim_key.rpartition("__list_")
    idx = int(tail.split("__", 1)[0])
    prefix = f"{head}__list_{idx}"
    siblings = {int(k[len(head) + 7:].split("__", 1)[0]) for k, _ in flat
                if k.startswith(head + "__list_")}
    if idx == max(siblings):
        return
    kept = [(k, v) for k, v in flat
            if not (k == prefix or k.startswith(prefix + "__"))]
    with pytest.raises(ValueError, match="Incomplete list"):
        unflatten(kept)
