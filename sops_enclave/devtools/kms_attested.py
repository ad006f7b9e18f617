"""DEV STAND-IN, NOT AWS: a local KMS that checks callers, key policies and attestations.

No public KMS emulator supports the Nitro ``Recipient`` parameter or evaluates key
policies, so for local runs and tests this module puts a small HTTP server (127.0.0.1) in
front of moto's KMS server (DESIGN.md section 8). moto stores the keys and does the
cryptography; this layer decides who may do what. Production code never imports it; it
trusts only the dev roots it is given and exists so that the enclave's KMS path, and the
key policy ``sops-enclave policy`` writes, can be exercised end to end without AWS::

    kms = AttestedKMS("http://127.0.0.1:5000", trusted_roots=[SoftNSM().root_fingerprint])
    url = kms.start()            # point boto3 at it: endpoint_url=url / AWS_ENDPOINT_URL_KMS
    ...
    kms.stats                    # {"Decrypt": 2, "GenerateDataKey": 1, ...}
    kms.stop()

or ``python -m sops_enclave.devtools.kms_attested --upstream URL --root FP [--root FP]
[--principal ACCESS_KEY_ID:SECRET:ARN ...]``.

Each request goes through these steps; a refusal is an AWS-style JSON error (HTTP 400
unless noted) and the request is then *not* forwarded to moto.

1. Parsing, as AWS does. ``POST /`` with exactly one ``X-Amz-Target`` header spelled
   ``TrentService.<Operation>`` (case-sensitive, no whitespace, an operation of the KMS
   API), else ``UnknownOperationException``; exactly one ``Content-Type:
   application/x-amz-json-1.1``, else ``UnknownOperationException``; a UTF-8 JSON object
   body without duplicate keys or ``NaN``, else ``SerializationException``; its fields
   checked against botocore's KMS model (unknown fields and wrong types
   ``SerializationException``, missing required fields ``ValidationException``). No
   ``Transfer-Encoding``, one ``Content-Length`` of at most 1 MiB. Anything else (the
   moto dashboard, other paths) is refused.
2. The caller: the SigV4 ``Authorization`` header is verified against a table of dev
   principals ``{access key id: (secret, principal ARN)}`` (:mod:`.kms_sigv4`, default
   :data:`~.kms_sigv4.DEFAULT_PRINCIPALS`: ``dev`` = ``role/ci-host``, ``kms-admin`` =
   ``role/kms-admin``, ``testing`` = ``user/testing``, all in moto's account
   123456789012). Unknown key ``UnrecognizedClientException``, bad signature
   ``InvalidSignatureException``.
3. ``Recipient`` (on ``Decrypt``, ``GenerateDataKey``, ``GenerateDataKeyPair``,
   ``GenerateRandom``, ``DeriveSharedSecret``, where KMS accepts it): ``KeyEncryptionAlgorithm``
   absent or ``RSAES_OAEP_SHA_256``, ``AttestationDocument`` 1..262144 bytes, verified with
   :func:`~sops_enclave.receipt.attestation.verify_attestation` against the configured
   root fingerprints, certificates valid now, debug documents (PCR0 all zero) refused
   unless ``allow_debug``, ``timestamp`` at most ``max_age`` seconds old (and not more than
   a minute in the future), ``public_key`` an RSA 2048/3072/4096 SubjectPublicKeyInfo. A
   bad document is ``AccessDeniedException``. Its PCRs become the
   ``kms:RecipientAttestation:*`` condition keys.
4. Authorization (:mod:`.kms_operations` says which IAM action on which key each of the
   56 operations needs; an operation not in that table is refused). The key named in the
   request (key id, key ARN, or for the cryptographic operations an alias) is resolved to
   its ARN with moto's ``DescribeKey`` (a key ARN of the caller's account and region stands
   for itself; a key that does not exist gets moto's ``NotFoundException`` from the policy
   look-up) and its policy fetched with ``GetKeyPolicy`` on every call (no cache: a policy
   change applies at once); the
   policy is evaluated by :func:`~.kms_policy_eval.evaluate_key_policy` for the caller,
   the key and the request's condition keys (``aws:PrincipalArn``, ``kms:CallerAccount``,
   ``kms:EncryptionContext:*``, ``kms:GrantOperations``, ...). An explicit Deny refuses;
   otherwise an Allow or a grant (below) permits; otherwise ``AccessDeniedException``.
   Where the key is known only from the ciphertext (``Decrypt`` without ``KeyId``, the
   source of ``ReEncrypt`` without ``SourceKeyId``) the request is forwarded and moto's
   answer, which names the key it used, is evaluated; on denial it is dropped. For the
   cryptographic operations the key moto reports must be the one that was evaluated (an
   alias moved in between is refused). ``DryRun`` requests are answered here
   (``DryRunOperationException``, HTTP 412, when allowed): moto ignores the flag, so they
   are not forwarded, except the two above whose key only moto's answer names (that answer
   is then dropped).
   ``PutKeyPolicy``/``CreateKey``/``ReplicateKey`` policies that the evaluator cannot read
   are refused (``MalformedPolicyDocumentException``); KMS's lockout safety check is not
   modelled.
5. Forwarding: moto receives exactly the request that was evaluated: the same body (minus
   ``Recipient``, which moto does not know) and only the canonical headers (one
   ``X-Amz-Target``). Moto's answer is relayed, except that with ``Recipient`` the
   ``Plaintext`` (and ``KeyMaterialId``) of ``Decrypt``/``GenerateDataKey`` are replaced by
   ``CiphertextForRecipient``: the plaintext wrapped for the document's public key by
   :func:`sops_enclave.cms.make_ciphertext_for_recipient`. ``Recipient`` on the other
   operations is refused with ``ValidationException`` after the policy allowed it: this
   stand-in does not implement them, and forwarding would return the plaintext.

Grants. Grants created through this layer are recorded (grantee, retiring principal,
operations, ``EncryptionContextEquals``/``EncryptionContextSubset`` constraints) and allow
their operations to their grantee (an account-root grantee: any principal of that
account) at once, whether or not the request carries ``GrantTokens``; tokens it did not
issue are ``InvalidGrantTokenException``. A grant never overrides an explicit Deny of the
key policy. Constraints fail closed for ``ReEncrypt``. A grantee may create a grant only
for a subset of its own grant's operations, with the same constraints. ``RetireGrant`` is
allowed to the retiring principal and to a grantee whose grant lists it; ``RevokeGrant``
by key policy. Grants made directly on moto are unknown here and allow nothing.

Not modelled: IAM identity policies (every dev principal counts as allowed by its IAM
policy, so a key policy statement naming an account root allows every principal of that
account, and operations on no key (``CreateKey``, ``ListKeys``, ``GenerateRandom``, ...)
are open to every known principal), SCPs, ``kms:ViaService`` (always absent: no AWS
service calls through this layer), eventual consistency. Counters of the requests
received per operation (all outcomes) are in :attr:`stats`, refusals by this layer in
:attr:`denied`, requests forwarded to moto in :attr:`forwarded`; the first two are also
served as JSON at ``GET /_sops_enclave/stats``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import http.client
import json
import re
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ..cms import RSA_KEY_SIZES, make_ciphertext_for_recipient
from ..receipt.attestation import AttestationDocument, verify_attestation
from ..receipt.errors import AttestationError
from ..receipt.nitro_root import normalize_fingerprint
from .kms_operations import GRANT_OPERATIONS, OPERATIONS, Operation
from .kms_policy_eval import (
    UNKNOWN, Decision, PolicyFormatError, Principal, RequestContext, Uncertain,
    attestation_context, encryption_context_values, evaluate_key_policy, parse_policy)
from .kms_sigv4 import AuthError, parse_principal_spec, principal_table, verify_signature

__all__ = ["AttestedKMS", "Decision", "evaluate_key_policy", "attestation_context",
           "STATS_PATH", "main"]

STATS_PATH = "/_sops_enclave/stats"
#: Operations whose ``Recipient`` this layer implements (answers with CiphertextForRecipient).
GATED_OPERATIONS = ("Decrypt", "GenerateDataKey")
#: KMS's limit on ``Recipient.AttestationDocument``.
MAX_ATTESTATION_DOCUMENT = 262144
MAX_REQUEST_BODY = 1024 * 1024
_FUTURE_SKEW = 60.0
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
               "trailer", "upgrade", "content-length"}
_JSON = "application/x-amz-json-1.1"
_TARGET_RE = re.compile(r"TrentService\.([A-Za-z]+)", re.ASCII)
_SINGLE_HEADERS = ("host", "x-amz-date", "authorization", "x-amz-security-token",
                   "user-agent")
_FORWARDED_HEADERS = {"host": "Host", "x-amz-date": "X-Amz-Date",
                      "authorization": "Authorization",
                      "x-amz-security-token": "X-Amz-Security-Token",
                      "user-agent": "User-Agent"}
#: Grant operations to which KMS applies encryption-context constraints.
_EC_GRANT_OPERATIONS = frozenset({"Decrypt", "Encrypt", "GenerateDataKey",
                                  "GenerateDataKeyWithoutPlaintext", "GenerateDataKeyPair",
                                  "GenerateDataKeyPairWithoutPlaintext"})
_NOT_IMPLEMENTED_RECIPIENT = frozenset({"GenerateDataKeyPair", "GenerateRandom",
                                        "DeriveSharedSecret"})


# --- errors and per-request state ------------------------------------------------------

class _Refusal(Exception):
    def __init__(self, error_type: str, message: str, status: int = 400,
                 close: bool = False) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.status = status
        self.close = close


class _Relay(Exception):
    """Relay this upstream answer (an error of moto's) as it is."""

    def __init__(self, response: tuple[int, list[tuple[str, str]], bytes]) -> None:
        super().__init__("upstream error")
        self.response = response


@dataclass
class _Grant:
    grant_id: str
    token: str
    key_arn: str
    grantee: str | None
    retiring: str | None
    operations: frozenset[str]
    constraints: dict[str, dict[str, str]] | None

    def names(self, who: str | None, principal: Principal) -> bool:
        return who is not None and who in (principal.arn, principal.account_root,
                                           principal.account)


@dataclass
class _Call:
    op: Operation
    params: dict[str, Any]
    body: bytes
    principal: Principal
    region: str                             # the region the request's signature is scoped to
    headers: dict[str, str]                 # the canonical forwarded headers
    doc: AttestationDocument | None = None

    @property
    def dry_run(self) -> bool:
        return self.params.get("DryRun") is True


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Refusal("SerializationException", f"duplicate field {k!r} in the request")
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise _Refusal("SerializationException", f"{name} is not valid JSON")


@lru_cache(maxsize=1)
def _service_model() -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model("kms")


def _validate_params(op: str, params: dict[str, Any]) -> None:
    from botocore.validate import ParamValidator

    shape = _service_model().operation_model(op).input_shape
    report = ParamValidator().validate(params, shape)
    if report.has_errors():
        kinds = {e[0] for e in getattr(report, "_errors", [])}
        error = ("SerializationException" if kinds & {"unknown field", "invalid type"}
                 else "ValidationException")
        raise _Refusal(error, report.generate_report().replace("\n", "; "))


_KEY_ARN = re.compile(r"arn:aws[a-z-]*:kms:(?P<region>[a-z0-9-]+):(?P<account>[0-9]{12}):"
                      r"key/[A-Za-z0-9-]+")


def _is_alias(key_ref: str) -> bool:
    return key_ref.startswith("alias/") or (key_ref.startswith("arn:") and ":alias/" in key_ref)


def _same_key(reported: Any, arn: str) -> bool:
    return isinstance(reported, str) and reported in (arn, arn.rsplit("/", 1)[-1])


def _lower_keys(ec: Mapping[str, str]) -> dict[str, str] | None:
    out = {k.lower(): v for k, v in ec.items()}
    return out if len(out) == len(ec) else None


# --- the server ------------------------------------------------------------------------

class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog is 5: an enclave opening its 16 connections at once had
    # some SYNs dropped, and each such call stalled 1 s (the SYN retransmission timeout).
    request_queue_size = 128
    kms: AttestedKMS


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    # Headers and body go out in two writes: without TCP_NODELAY, Nagle holds the body
    # until the client's delayed ACK (40 ms) on every reused keep-alive connection.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        if self.server.kms.verbose:
            super().log_message(format, *args)

    def _handle(self) -> None:
        self.server.kms._handle(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle


class AttestedKMS:
    """The dev KMS (see the module docstring).

    ``upstream``: moto's server URL. ``trusted_roots``: SHA-256 fingerprints (hex) of the
    roots attestation documents must chain to, e.g. ``SoftNSM().root_fingerprint``.
    ``allow_debug``: accept debug-mode documents. ``max_age``: seconds an attestation
    document stays usable after its timestamp (``None``: no limit). ``principals``:
    ``{access key id: (secret access key, IAM role/user ARN)}`` of the callers it knows
    (``None``: :data:`~.kms_sigv4.DEFAULT_PRINCIPALS`).
    """

    def __init__(self, upstream: str, trusted_roots: Iterable[str], allow_debug: bool = False,
                 *, max_age: float | None = 300.0, timeout: float = 30.0,
                 verbose: bool = False,
                 principals: Mapping[str, tuple[str, str]] | None = None) -> None:
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream must be an http(s) URL, got {upstream!r}")
        self.upstream = upstream.rstrip("/")
        self._upstream = parts
        self.trusted_roots = tuple(normalize_fingerprint(f) for f in trusted_roots)
        if not self.trusted_roots:
            raise ValueError("at least one trusted root fingerprint is required")
        self.allow_debug = bool(allow_debug)
        self.max_age = max_age
        self.timeout = timeout
        self.verbose = verbose
        self._principals = principal_table(principals)
        self._lock = threading.Lock()
        self._alias_lock = threading.Lock()
        self._verify_lock = threading.Lock()
        self._verified: dict[bytes, AttestationDocument] = {}
        self._grants: dict[tuple[str, str], _Grant] = {}
        self._requests: Counter[str] = Counter()
        self._denied: Counter[str] = Counter()
        self._forwarded: Counter[str] = Counter()
        self._upstream_conn = threading.local()  # one kept-alive connection per handler thread
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url: str | None = None

    # -- lifecycle --

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0 = any free port) in a background thread; return the URL."""
        if self._server is not None:
            raise RuntimeError("already started")
        server = _Server((host, port), _Handler)
        server.kms = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="attested-kms",
                                        daemon=True)
        self._thread.start()
        bound_host, bound_port = server.server_address[:2]
        self.url = f"http://{bound_host}:{bound_port}"
        return self.url

    def stop(self) -> None:
        """Stop listening and wait for the server thread."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(10)

    def __enter__(self) -> AttestedKMS:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- introspection --

    @property
    def principals(self) -> dict[str, str]:
        """``{access key id: principal ARN}`` of the callers this instance knows."""
        return {k: p.arn for k, (_, p) in self._principals.items()}

    @property
    def stats(self) -> dict[str, int]:
        """Requests received per KMS operation (all outcomes), a snapshot."""
        with self._lock:
            return dict(self._requests)

    @property
    def denied(self) -> dict[str, int]:
        """Requests this layer refused, per operation, a snapshot."""
        with self._lock:
            return dict(self._denied)

    @property
    def forwarded(self) -> dict[str, int]:
        """Requests forwarded to moto per operation (internal look-ups not counted)."""
        with self._lock:
            return dict(self._forwarded)

    def reset_stats(self) -> None:
        """Zero the counters."""
        with self._lock:
            self._requests.clear()
            self._denied.clear()
            self._forwarded.clear()

    # -- request handling --

    def _handle(self, req: _Handler) -> None:
        state: dict[str, str] = {}
        try:
            if req.command == "GET" and req.path == STATS_PATH:
                with self._lock:
                    counters = {"requests": dict(self._requests),
                                "denied": dict(self._denied)}
                self._send(req, 200, {"Content-Type": "application/json"},
                           json.dumps(counters, sort_keys=True).encode())
                return
            body = self._read_body(req)
            call = self._parse(req, body, state)
            self._dispatch(req, call)
        except _Refusal as r:
            self._refuse(req, state.get("op"), r)
        except _Relay as r:
            self._relay(req, r.response)
        except OSError:
            raise
        except Exception as e:  # a bug in this layer must never look like success
            self._error(req, 500, "KMSInternalException",
                        f"dev KMS internal error: {type(e).__name__}")

    @staticmethod
    def _read_body(req: _Handler) -> bytes:
        if req.headers.get_all("Transfer-Encoding"):
            raise _Refusal("SerializationException", "chunked request bodies are not supported",
                           close=True)
        lengths = req.headers.get_all("Content-Length") or []
        if len(lengths) > 1 or (lengths and not (lengths[0].isascii()
                                                      and lengths[0].isdigit())):
            raise _Refusal("SerializationException", "one Content-Length is required",
                           close=True)
        length = int(lengths[0]) if lengths else 0
        if length > MAX_REQUEST_BODY:
            raise _Refusal("SerializationException", "request body too large", close=True)
        return req.rfile.read(length) if length else b""

    def _parse(self, req: _Handler, body: bytes, state: dict[str, str]) -> _Call:
        targets = req.headers.get_all("X-Amz-Target") or []
        m = _TARGET_RE.fullmatch(targets[0]) if len(targets) == 1 else None
        op = OPERATIONS.get(m[1]) if m else None
        with self._lock:
            self._requests[op.name if op else "(other)"] += 1
        if op is not None:
            state["op"] = op.name
        if req.command != "POST" or req.path != "/" or op is None:
            shown = ", ".join(repr(t) for t in targets) or "none"
            raise _Refusal("UnknownOperationException",
                           f"dev KMS: not a KMS operation (X-Amz-Target: {shown})")
        if (req.headers.get_all("Content-Type") or []) != [_JSON]:
            raise _Refusal("UnknownOperationException",
                           f"dev KMS: Content-Type must be {_JSON}")
        headers = req.headers.items()
        counts = Counter(name.lower() for name, _ in headers)
        for name in _SINGLE_HEADERS:
            if counts[name] > 1:
                raise _Refusal("IncompleteSignatureException", f"more than one {name} header")
        try:
            principal, region = verify_signature(req.command, req.path, headers, body,
                                                 self._principals)
        except AuthError as e:
            raise _Refusal(e.error_type, e.message) from None
        try:
            text = body.decode("utf-8")
            params = json.loads(text, object_pairs_hook=_no_duplicates,
                                parse_constant=_reject_constant)
        except _Refusal:
            raise
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise _Refusal("SerializationException", "the request body is not JSON") from None
        if not isinstance(params, dict):
            raise _Refusal("SerializationException", "the request body is not a JSON object")
        _validate_params(op.name, params)
        forward = {"Content-Type": _JSON, "X-Amz-Target": f"TrentService.{op.name}"}
        for name, value in headers:
            canonical = _FORWARDED_HEADERS.get(name.lower())
            if canonical:
                forward[canonical] = value
        return _Call(op, params, body, principal, region, forward)

    def _dispatch(self, req: _Handler, call: _Call) -> None:
        op, params = call.op, call.params
        self._check_grant_tokens(params.get("GrantTokens"))
        if "Recipient" in params:
            call.doc = self._verify_recipient(params.pop("Recipient"))
            call.body = json.dumps(params).encode()
        if op.name in ("PutKeyPolicy", "CreateKey", "ReplicateKey") and "Policy" in params:
            self._check_policy_document(params)
        if op.kind == "iam":
            self._finish_simple(req, call, None)
        elif op.kind == "key":
            arn = self._resolve(call, params["KeyId"], alias_ok=op.alias_ok)
            grant = self._authorize(call, op.action, arn, op.ec_params[0] if op.ec_params
                                    else None)
            if op.name == "CreateGrant":
                self._check_create_grant(call, arn, grant)
            self._finish_simple(req, call, arn)
        elif op.kind == "decrypt":
            self._decrypt(req, call)
        elif op.kind == "reencrypt":
            self._reencrypt(req, call)
        elif op.kind in ("create-alias", "update-alias", "delete-alias"):
            with self._alias_lock:
                self._alias(req, call)
        elif op.kind == "retire-grant":
            self._retire_grant(req, call)
        else:  # pragma: no cover - the table has no other kinds
            raise _Refusal("UnknownOperationException", f"dev KMS: {op.name} is not handled")

    # -- the operation kinds --

    def _finish_simple(self, req: _Handler, call: _Call, arn: str | None) -> None:
        """Authorization done: refuse what is not implemented, answer DryRun, forward."""
        op = call.op
        if call.doc is not None and op.name in _NOT_IMPLEMENTED_RECIPIENT:
            raise _Refusal("ValidationException",
                           f"dev KMS: Recipient is not implemented for {op.name} "
                           f"(only {', '.join(GATED_OPERATIONS)})")
        if call.dry_run:
            raise self._dry_run()
        status, headers, answer = self._forward(call)
        if status != 200:
            raise _Relay((status, headers, answer))
        if op.alias_ok and arn is not None:
            result = self._json_answer(op.name, answer)
            reported = result.get("KeyId") if "KeyMetadata" not in result else \
                (result.get("KeyMetadata") or {}).get("Arn")
            if not _same_key(reported, arn):
                raise _Refusal("AccessDeniedException",
                               f"dev KMS: {op.name} used key {reported!r}, not the evaluated "
                               f"{arn} (an alias changed meanwhile); the answer was dropped")
        if op.name == "CreateGrant":
            self._record_grant(call, arn, answer)
        elif op.name == "RevokeGrant" and arn is not None:
            with self._lock:
                self._grants.pop((arn, call.params["GrantId"]), None)
        if call.doc is not None:
            result = self._json_answer(op.name, answer)
            self._relay(req, (status, headers, self._wrap_for_recipient(call, result)))
            return
        self._relay(req, (status, headers, answer))

    def _decrypt(self, req: _Handler, call: _Call) -> None:
        params = call.params
        evaluated = None
        if "KeyId" in params:
            evaluated = self._resolve(call, params["KeyId"], alias_ok=True)
            self._authorize(call, "kms:Decrypt", evaluated, "EncryptionContext")
        status, headers, answer = self._forward(call)
        if status != 200:
            raise _Relay((status, headers, answer))
        result = self._json_answer("Decrypt", answer)
        used = result.get("KeyId")
        if evaluated is not None:
            if not _same_key(used, evaluated):
                raise _Refusal("AccessDeniedException",
                               f"dev KMS: Decrypt used key {used!r}, not the evaluated "
                               f"{evaluated}; the answer was dropped")
        else:
            if not isinstance(used, str):
                raise _Refusal("KMSInternalException", "dev KMS: upstream Decrypt has no KeyId",
                               status=500)
            arn = used if used.startswith("arn:") else self._resolve(call, used, alias_ok=False)
            self._authorize(call, "kms:Decrypt", arn, "EncryptionContext")
        if call.dry_run:
            raise self._dry_run()
        if call.doc is not None:
            self._relay(req, (status, headers, self._wrap_for_recipient(call, result)))
            return
        self._relay(req, (status, headers, answer))

    def _reencrypt(self, req: _Handler, call: _Call) -> None:
        params = call.params
        source = None
        if "SourceKeyId" in params:
            source = self._resolve(call, params["SourceKeyId"], alias_ok=True)
            self._authorize(call, "kms:ReEncryptFrom", source, None)
        dest = self._resolve(call, params["DestinationKeyId"], alias_ok=True)
        self._authorize(call, "kms:ReEncryptTo", dest, None)
        status, headers, answer = self._forward(call)
        if status != 200:
            raise _Relay((status, headers, answer))
        result = self._json_answer("ReEncrypt", answer)
        used_source, used_dest = result.get("SourceKeyId"), result.get("KeyId")
        if not _same_key(used_dest, dest) or (source is not None
                                              and not _same_key(used_source, source)):
            raise _Refusal("AccessDeniedException",
                           "dev KMS: ReEncrypt used other keys than the evaluated ones; the "
                           "answer was dropped")
        if source is None:
            if not isinstance(used_source, str):
                raise _Refusal("KMSInternalException",
                               "dev KMS: upstream ReEncrypt has no SourceKeyId", status=500)
            arn = (used_source if used_source.startswith("arn:")
                   else self._resolve(call, used_source, alias_ok=False))
            self._authorize(call, "kms:ReEncryptFrom", arn, None)
        if call.dry_run:
            raise self._dry_run()
        self._relay(req, (status, headers, answer))

    def _alias(self, req: _Handler, call: _Call) -> None:
        op, params = call.op, call.params
        alias = params["AliasName"]
        if not alias.startswith("alias/") or alias.startswith("alias/aws/"):
            raise _Refusal("ValidationException" if not alias.startswith("alias/aws/")
                           else "NotAuthorizedException",
                           f"dev KMS: {alias!r} is not an alias name this caller may use")
        if op.kind in ("update-alias", "delete-alias"):
            current = self._resolve(call, alias, alias_ok=True)
            self._authorize(call, op.action, current, None)
        if op.kind in ("create-alias", "update-alias"):
            target = self._resolve(call, params["TargetKeyId"], alias_ok=False)
            self._authorize(call, op.action, target, None)
        self._finish_simple(req, call, None)

    def _retire_grant(self, req: _Handler, call: _Call) -> None:
        params = call.params
        with self._lock:
            if "GrantToken" in params:
                grant = next((g for g in self._grants.values()
                              if g.token == params["GrantToken"]), None)
            else:
                grant = None
        if grant is None and "GrantToken" not in params:
            if "KeyId" not in params or "GrantId" not in params:
                raise _Refusal("ValidationException",
                               "RetireGrant needs GrantToken, or KeyId and GrantId")
            arn = self._resolve(call, params["KeyId"], alias_ok=False)
            with self._lock:
                grant = self._grants.get((arn, params["GrantId"]))
        if grant is None:
            raise _Refusal("AccessDeniedException",
                           "dev KMS: not a grant this dev KMS recorded; only grants created "
                           "through it can be retired through it")
        p = call.principal
        if not (grant.names(grant.retiring, p)
                or (grant.names(grant.grantee, p) and "RetireGrant" in grant.operations)):
            raise _Refusal("AccessDeniedException",
                           f"User: {p.arn} is not authorized to perform: kms:RetireGrant on "
                           f"grant {grant.grant_id}: not its retiring principal, nor a "
                           "grantee with RetireGrant")
        if call.dry_run:
            raise self._dry_run()
        status, headers, answer = self._forward(call)
        if status == 200:
            with self._lock:
                self._grants.pop((grant.key_arn, grant.grant_id), None)
        self._relay(req, (status, headers, answer))

    # -- authorization --

    def _authorize(self, call: _Call, action: str, arn: str,
                   ec_param: str | None) -> _Grant | None:
        """Allow ``action`` on key ``arn`` or raise; return the grant that allowed it, if a
        grant (not the key policy) did."""
        policy = self._key_policy(call, arn)
        context = self._context(call, ec_param)
        decision = evaluate_key_policy(policy, action, context, principal=call.principal,
                                       resource=arn)
        if decision.allowed:
            return None
        if not decision.explicit_deny:
            grant = self._grant_for(call, action, arn, ec_param)
            if grant is not None:
                return grant
        raise _Refusal("AccessDeniedException",
                       f"User: {call.principal.arn} is not authorized to perform: {action} "
                       f"on resource: {arn}: {decision.reason}")

    def _context(self, call: _Call, ec_param: str | None) -> RequestContext:
        p, op, params = call.principal, call.op, call.params
        values: dict[str, Any] = {
            "aws:principalarn": (p.arn,), "aws:principalaccount": (p.account,),
            "kms:calleraccount": (p.account,), "kms:viaservice": None,
            "kms:grantoperations": None, "kms:granteeprincipal": None,
            "kms:retiringprincipal": None, "kms:grantconstrainttype": None,
            "kms:grantisforawsresource": None,
        }
        values.update({k: (v,) for k, v in attestation_context(call.doc).items()})
        ec_known = True
        if op.name == "CreateGrant":
            # Which encryption context KMS exposes for a grant's constraints: not modelled.
            ec_known = False
            values["kms:encryptioncontextkeys"] = UNKNOWN
            values["kms:grantoperations"] = tuple(params.get("Operations", ())) or None
            for key, name in (("kms:granteeprincipal", "GranteePrincipal"),
                              ("kms:retiringprincipal", "RetiringPrincipal")):
                values[key] = (params[name],) if name in params else None
            constraints = params.get("Constraints") or {}
            types = [t for t in ("EncryptionContextEquals", "EncryptionContextSubset")
                     if t in constraints]
            values["kms:grantconstrainttype"] = tuple(types) if len(types) == 1 else (
                None if not types else UNKNOWN)
        elif op.name == "ReEncrypt":
            ec_known = False          # source or destination context: not modelled
            values["kms:encryptioncontextkeys"] = UNKNOWN
        elif ec_param is not None:
            values.update(encryption_context_values(params.get(ec_param)))
        else:
            values["kms:encryptioncontextkeys"] = None
        if op.name in ("CreateGrant", "ListGrants", "RevokeGrant"):
            # False for a direct call, or absent? Both, so an entry on it must agree on both.
            values["kms:grantisforawsresource"] = Uncertain((("false",), None))
        return RequestContext(values, ec_known=ec_known)

    def _grant_for(self, call: _Call, action: str, arn: str,
                   ec_param: str | None) -> _Grant | None:
        grant_op = action.split(":", 1)[1]
        if grant_op not in GRANT_OPERATIONS:
            return None
        ec = call.params.get(ec_param) if ec_param else None
        with self._lock:
            grants = [g for g in self._grants.values() if g.key_arn == arn]
        for g in grants:
            if grant_op not in g.operations or not g.names(g.grantee, call.principal):
                continue
            if g.constraints:
                if grant_op in ("ReEncryptFrom", "ReEncryptTo"):
                    continue                      # not modelled: fail closed
                if grant_op in _EC_GRANT_OPERATIONS and not self._constraints_met(
                        g.constraints, ec or {}):
                    continue
            return g
        return None

    @staticmethod
    def _constraints_met(constraints: Mapping[str, Mapping[str, str]],
                         ec: Mapping[str, str]) -> bool:
        # In a grant constraint the context key is case-insensitive, the value is not.
        request = _lower_keys(ec)
        if request is None:
            return False
        if "EncryptionContextEquals" in constraints:
            wanted = _lower_keys(constraints["EncryptionContextEquals"])
            if wanted is None or wanted != request:
                return False
        if "EncryptionContextSubset" in constraints:
            wanted = _lower_keys(constraints["EncryptionContextSubset"])
            if wanted is None or any(request.get(k) != v for k, v in wanted.items()):
                return False
        return True

    def _check_create_grant(self, call: _Call, arn: str, parent: _Grant | None) -> None:
        params = call.params
        ops = params.get("Operations") or []
        bad = [o for o in ops if o not in GRANT_OPERATIONS]
        if not ops or bad:
            raise _Refusal("ValidationException", f"invalid grant operations {bad or ops!r}")
        if "GranteePrincipal" not in params and "GranteeServicePrincipal" not in params:
            raise _Refusal("ValidationException", "a grant needs a GranteePrincipal")
        if parent is not None:
            # Allowed by the caller's own grant: only a subset of it, same constraints.
            if not set(ops) <= parent.operations or \
                    (parent.constraints or None) != (params.get("Constraints") or None):
                raise _Refusal("AccessDeniedException",
                               f"User: {call.principal.arn} may create grants on {arn} only "
                               "for operations and constraints of its own grant")

    def _record_grant(self, call: _Call, arn: str | None, answer: bytes) -> None:
        result = self._json_answer("CreateGrant", answer)
        grant_id, token = result.get("GrantId"), result.get("GrantToken")
        if not isinstance(grant_id, str) or not isinstance(token, str) or arn is None:
            raise _Refusal("KMSInternalException", "dev KMS: upstream CreateGrant answer",
                           status=500)
        params = call.params
        grant = _Grant(grant_id, token, arn, params.get("GranteePrincipal"),
                       params.get("RetiringPrincipal"), frozenset(params["Operations"]),
                       dict(params["Constraints"]) if params.get("Constraints") else None)
        with self._lock:
            self._grants[(arn, grant_id)] = grant

    def _check_grant_tokens(self, tokens: Any) -> None:
        if not tokens:
            return
        with self._lock:
            known = {g.token for g in self._grants.values()}
        unknown = [t for t in tokens if t not in known]
        if unknown:
            raise _Refusal("InvalidGrantTokenException",
                           "dev KMS: grant token not issued here (or retired)")

    @staticmethod
    def _check_policy_document(params: Mapping[str, Any]) -> None:
        if params.get("PolicyName", "default") != "default":
            raise _Refusal("ValidationException", "PolicyName must be 'default'")
        try:
            parse_policy(params["Policy"])
        except PolicyFormatError as e:
            raise _Refusal("MalformedPolicyDocumentException", f"dev KMS: {e}") from None

    @staticmethod
    def _dry_run() -> _Refusal:
        return _Refusal("DryRunOperationException",
                        "The request would have succeeded, but the DryRun option is set.",
                        status=412)

    # -- Recipient --

    def _verify_recipient(self, recipient: Any) -> AttestationDocument:
        if not isinstance(recipient, dict):
            raise _Refusal("ValidationException", "Recipient must be an object")
        algorithm = recipient.get("KeyEncryptionAlgorithm", "RSAES_OAEP_SHA_256")
        if algorithm != "RSAES_OAEP_SHA_256":
            raise _Refusal("ValidationException",
                           f"KeyEncryptionAlgorithm {algorithm!r} is not RSAES_OAEP_SHA_256")
        encoded = recipient.get("AttestationDocument")
        if not isinstance(encoded, str):
            raise _Refusal("ValidationException", "Recipient.AttestationDocument is required")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise _Refusal("ValidationException",
                           "Recipient.AttestationDocument is not base64") from None
        if not 1 <= len(raw) <= MAX_ATTESTATION_DOCUMENT:
            raise _Refusal("ValidationException",
                           f"Recipient.AttestationDocument must be 1..{MAX_ATTESTATION_DOCUMENT}"
                           " bytes")
        # A document is verified once (signature and chain); an enclave sends the same one with
        # each of its calls. Its age is still checked on every use below. Verifications run
        # one at a time, so an enclave's first concurrent calls wait for one verification
        # instead of each making its own (16 at once cost 0.3 s of CPU).
        digest = hashlib.sha256(raw).digest()
        with self._lock:
            doc = self._verified.get(digest)
        if doc is None:
            with self._verify_lock:
                with self._lock:
                    doc = self._verified.get(digest)
                if doc is None:
                    try:
                        doc = verify_attestation(raw, root_fingerprint=self.trusted_roots,
                                                 at="now", allow_debug=self.allow_debug)
                    except AttestationError as e:
                        raise _Refusal("AccessDeniedException",
                                       f"the attestation document was rejected: {e}") from None
                    with self._lock:
                        if len(self._verified) > 1024:
                            self._verified.clear()
                        self._verified[digest] = doc
        age = time.time() - doc.timestamp_ms / 1000
        if self.max_age is not None and age > self.max_age:
            raise _Refusal("AccessDeniedException",
                           f"the attestation document is {age:.0f} s old "
                           f"(limit {self.max_age:.0f} s)")
        if age < -_FUTURE_SKEW:
            raise _Refusal("AccessDeniedException",
                           "the attestation document's timestamp is in the future")
        if doc.public_key is None:
            raise _Refusal("ValidationException", "the attestation document has no public_key")
        self._recipient_key(doc.public_key)
        return doc

    @staticmethod
    def _recipient_key(spki: bytes) -> rsa.RSAPublicKey:
        try:
            key = serialization.load_der_public_key(spki)
        except (ValueError, TypeError):
            key = None
        if not isinstance(key, rsa.RSAPublicKey) or key.key_size not in RSA_KEY_SIZES:
            raise _Refusal("ValidationException",
                           "the attestation document's public_key must be the DER "
                           "SubjectPublicKeyInfo of an RSA 2048, 3072 or 4096 key")
        return key

    def _wrap_for_recipient(self, call: _Call, result: dict[str, Any]) -> bytes:
        assert call.doc is not None and call.doc.public_key is not None
        plaintext_b64 = result.pop("Plaintext", None)
        result.pop("KeyMaterialId", None)
        if not isinstance(plaintext_b64, str):
            raise _Refusal("KMSInternalException",
                           f"dev KMS: upstream {call.op.name} gave no Plaintext", status=500)
        plaintext = base64.b64decode(plaintext_b64)
        wrapped = make_ciphertext_for_recipient(plaintext,
                                                self._recipient_key(call.doc.public_key))
        result["CiphertextForRecipient"] = base64.b64encode(wrapped).decode("ascii")
        return json.dumps(result).encode()

    # -- moto --

    def _internal(self, call: _Call, op: str, params: Mapping[str, Any]
                  ) -> tuple[int, list[tuple[str, str]], bytes]:
        """A look-up of this layer's own at moto, with the caller's account and region."""
        headers = dict(call.headers, **{"X-Amz-Target": f"TrentService.{op}"})
        return self._request("POST", "/", headers, json.dumps(params).encode())

    def _resolve(self, call: _Call, key_ref: str, *, alias_ok: bool) -> str:
        """The ARN of the key ``key_ref`` names (moto's DescribeKey), or moto's error.

        A key ARN of the caller's own account and region names itself: it is not looked up
        (the policy look-up that follows fails with moto's ``NotFoundException`` for a key
        that does not exist, and for the cryptographic operations the key moto reports using
        must still be this one). Aliases, bare key ids and other ARNs are resolved on every
        call (an alias can move)."""
        if _is_alias(key_ref) and not alias_ok:
            raise _Refusal("NotFoundException",
                           f"dev KMS: {call.op.name} takes a key id or key ARN, not the alias "
                           f"{key_ref}")
        m = _KEY_ARN.fullmatch(key_ref)
        if m and m["account"] == call.principal.account and m["region"] == call.region:
            return key_ref  # a key ARN of the caller's own account and region
        status, headers, answer = self._internal(call, "DescribeKey", {"KeyId": key_ref})
        if status != 200:
            raise _Relay((status, headers, answer))
        try:
            arn = json.loads(answer)["KeyMetadata"]["Arn"]
        except (ValueError, KeyError, TypeError):
            arn = None
        if not isinstance(arn, str) or not arn.startswith("arn:"):
            raise _Refusal("KMSInternalException",
                           f"dev KMS: upstream DescribeKey of {key_ref} has no ARN", status=500)
        return arn

    def _key_policy(self, call: _Call, key_arn: str) -> str:
        status, headers, answer = self._internal(call, "GetKeyPolicy",
                                                 {"KeyId": key_arn, "PolicyName": "default"})
        if status == 400 and b"NotFoundException" in answer:
            raise _Relay((status, headers, answer))  # no such key: moto's own answer
        try:
            policy = json.loads(answer)["Policy"] if status == 200 else None
        except (ValueError, KeyError, TypeError):
            policy = None
        if not isinstance(policy, str):
            raise _Refusal("AccessDeniedException",
                           f"dev KMS: could not read the key policy of {key_arn} "
                           f"(upstream status {status})")
        return policy

    def _forward(self, call: _Call) -> tuple[int, list[tuple[str, str]], bytes]:
        with self._lock:
            self._forwarded[call.op.name] += 1
        return self._request("POST", "/", call.headers, call.body)

    @staticmethod
    def _json_answer(op: str, answer: bytes) -> dict[str, Any]:
        try:
            result = json.loads(answer)
        except ValueError:
            result = None
        if not isinstance(result, dict):
            raise _Refusal("KMSInternalException", f"dev KMS: upstream {op} answer is not JSON",
                           status=500)
        return result

    def _request(self, method: str, path: str, headers: Mapping[str, str],
                 body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        """One request to moto, on this handler thread's kept-alive connection (a new TCP
        connection per request made moto start a thread for each). A connection that was
        reused and turns out closed before any answer is replaced once."""
        local = self._upstream_conn
        for attempt in (0, 1):
            conn = getattr(local, "conn", None)
            reused = conn is not None
            if conn is None:
                parts = self._upstream
                cls = (http.client.HTTPSConnection if parts.scheme == "https"
                       else http.client.HTTPConnection)
                conn = cls(parts.hostname, parts.port, timeout=self.timeout)
            local.conn = None
            try:
                conn.request(method, path, body=body,
                             headers=dict(headers, **{"Content-Length": str(len(body))}))
                resp = conn.getresponse()
                answer = resp.status, resp.getheaders(), resp.read()
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                # RemoteDisconnected is a ConnectionResetError: moto closed an idle connection
                if reused and attempt == 0 and isinstance(e, (ConnectionResetError,
                                                              BrokenPipeError)):
                    continue
                raise _Refusal("KMSInternalException",
                               f"dev KMS: upstream {self.upstream} failed: {e}",
                               status=500) from None
            if resp.will_close:
                conn.close()
            else:
                local.conn = conn
            return answer
        raise AssertionError("unreachable")

    # -- HTTP plumbing --

    def _relay(self, req: _Handler, response: tuple[int, list[tuple[str, str]], bytes]) -> None:
        status, headers, body = response
        self._send(req, status, {k: v for k, v in headers if k.lower() not in _HOP_BY_HOP},
                   body)

    @staticmethod
    def _send(req: _Handler, status: int, headers: Mapping[str, str], body: bytes) -> None:
        req.send_response(status)
        for k, v in headers.items():
            if k.lower() not in ("server", "date"):
                req.send_header(k, v)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        if req.command != "HEAD":
            req.wfile.write(body)

    def _refuse(self, req: _Handler, op: str | None, refusal: _Refusal) -> None:
        if refusal.error_type not in ("KMSInternalException", "DryRunOperationException"):
            with self._lock:
                self._denied[op or "(other)"] += 1
        if refusal.close:
            req.close_connection = True
        self._error(req, refusal.status, refusal.error_type, refusal.message)

    def _error(self, req: _Handler, status: int, error_type: str, message: str) -> None:
        body = json.dumps({"__type": error_type, "message": message}).encode()
        headers = {"Content-Type": _JSON, "x-amzn-RequestId": str(uuid.uuid4())}
        if req.close_connection:
            headers["Connection"] = "close"
        self._send(req, status, headers, body)


# --- command line ----------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sops_enclave.devtools.kms_attested --upstream URL --root FP ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m sops_enclave.devtools.kms_attested",
        description="DEV ONLY: a KMS with key policies and Nitro attestation in front of "
                    "moto's KMS server.")
    parser.add_argument("--upstream", required=True, help="moto server URL")
    parser.add_argument("--root", action="append", required=True, metavar="FP",
                        help="SHA-256 fingerprint of a trusted attestation root (repeatable)")
    parser.add_argument("--principal", action="append", metavar="ACCESS_KEY_ID:SECRET:ARN",
                        help="a caller it knows (repeatable; replaces the default table of "
                             "dev, kms-admin and testing); the secret may not contain ':'")
    parser.add_argument("--allow-debug", action="store_true",
                        help="accept debug-mode attestation documents (PCR0 all zeros)")
    parser.add_argument("--max-age", type=float, default=300.0,
                        help="seconds an attestation document stays usable (default 300)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    try:
        principals = (dict(parse_principal_spec(s) for s in args.principal)
                      if args.principal else None)
        kms = AttestedKMS(args.upstream, args.root, allow_debug=args.allow_debug,
                          max_age=args.max_age, verbose=args.verbose, principals=principals)
    except ValueError as e:
        parser.error(str(e))
    url = kms.start(args.host, args.port)
    print(url, flush=True)
    print(f"dev KMS with key policies and attestation (NOT AWS) on {url}, upstream "
          f"{args.upstream}, trusting {len(kms.trusted_roots)} dev root(s)"
          f"{', debug documents allowed' if kms.allow_debug else ''}; callers: "
          + ", ".join(f"{k} = {a}" for k, a in kms.principals.items()),
          file=sys.stderr, flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        kms.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
