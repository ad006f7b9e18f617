"""The enclave policy: what the measured enclave agrees to do, whatever the host asks.

A small YAML file that is part of the measured image (bundle path
:data:`BUNDLE_PATH`), so PCR0 pins it together with the code and the KMS key policy pins
both. The enclave enforces it on every run, before any KMS call::

    version: 1
    commit_signers:            # git allowed_signers lines: the pack commit must carry a
      - "release@example.com ssh-ed25519 AAAAC3..."   # valid SSH signature by one of them
    manifest: .sops-enclave.yaml   # optional; the only manifest path the enclave reads
    outputs:                   # every recipient of every output must match one of these
      kms: ["arn:aws:kms:eu-west-1:111122223333:key/*"]   # exact ARNs or trailing-* patterns
      age: ["age1..."]                                    # exact recipients
      hc_vault: ["https://vault.example.com:8200/v1/transit/keys/runtime"]  # exact key URIs
      hc_vault_ca: |           # optional: the only CAs the enclave trusts for those Vault
        -----BEGIN CERTIFICATE-----    # servers (default: the image's CA bundle)
        ...
    inputs:
      kms: ["arn:aws:kms:eu-west-1:111122223333:key/abcd-..."]   # data keys only from these
    allow_host_age: false      # dev enclave only: inputs may be opened with host age keys

Unknown keys, an empty ``commit_signers`` list, a signer line with options the enclave does
not implement (``cert-authority``, ``valid-after``...) or a key type other than ed25519,
ECDSA P-256 or RSA are errors: a policy means exactly what it says or it does not load.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import yaml

from ..errors import SopsError
from .sshsig import KEY_TYPES, CommitSignature, key_fingerprint

__all__ = ["EnclavePolicy", "EnclavePolicyError", "AllowedSigner", "BUNDLE_PATH",
           "image_policy_path",
           "DEFAULT_MANIFEST_PATH", "load_enclave_policy", "MAX_POLICY_BYTES"]

#: Where the policy lives in the measured bundle (and so in the image).
BUNDLE_PATH = "enclave-policy.yaml"
DEFAULT_MANIFEST_PATH = ".sops-enclave.yaml"
MAX_POLICY_BYTES = 256 * 1024
_TOP = {"version", "commit_signers", "manifest", "outputs", "inputs", "allow_host_age"}


def image_policy_path() -> str:
    """Where the measured policy sits in the image: beside the ``sops_enclave`` package."""
    from pathlib import Path

    return str(Path(__file__).resolve().parents[2] / BUNDLE_PATH)


class EnclavePolicyError(SopsError):
    """The enclave policy file is malformed, or a request falls outside it."""


@dataclass(frozen=True)
class AllowedSigner:
    """One ``allowed_signers`` line: principals, key type and public key blob."""

    principals: tuple[str, ...]
    key_type: str
    key_blob: bytes
    namespaces: tuple[str, ...] | None = None

    @property
    def fingerprint(self) -> str:
        return key_fingerprint(self.key_blob)

    @property
    def principal(self) -> str:
        return ",".join(self.principals)


def _split_options(text: str) -> tuple[str, str]:
    """Split a leading ``opt,opt="v,v"`` options field from the rest of the line."""
    out, quoted, i = [], False, 0
    while i < len(text):
        c = text[i]
        if c == '"':
            quoted = not quoted
        elif c in " \t" and not quoted:
            break
        out.append(c)
        i += 1
    if quoted:
        raise ValueError("unterminated quote in the options")
    return "".join(out), text[i:].strip()


def _parse_signer(line: Any, where: str) -> AllowedSigner:
    if not isinstance(line, str) or not line.strip():
        raise EnclavePolicyError(f"{where}: must be an allowed_signers line "
                                 "(principals [options] key-type base64-key)")
    parts = line.split(None, 1)
    if len(parts) < 2:
        raise EnclavePolicyError(f"{where}: needs principals and a key")
    principals = tuple(p for p in parts[0].split(",") if p)
    rest = parts[1].strip()
    namespaces: tuple[str, ...] | None = None
    if rest.split(None, 1)[0] not in KEY_TYPES and not rest.startswith(("sk-", "ssh-", "ecdsa")):
        try:
            opts, rest = _split_options(rest)
        except ValueError as e:
            raise EnclavePolicyError(f"{where}: {e}") from None
        for opt in opts.split(","):
            name, _, value = opt.partition("=")
            if name.lower() == "namespaces" and value.startswith('"') and value.endswith('"'):
                namespaces = tuple(n.strip() for n in value[1:-1].split(",") if n.strip())
            else:
                raise EnclavePolicyError(f"{where}: option {name!r} is not supported by the "
                                         "enclave (only namespaces=\"...\")")
    fields = rest.split()
    if len(fields) < 2:
        raise EnclavePolicyError(f"{where}: needs a key type and a base64 key")
    key_type, b64 = fields[0], fields[1]
    if key_type not in KEY_TYPES:
        raise EnclavePolicyError(f"{where}: key type {key_type!r} is not accepted "
                                 f"({', '.join(KEY_TYPES)})")
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise EnclavePolicyError(f"{where}: the key is not valid base64") from None
    n = int.from_bytes(blob[:4], "big") if len(blob) >= 4 else -1
    if blob[4:4 + n].decode("ascii", "replace") != key_type:
        raise EnclavePolicyError(f"{where}: the key blob is not a {key_type} key")
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    try:
        load_ssh_public_key(f"{key_type} {b64}".encode())
    except (ValueError, TypeError) as e:
        raise EnclavePolicyError(f"{where}: the key cannot be read: {e}") from None
    if not principals:
        raise EnclavePolicyError(f"{where}: no principal")
    return AllowedSigner(principals, key_type, blob, namespaces)


def _strings(v: Any, where: str) -> tuple[str, ...]:
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
        raise EnclavePolicyError(f"{where}: must be a list of non-empty strings")
    return tuple(v)


def _section(doc: dict[Any, Any], name: str, allowed: set[str]) -> dict[Any, Any]:
    v = doc.get(name) or {}
    if not isinstance(v, dict):
        raise EnclavePolicyError(f"{name}: must be a mapping")
    unknown = set(v) - allowed
    if unknown:
        raise EnclavePolicyError(f"{name}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    return v


def _arn_patterns(v: Any, where: str) -> tuple[str, ...]:
    pats = _strings(v, where)
    for p in pats:
        if "*" in p[:-1] or "?" in p:
            raise EnclavePolicyError(f"{where}: {p!r}: only a trailing '*' is allowed")
        if not p.startswith("arn:"):
            raise EnclavePolicyError(f"{where}: {p!r} is not a KMS key ARN")
    return pats


def _vault_uris(v: Any, where: str) -> tuple[str, ...]:
    from ..keys.hcvault import canonical_uri

    uris = _strings(v, where)
    for u in uris:
        try:
            ok = canonical_uri(u) == u
        except SopsError:
            ok = False
        if not ok:
            raise EnclavePolicyError(f"{where}: {u!r} is not a Vault transit key URI written "
                                     "as http(s)://HOST[:PORT]/v1/ENGINE/keys/NAME")
    return uris


def _ca_bundle(v: Any, where: str) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or "-----BEGIN CERTIFICATE-----" not in v:
        raise EnclavePolicyError(f"{where}: must be PEM certificates")
    from cryptography import x509

    try:
        x509.load_pem_x509_certificates(v.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as e:
        raise EnclavePolicyError(f"{where}: the certificates cannot be read: {e}") from None
    return v


def _arn_matches(arn: str, patterns: Sequence[str]) -> bool:
    return any(arn == p or (p.endswith("*") and arn.startswith(p[:-1])) for p in patterns)


@dataclass(frozen=True)
class EnclavePolicy:
    """A loaded policy; ``raw`` is the file's bytes and ``sha256`` their digest."""

    raw: bytes
    signers: tuple[AllowedSigner, ...]
    manifest_path: str
    output_kms: tuple[str, ...]
    output_age: tuple[str, ...]
    input_kms: tuple[str, ...]
    allow_host_age: bool
    output_hc_vault: tuple[str, ...] = ()
    #: PEM CA certificates for the Vault servers' TLS, or None (the image's CA bundle).
    hc_vault_ca: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def text(self) -> str:
        return self.raw.decode("utf-8")

    def signer_for(self, sig: CommitSignature) -> AllowedSigner:
        """The allowed signer whose key made ``sig`` (already verified), or an error."""
        for s in self.signers:
            if s.key_blob == sig.public_key and (s.namespaces is None
                                                 or sig.namespace in s.namespaces):
                return s
        raise EnclavePolicyError(f"the commit is signed by {key_fingerprint(sig.public_key)}, "
                                 "which is not among the policy's commit_signers")

    def check_output(self, target: str, kms: Sequence[str], age: Sequence[str],
                     hc_vault: Sequence[str] = ()) -> None:
        """Refuse an output any of whose recipients the policy does not list."""
        for arn in kms:
            if not _arn_matches(arn, self.output_kms):
                raise EnclavePolicyError(f"target {target}: KMS recipient {arn} is not allowed "
                                         "by the enclave policy (outputs.kms)")
        for r in age:
            if r not in self.output_age:
                raise EnclavePolicyError(f"target {target}: age recipient {r} is not allowed "
                                         "by the enclave policy (outputs.age)")
        for u in hc_vault:
            if u not in self.output_hc_vault:
                raise EnclavePolicyError(f"target {target}: Vault transit key {u} is not "
                                         "allowed by the enclave policy (outputs.hc_vault)")

    def input_kms_allowed(self, arn: str) -> bool:
        return _arn_matches(arn, self.input_kms)


def load_enclave_policy(raw: bytes, where: str = BUNDLE_PATH) -> EnclavePolicy:
    """Parse and check a policy file; raise :class:`EnclavePolicyError` naming the problem."""
    if len(raw) > MAX_POLICY_BYTES:
        raise EnclavePolicyError(f"{where}: larger than {MAX_POLICY_BYTES} bytes")
    try:
        raw.decode("utf-8")
        doc = yaml.load(raw, Loader=yaml.SafeLoader)  # noqa: S506 - SafeLoader
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise EnclavePolicyError(f"{where}: not a YAML file: {str(e).splitlines()[0]}") from None
    try:
        return _build(doc, raw)
    except EnclavePolicyError as e:
        raise EnclavePolicyError(f"{where}: {e.message}") from None


def _build(doc: Any, raw: bytes) -> EnclavePolicy:
    if not isinstance(doc, dict):
        raise EnclavePolicyError("must be a mapping")
    unknown = set(doc) - _TOP
    if unknown:
        raise EnclavePolicyError(f"unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    if doc.get("version") != 1:
        raise EnclavePolicyError("version must be 1")
    lines = doc.get("commit_signers")
    if not isinstance(lines, list) or not lines:
        raise EnclavePolicyError("commit_signers must list at least one allowed signer")
    signers = tuple(_parse_signer(line, f"commit_signers[{i}]") for i, line in enumerate(lines))
    manifest = doc.get("manifest", DEFAULT_MANIFEST_PATH)
    if not isinstance(manifest, str) or not manifest or manifest.startswith("/") \
            or ".." in manifest.split("/") or "" in manifest.split("/"):
        raise EnclavePolicyError("manifest must be a relative path in the repository")
    outputs = _section(doc, "outputs", {"kms", "age", "hc_vault", "hc_vault_ca"})
    inputs = _section(doc, "inputs", {"kms"})
    out_kms = _arn_patterns(outputs.get("kms"), "outputs.kms")
    out_age = _strings(outputs.get("age"), "outputs.age")
    for r in out_age:
        if not r.startswith("age1") or fnmatch.fnmatch(r, "*[*?]*"):
            raise EnclavePolicyError(f"outputs.age: {r!r} is not an age recipient")
    out_vault = _vault_uris(outputs.get("hc_vault"), "outputs.hc_vault")
    vault_ca = _ca_bundle(outputs.get("hc_vault_ca"), "outputs.hc_vault_ca")
    if vault_ca is not None and not out_vault:
        raise EnclavePolicyError("outputs.hc_vault_ca: there is no outputs.hc_vault key")
    if not out_kms and not out_age and not out_vault:
        raise EnclavePolicyError("outputs must allow at least one KMS key, age recipient or "
                                 "Vault transit key")
    host_age = doc.get("allow_host_age", False)
    if not isinstance(host_age, bool):
        raise EnclavePolicyError("allow_host_age must be true or false")
    return EnclavePolicy(raw=bytes(raw), signers=signers, manifest_path=manifest,
                         output_kms=out_kms, output_age=out_age,
                         input_kms=_arn_patterns(inputs.get("kms"), "inputs.kms"),
                         allow_host_age=host_age, output_hc_vault=out_vault,
                         hc_vault_ca=vault_ca)
