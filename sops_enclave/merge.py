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


def _merge_into(dst: Branch, src: Branch, origin: dict, path: tuple[str, ...], index: int,
                conflicts: list[Conflict]) -> None:
    for k, v in src:
        if isinstance(k, Comment):
            continue
        p = path + (k,)
        i = dst.index_of(k)
        if i < 0:
            dst.append((k, copy.deepcopy(v)))
            origin[p] = index
            continue
        cur = dst[i][1]
        if isinstance(cur, Branch) and isinstance(v, Branch):
            _merge_into(cur, v, origin, p, index, conflicts)
            continue
        conflicts.append(Conflict(p, origin.get(p, 0), index))
        dst[i] = (k, copy.deepcopy(v))
        origin[p] = index


def deep_merge(docs: list[Branch]) -> tuple[Branch, list[Conflict]]:
    """Merge ``docs`` in order. Returns the merged branch and the overridden paths."""
    out = Branch()
    origin: dict[tuple[str, ...], int] = {}
    conflicts: list[Conflict] = []
    for i, d in enumerate(docs):
        _merge_into(out, d, origin, (), i, conflicts)
    return out, conflicts
