"""The ``ENC[AES256_GCM,data:...,iv:...,tag:...,type:...]`` value codec (pure).

The IV is 32 random bytes, as sops uses; ``cryptography``'s AESGCM accepts nonces of 8 to 128
bytes. The associated data is the path string of the value (see :mod:`sops_enclave.walk`).
Randomness is injectable through ``iv=``; sops' "keep the IV of an unchanged value" behaviour is
the explicit ``previous`` map of :class:`ValueCipher`, never hidden state.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from typing import Any, Callable

from cryptography.exceptions import InvalidTag
# The same class cryptography.hazmat.primitives.ciphers.aead re-exports (``AESGCM =
# rust_openssl.aead.AESGCM``), taken from the bindings directly: importing the ``ciphers``
# package first loads its algorithm/mode tables, a few ms of every process start.
from cryptography.hazmat.bindings._rust import openssl as _rust_openssl

AESGCM = _rust_openssl.aead.AESGCM

from sops_enclave.errors import ErrorDecryptingTree, ErrorEncryptingTree
from sops_enclave.goformat import plain_bytes
from sops_enclave.tree import Comment, Timestamp

__all__ = ["ValueCipher", "is_encrypted_value", "DecryptError"]

# sops' pattern is data:(.+),iv:(.+),... ; base64 never holds a comma, so [^,]* matches the
# same valid strings without the polynomial backtracking of four greedy groups.
_ENC_RE = re.compile(r"^ENC\[AES256_GCM,data:([^,]+),iv:([^,]+),tag:([^,]+),type:([^\]]+)\]")
_BOOL_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_BOOL_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def _b64_error_offset(s: str) -> int:
    """Where Go's base64.StdEncoding reports a string as corrupt (its CorruptInputError):
    the first character outside the alphabet, else the start of an incomplete last group
    (padding mistakes are reported near enough)."""
    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
    for i, ch in enumerate(s):
        if ch not in alphabet:
            if ch != "=" or i % 4 < 2:
                return i
            break
    return len(s) - len(s) % 4 if len(s) % 4 else len(s)


class DecryptError(ErrorDecryptingTree):
    """A value that cannot be decrypted (exit 25), whatever the cause."""


def is_encrypted_value(v: Any) -> bool:
    return isinstance(v, str) and v.startswith("ENC[AES256_GCM,")


def _b64d(s: str) -> bytes:
    return base64.b64decode(s, validate=True)


def _parse_plain(plaintext: bytes, typ: str) -> Any:
    if typ == "str":
        return plaintext.decode("utf-8", "surrogateescape")
    if typ == "int":
        try:
            return int(plaintext.decode("ascii"), 10)
        except ValueError:
            raise DecryptError("could not parse int") from None
    if typ == "float":
        try:
            return float(plaintext.decode("ascii"))
        except ValueError:
            raise DecryptError("could not parse float") from None
    if typ == "bool":
        s = plaintext.decode("ascii", "replace")
        if s in _BOOL_TRUE:
            return True
        if s in _BOOL_FALSE:
            return False
        raise DecryptError("could not parse bool")
    if typ == "time":
        try:
            return Timestamp(plaintext.decode("utf-8"))
        except UnicodeDecodeError:
            raise DecryptError("could not parse time") from None
    if typ == "comment":
        return Comment(plaintext.decode("utf-8", "surrogateescape"))
    if typ == "bytes":
        return bytes(plaintext)
    raise DecryptError(f"Unknown datatype: {typ}")


class ValueCipher:
    """Encrypts and decrypts tree values under one data key.

    ``previous`` maps ``(aad, plaintext bytes, type)`` to the IV a value had when it was
    decrypted; encrypting the same plaintext at the same path reuses that IV so unchanged
    values keep their ciphertext (sops' behaviour for edit/set/unset).
    """

    def __init__(self, key: bytes, *, random: Callable[[int], bytes] = os.urandom,
                 previous: dict[tuple[bytes, bytes, str], bytes] | None = None):
        # Go's aes.NewCipher takes 16-, 24- and 32-byte keys (AES-128/192/256-GCM, whatever
        # the ENC tag says); any other size fails on the first value, as in sops.
        self._aead = AESGCM(key) if len(key) in (16, 24, 32) else None
        self._key_size = len(key)
        self._random = random
        self.previous = previous
        self.record = False
        self.seen: dict[tuple[bytes, bytes, str], bytes] = {}
        #: when a list, every string :meth:`decrypt` could not decrypt, with the error text
        #: (the tree walk keeps such comments as plain ones; sops warns about each)
        self.failures: list[tuple[str, str]] | None = None

    def encrypt(self, value: Any, aad: bytes, *, iv: bytes | None = None) -> str:
        """``ENC[...]`` for a scalar (or :class:`Comment`) at the path ``aad``."""
        if isinstance(value, Comment):
            pt, typ = value.value.encode("utf-8", "surrogateescape"), "comment"
        else:
            pt, typ = plain_bytes(value)
        if iv is None and self.previous is not None:
            iv = self.previous.get((aad, pt, typ))
        if self._aead is None:
            raise ErrorEncryptingTree("Could not initialize AES GCM encryption cipher: "
                                      f"crypto/aes: invalid key size {self._key_size}")
        if iv is None:
            iv = self._random(32)
        ct = self._aead.encrypt(iv, pt, aad)
        b64 = base64.b64encode
        return "ENC[AES256_GCM,data:%s,iv:%s,tag:%s,type:%s]" % (
            b64(ct[:-16]).decode(), b64(iv).decode(), b64(ct[-16:]).decode(), typ)

    def decrypt_raw(self, s: str, aad: bytes) -> tuple[bytes, str]:
        m = _ENC_RE.match(s) if isinstance(s, str) else None
        if m is None:
            shown = s if isinstance(s, str) and len(s) < 64 else "value"
            raise DecryptError(f"Input string {shown} does not match sops' data format")
        data_s, iv_s, tag_s, typ = m.groups()
        parts = []
        for name, text in (("data", data_s), ("iv", iv_s), ("tag", tag_s)):
            try:
                parts.append(_b64d(text))
            except (binascii.Error, ValueError):
                raise DecryptError(f"Error base64-decoding {name}: illegal base64 data at input "
                                   f"byte {_b64_error_offset(text)}") from None
        data, iv, tag = parts
        if self._aead is None:
            raise DecryptError(f"crypto/aes: invalid key size {self._key_size}")
        if len(iv) < 8 or len(iv) > 128:
            raise DecryptError("Could not decrypt with AES_GCM: invalid nonce size")
        try:
            pt = self._aead.decrypt(iv, data + tag, aad)
        except InvalidTag:
            raise DecryptError("Could not decrypt with AES_GCM: cipher: message authentication "
                               "failed") from None
        if self.record:
            self.seen[(aad, pt, typ)] = iv
        return pt, typ

    def decrypt(self, s: str, aad: bytes) -> Any:
        """The plaintext value of an ``ENC[...]`` string (a :class:`Comment` for comments)."""
        try:
            pt, typ = self.decrypt_raw(s, aad)
            return _parse_plain(pt, typ)
        except DecryptError as e:
            if self.failures is not None:
                self.failures.append((s, e.message))
            raise
