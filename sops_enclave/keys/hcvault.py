"""HashiCorp Vault (and OpenBao) transit master keys, over Vault's HTTP API.

As sops 3.11 (``hcvault/keysource.go`` with the Go ``vault/api`` client):

* a key is ``https://host:8200/v1/<engine path>/keys/<name>``; the metadata keeps
  ``vault_address`` (scheme and host only), ``engine_path`` and ``key_name``;
* wrap: ``PUT {address}/v1/{engine}/encrypt/{name}`` with ``{"plaintext": base64(data key)}``;
  ``enc`` is the ``ciphertext`` Vault returns (``vault:v1:...``), stored as is;
* unwrap: ``PUT {address}/v1/{engine}/decrypt/{name}`` with ``{"ciphertext": enc}``; the data
  key is the base64-decoded ``plaintext``;
* the token is ``VAULT_TOKEN``, else ``~/.vault-token``; ``VAULT_NAMESPACE`` is sent as
  ``X-Vault-Namespace``; TLS follows ``VAULT_CACERT``, ``VAULT_CAPATH``,
  ``VAULT_CLIENT_CERT``/``VAULT_CLIENT_KEY``, ``VAULT_SKIP_VERIFY`` and
  ``VAULT_TLS_SERVER_NAME``; ``VAULT_MAX_RETRIES`` (default 2) retries refused connections and
  5xx/412/429 answers with the Go client's linear jittered back-off (1-1.5 s, then 2-3 s);
  ``VAULT_CLIENT_TIMEOUT`` (default 60 s) bounds each request; ``HTTP(S)_PROXY``/``NO_PROXY``
  apply (never to loopback). The key's own address is used, never ``VAULT_ADDR`` (sops
  overrides it too). Not supported: ``VAULT_TLS_SERVER_NAME``, ``VAULT_SRV_LOOKUP``,
  ``VAULT_RATE_LIMIT``.

Errors read as the Go client writes them ("Error making API request. ... Code: 403. Errors:
...", ``Put "URL": dial tcp HOST:PORT: connect: connection refused``), behind sops' own
prefixes, so the failure report matches sops'.

Plain HTTP is used (the standard library), so no SDK is needed.
"""

from __future__ import annotations

import base64
import json
import os
import posixpath
import random
import re
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Mapping

from sops_enclave.errors import KeyMismatch, SopsError, go_errno_text
from sops_enclave.keys.base import KeyUnavailable

__all__ = ["parse_uri", "canonical_uri", "wrap", "unwrap", "vault_token", "KEY_TYPE"]

_PREFIXED = re.compile(r"/[^/]+/v[\d]+/[^/]+/[^/]+/[^/]+")
_WELL_FORMED = re.compile(r"/v[\d]+/[^/]+/[^/]+/[^/]+")


class _GoError(Exception):
    """An error with the Go client's text; ``retry`` says whether its policy retries it."""

    def __init__(self, text: str, *, retry: bool = False, mine: bool = False,
                 after: float | None = None):
        super().__init__(text)
        self.retry = retry
        self.mine = mine
        self.after = after


def parse_uri(uri: str) -> tuple[str, str, str]:
    """``(vault_address, engine_path, key_name)`` of a key URI, or :class:`SopsError` with
    sops' text (``NewMasterKeyFromURI``)."""
    m = re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri)
    if not m and ":" in uri.split("/", 1)[0]:  # Go's url.Parse: no scheme, then this
        raise SopsError(f'parse "{uri}": first path segment in URL cannot contain colon')
    try:
        u = urllib.parse.urlsplit(uri)
    except ValueError as e:
        raise SopsError(f'parse "{uri}": {e}') from None
    if not m or not u.scheme:
        raise SopsError("missing scheme in Vault URL (should be like this: +https://vault."
                        f"example.com:8200/v1/transit/keys/keyName), got: {uri}")
    request_uri = (u.path or "/") + (f"?{u.query}" if u.query else "")
    if _PREFIXED.search(request_uri):
        raise SopsError("running Vault with a prefixed URL is not supported! (Format has to be "
                        "like https://vault.example.com:8200/v1/transit/keys/keyName)")
    if not _WELL_FORMED.search(request_uri):
        raise SopsError("vault path does not seem to be formatted correctly: (eg. https://vault."
                        "example.com:8200/v1/transit/keys/keyName)")
    dirs = request_uri.strip("/").split("/")
    key_name = dirs[-1]
    engine = posixpath.normpath("/".join(d for d in dirs[1:-2] if d)) if dirs[1:-2] else ""
    engine = "" if engine == "." else engine
    address = f"{u.scheme}://{u.netloc}" + (f"?{u.query}" if u.query else "") \
        + (f"#{u.fragment}" if u.fragment else "")
    return address, engine, key_name


def canonical_uri(uri: str) -> str:
    """The key URI rebuilt from its parsed parts (``ADDRESS/v1/ENGINE/keys/NAME``), as the
    metadata names the key; :class:`SopsError` when sops would not read it or it names no
    host. The enclave policy and the manifest compare these strings exactly."""
    address, engine, name = parse_uri(uri)
    u = urllib.parse.urlsplit(address)
    if u.scheme not in ("http", "https") or not u.hostname or u.query or u.fragment:
        raise SopsError("the address must be http(s)://HOST[:PORT] with no query")
    return f"{address}/v1/{engine}/keys/{name}"


def _home(env: Mapping[str, str]) -> str:
    home = env.get("HOME", "")
    if home:
        return home
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_dir
    except (ImportError, KeyError):
        raise SopsError("cannot get Vault token: error getting user's home directory: "
                        "neither $HOME nor the user database name a home directory") from None


def vault_token(env: Mapping[str, str]) -> str:
    """``VAULT_TOKEN``, else the trimmed ``~/.vault-token`` (absent: ""), as sops finds it."""
    tok = env.get("VAULT_TOKEN", "")
    if tok:
        return tok
    path = os.path.join(_home(env), ".vault-token")
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace").strip()
    except FileNotFoundError:
        return ""
    except OSError as e:
        raise KeyUnavailable(f"cannot get Vault token: open {path}: {go_errno_text(e)}") from None


def _truthy(v: str) -> bool:
    return v.strip().lower() in ("1", "t", "true")


def _ssl_context(env: Mapping[str, str], cadata: str | None = None) -> ssl.SSLContext:
    if cadata is not None:  # the enclave: exactly these CAs, nothing from the environment
        return ssl.create_default_context(cadata=cadata)
    ctx = ssl.create_default_context()
    cacert, capath = env.get("VAULT_CACERT", ""), env.get("VAULT_CAPATH", "")
    if cacert or capath:
        ctx = ssl.create_default_context(cafile=cacert or None, capath=capath or None)
    cert, key = env.get("VAULT_CLIENT_CERT", ""), env.get("VAULT_CLIENT_KEY", "")
    if cert and key:
        ctx.load_cert_chain(cert, key)
    if _truthy(env.get("VAULT_SKIP_VERIFY", "")):
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _duration(s: str, default: float) -> float:
    """A Go duration or a number of seconds (``VAULT_CLIENT_TIMEOUT``)."""
    s = s.strip()
    if not s:
        return default
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", s)
    if not m:
        return default
    n = float(m.group(1))
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def _no_proxy(host: str, env: Mapping[str, str]) -> bool:
    if host in ("localhost", "::1") or host.startswith("127."):
        return True  # Go's ProxyFromEnvironment never proxies loopback
    for item in (env.get("NO_PROXY") or env.get("no_proxy") or "").split(","):
        item = item.strip().lstrip(".")
        if item == "*" or (item and (host == item or host.endswith("." + item))):
            return True
    return False


def _opener(url: str, env: Mapping[str, str], cadata: str | None = None):
    parts = urllib.parse.urlsplit(url)
    proxies: dict[str, str] = {}
    if not _no_proxy(parts.hostname or "", env):
        for scheme in ("http", "https"):
            p = env.get(f"{scheme.upper()}_PROXY") or env.get(f"{scheme}_proxy")
            if p:
                proxies[scheme] = p
    handlers: list[Any] = [urllib.request.ProxyHandler(proxies)]
    if parts.scheme == "https":
        handlers.append(urllib.request.HTTPSHandler(context=_ssl_context(env, cadata)))
    return urllib.request.build_opener(*handlers)


def _conn_error(method: str, url: str, e: BaseException) -> _GoError:
    """Go's ``*url.Error`` text for a transport failure."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    reason = getattr(e, "reason", e)
    verb = method.capitalize()
    if isinstance(reason, ConnectionRefusedError):
        why = f"dial tcp {hostport}: connect: connection refused"
    elif isinstance(reason, socket.gaierror):
        why = f"dial tcp: lookup {host}: no such host"
    elif isinstance(reason, (TimeoutError, socket.timeout)):
        why = "context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
    elif isinstance(reason, ssl.SSLCertVerificationError):
        why = f"tls: failed to verify certificate: {reason.verify_message}"
        return _GoError(f'{verb} "{url}": {why}', retry=False)
    elif isinstance(reason, OSError) and reason.errno:
        why = f"dial tcp {hostport}: connect: {go_errno_text(reason)}"
    else:
        why = str(reason)
    return _GoError(f'{verb} "{url}": {why}', retry=True)


def _response_error(method: str, url: str, code: int, body: bytes) -> _GoError:
    """The Go client's ``Response.Error()`` text for a non-2xx/3xx answer."""
    retry = code in (412, 429) or (code >= 500 and code != 501)
    mine = not retry
    try:
        errors = json.loads(body.decode("utf-8")).get("errors") or []
        if not isinstance(errors, list):
            raise ValueError
    except (ValueError, UnicodeDecodeError, AttributeError):
        return _GoError(f"Error making API request.\n\nURL: {method} {url}\nCode: {code}. "
                        f"Raw Message:\n\n{body.decode('utf-8', 'replace')}", retry=retry,
                        mine=mine)
    text = "".join(f"* {e}" for e in errors)
    return _GoError(f"Error making API request.\n\nURL: {method} {url}\nCode: {code}. "
                    f"Errors:\n\n{text}", retry=retry, mine=mine)


def _write(address: str, path: str, payload: dict, env: Mapping[str, str],
           cadata: str | None = None) -> dict:
    """``client.Logical().Write(path, payload)``: the ``data`` of Vault's answer."""
    url = address.rstrip("/") + "/v1/" + path
    token = vault_token(env)
    headers = {"Content-Type": "application/json", "X-Vault-Request": "true"}
    if token:
        headers["X-Vault-Token"] = token
    if env.get("VAULT_NAMESPACE"):
        headers["X-Vault-Namespace"] = env["VAULT_NAMESPACE"]
    body = json.dumps(payload, separators=(",", ":")).encode()
    try:
        retries = max(0, int(env.get("VAULT_MAX_RETRIES", "2") or "2"))
    except ValueError:
        retries = 2
    timeout = _duration(env.get("VAULT_CLIENT_TIMEOUT", ""), 60.0)
    opener = _opener(url, env, cadata)
    attempt = 0
    while True:
        req = urllib.request.Request(url, data=body, headers=headers, method="PUT")
        try:
            with opener.open(req, timeout=timeout) as resp:
                raw = resp.read()
                break
        except urllib.error.HTTPError as e:
            raw = e.read()
            if e.code == 429 or 200 <= e.code < 400:
                break
            err = _response_error("PUT", url, e.code, raw)
            ra = e.headers.get("Retry-After", "") if e.headers else ""
            err.after = float(ra) if ra.isdigit() and e.code in (429, 503) else None
        except (urllib.error.URLError, OSError) as e:
            err = _conn_error("PUT", url, e)
        if not err.retry or attempt >= retries:
            raise err
        attempt += 1
        time.sleep(err.after if err.after is not None else random.uniform(1.0, 1.5) * attempt)
    try:
        doc = json.loads(raw.decode("utf-8")) if raw.strip() else None
    except (ValueError, UnicodeDecodeError) as e:
        raise _GoError(str(e), retry=False, mine=False) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), dict):
        raise _GoError("transit backend is empty", mine=False)
    return doc["data"]


def _engine_path(engine: str, op: str, key: str) -> str:
    """Go's ``path.Join(engine, op, key)``."""
    return posixpath.normpath("/".join(p for p in (engine, op, key) if p))


def wrap(data_key: bytes, address: str, engine: str, key_name: str,
         env: Mapping[str, str], *, cadata: str | None = None) -> str:
    """Encrypt ``data_key`` with the transit key; ``cadata`` (PEM) replaces every TLS trust
    setting of ``env`` (the enclave passes its policy's CAs)."""
    path = _engine_path(engine, "encrypt", key_name)
    pre = f"failed to encrypt sops data key to Vault transit backend '{path}': "
    try:
        data = _write(address, path, {"plaintext": base64.b64encode(data_key).decode()}, env,
                      cadata)
        ct = data.get("ciphertext")
        if ct is None:
            raise _GoError("no encrypted data", mine=False)
        if not isinstance(ct, str):
            raise _GoError("encrypted ciphertext cannot be cast to string", mine=False)
    except _GoError as e:
        raise KeyUnavailable(pre + str(e)) from None
    return ct


def unwrap(enc: str, address: str, engine: str, key_name: str,
           env: Mapping[str, str]) -> bytes:
    path = _engine_path(engine, "decrypt", key_name)
    pre = f"failed to decrypt sops data key from Vault transit backend '{path}': "
    try:
        data = _write(address, path, {"ciphertext": enc}, env)
        pt = data.get("plaintext")
        if pt is None:
            raise _GoError("no decrypted data", mine=False)
        if not isinstance(pt, str):
            raise _GoError("decrypted plaintext data cannot be cast to string", mine=False)
        try:
            return base64.b64decode(pt, validate=True)
        except ValueError:
            raise _GoError("cannot decode base64 plaintext into data key bytes",
                           mine=False) from None
    except _GoError as e:
        raise (KeyMismatch if e.mine else KeyUnavailable)(pre + str(e)) from None


class VaultKeyType:
    """Vault transit keys (metadata ``hc_vault``: ``vault_address``, ``engine_path``,
    ``key_name``, ``created_at``, ``enc``)."""

    type = "hc_vault"

    def wrap(self, entry, data_key: bytes, ctx) -> str:
        return wrap(data_key, entry.vault_address, entry.engine_path, entry.key_name, ctx.env)

    def unwrap(self, entry, ctx) -> bytes:
        return unwrap(entry.enc, entry.vault_address, entry.engine_path, entry.key_name,
                      ctx.env)

    def from_arg(self, value: str, ctx, **_opts) -> list:
        """``--hc-vault-transit``/``SOPS_VAULT_URIS``: comma-separated key URIs, empty items
        skipped (sops' ``NewMasterKeysFromURIs``)."""
        from sops_enclave.metadata import VaultEntry

        return [VaultEntry(*parse_uri(u)) for u in value.split(",") if u]


KEY_TYPE = VaultKeyType()
