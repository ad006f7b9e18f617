"""Offline receipt verification: ``verify_receipt`` runs the numbered checks.

1. parse: the receipt JSON, the DSSE envelope (payloadType must be in-toto JSON) and the
   statement; the signed payload bytes are kept exactly as received.
2. attestation: COSE signature and chain to the pinned root, at the document's own time
   (also for the optional KMS attestation). A non-AWS root is a dev receipt and is only
   accepted with ``allow_dev``.
3. pcrs: debug documents (PCR0 all zeros) refused; PCRs match the policy.
4. binding: the attestation's ``public_key`` is the envelope's signing key and its
   ``user_data`` is ``sha256(PAE(payloadType, payload))``.
5. signature: the DSSE signature verifies with that key.
6. subject: ``sha256(output)`` equals the statement's subject digest.
7. repo (optional): the commit exists and the manifest and inputs are the recorded blobs.
8. key sources: inputs decrypted with host-held keys only if the policy allows them.

Example::

    result = verify_receipt(receipt_bytes, output_bytes,
                            ReceiptPolicy(pcrs=PCRPolicy.from_assignments(["0=ab12..."])))
    result.statement.commit, result.attestation.module_id
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding, PublicFormat, load_der_public_key)

from .attestation import (
    AttestationDocument, check_debug, check_pcrs, parse_attestation,
    verify_attestation_signature)
from .dsse import PAYLOAD_TYPE_INTOTO, Envelope, b64decode_any, verify_envelope_signature
from .errors import AttestationError, ReceiptError
from .git_check import RepoMismatch, check_repo
from .nitro_root import AWS_NITRO_ROOT_G1_SHA256, fingerprint
from .policy import ReceiptPolicy
from .statement import HOST_KEY_SOURCES, Statement, loads_strict_json, parse_statement

__all__ = ["RECEIPT_STEPS", "MAX_RECEIPT_SIZE", "ParsedReceipt", "VerifiedReceipt",
           "parse_receipt", "verify_receipt"]

RECEIPT_STEPS: tuple[tuple[int, str], ...] = (
    (1, "parse"), (2, "attestation"), (3, "pcrs"), (4, "binding"), (5, "signature"),
    (6, "subject"), (7, "repo"), (8, "key sources"))
_NAME = dict(RECEIPT_STEPS)
MAX_RECEIPT_SIZE = 1024 * 1024
_RECEIPT_KEYS = {"envelope", "attestation", "kms_attestation"}


@dataclass(frozen=True)
class ParsedReceipt:
    """Step 1's result: envelope, statement and attestation bytes, nothing verified."""

    raw: bytes
    envelope: Envelope
    statement: Statement
    attestation: bytes
    kms_attestation: bytes | None


@dataclass(frozen=True)
class VerifiedReceipt:
    """A receipt that passed every check. ``details`` maps each step number to
    ``(status, detail)``; ``dev`` is true when it chains to a non-AWS root."""

    statement: Statement
    attestation: AttestationDocument
    kms_attestation: AttestationDocument | None
    dev: bool
    root_fingerprint: str
    details: Mapping[int, tuple[str, str]]


def parse_receipt(raw: bytes) -> ParsedReceipt:
    """Step 1 alone; raise ``ValueError`` describing what is malformed."""
    if len(raw) > MAX_RECEIPT_SIZE:
        raise ValueError(f"receipt is {len(raw)} bytes, more than {MAX_RECEIPT_SIZE}")
    obj = loads_strict_json(bytes(raw))
    if not isinstance(obj, dict):
        raise ValueError("receipt is not a JSON object")
    unknown = set(obj) - _RECEIPT_KEYS
    if unknown:
        raise ValueError(f"unknown receipt fields: {', '.join(sorted(unknown))}")
    if "envelope" not in obj or "attestation" not in obj:
        raise ValueError("receipt needs 'envelope' and 'attestation'")
    env = Envelope.from_json_obj(obj["envelope"])
    if env.payload_type != PAYLOAD_TYPE_INTOTO:
        raise ValueError(f"payloadType is {env.payload_type!r}, expected "
                         f"{PAYLOAD_TYPE_INTOTO!r}")
    try:
        statement = parse_statement(env.payload)
    except ValueError as e:
        raise ValueError(f"statement: {e}") from None
    try:
        att = b64decode_any(obj["attestation"])
        kms = obj.get("kms_attestation")
        kms_att = None if kms is None else b64decode_any(kms)
    except ValueError as e:
        raise ValueError(f"attestation: {e}") from None
    return ParsedReceipt(bytes(raw), env, statement, att, kms_att)


class _Run:
    def __init__(self) -> None:
        self.details: dict[int, tuple[str, str]] = {}
        self.dev = False

    def ok(self, step: int, detail: str, status: str = "ok") -> None:
        self.details[step] = (status, detail)

    def fail(self, step: int, reason: str,
             cause: AttestationError | None = None) -> ReceiptError:
        return ReceiptError(step, _NAME[step], reason, dev=self.dev, completed=self.details,
                            attestation_error=cause)


def _claims_dev(att: bytes) -> bool:
    try:
        return parse_attestation(att).root_fingerprint != AWS_NITRO_ROOT_G1_SHA256
    except AttestationError:
        return False


def verify_receipt(receipt: bytes, output: bytes, policy: ReceiptPolicy, *,
                   allow_dev: bool = False, repo: str | Path | None = None,
                   git: str = "git") -> VerifiedReceipt:
    """Run checks 1-8 on ``receipt`` for the ``output`` bytes; raise :class:`ReceiptError`.

    ``policy.root_fingerprint`` is the pinned root (default AWS); a receipt chaining to
    any other root is a dev receipt, accepted only with ``allow_dev`` and then only if
    its root is ``policy.root_fingerprint`` or ``policy.dev_root_fingerprint``.
    """
    run = _Run()
    # (1) parse: keep the signed bytes as received.
    try:
        parsed = parse_receipt(receipt)
    except ValueError as e:
        raise run.fail(1, str(e)) from None
    st = parsed.statement
    run.dev = _claims_dev(parsed.attestation)
    run.ok(1, f"statement for {st.subject_name}, target {st.target}")

    # (2) attestation signature and chain, at each document's own time.
    try:
        doc = parse_attestation(parsed.attestation)
    except AttestationError as e:
        raise run.fail(2, str(e), e) from None
    fp = doc.root_fingerprint
    dev = fp != AWS_NITRO_ROOT_G1_SHA256
    run.dev = dev
    if fp == policy.root_fingerprint or (allow_dev and fp == policy.dev_root_fingerprint):
        pinned = fp
    else:
        pinned = policy.root_fingerprint
    if dev and not allow_dev:
        raise run.fail(2, f"the attestation chains to a non-AWS root ({fp[:16]}...): a dev "
                          "receipt; pass allow_dev (--allow-dev) to accept it")
    try:
        verify_attestation_signature(doc, root_fingerprint=pinned, at="doc")
    except AttestationError as e:
        raise run.fail(2, str(e), e) from None
    kms_doc = None
    if parsed.kms_attestation is not None:
        try:
            kms_doc = parse_attestation(parsed.kms_attestation)
            verify_attestation_signature(kms_doc, root_fingerprint=pinned, at="doc")
        except AttestationError as e:
            raise run.fail(2, f"kms_attestation: {e}", e) from None
    root_name = "dev root" if dev else "AWS Nitro Enclaves Root-G1"
    run.ok(2, f"{root_name} {fp[:16]}..., chain valid at {doc.timestamp.isoformat()}, "
              f"module {doc.module_id}" + (", KMS attestation too" if kms_doc else ""))

    # (3) PCRs against the policy; debug documents refused.
    try:
        check_debug(doc)
        if policy.pcrs is None:
            raise run.fail(3, "no PCR policy given (use a policy file or --pcr N=HEX): a "
                              "receipt from an unpinned image proves nothing")
        matched = check_pcrs(doc, policy.pcrs)
        if kms_doc is not None:
            check_debug(kms_doc)
            check_pcrs(kms_doc, policy.pcrs)
            if any(kms_doc.pcrs.get(i) != doc.pcrs.get(i) for i in (0, 1, 2)):
                raise run.fail(3, "kms_attestation comes from a different image "
                                  "(PCR0-2 differ)")
    except AttestationError as e:
        raise run.fail(3, e.reason, e) from None
    n_sets = len(policy.pcrs.allowed)
    run.ok(3, f"PCRs {','.join(str(i) for i in sorted(policy.pcrs.allowed[matched - 1]))} "
              f"match allowed set {matched} of {n_sets}")

    # (4) public_key and user_data bind the envelope.
    if doc.public_key is None:
        raise run.fail(4, "the attestation has no public_key")
    try:
        key = load_der_public_key(doc.public_key)
    except (ValueError, TypeError):
        raise run.fail(4, "the attestation's public_key is not a DER public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or \
            not isinstance(key.curve, ec.SECP256R1) or \
            key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) != doc.public_key:
        raise run.fail(4, "the attestation's public_key is not a DER SubjectPublicKeyInfo "
                          "of an ECDSA P-256 key")
    expected = hashlib.sha256(parsed.envelope.pae).digest()
    if doc.user_data is None or not hmac.compare_digest(doc.user_data, expected):
        raise run.fail(4, "the attestation's user_data is not sha256(PAE) of this envelope")
    run.ok(4, f"user_data = sha256(PAE) {expected.hex()[:16]}..., public_key is the "
              "signing key")

    # (5) DSSE signature with the attested key.
    try:
        verify_envelope_signature(parsed.envelope, key)
    except InvalidSignature as e:
        raise run.fail(5, f"DSSE signature does not verify with the attested key"
                          f"{': ' + str(e) if str(e) else ''}") from None
    run.ok(5, f"ECDSA P-256 over the PAE, key {fingerprint(doc.public_key)[:16]}...")

    # (6) the output's sha256 is the subject.
    digest = hashlib.sha256(output).hexdigest()
    if not hmac.compare_digest(digest, st.subject_sha256):
        raise run.fail(6, f"output sha256 is {digest[:16]}..., the receipt's subject "
                          f"{st.subject_name} has {st.subject_sha256[:16]}...")
    run.ok(6, f"{st.subject_name} sha256 {digest[:16]}...")

    # (7) optionally: the commit and blobs are in the given repository.
    if repo is None:
        run.ok(7, "no repository given", status="skipped")
    else:
        try:
            check_repo(repo, st.commit,
                       [(st.manifest_path, st.manifest_blob, None)]
                       + [(i.path, i.git_blob, i.sha256) for i in st.inputs], git=git)
        except RepoMismatch as e:
            raise run.fail(7, str(e)) from None
        run.ok(7, f"commit {st.commit[:12]} has the manifest and {len(st.inputs)} input "
                  "blob(s) at their paths")

    # (8) where the data keys came from.
    host = [i.path for i in st.inputs if i.key_source in HOST_KEY_SOURCES]
    if host and not policy.host_keys_allowed(dev):
        raise run.fail(8, f"inputs decrypted with host-held keys: {', '.join(host)} "
                          "(the policy requires attestation-gated KMS keys)")
    run.ok(8, f"{len(st.inputs) - len(host)} input(s) via attestation-gated keys"
              + (f", {len(host)} via host-held keys (allowed)" if host else ""))
    return VerifiedReceipt(st, doc, kms_doc, dev, fp, dict(run.details))
