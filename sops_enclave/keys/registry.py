"""The master key types, by their ``sops`` metadata list name.

Each module named here has a ``KEY_TYPE`` object implementing
:class:`~sops_enclave.keys.base.MasterKeyType`. Modules are imported on first use, so decrypting
an age file loads the age module only (and no cloud SDK).
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping

from sops_enclave.errors import SopsError
from sops_enclave.keys.base import KeyContext, MasterKeyType

__all__ = ["KEY_MODULES", "CLI_FLAGS", "CONFIG_TYPES", "key_type", "known", "entries_from_flags",
           "entry_from_spec"]

#: metadata list name -> module with its ``KEY_TYPE``
KEY_MODULES: dict[str, str] = {
    "age": "sops_enclave.keys.age",
    "pgp": "sops_enclave.keys.pgp",
    "kms": "sops_enclave.keys.kms",
    "gcp_kms": "sops_enclave.keys.gcpkms",
    "azure_kv": "sops_enclave.keys.azkv",
    "hc_vault": "sops_enclave.keys.hcvault",
    "hckms": "sops_enclave.keys.hckms",
}

#: (metadata name, command-line flag, environment variable), in the order sops 3.11 puts the
#: keys of its flags into the group (``cmd/sops/main.go: keyGroups``).
CLI_FLAGS: tuple[tuple[str, str, str], ...] = (
    ("kms", "kms", "SOPS_KMS_ARN"),
    ("gcp_kms", "gcp-kms", "SOPS_GCP_KMS_IDS"),
    ("hckms", "hckms", "SOPS_HUAWEICLOUD_KMS_IDS"),
    ("azure_kv", "azure-kv", "SOPS_AZURE_KEYVAULT_URLS"),
    ("pgp", "pgp", "SOPS_PGP_FP"),
    ("hc_vault", "hc-vault-transit", "SOPS_VAULT_URIS"),
    ("age", "age", "SOPS_AGE_RECIPIENTS"),
)

_loaded: dict[str, MasterKeyType] = {}


def known(name: str) -> bool:
    return name in KEY_MODULES


def key_type(name: str) -> MasterKeyType:
    """The key type for a metadata list name (KeyError for an unknown one)."""
    kt = _loaded.get(name)
    if kt is None:
        kt = importlib.import_module(KEY_MODULES[name]).KEY_TYPE
        _loaded[name] = kt
    return kt


def entries_from_flags(values: Mapping[str, str | None], ctx: KeyContext, **opts: Any) -> list:
    """One group from command-line values (``{metadata name: comma-separated value}``), in
    sops' flag order. Empty values give no keys. ``opts`` go to every ``from_arg``
    (``kms_context``, ``aws_profile``)."""
    out: list = []
    for name, _flag, _env in CLI_FLAGS:
        v = values.get(name)
        if v:
            out += key_type(name).from_arg(v, ctx, **opts)
    return out


#: ``.sops.yaml`` key names (the config module's spec types) -> metadata names
CONFIG_TYPES = {"gcp_kms": "gcp_kms", "azure_keyvault": "azure_kv",
                "hc_vault_transit_uri": "hc_vault", "hckms": "hckms"}


def entry_from_spec(spec: Any, env: Mapping[str, str]):
    """The metadata entry for one key of a ``.sops.yaml`` creation rule (a
    :mod:`sops_enclave.config` key spec). An Azure key without a version gets the current
    one from the vault, as sops does when it reads the config."""
    from sops_enclave.metadata import AgeEntry, KMSEntry, PGPEntry

    kind = type(spec).__name__
    if kind == "AgeKeySpec":
        return AgeEntry(spec.recipient)
    if kind == "PGPKeySpec":
        return PGPEntry(spec.fingerprint)
    if kind == "KMSKeySpec":
        return KMSEntry(spec.arn, spec.role, tuple(spec.context), spec.aws_profile)
    name = CONFIG_TYPES.get(getattr(spec, "type", ""))
    if name is None:
        raise SopsError(f"sops-enclave cannot encrypt with {getattr(spec, 'type', kind)} keys")
    got = key_type(name).from_arg(spec.value, KeyContext(env))
    if len(got) != 1:
        raise SopsError(f"invalid {name} key in the config: {spec.value!r}")
    return got[0]
