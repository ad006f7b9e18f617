"""HuaweiCloud KMS master keys through ``huaweicloudsdkkms`` (imported only when used).

As sops (``hckms/keysource.go``, SDK for Go v3):

* a key ID is ``region:key-uuid`` (``tr-west-1:1234abcd-...``), stored as given in ``key_id``;
* wrap: ``POST /v1.0/{project_id}/kms/encrypt-data`` with ``key_id`` = the UUID,
  ``plain_text`` = base64 of the data key and ``encryption_algorithm: SYMMETRIC_DEFAULT``;
  ``enc`` is the returned ``cipher_text`` as is;
* unwrap: ``POST /v1.0/{project_id}/kms/decrypt-data`` with ``cipher_text``, the algorithm and
  ``key_id``; the returned ``plain_text`` is base64-decoded;
* credentials: ``HUAWEICLOUD_SDK_AK``/``HUAWEICLOUD_SDK_SK`` (with
  ``HUAWEICLOUD_SDK_SECURITY_TOKEN``, ``HUAWEICLOUD_SDK_PROJECT_ID``) from the key's
  environment, else the SDK's own chain (profile ``~/.huaweicloud/credentials``, ECS metadata);
  without a project ID the SDK asks IAM for the region's project
  (``HUAWEICLOUD_SDK_IAM_ENDPOINT`` overrides the IAM address);
* the endpoint is the region's, or ``HUAWEICLOUD_SDK_REGION_KMS_<REGION>`` (the SDK's region
  override, e.g. ``HUAWEICLOUD_SDK_REGION_KMS_TR_WEST_1=https://...``); ``SSL_CERT_FILE``
  (as Go reads it) or ``REQUESTS_CA_BUNDLE`` names the CA bundle.

Requests are signed by the SDK (``SDK-HMAC-SHA256``). Service errors read as the Go SDK prints
them (``{"status_code":403,"request_id":...,"error_code":...,"error_message":...}``).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Mapping

from sops_enclave.errors import KeyMismatch, SopsError
from sops_enclave.keys.base import KeyUnavailable, require_sdk

__all__ = ["parse_key_id", "wrap", "unwrap", "KEY_TYPE"]


def _quote(s: str) -> str:
    from sops_enclave.goformat import go_quote

    return go_quote(s)


def parse_key_id(key_id: str) -> tuple[str, str]:
    """``(region, uuid)``, or :class:`SopsError` with sops' text."""
    k = key_id.strip()
    parts = k.split(":", 1)
    if len(parts) != 2:
        raise SopsError(f"invalid key ID format: expected 'region:key-uuid', got {_quote(k)}")
    region, uuid = parts[0].strip(), parts[1].strip()
    if not region:
        raise SopsError(f"region cannot be empty in key ID: {_quote(k)}")
    if not uuid:
        raise SopsError(f"key UUID cannot be empty in key ID: {_quote(k)}")
    return region, uuid


class _Fail(Exception):
    def __init__(self, text: str, mine: bool = False):
        super().__init__(text)
        self.mine = mine


def _credentials(env: Mapping[str, str]):
    from huaweicloudsdkcore.auth.credentials import BasicCredentials

    ak, sk = env.get("HUAWEICLOUD_SDK_AK", ""), env.get("HUAWEICLOUD_SDK_SK", "")
    if ak and sk:
        cred = BasicCredentials(ak, sk, env.get("HUAWEICLOUD_SDK_PROJECT_ID") or None)
        if env.get("HUAWEICLOUD_SDK_SECURITY_TOKEN"):
            cred = cred.with_security_token(env["HUAWEICLOUD_SDK_SECURITY_TOKEN"])
        if env.get("HUAWEICLOUD_SDK_IAM_ENDPOINT"):
            cred = cred.with_iam_endpoint(env["HUAWEICLOUD_SDK_IAM_ENDPOINT"])
        return cred
    from huaweicloudsdkcore.auth.provider import CredentialProviderChain

    try:
        return CredentialProviderChain.get_basic_credential_provider_chain().get_credentials()
    except Exception as e:
        raise _Fail(f"failed to get HuaweiCloud credentials: {e}") from None


def _region(region_id: str, env: Mapping[str, str]):
    from huaweicloudsdkcore.region.region import Region
    from huaweicloudsdkkms.v2.region.kms_region import KmsRegion

    override = env.get("HUAWEICLOUD_SDK_REGION_KMS_" + region_id.replace("-", "_").upper())
    if override:
        return Region(region_id, *override.split(","))
    try:
        return KmsRegion.value_of(region_id)
    except KeyError as e:
        raise _Fail(f"invalid region {_quote(region_id)}: {e.args[0] if e.args else e}") \
            from None


def _client(region_id: str, env: Mapping[str, str]):
    from huaweicloudsdkkms.v2 import KmsClient

    from huaweicloudsdkcore.http.http_config import HttpConfig

    cred = _credentials(env)
    region = _region(region_id, env)
    config = HttpConfig.get_default_config()
    ca = env.get("SSL_CERT_FILE") or env.get("REQUESTS_CA_BUNDLE")
    if ca:
        config.ssl_ca_cert = ca
    try:
        return KmsClient.new_builder().with_http_config(config).with_credentials(cred) \
            .with_region(region).build()
    except Exception as e:  # the project ID lookup, a bad endpoint
        raise _Fail(_sdk_error(e).args[0]) from None


def _sdk_error(e: Exception) -> _Fail:
    status = getattr(e, "status_code", None)
    if isinstance(status, int):
        body = {"status_code": status, "request_id": getattr(e, "request_id", "") or "",
                "error_code": getattr(e, "error_code", "") or "",
                "error_message": getattr(e, "error_msg", "") or "",
                "encoded_authorization_message": getattr(e, "encoded_auth_msg", "") or "",
                "details": None}
        # the Go SDK's ServiceResponseError: compact JSON and a newline
        return _Fail(json.dumps(body, separators=(",", ":")) + "\n",
                     mine=status in (400, 403, 404))
    msg = getattr(e, "error_msg", None) or str(e)
    return _Fail(msg)


def wrap(data_key: bytes, key_id: str, env: Mapping[str, str]) -> str:
    require_sdk("huaweicloudsdkkms.v2", "huaweicloudsdkkms", "huawei")
    from huaweicloudsdkkms.v2 import EncryptDataRequest, EncryptDataRequestBody

    region, uuid = parse_key_id(key_id)
    try:
        client = _client(region, env)
    except _Fail as e:
        raise KeyUnavailable(f"failed to create HuaweiCloud KMS client: {e}") from None
    body = EncryptDataRequestBody(key_id=uuid, plain_text=base64.b64encode(data_key).decode(),
                                  encryption_algorithm="SYMMETRIC_DEFAULT")
    try:
        resp = client.encrypt_data(EncryptDataRequest(body=body))
    except Exception as e:
        raise KeyUnavailable(f"failed to encrypt sops data key with HuaweiCloud KMS: "
                             f"{_sdk_error(e)}") from None
    if resp.cipher_text is None:
        raise KeyUnavailable("encryption response missing ciphertext")
    return resp.cipher_text


def unwrap(enc: str, key_id: str, env: Mapping[str, str]) -> bytes:
    require_sdk("huaweicloudsdkkms.v2", "huaweicloudsdkkms", "huawei")
    from huaweicloudsdkkms.v2 import DecryptDataRequest, DecryptDataRequestBody

    try:
        region, uuid = parse_key_id(key_id)
    except SopsError as e:
        raise KeyMismatch(e.message) from None
    try:
        client = _client(region, env)
    except _Fail as e:
        raise KeyUnavailable(f"failed to create HuaweiCloud KMS client: {e}") from None
    body = DecryptDataRequestBody(cipher_text=enc, encryption_algorithm="SYMMETRIC_DEFAULT",
                                  key_id=uuid)
    try:
        resp = client.decrypt_data(DecryptDataRequest(body=body))
    except Exception as e:
        f = _sdk_error(e)
        raise (KeyMismatch if f.mine else KeyUnavailable)(
            f"failed to decrypt sops data key with HuaweiCloud KMS: {f}") from None
    if resp.plain_text is None:
        raise KeyUnavailable("decryption response missing plaintext")
    try:
        return base64.b64decode(resp.plain_text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise KeyUnavailable(f"failed to base64 decode decrypted data key: {e}") from None


class HCKMSKeyType:
    """HuaweiCloud KMS keys (metadata ``hckms``: ``key_id``, ``created_at``, ``enc``)."""

    type = "hckms"

    def wrap(self, entry, data_key: bytes, ctx) -> str:
        return wrap(data_key, entry.key_id, ctx.env)

    def unwrap(self, entry, ctx) -> bytes:
        return unwrap(entry.enc, entry.key_id, ctx.env)

    def from_arg(self, value: str, ctx, **_opts) -> list:
        """``--hckms``/``SOPS_HUAWEICLOUD_KMS_IDS``: comma-separated ``region:uuid`` IDs,
        trimmed, empty items skipped, each checked (``NewMasterKeyFromKeyIDString``)."""
        from sops_enclave.metadata import HCKMSEntry

        out = []
        for s in value.split(","):
            s = s.strip()
            if s:
                parse_key_id(s)
                out.append(HCKMSEntry(s))
        return out


KEY_TYPE = HCKMSKeyType()
