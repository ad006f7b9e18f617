"""KMS ``CiphertextForRecipient``: the CMS EnvelopedData that KMS returns to an enclave.

When a ``Decrypt`` or ``GenerateDataKey`` request carries a ``Recipient`` (an attestation
document holding an RSA public key), KMS leaves ``Plaintext`` empty and returns the
plaintext wrapped for that key instead (``spec/nitro-enclaves.md`` 3.2)::

    ContentInfo { contentType envelopedData (1.2.840.113549.1.7.3),
      EnvelopedData { version 2,
        recipientInfos SET OF exactly one KeyTransRecipientInfo { version 2,
          rid [0] subjectKeyIdentifier = SHA-256(DER SubjectPublicKeyInfo of the key),
          keyEncryptionAlgorithm rsaesOaep (1.2.840.113549.1.1.7)
              { hash SHA-256, MGF1 with SHA-256, empty label },
          encryptedKey = RSA-OAEP(content-encryption key), modulus length },
        encryptedContentInfo { contentType data (1.2.840.113549.1.7.1),
          aes256-CBC (2.16.840.1.101.3.4.1.42) with a 16-byte IV,
          [0] encryptedContent, possibly split into OCTET STRING chunks } } }

KMS encodes it as BER with indefinite lengths. :func:`open_ciphertext_for_recipient`
accepts that (and the DER form), checks every field above exactly, and returns the
plaintext; every failure is a :class:`CMSError` with the reason, never another
exception type::

    key = rsa.generate_private_key(65537, 2048)      # its SPKI goes into the attestation
    data_key = open_ciphertext_for_recipient(response["CiphertextForRecipient"], key)

:func:`make_ciphertext_for_recipient` builds the same structure (for the dev KMS in
``sops_enclave.devtools.kms_attested``), with indefinite lengths in the places where the
KMS sample has them.

This module is pure: bytes and key objects in, bytes out.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Union

from asn1crypto import cms as asn1_cms
from asn1crypto import core as asn1_core
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .errors import SopsError

__all__ = ["CMSError", "open_ciphertext_for_recipient", "make_ciphertext_for_recipient",
           "recipient_key_identifier", "MAX_INPUT_SIZE", "MAX_PLAINTEXT_SIZE",
           "RSA_KEY_SIZES"]

#: Cap on the whole structure. The largest KMS plaintext is 4096 bytes; with an RSA-4096
#: encrypted key the structure stays under 5 KiB.
MAX_INPUT_SIZE = 16 * 1024
#: KMS never returns more plaintext than this (Decrypt's limit).
MAX_PLAINTEXT_SIZE = 4096
_MAX_CONTENT = MAX_PLAINTEXT_SIZE + 16       # PKCS#7 adds 1..16 bytes
#: RSA key sizes the Nitro SDK offers for the recipient key.
RSA_KEY_SIZES = (2048, 3072, 4096)
#: The real structure nests 11 levels deep; anything deeper is not KMS output.
_MAX_DEPTH = 16
_CHUNK = 1024                                # encryptedContent chunk size when writing

_OID_ENVELOPED_DATA = "1.2.840.113549.1.7.3"
_OID_DATA = "1.2.840.113549.1.7.1"
_OID_RSAES_OAEP = "1.2.840.113549.1.1.7"
_OID_MGF1 = "1.2.840.113549.1.1.8"
_OID_P_SPECIFIED = "1.2.840.113549.1.1.9"
_OID_SHA256 = "2.16.840.1.101.3.4.2.1"
_OID_AES256_CBC = "2.16.840.1.101.3.4.1.42"

RSAPublicLike = Union[rsa.RSAPublicKey, bytes]


class CMSError(SopsError):
    """A ``CiphertextForRecipient`` could not be opened; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"CiphertextForRecipient: {reason}")
        self.reason = reason


# --- reading ---------------------------------------------------------------------------

def _scan_ber(data: bytes) -> None:
    """Check the BER framing before handing the bytes to the parser.

    Tags and lengths must be well formed (definite lengths of at most 4 length octets;
    indefinite lengths only on constructed values, closed by end-of-contents), children
    must stay inside their parent, nesting is at most ``_MAX_DEPTH`` and nothing may
    follow the outer value. This bounds the work the recursive parser does on hostile
    input.
    """
    n = len(data)
    pos = 0
    stack: list[int | None] = []       # end of each open constructed value; None: indefinite
    while True:
        while stack and stack[-1] is not None and pos == stack[-1]:
            stack.pop()
        if not stack and pos > 0:
            break
        limit = next((end for end in reversed(stack) if end is not None), n)
        if pos >= limit:
            raise CMSError("truncated BER structure")
        if data[pos] == 0x00:          # end-of-contents
            if pos + 1 >= limit or data[pos + 1] != 0x00:
                raise CMSError("malformed end-of-contents marker")
            if not stack or stack[-1] is not None:
                raise CMSError("end-of-contents outside an indefinite-length value")
            stack.pop()
            pos += 2
            continue
        constructed = bool(data[pos] & 0x20)
        if data[pos] & 0x1F == 0x1F:   # high tag number: base-128, at most 4 octets
            pos += 1
            for _ in range(4):
                if pos >= limit:
                    raise CMSError("truncated BER tag")
                more = data[pos] & 0x80
                pos += 1
                if not more:
                    break
            else:
                raise CMSError("BER tag number too long")
        else:
            pos += 1
        if pos >= limit:
            raise CMSError("truncated BER length")
        first = data[pos]
        pos += 1
        if first == 0x80:
            if not constructed:
                raise CMSError("indefinite length on a primitive value")
            if len(stack) >= _MAX_DEPTH:
                raise CMSError(f"BER nesting deeper than {_MAX_DEPTH}")
            stack.append(None)
            continue
        if first & 0x80:
            count = first & 0x7F
            if not 1 <= count <= 4 or pos + count > limit:
                raise CMSError("bad BER length field")
            length = int.from_bytes(data[pos:pos + count], "big")
            pos += count
        else:
            length = first
        end = pos + length
        if end > limit:
            raise CMSError("BER value runs past its container (truncated?)")
        if constructed:
            if len(stack) >= _MAX_DEPTH:
                raise CMSError(f"BER nesting deeper than {_MAX_DEPTH}")
            stack.append(end)
        else:
            pos = end
    if pos != n:
        raise CMSError(f"{n - pos} bytes after the CMS structure")


def _params_absent_or_null(value: Any) -> bool:
    return isinstance(value, asn1_core.Void) or value.dump() == b"\x05\x00"


def _is_sha256(alg: Any) -> bool:
    return alg["algorithm"].dotted == _OID_SHA256 and _params_absent_or_null(alg["parameters"])


#: Encodings of a key encryption algorithm, exactly as received (header, contents, trailer),
#: that passed :func:`_check_oaep_sha256`. The check depends on these bytes alone, and KMS
#: sends the same ones in every answer; the check's re-encoding (asn1crypto re-encodes an
#: indefinite-length value in full) costs three times the RSA decryption. Bounded.
_OAEP_ACCEPTED: set[tuple[bytes, bytes, bytes]] = set()
_OAEP_ACCEPTED_MAX = 16


def _check_oaep_sha256(alg: Any) -> None:
    received = (bytes(alg._header), bytes(alg.contents), bytes(alg._trailer))
    if received in _OAEP_ACCEPTED:
        return
    if alg["algorithm"].dotted != _OID_RSAES_OAEP:
        raise CMSError(f"key encryption algorithm is {alg['algorithm'].dotted}, "
                       f"expected rsaesOaep ({_OID_RSAES_OAEP})")
    params = alg["parameters"]
    if isinstance(params, asn1_core.Void):
        raise CMSError("RSAES-OAEP parameters are absent (the default would be SHA-1)")
    if not _is_sha256(params["hash_algorithm"]):
        raise CMSError("RSAES-OAEP hash is not SHA-256")
    mgf = params["mask_gen_algorithm"]
    if mgf["algorithm"].dotted != _OID_MGF1 or not _is_sha256(mgf["parameters"]):
        raise CMSError("RSAES-OAEP mask generation is not MGF1 with SHA-256")
    source = params["p_source_algorithm"]
    if source["algorithm"].dotted != _OID_P_SPECIFIED or source["parameters"].native != b"":
        raise CMSError("RSAES-OAEP label is not empty")
    # The parser tolerates stray bytes inside explicit tags; the exact encoding does not.
    if alg.dump() not in _OAEP_ENCODINGS:
        raise CMSError("RSAES-OAEP parameters are not in their expected encoding")
    if len(_OAEP_ACCEPTED) < _OAEP_ACCEPTED_MAX:
        _OAEP_ACCEPTED.add(received)


class _Parts:
    __slots__ = ("ski", "encrypted_key", "iv", "content")

    def __init__(self, ski: bytes, encrypted_key: bytes, iv: bytes, content: bytes):
        self.ski, self.encrypted_key, self.iv, self.content = ski, encrypted_key, iv, content


def _parse(data: bytes) -> _Parts:
    info = asn1_cms.ContentInfo.load(data, strict=True)
    if info["content_type"].dotted != _OID_ENVELOPED_DATA:
        raise CMSError(f"content type is {info['content_type'].dotted}, "
                       f"expected envelopedData ({_OID_ENVELOPED_DATA})")
    env = info["content"]
    if not isinstance(env, asn1_cms.EnvelopedData):
        raise CMSError("content is not an EnvelopedData")
    if env["version"].native != "v2":
        raise CMSError(f"EnvelopedData version is {env['version'].native}, expected v2")
    if not isinstance(env["originator_info"], asn1_core.Void):
        raise CMSError("unexpected originatorInfo")
    if not isinstance(env["unprotected_attrs"], asn1_core.Void):
        raise CMSError("unexpected unprotectedAttrs")
    recipients = env["recipient_infos"]
    if len(recipients) != 1:
        raise CMSError(f"{len(recipients)} recipients, expected exactly one")
    if recipients[0].name != "ktri":
        raise CMSError(f"recipient is {recipients[0].name}, expected KeyTransRecipientInfo")
    ktri = recipients[0].chosen
    if ktri["version"].native != "v2":
        raise CMSError(f"KeyTransRecipientInfo version is {ktri['version'].native}, expected v2")
    if ktri["rid"].name != "subject_key_identifier":
        raise CMSError("recipient is not identified by subjectKeyIdentifier")
    ski = ktri["rid"].chosen.native
    if len(ski) != 32:
        raise CMSError(f"subjectKeyIdentifier is {len(ski)} bytes, expected 32 (SHA-256)")
    _check_oaep_sha256(ktri["key_encryption_algorithm"])
    encrypted_key = ktri["encrypted_key"].native

    eci = env["encrypted_content_info"]
    if eci["content_type"].dotted != _OID_DATA:
        raise CMSError(f"encrypted content type is {eci['content_type'].dotted}, "
                       f"expected data ({_OID_DATA})")
    calg = eci["content_encryption_algorithm"]
    if calg["algorithm"].dotted != _OID_AES256_CBC:
        raise CMSError(f"content encryption is {calg['algorithm'].dotted}, "
                       f"expected AES-256-CBC ({_OID_AES256_CBC})")
    iv_value = calg["parameters"]
    if not isinstance(iv_value, asn1_core.OctetString) or len(iv_value.native) != 16 or \
            calg.dump() != _aes_cbc_alg(iv_value.native):
        raise CMSError("AES-256-CBC parameters are not a 16-byte IV")
    content_value = eci["encrypted_content"]
    if isinstance(content_value, asn1_core.Void):
        raise CMSError("encryptedContent is absent")
    content = content_value.native
    if not 16 <= len(content) <= _MAX_CONTENT or len(content) % 16:
        raise CMSError(f"encryptedContent is {len(content)} bytes; expected a multiple of 16 "
                       f"in 16..{_MAX_CONTENT}")
    return _Parts(ski, encrypted_key, iv_value.native, content)


def recipient_key_identifier(public_key: RSAPublicLike) -> bytes:
    """The ``subjectKeyIdentifier`` KMS uses: SHA-256 of the DER SubjectPublicKeyInfo."""
    return hashlib.sha256(_spki(_load_public(public_key))).digest()


def _spki(public_key: rsa.RSAPublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def _oaep() -> asym_padding.OAEP:
    return asym_padding.OAEP(mgf=asym_padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(),
                             label=None)


def open_ciphertext_for_recipient(data: bytes, private_key: rsa.RSAPrivateKey) -> bytes:
    """Decrypt a KMS ``CiphertextForRecipient`` with the recipient's RSA private key.

    Checks, in order: size (at most :data:`MAX_INPUT_SIZE`), BER framing, content type
    envelopedData v2 with no originator info or unprotected attributes, exactly one
    KeyTransRecipientInfo v2 identified by a 32-byte subjectKeyIdentifier equal to
    SHA-256 of ``private_key``'s public SPKI, RSAES-OAEP with SHA-256/MGF1-SHA-256 and an
    empty label, an encrypted key of the modulus length, data content under AES-256-CBC
    with a 16-byte IV, content a multiple of 16 bytes; then OAEP yields a 32-byte key and
    AES-256-CBC plus PKCS#7 unpadding yields the plaintext. Raises :class:`CMSError`.
    """
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise TypeError("private_key must be an RSA private key")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CMSError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise CMSError("empty input")
    if len(data) > MAX_INPUT_SIZE:
        raise CMSError(f"{len(data)} bytes, more than the {MAX_INPUT_SIZE}-byte limit")
    if private_key.key_size not in RSA_KEY_SIZES:
        raise CMSError(f"RSA-{private_key.key_size} recipient key; expected one of "
                       f"{', '.join(map(str, RSA_KEY_SIZES))} bits")
    _scan_ber(data)
    try:
        parts = _parse(data)
    except CMSError:
        raise
    except Exception as e:  # asn1crypto raises many types on hostile input; fold them all
        detail = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise CMSError(f"malformed CMS structure: {detail}") from None
    if parts.ski != hashlib.sha256(_spki(private_key.public_key())).digest():
        raise CMSError("the recipient's subjectKeyIdentifier does not match this key")
    if len(parts.encrypted_key) != (private_key.key_size + 7) // 8:
        raise CMSError(f"encryptedKey is {len(parts.encrypted_key)} bytes, expected the "
                       f"modulus length {(private_key.key_size + 7) // 8}")
    try:
        cek = private_key.decrypt(parts.encrypted_key, _oaep())
    except ValueError:
        raise CMSError("RSA-OAEP decryption of the content-encryption key failed") from None
    if len(cek) != 32:
        raise CMSError(f"content-encryption key is {len(cek)} bytes, expected 32")
    decryptor = Cipher(algorithms.AES(cek), modes.CBC(parts.iv)).decryptor()
    padded = decryptor.update(parts.content) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        plaintext = unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise CMSError("AES-256-CBC content did not decrypt (bad padding)") from None
    if len(plaintext) > MAX_PLAINTEXT_SIZE:
        raise CMSError(f"plaintext is {len(plaintext)} bytes, more than {MAX_PLAINTEXT_SIZE}")
    return plaintext


# --- writing ---------------------------------------------------------------------------

def _len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _tlv(tag: int, *content: bytes) -> bytes:
    body = b"".join(content)
    return bytes([tag]) + _len(len(body)) + body


def _indefinite(tag: int, *content: bytes) -> bytes:
    return bytes([tag, 0x80]) + b"".join(content) + b"\x00\x00"


def _oid(dotted: str) -> bytes:
    der: bytes = asn1_core.ObjectIdentifier(dotted).dump()
    return der


def _oaep_alg(hash_null: bool, mgf_hash_null: bool) -> bytes:
    sha256 = _tlv(0x30, _oid(_OID_SHA256), b"\x05\x00" if hash_null else b"")
    mgf_sha256 = _tlv(0x30, _oid(_OID_SHA256), b"\x05\x00" if mgf_hash_null else b"")
    return _tlv(0x30, _oid(_OID_RSAES_OAEP), _tlv(
        0x30,
        _tlv(0xA0, sha256),                                    # [0] hashFunc
        _tlv(0xA1, _tlv(0x30, _oid(_OID_MGF1), mgf_sha256))))  # [1] maskGenFunc; pSource default


def _aes_cbc_alg(iv: bytes) -> bytes:
    return _tlv(0x30, _oid(_OID_AES256_CBC), _tlv(0x04, iv))


#: What KMS writes (NULL hash parameters), as in the sample.
_OAEP_ALG = _oaep_alg(True, True)
#: Accepted: hash parameters NULL or absent (both are in use), the label left at its
#: default (DER omits it), nothing else.
_OAEP_ENCODINGS = frozenset(_oaep_alg(a, b) for a in (True, False) for b in (True, False))


def _load_public(public_key: RSAPublicLike) -> rsa.RSAPublicKey:
    key: object = public_key  # any loaded key type until checked below
    if isinstance(public_key, (bytes, bytearray, memoryview)):
        try:
            key = serialization.load_der_public_key(bytes(public_key))
        except (ValueError, TypeError) as e:
            raise ValueError(f"public_key is not a DER SubjectPublicKeyInfo: {e}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("public_key must be an RSA public key")
    if key.key_size not in RSA_KEY_SIZES:
        raise ValueError(f"RSA-{key.key_size} is not one of "
                         f"{', '.join(map(str, RSA_KEY_SIZES))} bits")
    return key


def make_ciphertext_for_recipient(plaintext: bytes, public_key: RSAPublicLike) -> bytes:
    """Wrap ``plaintext`` for ``public_key`` (an RSA public key or its DER SPKI) as KMS does.

    Output is BER shaped like the KMS sample: indefinite lengths on the ContentInfo, its
    ``[0]``, the EnvelopedData, the EncryptedContentInfo and the ``[0]`` encryptedContent
    (split into OCTET STRING chunks of 1024 bytes); definite lengths everywhere else.
    A fresh 32-byte key and IV come from ``os.urandom``. Raises ``ValueError`` for a
    non-RSA key, an unsupported key size, or plaintext over :data:`MAX_PLAINTEXT_SIZE`.
    """
    plaintext = bytes(plaintext)
    if len(plaintext) > MAX_PLAINTEXT_SIZE:
        raise ValueError(f"plaintext is {len(plaintext)} bytes, more than {MAX_PLAINTEXT_SIZE}")
    key = _load_public(public_key)
    cek, iv = os.urandom(32), os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    content = encryptor.update(padded) + encryptor.finalize()
    encrypted_key = key.encrypt(cek, _oaep())

    ktri = _tlv(0x30,
                b"\x02\x01\x02",                                          # version 2
                _tlv(0x80, hashlib.sha256(_spki(key)).digest()),          # [0] SKI
                _OAEP_ALG,
                _tlv(0x04, encrypted_key))
    chunks = [_tlv(0x04, content[i:i + _CHUNK]) for i in range(0, len(content), _CHUNK)]
    eci = _indefinite(0x30,
                      _oid(_OID_DATA),
                      _aes_cbc_alg(iv),
                      _indefinite(0xA0, *chunks))                          # [0] constructed
    enveloped = _indefinite(0x30, b"\x02\x01\x02", _tlv(0x31, ktri), eci)
    return _indefinite(0x30, _oid(_OID_ENVELOPED_DATA), _indefinite(0xA0, enveloped))
