"""A local stand-in for HuaweiCloud KMS (``encrypt-data``/``decrypt-data``) and the IAM project
lookup, over HTTPS.

HuaweiCloud has no local KMS, so tests point the SDK's region override
(``HUAWEICLOUD_SDK_REGION_KMS_<REGION>``) and ``HUAWEICLOUD_SDK_IAM_ENDPOINT`` here. What it
checks, as the service does:

* every request is signed with the documented AK/SK scheme (``SDK-HMAC-SHA256``: canonical
  request of method, URI with a trailing ``/``, sorted query, the signed headers, the body's
  SHA-256; string to sign ``SDK-HMAC-SHA256\\n<X-Sdk-Date>\\n<hash>``; HMAC-SHA256 with the SK).
  A missing or wrong signature, an unknown AK, an unsigned ``x-sdk-date`` header, or a date
  more than 15 minutes off gets 401 (the Go SDK signs ``user-agent``, ``x-project-id`` and
  ``x-sdk-date``, the Python SDK ``host`` too: both are accepted, as by the service);
* the project in the path must be the AK's project (403 otherwise); a key that does not exist
  in it, or that the AK may not use, gets 404/403; ``encryption_algorithm`` must be
  ``SYMMETRIC_DEFAULT``; ``plain_text`` is 1..4096 bytes;
* keys are AES-256-GCM; ``cipher_text`` carries the key ID and is authenticated, so a changed
  byte or another key's ``key_id`` fails with 400.

Errors are ``{"error": {"error_code": "KMS.xxxx", "error_msg": "..."}}`` as KMS sends them.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sops_enclave.devtools.local_ca import TLSHTTPServer

__all__ = ["HuaweiKMSStandIn", "sign_ok"]

_AUTH_RE = re.compile(r"^SDK-HMAC-SHA256 Access=([^,\s]+), SignedHeaders=([^,\s]+), "
                      r"Signature=([0-9a-f]{64})$")
_PATH_RE = re.compile(r"^/v1\.0/([^/]+)/kms/(encrypt-data|decrypt-data)$")
_MAGIC = b"SEKH"
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass
class _Account:
    sk: str
    project_id: str
    region: str


@dataclass
class _Key:
    material: bytes
    project_id: str
    users: set[str]
    enabled: bool = True


@dataclass
class _State:
    accounts: dict[str, _Account] = field(default_factory=dict)
    keys: dict[str, _Key] = field(default_factory=dict)
    calls: list[tuple[str, str, int]] = field(default_factory=list)  # (op, ak, status)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _canonical_uri(path: str) -> str:
    p = "/".join(quote(unquote(seg), safe="~") for seg in path.split("/"))
    return p if p.endswith("/") else p + "/"


def _canonical_query(query: str) -> str:
    pairs = sorted(parse_qsl(query, keep_blank_values=True))
    return "&".join(f"{quote(k, safe='~')}={quote(v, safe='~')}" for k, v in pairs)


def sign_ok(method: str, path: str, query: str, headers: dict[str, str], body: bytes,
            sk: str, signed: list[str], signature: str) -> bool:
    """Does ``signature`` sign this request with ``sk`` (the ``SDK-HMAC-SHA256`` scheme)?"""
    low = {k.lower(): v.strip() for k, v in headers.items()}
    if any(h not in low for h in signed):
        return False
    canon_headers = "".join(f"{h}:{low[h]}\n" for h in signed)
    payload = low.get("x-sdk-content-sha256") or (hashlib.sha256(body).hexdigest() if body
                                                   else _EMPTY_SHA256)
    if payload == "UNSIGNED-PAYLOAD":
        return False  # a JSON body is always signed
    canonical = "\n".join([method.upper(), _canonical_uri(path), _canonical_query(query),
                           canon_headers, ";".join(signed), payload])
    to_sign = "SDK-HMAC-SHA256\n{}\n{}".format(low.get("x-sdk-date", ""),
                                              hashlib.sha256(canonical.encode()).hexdigest())
    want = hmac.new(sk.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, signature)


class _Refuse(Exception):
    def __init__(self, status: int, code: str, msg: str):
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg


class HuaweiKMSStandIn:
    """Start with :meth:`start`; ``endpoint`` is ``https://127.0.0.1:PORT`` (both for KMS and
    IAM). ``context`` is a TLS server context (see
    :class:`~sops_enclave.devtools.local_ca.LocalCA`)."""

    def __init__(self, context):
        self._ctx = context
        self.state = _State()
        self._server: TLSHTTPServer | None = None
        self.endpoint = ""

    def add_account(self, region: str) -> tuple[str, str, str]:
        """A new AK/SK with its project in ``region``: ``(ak, sk, project_id)``."""
        ak = "HPUA" + secrets.token_hex(8).upper()
        sk = secrets.token_urlsafe(30)
        project = uuid.uuid4().hex
        with self.state.lock:
            self.state.accounts[ak] = _Account(sk, project, region)
        return ak, sk, project

    def create_key(self, ak: str, users: list[str] | None = None) -> str:
        """A symmetric key in ``ak``'s project, usable by ``users`` (default: ``ak``)."""
        kid = str(uuid.uuid4())
        with self.state.lock:
            acct = self.state.accounts[ak]
            self.state.keys[kid] = _Key(os.urandom(32), acct.project_id, set(users or [ak]))
        return kid

    def disable_key(self, kid: str) -> None:
        with self.state.lock:
            self.state.keys[kid].enabled = False

    @property
    def calls(self) -> list[tuple[str, str, int]]:
        with self.state.lock:
            return list(self.state.calls)

    def start(self) -> "HuaweiKMSStandIn":
        self._server = TLSHTTPServer(("127.0.0.1", 0), _handler(self), self._ctx)
        self._server.start("huawei-kms-standin")
        self.endpoint = f"https://127.0.0.1:{self._server.server_address[1]}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> "HuaweiKMSStandIn":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ requests
    def authenticate(self, method: str, target: str, headers: dict[str, str],
                     body: bytes) -> str:
        """The caller's AK, or :class:`_Refuse` (401)."""
        low = {k.lower(): v for k, v in headers.items()}
        m = _AUTH_RE.match(low.get("authorization", ""))
        if not m:
            raise _Refuse(401, "APIGW.0301", "Incorrect IAM authentication information: "
                          "verify aksk signature fail")
        ak, signed_s, sig = m.groups()
        signed = signed_s.split(";")
        with self.state.lock:
            acct = self.state.accounts.get(ak)
        if acct is None or "x-sdk-date" not in signed or signed != sorted(signed):
            raise _Refuse(401, "APIGW.0301", "Incorrect IAM authentication information: "
                          "verify aksk signature fail")
        try:
            when = _dt.datetime.strptime(low.get("x-sdk-date", ""), "%Y%m%dT%H%M%SZ")
        except ValueError:
            raise _Refuse(401, "APIGW.0301", "Incorrect IAM authentication information: "
                          "x-sdk-date is invalid") from None
        now = _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)
        if abs((now - when).total_seconds()) > 15 * 60:
            raise _Refuse(401, "APIGW.0301", "Incorrect IAM authentication information: "
                          "request expired")
        parts = urlsplit(target)
        if not sign_ok(method, parts.path, parts.query, headers, body, acct.sk, signed, sig):
            raise _Refuse(401, "APIGW.0301", "Incorrect IAM authentication information: "
                          "verify aksk signature fail")
        return ak

    def handle(self, method: str, target: str, headers: dict[str, str],
               body: bytes) -> tuple[int, dict]:
        ak = "?"
        op = urlsplit(target).path
        try:
            ak = self.authenticate(method, target, headers, body)
            with self.state.lock:
                acct = self.state.accounts[ak]
            parts = urlsplit(target)
            if method == "GET" and parts.path == "/v3/projects":
                name = dict(parse_qsl(parts.query)).get("name", "")
                projects = [{"id": acct.project_id, "name": acct.region}] \
                    if name in ("", acct.region) else []
                return 200, {"projects": projects}
            m = _PATH_RE.match(parts.path)
            if method != "POST" or not m:
                raise _Refuse(404, "APIGW.0101", "The API does not exist or has not been "
                              "published in the environment")
            project, op = m.groups()
            sent = {k.lower(): v for k, v in headers.items()}.get("x-project-id", project)
            if project != acct.project_id or sent != project:
                raise _Refuse(403, "KMS.0303", "The project ID does not match the token.")
            try:
                req = json.loads(body.decode("utf-8"))
                if not isinstance(req, dict):
                    raise ValueError
            except (ValueError, UnicodeDecodeError):
                raise _Refuse(400, "KMS.0201", "Invalid request body.") from None
            if req.get("encryption_algorithm", "SYMMETRIC_DEFAULT") != "SYMMETRIC_DEFAULT":
                raise _Refuse(400, "KMS.0205", "Invalid encryption algorithm.")
            if op == "encrypt-data":
                return 200, self._encrypt(ak, acct, req)
            return 200, self._decrypt(ak, acct, req)
        except _Refuse as r:
            with self.state.lock:
                self.state.calls.append((op, ak, r.status))
            return r.status, {"error": {"error_code": r.code, "error_msg": r.msg}}

    def _key(self, ak: str, acct: _Account, kid: Any) -> _Key:
        with self.state.lock:
            key = self.state.keys.get(kid) if isinstance(kid, str) else None
        if key is None or key.project_id != acct.project_id:
            raise _Refuse(404, "KMS.0207", "The key does not exist.")
        if ak not in key.users:
            raise _Refuse(403, "KMS.0302", "Access denied: the account may not use this key.")
        if not key.enabled:
            raise _Refuse(400, "KMS.0305", "The key is disabled.")
        return key

    def _encrypt(self, ak: str, acct: _Account, req: dict) -> dict:
        kid = req.get("key_id")
        key = self._key(ak, acct, kid)
        pt = req.get("plain_text")
        if not isinstance(pt, str) or not 1 <= len(pt.encode()) <= 4096:
            raise _Refuse(400, "KMS.0201", "plain_text must be 1 to 4096 bytes.")
        nonce = os.urandom(12)
        blob = _MAGIC + kid.encode() + nonce + AESGCM(key.material).encrypt(
            nonce, pt.encode(), kid.encode())
        with self.state.lock:
            self.state.calls.append(("encrypt-data", ak, 200))
        return {"key_id": kid, "cipher_text": base64.b64encode(blob).decode()}

    def _decrypt(self, ak: str, acct: _Account, req: dict) -> dict:
        ct = req.get("cipher_text")
        bad = _Refuse(400, "KMS.0206", "Invalid cipher_text: decryption failed.")
        try:
            blob = base64.b64decode(ct, validate=True) if isinstance(ct, str) else b""
        except (binascii.Error, ValueError):
            raise bad from None
        if len(blob) < 4 + 36 + 12 + 16 or blob[:4] != _MAGIC:
            raise bad
        kid = blob[4:40].decode("ascii", "replace")
        if req.get("key_id") not in (None, "", kid):
            raise bad
        key = self._key(ak, acct, kid)
        try:
            pt = AESGCM(key.material).decrypt(blob[40:52], blob[52:], kid.encode())
        except InvalidTag:
            raise bad from None
        text = pt.decode("utf-8", "replace")
        with self.state.lock:
            self.state.calls.append(("decrypt-data", ak, 200))
        return {"key_id": kid, "plain_text": text,
                "plain_text_base64": base64.b64encode(pt).decode()}


def _handler(standin: HuaweiKMSStandIn):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: Any) -> None:
            pass

        def _serve(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            status, obj = standin.handle(self.command, self.path, dict(self.headers.items()),
                                         body)
            out = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json;charset=UTF-8")
            self.send_header("Content-Length", str(len(out)))
            self.send_header("X-Request-Id", secrets.token_hex(16))
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_POST = _serve  # noqa: N815

    return Handler
