"""The pack step inside the enclave: verify the git objects, get data keys through attested KMS
calls, decrypt and check every input, merge, re-encrypt each output, build its receipt.

Plaintext and data keys exist only in this process. The host receives encrypted outputs and
receipts. ``--ignore-mac`` does not exist here: every input's MAC is verified.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sops_enclave import SOPS_FORMAT_VERSION, __version__
from sops_enclave.cipher import ValueCipher
from sops_enclave.errors import KeyMismatch, SopsError
from sops_enclave.formats import format_for_path, get_store
from sops_enclave.keys.groups import get_data_key, protect_data_key
from sops_enclave.merge import deep_merge
from sops_enclave.metadata import AgeEntry, KMSEntry, Metadata, parse_metadata
from sops_enclave.tree import Branch
from sops_enclave.walk import CryptRule, decrypt_tree, encrypt_tree

__all__ = ["PackError", "EnclaveKeys", "run_pack"]


class PackError(SopsError):
    """The pack request cannot be carried out (bad input, policy, missing key)."""


@dataclass
class KMSCall:
    arn: str
    request_id: str
    encryption_context: dict
    enc: str = ""


class EnclaveKeys:
    """Key service inside the enclave: KMS Decrypt with ``Recipient`` (attested), KMS Encrypt,
    age wrapping; in dev mode also host-provided age identities for inputs.

    Each distinct (ARN, ciphertext) is decrypted once; :meth:`prefetch` runs them concurrently.
    """

    def __init__(self, kms_client_factory: Callable[[str], Any], nsm, *,
                 age_identities: Sequence = (), dev: bool = False):
        self._kms = kms_client_factory
        self._nsm = nsm
        self._age = list(age_identities)
        self.dev = dev
        self._rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pub = self._rsa.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        self.kms_attestation = nsm.attest(public_key=pub)
        self._cache: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()
        self.calls: list[KMSCall] = []
        self.sources: dict[str, str] = {}

    def _kms_decrypt(self, e: KMSEntry) -> bytes:
        from sops_enclave.cms import open_ciphertext_for_recipient

        client = self._kms(e.arn)
        try:
            r = client.decrypt(CiphertextBlob=base64.b64decode(e.enc), KeyId=e.arn,
                               EncryptionContext=dict(e.context),
                               Recipient={"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
                                          "AttestationDocument": self.kms_attestation})
        except Exception as ex:  # botocore errors: the message names the KMS error code
            raise KeyMismatch(f"KMS Decrypt with attestation failed for {e.arn}: "
                              f"{_kms_error(ex)}") from None
        blob = r.get("CiphertextForRecipient")
        if not blob or r.get("Plaintext"):
            raise KeyMismatch(f"KMS answered {e.arn} without CiphertextForRecipient")
        key = open_ciphertext_for_recipient(blob, self._rsa)
        with self._lock:
            self.calls.append(KMSCall(e.arn, r.get("ResponseMetadata", {}).get("RequestId", ""),
                                      dict(e.context), e.enc))
        return key

    def prefetch(self, entries: Sequence[KMSEntry]) -> None:
        todo = {}
        for e in entries:
            todo.setdefault((e.arn, e.enc), e)
        todo = {k: v for k, v in todo.items() if k not in self._cache}
        if not todo:
            return

        def one(item):
            k, e = item
            try:
                return k, self._kms_decrypt(e), None
            except KeyMismatch as ex:
                return k, None, ex

        with ThreadPoolExecutor(max_workers=min(16, len(todo))) as pool:
            for k, key, err in pool.map(one, todo.items()):
                if key is not None:
                    self._cache[k] = key

    # The key-service interface used by keys.groups.
    def decrypt(self, entry) -> bytes:
        if isinstance(entry, KMSEntry):
            k = (entry.arn, entry.enc)
            if k not in self._cache:
                self._cache[k] = self._kms_decrypt(entry)
            return self._cache[k]
        if isinstance(entry, AgeEntry) and self.dev and self._age:
            from sops_enclave.keys import age

            return age.unwrap(entry.enc, self._age)
        raise KeyMismatch(f"{entry.type} keys cannot be used inside the enclave"
                          + ("" if self.dev else " (only KMS with attestation)"))

    def encrypt(self, entry, plaintext: bytes) -> str:
        if isinstance(entry, KMSEntry):
            client = self._kms(entry.arn)
            try:
                r = client.encrypt(KeyId=entry.arn, Plaintext=plaintext,
                                   EncryptionContext=dict(entry.context))
            except Exception as ex:
                raise SopsError(f"KMS Encrypt failed for {entry.arn}: {_kms_error(ex)}") from None
            return base64.b64encode(r["CiphertextBlob"]).decode()
        if isinstance(entry, AgeEntry):
            from sops_enclave.keys import age

            return age.wrap(plaintext, entry.recipient)
        raise SopsError(f"cannot encrypt outputs for {entry.type} keys")


def _kms_error(ex: Exception) -> str:
    resp = getattr(ex, "response", None)
    if isinstance(resp, dict):
        err = resp.get("Error", {})
        return f"{err.get('Code', 'Error')}: {err.get('Message', '')}".strip()
    return type(ex).__name__


def _decrypt_input(path: str, blob: bytes, keys: EnclaveKeys) -> tuple[list[Branch], Metadata]:
    fmt = format_for_path(path)
    try:
        branches, raw = get_store(fmt).load_encrypted(blob)
    except SopsError:
        raise
    except ValueError as e:
        raise PackError(f"{path}: cannot parse: {e}") from None
    if raw is None:
        raise PackError(f"{path}: sops metadata not found")
    md = parse_metadata(raw)
    try:
        key = get_data_key(md, [keys], ("kms", "age"))
    except SopsError as e:
        reasons = " ".join(l.split("| ", 1)[1].strip() for l in e.message.splitlines() if "| " in l)
        first = e.message.splitlines()[0]
        raise PackError(f"{path}: {first}" + (f" ({reasons})" if reasons else ""),
                        exit_code=e.exit_code) from None
    cipher = ValueCipher(key)
    try:
        plain, computed = decrypt_tree(branches, cipher, md.crypt_rule, md.mac_only_encrypted)
    except SopsError as e:
        raise PackError(f"{path}: {e.message}", exit_code=e.exit_code) from None
    try:
        stored = cipher.decrypt(md.mac, md.mac_aad()) if md.mac else ""
    except SopsError as e:
        raise PackError(f"{path}: Cannot decrypt MAC: {e.message}", exit_code=51) from None
    import hmac

    if not md.mac or not hmac.compare_digest(str(stored).encode(), computed.encode()):
        raise PackError(f"{path}: MAC mismatch", exit_code=51)
    return plain, md


def run_pack(request: dict, nsm, kms_client_factory: Callable[[str], Any], *,
             dev: bool, age_identities: Sequence = (), clock=None) -> dict:
    """Carry out one pack request; returns ``{"ok": True, "outputs": [...]}``."""
    from sops_enclave.pack import gitobjects
    from sops_enclave.pack.manifest import load_manifest
    from sops_enclave.receipt.builder import build_receipt
    from sops_enclave.receipt.statement import (InputRecord, KMSKeyUse, KMSRecipient,
                                                MergeConflict, OutputRecipients, ReceiptFacts)

    now = clock or (lambda: _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0))
    started = now()
    commit = request["commit"]
    objects = gitobjects.GitBundle.from_wire(request["git"]).objects
    manifest_path = request["manifest_path"]
    found = gitobjects.verify_paths(objects, commit, [manifest_path])
    manifest_blob, manifest_bytes = found[manifest_path]
    manifest = load_manifest(manifest_bytes, manifest_path)

    # Which inputs exist is proven by the trees: required ones must be there, optional ones
    # are either there or shown absent (a host cannot hide one by leaving its blob out).
    full = manifest.plan(request.get("targets") or None, exists=lambda p: True)
    required = sorted({i.file for p in full for i in p.inputs if not i.optional})
    optional = sorted({i.file for p in full for i in p.inputs if i.optional} - set(required))
    blobs = gitobjects.verify_paths(objects, commit, required, optional=optional)
    plans = manifest.plan(request.get("targets") or None, exists=lambda p: p in blobs)
    keys = EnclaveKeys(kms_client_factory, nsm, age_identities=age_identities, dev=dev)
    paths = sorted({i.file for p in plans for i in p.inputs})
    # Parse every input first, so every distinct data key is fetched once, concurrently.
    parsed_meta: dict[str, Metadata] = {}
    for p in paths:
        _, raw = get_store(format_for_path(p)).load_encrypted(blobs[p][1])
        if raw is None:
            raise PackError(f"{p}: sops metadata not found")
        parsed_meta[p] = parse_metadata(raw)
    keys.prefetch([e for md in parsed_meta.values() for g in md.key_groups for e in g
                   if isinstance(e, KMSEntry)])
    decrypted = {p: _decrypt_input(p, blobs[p][1], keys) for p in paths}
    for p, (_, md) in decrypted.items():
        kinds = {e.type for g in md.key_groups for e in g}
        keys.sources[p] = "kms-attested" if "kms" in kinds and not (dev and "kms" not in kinds) \
            else "host-age"
    outputs = []
    signing_key = ec.generate_private_key(ec.SECP256R1())
    for plan in plans:
        docs = []
        for ref in plan.inputs:
            branch = decrypted[ref.file][0][0]
            if ref.extract:
                from sops_enclave.api import extract

                sub = extract(branch, ref.extract)
                if not isinstance(sub, Branch):
                    raise PackError(f"{plan.target}: extract {ref.extract} of {ref.file} is not a map")
                branch = sub
            docs.append(branch)
        merged, conflicts = deep_merge(docs)
        group = [KMSEntry(arn, context=tuple(sorted(plan.encrypt.encryption_context.items())))
                 for arn in plan.encrypt.kms]
        group += [AgeEntry(r) for r in plan.encrypt.age]
        md = Metadata(key_groups=[group], version=SOPS_FORMAT_VERSION,
                      crypt_rule=CryptRule("unencrypted_suffix", "_unencrypted"))
        data_key = nsm.get_random(32)
        protect_data_key(md, data_key, [keys], now=now())
        cipher = ValueCipher(data_key, random=nsm.get_random)
        enc, mac = encrypt_tree([merged], cipher, md.crypt_rule, False)
        from sops_enclave.metadata import format_time

        md.lastmodified = format_time(now())
        md.mac = cipher.encrypt(mac, md.mac_aad())
        store = get_store(plan.format)
        meta_branch = md.to_branch(json_nulls=plan.format in ("json", "binary"),
                                   binary=plan.format == "binary")
        out_bytes = store.emit_encrypted(enc, meta_branch)
        used_paths = [r.file for r in plan.inputs]
        kms_uses = []
        for c in keys.calls:
            served = tuple(p for p in used_paths
                           if any(isinstance(e, KMSEntry) and e.enc == c.enc
                                  for g in decrypted[p][1].key_groups for e in g))
            if served:
                kms_uses.append(KMSKeyUse(c.arn, c.request_id, served, c.encryption_context))
        facts = ReceiptFacts(
            output_name=plan.path, repository=request.get("repository", ""), commit=commit,
            manifest_path=manifest_path, manifest_blob=manifest_blob, target=plan.target,
            inputs=[InputRecord(r.file, blobs[r.file][0],
                                hashlib.sha256(blobs[r.file][1]).hexdigest(),
                                keys.sources.get(r.file, "kms-attested"))
                    for r in plan.inputs],
            started_on=started, finished_on=now(), kms_keys=kms_uses,
            recipients=OutputRecipients(
                kms=tuple(KMSRecipient(a, dict(plan.encrypt.encryption_context))
                          for a in plan.encrypt.kms),
                age=tuple(plan.encrypt.age)),
            conflicts=[MergeConflict(".".join(c.path), (used_paths[c.previous], used_paths[c.winner]),
                                     used_paths[c.winner]) for c in conflicts],
            tool_version=__version__)
        receipt = build_receipt(facts, out_bytes, signing_key=signing_key, nsm=nsm,
                                kms_attestation=keys.kms_attestation)
        outputs.append({"path": plan.path, "target": plan.target, "content": out_bytes,
                        "receipt": receipt})
    return {"ok": True, "outputs": outputs,
            "kms_decrypt_calls": len(keys.calls)}
