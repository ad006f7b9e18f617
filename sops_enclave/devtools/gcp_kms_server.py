"""A local stand-in for Google Cloud KMS: the ``KeyManagementService`` gRPC ``Encrypt`` and
``Decrypt`` methods, over TLS, with the message classes of the ``google-cloud-kms`` SDK.

Google offers no local KMS emulator, so tests point ``SOPS_GCP_KMS_ENDPOINT`` here. It does
what the service does for those two calls, and refuses what it refuses:

* every call needs ``authorization: Bearer <token>``: a token this server issued (its OAuth
  token endpoint runs the service-account JWT-bearer grant, or :meth:`issue_token` hands one
  out as for ``GOOGLE_OAUTH_ACCESS_TOKEN``), or a service account's self-signed JWT (RS256,
  checked against the account's registered public key, ``iss == sub``, unexpired, audience
  ``https://cloudkms.googleapis.com/`` or a KMS/cloud-platform ``scope``); anything else is
  ``UNAUTHENTICATED``;
* a caller that may not use a key, or a key that does not exist, gets ``PERMISSION_DENIED``
  with the service's wording ("... (or it may not exist)"); a malformed name, empty or
  oversized plaintext, a CRC32C mismatch or a ciphertext that does not authenticate gets
  ``INVALID_ARGUMENT``; ``Decrypt`` needs the CryptoKey name, not a version;
* keys are AES-256-GCM; a ciphertext names its key version and is bound (as AAD) to the
  CryptoKey name and the request's ``additional_authenticated_data``.

Not implemented: every other method (``UNIMPLEMENTED``), asymmetric keys, IAM policies
beyond a per-key list of allowed principals.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["GCPKMSStandIn", "crc32c"]

SERVICE = "google.cloud.kms.v1.KeyManagementService"
PUBLIC_HOST = "cloudkms.googleapis.com"
KMS_AUDIENCE = "https://cloudkms.googleapis.com/"
_OK_SCOPES = {"https://www.googleapis.com/auth/cloudkms",
              "https://www.googleapis.com/auth/cloud-platform"}
_KEY_RE = re.compile(r"^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$")
_VERSION_RE = re.compile(r"^(projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+)"
                         r"/cryptoKeyVersions/(\d+)$")
_MAGIC = b"SEKG"
_MAX_PLAINTEXT = 64 * 1024


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC32C (Castagnoli), as KMS checksums its inputs and outputs."""
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _b64url(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


@dataclass
class _Key:
    versions: list[bytes]
    principals: set[str] | None  # None: every authenticated caller
    primary: int = 1


@dataclass
class _Call:
    method: str
    name: str
    principal: str
    code: str


@dataclass
class _State:
    keys: dict[str, _Key] = field(default_factory=dict)
    tokens: dict[str, tuple[str, float]] = field(default_factory=dict)
    accounts: dict[str, Any] = field(default_factory=dict)  # email -> RSA public key
    calls: list[_Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Abort(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class GCPKMSStandIn:
    """Start with :meth:`start` (returns self), stop with :meth:`stop`.

    ``endpoint`` is ``127.0.0.1:PORT`` (for ``SOPS_GCP_KMS_ENDPOINT``); ``token_uri`` is the
    OAuth token endpoint for service-account JSON files; ``proxy`` is an ``HTTPS_PROXY`` that
    tunnels ``cloudkms.googleapis.com:443`` here. TLS uses ``cert_pem``/``key_pem``: a
    certificate for ``127.0.0.1``, ``localhost`` and ``cloudkms.googleapis.com``, e.g. from
    :class:`~sops_enclave.devtools.local_ca.LocalCA`.
    """

    def __init__(self, cert_pem: bytes, key_pem: bytes):
        self._cert, self._key = cert_pem, key_pem
        self.state = _State()
        self._grpc = None
        self._http: ThreadingHTTPServer | None = None
        self.endpoint = ""
        self.token_uri = ""
        #: ``HTTPS_PROXY`` value that routes ``cloudkms.googleapis.com:443`` here (for a
        #: client with no endpoint setting, such as the sops 3.11 binary)
        self.proxy = ""

    # ---------------------------------------------------------------- set-up
    def create_key(self, resource_id: str, principals: list[str] | None = None) -> str:
        if not _KEY_RE.match(resource_id):
            raise ValueError(f"not a CryptoKey resource ID: {resource_id}")
        with self.state.lock:
            self.state.keys[resource_id] = _Key([os.urandom(32)],
                                                None if principals is None else set(principals))
        return resource_id

    def rotate_key(self, resource_id: str) -> int:
        """A new primary version; older versions still decrypt."""
        with self.state.lock:
            k = self.state.keys[resource_id]
            k.versions.append(os.urandom(32))
            k.primary = len(k.versions)
            return k.primary

    def issue_token(self, principal: str, lifetime: float = 3600) -> str:
        tok = "ya29.standin-" + secrets.token_urlsafe(24)
        with self.state.lock:
            self.state.tokens[tok] = (principal, time.time() + lifetime)
        return tok

    def add_service_account(self, email: str, project: str = "standin-project") -> dict:
        """A new service account; returns its JSON key file contents (as a dict)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        kid = secrets.token_hex(20)
        with self.state.lock:
            self.state.accounts[email] = key.public_key()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        return {"type": "service_account", "project_id": project, "private_key_id": kid,
                "private_key": pem, "client_email": email, "client_id": "1" + kid[:20],
                "auth_uri": "https://accounts.google.com/o/oauth2/auth",
                "token_uri": self.token_uri, "universe_domain": "googleapis.com"}

    @property
    def calls(self) -> list[_Call]:
        with self.state.lock:
            return list(self.state.calls)

    # ---------------------------------------------------------------- life cycle
    def start(self) -> "GCPKMSStandIn":
        from concurrent import futures

        import grpc
        from google.cloud.kms_v1 import types

        handlers = {
            "Encrypt": grpc.unary_unary_rpc_method_handler(
                self._rpc(self._encrypt), request_deserializer=types.EncryptRequest.deserialize,
                response_serializer=types.EncryptResponse.serialize),
            "Decrypt": grpc.unary_unary_rpc_method_handler(
                self._rpc(self._decrypt), request_deserializer=types.DecryptRequest.deserialize,
                response_serializer=types.DecryptResponse.serialize),
        }
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                             options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE,
                                                                              handlers),))
        creds = grpc.ssl_server_credentials([(self._key, self._cert)])
        port = server.add_secure_port("127.0.0.1:0", creds)
        server.start()
        self._grpc = server
        self.endpoint = f"127.0.0.1:{port}"
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _token_handler(self))
        self._http.daemon_threads = True
        threading.Thread(target=self._http.serve_forever, daemon=True,
                         name="gcp-standin-oauth").start()
        self.token_uri = f"http://127.0.0.1:{self._http.server_address[1]}/token"
        self.proxy = f"http://127.0.0.1:{self._http.server_address[1]}"
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(None).wait()
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def __enter__(self) -> "GCPKMSStandIn":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---------------------------------------------------------------- auth
    def _principal(self, context) -> str:
        md = dict(context.invocation_metadata())
        auth = md.get("authorization", "")
        if not auth.startswith("Bearer "):
            raise _Abort("UNAUTHENTICATED", "Request is missing required authentication "
                         "credential. Expected OAuth 2 access token, login cookie or other "
                         "valid authentication credential.")
        token = auth[len("Bearer "):]
        with self.state.lock:
            issued = self.state.tokens.get(token)
        if issued is not None:
            principal, expiry = issued
            if time.time() < expiry:
                return principal
        else:
            principal = self._self_signed(token)
            if principal:
                return principal
        raise _Abort("UNAUTHENTICATED", "Request had invalid authentication credentials. "
                     "Expected OAuth 2 access token, login cookie or other valid "
                     "authentication credential.")

    def verify_jwt(self, token: str, audiences: set[str]) -> dict | None:
        """The claims of a service account's RS256 JWT whose signature, issuer, expiry and
        audience (or scope) check out; None otherwise."""
        try:
            head_b64, body_b64, sig_b64 = token.split(".")
            head = json.loads(_b64url(head_b64))
            claims = json.loads(_b64url(body_b64))
            sig = _b64url(sig_b64)
        except (ValueError, json.JSONDecodeError):
            return None
        if not isinstance(head, dict) or not isinstance(claims, dict) or head.get("alg") != "RS256":
            return None
        with self.state.lock:
            pub = self.state.accounts.get(claims.get("iss", ""))
        if pub is None:
            return None
        try:
            pub.verify(sig, f"{head_b64}.{body_b64}".encode(), padding.PKCS1v15(),
                       hashes.SHA256())
        except InvalidSignature:
            return None
        now = time.time()
        try:
            iat, exp = float(claims["iat"]), float(claims["exp"])
        except (KeyError, TypeError, ValueError):
            return None
        if not (iat - 300 <= now < exp) or exp - iat > 3600 + 300:
            return None
        scopes = set(str(claims.get("scope", "")).split())
        if claims.get("aud") not in audiences and not (scopes & _OK_SCOPES):
            return None
        return claims

    def _self_signed(self, token: str) -> str | None:
        claims = self.verify_jwt(token, {KMS_AUDIENCE, KMS_AUDIENCE.rstrip("/")})
        if claims is None or claims.get("sub", claims.get("iss")) != claims.get("iss"):
            return None
        return str(claims["iss"])

    # ---------------------------------------------------------------- RPCs
    def _rpc(self, fn):
        import grpc

        def handler(request, context):
            method = fn.__name__.strip("_").capitalize()
            try:
                principal = self._principal(context)
                resp = fn(request, principal)
            except _Abort as a:
                with self.state.lock:
                    self.state.calls.append(_Call(method, getattr(request, "name", ""), "?",
                                                  a.code))
                context.abort(getattr(grpc.StatusCode, a.code), a.message)
            with self.state.lock:
                self.state.calls.append(_Call(method, request.name, principal, "OK"))
            return resp

        return handler

    def _key_for(self, name: str, principal: str, permission: str) -> _Key:
        with self.state.lock:
            key = self.state.keys.get(name)
        if key is None or (key.principals is not None and principal not in key.principals):
            raise _Abort("PERMISSION_DENIED", f"Permission '{permission}' denied on resource "
                         f"'{name}' (or it may not exist).")
        return key

    def _encrypt(self, request, principal: str):
        from google.cloud.kms_v1 import types

        name, version = request.name, 0
        m = _VERSION_RE.match(name)
        if m:
            name, version = m.group(1), int(m.group(2))
        elif not _KEY_RE.match(name):
            raise _Abort("INVALID_ARGUMENT", f"Resource name [{request.name}] does not match "
                         "any known resource name pattern.")
        key = self._key_for(name, principal, "cloudkms.cryptoKeyVersions.useToEncrypt")
        pt, aad = bytes(request.plaintext), bytes(request.additional_authenticated_data)
        if not pt:
            raise _Abort("INVALID_ARGUMENT", "Plaintext is empty.")
        if len(pt) > _MAX_PLAINTEXT:
            raise _Abort("INVALID_ARGUMENT", "The plaintext exceeds the maximum size.")
        has_pt_crc = "plaintext_crc32c" in request
        if has_pt_crc and request.plaintext_crc32c != crc32c(pt):
            raise _Abort("INVALID_ARGUMENT", "The checksum in field plaintext_crc32c did not "
                         "match the data in field plaintext.")
        has_aad_crc = "additional_authenticated_data_crc32c" in request
        if has_aad_crc and request.additional_authenticated_data_crc32c != crc32c(aad):
            raise _Abort("INVALID_ARGUMENT", "The checksum in field additional_authenticated_"
                         "data_crc32c did not match the data in field "
                         "additional_authenticated_data.")
        version = version or key.primary
        if not 1 <= version <= len(key.versions):
            raise _Abort("PERMISSION_DENIED", "Permission 'cloudkms.cryptoKeyVersions."
                         f"useToEncrypt' denied on resource '{request.name}' (or it may not "
                         "exist).")
        nonce = os.urandom(12)
        ct = _MAGIC + struct.pack(">I", version) + nonce + AESGCM(key.versions[version - 1]) \
            .encrypt(nonce, pt, _aad(name, aad))
        return types.EncryptResponse(
            name=f"{name}/cryptoKeyVersions/{version}", ciphertext=ct,
            ciphertext_crc32c=crc32c(ct), verified_plaintext_crc32c=has_pt_crc,
            verified_additional_authenticated_data_crc32c=has_aad_crc,
            protection_level=types.ProtectionLevel.SOFTWARE)

    def _decrypt(self, request, principal: str):
        from google.cloud.kms_v1 import types

        name = request.name
        if not _KEY_RE.match(name):
            raise _Abort("INVALID_ARGUMENT", f"Resource name [{name}] does not match any known "
                         "resource name pattern.")
        key = self._key_for(name, principal, "cloudkms.cryptoKeyVersions.useToDecrypt")
        ct, aad = bytes(request.ciphertext), bytes(request.additional_authenticated_data)
        if "ciphertext_crc32c" in request and request.ciphertext_crc32c != crc32c(ct):
            raise _Abort("INVALID_ARGUMENT", "The checksum in field ciphertext_crc32c did not "
                         "match the data in field ciphertext.")
        bad = _Abort("INVALID_ARGUMENT", "Decryption failed: the ciphertext is invalid.")
        if len(ct) < 4 + 4 + 12 + 16 or ct[:4] != _MAGIC:
            raise bad
        version = struct.unpack(">I", ct[4:8])[0]
        if not 1 <= version <= len(key.versions):
            raise bad
        try:
            pt = AESGCM(key.versions[version - 1]).decrypt(ct[8:20], ct[20:], _aad(name, aad))
        except InvalidTag:
            raise bad from None
        return types.DecryptResponse(plaintext=pt, plaintext_crc32c=crc32c(pt),
                                     used_primary=version == key.primary,
                                     protection_level=types.ProtectionLevel.SOFTWARE)


def _aad(name: str, aad: bytes) -> bytes:
    return hashlib.sha256(name.encode()).digest() + aad


def _relay(a, b) -> None:
    """Copy bytes both ways between two sockets until either side closes."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(a, selectors.EVENT_READ, b)
    sel.register(b, selectors.EVENT_READ, a)
    try:
        while True:
            for key, _ in sel.select(timeout=300):
                data = key.fileobj.recv(65536)
                if not data:
                    return
                key.data.sendall(data)
    except OSError:
        return
    finally:
        sel.close()


def _token_handler(standin: GCPKMSStandIn):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a: Any) -> None:
            pass

        def do_CONNECT(self) -> None:  # noqa: N802
            """An HTTP proxy for ``cloudkms.googleapis.com:443`` only: the tunnel ends at
            this stand-in's gRPC port (TLS is end to end, with the stand-in's certificate)."""
            import socket

            if self.path != f"{PUBLIC_HOST}:443":
                self.send_response(403, "Forbidden")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            port = int(standin.endpoint.rpartition(":")[2])
            try:
                upstream = socket.create_connection(("127.0.0.1", port))
            except OSError:
                self.send_response(502, "Bad Gateway")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200, "Connection established")
            self.end_headers()
            self.wfile.flush()
            try:
                _relay(self.connection, upstream)
            finally:
                upstream.close()
                self.close_connection = True

        def _json(self, code: int, obj: dict) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802
            if urllib.parse.urlsplit(self.path).path != "/token":
                return self._json(404, {"error": "not_found"})
            n = int(self.headers.get("Content-Length") or 0)
            form = urllib.parse.parse_qs(self.rfile.read(n).decode("utf-8", "replace"))
            grant = form.get("grant_type", [""])[0]
            assertion = form.get("assertion", [""])[0]
            if grant != "urn:ietf:params:oauth:grant-type:jwt-bearer":
                return self._json(400, {"error": "unsupported_grant_type",
                                        "error_description": "Invalid grant_type."})
            claims = standin.verify_jwt(assertion, {standin.token_uri})
            if claims is None:
                return self._json(400, {"error": "invalid_grant",
                                        "error_description": "Invalid JWT Signature."})
            token = standin.issue_token(str(claims["iss"]))
            return self._json(200, {"access_token": token, "expires_in": 3599,
                                    "token_type": "Bearer"})

    return Handler
