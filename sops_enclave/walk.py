"""Encrypt and decrypt a whole tree, and compute its MAC, as sops' ``Tree.Encrypt``/``Decrypt``.

Pure: the cipher (and so the data key and randomness) is passed in. The walk is depth-first in
document order; the associated data of a value is its map-key path joined with ``:`` plus a
trailing ``:`` (list indices are not part of it). The MAC is SHA-512 over the plaintext bytes of
every non-comment leaf (only encrypted ones with ``mac_only_encrypted``), as uppercase hex.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any, Protocol

from sops_enclave.cipher import ValueCipher
from sops_enclave.errors import ErrorEncryptingTree, MacMismatch, SopsError
from sops_enclave.goformat import plain_bytes
from sops_enclave.record import record
from sops_enclave.tree import Branch, Comment

__all__ = ["CryptRule", "encrypt_tree", "decrypt_tree", "verify_mac", "CRYPT_RULE_NAMES",
           "MAC_ONLY_ENCRYPTED_INIT"]

CRYPT_RULE_NAMES = ("unencrypted_suffix", "encrypted_suffix", "unencrypted_regex",
                    "encrypted_regex", "unencrypted_comment_regex", "encrypted_comment_regex")

#: SHA-256("sops"), fed first into the MAC when ``mac_only_encrypted`` is set.
MAC_ONLY_ENCRYPTED_INIT = hashlib.sha256(b"sops").digest()

#: What the walker calls for each leaf and comment: ``(value, path, comment stack)``.
_OnLeaf = Callable[[Any, list[str], list[list[str]]], Any]


class ValueDecrypter(Protocol):
    """What :func:`decrypt_tree` needs of its cipher: a :class:`ValueCipher` or a wrapper."""

    def decrypt(self, s: str, aad: bytes, /) -> Any: ...


@record(frozen=True)
class CryptRule:
    """Which leaves get encrypted: at most one of the six sops rules (``kind`` None = all)."""

    kind: str | None = None
    value: str = ""

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in CRYPT_RULE_NAMES:
            raise ValueError(f"unknown crypt rule {self.kind}")

    def matches(self, s: str) -> bool:
        """sops' ``matched, _ := regexp.Match(rule, s)`` (Go RE2 syntax, see goregex).

        Compiled on first use, never when the rule is only loaded (filestatus, metadata): a
        regexp Go refuses matches nothing, as in sops. One Go accepts but sops-enclave cannot
        translate (a Unicode script class) is an error rather than a different answer.
        """
        from sops_enclave import goregex  # loaded with the first regex rule, not at start-up

        rx = self.__dict__.get("_rx", self)
        if rx is self:
            try:
                rx = goregex.compile_go(self.value)
            except goregex.GoRegexError:
                rx = None
            except goregex.GoRegexUnsupported as e:
                raise SopsError(f"{self.kind}: {e}") from None
            object.__setattr__(self, "_rx", rx)
        return rx is not None and rx.search(goregex.go_text(s)) is not None

    def should_encrypt(self, path: list[str], stack: list[list[str]], is_comment: bool) -> bool:
        kind = self.kind
        if kind is None:
            return True
        if kind == "unencrypted_suffix":
            return not any(p.endswith(self.value) for p in path)
        if kind == "encrypted_suffix":
            return any(p.endswith(self.value) for p in path)
        rx = self.matches
        if kind == "unencrypted_regex":
            return not any(rx(p) for p in path)
        if kind == "encrypted_regex":
            return any(rx(p) for p in path)
        if kind == "unencrypted_comment_regex":
            return not any(rx(c) for cs in stack for c in cs)
        # encrypted_comment_regex: the marker comment itself stays plaintext.
        last = len(stack) - 1
        for i, cs in enumerate(stack):
            for j, c in enumerate(cs):
                if is_comment and i == last and j == len(cs) - 1:
                    continue
                if rx(c):
                    return True
        return False


class _Walker:
    def __init__(self, rule: CryptRule, mac_only_encrypted: bool, on_leaf: _OnLeaf) -> None:
        self.rule = rule
        self.simple = rule.kind is None or not rule.kind.endswith("comment_regex")
        self.hash = hashlib.sha512()
        if mac_only_encrypted:
            self.hash.update(MAC_ONLY_ENCRYPTED_INIT)
        self.mac_only = mac_only_encrypted
        self.on_leaf = on_leaf

    def branch(self, br: Branch, path: list[str], stack: list[list[str]]) -> Branch:
        frame: list[str] = []
        stack = stack + [frame]
        out = Branch()
        on_leaf = self.on_leaf
        for key, value in br:
            if isinstance(key, Comment):
                frame.append(key.value)
                new = on_leaf(key, path, stack)
                out.append((new if isinstance(new, Comment) else Comment(new), None))
                continue
            if not isinstance(key, str):
                raise ErrorEncryptingTree(
                    f"Error walking tree: Tree contains a non-string key (type {_gotype(key)}): "
                    f"{key}. Only string keys aresupported")
            sub = path + [key]
            if isinstance(value, Branch):
                new = self.branch(value, sub, stack)
            elif isinstance(value, list):
                new = self.seq(value, sub, stack)
            elif value is None:
                new = None
            else:
                new = on_leaf(value, sub, stack)
            out.append((key, new))
            if frame:
                frame.clear()
        return out

    def seq(self, seq: list[Any], path: list[str], stack: list[list[str]]) -> list[Any]:
        frame: list[str] = []
        stack = stack + [frame]
        out = []
        on_leaf = self.on_leaf
        for value in seq:
            is_comment = isinstance(value, Comment)
            if is_comment:
                frame.append(value.value)
            new: Any
            if isinstance(value, Branch):
                new = self.branch(value, path, stack)
            elif isinstance(value, list):
                new = self.seq(value, path, stack)
            elif value is None:
                new = None
            else:
                new = on_leaf(value, path, stack)
            out.append(new)
            if not is_comment and frame:
                frame.clear()
        return out


def _gotype(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if v is None:
        return "<nil>"
    return type(v).__name__


def _aad(path: list[str]) -> bytes:
    return (":".join(path) + ":").encode("utf-8", "surrogateescape")


def encrypt_tree(branches: list[Branch], cipher: ValueCipher, rule: CryptRule = CryptRule(),
                 mac_only_encrypted: bool = False) -> tuple[list[Branch], str]:
    """Encrypt every leaf the rule selects. Returns the new branches and the MAC (hex)."""
    def on_leaf(value: Any, path: list[str], stack: list[list[str]]) -> Any:
        is_comment = isinstance(value, Comment)
        enc = rule.should_encrypt(path, stack, is_comment)
        if not is_comment and (not w.mac_only or enc):
            try:
                pt, _ = plain_bytes(value)
            except TypeError as e:
                raise ErrorEncryptingTree(f"Error walking tree: {e}") from None
            w.hash.update(pt)
        if not enc:
            return value
        if (is_comment and value.value == "") or value == "":
            return ""  # sops never encrypts an empty string or comment
        out = cipher.encrypt(value, _aad(path))
        if is_comment and rule.kind == "unencrypted_comment_regex" and rule.matches(out):
            raise ErrorEncryptingTree(
                "Error walking tree: Could not encrypt value: Encrypted comment matches "
                "UnencryptedCommentRegex! Make sure that UnencryptedCommentRegex cannot match "
                "an encrypted comment.")
        return out

    w = _Walker(rule, mac_only_encrypted, on_leaf)
    out = [w.branch(b, [], []) for b in branches]
    return out, w.hash.hexdigest().upper()


def decrypt_tree(branches: list[Branch], cipher: ValueDecrypter, rule: CryptRule = CryptRule(),
                 mac_only_encrypted: bool = False) -> tuple[list[Branch], str]:
    """Decrypt every leaf the rule selects. Returns plaintext branches and the computed MAC."""
    def on_leaf(value: Any, path: list[str], stack: list[list[str]]) -> Any:
        is_comment = isinstance(value, Comment)
        enc = rule.should_encrypt(path, stack, is_comment)
        if enc:
            if is_comment:
                if value.value == "":
                    v: Any = ""
                else:
                    try:
                        v = cipher.decrypt(value.value, _aad(path))
                    except SopsError:
                        v = value  # an old, unencrypted comment: kept as it is
            elif value == "":
                v = ""
            else:
                try:
                    v = cipher.decrypt(value, _aad(path))
                except SopsError as e:
                    raise type(e)("Error decrypting tree: Error walking tree: Could not decrypt "
                                  f"value: {e.message}") from None
        else:
            v = value
        if (not w.mac_only or enc) and not isinstance(v, Comment):
            w.hash.update(plain_bytes(v)[0])
        return v

    w = _Walker(rule, mac_only_encrypted, on_leaf)
    out = [w.branch(b, [], []) for b in branches]
    return out, w.hash.hexdigest().upper()


def verify_mac(cipher: ValueCipher, stored_mac: str, aad: bytes, computed: str) -> None:
    """The one MAC check (sops' messages, exit 51): ``stored_mac`` (the metadata's ``mac``,
    an ``ENC[...]`` value under ``aad``) must decrypt to ``computed`` (from
    :func:`decrypt_tree`), compared in constant time."""
    if stored_mac == "":
        raise MacMismatch(f"MAC mismatch. File has no MAC, computed {computed}")
    try:
        stored = cipher.decrypt(stored_mac, aad)
    except SopsError as e:
        raise MacMismatch(f"Cannot decrypt MAC: {e.message}") from None
    if not isinstance(stored, str) or not hmac.compare_digest(stored.encode(), computed.encode()):
        raise MacMismatch(f"MAC mismatch. File has {stored}, computed {computed}")
