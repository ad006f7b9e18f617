"""The stable library surface: decrypt and encrypt SOPS documents as sops 3.11 does.

Example::

    from sops_enclave import api
    secrets = api.decrypt_file("secrets.enc.yaml")        # -> dict
    raw = api.decrypt_bytes(data, fmt="json")              # -> the bytes `sops -d` prints
    doc = api.encrypt_dict({"db": {"password": "s3cr3t"}}, fmt="yaml",
                           age=["age1..."])                # -> bytes of a SOPS file

Errors are :class:`sops_enclave.errors.SopsError` subclasses whose ``exit_code`` is the code
sops exits with (51 MAC mismatch, 128 no data key, ...). Data keys never leave this module.
"""

from __future__ import annotations

import datetime as _dt
import os
from typing import Any, Mapping, Sequence

from sops_enclave import SOPS_FORMAT_VERSION
from sops_enclave.cipher import ValueCipher
from sops_enclave.errors import (CouldNotReadInputFile, ErrorDumpingTree, FileAlreadyEncrypted,
                                 InvalidTreePathFormat, MetadataNotFound,
                                 NeedAtLeastOneDocument, SopsError, go_wordwrap)
from sops_enclave.formats import get_store, resolve_format
from sops_enclave.keys.groups import DEFAULT_DECRYPTION_ORDER, LocalKeyService, get_data_key
from sops_enclave.keys.groups import protect_data_key
from sops_enclave.metadata import (AgeEntry, KeyEntry, KMSEntry, Metadata, PGPEntry,
                                   format_time, parse_metadata)
from sops_enclave.record import field, record
from sops_enclave.tree import Branch, Comment, Timestamp, extract
from sops_enclave.walk import CryptRule, decrypt_tree, encrypt_tree, verify_mac

__all__ = ["StoreConfig", "EncryptOptions", "Decrypted", "decrypt_document", "encrypt_document",
           "emit_plain", "parse_tree_path", "extract", "decrypt_bytes", "decrypt_file",
           "decrypt_data", "encrypt_dict", "encrypt_bytes", "to_python", "from_python"]


@record
class StoreConfig:
    """Output settings (``stores`` in ``.sops.yaml``, ``--indent``)."""

    yaml_indent: int = 0
    json_indent: int = -1
    json_binary_indent: int = -1

    def indent_for(self, fmt: str) -> int | None:
        if fmt == "yaml":
            if self.yaml_indent < 0:
                raise ErrorDumpingTree("Error dumping file: YAML Negative indentation not accepted")
            return self.yaml_indent or 4
        if fmt == "json":
            return self.json_indent
        if fmt == "binary":
            return self.json_binary_indent
        return None


@record
class Decrypted:
    """A decrypted document: plaintext branches, its metadata, and the IVs seen (for edits)."""

    branches: list[Branch]
    metadata: Metadata
    previous_ivs: dict = field(default_factory=dict, repr=False)


def _emit(store, fn: str, fmt: str, cfg: StoreConfig, *args) -> bytes:
    indent = cfg.indent_for(fmt)
    f = getattr(store, fn)
    return f(*args) if indent is None else f(*args, indent=indent)


def load_encrypted(data: bytes, fmt: str) -> tuple[list[Branch], Metadata]:
    store = get_store(fmt)
    kind = {"binary": "json"}.get(fmt, fmt)
    try:
        branches, raw = store.load_encrypted(data)
    except SopsError:
        raise
    except (ValueError, RecursionError) as e:
        raise SopsError(f"Error unmarshalling input {kind}: {e}") from None
    if raw is None:
        raise MetadataNotFound()
    return branches, parse_metadata(raw)


def decrypt_document(data: bytes, fmt: str, *, services: Sequence | None = None,
                     ignore_mac: bool = False,
                     decryption_order: Sequence[str] = DEFAULT_DECRYPTION_ORDER,
                     record_ivs: bool = False) -> Decrypted:
    """Decrypt an encrypted document and verify its MAC (unless ``ignore_mac``)."""
    services = services if services is not None else [LocalKeyService()]
    return _decrypt_with_key(data, fmt, services, ignore_mac, decryption_order,
                             record_ivs=record_ivs)[0]


UNENCRYPTED_COMMENT_WARNING = ("Found possibly unencrypted comment in file. This is to be "
                               "expected if the file being decrypted was created with an older "
                               "version of SOPS.")


def warn_unencrypted_comment(text: str) -> None:
    """sops' warning (its SOPS logger, on stderr) for a comment that does not decrypt: the
    comment is kept as it is. Replace this function to route the warning elsewhere."""
    import sys

    from sops_enclave.errors import logrus_line

    sys.stderr.write(logrus_line("SOPS", "warning", UNENCRYPTED_COMMENT_WARNING, comment=text)
                     + "\n")
    sys.stderr.flush()


def _decrypt_tree(branches: list[Branch], cipher: ValueCipher, md: Metadata):
    """:func:`decrypt_tree`, warning (as sops, in document order) about every comment that
    is kept because it does not decrypt. The cipher records each string it could not
    decrypt; the walk keeps comments and fails on values, so after a successful walk all of
    them were comments, and after a failed one all but the last."""
    cipher.failures = []
    try:
        out = decrypt_tree(branches, cipher, md.crypt_rule, md.mac_only_encrypted)
    except SopsError as e:
        failed = cipher.failures
        if failed and e.message.endswith(failed[-1][1]):
            failed = failed[:-1]
        for text, _ in failed:
            warn_unencrypted_comment(text)
        raise
    finally:
        failed_all, cipher.failures = cipher.failures, None
    for text, _ in failed_all:
        warn_unencrypted_comment(text)
    return out


def _verify_mac(cipher: ValueCipher, md: Metadata, computed: str) -> None:
    verify_mac(cipher, md.mac, md.mac_aad(), computed)


def emit_plain(branches: list[Branch], fmt: str, cfg: StoreConfig | None = None) -> bytes:
    return _emit(get_store(fmt), "emit_plain", fmt, cfg or StoreConfig(), branches)


# ------------------------------------------------------------------ tree paths (--extract)

def parse_tree_path(path: str) -> list[str | int]:
    """sops' ``["a"][0]['b']`` syntax: split on ``[``, each part ends in ``]``, no escapes."""
    out: list[str | int] = []
    parts = path.split("[")
    for i, part in enumerate(parts):
        if i == 0 and not part:
            continue
        if not part.endswith("]"):
            raise InvalidTreePathFormat(f"error parsing --extract path: component {part} "
                                        "doesn't end with ]")
        comp = part[:-1]
        if comp[:1] in ("'", '"'):
            out.append(comp[1:-1])
        else:
            try:
                out.append(int(comp))
            except ValueError:
                raise InvalidTreePathFormat(f"error parsing --extract path: component {comp} is "
                                            "not a valid index") from None
    return out


def emit_extracted(value: Any, fmt: str, cfg: StoreConfig | None = None) -> bytes:
    """What ``sops -d --extract`` prints: raw bytes for a string, else the store's encoding."""
    cfg = cfg or StoreConfig()
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    store = get_store(fmt)
    if isinstance(value, Branch):
        return _emit(store, "emit_plain", fmt, cfg, [value])
    try:
        return _emit(store, "emit_value", fmt, cfg, value)
    except SopsError:
        raise
    except (TypeError, ValueError) as e:
        raise ErrorDumpingTree(f"Error dumping tree: {e}") from None


# ------------------------------------------------------------------ encryption

@record
class EncryptOptions:
    """Everything that decides how a new file is encrypted."""

    key_groups: list[list[KeyEntry]]
    shamir_threshold: int = 0
    crypt_rule: CryptRule = field(default_factory=lambda: CryptRule("unencrypted_suffix",
                                                                    "_unencrypted"))
    mac_only_encrypted: bool = False


def has_sops_key(branch: Branch, fmt: str) -> bool:
    for k, _ in branch:
        if isinstance(k, Comment):
            continue
        if k == "sops" or (fmt == "dotenv" and isinstance(k, str) and k.startswith("sops_")):
            return True
    return False


def encrypt_branches(branches: list[Branch], md: Metadata, data_key: bytes, *,
                     now: _dt.datetime | None = None, previous: dict | None = None,
                     random=os.urandom) -> list[Branch]:
    """Encrypt plaintext branches, set ``lastmodified`` and the encrypted MAC on ``md``."""
    now = now or _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    cipher = ValueCipher(data_key, random=random, previous=previous)
    enc, mac = encrypt_tree(branches, cipher, md.crypt_rule, md.mac_only_encrypted)
    md.lastmodified = format_time(now)
    md.mac = cipher.encrypt(mac, md.mac_aad())
    return enc


def encrypt_document(data: bytes, in_fmt: str, out_fmt: str, opts: EncryptOptions, *,
                     services: Sequence | None = None, cfg: StoreConfig | None = None,
                     now: _dt.datetime | None = None, data_key: bytes | None = None) -> bytes:
    """Plaintext bytes -> the bytes of a new SOPS file."""
    store = get_store(in_fmt)
    try:
        branches = store.load_plain(data)
    except SopsError:
        raise
    except (ValueError, RecursionError) as e:
        raise CouldNotReadInputFile(f"Error unmarshalling file: {e}") from None
    if not branches:
        raise NeedAtLeastOneDocument("File cannot be completely empty, it must contain at least "
                                     "one document")
    if has_sops_key(branches[0], in_fmt):
        raise FileAlreadyEncrypted(go_wordwrap(
            "The file you have provided contains a top-level entry called 'sops', or for flat "
            "file formats top-level entries starting with 'sops_'. This is generally due to the "
            "file already being encrypted. SOPS uses a top-level entry called 'sops' to store the "
            "metadata required to decrypt the file. For this reason, SOPS can not encrypt files "
            "that already contain such an entry.\n\nIf this is an unencrypted file, rename the "
            "'sops' entry.\n\nIf this is an encrypted file and you want to edit it, use the "
            "editor mode, for example: `sops my_file.yaml`", 75))
    return encrypt_loaded(branches, out_fmt, opts, services=services, cfg=cfg, now=now,
                          data_key=data_key)


def encrypt_loaded(branches: list[Branch], out_fmt: str, opts: EncryptOptions, *,
                   services: Sequence | None = None, cfg: StoreConfig | None = None,
                   now: _dt.datetime | None = None, data_key: bytes | None = None) -> bytes:
    rule = opts.crypt_rule
    mac_only = opts.mac_only_encrypted
    if out_fmt == "binary":
        mac_only = False
    md = Metadata(key_groups=[list(g) for g in opts.key_groups], version=SOPS_FORMAT_VERSION,
                  shamir_threshold=opts.shamir_threshold, crypt_rule=rule,
                  mac_only_encrypted=mac_only)
    data_key = data_key or os.urandom(32)
    protect_data_key(md, data_key, services if services is not None else [LocalKeyService()],
                     now=now)
    enc = encrypt_branches(branches, md, data_key, now=now)
    return emit_encrypted(enc, md, out_fmt, cfg)


def emit_encrypted(branches: list[Branch], md: Metadata, out_fmt: str,
                   cfg: StoreConfig | None = None) -> bytes:
    store = get_store(out_fmt)
    meta = md.to_branch(json_nulls=out_fmt in ("json", "binary"), binary=out_fmt == "binary")
    return _emit(store, "emit_encrypted", out_fmt, cfg or StoreConfig(), branches, meta)


# ------------------------------------------------------------------ Python-friendly helpers

def to_python(v: Any) -> Any:
    """Documents as plain Python: dicts, lists, scalars; comments dropped; times as text."""
    if isinstance(v, Branch):
        return {k: to_python(x) for k, x in v if not isinstance(k, Comment)}
    if isinstance(v, list):
        return [to_python(x) for x in v if not isinstance(x, Comment)]
    if isinstance(v, Timestamp):
        return v.text
    return v


def from_python(v: Any) -> Any:
    if isinstance(v, Mapping):
        return Branch((str(k), from_python(x)) for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return [from_python(x) for x in v]
    if isinstance(v, _dt.datetime):
        return Timestamp(v.isoformat().replace("+00:00", "Z"))
    return v


def decrypt_bytes(data: bytes, fmt: str, *, output_fmt: str | None = None,
                  ignore_mac: bool = False, env: Mapping[str, str] | None = None) -> bytes:
    """The exact bytes ``sops -d`` prints for this document."""
    d = decrypt_document(data, fmt, services=[LocalKeyService(env)], ignore_mac=ignore_mac)
    return emit_plain(d.branches, output_fmt or fmt)


def decrypt_data(data: bytes, fmt: str, *, env: Mapping[str, str] | None = None) -> dict:
    """A decrypted document as a dict (the first YAML document)."""
    d = decrypt_document(data, fmt, services=[LocalKeyService(env)])
    return to_python(d.branches[0])


def decrypt_file(path: str, fmt: str | None = None, *, env: Mapping[str, str] | None = None) -> dict:
    """Read and decrypt a SOPS file into a dict; the format comes from the extension."""
    from sops_enclave.fileio import read_input

    return decrypt_data(read_input(path), resolve_format(fmt, path), env=env)


def _entries(age: Sequence[str] = (), pgp: Sequence[str] = (), kms: Sequence[str] = (),
             encryption_context: Mapping[str, str] | None = None) -> list[KeyEntry]:
    ctx = tuple(sorted((encryption_context or {}).items()))
    out: list[KeyEntry] = [KMSEntry(a, context=ctx) for a in kms]
    out += [PGPEntry(p) for p in pgp]
    out += [AgeEntry(a) for a in age]
    return out


def encrypt_bytes(data: bytes, fmt: str, *, age: Sequence[str] = (), pgp: Sequence[str] = (),
                  kms: Sequence[str] = (), encryption_context: Mapping[str, str] | None = None,
                  env: Mapping[str, str] | None = None) -> bytes:
    """Encrypt plaintext bytes of ``fmt`` for the given master keys (one key group)."""
    opts = EncryptOptions([_entries(age, pgp, kms, encryption_context)])
    return encrypt_document(data, fmt, fmt, opts, services=[LocalKeyService(env)])


def encrypt_dict(values: Mapping[str, Any], fmt: str = "yaml", **keys: Any) -> bytes:
    """Encrypt a dict as a new SOPS document of ``fmt`` (keys: age=, pgp=, kms=, ...)."""
    env = keys.pop("env", None)
    opts = EncryptOptions([_entries(**keys)])
    return encrypt_loaded([from_python(values)], fmt, opts, services=[LocalKeyService(env)])


# ------------------------------------------------------------------ changing an encrypted file

def _decrypt_with_key(data: bytes, fmt: str, services: Sequence, ignore_mac: bool,
                      order: Sequence[str], *, record_ivs: bool = True
                      ) -> tuple[Decrypted, bytes]:
    """The one decrypt-and-verify path of the library: data key, tree, MAC."""
    branches, md = load_encrypted(data, fmt)
    key = get_data_key(md, services, order)
    cipher = ValueCipher(key)
    cipher.record = record_ivs
    plain, computed = _decrypt_tree(branches, cipher, md)
    if not ignore_mac:
        _verify_mac(cipher, md, computed)
    return Decrypted(plain, md, cipher.seen), key


def modify_document(data: bytes, fmt: str, change, *, out_fmt: str | None = None,
                    services: Sequence | None = None, ignore_mac: bool = False,
                    decryption_order: Sequence[str] = DEFAULT_DECRYPTION_ORDER,
                    cfg: StoreConfig | None = None, now: _dt.datetime | None = None) -> bytes | None:
    """Decrypt, let ``change(branches)`` edit the plaintext in place, re-encrypt with the same
    data key. Unchanged values keep their IVs (and so their ciphertext), as sops does.
    ``change`` may return False to mean "nothing changed": then None is returned."""
    services = services if services is not None else [LocalKeyService()]
    d, key = _decrypt_with_key(data, fmt, services, ignore_mac, decryption_order)
    if change(d.branches) is False:
        return None
    enc = encrypt_branches(d.branches, d.metadata, key, now=now, previous=d.previous_ivs)
    return emit_encrypted(enc, d.metadata, out_fmt or fmt, cfg)


def rotate_document(data: bytes, fmt: str, *, add: Sequence[KeyEntry] = (),
                    remove: Sequence[KeyEntry] = (), out_fmt: str | None = None,
                    services: Sequence | None = None, ignore_mac: bool = False,
                    decryption_order: Sequence[str] = DEFAULT_DECRYPTION_ORDER,
                    cfg: StoreConfig | None = None, now: _dt.datetime | None = None) -> bytes:
    """A fresh data key for the same master keys (``add`` goes to group 0, ``remove`` from
    any group, matched by key identity); every value is re-encrypted."""
    services = services if services is not None else [LocalKeyService()]
    d, _ = _decrypt_with_key(data, fmt, services, ignore_mac, decryption_order)
    md = d.metadata
    gone = {(e.type, e.ident()) for e in remove}
    groups = [[e for e in g if (e.type, e.ident()) not in gone] for g in md.key_groups]
    if add:
        groups[0] = groups[0] + [e for e in add if (e.type, e.ident()) not in
                                 {(x.type, x.ident()) for x in groups[0]}]
    md.key_groups = groups
    new_key = os.urandom(32)
    protect_data_key(md, new_key, services, now=now)
    enc = encrypt_branches(d.branches, md, new_key, now=now)
    return emit_encrypted(enc, md, out_fmt or fmt, cfg)


def set_value(branch: Branch, path: list[str | int], value: Any) -> bool:
    """sops ``set``: create missing maps (string parts) and lists (int parts, append past the
    end). Returns False when the value was already there."""
    if not path:
        raise SopsError("Error setting value: empty path")
    cur: Any = branch
    for i, comp in enumerate(path):
        last = i == len(path) - 1
        nxt = path[i + 1] if not last else None
        if isinstance(comp, str):
            if not isinstance(cur, Branch):
                raise SopsError(f"Error setting value: component ['{comp}'] is not in a map")
            j = cur.index_of(comp)
            if last:
                if j >= 0:
                    if cur[j][1] == value and type(cur[j][1]) is type(value):
                        return False
                    cur[j] = (comp, value)
                else:
                    cur.append((comp, value))
                return True
            if j < 0:
                cur.append((comp, Branch() if isinstance(nxt, str) else []))
                j = len(cur) - 1
            cur = cur[j][1]
        else:
            if not isinstance(cur, list) or isinstance(cur, Branch):
                raise SopsError(f"Error setting value: component [{comp}] is not in a list")
            idx = [k for k, x in enumerate(cur) if not isinstance(x, Comment)]
            if last:
                if comp < len(idx):
                    if cur[idx[comp]] == value and type(cur[idx[comp]]) is type(value):
                        return False
                    cur[idx[comp]] = value
                else:
                    cur.append(value)
                return True
            if comp < len(idx):
                cur = cur[idx[comp]]
            else:
                cur.append(Branch() if isinstance(nxt, str) else [])
                cur = cur[-1]
    return True


def unset_value(branch: Branch, path: list[str | int]) -> None:
    """sops ``unset``: remove the key or list item at ``path``."""
    cur: Any = branch
    for i, comp in enumerate(path):
        last = i == len(path) - 1
        if isinstance(comp, str) and isinstance(cur, Branch):
            j = cur.index_of(comp)
            if j < 0:
                raise SopsError(f"Key not found: {comp}")
            if last:
                del cur[j]
                return
            cur = cur[j][1]
        elif isinstance(comp, int) and isinstance(cur, list) and not isinstance(cur, Branch):
            idx = [k for k, x in enumerate(cur) if not isinstance(x, Comment)]
            if comp < 0 or comp >= len(idx):
                raise SopsError(f"Index {comp} out of bounds")
            if last:
                del cur[idx[comp]]
                return
            cur = cur[idx[comp]]
        else:
            raise SopsError(f"Key not found: {comp}")


def rekey_document(data: bytes, fmt: str, groups: list[list[KeyEntry]], *,
                   shamir_threshold: int | None = None, services: Sequence | None = None,
                   decryption_order: Sequence[str] = DEFAULT_DECRYPTION_ORDER,
                   cfg: StoreConfig | None = None) -> bytes:
    """Wrap the *same* data key for new key groups (``updatekeys``, ``groups add/delete``).

    Values, the MAC and ``lastmodified`` stay byte for byte as they were."""
    services = services if services is not None else [LocalKeyService()]
    branches, md = load_encrypted(data, fmt)
    key = get_data_key(md, services, decryption_order)
    md.key_groups = [list(g) for g in groups]
    if shamir_threshold is not None:
        md.shamir_threshold = shamir_threshold
    if len(md.key_groups) <= 1:
        md.shamir_threshold = 0 if shamir_threshold is None else md.shamir_threshold
    elif md.shamir_threshold > len(md.key_groups):
        md.shamir_threshold = len(md.key_groups)
    protect_data_key(md, key, services)
    return emit_encrypted(branches, md, fmt, cfg)
