"""SSH signatures on git commits, verified without ``git`` or ``ssh-keygen`` (runs in the enclave).

A commit signed with ``git commit -S`` and ``gpg.format=ssh`` carries a ``gpgsig`` header whose
value is an armored SSHSIG blob (``-----BEGIN SSH SIGNATURE-----``). The signed message is the
commit object without that header. The blob (PROTOCOL.sshsig in OpenSSH) is::

    "SSHSIG" uint32(1) string(public key) string(namespace) string(reserved)
             string(hash algorithm) string(signature)

and the signature covers ``"SSHSIG" string(namespace) string(reserved) string(hash algorithm)
string(H(message))``. Accepted: namespace ``git``, hash ``sha256``/``sha512``, keys
``ssh-ed25519``, ``ecdsa-sha2-nistp256`` and ``ssh-rsa`` (signature ``rsa-sha2-512`` or
``rsa-sha2-256``; SHA-1 ``ssh-rsa`` signatures are refused), RSA keys of 2048 bits or more.
Security-key (``sk-``) and certificate keys are refused. Parsing of the public key itself is
left to ``cryptography``::

    sig = commit_signature(commit_bytes)         # None when unsigned
    key_blob = verify_commit_signature(commit_bytes, sig)   # raises SignatureError
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

__all__ = ["SignatureError", "CommitSignature", "commit_signature", "split_signed_commit",
           "parse_sshsig", "verify_commit_signature", "key_fingerprint", "KEY_TYPES"]

_MAGIC = b"SSHSIG"
_BEGIN = b"-----BEGIN SSH SIGNATURE-----"
_END = b"-----END SSH SIGNATURE-----"
_HASHES = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}
#: Public key types accepted for commit signers.
KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa")
_RSA_SIGS = {"rsa-sha2-512": hashes.SHA512, "rsa-sha2-256": hashes.SHA256}
_MAX_SIG = 16 * 1024


class SignatureError(ValueError):
    """The commit is unsigned, or its signature is malformed or does not verify."""


@dataclass(frozen=True)
class CommitSignature:
    """A parsed SSHSIG: the signer's public key blob and type, namespace, hash, signature."""

    public_key: bytes
    key_type: str
    namespace: str
    hash_algorithm: str
    sig_type: str
    signature: bytes


def key_fingerprint(blob: bytes) -> str:
    """OpenSSH's ``SHA256:<base64, no padding>`` fingerprint of a public key blob."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise SignatureError("SSH signature is truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def string(self) -> bytes:
        return self.take(self.u32())

    def text(self) -> str:
        try:
            return self.string().decode("ascii")
        except UnicodeDecodeError:
            raise SignatureError("SSH signature holds a non-ASCII name") from None

    def end(self) -> None:
        if self.pos != len(self.data):
            raise SignatureError("SSH signature has trailing bytes")


def split_signed_commit(commit: bytes) -> tuple[bytes, bytes | None]:
    """``(signed message, armored signature or None)``: the commit object without its
    ``gpgsig`` header (continuation lines included), and that header's value."""
    head, sep, body = commit.partition(b"\n\n")
    lines = head.split(b"\n")
    kept: list[bytes] = []
    sig: list[bytes] | None = None
    found = False
    in_sig = False
    for line in lines:
        if in_sig and line.startswith(b" "):
            assert sig is not None
            sig.append(line[1:])
            continue
        in_sig = False
        if line.startswith((b"gpgsig ", b"gpgsig-sha256 ")):
            if found:
                raise SignatureError("the commit has more than one signature header")
            found, in_sig = True, True
            sig = [line.split(b" ", 1)[1]]
            continue
        kept.append(line)
    message = b"\n".join(kept) + sep + body
    return message, (b"\n".join(sig) if sig is not None else None)


def parse_sshsig(armored: bytes) -> CommitSignature:
    """Parse an armored SSHSIG; raise :class:`SignatureError` for anything else."""
    if len(armored) > _MAX_SIG:
        raise SignatureError("the signature is too large")
    text = armored.strip()
    if text.startswith(b"-----BEGIN PGP SIGNATURE-----"):
        raise SignatureError("the commit carries an OpenPGP signature; only SSH signatures "
                             "(gpg.format=ssh) are supported")
    if not text.startswith(_BEGIN) or not text.endswith(_END):
        raise SignatureError("the commit signature is not an SSH signature")
    inner = text[len(_BEGIN):-len(_END)]
    try:
        blob = base64.b64decode(b"".join(inner.split()), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("the SSH signature is not valid base64") from None
    r = _Reader(blob)
    if r.take(6) != _MAGIC:
        raise SignatureError("the SSH signature does not start with SSHSIG")
    if r.u32() != 1:
        raise SignatureError("unsupported SSH signature version")
    public_key = r.string()
    namespace = r.text()
    r.string()  # reserved
    hash_alg = r.text()
    sig_blob = r.string()
    r.end()
    key_type = _Reader(public_key).text()
    s = _Reader(sig_blob)
    sig_type = s.text()
    signature = s.string()
    s.end()
    return CommitSignature(public_key, key_type, namespace, hash_alg, sig_type, signature)


def _signed_data(sig: CommitSignature, message: bytes) -> bytes:
    def string(b: bytes) -> bytes:
        return len(b).to_bytes(4, "big") + b
    digest = _HASHES[sig.hash_algorithm](message).digest()
    return (_MAGIC + string(sig.namespace.encode()) + string(b"")
            + string(sig.hash_algorithm.encode()) + string(digest))


def _verify(sig: CommitSignature, data: bytes) -> None:
    line = sig.key_type.encode() + b" " + base64.b64encode(sig.public_key)
    try:
        key = load_ssh_public_key(line)
    except (ValueError, TypeError) as e:
        raise SignatureError(f"the signing key cannot be read: {e}") from None
    try:
        if sig.key_type == "ssh-ed25519":
            if sig.sig_type != "ssh-ed25519" or not isinstance(key, ed25519.Ed25519PublicKey):
                raise SignatureError("signature type does not match the ed25519 key")
            key.verify(sig.signature, data)
        elif sig.key_type == "ecdsa-sha2-nistp256":
            if sig.sig_type != "ecdsa-sha2-nistp256" or not isinstance(
                    key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
                raise SignatureError("signature type does not match the ECDSA P-256 key")
            rs = _Reader(sig.signature)
            r_, s_ = (int.from_bytes(rs.string(), "big"), int.from_bytes(rs.string(), "big"))
            rs.end()
            key.verify(encode_dss_signature(r_, s_), data, ec.ECDSA(hashes.SHA256()))
        elif sig.key_type == "ssh-rsa":
            if sig.sig_type not in _RSA_SIGS:
                raise SignatureError(f"RSA signature type {sig.sig_type!r} is not accepted "
                                     "(rsa-sha2-512 or rsa-sha2-256)")
            if not isinstance(key, rsa.RSAPublicKey) or key.key_size < 2048:
                raise SignatureError("RSA signing keys must have at least 2048 bits")
            key.verify(sig.signature, data, padding.PKCS1v15(), _RSA_SIGS[sig.sig_type]())
        else:
            raise SignatureError(f"key type {sig.key_type!r} is not accepted "
                                 f"({', '.join(KEY_TYPES)})")
    except InvalidSignature:
        raise SignatureError("the commit signature does not verify") from None


def commit_signature(commit: bytes) -> CommitSignature | None:
    """The commit's parsed SSH signature, or None when it has no ``gpgsig`` header."""
    _, armored = split_signed_commit(commit)
    return None if armored is None else parse_sshsig(armored)


def verify_commit_signature(commit: bytes, namespace: str = "git") -> CommitSignature:
    """Verify the commit's SSH signature over the commit without its signature header;
    return it (its ``public_key`` is the blob to look up among the allowed signers)."""
    message, armored = split_signed_commit(commit)
    if armored is None:
        raise SignatureError("the commit is not signed")
    sig = parse_sshsig(armored)
    if sig.namespace != namespace:
        raise SignatureError(f"the signature's namespace is {sig.namespace!r}, not "
                             f"{namespace!r}")
    if sig.hash_algorithm not in _HASHES:
        raise SignatureError(f"unsupported signature hash {sig.hash_algorithm!r}")
    _verify(sig, _signed_data(sig, message))
    return sig
