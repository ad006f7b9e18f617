"""Metadata key entries <-> the protocol's ``Key`` message (identifiers only, never secrets)."""

from __future__ import annotations

from sops_enclave.metadata import (ENTRY_TYPES, AgeEntry, KeyEntry, KMSEntry, OtherEntry,
                                   PGPEntry, typed_entry)

__all__ = ["key_from_entry", "entry_from_key", "describe", "UnsupportedKey",
           "OTHER_TYPES"]

#: metadata type of an id-field entry -> (oneof field, message class, its fields). The
#: message fields have the same names as the metadata fields (sops stores.go / keyservice.proto).
OTHER_TYPES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "gcp_kms": ("gcp_kms_key", "GcpKmsKey", ("resource_id",)),
    "azure_kv": ("azure_keyvault_key", "AzureKeyVaultKey", ("vault_url", "name", "version")),
    "hc_vault": ("vault_key", "VaultKey", ("vault_address", "engine_path", "key_name")),
    "hckms": ("hckms_key", "HckmsKey", ("key_id",)),
}
_BY_ONEOF = {oneof: (typ, names) for typ, (oneof, _cls, names) in OTHER_TYPES.items()}


class UnsupportedKey(Exception):
    """The key cannot be expressed in (or served from) the protocol."""


def key_from_entry(entry: KeyEntry, pb):
    """The ``Key`` message sops would send for this metadata entry (``pb`` is keyservice_pb2)."""
    if isinstance(entry, AgeEntry):
        return pb.Key(age_key=pb.AgeKey(recipient=entry.recipient))
    if isinstance(entry, PGPEntry):
        return pb.Key(pgp_key=pb.PgpKey(fingerprint=entry.fp))
    if isinstance(entry, KMSEntry):
        return pb.Key(kms_key=pb.KmsKey(arn=entry.arn, role=entry.role,
                                        context=dict(entry.context),
                                        aws_profile=entry.aws_profile))
    entry = typed_entry(entry)
    if not isinstance(entry, OtherEntry) and entry.type in OTHER_TYPES:
        field, cls_name, names = OTHER_TYPES[entry.type]
        vals = {n: str(getattr(entry, n) or "") for n in names}
        return pb.Key(**{field: getattr(pb, cls_name)(**vals)})
    raise UnsupportedKey(f"{getattr(entry, 'type', type(entry).__name__)} keys cannot be sent "
                         f"to a key service")


def entry_from_key(key, enc: str = "") -> KeyEntry:
    """The metadata entry for a ``Key`` message, for every key type of the protocol.

    Raises :class:`UnsupportedKey` with sops' message for an empty or unknown key.
    """
    which = key.WhichOneof("key_type")
    if which == "age_key":
        return AgeEntry(key.age_key.recipient, enc)
    if which == "pgp_key":
        return PGPEntry(key.pgp_key.fingerprint, enc)
    if which == "kms_key":
        k = key.kms_key
        return KMSEntry(k.arn, k.role, tuple(sorted(k.context.items())), k.aws_profile, enc)
    if which in _BY_ONEOF:
        typ, names = _BY_ONEOF[which]
        msg = getattr(key, which)
        return ENTRY_TYPES[typ](*[getattr(msg, n) for n in names], enc=enc)  # type: ignore[call-arg]
    raise UnsupportedKey("Unknown key type")


def describe(key) -> str:
    """A one-line, secret-free name of the key for logs and prompts."""
    which = key.WhichOneof("key_type")
    if which == "age_key":
        return f"age key with recipient {key.age_key.recipient}"
    if which == "pgp_key":
        return f"PGP key with fingerprint {key.pgp_key.fingerprint}"
    if which == "kms_key":
        return f"AWS KMS key with ARN {key.kms_key.arn}"
    if which == "gcp_kms_key":
        return f"GCP KMS key with resource ID {key.gcp_kms_key.resource_id}"
    if which == "azure_keyvault_key":
        k = key.azure_keyvault_key
        return f"Azure Key Vault key with URL {k.vault_url}/keys/{k.name}/{k.version}"
    if which == "vault_key":
        k = key.vault_key
        return f"HashiCorp Vault key with URI {k.vault_address}/v1/{k.engine_path}/keys/{k.key_name}"
    if which == "hckms_key":
        return f"HuaweiCloud KMS key with ID {key.hckms_key.key_id}"
    return "unknown key type"
