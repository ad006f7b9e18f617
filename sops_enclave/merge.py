"""Deep merge of decrypted documents (pure): maps merge, later scalars and lists win.

Used by ``exec-env``/``exec-file`` with several inputs, and by the pack. Every key that a later
input overrides is recorded as a conflict (path and which input set it), never silently.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from sops_enclave.tree import Branch, Comment

__all__ = ["Conflict", "deep_merge"]


@dataclass(frozen=True)
class Conflict:
    """``path`` was set by input ``previous`` and overridden by input ``winner``."""

    path: tuple[str, ...]
    previous: int
    winner: int


class _Indexes:
    """First position of each key in each destination branch, built once per branch: the
    merge is linear in the size of the inputs (``Branch.index_of`` is a scan)."""

    def __init__(self) -> None:
        self._by_branch: dict[int, dict[str, int]] = {}

    def of(self, branch: Branch) -> dict[str, int]:
        idx = self._by_branch.get(id(branch))
        if idx is None:
            idx = {}
            for pos, (k, _) in enumerate(branch):
                if not isinstance(k, Comment):
                    idx.setdefault(k, pos)
            self._by_branch[id(branch)] = idx
        return idx


def _merge_into(dst: Branch, src: Branch, origin: dict[tuple[str, ...], int],
                path: tuple[str, ...], index: int, conflicts: list[Conflict],
                indexes: _Indexes) -> None:
    where = indexes.of(dst)
    for k, v in src:
        if isinstance(k, Comment):
            continue
        p = path + (k,)
        i = where.get(k, -1)
        if i < 0:
            where[k] = len(dst)
            dst.append((k, copy.deepcopy(v)))
            origin[p] = index
            continue
        cur = dst[i][1]
        if isinstance(cur, Branch) and isinstance(v, Branch):
            _merge_into(cur, v, origin, p, index, conflicts, indexes)
            continue
        conflicts.append(Conflict(p, origin.get(p, 0), index))
        dst[i] = (k, copy.deepcopy(v))
        origin[p] = index


def deep_merge(docs: list[Branch]) -> tuple[Branch, list[Conflict]]:
    """Merge ``docs`` in order. Returns the merged branch and the overridden paths."""
    out = Branch()
    origin: dict[tuple[str, ...], int] = {}
    conflicts: list[Conflict] = []
    indexes = _Indexes()
    for i, d in enumerate(docs):
        _merge_into(out, d, origin, (), i, conflicts, indexes)
    return out, conflicts
