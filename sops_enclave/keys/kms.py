"""AWS KMS master keys through boto3 (imported only when a KMS key is used).

The region comes from the ARN; ``role`` is assumed through STS with the session name
``sops@<hostname>``; ``aws_profile`` picks the shared-config profile. boto3 honours
``AWS_ENDPOINT_URL`` and ``AWS_ENDPOINT_URL_KMS``, so a local KMS works unchanged.
"""

from __future__ import annotations

import base64
import re
import socket

from sops_enclave.errors import KeyMismatch, SopsError

__all__ = ["wrap", "unwrap", "region_of"]

_ARN_RE = re.compile(r"^arn:aws[\w-]*:kms:(.+?):[0-9]+:(key|alias)/.+$")
_clients: dict[tuple[str, str, str], object] = {}


def region_of(arn: str) -> str:
    m = _ARN_RE.match(arn)
    if not m:
        raise SopsError(f"No valid ARN found in {arn!r}")
    return m.group(1)


def _client(arn: str, role: str, profile: str):
    key = (region_of(arn), role, profile)
    c = _clients.get(key)
    if c is not None:
        return c
    import boto3  # lazy: decrypting an age file never imports boto3
    session = boto3.Session(profile_name=profile or None, region_name=key[0])
    if role:
        name = "sops@" + re.sub(r"[^\w+=,.@-]", "", socket.gethostname())
        creds = session.client("sts").assume_role(RoleArn=role, RoleSessionName=name[:64])["Credentials"]
        session = boto3.Session(aws_access_key_id=creds["AccessKeyId"],
                                aws_secret_access_key=creds["SecretAccessKey"],
                                aws_session_token=creds["SessionToken"], region_name=key[0])
    c = session.client("kms")
    _clients[key] = c
    return c


def wrap(data_key: bytes, arn: str, role: str = "", context: dict | None = None,
         profile: str = "") -> str:
    try:
        r = _client(arn, role, profile).encrypt(KeyId=arn, Plaintext=data_key,
                                                EncryptionContext=context or {})
    except SopsError:
        raise
    except Exception as e:
        raise SopsError(f"failed to encrypt sops data key with AWS KMS key {arn}: {e}") from None
    return base64.b64encode(r["CiphertextBlob"]).decode()


def unwrap(enc: str, arn: str, role: str = "", context: dict | None = None,
           profile: str = "") -> bytes:
    try:
        blob = base64.b64decode(enc)
        r = _client(arn, role, profile).decrypt(CiphertextBlob=blob, EncryptionContext=context or {})
    except Exception as e:
        raise KeyMismatch(f"failed to decrypt sops data key with AWS KMS: {e}") from None
    return r["Plaintext"]
