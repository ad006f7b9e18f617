"""Errors raised by attestation and receipt verification.

Both carry the number and name of the check that failed, so the CLI can print
``[5] chain ..... FAILED: ...`` and the numbered steps in ``docs/receipt.md`` line up
with the code::

    try:
        verify_attestation(doc)
    except AttestationError as e:
        print(e.step, e.check, e.reason)
"""

from __future__ import annotations

from ..errors import SopsError

__all__ = ["AttestationError", "ReceiptError"]


class AttestationError(SopsError):
    """A Nitro attestation document failed check number ``step`` (named ``check``)."""

    def __init__(self, step: int, check: str, reason: str) -> None:
        super().__init__(f"attestation check [{step}] {check} failed: {reason}")
        self.step = step
        self.check = check
        self.reason = reason


class ReceiptError(SopsError):
    """A receipt failed verification step ``step`` (named ``check``).

    ``completed`` maps the numbers of the steps that ran before it to
    ``(status, detail)`` pairs (status ``"ok"`` or ``"skipped"``), and ``dev`` tells
    whether the receipt claims a non-AWS (dev) root, so the CLI can print every line.
    ``attestation_error`` is set when the cause was an attestation check.
    """

    def __init__(self, step: int, check: str, reason: str, *, dev: bool = False,
                 completed: dict[int, tuple[str, str]] | None = None,
                 attestation_error: AttestationError | None = None) -> None:
        super().__init__(f"receipt check [{step}] {check} failed: {reason}")
        self.step = step
        self.check = check
        self.reason = reason
        self.dev = dev
        self.completed = dict(completed or {})
        self.attestation_error = attestation_error
