"""Building a receipt (runs inside the enclave, or the dev enclave).

The receipt ``<output>.receipt.json`` is one JSON object::

    {"envelope": <DSSE envelope, payloadType application/vnd.in-toto+json>,
     "attestation": <base64 COSE_Sign1 with public_key = SPKI of the signing key
                     and user_data = sha256(PAE(payloadType, statement))>,
     "kms_attestation": <base64 attestation used for the KMS calls>}   # optional

Example::

    key = ec.generate_private_key(ec.SECP256R1())      # fresh per run, in the enclave
    data = build_receipt(facts, output_bytes, signing_key=key, nsm=nsm)
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .dsse import PAYLOAD_TYPE_INTOTO, sign_envelope
from .statement import BUILDER_ID_DEV, BUILDER_ID_NITRO, ReceiptFacts, build_statement

__all__ = ["AttestationSource", "RECEIPT_SUFFIX", "build_receipt", "receipt_path"]

RECEIPT_SUFFIX = ".receipt.json"


class AttestationSource(Protocol):
    """Anything that returns NSM attestation documents (``/dev/nsm``, the soft NSM)."""

    def attest(self, public_key: bytes | None = None, user_data: bytes | None = None,
               nonce: bytes | None = None) -> bytes:
        """An attestation document binding the given fields."""
        ...


def receipt_path(output_path: str) -> str:
    """Where the receipt of ``output_path`` lives by default."""
    return output_path + RECEIPT_SUFFIX


def build_receipt(facts: ReceiptFacts, output: bytes, *,
                  signing_key: ec.EllipticCurvePrivateKey, nsm: AttestationSource,
                  kms_attestation: bytes | None = None, nonce: bytes | None = None) -> bytes:
    """Sign a statement about ``output`` and attest the signing key; return receipt bytes.

    The builder id says ``dev-enclave`` when ``nsm`` has a true ``is_dev`` attribute.
    When ``facts.request_nonce`` is set, the attestation carries that nonce (``nonce``, if
    given too, must be the same bytes): ``verify`` checks that they agree.
    """
    if facts.request_nonce is not None:
        wanted = bytes.fromhex(facts.request_nonce)
        if nonce is not None and nonce != wanted:
            raise ValueError("nonce differs from facts.request_nonce")
        nonce = wanted
    builder_id = BUILDER_ID_DEV if getattr(nsm, "is_dev", False) else BUILDER_ID_NITRO
    statement = build_statement(facts, hashlib.sha256(output).hexdigest(),
                                builder_id=builder_id)
    envelope = sign_envelope(PAYLOAD_TYPE_INTOTO, statement, signing_key)
    spki = signing_key.public_key().public_bytes(Encoding.DER,
                                                 PublicFormat.SubjectPublicKeyInfo)
    doc = nsm.attest(public_key=spki, user_data=hashlib.sha256(envelope.pae).digest(),
                     nonce=nonce)
    receipt: dict[str, object] = {"envelope": envelope.to_json_obj(),
                                  "attestation": base64.b64encode(doc).decode()}
    if kms_attestation is not None:
        receipt["kms_attestation"] = base64.b64encode(kms_attestation).decode()
    return (json.dumps(receipt, indent=2, sort_keys=True) + "\n").encode()
