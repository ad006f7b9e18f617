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
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sops_enclave import SOPS_FORMAT_VERSION, __version__
from sops_enclave.cipher import ValueCipher
from sops_enclave.errors import KeyMismatch, SopsError
from sops_enclave.formats import format_for_path, get_store
from sops_enclave.keys.groups import get_data_key, protect_data_key
from sops_enclave.merge import deep_merge
from sops_enclave.metadata import (AgeEntry, KeyEntry, KMSEntry, Metadata, VaultEntry,
                                   parse_metadata)
from sops_enclave.pack.enclave_policy import DEFAULT_MANIFEST_PATH, EnclavePolicy
from sops_enclave.tree import Branch
from sops_enclave.walk import CryptRule, decrypt_tree, encrypt_tree, verify_mac

if TYPE_CHECKING:
    from sops_enclave.receipt.statement import SignerRecord

__all__ = ["PackError", "EnclaveKeys", "EnclaveNSM", "new_recipient_key", "run_pack"]


class EnclaveNSM(Protocol):
    """What the pack step needs of the NSM: ``NitroNSM`` (``/dev/nsm``) or the dev stand-in."""

    def attest(self, public_key: bytes | None = None, user_data: bytes | None = None,
               nonce: bytes | None = None) -> bytes: ...

    def get_random(self, n: int) -> bytes: ...


class PackError(SopsError):
    """The pack request cannot be carried out (bad input, policy, missing key)."""


@dataclass
class KMSCall:
    arn: str
    request_id: str
    encryption_context: dict[str, str]
    enc: str = ""


def new_recipient_key() -> rsa.RSAPrivateKey:
    """A fresh RSA-2048 key for KMS ``Recipient`` (one per request, never shared)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class EnclaveKeys:
    """Key service inside the enclave: KMS Decrypt with ``Recipient`` (attested), KMS Encrypt,
    age wrapping; in dev mode also host-provided age identities for inputs.

    Each distinct (ARN, ciphertext) is decrypted once; :meth:`prefetch` runs them concurrently.
    Vault transit outputs use :attr:`vault_env` (the token the request carries) and trust only
    :attr:`vault_ca` when the policy names CAs.
    ``recipient_key``: this request's own :func:`new_recipient_key` (made in advance while the
    enclave waited for the request); ``None`` makes one here.
    """

    vault_env: dict[str, str] | None = None
    vault_ca: str | None = None

    def __init__(self, kms_client_factory: Callable[[str], Any], nsm: EnclaveNSM, *,
                 age_identities: Sequence[object] = (), dev: bool = False,
                 policy: EnclavePolicy | None = None,
                 recipient_key: rsa.RSAPrivateKey | None = None) -> None:
        self._kms = kms_client_factory
        self._nsm = nsm
        self._age = list(age_identities)
        self.dev = dev
        self.policy = policy
        #: What actually unwrapped the data key of the input being opened (see :meth:`opening`).
        self.used: list[KMSCall | str] = []
        self._rsa = recipient_key if recipient_key is not None else new_recipient_key()
        pub = self._rsa.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        self.kms_attestation = nsm.attest(public_key=pub)
        self._cache: dict[tuple[str, str], tuple[bytes, KMSCall]] = {}
        self._lock = threading.Lock()
        self.calls: list[KMSCall] = []
        self.sources: dict[str, str] = {}

    def input_kms_allowed(self, arn: str) -> bool:
        """May a data key come from this KMS key? (Always, in an unrestricted dev run.)"""
        return self.policy is None or self.policy.input_kms_allowed(arn)

    def host_age_allowed(self) -> bool:
        return self.dev and bool(self._age) and (self.policy is None
                                                 or self.policy.allow_host_age)

    def _kms_decrypt(self, e: KMSEntry) -> tuple[bytes, KMSCall]:
        from sops_enclave.cms import open_ciphertext_for_recipient

        if not self.input_kms_allowed(e.arn):  # never reached for a listed key
            raise KeyMismatch(f"{e.arn} is not an input key of the enclave policy")
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
        call = KMSCall(e.arn, r.get("ResponseMetadata", {}).get("RequestId", "") or "unknown",
                       dict(e.context), e.enc)
        with self._lock:
            self.calls.append(call)
        return key, call

    def prefetch(self, entries: Sequence[KMSEntry]) -> None:
        todo: dict[tuple[str, str], KMSEntry] = {}
        for e in entries:
            if self.input_kms_allowed(e.arn):
                todo.setdefault((e.arn, e.enc), e)
        todo = {k: v for k, v in todo.items() if k not in self._cache}
        if not todo:
            return

        def one(item: tuple[tuple[str, str], KMSEntry]
                ) -> tuple[tuple[str, str], tuple[bytes, KMSCall] | None, Exception | None]:
            k, e = item
            try:
                return k, self._kms_decrypt(e), None
            except (KeyMismatch, SopsError, ValueError) as ex:
                return k, None, ex

        with ThreadPoolExecutor(max_workers=min(16, len(todo))) as pool:
            for k, key, err in pool.map(one, todo.items()):
                if key is not None:
                    self._cache[k] = key

    # The key-service interface used by keys.groups.
    def decrypt(self, entry: KeyEntry) -> bytes:
        if isinstance(entry, KMSEntry):
            if not self.input_kms_allowed(entry.arn):
                raise KeyMismatch(f"{entry.arn} is not an input key of the enclave policy")
            k = (entry.arn, entry.enc)
            if k not in self._cache:
                self._cache[k] = self._kms_decrypt(entry)
            key, call = self._cache[k]
            self.used.append(call)
            return key
        if isinstance(entry, AgeEntry) and self.host_age_allowed():
            from sops_enclave.keys import age

            key = age.unwrap(entry.enc, self._age)
            self.used.append("host-age")
            return key
        raise KeyMismatch(f"{entry.type} keys cannot be used inside the enclave"
                          + ("" if self.dev else " (only KMS with attestation)"))

    def encrypt(self, entry: KeyEntry, plaintext: bytes) -> str:
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
        if isinstance(entry, VaultEntry):
            from sops_enclave.keys import hcvault

            return hcvault.wrap(plaintext, entry.vault_address, entry.engine_path,
                                entry.key_name, self.vault_env or {}, cadata=self.vault_ca)
        raise SopsError(f"cannot encrypt outputs for {entry.type} keys")


def _vault_parts(uri: str) -> tuple[str, str, str]:
    from sops_enclave.keys.hcvault import parse_uri

    return parse_uri(uri)


def _vault_env(creds: Any) -> dict[str, str]:
    """The only settings the Vault client gets in the enclave: the token (and namespace) the
    request carries. Nothing of the enclave's own environment (proxies, CA paths,
    ``VAULT_SKIP_VERIFY``) is read."""
    if not isinstance(creds, dict) or not isinstance(creds.get("token"), str) \
            or not creds["token"]:
        return {}
    env = {"VAULT_TOKEN": creds["token"], "HOME": "/nonexistent"}
    ns = creds.get("namespace")
    if isinstance(ns, str) and ns:
        env["VAULT_NAMESPACE"] = ns
    return env


def _kms_error(ex: Exception) -> str:
    resp = getattr(ex, "response", None)
    if isinstance(resp, dict):
        err = resp.get("Error", {})
        return f"{err.get('Code', 'Error')}: {err.get('Message', '')}".strip()
    return type(ex).__name__


class _GenericErrors:
    """A value cipher whose errors never depend on a value: a type or format error about a
    secret would otherwise be an oracle for the host (one bit per request)."""

    def __init__(self, cipher: ValueCipher, path: str) -> None:
        self._inner = cipher
        self._path = path

    def decrypt(self, value: str, aad: bytes = b"") -> Any:
        try:
            return self._inner.decrypt(value, aad)
        except (SopsError, ValueError, TypeError, OverflowError):
            where = aad.decode("utf-8", "replace").rstrip(":").replace(":", ".") or "(root)"
            raise PackError(f"input {self._path}: value at {where} is invalid") from None


def _decrypt_input(path: str, blob: bytes, md: Metadata, branches: list[Branch],
                   keys: EnclaveKeys) -> list[Branch]:
    keys.used = []
    try:
        key = get_data_key(md, [keys], ("kms", "age"))
    except SopsError as e:
        reasons = " ".join(l.split("| ", 1)[1].strip() for l in e.message.splitlines() if "| " in l)
        first = e.message.splitlines()[0]
        raise PackError(f"{path}: {first}" + (f" ({reasons})" if reasons else ""),
                        exit_code=e.exit_code) from None
    if len(key) != 32:
        raise PackError(f"input {path}: its data key is not 32 bytes")
    inner = ValueCipher(key)
    cipher = _GenericErrors(inner, path)
    try:
        plain, computed = decrypt_tree(branches, cipher, md.crypt_rule, md.mac_only_encrypted)
    except PackError:
        raise
    except SopsError:
        raise PackError(f"input {path}: a value is invalid") from None
    try:
        verify_mac(inner, md.mac, md.mac_aad(), computed)
    except SopsError:
        # Generic: sops' own message would show the computed MAC (a digest of the values).
        raise PackError(f"{path}: MAC mismatch", exit_code=51) from None
    return plain


#: The crypt rule of every output: an unencrypted_regex that matches no key, so every value
#: and every comment is encrypted, whatever the inputs' own rules were (a value encrypted in
#: an input can never come out in clear). Go's regexp and Python's read it alike.
OUTPUT_CRYPT_RULE = ("unencrypted_regex", r"[^\s\S]")


def _load_input(path: str, blob: bytes) -> tuple[list[Branch], Metadata]:
    try:
        branches, raw = get_store(format_for_path(path)).load_encrypted(blob)
    except SopsError as e:
        raise PackError(f"input {path}: cannot parse: {e.message.splitlines()[0][:200]}",
                        exit_code=e.exit_code) from None
    except ValueError:
        raise PackError(f"input {path}: cannot parse") from None
    if raw is None:
        raise PackError(f"{path}: sops metadata not found")
    return branches, parse_metadata(raw)


def _check_repository(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 1024 \
            or any(ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 for c in value):
        raise PackError("the repository name in the request is empty, too long or holds "
                        "control characters")
    return value


def _signer(objects: dict[str, tuple[str, bytes]], commit: str,
            policy: EnclavePolicy | None) -> SignerRecord | None:
    """The allowed signer of the commit (None in an unrestricted dev run)."""
    from sops_enclave.pack.sshsig import SignatureError, verify_commit_signature
    from sops_enclave.receipt.statement import SignerRecord

    if policy is None:
        return None
    found = objects.get(commit)
    if found is None or found[0] != "commit":
        raise PackError(f"commit {commit[:12]} is missing from the git objects")
    try:
        sig = verify_commit_signature(found[1])
    except SignatureError as e:
        raise PackError(f"commit {commit[:12]}: {e}; the enclave policy requires a commit "
                        "signed by one of its commit_signers") from None
    s = policy.signer_for(sig)
    return SignerRecord(principal=s.principal, key_type=s.key_type, fingerprint=s.fingerprint)


def run_pack(request: dict[str, Any], nsm: EnclaveNSM, kms_client_factory: Callable[[str], Any],
             *, dev: bool, age_identities: Sequence[object] = (),
             clock: Callable[[], _dt.datetime] | None = None,
             policy: EnclavePolicy | None = None,
             recipient_key: rsa.RSAPrivateKey | None = None) -> dict[str, Any]:
    """Carry out one pack request; returns ``{"ok": True, "outputs": [...]}``.

    ``policy`` is the measured enclave policy; only the dev enclave may run without one
    (an *unrestricted* run, said so in every receipt). Every check that could release a
    secret is made here, before the first KMS call: the commit's signature, the manifest
    path, each output's recipients, each input's KMS keys. ``recipient_key``: see
    :class:`EnclaveKeys` (the serve loop hands each request its own)."""
    from sops_enclave.pack import gitobjects
    from sops_enclave.pack.manifest import load_manifest
    from sops_enclave.receipt.builder import build_receipt
    from sops_enclave.receipt.statement import (EnclavePolicyRecord, InputRecord, KMSKeyUse,
                                                KMSRecipient, MergeConflict, OutputRecipients,
                                                ReceiptFacts)

    if policy is None and not dev:
        raise PackError("the enclave image holds no enclave policy; refusing to run")
    now = clock or (lambda: _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0))
    started = now()
    nonce = request.get("nonce")
    if not isinstance(nonce, bytes) or not 16 <= len(nonce) <= 64:
        raise PackError("the request needs a nonce of 16 to 64 bytes")
    repository = _check_repository(request.get("repository"))
    commit = request["commit"]
    objects = gitobjects.GitBundle.from_wire(request["git"]).objects
    # (1) the manifest path is the policy's, never the host's choice.
    asked = request.get("manifest_path") or DEFAULT_MANIFEST_PATH
    manifest_path = policy.manifest_path if policy is not None else asked
    if asked != manifest_path:
        raise PackError(f"the enclave policy fixes the manifest at {manifest_path}, "
                        f"not {asked}")
    # Every object id is recomputed here, the commit's included...
    found = gitobjects.verify_paths(objects, commit, [manifest_path])
    manifest_blob, manifest_bytes = found[manifest_path]
    # (2) ...so the signature is checked over the commit bytes whose id we verified, and
    # before the manifest is read.
    signer = _signer(objects, commit, policy)
    manifest = load_manifest(manifest_bytes, manifest_path)

    # Which inputs exist is proven by the trees: required ones must be there, optional ones
    # are either there or shown absent (a host cannot hide one by leaving its blob out).
    full = manifest.plan(request.get("targets") or None, exists=lambda p: True)
    # (3) every recipient of every output is one the policy lists.
    if policy is not None:
        for plan in full:
            policy.check_output(plan.target, plan.encrypt.kms, plan.encrypt.age,
                                plan.encrypt.hc_vault)
    for plan in full:
        for uri in plan.encrypt.hc_vault:
            # The host carries the enclave's traffic: a data key sent to Vault in clear HTTP
            # would be the host's. Only the dev enclave (on the host anyway) may use http.
            if not dev and not uri.startswith("https://"):
                raise PackError(f"target {plan.target}: Vault transit key {uri} is not "
                                "reached over https; the enclave sends data keys to Vault "
                                "only over TLS")
    required = sorted({i.file for p in full for i in p.inputs if not i.optional})
    optional = sorted({i.file for p in full for i in p.inputs if i.optional} - set(required))
    blobs = gitobjects.verify_paths(objects, commit, required, optional=optional)
    plans = manifest.plan(request.get("targets") or None, exists=lambda p: p in blobs)
    vault_env = _vault_env(request.get("hc_vault"))
    if any(p.encrypt.hc_vault for p in plans) and not vault_env:
        raise PackError("an output is for a Vault transit key and the request carries no "
                        "Vault token (set VAULT_TOKEN or ~/.vault-token on the host)")
    keys = EnclaveKeys(kms_client_factory, nsm, age_identities=age_identities, dev=dev,
                       policy=policy, recipient_key=recipient_key)
    keys.vault_env = vault_env
    keys.vault_ca = policy.hc_vault_ca if policy is not None else None
    paths = sorted({i.file for p in plans for i in p.inputs})
    # Parse every input first, so every distinct data key is fetched once, concurrently.
    loaded = {p: _load_input(p, blobs[p][1]) for p in paths}
    # (4) every input can be opened with a key the policy allows, or nothing is fetched.
    for p, (_, md) in loaded.items():
        entries = [e for g in md.key_groups for e in g]
        if not any(isinstance(e, KMSEntry) and keys.input_kms_allowed(e.arn) for e in entries) \
                and not (keys.host_age_allowed() and any(isinstance(e, AgeEntry)
                                                         for e in entries)):
            raise PackError(f"input {p}: none of its keys is an input key of the enclave "
                            "policy (inputs.kms)" if policy is not None else
                            f"input {p}: no key usable in the enclave (KMS, or host age keys "
                            "in dev)")
    keys.prefetch([e for _, md in loaded.values() for g in md.key_groups for e in g
                   if isinstance(e, KMSEntry)])
    decrypted: dict[str, tuple[list[Branch], Metadata]] = {}
    opened_by: dict[str, list[KMSCall | str]] = {}
    for p in paths:
        branches, md = loaded[p]
        decrypted[p] = (_decrypt_input(p, blobs[p][1], md, branches, keys), md)
        opened_by[p] = list(keys.used)
        keys.sources[p] = "host-age" if "host-age" in keys.used else "kms-attested"
    policy_record = None if policy is None else EnclavePolicyRecord(policy.sha256, policy.text)
    outputs = []
    signing_key = ec.generate_private_key(ec.SECP256R1())
    for plan in plans:
        docs = []
        for ref in plan.inputs:
            branch = decrypted[ref.file][0][0]
            if ref.extract:
                from sops_enclave.tree import extract

                where = "".join(f"[{c}]" if isinstance(c, int) else f'["{c}"]'
                                for c in ref.extract)
                try:
                    sub = extract(branch, ref.extract)
                except SopsError:
                    raise PackError(f"target {plan.target}: input {ref.file} has no {where} "
                                    "(the input's extract in the manifest)") from None
                if not isinstance(sub, Branch):
                    raise PackError(f"target {plan.target}: {where} of input {ref.file} is "
                                    "not a map (the input's extract in the manifest)")
                branch = sub
            docs.append(branch)
        merged, conflicts = deep_merge(docs)
        group: list[Any] = [
            KMSEntry(arn, context=tuple(sorted(plan.encrypt.encryption_context.items())))
            for arn in plan.encrypt.kms]
        group += [AgeEntry(r) for r in plan.encrypt.age]
        group += [VaultEntry(*_vault_parts(u)) for u in plan.encrypt.hc_vault]
        md = Metadata(key_groups=[group], version=SOPS_FORMAT_VERSION,
                      crypt_rule=CryptRule(*OUTPUT_CRYPT_RULE))
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
        # The KMS calls that actually unwrapped the data key of an input of this output.
        kms_uses = []
        for c in keys.calls:
            served = tuple(p for p in used_paths if any(u is c for u in opened_by[p]))
            if served:
                kms_uses.append(KMSKeyUse(c.arn, c.request_id, served, c.encryption_context))
        facts = ReceiptFacts(
            output_name=plan.path, repository=repository, commit=commit,
            manifest_path=manifest_path, manifest_blob=manifest_blob, target=plan.target,
            inputs=[InputRecord(r.file, blobs[r.file][0],
                                hashlib.sha256(blobs[r.file][1]).hexdigest(),
                                keys.sources[r.file])
                    for r in plan.inputs],
            started_on=started, finished_on=now(), kms_keys=kms_uses,
            recipients=OutputRecipients(
                kms=tuple(KMSRecipient(a, dict(plan.encrypt.encryption_context))
                          for a in plan.encrypt.kms),
                age=tuple(plan.encrypt.age), hc_vault=tuple(plan.encrypt.hc_vault)),
            conflicts=[MergeConflict(".".join(c.path), (used_paths[c.previous], used_paths[c.winner]),
                                     used_paths[c.winner]) for c in conflicts],
            tool_version=__version__, enclave_policy=policy_record, signer=signer,
            request_nonce=nonce.hex())
        receipt = build_receipt(facts, out_bytes, signing_key=signing_key, nsm=nsm,
                                kms_attestation=keys.kms_attestation, nonce=nonce)
        outputs.append({"path": plan.path, "target": plan.target, "content": out_bytes,
                        "receipt": receipt})
    return {"ok": True, "outputs": outputs,
            "kms_decrypt_calls": len(keys.calls)}
