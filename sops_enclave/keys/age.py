"""age master keys through pyrage: an ASCII-armored age file holding the data key.

As sops 3.11 (``age/keysource.go``), a recipient is an X25519 key (``age1...``), an SSH
public key (``ssh-ed25519 ...``, ``ssh-rsa ...``, stored whole in the metadata) or a plugin
recipient (``age1<name>1...``, wrapped by the ``age-plugin-<name>`` binary). Identities are
X25519 secret keys, plugin identities (``AGE-PLUGIN-<NAME>-1...``), SSH private keys (see
:mod:`sops_enclave.keys.discovery` for where they are found) and passphrase-protected
identity files. Post-quantum hybrid keys (``age1pq1...``, ``AGE-SECRET-KEY-PQ-1...``) are
refused: pyrage has no hybrid (ML-KEM) X25519 keys.

:func:`unwrap` tries identities in the order Go's ``age.Decrypt`` does (native X25519 keys
first, then SSH, encrypted and plugin identities in load order) and builds sops' error text
(``failed to create reader for decrypting sops data key with age: ...``) including what the
identity discovery found wrong or empty.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import sys
from typing import Mapping, Sequence

import pyrage

from sops_enclave.errors import KeyMismatch, SopsError, go_errno_text

__all__ = ["parse_recipient", "parse_identities", "parse_identity", "parse_ssh_identity",
           "wrap", "unwrap", "format_error", "EncryptedSSHIdentity", "EncryptedIdentityFile",
           "PluginIdentity"]

_PQ_MESSAGE = ("post-quantum hybrid age keys are not supported by sops-enclave (pyrage has "
               "no ML-KEM hybrid X25519 keys)")


def _quoted(r: str) -> str:
    """Go's %q (only on error paths, so the config module loads lazily)."""
    from sops_enclave.goformat import go_quote as _go_quote

    return _go_quote(r)


_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def _bech32_error(s: str, key_len: int = 32) -> str | None:
    """The error text of age's bech32 ``Decode`` (then the key length check) for ``s``, or
    None when it decodes to ``key_len`` bytes."""
    if s.lower() != s and s.upper() != s:
        return "mixed case"
    pos = s.rfind("1")
    if pos < 1 or pos + 7 > len(s):
        return f"separator '1' at invalid position: pos={pos}, len={len(s)}"
    hrp = s[:pos]
    for i, ch in enumerate(hrp):
        if not 33 <= ord(ch) <= 126:
            return f"invalid character human-readable part: s[{i}]={ord(ch)}"
    data = []
    off = 0
    for ch in s[pos + 1:].lower():
        d = _BECH32.find(ch)
        if d < 0:
            return f"invalid character data part: s[{off}]={ord(ch)}"
        data.append(d)
        off += len(ch.encode("utf-8"))
    gen = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    chk = 1
    for v in [ord(c) >> 5 for c in hrp.lower()] + [0] + [ord(c) & 31 for c in hrp.lower()] + data:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            if (top >> i) & 1:
                chk ^= gen[i]
    if chk != 1:
        return "invalid checksum"
    nbits = (len(data) - 6) * 5
    if nbits // 8 != key_len:
        return None if key_len < 0 else "invalid X25519 key"
    return None


def _is_plugin_recipient(r: str) -> bool:
    return r.startswith("age1") and not r.startswith("age1pq1") and r.count("1") > 1


def parse_recipient(s: str):
    """A pyrage recipient for an ``age1...``, ``age1<plugin>1...`` or ``ssh-...`` string, with
    sops' error text."""
    r = s.strip()
    if r.startswith("age1pq1"):
        raise SopsError(f"failed to parse input as Bech32-encoded age public key: {_PQ_MESSAGE}")
    if _is_plugin_recipient(r):
        try:
            return pyrage.plugin.Recipient.from_str(r)
        except Exception as e:
            raise SopsError("failed to parse input as age key from age plugin: invalid "
                            f"recipient encoding: {e}") from None
    if r.startswith("age1"):
        try:
            return pyrage.x25519.Recipient.from_str(r)
        except Exception:
            why = _bech32_error(r)
            if why is None or why == "invalid X25519 key":
                why = "invalid X25519 public key"
            raise SopsError("failed to parse input as Bech32-encoded age public key: "
                            f"malformed recipient {_quoted(r)}: {why}") from None
    if r.startswith("ssh-"):
        kind = r.split(None, 1)[0]
        try:
            return pyrage.ssh.Recipient.from_str(r)
        except Exception:
            if kind not in ("ssh-rsa", "ssh-ed25519") and len(r.split()) > 1:
                raise SopsError("failed to parse input as age-ssh public key: unknown SSH "
                                f"recipient type: {_quoted(kind)}") from None
            raise SopsError("failed to parse input as age-ssh public key: malformed SSH "
                            f"recipient: {_quoted(r)}") from None
    raise SopsError(f"failed to parse input, unknown recipient type: {_quoted(r)}")


# ------------------------------------------------------------------ terminal prompts

class _PromptError(Exception):
    pass


def _read_secret(prompt: str) -> str:
    """age's ``readSecret``: the prompt on /dev/tty (or a terminal stdin), no echo."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError as e:
        if sys.stdin is not None and sys.stdin.isatty():
            fd = os.dup(sys.stdin.fileno())
        else:
            raise _PromptError("standard input is not a terminal, and /dev/tty is not "
                               f"available: open /dev/tty: {go_errno_text(e)}") from None
    import termios

    try:
        os.write(fd, (prompt + " ").encode())
        old = termios.tcgetattr(fd)
        new = list(old)
        new[3] &= ~termios.ECHO
        termios.tcsetattr(fd, termios.TCSAFLUSH, new)
        try:
            buf = b""
            while not buf.endswith(b"\n"):
                ch = os.read(fd, 1)
                if not ch:
                    break
                buf += ch
        finally:
            termios.tcsetattr(fd, termios.TCSAFLUSH, old)
            os.write(fd, b"\r\n\x1b[F\x1b[K")
        return buf.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
    except termios.error as e:
        raise _PromptError(str(e)) from None
    finally:
        os.close(fd)


class _PluginUI:
    """pyrage callbacks, as sops' ``pluginTerminalUI``: messages go to the AGE logger at info
    level (not shown), values are read from the terminal. pyrage cannot take an exception
    from a callback, so a failure answers None (cancelled)."""

    def display_message(self, message: str) -> None:
        return None

    def confirm(self, message: str, yes: str, no: str | None) -> bool | None:
        try:
            if not no:
                _read_secret(f"{message} (press enter for {_quoted(yes)})")
                return True
            while True:
                s = _read_secret(f"{message} (press [1] for {_quoted(yes)} or [2] for "
                                 f"{_quoted(no)})")
                if s[:1] == "1":
                    return True
                if s[:1] == "2":
                    return False
        except _PromptError:
            return None

    def request_public_string(self, description: str) -> str | None:
        try:
            return _read_secret(description)
        except _PromptError:
            return None

    def request_passphrase(self, description: str) -> str | None:
        return self.request_public_string(description)


# ------------------------------------------------------------------ identities

class PluginIdentity:
    """An ``AGE-PLUGIN-<NAME>-1...`` identity, unwrapped by ``age-plugin-<name>``."""

    def __init__(self, text: str):
        self.text = text
        self.ident = pyrage.plugin.Identity.from_str(text)
        self.name = self.ident.plugin()

    def pyrage_identity(self, env: Mapping[str, str] | None = None):
        _check_plugin_binary(self.name, env)
        return pyrage.plugin.IdentityPluginV1(self.name, [self.ident], _PluginUI())


def _check_plugin_binary(name: str, env: Mapping[str, str] | None) -> None:
    import shutil

    path = (env or os.environ).get("PATH", os.defpath)
    if shutil.which("age-plugin-" + name, path=path) is None:
        raise _FatalUnwrap(f"{name} plugin: couldn't start plugin: {_quoted(name)} plugin not "
                           f"found: exec: {_quoted('age-plugin-' + name)}: executable file not "
                           "found in $PATH")


def _ssh_string(buf: bytes, off: int) -> tuple[bytes, int]:
    if off + 4 > len(buf):
        raise ValueError("short")
    (n,) = struct.unpack(">I", buf[off:off + 4])
    if off + 4 + n > len(buf):
        raise ValueError("short")
    return buf[off + 4:off + 4 + n], off + 4 + n


def _openssh_public_blob(data: bytes) -> bytes | None:
    """The public key blob of an OpenSSH private key file (kept in clear when encrypted)."""
    text = data.decode("ascii", "replace")
    begin, end = "-----BEGIN OPENSSH PRIVATE KEY-----", "-----END OPENSSH PRIVATE KEY-----"
    if begin not in text or end not in text:
        return None
    body = text.split(begin, 1)[1].split(end, 1)[0]
    try:
        raw = base64.b64decode("".join(body.split()))
        magic = b"openssh-key-v1\x00"
        if not raw.startswith(magic):
            return None
        off = len(magic)
        _, off = _ssh_string(raw, off)  # cipher
        _, off = _ssh_string(raw, off)  # kdf
        _, off = _ssh_string(raw, off)  # kdf options
        off += 4  # number of keys
        blob, _ = _ssh_string(raw, off)
        return blob
    except (ValueError, struct.error, base64.binascii.Error):
        return None


def _ssh_fingerprint(blob: bytes) -> str:
    """agessh's stanza tag: the first 4 bytes of SHA-256 of the key, unpadded base64."""
    return base64.b64encode(hashlib.sha256(blob).digest()[:4]).decode().rstrip("=")


class EncryptedSSHIdentity:
    """A passphrase-protected SSH key: the passphrase is asked only when a stanza of the
    file is for this key (agessh ``EncryptedSSHIdentity``)."""

    def __init__(self, path: str, data: bytes, blob: bytes):
        self.path = path
        self.data = data
        self.blob = blob
        self.key_type = _ssh_string(blob, 0)[0].decode("ascii", "replace")
        self.fingerprint = _ssh_fingerprint(blob)
        self.decrypted = None

    def matches(self, stanzas: list[list[str]]) -> bool:
        for s in stanzas:
            if s and s[0] == self.key_type:
                if len(s) < 2:
                    raise _FatalUnwrap(f"invalid {self.key_type} recipient block")
                if s[1] == self.fingerprint:
                    return True
        return False

    def pyrage_identity(self):
        if self.decrypted is not None:
            return self.decrypted
        try:
            pw = _read_secret(f"Enter passphrase for {_quoted(self.path)}:")
        except _PromptError as e:
            raise _FatalUnwrap(f"failed to obtain passphrase: could not read passphrase for "
                               f"{_quoted(self.path)}: {e}") from None
        from cryptography.hazmat.primitives import serialization

        try:
            key = serialization.load_ssh_private_key(self.data, pw.encode())
        except (ValueError, TypeError):
            raise _FatalUnwrap("failed to decrypt SSH key file: x509: decryption password "
                               "incorrect") from None
        clear = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                  serialization.NoEncryption())
        self.decrypted = pyrage.ssh.Identity.from_buffer(clear)
        return self.decrypted


class EncryptedIdentityFile:
    """An identity file encrypted with a passphrase (``age -p``, plain or armored): the
    passphrase is asked when it is first needed, on the terminal."""

    def __init__(self, location: str, data: bytes):
        self.location = location
        self.data = data
        self.identities: list | None = None

    def load(self) -> list:
        if self.identities is not None:
            return self.identities
        try:
            pw = _read_secret(f"Enter passphrase for identity '{self.location}':")
        except _PromptError as e:
            raise _FatalUnwrap(f"failed to decrypt identity file: could not read passphrase: "
                               f"{e}") from None
        try:
            plain = pyrage.passphrase.decrypt(self.data, pw)
        except Exception:
            raise _FatalUnwrap("incorrect passphrase") from None
        ids = []
        for line in plain.decode("utf-8", "replace").split("\n"):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not line.startswith("AGE-SECRET-KEY-1"):
                raise _FatalUnwrap("malformed secret key: unknown type")
            try:
                ids.append(pyrage.x25519.Identity.from_str(line))
            except Exception as e:
                raise _FatalUnwrap(f"malformed secret key: {e}") from None
        self.identities = ids
        return ids


def parse_identity(line: str):
    """sops' ``parseIdentity``: one identity by its prefix (no trimming)."""
    if line.startswith("AGE-PLUGIN-"):
        try:
            return PluginIdentity(line)
        except Exception as e:
            raise SopsError(f"invalid identity encoding: {e}") from None
    if line.startswith("AGE-SECRET-KEY-PQ-1"):
        raise SopsError(_PQ_MESSAGE)
    if line.startswith("AGE-SECRET-KEY-1"):
        try:
            return pyrage.x25519.Identity.from_str(line)
        except Exception:
            why = _bech32_error(line)
            if why is None or why == "invalid X25519 key":
                why = "invalid X25519 secret key"
            raise SopsError(f"malformed secret key: {why}") from None
    raise SopsError("unknown identity type")


def parse_identities(text: str, source: str) -> list:
    """Identities from a keys.txt-style text: one per line (sops' ``bufio.Scanner``: a
    trailing ``\\r`` is dropped, nothing else is trimmed); empty and ``#`` lines are skipped.
    The first bad line fails the whole text: ``failed to parse 'SOURCE' age identities``."""
    out = []
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for line in lines:
        if line.endswith("\r"):
            line = line[:-1]
        if not line or line.startswith("#"):
            continue
        try:
            out.append(parse_identity(line))
        except SopsError as e:
            raise SopsError(f"failed to parse '{source}' age identities: {e.message}") from None
    return out


def identities_from_bytes(location: str, data: bytes) -> list:
    """sops' ``unwrapIdentities``: an encrypted identity file, or identity lines."""
    head = data[:14]
    if head in (b"age-encryption", b"-----BEGIN AGE"):
        if len(data) >= 1 << 24:
            raise SopsError(f"failed to read '{location}': file too long")
        return [EncryptedIdentityFile(location, data)]
    return parse_identities(data.decode("utf-8", "surrogateescape"), location)


def parse_ssh_identity(path: str):
    """sops' ``parseSSHIdentityFromPrivateKeyFile``: a pyrage SSH identity, or an
    :class:`EncryptedSSHIdentity` for a passphrase-protected key."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise SopsError(f"failed to open file: open {path}: {go_errno_text(e)}") from None
    try:
        return pyrage.ssh.Identity.from_buffer(data)
    except Exception as e:
        msg = str(e)
    if "decrypted" in msg or "encrypted" in msg.lower() or b"ENCRYPTED" in data[:200]:
        blob = _openssh_public_blob(data)
        if blob is None:
            pub = path + ".pub"
            try:
                with open(pub, "rb") as f:
                    parts = f.read().split()
                blob = base64.b64decode(parts[1])
            except OSError as e:
                raise SopsError(f"failed to obtain public {_quoted(pub)} key for {_quoted(path)} "
                                f"SSH key: open {pub}: {go_errno_text(e)}") from None
            except (IndexError, ValueError):
                raise SopsError(f"failed to parse {_quoted(pub)}: ssh: no key found") from None
        return EncryptedSSHIdentity(path, data, blob)
    blob = _openssh_public_blob(data)
    kind = _ssh_string(blob, 0)[0].decode("ascii", "replace") if blob else ""
    if kind.startswith("ecdsa-") or b"BEGIN EC PRIVATE KEY" in data:
        detail = "unsupported SSH identity type: *ecdsa.PrivateKey"
    elif kind == "ssh-dss" or b"BEGIN DSA PRIVATE KEY" in data:
        detail = "unsupported SSH identity type: *dsa.PrivateKey"
    elif kind:
        detail = "ssh: unhandled key type"
    else:
        detail = "ssh: no key found"
    raise SopsError(f"malformed SSH identity in {_quoted(path)}: {detail}")


# ------------------------------------------------------------------ wrap / unwrap

def wrap(data_key: bytes, recipient: str) -> str:
    r = parse_recipient(recipient)
    if isinstance(r, pyrage.plugin.Recipient):
        name = r.plugin()
        try:
            _check_plugin_binary(name, None)
        except _FatalUnwrap as e:
            raise SopsError(f"failed to create writer for encrypting sops data key with age: "
                            f"failed to wrap key for recipient #0: {e}") from None
        r = pyrage.plugin.RecipientPluginV1(name, [r], [], _PluginUI())
    try:
        return pyrage.encrypt(data_key, [r], armored=True).decode("ascii")
    except Exception as e:
        raise SopsError(f"failed to create writer for encrypting sops data key with age: "
                        f"failed to wrap key for recipient #0: {e}") from None


class _FatalUnwrap(Exception):
    """An identity failed in a way that stops Go's ``age.Decrypt`` (not "not mine")."""


def _stanzas(enc: str) -> list[list[str]]:
    """The recipient stanza lines (``-> type args...``) of an armored age file."""
    lines = [ln.strip() for ln in enc.strip().splitlines()]
    if not lines or not lines[0].startswith("-----BEGIN AGE"):
        return []
    body = "".join(ln for ln in lines[1:] if not ln.startswith("-----"))
    try:
        raw = base64.b64decode(body)
    except ValueError:
        return []
    out = []
    for ln in raw.split(b"\n"):
        if ln.startswith(b"---"):
            break
        if ln.startswith(b"-> "):
            out.append(ln[3:].decode("ascii", "replace").split(" "))
    return out


def format_error(msg: str, err: str | None, errors: Sequence[str] = (),
                 unused: Sequence[str] = ()) -> str:
    """sops' ``formatError``: the message, the identity loading errors and the locations
    where no key was found."""
    load = f". Errors while loading age identities: {'; '.join(errors)}" if errors else ""
    miss = ""
    if unused:
        n = len(unused)
        if n == 1:
            miss = f" '{unused[0]}'"
        elif n == 2:
            miss = f"s '{unused[0]}' and '{unused[1]}'"
        else:
            miss = "s '" + "', '".join(unused[:-1]) + f"', and '{unused[-1]}'"
        miss = f". Did not find keys in location{miss}."
    if err is not None:
        return f"{msg}: {err}{load}{miss}"
    return f"{msg}{load}{miss}"


def _native(i) -> bool:
    return isinstance(i, pyrage.x25519.Identity)


def unwrap(enc: str, identities: Sequence, *, errors: Sequence[str] = (),
           unused: Sequence[str] = (), env: Mapping[str, str] | None = None) -> bytes:
    """The data key from an armored age file. ``errors``/``unused`` are what identity
    discovery reported; they end up in the error text as sops prints it."""
    if not identities:
        raise KeyMismatch(format_error("failed to load age identities", None, errors, unused))
    reader = "failed to create reader for decrypting sops data key with age"
    data = enc.encode("ascii", "surrogateescape")
    ordered = [i for i in identities if _native(i)] + [i for i in identities if not _native(i)]
    stanzas: list[list[str]] | None = None
    count = len(ordered)
    pending: list = []

    def try_plain(ids: list) -> bytes | None:
        if not ids:
            return None
        try:
            return pyrage.decrypt(data, ids)
        except Exception as e:
            msg = str(e)
            if msg == "No matching keys found":
                return None
            raise _FatalUnwrap(_go_age_error(msg)) from None

    try:
        for ident in ordered:
            if isinstance(ident, (pyrage.x25519.Identity, pyrage.ssh.Identity)):
                pending.append(ident)
                continue
            out = try_plain(pending)
            pending = []
            if out is not None:
                return out
            if isinstance(ident, EncryptedSSHIdentity):
                if stanzas is None:
                    stanzas = _stanzas(enc)
                if ident.decrypted is None and not ident.matches(stanzas):
                    continue
                out = try_plain([ident.pyrage_identity()])
            elif isinstance(ident, EncryptedIdentityFile):
                out = try_plain(ident.load())
                if out is None:
                    sys.stderr.write(_age_warning(f"encrypted identity '{ident.location}' didn't "
                                                  "match file's recipients") + "\n")
            elif isinstance(ident, PluginIdentity):
                out = try_plain([ident.pyrage_identity(env)])
            else:
                out = try_plain([ident])
            if out is not None:
                return out
        out = try_plain(pending)
        if out is not None:
            return out
    except _FatalUnwrap as e:  # corrupt data, a failing plugin: the key applies but is broken
        from sops_enclave.keys.base import KeyUnavailable

        raise KeyUnavailable(format_error(reader, str(e), errors, unused)) from None
    if count == 1:
        err = "identity did not match any of the recipients: incorrect identity for recipient block"
    else:
        err = "no identity matched any of the recipients"
    raise KeyMismatch(format_error(reader, err, errors, unused))


def _age_warning(msg: str) -> str:
    from sops_enclave.errors import logrus_line

    return logrus_line("AGE", "warning", msg)


def _go_age_error(msg: str) -> str:
    """Go age's text for a rage error where the meaning is the same."""
    low = msg.lower()
    if "header" in low and "mac" in low:
        return "bad header MAC"
    if "fill whole buffer" in low or "header is invalid" in low or "invalid header" in low:
        return f"failed to read header: {msg}"
    return msg


class AgeKeyType:
    """age keys (metadata ``age``: ``recipient``, ``enc``) for the key registry."""

    type = "age"

    def wrap(self, entry, data_key: bytes, ctx) -> str:
        return wrap(data_key, entry.recipient)

    def unwrap(self, entry, ctx) -> bytes:
        found = ctx.age_identities(entry.recipient)
        return unwrap(entry.enc, found.identities, errors=found.errors, unused=found.unused,
                      env=ctx.env)

    def from_arg(self, value: str, ctx, **_opts) -> list:
        """``--age``/``SOPS_AGE_RECIPIENTS``: comma-separated, trimmed, empty items dropped
        (a bad recipient fails when it is used)."""
        from sops_enclave.metadata import AgeEntry

        return [AgeEntry(r.strip()) for r in value.split(",") if r.strip()]


KEY_TYPE = AgeKeyType()
