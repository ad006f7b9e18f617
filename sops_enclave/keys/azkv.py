"""Azure Key Vault master keys through ``azure-keyvault-keys`` and ``azure-identity``
(imported only when used).

As sops (``azkv/keysource.go``, Go ``azkeys`` at API version 7.6):

* a key URL is ``https://VAULT/keys/NAME[/VERSION]``; the metadata keeps ``vault_url``,
  ``name`` and ``version``. A URL without a version gets the key's current version from the
  vault (``GET /keys/NAME``) when the key is read from a flag or ``.sops.yaml``, as sops does;
* wrap: ``POST {vault}/keys/{name}/{version}/encrypt`` with ``RSA-OAEP-256``; ``enc`` is the
  result in URL-safe base64 without padding; unwrap: ``POST .../decrypt`` with the decoded
  ``enc``. Both always run in the vault (no local encryption with a downloaded public key);
* credentials: the SDK's ``DefaultAzureCredential`` chain (``AZURE_TENANT_ID``/
  ``AZURE_CLIENT_ID``/``AZURE_CLIENT_SECRET`` or a certificate, workload identity, managed
  identity -- ``IDENTITY_ENDPOINT``/``IDENTITY_HEADER`` or IMDS --, the Azure CLI), read from
  this process's environment by the SDK; ``HTTPS_PROXY``/``NO_PROXY`` and
  ``REQUESTS_CA_BUNDLE`` apply.

A service error reads as the Go SDK prints it (method and URL, ``RESPONSE 403: 403 Forbidden``,
the error code, the indented JSON body); transport and credential failures are worded by the
Python SDK, not as Go's.
"""

from __future__ import annotations

import base64
import binascii
import re

from sops_enclave.errors import KeyMismatch, SopsError
from sops_enclave.keys.base import KeyUnavailable, require_sdk

__all__ = ["parse_url", "wrap", "unwrap", "key_version", "KEY_TYPE"]

_URL_RE = re.compile(r"^(https://[^/]+)/keys/([^/]+)(/[^/]*)?$")
_API_VERSION = "7.6"


def _quote(s: str) -> str:
    from sops_enclave.goformat import go_quote

    return go_quote(s)


def parse_url(url: str) -> tuple[str, str, str]:
    """``(vault_url, name, version)`` of a key URL ("" for no version), or :class:`SopsError`
    with sops' text."""
    url = url.strip()
    m = _URL_RE.match(url)
    if not m:
        raise SopsError(f"could not parse {_quote(url)} into a valid Azure Key Vault MasterKey "
                        "[]")
    version = m.group(3)[1:] if m.group(3) and len(m.group(3)) > 1 else ""
    return m.group(1), m.group(2), version


def _credential():
    require_sdk("azure.identity", "azure-identity", "azure")
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def _key_client(vault_url: str):
    require_sdk("azure.keyvault.keys", "azure-keyvault-keys", "azure")
    from azure.keyvault.keys import KeyClient

    return KeyClient(vault_url, _credential(), api_version=_API_VERSION)


_SEPARATOR = "-" * 80


def _go_response_error(resp) -> str:
    """azcore's ``ResponseError`` text (Go) for a service answer: method and URL without the
    query, the status, the error code, the JSON body indented by two spaces."""
    import json
    from urllib.parse import urlsplit

    req = getattr(resp, "request", None)
    out = []
    if req is not None:
        u = urlsplit(req.url)
        out.append(f"{req.method} {u.scheme}://{u.netloc}{u.path}")
    else:
        out.append("Missing RawRequest")
    out += [_SEPARATOR, f"RESPONSE {resp.status_code}: {resp.status_code} {resp.reason}"]
    try:
        body = resp.body()
    except Exception:
        body = b""
    code = resp.headers.get("x-ms-error-code", "") if resp.headers else ""
    doc = None
    if body:
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
    if not code and isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        code = str(doc["error"].get("code") or "")
    out.append(f"ERROR CODE: {code}" if code else "ERROR CODE UNAVAILABLE")
    out.append(_SEPARATOR)
    if body:
        out.append(json.dumps(doc, indent=2, ensure_ascii=False) if doc is not None
                   else body.decode("utf-8", "replace"))
    else:
        out.append("Response contained no body")
    out.append(_SEPARATOR)
    return "\n".join(out) + "\n"


def _error(e: Exception) -> tuple[str, bool]:
    """The error's text and whether it means "not mine" (the vault refused this key)."""
    resp = getattr(e, "response", None)
    status = getattr(resp, "status_code", None)
    if isinstance(status, int):
        return _go_response_error(resp), status in (400, 403, 404)
    msg = getattr(e, "message", None) or str(e)
    return " ".join(str(msg).split()), False


def key_version(vault_url: str, name: str) -> str:
    """The current version of a key (``GET /keys/NAME``), as sops' ``ensureKeyHasVersion``."""
    try:
        client = _key_client(vault_url)
    except Exception as e:
        raise KeyUnavailable("failed to construct Azure Key Vault client to retrieve key "
                             f"version: {e}") from None
    try:
        key = client.get_key(name)
    except Exception as e:
        raise KeyUnavailable(f"failed to fetch Azure Key to retrieve key version: "
                             f"{_error(e)[0]}") from None
    finally:
        client.close()
    return key.properties.version or ""


def _operate(op: str, vault_url: str, name: str, version: str, value: bytes) -> bytes:
    """``POST {vault}/keys/{name}/{version}/{op}`` with RSA-OAEP-256: the result bytes."""
    client = _key_client(vault_url)
    try:
        gen = getattr(client, "_client", None)
        models = getattr(client, "_models", None)
        if gen is not None and models is not None and hasattr(gen, op):
            params = models.KeyOperationsParameters(algorithm="RSA-OAEP-256", value=value)
            return bytes(getattr(gen, op)(key_name=name, key_version=version,
                                          parameters=params).result)
        # an SDK without the generated operations: the public client, remote for decrypt
        from azure.keyvault.keys.crypto import CryptographyClient, EncryptionAlgorithm

        kid = f"{vault_url}/keys/{name}/{version}" if version else f"{vault_url}/keys/{name}"
        crypto = CryptographyClient(kid, _credential(), api_version=_API_VERSION)
        alg = EncryptionAlgorithm.rsa_oaep_256
        r = crypto.encrypt(alg, value) if op == "encrypt" else crypto.decrypt(alg, value)
        return bytes(r.ciphertext if op == "encrypt" else r.plaintext)
    finally:
        client.close()


def _name(vault_url: str, name: str, version: str) -> str:
    return f"{vault_url}/keys/{name}/{version}"


def wrap(data_key: bytes, vault_url: str, name: str, version: str) -> str:
    try:
        ct = _operate("encrypt", vault_url, name, version, data_key)
    except Exception as e:
        raise KeyUnavailable("failed to encrypt sops data key with Azure Key Vault key "
                             f"'{_name(vault_url, name, version)}': {_error(e)[0]}") from None
    return base64.urlsafe_b64encode(ct).decode().rstrip("=")


def unwrap(enc: str, vault_url: str, name: str, version: str) -> bytes:
    s = enc.encode("ascii", "surrogateescape")
    if b"=" in s or len(s) % 4 == 1:
        raise KeyUnavailable("failed to base64 decode Azure Key Vault encrypted key: illegal "
                             f"base64 data at input byte {_first_bad(s)}")
    try:
        blob = base64.urlsafe_b64decode(s + b"=" * (-len(s) % 4))
    except (binascii.Error, ValueError):
        raise KeyUnavailable("failed to base64 decode Azure Key Vault encrypted key: illegal "
                             f"base64 data at input byte {_first_bad(s)}") from None
    try:
        return _operate("decrypt", vault_url, name, version, blob)
    except Exception as e:
        text, mine = _error(e)
        raise (KeyMismatch if mine else KeyUnavailable)(
            "failed to decrypt sops data key with Azure Key Vault key "
            f"'{_name(vault_url, name, version)}': {text}") from None


def _first_bad(s: bytes) -> int:
    ok = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    for i, b in enumerate(s):
        if b not in ok:
            return i
    return len(s) - len(s) % 4


class AzureKVKeyType:
    """Azure Key Vault keys (metadata ``azure_kv``: ``vault_url``, ``name``, ``version``,
    ``created_at``, ``enc``)."""

    type = "azure_kv"

    def wrap(self, entry, data_key: bytes, ctx) -> str:
        return wrap(data_key, entry.vault_url, entry.name, entry.version)

    def unwrap(self, entry, ctx) -> bytes:
        return unwrap(entry.enc, entry.vault_url, entry.name, entry.version)

    def from_arg(self, value: str, ctx, **_opts) -> list:
        """``--azure-kv``/``SOPS_AZURE_KEYVAULT_URLS``: comma-separated key URLs (sops'
        ``MasterKeysFromURLs``); a URL without a version gets the current one."""
        from sops_enclave.metadata import AzureKVEntry

        out = []
        for url in value.split(","):
            vault_url, name, version = parse_url(url)
            if not version:
                version = key_version(vault_url, name)
            out.append(AzureKVEntry(vault_url, name, version))
        return out


KEY_TYPE = AzureKVKeyType()
