"""PCR policies: which measurement values a verifier accepts.

A policy is one or more *allowed sets*; a document passes when, for at least one set,
every PCR the set names has exactly the listed value. Several sets cover rollouts
(old and new image both accepted for a while)::

    policy = PCRPolicy.from_hex([{0: "f4d4...", 1: "bcdf...", 2: "d8f1..."}])
    policy = PCRPolicy.from_assignments(["0=f4d4...", "1=bcdf..."])   # the CLI's --pcr
    matched = policy.check(doc.pcrs)   # 1-based number of the matching set; raises PCRMismatch

For receipts every allowed set must identify an image (:meth:`PCRPolicy.require_image_pinned`):
it names PCR0 (the whole image), or PCR1 and PCR2 together (kernel and application), or
PCR8 (the image's signing certificate). A set of, say, PCR3 alone (the IAM role) or PCR1
alone (the kernel every image shares) would accept any code.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

__all__ = ["PCRMismatch", "PCRPolicy", "IMAGE_PINS", "parse_pcr_index", "parse_pcr_value",
           "parse_pcr_assignment", "PCR_LENGTHS", "MAX_PCR_INDEX"]

#: Byte lengths a PCR may have (SHA-256/384/512); Nitro documents use 48.
PCR_LENGTHS = (32, 48, 64)
MAX_PCR_INDEX = 31
#: PCR sets that identify an image; an allowed set must include one of them.
IMAGE_PINS: tuple[frozenset[int], ...] = (frozenset({0}), frozenset({1, 2}), frozenset({8}))
_INDEX = re.compile(r"(?:pcr)?([0-9]{1,2})", re.IGNORECASE)


class PCRMismatch(ValueError):
    """The document's PCRs match none of the allowed sets."""


def parse_pcr_index(value: int | str) -> int:
    """``0``, ``"0"`` or ``"PCR0"`` -> 0; raise ``ValueError`` outside 0..31."""
    if isinstance(value, bool):
        raise ValueError(f"not a PCR index: {value!r}")
    if isinstance(value, int):
        idx = value
    else:
        m = _INDEX.fullmatch(str(value).strip())
        if not m:
            raise ValueError(f"not a PCR index: {value!r}")
        idx = int(m.group(1))
    if not 0 <= idx <= MAX_PCR_INDEX:
        raise ValueError(f"PCR index {idx} is outside 0..{MAX_PCR_INDEX}")
    return idx


def parse_pcr_value(value: str | bytes) -> bytes:
    """Hex (any case, optional ``0x``) or raw bytes of length 32/48/64 -> bytes."""
    if isinstance(value, bytes):
        raw = value
    else:
        text = str(value).strip().lower()
        if text.startswith("0x"):
            text = text[2:]
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise ValueError(f"PCR value is not hex: {value!r}") from None
    if len(raw) not in PCR_LENGTHS:
        raise ValueError(f"PCR value must be 32, 48 or 64 bytes, got {len(raw)}")
    return raw


def parse_pcr_assignment(text: str) -> tuple[int, bytes]:
    """Parse the CLI form ``N=HEX`` (``PCRN=HEX`` also accepted)."""
    idx, sep, val = text.partition("=")
    if not sep:
        raise ValueError(f"expected N=HEX, got {text!r}")
    return parse_pcr_index(idx), parse_pcr_value(val)


class PCRPolicy:
    """One or more allowed PCR sets. An empty policy is refused (it would allow anything)."""

    def __init__(self, allowed: Iterable[Mapping[int, bytes]]) -> None:
        sets = []
        for n, s in enumerate(allowed, 1):
            if not s:
                raise ValueError(f"allowed PCR set {n} is empty")
            sets.append(MappingProxyType({parse_pcr_index(k): parse_pcr_value(v)
                                          for k, v in s.items()}))
        if not sets:
            raise ValueError("a PCR policy needs at least one allowed set")
        self.allowed: tuple[Mapping[int, bytes], ...] = tuple(sets)

    @classmethod
    def from_hex(cls, allowed: Iterable[Mapping[int | str, str]]) -> PCRPolicy:
        """Build from sets of ``{index: hex}`` (indexes may be ``"PCR0"`` or ``"0"``)."""
        return cls({parse_pcr_index(k): parse_pcr_value(v) for k, v in s.items()}
                   for s in allowed)

    @classmethod
    def from_assignments(cls, items: Sequence[str]) -> PCRPolicy:
        """One allowed set from CLI ``N=HEX`` strings; a repeated index is an error."""
        out: dict[int, bytes] = {}
        for item in items:
            idx, val = parse_pcr_assignment(item)
            if idx in out:
                raise ValueError(f"PCR{idx} given twice")
            out[idx] = val
        return cls([out])

    def check(self, pcrs: Mapping[int, bytes]) -> int:
        """Return the 1-based number of the first set that matches; raise ``PCRMismatch``."""
        problems = []
        for n, allowed in enumerate(self.allowed, 1):
            bad = []
            for idx, want in sorted(allowed.items()):
                have = pcrs.get(idx)
                if have is None:
                    bad.append(f"PCR{idx} absent")
                elif not hmac.compare_digest(have, want):
                    bad.append(f"PCR{idx} is {have.hex()[:16]}..., want {want.hex()[:16]}...")
            if not bad:
                return n
            problems.append(("set %d: " % n if len(self.allowed) > 1 else "") + "; ".join(bad))
        raise PCRMismatch(" | ".join(problems))

    def require_image_pinned(self) -> None:
        """Raise ``ValueError`` ("no image pinned") unless every allowed set names PCR0,
        or PCR1 and PCR2, or PCR8."""
        for n, allowed in enumerate(self.allowed, 1):
            if not any(pin <= allowed.keys() for pin in IMAGE_PINS):
                names = ", ".join(f"PCR{i}" for i in sorted(allowed))
                where = f"allowed set {n} ({names})" if len(self.allowed) > 1 else names
                raise ValueError(f"no image pinned: {where} would accept any enclave image; "
                                 "pin PCR0, or PCR1 and PCR2 together, or PCR8")

    def to_hex(self) -> list[dict[int, str]]:
        """The sets as ``{index: hex}`` dicts (for JSON output)."""
        return [{k: v.hex() for k, v in sorted(s.items())} for s in self.allowed]

    def __repr__(self) -> str:
        return f"PCRPolicy({self.to_hex()!r})"
