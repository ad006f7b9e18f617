"""Provenance receipts and Nitro attestation, verified offline (no cloud SDK).

* :mod:`.attestation`: verify a Nitro attestation document against the pinned
  AWS root (``verify_attestation``).
* :mod:`.builder`: build ``<output>.receipt.json`` inside the enclave (``build_receipt``).
* :mod:`.verifier`: check an output against its receipt (``verify_receipt``).
* :mod:`.cli`: the ``attestation`` and ``verify`` subcommands (``register``).

Example::

    from sops_enclave.receipt import ReceiptPolicy, PCRPolicy, verify_receipt
    policy = ReceiptPolicy(pcrs=PCRPolicy.from_assignments(["0=...", "1=...", "2=..."]))
    verify_receipt(receipt_bytes, output_bytes, policy,
                   expected_subject="deploy/api/prod.enc.json")
"""

from __future__ import annotations

from .attestation import AttestationDocument, verify_attestation
from .builder import AttestationSource, build_receipt
from .errors import AttestationError, ReceiptError
from .nitro_root import AWS_NITRO_ROOT_G1_SHA256
from .pcr_policy import PCRPolicy
from .policy import ReceiptPolicy
from .statement import (
    EnclavePolicyRecord, InputRecord, KMSKeyUse, KMSRecipient, MergeConflict, OutputRecipients,
    ReceiptFacts, SignerRecord)
from .verifier import VerifiedReceipt, verify_receipt

__all__ = ["AWS_NITRO_ROOT_G1_SHA256", "AttestationDocument", "AttestationError",
           "AttestationSource", "EnclavePolicyRecord", "InputRecord", "KMSKeyUse", "KMSRecipient", "MergeConflict",
           "OutputRecipients", "PCRPolicy", "ReceiptError", "ReceiptFacts", "ReceiptPolicy",
           "SignerRecord", "VerifiedReceipt", "build_receipt", "verify_attestation", "verify_receipt"]
