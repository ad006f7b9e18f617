"""A loaded ``.sops.yaml`` (:class:`Config`) and picking its creation rule for a file.

:meth:`Config.creation_rule_for` picks the rule for a target path and builds its key groups,
like sops' ``LoadCreationRuleForFile`` (errors about keys only surface for the rule that
matched).
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

from sops_enclave import goregex
from sops_enclave.config.decode import CRYPT_RULE_FIELDS, decode_file, go_type
from sops_enclave.config.keyspecs import (AgeKeySpec, KeySpec, KMSKeySpec, PGPKeySpec,
                                          UnsupportedKeySpec, age_keys, azure_keys,
                                          context_tuple, hckms_key, parse_csv_keys,
                                          parse_kms_arg)
from sops_enclave.errors import ConfigError, SopsError
from sops_enclave.goformat import go_quote
from sops_enclave.record import field, record

__all__ = ["CRYPT_RULE_FIELDS", "DEFAULT_DECRYPTION_ORDER", "StoresConfig", "CreationRule",
           "Config", "load_config"]

DEFAULT_DECRYPTION_ORDER = ("age", "pgp")
_CRYPT_CONFLICT = ("error loading config: cannot use more than one of encrypted_suffix, "
                   "unencrypted_suffix, encrypted_regex, unencrypted_regex, "
                   "encrypted_comment_regex, or unencrypted_comment_regex for the same rule")


@record(frozen=True)
class StoresConfig:
    """``stores:``. Defaults: ``yaml_indent`` 4, ``json_indent``/``json_binary_indent`` -1 (tab)."""

    yaml_indent: int = 4
    json_indent: int = -1
    json_binary_indent: int = -1


@record
class CreationRule:
    """The matching rule, resolved: key groups, threshold, crypt rule, mac_only_encrypted."""

    key_groups: list[list[KeySpec]] = field(default_factory=list)
    shamir_threshold: int = 0
    crypt_rule: tuple[str, str] | None = None
    mac_only_encrypted: bool = False
    path_regex: str = ""


def _key_field(value: Any, field_name: str, key_type: str) -> list[str]:
    """sops' ``parseKeyField`` wrapped by ``getKeysWithValidation`` (its doubled prefix too)."""
    def fail(msg: str) -> ConfigError:
        return ConfigError(f"invalid {key_type} key configuration: invalid {field_name} key "
                           f"configuration: {msg}")

    if value is None:
        return []
    if isinstance(value, str):
        return [k.strip() for k in value.split(",") if k.strip()]
    if isinstance(value, list):
        out = []
        for item in value:
            if not isinstance(item, str):
                raise fail(f"expected string in list, got {go_type(item)}")
            out.append(item)
        return out
    raise fail(f"expected string, []string, or nil, got {go_type(value)}")


def _kms_context(raw: dict[str, str | None] | None) -> tuple[tuple[str, str], ...]:
    if not raw:
        return ()
    for k, v in raw.items():
        if v is None:
            # sops dereferences the nil pointer and crashes; refuse it with a message instead
            raise ConfigError(f"error loading config: KMS context value for {go_quote(k)} is null")
    return context_tuple(raw)  # type: ignore[arg-type]


def _vault_value(uri: str) -> UnsupportedKeySpec:
    return UnsupportedKeySpec("hc_vault_transit_uri", uri)


def _dedup(group: list[KeySpec]) -> list[KeySpec]:
    seen: set[tuple[str, str]] = set()
    out = []
    for k in group:
        ident = (type(k).__name__ + "/" + getattr(k, "type", ""), k.to_string())
        if ident in seen:
            continue
        seen.add(ident)
        out.append(k)
    return out


def _extract_group(g: dict[str, Any]) -> list[KeySpec]:
    """sops' ``extractMasterKeys``: merge, age, pgp, kms, gcp_kms, hckms, azure, vault; dedup."""
    group: list[KeySpec] = []
    for sub in g.get("merge") or []:
        group.extend(_extract_group(sub))
    for item in g.get("age") or []:
        group.extend(_age_keys_cfg(item))
    for fp in g.get("pgp") or []:
        group.append(PGPKeySpec(fp.replace(" ", "")))
    for k in g.get("kms") or []:
        group.append(KMSKeySpec(k.get("arn", ""), k.get("role", ""),
                                _kms_context(k.get("context")), k.get("aws_profile", "")))
    for k in g.get("gcp_kms") or []:
        group.append(UnsupportedKeySpec("gcp_kms", k.get("resource_id", "").replace(" ", "")))
    for k in g.get("hckms") or []:
        group.append(hckms_key(k.get("key_id", "")))
    for k in g.get("azure_keyvault") or []:
        url = f"{k.get('vaultUrl', '')}/keys/{k.get('key', '')}/{k.get('version', '')}"
        group.append(UnsupportedKeySpec("azure_keyvault", url))
    for uri in g.get("hc_vault") or []:
        group.append(_vault_value(uri))
    return _dedup(group)


def _age_keys_cfg(s: str) -> list[AgeKeySpec]:
    try:
        return age_keys(s)
    except SopsError as e:
        raise ConfigError(e.message) from None


def _rule_groups(r: dict[str, Any], kms_context: Mapping[str, str] | None) -> list[list[KeySpec]]:
    """sops' ``getKeyGroupsFromCreationRule``."""
    key_groups = r.get("key_groups") or []
    if key_groups:
        return [_extract_group(g) for g in key_groups]
    group: list[KeySpec] = []
    age = _key_field(r.get("age"), "age", "age")
    if age:
        group.extend(_age_keys_cfg(",".join(age)))
    pgp = _key_field(r.get("pgp"), "pgp", "pgp")
    group.extend(PGPKeySpec(fp) for fp in parse_csv_keys(",".join(pgp), "pgp"))
    kms = _key_field(r.get("kms"), "kms", "kms")
    group.extend(parse_kms_arg(",".join(kms), kms_context, r.get("aws_profile", "")))
    gcp = _key_field(r.get("gcp_kms"), "gcp_kms", "gcpkms")
    group.extend(UnsupportedKeySpec("gcp_kms", k) for k in parse_csv_keys(",".join(gcp), "gcp_kms"))
    group.extend(hckms_key(k) for k in parse_csv_keys(",".join(r.get("hckms") or []), "hckms"))
    az = _key_field(r.get("azure_keyvault"), "azure_keyvault", "azure_keyvault")
    group.extend(azure_keys(",".join(az)))
    vault = _key_field(r.get("hc_vault_transit_uri"), "hc_vault_transit_uri", "vault")
    group.extend(_vault_value(u) for u in parse_csv_keys(",".join(vault), "hc_vault_transit_uri"))
    return [group]


def _compile(pattern: str) -> re.Pattern[str]:
    """``regexp.Compile(path_regex)`` with Go's RE2 syntax; sops' message when it fails."""
    try:
        return goregex.compile_go(pattern)
    except (goregex.GoRegexError, goregex.GoRegexUnsupported) as e:
        raise ConfigError(f"can not compile regexp: {e}") from None


@record
class Config:
    """A loaded ``.sops.yaml``. ``creation_rules`` is None when the file has none (then sops
    behaves as if there were no config file for key selection)."""

    path: str
    creation_rules: list[dict[str, Any]] | None
    destination_rules: list[dict[str, Any]] | None
    stores: StoresConfig

    @property
    def config_dir(self) -> str:
        return os.path.abspath(os.path.dirname(self.path))

    def relative_target(self, path: str) -> str:
        """The string path_regex is matched against: ``path`` minus ``<config dir>/``."""
        prefix = self.config_dir + os.sep
        return path[len(prefix):] if path.startswith(prefix) else path

    def creation_rule_for(self, path: str, kms_context: Mapping[str, str] | None = None
                          ) -> CreationRule | None:
        """The first rule whose ``path_regex`` (searched, unanchored) matches ``path``.

        ``path`` is the target's absolute path; ``kms_context`` is the ``--encryption-context``
        sops gives to the single-group ``kms:`` keys. Returns None when the file has no
        ``creation_rules`` at all (sops: "config file not found, or has no creation rules").
        """
        if self.creation_rules is None:
            return None
        target = self.relative_target(path)
        chosen = None
        for r in self.creation_rules:
            rx = r.get("path_regex", "")
            if rx == "" or _compile(rx).search(goregex.go_text(target)):
                chosen = r
                break
        if chosen is None:
            raise ConfigError("error loading config: no matching creation rules found")
        set_rules = [(n, chosen[n]) for n in CRYPT_RULE_FIELDS if chosen.get(n, "")]
        if len(set_rules) > 1:
            raise ConfigError(_CRYPT_CONFLICT)
        groups = _rule_groups(chosen, kms_context)
        return CreationRule(key_groups=groups, shamir_threshold=chosen.get("shamir_threshold", 0),
                            crypt_rule=set_rules[0] if set_rules else None,
                            mac_only_encrypted=chosen.get("mac_only_encrypted", False),
                            path_regex=chosen.get("path_regex", ""))


def load_config(data: bytes, config_path: str) -> Config:
    """Decode ``.sops.yaml`` bytes; structural errors (YAML syntax, wrong types) raise here."""
    fields, stores = decode_file(data, config_path)
    return Config(
        path=config_path,
        creation_rules=fields.get("creation_rules"),
        destination_rules=fields.get("destination_rules"),
        stores=StoresConfig(yaml_indent=stores["yaml"].get("indent", 4),
                            json_indent=stores["json"].get("indent", -1),
                            json_binary_indent=stores["json_binary"].get("indent", -1)),
    )

