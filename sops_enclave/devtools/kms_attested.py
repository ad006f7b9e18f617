"""DEV STAND-IN, NOT AWS: a local KMS that understands ``Recipient`` and attestation conditions.

No public KMS emulator supports the Nitro ``Recipient`` parameter or evaluates
``kms:RecipientAttestation:*`` key-policy conditions, so for local runs and tests this
module puts a small HTTP server (127.0.0.1) in front of moto's KMS server (DESIGN.md
section 8). Production code never imports it; it trusts only the dev roots it is given
and exists so that the enclave's KMS path can run end to end without Nitro hardware::

    kms = AttestedKMS("http://127.0.0.1:5000", trusted_roots=[SoftNSM().root_fingerprint])
    url = kms.start()            # point boto3 at it: endpoint_url=url / AWS_ENDPOINT_URL_KMS
    ...
    kms.stats                    # {"Decrypt": 2, "GenerateDataKey": 1, ...}
    kms.stop()

or ``python -m sops_enclave.devtools.kms_attested --upstream URL --root FP [--root FP]``.

What it does. It speaks the KMS JSON protocol (``X-Amz-Target: TrentService.<Op>``) and
forwards every request to moto unchanged, except:

* ``Decrypt`` and ``GenerateDataKey``. The key policy is evaluated for these (moto does
  not evaluate conditions), with or without a ``Recipient``:

  1. With ``Recipient`` (``KeyEncryptionAlgorithm`` absent or ``RSAES_OAEP_SHA_256``,
     ``AttestationDocument`` 1..262144 bytes): the document is verified with
     :func:`~sops_enclave.receipt.attestation.verify_attestation` against the configured
     root fingerprints, its certificates valid now, debug documents (PCR0 all zero)
     refused unless ``allow_debug``, and its ``timestamp`` at most ``max_age`` seconds
     old (and not more than a minute in the future). Its ``public_key`` must be an RSA
     2048/3072/4096 SubjectPublicKeyInfo. A bad document is ``AccessDeniedException``.
  2. The request, without ``Recipient``, is forwarded to moto. moto's answer names the
     key actually used (``KeyId``, an ARN even when the request used an alias or no
     KeyId); its policy is fetched from moto (``GetKeyPolicy``, policy name ``default``)
     and evaluated. A denial returns ``AccessDeniedException`` and the data key moto
     returned is dropped.
  3. With ``Recipient``, ``Plaintext`` (and ``KeyMaterialId``) are removed from the
     answer and ``CiphertextForRecipient`` is added: the plaintext wrapped for the
     document's public key by :func:`sops_enclave.cms.make_ciphertext_for_recipient`.

* Any other operation carrying ``Recipient`` (``GenerateRandom``,
  ``GenerateDataKeyPair``, ``DeriveSharedSecret``) is refused with
  ``ValidationException``: this stand-in does not implement them, and forwarding would
  return the plaintext.

Key-policy subset (see :func:`evaluate_key_policy`). Statements are matched on
``Effect`` and ``Action``/``NotAction`` (``*`` and ``?`` wildcards, case-insensitive);
``Principal``, ``NotPrincipal``, ``Resource`` and ``NotResource`` are ignored: the caller
counts as every principal the policy names. An explicit Deny wins, then any Allow,
otherwise the request is denied. Conditions are understood only on
``kms:RecipientAttestation:ImageSha384`` (= PCR0) and ``kms:RecipientAttestation:PCR0``
.. ``PCR31`` (lower-case hex of the register; absent without an attested ``Recipient``),
with the operators ``StringEquals``, ``StringEqualsIgnoreCase``, ``StringNotEquals``,
``StringNotEqualsIgnoreCase`` (each also with ``IfExists``) and ``Null``. Several values
for one key are OR-ed; several keys and several operators are AND-ed. Anything else (other
operators, ``ForAnyValue:``/``ForAllValues:``, other condition keys such as
``kms:EncryptionContext:*`` or ``aws:*``, non-string values) fails closed: the condition
counts as *not met* in an Allow statement and as *met* in a Deny statement, so it can
only ever deny. Grants and IAM identity policies are not modelled.

Counters of the requests received per operation (all outcomes) are in :attr:`stats`,
denials in :attr:`denied`; both are also served as JSON at ``GET /_sops_enclave/stats``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import fnmatch
import hashlib
import http.client
import json
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ..cms import RSA_KEY_SIZES, make_ciphertext_for_recipient
from ..receipt.attestation import AttestationDocument, verify_attestation
from ..receipt.errors import AttestationError
from ..receipt.nitro_root import normalize_fingerprint

__all__ = ["AttestedKMS", "Decision", "evaluate_key_policy", "attestation_context",
           "STATS_PATH", "main"]

STATS_PATH = "/_sops_enclave/stats"
#: Operations whose key policy this layer evaluates.
GATED_OPERATIONS = ("Decrypt", "GenerateDataKey")
#: KMS's limit on ``Recipient.AttestationDocument``.
MAX_ATTESTATION_DOCUMENT = 262144
MAX_REQUEST_BODY = 1024 * 1024
_FUTURE_SKEW = 60.0
_ATTESTATION_PREFIX = "kms:recipientattestation:"
_KNOWN_KEYS = frozenset([_ATTESTATION_PREFIX + "imagesha384"] +
                        [f"{_ATTESTATION_PREFIX}pcr{i}" for i in range(32)])
_STRING_OPERATORS = {"StringEquals", "StringEqualsIgnoreCase", "StringNotEquals",
                     "StringNotEqualsIgnoreCase"}
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
               "trailer", "upgrade", "content-length"}
_AUTH_HEADERS = ("authorization", "x-amz-date", "x-amz-security-token", "user-agent")
_JSON = "application/x-amz-json-1.1"


# --- key policy ------------------------------------------------------------------------

@dataclass(frozen=True)
class Decision:
    """Outcome of :func:`evaluate_key_policy`; ``reason`` is for the error message."""

    allowed: bool
    reason: str


def attestation_context(doc: AttestationDocument | None) -> dict[str, str]:
    """Condition-key values (lower-case names) a verified document provides.

    ``kms:recipientattestation:imagesha384`` is PCR0; ``...:pcr<n>`` each PCR in the
    document; all lower-case hex. Empty without a document.
    """
    if doc is None:
        return {}
    ctx = {f"{_ATTESTATION_PREFIX}pcr{i}": v.hex() for i, v in doc.pcrs.items()}
    if 0 in doc.pcrs:
        ctx[_ATTESTATION_PREFIX + "imagesha384"] = doc.pcrs[0].hex()
    return ctx


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _action_matches(patterns: Any, action: str) -> bool:
    for p in _as_list(patterns):
        if isinstance(p, str) and fnmatch.fnmatchcase(action.lower(), p.lower()):
            return True
    return False


def _condition(operator: str, key: str, values: Any, context: Mapping[str, str]) -> bool | None:
    """One ``operator: {key: values}`` entry: True/False, or None when not understood."""
    name = key.lower() if isinstance(key, str) else ""
    if name not in _KNOWN_KEYS:
        return None
    values = _as_list(values)
    if not values:
        return None
    present = name in context
    if operator == "Null":
        wanted = []
        for v in values:
            text = str(v).lower() if isinstance(v, (str, bool)) else ""
            if text not in ("true", "false"):
                return None
            wanted.append(text == "true")
        return any(w == (not present) for w in wanted)
    if_exists = operator.endswith("IfExists")
    base = operator[:-len("IfExists")] if if_exists else operator
    if base not in _STRING_OPERATORS or not all(isinstance(v, str) for v in values):
        return None
    if not present:
        # IAM: a missing key fails the positive operators and satisfies the negated ones;
        # ...IfExists is satisfied by a missing key.
        return if_exists or base.startswith("StringNot")
    actual = context[name]
    if base.endswith("IgnoreCase"):
        actual, values = actual.lower(), [v.lower() for v in values]
    equal = actual in values
    return not equal if base.startswith("StringNot") else equal


def _conditions_hold(conditions: Any, context: Mapping[str, str], effect: str,
                     notes: list[str]) -> bool:
    if conditions is None:
        return True
    if not isinstance(conditions, dict):
        notes.append("Condition is not an object")
        return effect == "Deny"
    for operator, block in conditions.items():
        if not isinstance(block, dict):
            notes.append(f"condition {operator!r} is not an object (fails closed)")
            if effect != "Deny":
                return False
            continue
        for key, values in block.items():
            result = _condition(str(operator), key, values, context)
            if result is None:
                notes.append(f"unsupported condition {operator} on {key} "
                             f"(fails closed)")
                result = effect == "Deny"
            if not result:
                return False
    return True


def evaluate_key_policy(policy: Mapping[str, Any] | str, action: str,
                        context: Mapping[str, str]) -> Decision:
    """Evaluate a key policy for ``action`` (``"kms:Decrypt"``) with condition ``context``.

    ``context`` maps lower-case condition keys to values (:func:`attestation_context`).
    The supported subset is in the module docstring; whatever is outside it can only
    make the answer "deny".
    """
    if isinstance(policy, str):
        try:
            policy = json.loads(policy)
        except ValueError:
            return Decision(False, "the key policy is not valid JSON")
    if not isinstance(policy, Mapping):
        return Decision(False, "the key policy is not a JSON object")
    statements = policy.get("Statement", [])
    statements = [statements] if isinstance(statements, dict) else statements
    if not isinstance(statements, list):
        return Decision(False, "the key policy's Statement is not a list")
    allowed_by: str | None = None
    notes: list[str] = []
    for index, st in enumerate(statements):
        if not isinstance(st, dict) or st.get("Effect") not in ("Allow", "Deny"):
            return Decision(False, f"key policy statement {index} is not understood")
        effect = st["Effect"]
        label = f"statement {st.get('Sid', index)!r}"
        if "Action" in st:
            applies = _action_matches(st["Action"], action)
        elif "NotAction" in st:
            applies = not _action_matches(st["NotAction"], action)
        else:
            return Decision(False, f"key policy {label} has neither Action nor NotAction")
        if not applies or not _conditions_hold(st.get("Condition"), context, effect, notes):
            continue
        if effect == "Deny":
            return Decision(False, f"explicitly denied by key policy {label}")
        allowed_by = allowed_by or label
    if allowed_by is not None:
        return Decision(True, f"allowed by key policy {allowed_by}")
    extra = f" ({'; '.join(notes)})" if notes else ""
    return Decision(False, f"no key policy statement allows {action} for this request{extra}")


# --- the server ------------------------------------------------------------------------

class _Refusal(Exception):
    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    kms: AttestedKMS


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        if self.server.kms.verbose:
            super().log_message(format, *args)

    def _handle(self) -> None:
        self.server.kms._handle(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle


class AttestedKMS:
    """The dev KMS with attestation (see the module docstring).

    ``upstream``: moto's server URL. ``trusted_roots``: SHA-256 fingerprints (hex) of the
    roots attestation documents must chain to, e.g. ``SoftNSM().root_fingerprint``.
    ``allow_debug``: accept debug-mode documents. ``max_age``: seconds an attestation
    document stays usable after its timestamp (``None``: no limit).
    """

    def __init__(self, upstream: str, trusted_roots: Iterable[str], allow_debug: bool = False,
                 *, max_age: float | None = 300.0, timeout: float = 30.0,
                 verbose: bool = False) -> None:
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
        self._lock = threading.Lock()
        self._verified: dict[bytes, AttestationDocument] = {}
        self._requests: Counter[str] = Counter()
        self._denied: Counter[str] = Counter()
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

    # -- counters --

    @property
    def stats(self) -> dict[str, int]:
        """Requests received per KMS operation (all outcomes), a snapshot."""
        with self._lock:
            return dict(self._requests)

    @property
    def denied(self) -> dict[str, int]:
        """Requests this layer refused (AccessDenied/Validation) per operation, a snapshot."""
        with self._lock:
            return dict(self._denied)

    def reset_stats(self) -> None:
        """Zero both counters."""
        with self._lock:
            self._requests.clear()
            self._denied.clear()

    # -- request handling --

    def _handle(self, req: _Handler) -> None:
        op: str | None = None
        try:
            if req.command == "GET" and urlsplit(req.path).path == STATS_PATH:
                with self._lock:
                    body = {"requests": dict(self._requests), "denied": dict(self._denied)}
                self._send(req, 200, {"Content-Type": "application/json"},
                           json.dumps(body, sort_keys=True).encode())
                return
            if req.headers.get("Transfer-Encoding"):
                raise _Refusal("ValidationException", "chunked request bodies are not supported")
            length = int(req.headers.get("Content-Length") or 0)
            if not 0 <= length <= MAX_REQUEST_BODY:
                raise _Refusal("ValidationException", "request body too large")
            body = req.rfile.read(length) if length else b""
            target = req.headers.get("X-Amz-Target", "")
            op = target.split(".", 1)[1] if target.startswith("TrentService.") else None
            with self._lock:
                self._requests[op or "(other)"] += 1
            if op is None:
                self._relay(req, self._forward(req, body))
                return
            self._kms_operation(req, op, body)
        except _Refusal as r:
            self._refuse(req, op, r)
        except OSError:
            raise
        except Exception as e:  # a bug in this layer must never look like success
            self._error(req, 500, "KMSInternalException",
                        f"dev KMS internal error: {type(e).__name__}")

    def _kms_operation(self, req: _Handler, op: str, body: bytes) -> None:
        try:
            params = json.loads(body) if body else {}
        except ValueError:
            params = None
        if not isinstance(params, dict) or "Recipient" not in params:
            if op in GATED_OPERATIONS and isinstance(params, dict):
                self._gated(req, op, body, params, None)
            else:
                self._relay(req, self._forward(req, body))
            return
        if op not in GATED_OPERATIONS:
            raise _Refusal("ValidationException",
                           f"dev KMS: Recipient is not implemented for {op} "
                           f"(only {', '.join(GATED_OPERATIONS)})")
        doc = self._verify_recipient(params.pop("Recipient"))
        self._gated(req, op, json.dumps(params).encode(), params, doc)

    def _verify_recipient(self, recipient: Any) -> AttestationDocument:
        if not isinstance(recipient, dict):
            raise _Refusal("ValidationException", "Recipient must be an object")
        unknown = set(recipient) - {"KeyEncryptionAlgorithm", "AttestationDocument"}
        if unknown:
            raise _Refusal("ValidationException", f"unknown Recipient fields: {sorted(unknown)}")
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
        # each of its calls. Its age is still checked on every use below.
        digest = hashlib.sha256(raw).digest()
        doc = self._verified.get(digest)
        if doc is None:
            try:
                doc = verify_attestation(raw, root_fingerprint=self.trusted_roots, at="now",
                                         allow_debug=self.allow_debug)
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

    def _gated(self, req: _Handler, op: str, body: bytes, params: dict[str, Any],
               doc: AttestationDocument | None) -> None:
        status, headers, answer = self._forward(req, body)
        if status != 200:
            self._relay(req, (status, headers, answer))
            return
        try:
            result = json.loads(answer)
            key_id = result["KeyId"]
        except (ValueError, KeyError, TypeError):
            raise _Refusal("KMSInternalException",
                           f"dev KMS: upstream {op} answer has no KeyId") from None
        policy = self._key_policy(req, key_id)
        decision = evaluate_key_policy(policy, f"kms:{op}", attestation_context(doc))
        if not decision.allowed:
            raise _Refusal("AccessDeniedException",
                           f"User is not authorized to perform kms:{op} on {key_id}: "
                           f"{decision.reason}")
        if doc is None:
            self._relay(req, (status, headers, answer))
            return
        plaintext_b64 = result.pop("Plaintext", None)
        result.pop("KeyMaterialId", None)
        if not isinstance(plaintext_b64, str):
            raise _Refusal("KMSInternalException", f"dev KMS: upstream {op} gave no Plaintext")
        plaintext = base64.b64decode(plaintext_b64)
        wrapped = make_ciphertext_for_recipient(plaintext, self._recipient_key(doc.public_key))
        result["CiphertextForRecipient"] = base64.b64encode(wrapped).decode("ascii")
        self._relay(req, (status, headers, json.dumps(result).encode()))

    def _key_policy(self, req: _Handler, key_id: str) -> str:
        headers = {"Content-Type": _JSON, "X-Amz-Target": "TrentService.GetKeyPolicy"}
        for name in _AUTH_HEADERS:   # moto picks account and region from these
            if req.headers.get(name):
                headers[name] = req.headers[name]
        body = json.dumps({"KeyId": key_id, "PolicyName": "default"}).encode()
        status, _, answer = self._request("POST", "/", headers, body)
        try:
            policy = json.loads(answer)["Policy"] if status == 200 else None
        except (ValueError, KeyError, TypeError):
            policy = None
        if not isinstance(policy, str):
            raise _Refusal("AccessDeniedException",
                           f"dev KMS: could not read the key policy of {key_id} "
                           f"(upstream status {status})")
        return policy

    # -- HTTP plumbing --

    def _request(self, method: str, path: str, headers: Mapping[str, str],
                 body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        parts = self._upstream
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = cls(parts.hostname, parts.port, timeout=self.timeout)
        try:
            conn.request(method, path, body=body,
                         headers=dict(headers, **{"Content-Length": str(len(body))}))
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise _Refusal("KMSInternalException",
                           f"dev KMS: upstream {self.upstream} failed: {e}") from None
        finally:
            conn.close()

    def _forward(self, req: _Handler, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = {k: v for k, v in req.headers.items() if k.lower() not in _HOP_BY_HOP}
        return self._request(req.command, req.path, headers, body)

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
        if refusal.error_type in ("AccessDeniedException", "ValidationException"):
            with self._lock:
                self._denied[op or "(other)"] += 1
        status = 500 if refusal.error_type == "KMSInternalException" else 400
        self._error(req, status, refusal.error_type, refusal.message)

    def _error(self, req: _Handler, status: int, error_type: str, message: str) -> None:
        body = json.dumps({"__type": error_type, "message": message}).encode()
        self._send(req, status, {"Content-Type": _JSON, "x-amzn-RequestId": str(uuid.uuid4())},
                   body)


# --- command line ----------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sops_enclave.devtools.kms_attested --upstream URL --root FP ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m sops_enclave.devtools.kms_attested",
        description="DEV ONLY: a KMS with Nitro attestation in front of moto's KMS server.")
    parser.add_argument("--upstream", required=True, help="moto server URL")
    parser.add_argument("--root", action="append", required=True, metavar="FP",
                        help="SHA-256 fingerprint of a trusted attestation root (repeatable)")
    parser.add_argument("--allow-debug", action="store_true",
                        help="accept debug-mode attestation documents (PCR0 all zeros)")
    parser.add_argument("--max-age", type=float, default=300.0,
                        help="seconds an attestation document stays usable (default 300)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    try:
        kms = AttestedKMS(args.upstream, args.root, allow_debug=args.allow_debug,
                          max_age=args.max_age, verbose=args.verbose)
    except ValueError as e:
        parser.error(str(e))
    url = kms.start(args.host, args.port)
    print(url, flush=True)
    print(f"dev KMS with attestation (NOT AWS) on {url}, upstream {args.upstream}, "
          f"trusting {len(kms.trusted_roots)} dev root(s)"
          f"{', debug documents allowed' if kms.allow_debug else ''}",
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
