"""Offline verification of AWS Nitro Enclaves attestation documents.

A document is a COSE_Sign1 (ES384) whose payload is a CBOR map signed by a short-lived
leaf certificate that chains to the AWS Nitro Enclaves Root-G1. The checks run in this
order and every failure raises :class:`AttestationError` carrying the number:

1. parse: at most 16 KiB; strict CBOR; ``[protected, unprotected, payload, signature]``,
   optionally under tag 18; the protected header is exactly ``{1: -35}`` (ES384).
2. payload: the field, type and size rules of the Nitro schema.
3. certificates: leaf and cabundle parse as X.509 v3, EC P-384, ecdsa-with-SHA384.
4. root: ``cabundle[0]`` has the pinned SHA-256 fingerprint (a look-alike fails here).
5. chain: root -> cabundle[1..] -> leaf signatures, CA flags, path lengths, no loops,
   every certificate valid at the check time (by default the document's own timestamp).
6. signature: the COSE signature over the bytes as received, with the leaf key.
7. debug: PCR0 all zeros (a debug-mode enclave) is refused unless ``allow_debug``.
8. pcrs: the PCRs match one of the policy's allowed sets (skipped without a policy).

Example::

    doc = verify_attestation(raw, pcr_policy=PCRPolicy.from_assignments(["0=ab12..."]))
    doc.public_key, doc.user_data, doc.nonce, doc.pcrs, doc.module_id, doc.timestamp
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any, Literal, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from . import strict_cbor as _cbor
from ._x509_chain import (
    CertificateProblem, ChainProblem, RootProblem, check_root, load_certificates, verify_path)
from .cose import COSE_SIGN1_TAG, verify_es384
from .errors import AttestationError
from .nitro_root import AWS_NITRO_ROOT_G1_SHA256, fingerprint, normalize_fingerprint
from .pcr_policy import MAX_PCR_INDEX, PCR_LENGTHS, PCRMismatch, PCRPolicy

__all__ = ["AttestationDocument", "AttestationError", "STEPS", "MAX_DOCUMENT_SIZE",
           "parse_attestation", "verify_attestation", "verify_attestation_signature",
           "check_debug", "check_pcrs", "resolve_time"]

#: The numbered checks, in the order they run.
STEPS: tuple[tuple[int, str], ...] = (
    (1, "parse"), (2, "payload"), (3, "certificates"), (4, "root"), (5, "chain"),
    (6, "signature"), (7, "debug"), (8, "pcrs"))
_NAME = dict(STEPS)

#: Cap on the whole document (the AWS C SDK's NSM_MAX_ATTESTATION_DOC_SIZE).
MAX_DOCUMENT_SIZE = 16 * 1024
MAX_PAYLOAD_SIZE = 16 * 1024
MAX_CERT_SIZE = 1024
MAX_CABUNDLE = 16
#: CDDL limit for public_key, user_data and nonce (the "syntactic validation" text of the
#: same AWS document says 512 for user_data/nonce; real documents carry up to 256).
MAX_OPTIONAL_FIELD = 1024
MAX_MODULE_ID = 256
# datetime cannot go past year 9999.
_MAX_TIMESTAMP_MS = 253402300799999
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_REQUIRED = ("module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle")
_OPTIONAL = ("public_key", "user_data", "nonce")

At = Union[Literal["doc", "now"], datetime]


def _fail(step: int, reason: str) -> AttestationError:
    return AttestationError(step, _NAME[step], reason)


@dataclass(frozen=True)
class AttestationDocument:
    """A parsed attestation document. ``raw``, ``protected`` and ``payload`` are the bytes
    exactly as received; the other fields are read from ``payload`` for the caller to
    bind (``public_key``, ``user_data``, ``nonce`` are ``None`` when absent or null)."""

    raw: bytes
    tagged: bool
    protected: bytes
    payload: bytes
    signature: bytes
    module_id: str
    digest: str
    timestamp_ms: int
    pcrs: Mapping[int, bytes]
    certificate: bytes
    cabundle: tuple[bytes, ...]
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None

    @property
    def timestamp(self) -> datetime:
        """The signed ``timestamp`` as an aware UTC datetime."""
        return _EPOCH + timedelta(milliseconds=self.timestamp_ms)

    @property
    def root_fingerprint(self) -> str:
        """SHA-256 of ``cabundle[0]`` (only meaningful after step 4 passed)."""
        return fingerprint(self.cabundle[0])

    @property
    def is_debug(self) -> bool:
        """True when PCR0 is all zeros, which is what debug-mode enclaves report."""
        pcr0 = self.pcrs.get(0)
        return pcr0 is not None and not any(pcr0)


def _bytes_field(payload: dict[str, Any], key: str, lo: int, hi: int) -> bytes:
    v = payload[key]
    if type(v) is not bytes:
        raise _fail(2, f"{key} must be a byte string, got {type(v).__name__}")
    if not lo <= len(v) <= hi:
        raise _fail(2, f"{key} is {len(v)} bytes, allowed {lo}..{hi}")
    return v


def parse_attestation(data: bytes) -> AttestationDocument:
    """Checks 1-2: decode the envelope and payload and apply the schema. No trust yet."""
    data = bytes(data)
    # (1) parse
    if len(data) > MAX_DOCUMENT_SIZE:
        raise _fail(1, f"document is {len(data)} bytes, more than {MAX_DOCUMENT_SIZE}")
    try:
        item = _cbor.decode(data, top_level_tags=frozenset({COSE_SIGN1_TAG}))
    except _cbor.CBORDecodeError as e:
        raise _fail(1, f"not a valid CBOR document: {e}") from None
    tagged = isinstance(item, _cbor.Tagged)
    arr = item.value if tagged else item
    if type(arr) is not list or len(arr) != 4:
        raise _fail(1, "not a COSE_Sign1 array of 4 items")
    protected, unprotected, payload_bytes, signature = arr
    if type(protected) is not bytes or type(unprotected) is not dict or \
            type(payload_bytes) is not bytes or type(signature) is not bytes:
        raise _fail(1, "COSE_Sign1 items must be (bstr, map, bstr, bstr)")
    try:
        header = _cbor.decode(protected)
    except _cbor.CBORDecodeError as e:
        raise _fail(1, f"protected header is not valid CBOR: {e}") from None
    if type(header) is not dict or len(header) != 1 or type(header.get(1)) is not int \
            or header[1] != -35 or any(type(k) is not int for k in header):
        raise _fail(1, f"protected header must be {{1: -35}} (ES384), got {header!r}")
    # (2) payload
    if not 1 <= len(payload_bytes) <= MAX_PAYLOAD_SIZE:
        raise _fail(2, f"payload is {len(payload_bytes)} bytes, allowed 1..{MAX_PAYLOAD_SIZE}")
    try:
        payload = _cbor.decode(payload_bytes)
    except _cbor.CBORDecodeError as e:
        raise _fail(2, f"payload is not valid CBOR: {e}") from None
    if type(payload) is not dict:
        raise _fail(2, "payload is not a map")
    unknown = sorted(repr(k) for k in payload if k not in _REQUIRED + _OPTIONAL)
    if unknown:
        raise _fail(2, f"unknown payload fields: {', '.join(unknown)}")
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise _fail(2, f"missing payload fields: {', '.join(missing)}")
    module_id = payload["module_id"]
    if type(module_id) is not str or not 1 <= len(module_id) <= MAX_MODULE_ID:
        raise _fail(2, f"module_id must be non-empty text of at most {MAX_MODULE_ID} chars")
    if payload["digest"] != "SHA384" or type(payload["digest"]) is not str:
        raise _fail(2, f"digest must be \"SHA384\", got {payload['digest']!r}")
    ts = payload["timestamp"]
    if type(ts) is not int or not 0 < ts <= _MAX_TIMESTAMP_MS:
        raise _fail(2, f"timestamp must be a positive integer (ms), got {ts!r}")
    pcrs = payload["pcrs"]
    if type(pcrs) is not dict or not 1 <= len(pcrs) <= MAX_PCR_INDEX + 1:
        raise _fail(2, "pcrs must be a map of 1..32 entries")
    for k, v in pcrs.items():
        if type(k) is not int or not 0 <= k <= MAX_PCR_INDEX:
            raise _fail(2, f"PCR index {k!r} is not an integer in 0..{MAX_PCR_INDEX}")
        if type(v) is not bytes or len(v) not in PCR_LENGTHS:
            raise _fail(2, f"PCR{k} must be 32, 48 or 64 bytes")
    cert = _bytes_field(payload, "certificate", 1, MAX_CERT_SIZE)
    bundle = payload["cabundle"]
    if type(bundle) is not list or not 1 <= len(bundle) <= MAX_CABUNDLE:
        raise _fail(2, f"cabundle must be an array of 1..{MAX_CABUNDLE} certificates")
    for i, c in enumerate(bundle):
        if type(c) is not bytes or not 1 <= len(c) <= MAX_CERT_SIZE:
            raise _fail(2, f"cabundle[{i}] must be 1..{MAX_CERT_SIZE} bytes")
    optional: dict[str, bytes | None] = {}
    for key in _OPTIONAL:
        if payload.get(key) is None:
            optional[key] = None
        else:
            optional[key] = _bytes_field(payload, key, 0, MAX_OPTIONAL_FIELD)
    return AttestationDocument(
        raw=data, tagged=tagged, protected=protected, payload=payload_bytes,
        signature=signature, module_id=module_id, digest="SHA384", timestamp_ms=ts,
        pcrs=MappingProxyType(dict(sorted(pcrs.items()))), certificate=cert,
        cabundle=tuple(bundle), public_key=optional["public_key"],
        user_data=optional["user_data"], nonce=optional["nonce"])


def resolve_time(doc: AttestationDocument, at: At) -> datetime:
    """``"doc"`` -> the document's timestamp, ``"now"`` -> the clock, else the datetime
    given (a naive datetime is taken as UTC)."""
    if at == "doc":
        return doc.timestamp
    if at == "now":
        return datetime.now(timezone.utc)
    if isinstance(at, datetime):
        return at if at.tzinfo else at.replace(tzinfo=timezone.utc)
    raise ValueError(f"at must be 'doc', 'now' or a datetime, got {at!r}")


def _pins(root_fingerprint: str | Iterable[str]) -> frozenset[str]:
    items = [root_fingerprint] if isinstance(root_fingerprint, str) else list(root_fingerprint)
    pins = frozenset(normalize_fingerprint(f) for f in items)
    if not pins:
        raise ValueError("at least one root fingerprint must be pinned")
    return pins


def verify_attestation_signature(doc: AttestationDocument, *,
                                 root_fingerprint: str | Iterable[str] = AWS_NITRO_ROOT_G1_SHA256,
                                 at: At = "doc") -> None:
    """Checks 3-6: certificates, pinned root, chain at ``at``, COSE signature.

    ``root_fingerprint`` is one SHA-256 (hex, colons allowed) or several; the document's
    ``cabundle[0]`` must have one of them. Raises :class:`AttestationError`.
    """
    pins = _pins(root_fingerprint)
    when = resolve_time(doc, at)
    # (3) certificates
    try:
        leaf, bundle = load_certificates(doc.certificate, doc.cabundle)
    except CertificateProblem as e:
        raise _fail(3, str(e)) from None
    # (4) root: pinned by fingerprint; never trust a root only because the document has it.
    try:
        check_root(doc.cabundle[0], pins)
    except RootProblem as e:
        raise _fail(4, str(e)) from None
    # (5) chain
    try:
        verify_path(bundle[0], bundle[1:], leaf, when)
    except ChainProblem as e:
        raise _fail(5, str(e)) from None
    # (6) signature over the protected and payload bytes exactly as received
    leaf_key = leaf.public_key()
    if not isinstance(leaf_key, ec.EllipticCurvePublicKey):
        raise _fail(6, "the leaf certificate's key is not an EC key")
    try:
        verify_es384(leaf_key, doc.protected, doc.payload, doc.signature)
    except InvalidSignature as e:
        raise _fail(6, f"COSE ES384 signature does not verify with the leaf key"
                       f"{': ' + str(e) if str(e) else ''}") from None


def check_debug(doc: AttestationDocument, *, allow_debug: bool = False) -> None:
    """Check 7: refuse a debug-mode document (PCR0 all zeros) unless ``allow_debug``."""
    if 0 not in doc.pcrs:
        raise _fail(7, "PCR0 is absent")
    if doc.is_debug and not allow_debug:
        raise _fail(7, "PCR0 is all zeros: the enclave ran in debug mode "
                       "(its memory was readable from the host)")


def check_pcrs(doc: AttestationDocument, policy: PCRPolicy) -> int:
    """Check 8: return the 1-based number of the allowed set that matched."""
    try:
        return policy.check(doc.pcrs)
    except PCRMismatch as e:
        raise _fail(8, str(e)) from None


def verify_attestation(data: bytes, *,
                       root_fingerprint: str | Iterable[str] = AWS_NITRO_ROOT_G1_SHA256,
                       at: At = "doc", pcr_policy: PCRPolicy | None = None,
                       allow_debug: bool = False) -> AttestationDocument:
    """Run checks 1-8 and return the parsed document; raise :class:`AttestationError`.

    Without ``pcr_policy`` check 8 is skipped: the document is then only known to come
    from *some* Nitro enclave, so callers that act on it should always pass a policy.
    """
    doc = parse_attestation(data)
    verify_attestation_signature(doc, root_fingerprint=root_fingerprint, at=at)
    check_debug(doc, allow_debug=allow_debug)
    if pcr_policy is not None:
        check_pcrs(doc, pcr_policy)
    return doc
