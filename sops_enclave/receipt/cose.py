"""COSE_Sign1 with ES384, as the Nitro NSM uses it (RFC 9052 section 4.4).

The signed bytes are ``Sig_structure = ["Signature1", protected, h'', payload]`` where
``protected`` and ``payload`` are the byte strings exactly as received; maps are never
re-encoded. The signature is raw ``r || s`` (48 bytes each), not DER::

    sig = sign_es384(leaf_key, ES384_PROTECTED, payload)
    verify_es384(leaf_key.public_key(), ES384_PROTECTED, payload, sig)  # raises on failure
"""

from __future__ import annotations

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature, encode_dss_signature)

__all__ = ["ES384_PROTECTED", "COSE_SIGN1_TAG", "sig_structure", "sign_es384",
           "verify_es384"]

#: The protected header ``{1: -35}`` (alg = ES384) as the NSM encodes it.
ES384_PROTECTED = b"\xa1\x01\x38\x22"
COSE_SIGN1_TAG = 18
_P384_BYTES = 48


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """CBOR encoding of ``["Signature1", protected, h'', payload]`` (definite lengths)."""
    return cbor2.dumps(["Signature1", bytes(protected), b"", bytes(payload)])


def sign_es384(key: ec.EllipticCurvePrivateKey, protected: bytes, payload: bytes) -> bytes:
    """Sign the Sig_structure with ECDSA P-384/SHA-384; return raw ``r || s`` (96 bytes)."""
    der = key.sign(sig_structure(protected, payload), ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    return r.to_bytes(_P384_BYTES, "big") + s.to_bytes(_P384_BYTES, "big")


def verify_es384(public_key: ec.EllipticCurvePublicKey, protected: bytes, payload: bytes,
                 signature: bytes) -> None:
    """Verify a raw ``r || s`` ES384 signature; raise ``InvalidSignature`` if it is wrong."""
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or \
            not isinstance(public_key.curve, ec.SECP384R1):
        raise InvalidSignature("signing key is not an EC P-384 key")
    if len(signature) != 2 * _P384_BYTES:
        raise InvalidSignature(f"ES384 signature must be 96 bytes, got {len(signature)}")
    r = int.from_bytes(signature[:_P384_BYTES], "big")
    s = int.from_bytes(signature[_P384_BYTES:], "big")
    public_key.verify(encode_dss_signature(r, s), sig_structure(protected, payload),
                      ec.ECDSA(hashes.SHA384()))
