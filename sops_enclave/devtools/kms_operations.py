"""DEV STAND-IN, NOT AWS: every KMS (TrentService) operation and how it is authorized.

One :class:`Operation` per operation of the KMS API (botocore's ``kms`` service model; a
test checks that the table and the model list the same operations). ``kind`` says how the
dev KMS (:mod:`.kms_attested`) authorizes it:

``key``
    ``kms:<Operation>`` on the KMS key named by ``KeyId`` (the key policy, then grants).
    For ``ReplicateKey`` and ``UpdatePrimaryRegion`` KMS also checks the key or the IAM
    policies in the other region; the dev KMS checks only ``KeyId``'s key.
``decrypt``
    ``kms:Decrypt`` on the key named by ``KeyId`` when given (before), and on the key that
    moto reports it used (after; the ciphertext names the key).
``reencrypt``
    ``kms:ReEncryptFrom`` on the source key (``SourceKeyId`` before when given, the key moto
    reports after) and ``kms:ReEncryptTo`` on ``DestinationKeyId`` (before).
``create-alias`` / ``update-alias`` / ``delete-alias``
    ``kms:CreateAlias`` on ``TargetKeyId``; ``kms:UpdateAlias`` on the alias's current key
    and on ``TargetKeyId``; ``kms:DeleteAlias`` on the alias's current key. (KMS also
    checks the alias resource against IAM policies, which the dev KMS does not model.)
``retire-grant``
    Only the grant's retiring principal, or its grantee when the grant lists
    ``RetireGrant``, may retire it.
``iam``
    No KMS key is involved (``CreateKey``, ``ListKeys``, ``GenerateRandom``, custom key
    stores, ...): KMS checks only IAM policies, which the dev KMS does not model, so every
    known principal may call these.

``alias_ok``: ``KeyId`` may name an alias (KMS accepts aliases only in the cryptographic
operations, ``DescribeKey`` and ``GetPublicKey``). ``ec_params``: request fields whose
encryption context feeds ``kms:EncryptionContext:*``/``kms:EncryptionContextKeys`` and grant
constraints. ``recipient``: KMS accepts ``Recipient`` (an attestation document) here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Operation", "OPERATIONS", "GRANT_OPERATIONS", "CRYPTO_ALIAS_OPERATIONS"]


@dataclass(frozen=True)
class Operation:
    name: str
    kind: str = "key"
    alias_ok: bool = False
    ec_params: tuple[str, ...] = ()
    recipient: bool = False

    @property
    def action(self) -> str:
        return f"kms:{self.name}"


#: The operations a grant may list (``GrantOperation`` in the KMS API).
GRANT_OPERATIONS = frozenset({
    "Decrypt", "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "ReEncryptFrom",
    "ReEncryptTo", "Sign", "Verify", "GetPublicKey", "CreateGrant", "RetireGrant", "DescribeKey",
    "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext", "GenerateMac", "VerifyMac",
    "DeriveSharedSecret", "Encapsulate", "Decapsulate"})

_EC = ("EncryptionContext",)

_TABLE = [
    # cryptographic operations (aliases accepted)
    Operation("Decrypt", "decrypt", alias_ok=True, ec_params=_EC, recipient=True),
    Operation("Encrypt", alias_ok=True, ec_params=_EC),
    Operation("ReEncrypt", "reencrypt", alias_ok=True),
    Operation("GenerateDataKey", alias_ok=True, ec_params=_EC, recipient=True),
    Operation("GenerateDataKeyWithoutPlaintext", alias_ok=True, ec_params=_EC),
    Operation("GenerateDataKeyPair", alias_ok=True, ec_params=_EC, recipient=True),
    Operation("GenerateDataKeyPairWithoutPlaintext", alias_ok=True, ec_params=_EC),
    Operation("GenerateMac", alias_ok=True),
    Operation("VerifyMac", alias_ok=True),
    Operation("Sign", alias_ok=True),
    Operation("Verify", alias_ok=True),
    Operation("GetPublicKey", alias_ok=True),
    Operation("DeriveSharedSecret", alias_ok=True, recipient=True),
    Operation("Encapsulate", alias_ok=True),
    Operation("Decapsulate", alias_ok=True),
    Operation("DescribeKey", alias_ok=True),
    # grants
    Operation("CreateGrant"),
    Operation("ListGrants"),
    Operation("RevokeGrant"),
    Operation("RetireGrant", "retire-grant"),
    Operation("ListRetirableGrants", "iam"),
    # key policy and key management
    Operation("GetKeyPolicy"),
    Operation("PutKeyPolicy"),
    Operation("ListKeyPolicies"),
    Operation("EnableKey"),
    Operation("DisableKey"),
    Operation("ScheduleKeyDeletion"),
    Operation("CancelKeyDeletion"),
    Operation("EnableKeyRotation"),
    Operation("DisableKeyRotation"),
    Operation("GetKeyRotationStatus"),
    Operation("ListKeyRotations"),
    Operation("RotateKeyOnDemand"),
    Operation("UpdateKeyDescription"),
    Operation("TagResource"),
    Operation("UntagResource"),
    Operation("ListResourceTags"),
    Operation("GetKeyLastUsage"),
    Operation("ReplicateKey"),
    Operation("UpdatePrimaryRegion"),
    Operation("GetParametersForImport"),
    Operation("ImportKeyMaterial"),
    Operation("DeleteImportedKeyMaterial"),
    # aliases
    Operation("CreateAlias", "create-alias"),
    Operation("UpdateAlias", "update-alias"),
    Operation("DeleteAlias", "delete-alias"),
    Operation("ListAliases", "iam"),
    # no key involved
    Operation("CreateKey", "iam"),
    Operation("ListKeys", "iam"),
    Operation("GenerateRandom", "iam", recipient=True),
    Operation("CreateCustomKeyStore", "iam"),
    Operation("ConnectCustomKeyStore", "iam"),
    Operation("DisconnectCustomKeyStore", "iam"),
    Operation("DeleteCustomKeyStore", "iam"),
    Operation("DescribeCustomKeyStores", "iam"),
    Operation("UpdateCustomKeyStore", "iam"),
]

OPERATIONS: dict[str, Operation] = {op.name: op for op in _TABLE}
CRYPTO_ALIAS_OPERATIONS = frozenset(op.name for op in _TABLE if op.alias_ok)
assert len(OPERATIONS) == len(_TABLE)
