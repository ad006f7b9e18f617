""".sops.yaml: finding it, reading it the way sops 3.11 (go-yaml v3) does, picking a creation rule.

* :func:`find_config` / :func:`lookup_config` walk up from a directory (at most 100 levels)
  to the first ``.sops.yaml``; a ``.sops.yml`` seen on the way is ignored with sops' warning.
* :func:`load_config` decodes the file into sops' Go structs with go-yaml v3's rules:
  unknown keys are ignored, a value of the wrong type is an ``unmarshal errors`` message with
  the line, ``null`` leaves the default, ``null`` items of typed lists are dropped,
  duplicate mapping keys are an error, ``<<`` merges only fill keys not set explicitly.
* :meth:`Config.creation_rule_for` picks the rule for a target path and builds its key
  groups, like sops' ``LoadCreationRuleForFile`` (errors about keys only surface for the
  rule that matched).
* Pure helpers for the CLI: :func:`parse_kms_arg`, :func:`parse_encryption_context`,
  :func:`parse_csv_keys`, :func:`decryption_order`, :func:`validate_age_recipient`.

Errors are :class:`~sops_enclave.errors.ConfigError` (exit 1) with sops' wording, except
:class:`InvalidEncryptionContext` (exit 6) and :class:`DuplicateDecryptionKeyType` (exit 112).

The package holds one module per job: :mod:`.lookup` (finding the file), :mod:`.decode` (the
go-yaml decoder), :mod:`.rules` (the loaded config and rule matching) and :mod:`.keyspecs` (key
specifications and the CLI's key-flag parsers). The names below are re-exported here.
"""

from __future__ import annotations

from sops_enclave.config.keyspecs import (AgeKeySpec, KeySpec, KMSKeySpec, PGPKeySpec,
                                          UnsupportedKeySpec, parse_csv_keys,
                                          parse_encryption_context, parse_kms_arg,
                                          validate_age_recipient)
from sops_enclave.config.lookup import (ALTERNATE_CONFIG_NAME, CONFIG_FILE_NAME, MAX_DEPTH,
                                        ConfigLookup, ConfigWarning, find_config, lookup_config)
from sops_enclave.config.rules import (CRYPT_RULE_FIELDS, DEFAULT_DECRYPTION_ORDER, Config,
                                       CreationRule, StoresConfig, load_config)
from sops_enclave.errors import ConfigError
from sops_enclave.keys.groups import parse_decryption_order as decryption_order

__all__ = [
    "CONFIG_FILE_NAME", "ALTERNATE_CONFIG_NAME", "MAX_DEPTH", "CRYPT_RULE_FIELDS",
    "DEFAULT_DECRYPTION_ORDER", "ConfigWarning", "ConfigLookup", "lookup_config", "find_config",
    "load_config", "Config", "StoresConfig", "CreationRule", "KeySpec", "AgeKeySpec",
    "PGPKeySpec", "KMSKeySpec", "UnsupportedKeySpec", "parse_kms_arg",
    "parse_encryption_context", "parse_csv_keys", "decryption_order", "validate_age_recipient",
    "ConfigError",
]
