""".sops.yaml: lookup, go-yaml-style decoding, creation rules, key groups, CLI parse helpers.

Where it is cheap the expectations are checked against the real sops binary as well.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import warnings

import pytest

from sops_enclave import config as C
from sops_enclave.config import (AgeKeySpec, Config, ConfigWarning, CreationRule, KMSKeySpec,
                                 PGPKeySpec, StoresConfig, UnsupportedKeySpec, decryption_order,
                                 find_config, load_config, lookup_config, parse_csv_keys,
                                 parse_encryption_context, parse_kms_arg)
from sops_enclave.errors import (ConfigError, DuplicateDecryptionKeyType,
                                 InvalidEncryptionContext, SopsError)

# fixed, valid X25519 recipients (public keys only)
R1 = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
R2 = "age1ylmqds3l0nts4rza8skvf0cvzjkfdd3c9ckda9y54fhwkrgqjgxsm2vg24"
FP1 = "FBC7B9E2A4F9289AC0C1D4843D16CEE4A27381B4"
FP2 = "D7229043384BCC60326C6FB9D8720D957C3D3074"
ARN = "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555"
ROLE = "arn:aws:iam::123456789012:role/sops"


def _cfg(text: str, path: str = "/proj/.sops.yaml") -> Config:
    return load_config(text.encode(), path)


def _rule(text: str, target: str = "/proj/x.yaml", **kw) -> CreationRule:
    r = _cfg(text).creation_rule_for(target, **kw)
    assert r is not None
    return r


# ================================================================ find_config / lookup_config

def test_find_config_walks_up_to_the_nearest(tmp_path):
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (tmp_path / ".sops.yaml").write_text("creation_rules: []\n")
    found = find_config(str(deep))
    assert found == str(tmp_path / ".sops.yaml")
    (tmp_path / "a" / ".sops.yaml").write_text("creation_rules: []\n")
    assert find_config(str(deep)) == str(tmp_path / "a" / ".sops.yaml")
    (deep / ".sops.yaml").write_text("")
    assert find_config(str(deep)) == str(deep / ".sops.yaml")


def test_find_config_none(tmp_path):
    seen = []

    def exists(p):
        seen.append(p)
        return False

    assert lookup_config(str(tmp_path), exists=exists) == C.ConfigLookup(None, None)
    assert len(seen) == 2 * C.MAX_DEPTH  # .sops.yaml and .sops.yml at every level


def test_find_config_depth_limit_is_100_levels():
    start = "/" + "/".join(f"d{i}" for i in range(150))

    def at_depth(n):
        target = os.path.normpath(start + "/.." * n) + "/.sops.yaml"
        return lambda p: p == target

    assert lookup_config(start, exists=at_depth(99)).path is not None
    assert lookup_config(start, exists=at_depth(100)).path is None


def test_find_config_ignores_sops_yml_with_warning(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / ".sops.yml").write_text("creation_rules: []\n")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        found = find_config(str(sub))
    assert found is None or not found.endswith(".sops.yml")
    msgs = [str(x.message) for x in w if issubclass(x.category, ConfigWarning)]
    assert msgs and 'ignoring ".sops.yml" when searching for config file' in msgs[0]
    assert lookup_config(str(sub)).warning == (
        'ignoring ".sops.yml" when searching for config file; the config file must be called '
        '".sops.yaml"')
    (tmp_path / ".sops.yaml").write_text("creation_rules: []\n")
    res = lookup_config(str(sub))
    assert os.path.samefile(res.path, tmp_path / ".sops.yaml")
    assert res.warning == ('ignoring ".sops.yml" when searching for config file; the config file '
                           'must be called ".sops.yaml"; using "../.sops.yaml" instead')
    # a .sops.yml next to the .sops.yaml is not mentioned
    assert lookup_config(str(tmp_path)).warning is None


def test_sops_yml_warning_matches_real_sops(sops_bin, base_env, tmp_path, age_key):
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / ".sops.yml").write_text(f"creation_rules: [{{age: {R2}}}]\n")
    (tmp_path / ".sops.yaml").write_text(f"creation_rules: [{{age: {age_key[1]}}}]\n")
    (sub / "f.yaml").write_text("a: 1\n")
    out = subprocess.run([sops_bin, "encrypt", "f.yaml"], cwd=sub, env=base_env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # logrus prints msg="..." with Go quoting
    m = re.search(r'level=warning msg=("(?:[^"\\]|\\.)*")', out.stderr)
    assert m, out.stderr
    assert json.loads(m.group(1)) == lookup_config(str(sub)).warning
    assert age_key[1] in out.stdout and R2 not in out.stdout


# ================================================================ load_config: stores, errors

def test_stores_defaults():
    assert _cfg("").stores == StoresConfig(4, -1, -1)
    assert _cfg("creation_rules: []\n").stores == StoresConfig(yaml_indent=4, json_indent=-1,
                                                               json_binary_indent=-1)


def test_stores_values_and_nulls_keep_defaults():
    cfg = _cfg("stores:\n  yaml: {indent: 2}\n  json: {indent: 3}\n  json_binary: {indent: 0}\n"
               "  dotenv: {}\n  ini: ~\n")
    assert cfg.stores == StoresConfig(2, 3, 0)
    assert _cfg("stores:\n  json: {indent: ~}\n  yaml: ~\n").stores == StoresConfig(4, -1, -1)
    assert _cfg("stores: ~\n").stores == StoresConfig(4, -1, -1)


def test_stores_indent_matches_real_sops(sops_bin, base_env, tmp_path, age_key):
    (tmp_path / ".sops.yaml").write_text(
        f"creation_rules: [{{age: {age_key[1]}}}]\nstores:\n  yaml: {{indent: 2}}\n"
        "  json: {indent: 3}\n")
    cfg = load_config((tmp_path / ".sops.yaml").read_bytes(), str(tmp_path / ".sops.yaml"))
    (tmp_path / "f.yaml").write_text("a:\n  b: 1\n")
    (tmp_path / "f.json").write_text('{"a": {"b": 1}}')
    y = subprocess.run([sops_bin, "encrypt", "f.yaml"], cwd=tmp_path, env=base_env,
                       capture_output=True, text=True, timeout=60)
    j = subprocess.run([sops_bin, "encrypt", "f.json"], cwd=tmp_path, env=base_env,
                       capture_output=True, text=True, timeout=60)
    assert y.returncode == 0 and j.returncode == 0, (y.stderr, j.stderr)
    assert "\n" + " " * cfg.stores.yaml_indent + "b: ENC[" in y.stdout
    assert "\n" + " " * (2 * cfg.stores.json_indent) + '"b": "ENC[' in j.stdout


def test_invalid_yaml_names_the_file():
    with pytest.raises(ConfigError) as ei:
        load_config(b"creation_rules: [\n", "/some/where/.sops.yaml")
    e = ei.value
    assert e.exit_code == 1
    assert e.message == ("error loading config: Could not unmarshal config file: yaml: line 1: "
                         "did not find expected node content")
    assert "/some/where/.sops.yaml" in e.diagnostics()


@pytest.mark.parametrize("text,msg", [
    ("creation_rules:\n  - shamir_threshold: abc\n",
     "yaml: unmarshal errors:\n  line 2: cannot unmarshal !!str `abc` into int"),
    ("stores:\n  yaml:\n    indent: x\n",
     "yaml: unmarshal errors:\n  line 3: cannot unmarshal !!str `x` into int"),
    ("creation_rules: [{key_groups: 5}]\n",
     "yaml: unmarshal errors:\n  line 1: cannot unmarshal !!int `5` into []config.keyGroup"),
    ("creation_rules: [{key_groups: [5]}]\n",
     "yaml: unmarshal errors:\n  line 1: cannot unmarshal !!int `5` into config.keyGroup"),
    ("creation_rules: [{shamir_threshold: [1]}]\n",
     "yaml: unmarshal errors:\n  line 1: cannot unmarshal !!seq into int"),
    ("creation_rules: [{mac_only_encrypted: 3}]\n",
     "yaml: unmarshal errors:\n  line 1: cannot unmarshal !!int `3` into bool"),
    ("creation_rules: [{key_groups: [{age: \"\"}]}]\n",
     "yaml: unmarshal errors:\n  line 1: cannot unmarshal !!str `` into []string"),
    ("creation_rules: \"a long string value here\"\n",
     "yaml: unmarshal errors:\n  line 1: cannot unmarshal !!str `a long ...` into "
     "[]config.creationRule"),
    ("creation_rules:\n  - age: a\n    shamir_threshold: 2.5x\n    mac_only_encrypted: [1]\n",
     "yaml: unmarshal errors:\n  line 3: cannot unmarshal !!str `2.5x` into int\n"
     "  line 4: cannot unmarshal !!seq into bool"),
    ("creation_rules: [{age: a, age: b}]\n",
     "yaml: unmarshal errors:\n  line 1: mapping key \"age\" already defined at line 1"),
    ("- 1\n", "yaml: unmarshal errors:\n  line 1: cannot unmarshal !!seq into config.configFile"),
    ("creation_rules: [{age: *nope}]\n", "yaml: unknown anchor 'nope' referenced"),
])
def test_type_errors_use_go_yaml_wording(text, msg):
    with pytest.raises(ConfigError) as ei:
        _cfg(text)
    assert ei.value.message == "error loading config: Could not unmarshal config file: " + msg


def test_go_yaml_scalar_rules():
    cfg = _cfg("creation_rules:\n  - pgp: yes\n    shamir_threshold: 0x3\n"
               "    mac_only_encrypted: on\n    unencrypted_suffix: 012\n    path_regex: ~\n")
    rule = cfg.creation_rule_for("/proj/x")
    assert rule.key_groups == [[PGPKeySpec("yes")]]  # yes is a string in YAML 1.2 / go-yaml v3
    assert rule.shamir_threshold == 3
    assert rule.mac_only_encrypted is True
    assert rule.crypt_rule == ("unencrypted_suffix", "012")  # string fields keep the text
    with pytest.raises(ConfigError, match=r"!!str `true` into bool"):
        _cfg('creation_rules: [{mac_only_encrypted: "true"}]')
    with pytest.raises(ConfigError, match=r"!!str `2` into int"):
        _cfg('creation_rules: [{shamir_threshold: "2"}]')
    assert _rule("creation_rules: [{pgp: a, shamir_threshold: 2.9}]").shamir_threshold == 2


def test_merge_keys_fill_only_unset_fields():
    text = (f"base: &b {{age: {R1}, shamir_threshold: 5}}\n"
            "creation_rules:\n  - <<: *b\n    shamir_threshold: 2\n")
    r = _rule(text)
    assert r.key_groups == [[AgeKeySpec(R1)]]
    assert r.shamir_threshold == 2


# ================================================================ creation rule selection

RULES = f"""
creation_rules:
  - path_regex: prod/.*\\.yaml$
    age: {R1}
  - path_regex: \\.yaml$
    age: {R2}
  - pgp: {FP1}
"""


@pytest.mark.parametrize("target,expected", [
    ("/proj/prod/a.yaml", [AgeKeySpec(R1)]),        # first match wins (both 1 and 2 match)
    ("/proj/x/prod/a.yaml", [AgeKeySpec(R1)]),      # unanchored search
    ("/proj/prod/a.json", [PGPKeySpec(FP1)]),       # falls through to the catch-all rule
    ("/proj/a.yaml", [AgeKeySpec(R2)]),
    ("/elsewhere/prod/a.yaml", [AgeKeySpec(R1)]),   # outside the config dir: whole path
])
def test_first_matching_rule_wins(target, expected):
    assert _rule(RULES, target).key_groups == [expected]


def test_path_is_relative_to_the_config_dir():
    text = (f"creation_rules:\n  - path_regex: ^secrets/\n    age: {R1}\n"
            f"  - path_regex: proj\n    age: {R2}\n")
    cfg = _cfg(text, "/home/u/proj/.sops.yaml")
    assert cfg.relative_target("/home/u/proj/secrets/a.yaml") == "secrets/a.yaml"
    assert cfg.creation_rule_for("/home/u/proj/secrets/a.yaml").key_groups == [[AgeKeySpec(R1)]]
    # the config dir itself is cut off, so "proj" does not match below it ...
    with pytest.raises(ConfigError, match="^error loading config: no matching creation rules"):
        cfg.creation_rule_for("/home/u/proj/other/a.yaml")
    # ... but does match a path outside it, which is matched whole
    assert cfg.creation_rule_for("/home/u/proj2/a.yaml").key_groups == [[AgeKeySpec(R2)]]
    # relative config paths are made absolute against the cwd, as sops does
    rel = _cfg(text, ".sops.yaml")
    assert rel.config_dir == os.getcwd()


def test_no_creation_rules_means_no_config_and_empty_list_means_no_match():
    assert _cfg("").creation_rule_for("/proj/x") is None
    assert _cfg("creation_rules:\n").creation_rule_for("/proj/x") is None
    assert _cfg("stores: {}\n").creation_rule_for("/proj/x") is None
    for text in ("creation_rules: []\n", "creation_rules: [~]\n",
                 "creation_rules: [{path_regex: nomatch, age: x}]\n"):
        with pytest.raises(ConfigError) as ei:
            _cfg(text).creation_rule_for("/proj/x")
        assert ei.value.message == "error loading config: no matching creation rules found"
        assert ei.value.exit_code == 1


def test_rule_without_path_regex_matches_everything():
    r = _rule(f"creation_rules: [{{age: {R1}}}]", "/any/where.bin")
    assert r.key_groups == [[AgeKeySpec(R1)]]


def test_errors_only_for_the_rule_that_matched():
    text = ("creation_rules:\n  - path_regex: nomatch\n    age: bogus\n"
            f"  - path_regex: x\n    age: {R1}\n  - path_regex: '(('\n")
    assert _rule(text, "/proj/x.yaml").key_groups == [[AgeKeySpec(R1)]]
    with pytest.raises(ConfigError) as ei:
        _rule(text, "/proj/y.yaml")
    assert ei.value.message == ("can not compile regexp: error parsing regexp: missing closing ): "
                                "`((`")
    with pytest.raises(ConfigError, match='unknown recipient type: "bogus"'):
        _rule(text, "/proj/nomatch")


def test_go_end_of_text_anchor():
    text = f"creation_rules: [{{path_regex: 'x\\.yaml\\z', age: {R1}}}]\n"
    assert _rule(text, "/proj/x.yaml").key_groups == [[AgeKeySpec(R1)]]
    with pytest.raises(ConfigError):
        _rule(text, "/proj/x.yaml.bak")


# ================================================================ key groups

def test_single_group_fields_order_and_forms():
    text = (f"creation_rules:\n  - age: ' {R1} , {R2},'\n    pgp: ['{FP1}', '{FP2}']\n"
            f"    kms: '{ARN}+{ROLE}, {ARN}'\n    aws_profile: dev\n"
            "    gcp_kms: projects/p/locations/l/keyRings/r/cryptoKeys/k\n"
            "    hckms: ['eu-west-1:abc']\n"
            "    azure_keyvault: https://v.vault.azure.net/keys/k/ver\n"
            "    hc_vault_transit_uri: https://vault:8200/v1/transit/keys/k\n")
    (group,) = _rule(text).key_groups
    assert group == [
        AgeKeySpec(R1), AgeKeySpec(R2), PGPKeySpec(FP1), PGPKeySpec(FP2),
        KMSKeySpec(ARN, ROLE, (), "dev"), KMSKeySpec(ARN, "", (), "dev"),
        UnsupportedKeySpec("gcp_kms", "projects/p/locations/l/keyRings/r/cryptoKeys/k"),
        UnsupportedKeySpec("hckms", "eu-west-1:abc"),
        UnsupportedKeySpec("azure_keyvault", "https://v.vault.azure.net/keys/k/ver"),
        UnsupportedKeySpec("hc_vault_transit_uri", "https://vault:8200/v1/transit/keys/k"),
    ]


def test_single_group_kms_gets_the_cli_context_and_is_not_deduplicated():
    text = f"creation_rules: [{{kms: '{ARN},{ARN}', age: '{R1},{R1}'}}]\n"
    (group,) = _rule(text, kms_context={"b": "2", "a": "1"}).key_groups
    assert group == [AgeKeySpec(R1), AgeKeySpec(R1),
                     KMSKeySpec(ARN, "", (("a", "1"), ("b", "2"))),
                     KMSKeySpec(ARN, "", (("a", "1"), ("b", "2")))]


def test_key_groups_merge_and_dedup():
    text = f"""
creation_rules:
  - shamir_threshold: 2
    key_groups:
      - age: [{R1}, ' {R1}', '{R2},{R1}']
        pgp: ['{FP1}', '{FP1[:20]} {FP1[20:]}']
        kms:
          - arn: {ARN}
            role: {ROLE}
            context: {{b: "2", a: 1}}
            aws_profile: dev
          - arn: {ARN}
            role: {ROLE}
            context: {{a: "1", b: "2"}}
            aws_profile: dev
          - arn: {ARN}
      - merge:
          - age: [{R1}]
          - age: [{R1}, {R2}]
            merge:
              - pgp: [{FP2}]
        age: [{R2}]
      - {{}}
      - hckms: [{{key_id: "r:u"}}]
        gcp_kms: [{{resource_id: "projects/p"}}]
        azure_keyvault: [{{vaultUrl: "https://v", key: k, version: "1"}}]
        hc_vault: ["https://vault:8200/v1/transit/keys/k"]
"""
    r = _rule(text)
    assert r.shamir_threshold == 2
    g0, g1, g2, g3 = r.key_groups
    assert g0 == [AgeKeySpec(R1), AgeKeySpec(R2), PGPKeySpec(FP1),
                  KMSKeySpec(ARN, ROLE, (("a", "1"), ("b", "2")), "dev"), KMSKeySpec(ARN)]
    # merged groups come first (a merged group's own merge before its keys), flattened;
    # duplicates across merges and the group's own keys removed
    assert g1 == [AgeKeySpec(R1), PGPKeySpec(FP2), AgeKeySpec(R2)]
    assert g2 == []
    assert g3 == [UnsupportedKeySpec("gcp_kms", "projects/p"), UnsupportedKeySpec("hckms", "r:u"),
                  UnsupportedKeySpec("azure_keyvault", "https://v/keys/k/1"),
                  UnsupportedKeySpec("hc_vault_transit_uri",
                                     "https://vault:8200/v1/transit/keys/k")]


@pytest.mark.parametrize("text", [
    "creation_rules: [{key_groups: []}]",
    "creation_rules: [{key_groups: [~]}]",
    "creation_rules: [{path_regex: x}]",
    "creation_rules: [{key_groups: [{pgp: [~]}]}]",
])
def test_empty_groups_are_kept_for_the_encrypt_error(text):
    """sops only fails later, at encryption: "Could not generate data key: [empty key group
    provided]" (keys.groups.protect_data_key does the same)."""
    assert _rule(text).key_groups == [[]]


def test_key_field_type_errors():
    cases = {
        "{age: [1]}": "invalid age key configuration: invalid age key configuration: expected "
                      "string in list, got int",
        "{age: {a: 1}}": "invalid age key configuration: invalid age key configuration: expected "
                         "string, []string, or nil, got map[string]interface {}",
        "{pgp: [~]}": "invalid pgp key configuration: invalid pgp key configuration: expected "
                      "string in list, got <nil>",
        "{kms: 1.5}": "invalid kms key configuration: invalid kms key configuration: expected "
                      "string, []string, or nil, got float64",
        "{gcp_kms: true}": "invalid gcpkms key configuration: invalid gcp_kms key configuration: "
                           "expected string, []string, or nil, got bool",
        "{hc_vault_transit_uri: [2024-01-01]}": "invalid vault key configuration: invalid "
                                                "hc_vault_transit_uri key configuration: expected "
                                                "string in list, got time.Time",
    }
    for rule, msg in cases.items():
        with pytest.raises(ConfigError) as ei:
            _rule(f"creation_rules: [{rule}]")
        assert ei.value.message == msg, rule


def test_bad_keys_in_rules():
    with pytest.raises(ConfigError, match=r'^failed to parse input, unknown recipient type: ""$'):
        _rule(f'creation_rules: [{{age: ["{R1}", ""]}}]')
    with pytest.raises(ConfigError, match="^failed to parse input as Bech32-encoded age public"):
        _rule("creation_rules: [{age: age1abc}]")
    with pytest.raises(ConfigError, match="invalid key ID format: expected 'region:key-uuid', "
                                          'got "x"'):
        _rule("creation_rules: [{key_groups: [{hckms: [{key_id: x}]}]}]")
    with pytest.raises(ConfigError, match="KMS context value"):
        _rule("creation_rules: [{key_groups: [{kms: [{arn: x, context: {a: ~}}]}]}]")
    # ssh and plugin recipients are accepted
    ssh = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJwnVFV6WrXFUxqeyqg1KsoiFyM5rWmHRuljuJNgwn1n "
           "user@host")
    assert _rule(f"creation_rules: [{{age: '{ssh}'}}]").key_groups == [[AgeKeySpec(ssh)]]


# ================================================================ crypt rules, flags

@pytest.mark.parametrize("name", C.CRYPT_RULE_FIELDS)
def test_single_crypt_rule(name):
    r = _rule(f"creation_rules: [{{pgp: {FP1}, {name}: '^x'}}]")
    assert r.crypt_rule == (name, "^x")


def test_crypt_rule_conflicts():
    assert _rule(f"creation_rules: [{{pgp: {FP1}}}]").crypt_rule is None
    # an empty value does not count
    assert _rule(f"creation_rules: [{{pgp: {FP1}, encrypted_regex: '', unencrypted_suffix: _u}}]"
                 ).crypt_rule == ("unencrypted_suffix", "_u")
    for a, b in [("encrypted_regex", "unencrypted_suffix"),
                 ("unencrypted_comment_regex", "encrypted_comment_regex"),
                 ("encrypted_suffix", "unencrypted_regex")]:
        with pytest.raises(ConfigError) as ei:
            _rule(f"creation_rules: [{{pgp: {FP1}, {a}: x, {b}: y}}]")
        assert ei.value.message == (
            "error loading config: cannot use more than one of encrypted_suffix, "
            "unencrypted_suffix, encrypted_regex, unencrypted_regex, encrypted_comment_regex, "
            "or unencrypted_comment_regex for the same rule")


def test_mac_only_encrypted_and_threshold_defaults():
    r = _rule(f"creation_rules: [{{pgp: {FP1}}}]")
    assert r.mac_only_encrypted is False and r.shamir_threshold == 0
    r = _rule(f"creation_rules: [{{pgp: {FP1}, mac_only_encrypted: true, shamir_threshold: 3}}]")
    assert r.mac_only_encrypted is True and r.shamir_threshold == 3


def test_destination_rules_are_decoded_for_type_errors():
    cfg = _cfg(f"creation_rules: [{{pgp: {FP1}}}]\ndestination_rules: [{{s3_bucket: b}}]\n")
    assert cfg.destination_rules == [{"s3_bucket": "b"}]
    with pytest.raises(ConfigError, match=r"line 1: cannot unmarshal !!str `x` into int"):
        _cfg("destination_rules: [{recreation_rule: {shamir_threshold: x}}]\n")


# ================================================================ CLI helpers

def test_parse_kms_arg():
    assert parse_kms_arg("", {"a": "b"}, "p") == []
    ctx = {"z": "1", "a": "2"}
    assert parse_kms_arg(f"{ARN}+{ROLE}, {ARN} ,", ctx, "prof") == [
        KMSKeySpec(ARN, ROLE, (("a", "2"), ("z", "1")), "prof"),
        KMSKeySpec(ARN, "", (("a", "2"), ("z", "1")), "prof"),
        KMSKeySpec("", "", (("a", "2"), ("z", "1")), "prof"),
    ]
    # the role must follow the ARN; sops 3.11 only splits at "+arn:aws:iam::"
    assert parse_kms_arg(f"+{ROLE}", {}, "") == [KMSKeySpec("+" + ROLE)]
    cn = "arn:aws-cn:kms:cn-north-1:1:key/k+arn:aws-cn:iam::1:role/r"
    assert parse_kms_arg(cn, {}, "") == [KMSKeySpec(cn)]
    assert KMSKeySpec(ARN, ROLE, (("a", "1"), ("b", "2")), "p").to_string() == \
        f"{ARN}+{ROLE}|a:1,b:2|p"
    assert KMSKeySpec(ARN, "", (), "p").to_string() == f"{ARN}||p"
    assert KMSKeySpec(ARN).to_string() == ARN


def test_parse_encryption_context():
    assert parse_encryption_context("") == {}
    assert parse_encryption_context("a:1,b:2") == {"a": "1", "b": "2"}
    assert parse_encryption_context("a:,:b") == {"a": "", "": "b"}
    assert parse_encryption_context("a:1,a:2") == {"a": "2"}
    assert parse_encryption_context(" a : 1 ") == {" a ": " 1 "}
    for bad in ("a", "a:1,", "a:1:2", "a:1,b", ","):
        with pytest.raises(InvalidEncryptionContext) as ei:
            parse_encryption_context(bad)
        assert ei.value.exit_code == 6
        assert ei.value.message == "Invalid KMS encryption context format"


def test_parse_csv_keys():
    assert parse_csv_keys("") == [] and parse_csv_keys(None) == []
    assert parse_csv_keys(f" {R1} ,\t{R2}\n") == [R1, R2]
    assert parse_csv_keys(f"{R1},") == [R1, ""]  # sops rejects the empty recipient later
    assert parse_csv_keys("AB CD, EF", "pgp") == ["ABCD", "EF"]
    assert parse_csv_keys(",a,,b,", "hc_vault_transit_uri") == ["a", "b"]


def test_decryption_order():
    assert decryption_order("") == ["age", "pgp"]
    assert decryption_order(None) == ["age", "pgp"]
    assert decryption_order("pgp,age,kms,bogus") == ["pgp", "age", "kms", "bogus"]
    with pytest.raises(DuplicateDecryptionKeyType) as ei:
        decryption_order("age,pgp,age")
    assert ei.value.exit_code == 112
    assert ei.value.message == "Duplicate decryption key type: age"
    with pytest.raises(DuplicateDecryptionKeyType, match="^Duplicate decryption key type: $"):
        decryption_order("age,,pgp,")  # sops does not trim or skip empty entries


def test_validate_age_recipient():
    assert C.validate_age_recipient(f"  {R1}\n") == R1
    with pytest.raises(SopsError, match=r'^failed to parse input, unknown recipient type: '
                                        r'"foo\\x01"$'):
        C.validate_age_recipient(" foo\x01 ")
    plugin = "age1yubikey1qwerty"
    assert C.validate_age_recipient(plugin) == plugin


# ================================================================ shared vectors

def test_functional_tests_sops_yaml_from_vectors(vectors):
    path = vectors / "sops" / "functional-tests_.sops.yaml"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    cfg = load_config(path.read_bytes(), "/ft/.sops.yaml")
    assert len(cfg.creation_rules) == 6
    assert len(cfg.destination_rules) == 3
    r = cfg.creation_rule_for("/ft/test_roundtrip_keygroups.yaml")
    assert r.key_groups == [[PGPKeySpec(FP1)], [PGPKeySpec(FP2)]]
    assert r.shamir_threshold == 0  # sops then uses the number of groups
    r = cfg.creation_rule_for("/ft/test_roundtrip_keygroups_missing_decryption_key.yaml")
    assert r.key_groups == [[PGPKeySpec(FP1)],
                            [PGPKeySpec("B611A2F9F11D0FF82568805119F9B5DAEA91FF86")]]
    for name in ("test_no_keygroups.yaml", "test_zero_keygroups.yaml",
                 "test_empty_keygroup.yaml"):
        assert cfg.creation_rule_for(f"/ft/{name}").key_groups == [[]], name
    assert cfg.creation_rule_for("/ft/anything.json").key_groups == [[PGPKeySpec(FP1)]]
    assert cfg.stores == StoresConfig()


# ================================================================ cross-checks with real sops

def _sops_encrypt(sops_bin, env, cwd, rel):
    return subprocess.run([sops_bin, "encrypt", rel], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


def _recipients(text: str) -> list[list[str]]:
    import yaml

    md = (json.loads(text) if text.startswith("{") else yaml.safe_load(text))["sops"]
    if "key_groups" not in md:  # one group: sops writes the keys at the top of its metadata
        return [[e["recipient"] for e in md.get("age") or []]]
    return [[e["recipient"] for e in (g.get("age") or [])] for g in md["key_groups"]]


def test_rule_selection_matches_real_sops(sops_bin, base_env, tmp_path):
    import pyrage

    ids = [pyrage.x25519.Identity.generate() for _ in range(3)]
    pubs = [str(i.to_public()) for i in ids]
    conf = (f"creation_rules:\n"
            f"  - path_regex: ^prod/\n    age: {pubs[0]}\n"
            f"  - path_regex: dev.*\\.yaml$\n    age: '{pubs[1]},{pubs[0]}'\n"
            f"  - age: {pubs[2]}\n")
    (tmp_path / ".sops.yaml").write_text(conf)
    env = dict(base_env, SOPS_AGE_KEY="\n".join(str(i) for i in ids))
    cfg = load_config(conf.encode(), str(tmp_path / ".sops.yaml"))
    targets = ["prod/a.yaml", "sub/prod/a.yaml", "dev-a.yaml", "x/devices.yaml", "dev.json",
               "other.yaml"]
    seen = set()
    for rel in targets:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text('{"a": 1}\n' if rel.endswith(".json") else "a: 1\n")
        out = _sops_encrypt(sops_bin, env, tmp_path, rel)
        assert out.returncode == 0, (rel, out.stderr)
        theirs = _recipients(out.stdout)
        ours = [[k.recipient for k in g] for g in cfg.creation_rule_for(str(p)).key_groups]
        assert ours == theirs, rel
        seen.add(tuple(ours[0]))
    assert len(seen) == 3  # every rule was exercised


def test_key_groups_merge_dedup_matches_real_sops(sops_bin, base_env, tmp_path):
    import pyrage

    ids = [pyrage.x25519.Identity.generate() for _ in range(3)]
    a, b, c = (str(i.to_public()) for i in ids)
    conf = f"""creation_rules:
  - shamir_threshold: 2
    key_groups:
      - age: ['{a}', ' {a}', '{b},{a}']
      - merge:
          - age: ['{c}']
          - age: ['{c}', '{a}']
        age: ['{b}', '{c}']
      - merge: [{{age: ['{b}']}}]
"""
    (tmp_path / ".sops.yaml").write_text(conf)
    (tmp_path / "f.yaml").write_text("a: 1\n")
    env = dict(base_env, SOPS_AGE_KEY="\n".join(str(i) for i in ids))
    out = _sops_encrypt(sops_bin, env, tmp_path, "f.yaml")
    assert out.returncode == 0, out.stderr
    rule = load_config(conf.encode(), str(tmp_path / ".sops.yaml")).creation_rule_for(
        str(tmp_path / "f.yaml"))
    assert [[k.recipient for k in g] for g in rule.key_groups] == _recipients(out.stdout)
    assert "shamir_threshold: 2" in out.stdout and rule.shamir_threshold == 2


_SOPS_ERROR_CASES = [
    "creation_rules: [\n",
    "creation_rules:\n  - age: 1\n",
    "creation_rules:\n  - shamir_threshold: abc\n",
    "creation_rules: []\n",
    "creation_rules: [{key_groups: [{kms: [{arn: x, context: {a: 1}}], age: \"\"}]}]\n",
    "creation_rules: [{age: foo}]\n",
    "creation_rules: [{age: {a: 1}}]\n",
    "creation_rules: [{pgp: [~]}]\n",
    "creation_rules: [{hckms: [{key_id: x}]}]\n",
    "creation_rules: [{key_groups: [{hckms: [{key_id: x}]}]}]\n",
    "creation_rules: [{encrypted_regex: a, unencrypted_suffix: b, age: x}]\n",
    "creation_rules: [{age: a, age: b}]\n",
    "creation_rules:\n  - age: a\n   bad: indent\n",
    "creation_rules:\n\t- age: x\n",
    "key: [a, b\n",
    "stores: {yaml: {indent: [1]}, json: {indent: ~}, json_binary: {indent: \"3\"}}\n",
    "creation_rules: [{age: x}]\ndestination_rules: [{recreation_rule: {shamir_threshold: x}}]\n",
    "creation_rules: [{age: *nope}]\n",
    "creation_rules: [{key_groups: [{age: [2024-01-01]}]}]\n",
    "creation_rules: [{age: [2024-01-01]}]\n",
    "creation_rules: [{age: \"a\x01\"}]\n",
    "creation_rules: [{path_regex: '((', age: x}]\n",
    "creation_rules: [{mac_only_encrypted: \"true\", shamir_threshold: \"2\"}]\n",
    "a: &x {age: x}\ncreation_rules:\n  - <<: *x\n    shamir_threshold: 2\n",
]


@pytest.mark.parametrize("conf", _SOPS_ERROR_CASES)
def test_config_errors_match_real_sops(sops_bin, base_env, tmp_path, conf):
    (tmp_path / ".sops.yaml").write_text(conf)
    (tmp_path / "f.yaml").write_text("a: 1\n")
    out = _sops_encrypt(sops_bin, base_env, tmp_path, "f.yaml")
    assert out.returncode == 1
    with pytest.raises(SopsError) as ei:
        load_config(conf.encode(), str(tmp_path / ".sops.yaml")).creation_rule_for(
            str(tmp_path / "f.yaml"))
    assert ei.value.exit_code == 1
    assert ei.value.message + "\n" == out.stderr
