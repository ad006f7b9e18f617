"""AWS KMS master keys through boto3 (imported only when a KMS key is used).

The region comes from the ARN; ``role`` is assumed through STS with the session name
``sops@<hostname>``; ``aws_profile`` picks the shared-config profile. boto3 honours
``AWS_ENDPOINT_URL`` and ``AWS_ENDPOINT_URL_KMS``, so a local KMS works unchanged.

Clients are cached per (region, role, profile), but never their credentials: boto3's own
credential chain refreshes what can be refreshed (SSO, instance roles, profile roles), and an
assumed ``role`` is held as botocore ``RefreshableCredentials`` that call AssumeRole again
before the session expires. A long-running ``keyservice`` keeps working past the STS lifetime.
"""

from __future__ import annotations

import base64
import re
import socket
import threading

from sops_enclave.errors import KeyMismatch, SopsError
from sops_enclave.keys.base import KeyUnavailable

__all__ = ["wrap", "unwrap", "region_of", "role_credentials", "KEY_TYPE"]

_ARN_RE = re.compile(r"^arn:aws[\w-]*:kms:(.+?):[0-9]+:(key|alias)/.+$")
_clients: dict[tuple[str, str, str], object] = {}
_lock = threading.Lock()

#: KMS error codes that mean "this process may not use this key for this ciphertext" (the next
#: key service or key may); anything else (throttling, network, credentials, KMS internal
#: errors) means the key is unavailable right now.
_NOT_MINE = {"AccessDeniedException", "IncorrectKeyException", "InvalidCiphertextException",
             "NotFoundException", "DisabledException", "InvalidKeyUsageException",
             "KMSInvalidStateException", "InvalidGrantTokenException"}


def region_of(arn: str) -> str:
    m = _ARN_RE.match(arn)
    if not m:
        raise SopsError(f"No valid ARN found in {arn!r}")
    return m.group(1)


def _session_name() -> str:
    return ("sops@" + re.sub(r"[^\w+=,.@-]", "", socket.gethostname()))[:64]


def role_credentials(sts_client, role: str):
    """botocore ``RefreshableCredentials`` for ``role``: AssumeRole now, and again whenever
    botocore finds them within its refresh window of the expiry."""
    from botocore.credentials import RefreshableCredentials

    def fetch() -> dict:
        c = sts_client.assume_role(RoleArn=role, RoleSessionName=_session_name())["Credentials"]
        exp = c["Expiration"]
        return {"access_key": c["AccessKeyId"], "secret_key": c["SecretAccessKey"],
                "token": c["SessionToken"],
                "expiry_time": exp.isoformat() if hasattr(exp, "isoformat") else str(exp)}

    return RefreshableCredentials.create_from_metadata(metadata=fetch(), refresh_using=fetch,
                                                       method="sts-assume-role")


def _client(arn: str, role: str, profile: str):
    key = (region_of(arn), role, profile)
    with _lock:
        c = _clients.get(key)
        if c is not None:
            return c
        import boto3  # lazy: decrypting an age file never imports boto3
        import botocore.session

        session = boto3.Session(profile_name=profile or None, region_name=key[0])
        if role:
            bc = botocore.session.Session(profile=profile or None)
            bc._credentials = role_credentials(session.client("sts"), role)
            session = boto3.Session(botocore_session=bc, region_name=key[0])
        c = session.client("kms")
        _clients[key] = c
        return c


def _classify(e: Exception) -> type[Exception]:
    resp = getattr(e, "response", None)
    code = resp.get("Error", {}).get("Code", "") if isinstance(resp, dict) else ""
    return KeyMismatch if code in _NOT_MINE else KeyUnavailable


def wrap(data_key: bytes, arn: str, role: str = "", context: dict | None = None,
         profile: str = "") -> str:
    try:
        r = _client(arn, role, profile).encrypt(KeyId=arn, Plaintext=data_key,
                                                EncryptionContext=context or {})
    except SopsError:
        raise
    except Exception as e:
        raise KeyUnavailable(f"failed to encrypt sops data key with AWS KMS key {arn}: "
                             f"{e}") from None
    return base64.b64encode(r["CiphertextBlob"]).decode()


def unwrap(enc: str, arn: str, role: str = "", context: dict | None = None,
           profile: str = "") -> bytes:
    try:
        blob = base64.b64decode(enc)
        r = _client(arn, role, profile).decrypt(CiphertextBlob=blob, EncryptionContext=context or {})
    except Exception as e:
        cls = KeyMismatch if isinstance(e, SopsError) else _classify(e)
        raise cls(f"failed to decrypt sops data key with AWS KMS: {e}") from None
    return r["Plaintext"]


class KMSKeyType:
    """AWS KMS keys (metadata ``kms``: ``arn``, ``role``, ``context``, ``created_at``, ``enc``,
    ``aws_profile``)."""

    type = "kms"

    def wrap(self, entry, data_key: bytes, ctx) -> str:
        return wrap(data_key, entry.arn, entry.role, dict(entry.context), entry.aws_profile)

    def unwrap(self, entry, ctx) -> bytes:
        return unwrap(entry.enc, entry.arn, entry.role, dict(entry.context), entry.aws_profile)

    def from_arg(self, value: str, ctx, *, kms_context=None, aws_profile: str = "",
                 **_opts) -> list:
        """``--kms``/``SOPS_KMS_ARN``: ``ARN[+ROLE_ARN],...`` with the encryption context and
        profile of the other flags (sops' ``MasterKeysFromArnString``)."""
        from sops_enclave.config import parse_kms_arg
        from sops_enclave.metadata import KMSEntry

        return [KMSEntry(s.arn, s.role, tuple(s.context), s.aws_profile)
                for s in parse_kms_arg(value, kms_context or {}, aws_profile)]


KEY_TYPE = KMSKeyType()
