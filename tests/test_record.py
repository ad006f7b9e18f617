"""``sops_enclave.record``: the dataclass stand-in of the start-up path behaves as the
``dataclasses`` classes it replaced (construction, defaults, equality, repr, frozen, hash)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest

from sops_enclave.metadata import AgeEntry, KMSEntry, Metadata, VaultEntry
from sops_enclave.record import FrozenInstanceError, field, record
from sops_enclave.walk import CryptRule


@record
class Point:
    x: int
    y: int = 0
    tags: list = field(default_factory=list)
    secret: str = field(default="s", repr=False)
    KIND: ClassVar[str] = "point"
    label = "not a field"


@dataclasses.dataclass
class DPoint:
    x: int
    y: int = 0
    tags: list = dataclasses.field(default_factory=list)
    secret: str = dataclasses.field(default="s", repr=False)


def test_like_a_dataclass():
    for cls in (Point, DPoint):
        a, b = cls(1), cls(1, 0, [])
        assert a == b and a is not b and a.tags is not b.tags
        assert cls(1, y=2) != cls(1) and cls(x=1).y == 0
        assert (a == 1) is False
        with pytest.raises(TypeError):
            hash(a)
        with pytest.raises(TypeError, match="missing"):
            cls()
        with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
            cls(1, z=3)
        with pytest.raises(TypeError, match="multiple values for argument 'x'"):
            cls(1, x=3)
        with pytest.raises(TypeError):
            cls(1, 2, [], "s", "extra")
    assert repr(Point(1, 2)) == "Point(x=1, y=2, tags=[])"
    assert repr(DPoint(1, 2)).endswith("DPoint(x=1, y=2, tags=[])")
    assert Point.KIND == "point" and Point.label == "not a field" and Point.y == 0
    assert Point.__match_args__ == ("x", "y", "tags", "secret")
    assert Point(1) != DPoint(1)


def test_frozen_post_init_and_hash():
    rule = CryptRule("encrypted_regex", "^a")
    assert rule == CryptRule("encrypted_regex", "^a") and hash(rule) == hash(
        CryptRule("encrypted_regex", "^a"))
    assert len({rule, CryptRule("encrypted_regex", "^a"), CryptRule()}) == 2
    with pytest.raises(FrozenInstanceError):
        rule.value = "x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del rule.kind  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown crypt rule"):
        CryptRule("no_such_rule", "x")


def test_inheritance_and_the_metadata_entries():
    @record
    class Base:
        a: int
        b: int = 1

    @record
    class Child(Base):
        c: int = 2
        a: int = 5  # redefined: keeps its place, takes the new default

    assert Child() == Child(5, 1, 2) and repr(Child()).endswith("Child(a=5, b=1, c=2)")
    with pytest.raises(TypeError, match="non-default argument"):
        @record
        class Bad:
            a: int = 1
            b: int
    # The entries: annotations of the non-record _IdEntry base are not fields.
    v = VaultEntry("https://v:8200", "transit", "k")
    assert (v.enc, v.created_at) == ("", "") and v == VaultEntry("https://v:8200", "transit", "k")
    assert v.__match_args__ == ("vault_address", "engine_path", "key_name", "enc", "created_at")
    assert KMSEntry("arn", context=(("a", "b"),)).context == (("a", "b"),)
    assert AgeEntry("age1x", "E") != AgeEntry("age1x", "F")
    m1, m2 = Metadata([]), Metadata(key_groups=[])
    assert m1 == m2 and m1.crypt_rule == CryptRule() and m1.crypt_rule is not m2.crypt_rule
    m2.mac = "x"
    assert m1 != m2
