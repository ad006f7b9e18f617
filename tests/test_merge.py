"""deep_merge: maps merge deeply, later scalars and lists win, every override is recorded,
and the work is linear (no per-key scan of the destination)."""

from __future__ import annotations

import pytest

from sops_enclave.merge import Conflict, deep_merge
from sops_enclave.tree import Branch, Comment


def B(*items):
    return Branch(list(items))


def test_maps_merge_later_scalars_and_lists_win_in_order():
    a = B(("db", B(("host", "h1"), ("pw", "p1"))), ("list", [1, 2]), ("only_a", "x"))
    b = B(("db", B(("pw", "p2"), ("port", 5432))), ("list", [3]), (Comment("c"), None))
    c = B(("db", "flat"), ("new", B(("k", "v"))))
    merged, conflicts = deep_merge([a, b, c])
    assert merged == B(("db", "flat"), ("list", [3]), ("only_a", "x"), ("new", B(("k", "v"))))
    assert conflicts == [Conflict(("db", "pw"), 0, 1), Conflict(("list",), 0, 1),
                         Conflict(("db",), 0, 2)]


def test_a_replaced_map_is_merged_into_afterwards():
    merged, conflicts = deep_merge([B(("m", "scalar")), B(("m", B(("a", 1)))),
                                    B(("m", B(("b", 2))))])
    assert merged == B(("m", B(("a", 1), ("b", 2))))
    assert conflicts == [Conflict(("m",), 0, 1)]


def test_duplicate_keys_merge_into_the_first_occurrence():
    merged, conflicts = deep_merge([B(("k", B(("a", 1))), ("k", B(("z", 0)))),
                                    B(("k", B(("b", 2))))])
    assert merged == B(("k", B(("a", 1), ("z", 0), ("b", 2))))
    assert conflicts == []


def test_inputs_are_not_modified():
    a = B(("m", B(("a", 1))))
    b = B(("m", B(("b", 2))))
    deep_merge([a, b])
    assert a == B(("m", B(("a", 1)))) and b == B(("m", B(("b", 2))))


def test_no_scan_of_the_destination(monkeypatch):
    """16,000 keys each: the merge never calls the linear Branch.index_of."""
    def scan(self, key):
        raise AssertionError("deep_merge scanned a branch")
    monkeypatch.setattr(Branch, "index_of", scan)
    a = B(*((f"k{i}", B(("a", i))) for i in range(16000)))
    b = B(*((f"k{i}", B(("b", i))) for i in range(16000)))
    merged, conflicts = deep_merge([a, b])
    assert len(merged) == 16000 and not conflicts
    assert merged[15999] == ("k15999", B(("a", 15999), ("b", 15999)))


@pytest.mark.parametrize("n", [0, 1])
def test_empty_inputs(n):
    merged, conflicts = deep_merge([B()] * n)
    assert merged == B() and conflicts == []
