"""A local stand-in for Azure Key Vault keys (REST ``encrypt``/``decrypt``/``wrapkey``/
``unwrapkey`` and ``GET /keys``) and for the App Service managed-identity token endpoint.

Azure offers no local Key Vault. Clients reach this one as they reach Azure:

* the vault has a real-looking name (``https://NAME.vault.azure.net``); the stand-in is also an
  HTTP proxy (``HTTPS_PROXY=http://127.0.0.1:PORT``) that answers ``CONNECT`` for the vaults it
  holds and speaks TLS inside the tunnel with a certificate from a local test CA, so the SDKs
  keep their own checks (HTTPS only, the challenge resource ``https://vault.azure.net`` must be
  a parent domain of the vault host);
* tokens come from ``IDENTITY_ENDPOINT`` (``http://127.0.0.1:PORT/msi/token``, the App Service
  managed-identity protocol: ``X-IDENTITY-HEADER`` must equal ``IDENTITY_HEADER``);
* the vault answers a request without a valid bearer token for ``https://vault.azure.net``
  with 401 and the ``WWW-Authenticate`` challenge; a principal without access to a key gets 403,
  an unknown key or version 404, a ciphertext that does not decrypt 400; the ``api-version``
  query parameter is required.

Keys are RSA-2048 (``RSA-OAEP-256``, ``RSA-OAEP``) with named versions; a new version becomes
current and older ones still decrypt.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

__all__ = ["AzureKeyVaultStandIn"]

RESOURCE = "https://vault.azure.net"
_PADS = {"RSA-OAEP-256": lambda: padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(),
                                              None),
         "RSA-OAEP": lambda: padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)}


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64u(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


@dataclass
class _Key:
    versions: dict[str, rsa.RSAPrivateKey]
    current: str
    principals: set[str] | None


@dataclass
class _State:
    vaults: dict[str, dict[str, _Key]] = field(default_factory=dict)  # host -> name -> key
    tokens: dict[str, tuple[str, str, float]] = field(default_factory=dict)
    identities: dict[str, str] = field(default_factory=dict)  # IDENTITY_HEADER -> principal
    calls: list[tuple[str, str, str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Error(Exception):
    def __init__(self, status: int, code: str, message: str, challenge: bool = False):
        super().__init__(message)
        self.status, self.code, self.message, self.challenge = status, code, message, challenge


class AzureKeyVaultStandIn:
    """``ca`` is a :class:`~sops_enclave.devtools.local_ca.LocalCA`; :meth:`start` listens on
    127.0.0.1 (``proxy`` and ``identity_endpoint`` give the addresses)."""

    def __init__(self, ca, tenant: str = "00000000-0000-0000-0000-000000000000"):
        self.ca = ca
        self.tenant = tenant
        self.state = _State()
        self._contexts: dict[str, Any] = {}
        self._server: ThreadingHTTPServer | None = None
        self.proxy = ""
        self.identity_endpoint = ""

    # ------------------------------------------------------------------ set-up
    def create_vault(self, name: str) -> str:
        host = f"{name}.vault.azure.net"
        with self.state.lock:
            self.state.vaults.setdefault(host, {})
        self._contexts[host] = self.ca.server_context(host, [host])
        return f"https://{host}"

    def create_key(self, vault_url: str, name: str, principals: list[str] | None = None) -> str:
        """A new RSA key (or a new current version of it); returns the version."""
        host = urlsplit(vault_url).hostname or ""
        version = uuid.uuid4().hex
        priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        with self.state.lock:
            keys = self.state.vaults[host]
            if name in keys:
                keys[name].versions[version] = priv
                keys[name].current = version
            else:
                keys[name] = _Key({version: priv}, version,
                                  None if principals is None else set(principals))
        return version

    def add_identity(self, principal: str) -> str:
        """A managed identity; returns the ``IDENTITY_HEADER`` secret that obtains its tokens."""
        secret = secrets.token_urlsafe(24)
        with self.state.lock:
            self.state.identities[secret] = principal
        return secret

    @property
    def calls(self) -> list[tuple[str, str, str, int]]:
        """``(operation, key name, principal, status)`` of every vault request."""
        with self.state.lock:
            return list(self.state.calls)

    def start(self) -> "AzureKeyVaultStandIn":
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True,
                         name="azure-kv-standin").start()
        port = self._server.server_address[1]
        self.proxy = f"http://127.0.0.1:{port}"
        self.identity_endpoint = f"http://127.0.0.1:{port}/msi/token"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "AzureKeyVaultStandIn":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ managed identity
    def identity_token(self, secret: str, query: dict[str, list[str]]) -> tuple[int, dict]:
        with self.state.lock:
            principal = self.state.identities.get(secret)
        if principal is None:
            return 401, {"error": "unauthorized", "error_description": "invalid identity header"}
        if query.get("api-version", [""])[0] != "2019-08-01":
            return 400, {"error": "invalid_request", "error_description": "bad api-version"}
        resource = query.get("resource", [""])[0].rstrip("/")
        if not resource:
            return 400, {"error": "invalid_request", "error_description": "resource missing"}
        token = "eyJ0eXAi.standin." + secrets.token_urlsafe(32)
        expires = time.time() + 3600
        with self.state.lock:
            self.state.tokens[token] = (principal, resource, expires)
        return 200, {"access_token": token, "expires_on": str(int(expires)),
                     "resource": resource, "token_type": "Bearer", "client_id": principal}

    # ------------------------------------------------------------------ the vault
    def _principal(self, auth: str) -> str:
        if not auth.startswith("Bearer "):
            raise _Error(401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP "
                         "token.", challenge=True)
        with self.state.lock:
            got = self.state.tokens.get(auth[len("Bearer "):])
        if got is None or got[2] < time.time():
            raise _Error(401, "Unauthorized", "AKV10032: Invalid issuer or token.",
                         challenge=True)
        principal, resource, _ = got
        if resource != RESOURCE:
            raise _Error(401, "Unauthorized", f"AKV10022: Invalid audience. Expected "
                         f"{RESOURCE}, found: {resource}.", challenge=True)
        return principal

    def vault_request(self, host: str, method: str, target: str, headers: dict[str, str],
                      body: bytes) -> tuple[int, dict, dict[str, str]]:
        segs = [s for s in urlsplit(target).path.split("/") if s]
        op = segs[3] if len(segs) == 4 else ("get" if method == "GET" else "?")
        name = segs[1] if len(segs) > 1 else ""
        who: list[str] = ["?"]
        status, obj, extra = self._vault(host, method, target, headers, body, who)
        with self.state.lock:
            self.state.calls.append((op, name, who[0], status))
        return status, obj, extra

    def _vault(self, host: str, method: str, target: str, headers: dict[str, str], body: bytes,
               who: list[str]) -> tuple[int, dict, dict[str, str]]:
        parts = urlsplit(target)
        segs = [s for s in parts.path.split("/") if s]
        name = segs[1] if len(segs) > 1 else ""
        try:
            if "api-version" not in parse_qs(parts.query):
                raise _Error(400, "BadParameter", "The 'api-version' query parameter is "
                             "required.")
            low = {k.lower(): v for k, v in headers.items()}
            principal = who[0] = self._principal(low.get("authorization", ""))
            if not segs or segs[0] != "keys" or len(segs) < 2 or len(segs) > 4:
                raise _Error(404, "NotFound", "Resource not found.")
            with self.state.lock:
                key = self.state.vaults.get(host, {}).get(name)
            if key is None:
                raise _Error(404, "KeyNotFound", f"A key with (name/id) {name} was not found in "
                             "this key vault. If you recently deleted this key you may be able "
                             "to recover it using the correct recovery command.")
            if key.principals is not None and principal not in key.principals:
                raise _Error(403, "Forbidden", "The user, group or application "
                             f"'appid={principal}' does not have keys permissions on key vault "
                             f"'{host.split('.')[0]}'.")
            if method == "GET" and len(segs) in (2, 3):
                version = segs[2] if len(segs) == 3 and segs[2] else key.current
                return 200, self._bundle(host, name, key, version), {}
            if method == "POST" and len(segs) == 4 and segs[3] in ("encrypt", "decrypt",
                                                                   "wrapkey", "unwrapkey"):
                return 200, self._crypt(host, name, key, segs[2] or key.current, segs[3],
                                        body), {}
            raise _Error(405, "MethodNotAllowed", "The requested method is not allowed.")
        except _Error as e:
            extra = {}
            if e.challenge:
                extra["WWW-Authenticate"] = (f'Bearer authorization="https://login.'
                                             f'microsoftonline.com/{self.tenant}", '
                                             f'resource="{RESOURCE}"')
            return e.status, {"error": {"code": e.code, "message": e.message}}, extra

    def _priv(self, key: _Key, name: str, version: str) -> rsa.RSAPrivateKey:
        priv = key.versions.get(version)
        if priv is None:
            raise _Error(404, "KeyNotFound", f"A key with (name/id) {name}/{version} was not "
                         "found in this key vault.")
        return priv

    def _bundle(self, host: str, name: str, key: _Key, version: str) -> dict:
        pub = self._priv(key, name, version).public_key().public_numbers()
        n = pub.n.to_bytes((pub.n.bit_length() + 7) // 8, "big")
        e = pub.e.to_bytes((pub.e.bit_length() + 7) // 8, "big")
        return {"key": {"kid": f"https://{host}/keys/{name}/{version}", "kty": "RSA",
                        "key_ops": ["encrypt", "decrypt", "wrapKey", "unwrapKey"],
                        "n": _b64u(n), "e": _b64u(e)},
                "attributes": {"enabled": True, "created": 1700000000, "updated": 1700000000,
                               "recoveryLevel": "Recoverable+Purgeable"}}

    def _crypt(self, host: str, name: str, key: _Key, version: str, op: str,
               body: bytes) -> dict:
        priv = self._priv(key, name, version)
        try:
            req = json.loads(body.decode("utf-8"))
            alg, value = req["alg"], _unb64u(req["value"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise _Error(400, "BadParameter", "Property 'alg' and 'value' are required.") \
                from None
        if alg not in _PADS:
            raise _Error(400, "BadParameter", f"Invalid algorithm: {alg}")
        if op in ("encrypt", "wrapkey"):
            out = priv.public_key().encrypt(value, _PADS[alg]())
        else:
            try:
                out = priv.decrypt(value, _PADS[alg]())
            except ValueError:
                raise _Error(400, "BadParameter", "Decryption failed: the ciphertext is not "
                             "valid for this key.") from None
        return {"kid": f"https://{host}/keys/{name}/{version}", "value": _b64u(out)}


def _json_reply(h: BaseHTTPRequestHandler, status: int, obj: dict,
                extra: dict[str, str] | None = None) -> None:
    out = json.dumps(obj).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/json; charset=utf-8")
    h.send_header("Content-Length", str(len(out)))
    h.send_header("x-ms-request-id", str(uuid.uuid4()))
    for k, v in (extra or {}).items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(out)


def _vault_handler(standin: AzureKeyVaultStandIn, host: str):
    class VaultHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: Any) -> None:
            pass

        def _serve(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            status, obj, extra = standin.vault_request(host, self.command, self.path,
                                                       dict(self.headers.items()), body)
            _json_reply(self, status, obj, extra)

        do_GET = do_POST = do_PUT = do_DELETE = _serve  # noqa: N815

    return VaultHandler


def _handler(standin: AzureKeyVaultStandIn):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            parts = urlsplit(self.path)
            if parts.path != "/msi/token":
                return _json_reply(self, 404, {"error": "not_found"})
            status, obj = standin.identity_token(self.headers.get("X-IDENTITY-HEADER", ""),
                                                 parse_qs(parts.query))
            _json_reply(self, status, obj)

        def do_CONNECT(self) -> None:  # noqa: N802
            host, _, port = self.path.rpartition(":")
            ctx = standin._contexts.get(host)
            if ctx is None or port != "443":
                self.send_response(403, "Forbidden")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200, "Connection established")
            self.end_headers()
            self.wfile.flush()
            try:
                tls = ctx.wrap_socket(self.connection, server_side=True)
            except OSError:
                self.close_connection = True
                return
            try:
                _vault_handler(standin, host)(tls, self.client_address, self.server)
            finally:
                self.close_connection = True

    return Handler
