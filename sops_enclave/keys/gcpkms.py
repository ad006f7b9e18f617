"""Google Cloud KMS master keys through ``google-cloud-kms`` (imported only when used).

As sops (``gcpkms/keysource.go``):

* a key is a CryptoKey resource ID ``projects/P/locations/L/keyRings/R/cryptoKeys/K``
  (spaces removed); anything else fails with ``no valid resource ID found in "..."``;
* wrap: ``KeyManagementService.Encrypt(name=resource_id, plaintext=data key)``; ``enc`` is the
  standard base64 of the returned ciphertext; unwrap: ``Decrypt`` with the decoded ``enc``;
* credentials, first that is set: ``GOOGLE_CREDENTIALS`` (a file path, or the JSON itself),
  ``GOOGLE_OAUTH_ACCESS_TOKEN`` (a bearer token as is), then Application Default Credentials
  (``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's ADC file under ``CLOUDSDK_CONFIG`` or
  ``~/.config/gcloud``, then the SDK's own chain, ending with the metadata server); the quota
  project is the key's project;
* ``SOPS_GCP_KMS_CLIENT_TYPE=rest`` picks the REST transport (default gRPC);
  ``SOPS_GCP_KMS_ENDPOINT`` (host:port) replaces the endpoint and
  ``SOPS_GCP_KMS_UNIVERSE_DOMAIN`` the universe domain (sops >= 3.13; the 3.11 binary ignores
  them).

gRPC errors read as Go's (``rpc error: code = PermissionDenied desc = ...``) behind sops'
prefixes.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from typing import Any, Mapping

from sops_enclave.errors import KeyMismatch, go_errno_text
from sops_enclave.keys.base import KeyUnavailable, require_sdk

__all__ = ["wrap", "unwrap", "KEY_TYPE"]

_RESOURCE_RE = re.compile(r"^projects/(?P<project>[^/]+)/locations/[^/]+/keyRings/[^/]+/"
                          r"cryptoKeys/[^/]+$")
_SCOPES = ["https://www.googleapis.com/auth/cloudkms",
           "https://www.googleapis.com/auth/cloud-platform"]
#: gRPC codes after which another key service or key may succeed where this one failed
_NOT_MINE = {"PERMISSION_DENIED", "NOT_FOUND", "INVALID_ARGUMENT", "FAILED_PRECONDITION"}


class _Fail(Exception):
    def __init__(self, text: str, mine: bool = False):
        super().__init__(text)
        self.mine = mine


def _go_code(name: str) -> str:
    return {"CANCELLED": "Canceled"}.get(name) or "".join(p.capitalize()
                                                          for p in name.split("_"))


def _credentials(env: Mapping[str, str]):
    """The google-auth credentials sops would use for this environment."""
    import google.auth
    import google.auth.exceptions
    import google.oauth2.credentials

    raw = env.get("GOOGLE_CREDENTIALS", "")
    if raw:
        if os.path.exists(raw):
            try:
                with open(raw, "rb") as f:
                    raw = f.read().decode("utf-8", "replace")
            except OSError as e:
                raise _Fail(f"credentials: failed to obtain credentials from "
                            f'"GOOGLE_CREDENTIALS": open {raw}: {go_errno_text(e)}') from None
        try:
            info = json.loads(raw)
            creds, _ = google.auth.load_credentials_from_dict(info, scopes=_SCOPES)
        except (ValueError, google.auth.exceptions.GoogleAuthError) as e:
            raise _Fail(f"credentials: {e}") from None
        return creds
    token = env.get("GOOGLE_OAUTH_ACCESS_TOKEN", "")
    if token:
        return google.oauth2.credentials.Credentials(token)
    adc = env.get("GOOGLE_APPLICATION_CREDENTIALS", "")
    try:
        well_known = os.path.join(env.get("CLOUDSDK_CONFIG") or os.path.join(
            env.get("HOME", ""), ".config", "gcloud"), "application_default_credentials.json")
        if adc:
            try:
                with open(adc, "rb"):
                    pass
            except OSError as e:
                raise _Fail(f"open {adc}: {go_errno_text(e)}") from None
            creds, _ = google.auth.load_credentials_from_file(adc, scopes=_SCOPES)
        elif (env.get("HOME") or env.get("CLOUDSDK_CONFIG")) and os.path.isfile(well_known):
            creds, _ = google.auth.load_credentials_from_file(well_known, scopes=_SCOPES)
        else:  # the SDK's own chain (this process's environment, then the metadata server)
            creds, _ = google.auth.default(scopes=_SCOPES)
    except google.auth.exceptions.DefaultCredentialsError:
        raise _Fail("credentials: could not find default credentials. See https://cloud."
                    "google.com/docs/authentication/external/set-up-adc for more "
                    "information") from None
    except google.auth.exceptions.GoogleAuthError as e:
        raise _Fail(f"credentials: {e}") from None
    return creds


def _client(resource_id: str, env: Mapping[str, str]):
    m = _RESOURCE_RE.match(resource_id)
    if not m:
        raise _Fail(f"no valid resource ID found in {_quote(resource_id)}")
    from google.api_core.client_options import ClientOptions
    from google.cloud import kms_v1

    opts: dict[str, Any] = {"quota_project_id": m.group("project")}
    endpoint = env.get("SOPS_GCP_KMS_ENDPOINT", "")
    if endpoint:
        opts["api_endpoint"] = endpoint
    elif env.get("SOPS_GCP_KMS_UNIVERSE_DOMAIN"):
        opts["universe_domain"] = env["SOPS_GCP_KMS_UNIVERSE_DOMAIN"]
    transport = "rest" if env.get("SOPS_GCP_KMS_CLIENT_TYPE", "").lower() == "rest" else "grpc"
    try:
        return kms_v1.KeyManagementServiceClient(credentials=_credentials(env),
                                                 client_options=ClientOptions(**opts),
                                                 transport=transport)
    except _Fail:
        raise
    except Exception as e:  # bad endpoint, universe mismatch, transport set-up
        raise _Fail(str(e)) from None


def _quote(s: str) -> str:
    from sops_enclave.goformat import go_quote

    return go_quote(s)


def _call_error(e: Exception) -> _Fail:
    code = getattr(e, "grpc_status_code", None)
    msg = getattr(e, "message", None) or str(e)
    if code is not None:
        return _Fail(f"rpc error: code = {_go_code(code.name)} desc = {msg}",
                     mine=code.name in _NOT_MINE)
    status = getattr(e, "code", None)
    if isinstance(status, int):  # the REST transport: an HTTP status
        return _Fail(f"googleapi: Error {status}: {msg}", mine=status in (400, 403, 404))
    return _Fail(str(e))


def _close(client) -> None:
    try:
        client.transport.close()
    except Exception:
        pass


def wrap(data_key: bytes, resource_id: str, env: Mapping[str, str]) -> str:
    require_sdk("google.cloud.kms_v1", "google-cloud-kms", "gcp")
    try:
        client = _client(resource_id, env)
    except _Fail as e:
        raise KeyUnavailable(f"cannot create GCP KMS service: {e}") from None
    try:
        resp = client.encrypt(request={"name": resource_id, "plaintext": data_key})
    except Exception as e:
        raise KeyUnavailable("failed to encrypt sops data key with GCP KMS key: "
                             f"{_call_error(e)}") from None
    finally:
        _close(client)
    return base64.b64encode(resp.ciphertext).decode()


def unwrap(enc: str, resource_id: str, env: Mapping[str, str]) -> bytes:
    require_sdk("google.cloud.kms_v1", "google-cloud-kms", "gcp")
    try:
        client = _client(resource_id, env)
    except _Fail as e:
        raise KeyUnavailable(f"cannot create GCP KMS service: {e}") from None
    try:
        try:
            blob = base64.b64decode(enc.encode("ascii", "surrogateescape"), validate=True)
        except (binascii.Error, ValueError):
            raise KeyUnavailable(f"illegal base64 data at input byte {_bad_b64_at(enc)}") \
                from None
        try:
            resp = client.decrypt(request={"name": resource_id, "ciphertext": blob})
        except Exception as e:
            f = _call_error(e)
            raise (KeyMismatch if f.mine else KeyUnavailable)(
                f"failed to decrypt sops data key with GCP KMS key: {f}") from None
    finally:
        _close(client)
    return bytes(resp.plaintext)


def _bad_b64_at(s: str) -> int:
    """The byte offset Go's ``base64.StdEncoding.DecodeString`` reports (near enough)."""
    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
    for i, ch in enumerate(s):
        if ch == "=":
            return i if (len(s) % 4 or i < len(s) - 2) else len(s)
        if ch not in alphabet:
            return i
    return len(s) - len(s) % 4


class GCPKMSKeyType:
    """GCP KMS keys (metadata ``gcp_kms``: ``resource_id``, ``created_at``, ``enc``)."""

    type = "gcp_kms"

    def wrap(self, entry, data_key: bytes, ctx) -> str:
        return wrap(data_key, entry.resource_id, ctx.env)

    def unwrap(self, entry, ctx) -> bytes:
        return unwrap(entry.enc, entry.resource_id, ctx.env)

    def from_arg(self, value: str, ctx, **_opts) -> list:
        """``--gcp-kms``/``SOPS_GCP_KMS_IDS``: comma-separated resource IDs, every space
        removed, empty items kept (sops' ``MasterKeysFromResourceIDString``)."""
        from sops_enclave.metadata import GCPKMSEntry

        if value == "":
            return []
        return [GCPKMSEntry(r.replace(" ", "")) for r in value.split(",")]


KEY_TYPE = GCPKMSKeyType()
