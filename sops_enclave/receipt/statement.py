"""The receipt's in-toto Statement v1 with a SLSA Provenance v1-shaped predicate.

:func:`build_statement` turns :class:`ReceiptFacts` into the exact JSON bytes that get
signed; :func:`parse_statement` reads such bytes back into a :class:`Statement` view
that keeps ``raw``. Only metadata is recorded (paths, git ids, sha256 of ciphertext
files, KMS ARNs, encryption contexts, recipients, key names): never plaintext values,
not even hashed. Shape (see docs/receipt.md for a full example)::

    subject: [{name: <output path>, digest: {sha256}}]
    predicate.buildDefinition:
      buildType, externalParameters {source, manifest, target},
      internalParameters {kms, recipients, conflicts,
                          enclavePolicy: {sha256, document} | {unrestricted: true},
                          commitSigner: {principal, keyType, fingerprint} | null,
                          requestNonce: <hex> | null},
      resolvedDependencies: [source commit (annotations.hostAsserted: ["uri"]),
                             manifest blob, inputs in merge order]
    predicate.runDetails: builder {id, version}, metadata {invocationId, startedOn, finishedOn}

A statement without ``enclavePolicy`` (written before it existed) reads as unrestricted.
Error messages from :func:`parse_statement` never quote the statement's strings: they are
unverified when parsing happens.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import Any

from .. import __version__
from .safe_text import has_unsafe

__all__ = ["STATEMENT_TYPE", "PREDICATE_TYPE", "BUILD_TYPE", "BUILDER_ID_NITRO",
           "BUILDER_ID_DEV", "KEY_SOURCES", "HOST_KEY_SOURCES", "SIGNER_KEY_TYPES",
           "HOST_ASSERTED_FIELDS", "InputRecord", "KMSKeyUse", "KMSRecipient",
           "OutputRecipients", "MergeConflict", "EnclavePolicyRecord", "SignerRecord",
           "ReceiptFacts", "Statement", "build_statement", "parse_statement",
           "loads_strict_json"]

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:sops-enclave:buildtype:pack:v1"
BUILDER_ID_NITRO = "urn:sops-enclave:builder:nitro-enclave:v1"
BUILDER_ID_DEV = "urn:sops-enclave:builder:dev-enclave:v1"

#: Where an input's data key came from. ``kms-attested``: KMS Decrypt with a Recipient
#: attestation; ``age-kms-gated``: an age identity that was itself released by an
#: attestation-gated KMS key; ``host-age``/``host-pgp``: a key held by the host.
KEY_SOURCES = ("kms-attested", "age-kms-gated", "host-age", "host-pgp")
HOST_KEY_SOURCES = frozenset({"host-age", "host-pgp"})
#: SSH key types a commit signer may have (the enclave verifies these).
SIGNER_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa")
#: Fields of the source dependency that the host asserts and the enclave cannot check.
HOST_ASSERTED_FIELDS = ("uri",)
#: The NSM accepts nonces of at most 1024 bytes.
MAX_NONCE_BYTES = 1024
MAX_PRINCIPAL_CHARS = 1024

_OID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"(?:[0-9a-f]{2})+")
_FINGERPRINT = re.compile(r"SHA256:([A-Za-z0-9+/]{43})")
_INTERNAL_KEYS = {"kms", "recipients", "conflicts", "enclavePolicy", "commitSigner",
                  "requestNonce"}
_EXTERNAL_KEYS = {"source", "manifest", "target"}


def _path(value: str, what: str) -> str:
    p = PurePosixPath(value) if isinstance(value, str) else None
    if p is None or not value or p.is_absolute() or ".." in p.parts or str(p) != value \
            or "\0" in value:
        raise ValueError(f"{what} must be a normalised relative path")
    return value


def _oid(value: str, what: str) -> str:
    if not isinstance(value, str) or not _OID.fullmatch(value):
        raise ValueError(f"{what} must be a lower-case git object id")
    return value


def _sha256(value: str, what: str) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise ValueError(f"{what} must be 64 lower-case hex digits")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    return value


def _nonce(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _HEX.fullmatch(value) \
            or len(value) > 2 * MAX_NONCE_BYTES:
        raise ValueError(f"{what} must be lower-case hex of 1..{MAX_NONCE_BYTES} bytes")
    return value


def _context(value: Mapping[str, str], what: str) -> Mapping[str, str]:
    if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"{what} must map strings to strings")
    return MappingProxyType(dict(sorted(value.items())))


@dataclass(frozen=True)
class InputRecord:
    """One input SOPS file: path in the commit, git blob id, sha256 of its bytes, and
    where its data key came from (one of :data:`KEY_SOURCES`)."""

    path: str
    git_blob: str
    sha256: str
    key_source: str = "kms-attested"

    def __post_init__(self) -> None:
        _path(self.path, "input path")
        _oid(self.git_blob, f"git blob of {self.path}")
        _sha256(self.sha256, f"sha256 of {self.path}")
        if self.key_source not in KEY_SOURCES:
            raise ValueError(f"key source of {self.path} must be one of {KEY_SOURCES}")


@dataclass(frozen=True)
class KMSKeyUse:
    """A KMS call that unwrapped a data key: ARN, encryption context, request id, and
    the inputs whose data key it was."""

    arn: str
    request_id: str
    data_key_for: tuple[str, ...]
    encryption_context: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _text(self.arn, "KMS key ARN")
        _text(self.request_id, "KMS request id")
        object.__setattr__(self, "data_key_for",
                           tuple(_path(p, "data_key_for path") for p in self.data_key_for))
        object.__setattr__(self, "encryption_context",
                           _context(self.encryption_context, "encryption context"))


@dataclass(frozen=True)
class KMSRecipient:
    """A KMS key the output's data key is wrapped for."""

    arn: str
    encryption_context: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _text(self.arn, "KMS recipient ARN")
        object.__setattr__(self, "encryption_context",
                           _context(self.encryption_context, "encryption context"))


@dataclass(frozen=True)
class OutputRecipients:
    """Who can decrypt the output: KMS keys, age recipients, PGP fingerprints, Vault transit
    key URIs."""

    kms: tuple[KMSRecipient, ...] = ()
    age: tuple[str, ...] = ()
    pgp: tuple[str, ...] = ()
    hc_vault: tuple[str, ...] = ()


@dataclass(frozen=True)
class MergeConflict:
    """A top-level key set by several inputs; ``winner`` is the input whose value won.
    Only the key name is recorded, never a value."""

    key: str
    inputs: tuple[str, ...]
    winner: str


def _canonical_fingerprint(value: Any) -> bool:
    m = _FINGERPRINT.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        return False
    try:
        raw = base64.b64decode(m.group(1) + "=", validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(raw) == 32 and base64.b64encode(raw).decode().rstrip("=") == m.group(1)


@dataclass(frozen=True)
class EnclavePolicyRecord:
    """The enclave policy a run enforced: the sha256 of the policy file's bytes as measured
    into the image, and the file's text (UTF-8), so an auditor sees what was enforced.
    The text must hash to ``sha256``."""

    sha256: str
    document: str

    def __post_init__(self) -> None:
        _sha256(self.sha256, "enclave policy sha256")
        if not isinstance(self.document, str):
            raise ValueError("enclave policy document must be a string")
        try:
            digest = hashlib.sha256(self.document.encode("utf-8")).hexdigest()
        except UnicodeEncodeError:
            raise ValueError("enclave policy document is not valid Unicode") from None
        if digest != self.sha256:
            raise ValueError("enclave policy document does not hash to its sha256")


@dataclass(frozen=True)
class SignerRecord:
    """The allowed signer whose SSH signature on the pack commit the enclave verified:
    the ``allowed_signers`` principal(s) (comma-separated when the line lists several),
    the key type and the OpenSSH ``SHA256:<base64, no padding>`` key fingerprint."""

    principal: str
    key_type: str
    fingerprint: str

    def __post_init__(self) -> None:
        if not isinstance(self.principal, str) or not self.principal \
                or len(self.principal) > MAX_PRINCIPAL_CHARS or has_unsafe(self.principal):
            raise ValueError(f"commit signer principal must be 1..{MAX_PRINCIPAL_CHARS} "
                             "characters without control characters")
        if self.key_type not in SIGNER_KEY_TYPES:
            raise ValueError(f"commit signer key type must be one of {SIGNER_KEY_TYPES}")
        if not _canonical_fingerprint(self.fingerprint):
            raise ValueError("commit signer fingerprint must be SHA256: followed by 43 "
                             "base64 characters (32 bytes, no padding)")

    def matches(self, wanted: str) -> bool:
        """``wanted`` is this signer's fingerprint, its principal, or one of its
        comma-separated principals (exact comparison)."""
        return wanted in (self.fingerprint, self.principal) \
            or wanted in self.principal.split(",")


@dataclass(frozen=True)
class ReceiptFacts:
    """Everything a receipt states about one output, except its digest."""

    output_name: str
    repository: str
    commit: str
    manifest_path: str
    manifest_blob: str
    target: str
    inputs: Sequence[InputRecord]
    started_on: datetime
    finished_on: datetime
    kms_keys: Sequence[KMSKeyUse] = ()
    recipients: OutputRecipients = OutputRecipients()
    conflicts: Sequence[MergeConflict] = ()
    tool_version: str = __version__
    invocation_id: str | None = None
    #: ``None``: the run was UNRESTRICTED (a dev enclave without an enclave policy).
    enclave_policy: EnclavePolicyRecord | None = None
    signer: SignerRecord | None = None
    #: Hex of the host's request nonce; the receipt's attestation carries the same bytes.
    request_nonce: str | None = None

    def __post_init__(self) -> None:
        _text(self.output_name, "output name")
        _text(self.repository, "repository")
        _oid(self.commit, "commit")
        _path(self.manifest_path, "manifest path")
        _oid(self.manifest_blob, "manifest blob")
        _text(self.target, "target")
        if not self.inputs:
            raise ValueError("a receipt needs at least one input")
        paths = [i.path for i in self.inputs]
        if len(set(paths)) != len(paths):
            raise ValueError("an input path is listed twice")
        for t in (self.started_on, self.finished_on):
            if t.tzinfo is None:
                raise ValueError("timestamps must be timezone-aware")
        if self.enclave_policy is not None and \
                not isinstance(self.enclave_policy, EnclavePolicyRecord):
            raise ValueError("enclave_policy must be an EnclavePolicyRecord or None")
        if self.signer is not None and not isinstance(self.signer, SignerRecord):
            raise ValueError("signer must be a SignerRecord or None")
        if self.request_nonce is not None:
            _nonce(self.request_nonce, "request nonce")


def _rfc3339(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_statement(facts: ReceiptFacts, output_sha256: str, *,
                    builder_id: str = BUILDER_ID_NITRO) -> bytes:
    """The Statement JSON bytes (sorted keys, no whitespace, UTF-8) for ``facts``."""
    _sha256(output_sha256, "output sha256")
    deps: list[dict[str, Any]] = [
        {"uri": facts.repository, "digest": {"gitCommit": facts.commit},
         "annotations": {"role": "source", "hostAsserted": list(HOST_ASSERTED_FIELDS)}},
        {"name": facts.manifest_path, "digest": {"gitBlob": facts.manifest_blob},
         "annotations": {"role": "manifest"}},
    ]
    for order, i in enumerate(facts.inputs):
        deps.append({"name": i.path, "digest": {"gitBlob": i.git_blob, "sha256": i.sha256},
                     "annotations": {"role": "input", "order": order,
                                     "dataKeySource": i.key_source}})
    metadata: dict[str, Any] = {"startedOn": _rfc3339(facts.started_on),
                                "finishedOn": _rfc3339(facts.finished_on)}
    if facts.invocation_id:
        metadata["invocationId"] = facts.invocation_id
    r = facts.recipients
    ep = facts.enclave_policy
    s = facts.signer
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": facts.output_name, "digest": {"sha256": output_sha256}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"source": facts.repository,
                                       "manifest": facts.manifest_path,
                                       "target": facts.target},
                "internalParameters": {
                    "kms": [{"arn": k.arn, "encryptionContext": dict(k.encryption_context),
                             "requestId": k.request_id, "dataKeyFor": list(k.data_key_for)}
                            for k in facts.kms_keys],
                    "recipients": {
                        "kms": [{"arn": k.arn, "encryptionContext": dict(k.encryption_context)}
                                for k in r.kms],
                        "age": list(r.age), "pgp": list(r.pgp),
                        **({"hcVault": list(r.hc_vault)} if r.hc_vault else {})},
                    "conflicts": [{"key": c.key, "inputs": list(c.inputs), "winner": c.winner}
                                  for c in facts.conflicts],
                    "enclavePolicy": ({"unrestricted": True} if ep is None else
                                      {"sha256": ep.sha256, "document": ep.document}),
                    "commitSigner": (None if s is None else
                                     {"principal": s.principal, "keyType": s.key_type,
                                      "fingerprint": s.fingerprint}),
                    "requestNonce": facts.request_nonce,
                },
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": {"id": builder_id, "version": {"sops-enclave": facts.tool_version}},
                "metadata": metadata,
            },
        },
    }
    return json.dumps(statement, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError("duplicate JSON key")   # the key itself is unverified text
        out[k] = v
    return out


def _valid_unicode(obj: Any) -> bool:
    """No string (key or value) holds a lone surrogate (``"\\ud800"`` in JSON)."""
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, str):
            try:
                o.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)
    return True


def loads_strict_json(raw: bytes) -> Any:
    """``json.loads`` that refuses duplicate keys, NaN/Infinity, invalid UTF-8 and
    lone surrogates."""
    def bad_constant(name: str) -> Any:
        raise ValueError(f"{name} is not allowed")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8: {e}") from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=bad_constant)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e}") from None
    except RecursionError:
        raise ValueError("not JSON: nested too deeply") from None
    if not _valid_unicode(obj):
        raise ValueError("not valid Unicode: a string holds a lone surrogate")
    return obj


@dataclass(frozen=True)
class Statement:
    """A parsed receipt statement; ``raw`` is the signed payload exactly as received.

    ``unrestricted`` is true when the run enforced no enclave policy (then
    ``enclave_policy_sha256`` and ``enclave_policy_document`` are ``None``); the document
    is *not* checked against its sha256 here (``verify_receipt`` does, at its enclave
    policy step). ``host_asserted`` names source fields the host asserted (``"uri"``)."""

    raw: bytes
    subject_name: str
    subject_sha256: str
    repository: str
    commit: str
    manifest_path: str
    manifest_blob: str
    target: str
    inputs: tuple[InputRecord, ...]
    builder_id: str
    tool_version: str
    data: Mapping[str, Any] = field(repr=False)
    enclave_policy_sha256: str | None = None
    enclave_policy_document: str | None = field(default=None, repr=False)
    unrestricted: bool = True
    signer: SignerRecord | None = None
    request_nonce: str | None = None
    host_asserted: tuple[str, ...] = ()


def _get(obj: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(obj, dict) or k not in obj:
            raise ValueError(f"statement has no {'.'.join(keys)}")
        obj = obj[k]
    return obj


def parse_statement(raw: bytes) -> Statement:
    """Parse and check the statement shape; raise ``ValueError`` naming what is wrong."""
    data = loads_strict_json(raw)
    if _get(data, "_type") != STATEMENT_TYPE:
        raise ValueError(f"_type is not {STATEMENT_TYPE}")
    if _get(data, "predicateType") != PREDICATE_TYPE:
        raise ValueError(f"predicateType is not {PREDICATE_TYPE}")
    subject = _get(data, "subject")
    if not isinstance(subject, list) or len(subject) != 1:
        raise ValueError("statement must have exactly one subject")
    name = _text(_get(subject[0], "name"), "subject name")
    sha = _sha256(_get(subject[0], "digest", "sha256"), "subject sha256")
    bd = _get(data, "predicate", "buildDefinition")
    if _get(bd, "buildType") != BUILD_TYPE:
        raise ValueError(f"buildType is not {BUILD_TYPE}")
    ext = _get(bd, "externalParameters")
    if not isinstance(ext, dict) or set(ext) != _EXTERNAL_KEYS:
        raise ValueError(f"externalParameters must have exactly {sorted(_EXTERNAL_KEYS)}")
    deps = _get(bd, "resolvedDependencies")
    if not isinstance(deps, list):
        raise ValueError("resolvedDependencies is not a list")
    sources, manifests, inputs = [], [], []
    for n, d in enumerate(deps):
        role = _get(d, "annotations", "role")
        if role == "source":
            sources.append(d)
        elif role == "manifest":
            manifests.append(d)
        elif role == "input":
            inputs.append(d)
        else:
            raise ValueError(f"resolvedDependencies[{n}] has an unknown role")
    if len(sources) != 1 or len(manifests) != 1 or not inputs:
        raise ValueError("need one source, one manifest and at least one input dependency")
    repository = _text(_get(sources[0], "uri"), "source uri")
    commit = _oid(_get(sources[0], "digest", "gitCommit"), "commit")
    manifest_path = _path(_get(manifests[0], "name"), "manifest path")
    manifest_blob = _oid(_get(manifests[0], "digest", "gitBlob"), "manifest blob")
    if ext["source"] != repository or ext["manifest"] != manifest_path:
        raise ValueError("externalParameters disagree with resolvedDependencies")
    orders = [_get(d, "annotations", "order") for d in inputs]
    if any(type(o) is not int for o in orders) or sorted(orders) != list(range(len(inputs))):
        raise ValueError("input order annotations are not 0..n-1")
    records = []
    for order, d in sorted(zip(orders, inputs), key=lambda pair: pair[0]):
        what = f"input {order}"
        source = _get(d, "annotations", "dataKeySource")
        if source not in KEY_SOURCES:
            raise ValueError(f"{what}: dataKeySource must be one of {KEY_SOURCES}")
        records.append(InputRecord(_path(_get(d, "name"), f"{what} name"),
                                   _oid(_get(d, "digest", "gitBlob"), f"{what} gitBlob"),
                                   _sha256(_get(d, "digest", "sha256"), f"{what} sha256"),
                                   source))
    if len({r.path for r in records}) != len(records):
        raise ValueError("an input path is listed twice")
    host_asserted = _host_asserted(_get(sources[0], "annotations"))
    ip = _get(bd, "internalParameters")
    if not isinstance(ip, dict) or set(ip) - _INTERNAL_KEYS:
        raise ValueError(f"internalParameters must be an object with keys among "
                         f"{sorted(_INTERNAL_KEYS)}")
    policy_sha, policy_doc = _enclave_policy(ip)
    signer = _signer(ip.get("commitSigner"))
    nonce = ip.get("requestNonce")
    if nonce is not None:
        _nonce(nonce, "requestNonce")
    builder = _get(data, "predicate", "runDetails", "builder")
    version = _get(builder, "version")
    if not isinstance(version, dict):
        raise ValueError("builder.version is not an object")
    return Statement(
        raw=bytes(raw), subject_name=name, subject_sha256=sha, repository=repository,
        commit=commit, manifest_path=manifest_path, manifest_blob=manifest_blob,
        target=_text(ext["target"], "target"), inputs=tuple(records),
        builder_id=_text(_get(builder, "id"), "builder id"),
        tool_version=str(version.get("sops-enclave", "")), data=data,
        enclave_policy_sha256=policy_sha, enclave_policy_document=policy_doc,
        unrestricted=policy_sha is None, signer=signer, request_nonce=nonce,
        host_asserted=host_asserted)


def _host_asserted(annotations: Any) -> tuple[str, ...]:
    value = annotations.get("hostAsserted", []) if isinstance(annotations, dict) else []
    if not isinstance(value, list) or len(set(map(str, value))) != len(value) \
            or not all(isinstance(v, str) and v in HOST_ASSERTED_FIELDS for v in value):
        raise ValueError(f"source hostAsserted must list distinct fields among "
                         f"{list(HOST_ASSERTED_FIELDS)}")
    return tuple(value)


def _enclave_policy(ip: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(sha256, document)``, or ``(None, None)`` for an unrestricted run (or a statement
    from before the field existed)."""
    if "enclavePolicy" not in ip:
        return None, None
    ep = ip["enclavePolicy"]
    if isinstance(ep, dict) and set(ep) == {"unrestricted"} and ep["unrestricted"] is True:
        return None, None
    if not isinstance(ep, dict) or set(ep) != {"sha256", "document"}:
        raise ValueError('enclavePolicy must be {"sha256", "document"} or '
                         '{"unrestricted": true}')
    if not isinstance(ep["document"], str):
        raise ValueError("enclavePolicy.document must be a string")
    return _sha256(ep["sha256"], "enclavePolicy.sha256"), ep["document"]


def _signer(value: Any) -> SignerRecord | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"principal", "keyType", "fingerprint"}:
        raise ValueError("commitSigner must be null or exactly {principal, keyType, "
                         "fingerprint}")
    return SignerRecord(value["principal"], value["keyType"], value["fingerprint"])
