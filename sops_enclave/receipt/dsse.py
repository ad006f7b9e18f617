"""DSSE envelopes (secure-systems-lab/dsse v1.0) signed with ECDSA P-256.

The signature covers the pre-authentication encoding, never the JSON::

    PAE(type, body) = b"DSSEv1 " + len(type) + b" " + type + b" " + len(body) + b" " + body

with lengths as ASCII decimal. Example::

    env = sign_envelope(PAYLOAD_TYPE_INTOTO, statement_bytes, key)
    verify_envelope_signature(env, key.public_key())     # raises InvalidSignature
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = ["PAYLOAD_TYPE_INTOTO", "Envelope", "EnvelopeSignature", "pae", "b64decode_any",
           "keyid", "sign_envelope", "verify_envelope_signature"]

PAYLOAD_TYPE_INTOTO = "application/vnd.in-toto+json"
_B64 = re.compile(r"[A-Za-z0-9+/\-_]*={0,2}")


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding of ``payload_type`` and ``payload``."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def b64decode_any(text: str) -> bytes:
    """Decode standard or URL-safe base64, padding optional (as DSSE requires).

    Raises ``ValueError`` on any other character or a malformed length.
    """
    if not isinstance(text, str) or not _B64.fullmatch(text):
        raise ValueError("not base64")
    s = text.rstrip("=").replace("-", "+").replace("_", "/")
    if len(s) % 4 == 1:
        raise ValueError("not base64 (bad length)")
    try:
        return base64.b64decode(s + "=" * (-len(s) % 4), validate=True)
    except binascii.Error as e:
        raise ValueError(f"not base64: {e}") from None


def keyid(public_key: ec.EllipticCurvePublicKey) -> str:
    """Hex SHA-256 of the DER SubjectPublicKeyInfo (a hint only, never trusted)."""
    return hashlib.sha256(public_key.public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).hexdigest()


@dataclass(frozen=True)
class EnvelopeSignature:
    """One DSSE signature: raw signature bytes and an optional key id hint."""

    sig: bytes
    keyid: str | None = None


@dataclass(frozen=True)
class Envelope:
    """A DSSE envelope; ``payload`` is the body bytes exactly as decoded from the JSON."""

    payload_type: str
    payload: bytes
    signatures: tuple[EnvelopeSignature, ...]

    @property
    def pae(self) -> bytes:
        """The bytes the signatures cover."""
        return pae(self.payload_type, self.payload)

    def to_json_obj(self) -> dict[str, Any]:
        """The envelope as a JSON-ready dict (standard base64)."""
        sigs: list[dict[str, str]] = []
        for s in self.signatures:
            d = {"sig": base64.b64encode(s.sig).decode()}
            if s.keyid:
                d["keyid"] = s.keyid
            sigs.append(d)
        return {"payload": base64.b64encode(self.payload).decode(),
                "payloadType": self.payload_type, "signatures": sigs}

    @classmethod
    def from_json_obj(cls, obj: Any) -> Envelope:
        """Parse the JSON form; raise ``ValueError`` if it is malformed."""
        if not isinstance(obj, dict):
            raise ValueError("envelope is not a JSON object")
        unknown = set(obj) - {"payload", "payloadType", "signatures"}
        if unknown:
            # The names are unverified receipt text: counted, never echoed.
            raise ValueError(f"envelope has {len(unknown)} unknown field(s); allowed: "
                             "payload, payloadType, signatures")
        ptype, payload, sigs = obj.get("payloadType"), obj.get("payload"), obj.get("signatures")
        if not isinstance(ptype, str) or not isinstance(payload, str):
            raise ValueError("envelope needs string payloadType and payload")
        if not isinstance(sigs, list) or not sigs:
            raise ValueError("envelope has no signatures")
        out = []
        for s in sigs:
            if not isinstance(s, dict) or not isinstance(s.get("sig"), str) or \
                    set(s) - {"sig", "keyid"} or \
                    not isinstance(s.get("keyid", ""), (str, type(None))):
                raise ValueError("malformed envelope signature entry")
            out.append(EnvelopeSignature(b64decode_any(s["sig"]), s.get("keyid") or None))
        return cls(ptype, b64decode_any(payload), tuple(out))


def sign_envelope(payload_type: str, payload: bytes,
                  key: ec.EllipticCurvePrivateKey) -> Envelope:
    """Sign ``PAE(payload_type, payload)`` with ECDSA P-256/SHA-256 (DER signature)."""
    if not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("receipt signing keys are ECDSA P-256")
    sig = key.sign(pae(payload_type, payload), ec.ECDSA(hashes.SHA256()))
    return Envelope(payload_type, bytes(payload),
                    (EnvelopeSignature(sig, keyid(key.public_key())),))


def verify_envelope_signature(env: Envelope, public_key: ec.EllipticCurvePublicKey) -> None:
    """Require exactly one signature, valid over the PAE with ``public_key``.

    Raises ``InvalidSignature``. The ``keyid`` hint plays no part.
    """
    if len(env.signatures) != 1:
        raise InvalidSignature(f"expected exactly one signature, found {len(env.signatures)}")
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or \
            not isinstance(public_key.curve, ec.SECP256R1):
        raise InvalidSignature("signing key is not ECDSA P-256")
    public_key.verify(env.signatures[0].sig, env.pae, ec.ECDSA(hashes.SHA256()))
