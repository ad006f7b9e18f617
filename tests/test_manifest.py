"""The pack manifest: schema, matrix expansion, plan, errors and the --dry-run text."""

from __future__ import annotations

import re
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sops_enclave.api import parse_tree_path
from sops_enclave.pack import manifest as mf
from sops_enclave.pack.manifest import (EncryptSpec, InputRef, ManifestError, OutputPlan,
                                        load_manifest)

DESIGN_EXAMPLE = """\
version: 1
matrix: {service: [api, worker], env: [staging, prod]}
outputs:
  - target: "{service}/{env}"
    path: "deploy/{service}/{env}.enc.json"
    inputs:
      - secrets/common.enc.yaml
      - {file: "secrets/{env}.enc.yaml", extract: '["{service}"]'}
      - {file: "secrets/{service}/{env}.enc.yaml", optional: true}
    encrypt:
      kms: ["arn:aws:kms:eu-west-1:111122223333:key/...{env}"]
      encryption_context: {service: "{service}", env: "{env}"}
"""

ARN = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
AGE = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"


def load(text: str, path: str = ".sops-enclave.yaml"):
    return load_manifest(textwrap.dedent(text).encode(), path)


def one(inputs: str = "[secrets/a.enc.yaml]", encrypt: str = f"{{kms: [{ARN}]}}",
        extra: str = "", target: str = "t", path: str = "out/t.enc.yaml", top: str = "") -> str:
    """A one-output manifest with the given pieces."""
    return (f"version: 1\n{top}outputs:\n  - target: {target!r}\n    path: {path!r}\n"
            f"    inputs: {inputs}\n    encrypt: {encrypt}\n{extra}")


def error(text: str, **kw) -> str:
    with pytest.raises(ManifestError) as e:
        load(text, **kw)
    assert e.value.exit_code == 1
    assert "\n" not in e.value.message, "the message must be one line"
    return e.value.message


# ------------------------------------------------------------------------------ the example

def test_design_example_expands_to_four_outputs():
    m = load(DESIGN_EXAMPLE)
    assert m.version == 1
    assert m.matrix == {"service": ["api", "worker"], "env": ["staging", "prod"]}
    assert m.targets == ["api/staging", "api/prod", "worker/staging", "worker/prod"]
    expected = []
    for service in ("api", "worker"):
        for env in ("staging", "prod"):
            expected.append(OutputPlan(
                target=f"{service}/{env}", path=f"deploy/{service}/{env}.enc.json", format="json",
                inputs=[InputRef("secrets/common.enc.yaml", None, False),
                        InputRef(f"secrets/{env}.enc.yaml", [service], False),
                        InputRef(f"secrets/{service}/{env}.enc.yaml", None, True)],
                encrypt=EncryptSpec(kms=[f"arn:aws:kms:eu-west-1:111122223333:key/...{env}"],
                                    encryption_context={"service": service, "env": env},
                                    age=[]),
                matrix={"service": service, "env": env}))
    assert m.outputs == expected
    assert m.plan() == expected
    assert m.sources == [0, 0, 0, 0]


def test_optional_inputs_missing_are_dropped_required_kept():
    m = load(DESIGN_EXAMPLE)
    present = {"secrets/common.enc.yaml", "secrets/staging.enc.yaml", "secrets/prod.enc.yaml",
               "secrets/api/prod.enc.yaml"}
    asked: list[str] = []

    def exists(p: str) -> bool:
        asked.append(p)
        return p in present

    plans = m.plan(exists=exists)
    assert [[i.file for i in p.inputs] for p in plans] == [
        ["secrets/common.enc.yaml", "secrets/staging.enc.yaml"],
        ["secrets/common.enc.yaml", "secrets/prod.enc.yaml", "secrets/api/prod.enc.yaml"],
        ["secrets/common.enc.yaml", "secrets/staging.enc.yaml"],
        ["secrets/common.enc.yaml", "secrets/prod.enc.yaml"],
    ]
    assert len(asked) == len(set(asked)), "exists is asked once per distinct path"
    # The manifest itself is not changed by planning.
    assert all(len(o.inputs) == 3 for o in m.outputs)


def test_missing_required_input_is_an_error_naming_it():
    m = load(DESIGN_EXAMPLE)
    with pytest.raises(ManifestError) as e:
        m.plan(["worker/prod"], exists=lambda p: p != "secrets/prod.enc.yaml")
    assert e.value.message == (".sops-enclave.yaml: outputs[0].inputs[1]: input "
                               "'secrets/prod.enc.yaml' does not exist (target 'worker/prod')")


def test_all_optional_inputs_missing_is_an_error():
    m = load(one(inputs="[{file: a.enc.yaml, optional: true}]"))
    assert m.plan(exists=lambda p: True)[0].inputs == [InputRef("a.enc.yaml", None, True)]
    with pytest.raises(ManifestError, match="has no inputs"):
        m.plan(exists=lambda p: False)


def test_exists_is_only_asked_for_selected_targets():
    m = load(DESIGN_EXAMPLE)
    asked: set[str] = set()
    m.plan(["api/prod"], exists=lambda p: asked.add(p) or True)
    assert asked == {"secrets/common.enc.yaml", "secrets/prod.enc.yaml",
                     "secrets/api/prod.enc.yaml"}


def test_target_selection_keeps_manifest_order():
    m = load(DESIGN_EXAMPLE)
    plans = m.plan(["worker/prod", "api/staging", "worker/prod"])
    assert [p.target for p in plans] == ["api/staging", "worker/prod"]
    assert [p.target for p in m.plan(None)] == m.targets
    assert [p.target for p in m.plan([])] == m.targets


def test_unknown_target_is_an_error():
    m = load(DESIGN_EXAMPLE)
    with pytest.raises(ManifestError) as e:
        m.plan(["api/prod", "api/dev", "db"])
    assert e.value.message == ".sops-enclave.yaml: unknown targets 'api/dev', 'db'"
    assert "api/staging" in e.value.hint
    with pytest.raises(ManifestError, match="unknown target 'x'"):
        m.plan(["x"])
    with pytest.raises(ManifestError, match="not a string"):
        m.plan("api/prod")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ expansion

def test_outputs_expand_only_over_variables_they_use():
    m = load(f"""\
        version: 1
        matrix: {{env: [dev, prod], region: [eu, us]}}
        outputs:
          - target: shared
            path: shared.enc.yaml
            inputs: [common.enc.yaml]
            encrypt: {{age: [{AGE}]}}
          - target: "{{env}}"
            path: "{{env}}.enc.env"
            inputs: ["{{env}}.enc.yaml"]
            encrypt: {{age: [{AGE}]}}
          - target: "{{region}}-{{env}}"
            path: "r/{{region}}/{{env}}.enc.ini"
            inputs: [common.enc.yaml]
            encrypt:
              kms: ["arn:aws:kms:{{region}}-west-1:111122223333:alias/{{env}}"]
        """)
    # The matrix declares env first, so env varies slowest.
    assert m.targets == ["shared", "dev", "prod", "eu-dev", "us-dev", "eu-prod", "us-prod"]
    assert m.sources == [0, 1, 1, 2, 2, 2, 2]
    assert [o.format for o in m.outputs] == ["yaml", "dotenv", "dotenv", "ini", "ini", "ini",
                                              "ini"]
    assert m.outputs[0].matrix == {}
    assert m.outputs[3].matrix == {"env": "dev", "region": "eu"}
    assert m.outputs[6].encrypt.kms == ["arn:aws:kms:us-west-1:111122223333:alias/prod"]


@pytest.mark.parametrize("path,fmt", [("o.yaml", "yaml"), ("o.yml", "yaml"), ("o.json", "json"),
                                      ("o.env", "dotenv"), ("o.ini", "ini"), ("o.bin", "binary"),
                                      ("o", "binary")])
def test_format_defaults_from_output_extension(path, fmt):
    assert load(one(path=path)).outputs[0].format == fmt


def test_explicit_format_wins():
    text = one(path="o.yaml", extra="    format: json\n")
    assert load(text).outputs[0].format == "json"


def test_literal_braces_and_normalised_paths():
    m = load(one(target="t{{1}}", path="out/./x/../t.enc.yaml",
                 inputs="['a//b/./c.enc.yaml']"))
    assert m.outputs[0].target == "t{1}"
    assert m.outputs[0].path == "out/t.enc.yaml"
    assert m.outputs[0].inputs[0].file == "a/b/c.enc.yaml"


def test_yaml_anchors_and_merge_keys_are_allowed():
    m = load(f"""\
        version: 1
        outputs:
          - target: a
            path: a.enc.yaml
            inputs: [in.enc.yaml]
            encrypt: &enc {{kms: [{ARN}], encryption_context: {{team: x}}}}
          - target: b
            path: b.enc.yaml
            inputs: [in.enc.yaml]
            encrypt:
              <<: *enc
              age: [{AGE}]
        """)
    assert m.outputs[1].encrypt == EncryptSpec([ARN], {"team": "x"}, [AGE])


def test_extract_forms():
    m = load(one(inputs="""[{file: a.enc.yaml, extract: '["a"][0][''b"c'']'}]"""))
    assert m.outputs[0].inputs[0].extract == ["a", 0, 'b"c']


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 10**6),
                          st.text(st.characters(blacklist_characters="[]\"'{}",
                                                blacklist_categories=("Cs",)), max_size=8)),
                min_size=1, max_size=5))
def test_extract_parser_agrees_with_sops_syntax(components):
    text = mf._format_extract(components)
    assert mf._parse_extract(text) == components
    assert parse_tree_path(text) == components


def test_receipt_suffix_matches_the_receipt_writer():
    from sops_enclave.receipt.builder import RECEIPT_SUFFIX

    assert mf.RECEIPT_SUFFIX == RECEIPT_SUFFIX


# ------------------------------------------------------------------------------ errors

def test_unknown_key_message_names_the_place():
    text = f"""\
        version: 1
        outputs:
          - target: a
            path: a.enc.yaml
            inputs: [x.enc.yaml]
            encrypt: {{kms: [{ARN}]}}
          - target: b
            path: b.enc.yaml
            inputs: [{{fiel: x.enc.yaml}}]
            encrypt: {{kms: [{ARN}]}}
        """
    with pytest.raises(ManifestError) as e:
        load(text)
    assert e.value.message == ".sops-enclave.yaml: outputs[1].inputs[0]: unknown key 'fiel'"
    assert "did you mean 'file'?" in e.value.hint


def test_manifest_path_is_in_every_message():
    assert error("version: 2\noutputs: []\n", path="deploy/pack.yaml").startswith(
        "deploy/pack.yaml: version: ")


E = [
    # (manifest text, expected message after "<path>: ")
    ("version: 1\noutputs: [{}]\nextras: 1\n", "unknown key 'extras'"),
    (one(extra="    encrpyt: {}\n"), "outputs[0]: unknown key 'encrpyt'"),
    (one(encrypt=f"{{kms: [{ARN}], context: {{a: b}}}}"), "outputs[0].encrypt: unknown key "
                                                          "'context'"),
    ("version: 1\nmatrix: {env: [a]}\nmatrx: {}\noutputs: []\n", "unknown key 'matrx'"),
    # types
    ('version: "1"\noutputs: []\n', "version: expected an integer, got a string"),
    ("version: true\noutputs: []\n", "version: expected an integer, got a boolean"),
    ("version: 2\noutputs: []\n", "version: unsupported version 2"),
    ("outputs: []\n", "missing key 'version'"),
    ("version: 1\n", "missing key 'outputs'"),
    ("version: 1\noutputs: []\n", "outputs: must not be empty"),
    ("version: 1\noutputs: {a: 1}\n", "outputs: expected a list, got a map"),
    ("- version: 1\n", "the manifest must be a map"),
    ("", "the manifest must be a map with 'version' and 'outputs', got null"),
    (one(target=5), "outputs[0].target: expected a string, got an integer"),
    (one(extra="    format: toml\n"), "outputs[0].format: unknown format 'toml'"),
    (one(inputs="secrets/a.enc.yaml"), "outputs[0].inputs: expected a list, got a string"),
    (one(inputs="[]"), "outputs[0].inputs: must not be empty"),
    (one(inputs="[[a]]"), "outputs[0].inputs[0]: expected a path or a map with 'file'"),
    (one(inputs="[{extract: '[\"a\"]'}]"), "outputs[0].inputs[0]: missing key 'file'"),
    (one(inputs="[{file: a, optional: 'yes'}]"), "outputs[0].inputs[0].optional: expected "
                                                 "true or false, got a string"),
    (one(inputs="[{file: a, optional: 1}]"), "outputs[0].inputs[0].optional: expected true or "
                                             "false, got an integer"),
    (one(inputs="['']"), "outputs[0].inputs[0]: must not be empty"),
    (one(encrypt=f"{{kms: {ARN}}}"), "outputs[0].encrypt.kms: expected a list, got a string"),
    (one(encrypt=f"{{kms: [{ARN}], encryption_context: {{a: 1}}}}"),
     "outputs[0].encrypt.encryption_context.a: expected a string, got an integer"),
    (one(encrypt=f"{{kms: [{ARN}], encryption_context: [a]}}"),
     "outputs[0].encrypt.encryption_context: expected a map"),
    (one(encrypt="[a]"), "outputs[0].encrypt: expected a map, got a list"),
    ("version: 1\noutputs:\n  - {target: a, path: b, inputs: [c]}\n",
     "outputs[0]: missing key 'encrypt'"),
    ("version: 1\nmatrix: {env: prod}\noutputs: []\n", "matrix.env: expected a list"),
    ("version: 1\nmatrix: {env: []}\noutputs: []\n", "matrix.env: must not be empty"),
    ("version: 1\nmatrix: {env: [on, off]}\noutputs: []\n",
     "matrix.env[0]: expected a string, got a boolean"),
    ("version: 1\nmatrix: {env: [a, a]}\noutputs: []\n", "matrix.env[1]: duplicate value 'a'"),
    ("version: 1\nmatrix: {my-env: [a]}\noutputs: []\n", "matrix: variable name 'my-env'"),
    ("version: 1\nmatrix: [a]\noutputs: []\n", "matrix: expected a map"),
    (one(target="x").replace("'x'", '"a\\u202eb"'),
     "outputs[0].target: contains the control or format character U+202E"),
    (one(inputs='["a\\x1b[2Jb"]'), "outputs[0].inputs[0]: contains the control or format "
                                  "character U+001B"),
    # placeholders
    (one(path="out/{env}.yaml"), "outputs[0].path: placeholder {env} names no matrix variable"),
    (one(top="matrix: {env: [a]}\n", inputs="[{file: 'x/{enx}.yaml'}]"),
     "outputs[0].inputs[0].file: placeholder {enx} names no matrix variable"),
    (one(top="matrix: {env: [a]}\n", inputs="[{file: x.yaml, extract: '[\"{svc}\"]'}]"),
     "outputs[0].inputs[0].extract: placeholder {svc} names no matrix variable"),
    (one(top="matrix: {env: [a]}\n", encrypt="{kms: ['arn:aws:kms:eu-west-1:111122223333:"
                                             "alias/{nope}']}"),
     "outputs[0].encrypt.kms[0]: placeholder {nope} names no matrix variable"),
    (one(top="matrix: {env: [a]}\n", encrypt=f"{{kms: [{ARN}], encryption_context: "
                                             "{e: '{Env}'}}"),
     "outputs[0].encrypt.encryption_context.e: placeholder {Env} names no matrix variable"),
    (one(top="matrix: {env: [a]}\n", encrypt="{age: ['{who}']}"),
     "outputs[0].encrypt.age[0]: placeholder {who} names no matrix variable"),
    (one(target="a{b"), "outputs[0].target: unbalanced '{'"),
    (one(target="a}b"), "outputs[0].target: unbalanced '}'"),
    (one(target="a{b-c}"), "outputs[0].target: placeholder {b-c} is not a variable name"),
    # paths, inputs and outputs
    (one(path="/etc/x.yaml"), "outputs[0].path: output path '/etc/x.yaml' is absolute"),
    (one(path="../x.yaml"), "outputs[0].path: output path '../x.yaml' leaves the repository"),
    (one(path="a/../../x.yaml"), "output path 'a/../../x.yaml' leaves the repository "
                                 "(target 't')"),
    (one(path=".git/hooks/post-checkout"), "is inside .git"),
    (one(path="a/.GIT/config"), "is inside .git"),
    (one(path="out/"), "names a directory"),
    (one(path="a/.."), "names the repository root"),
    (one(path="a\\b.yaml"), "contains a backslash"),
    (one(inputs="['/etc/passwd']"), "outputs[0].inputs[0]: input '/etc/passwd' is absolute"),
    (one(inputs="[{file: ../other/s.enc.yaml}]"),
     "outputs[0].inputs[0]: input '../other/s.enc.yaml' leaves the repository (target 't')"),
    (one(inputs="[x/../../s.enc.yaml]"), "input 'x/../../s.enc.yaml' leaves the repository"),
    (one(top="matrix: {d: ['..']}\n", inputs="['{d}/s.enc.yaml']"),
     "input '../s.enc.yaml' leaves the repository (target 't')"),
    (one(path="out/x.receipt.json"), "reserved for receipts"),
    # encrypt
    (one(encrypt="{}"), "outputs[0].encrypt: no keys"),
    (one(encrypt="{kms: [], age: []}"), "outputs[0].encrypt: no keys"),
    (one(encrypt=f"{{age: [{AGE}], encryption_context: {{a: b}}}}"),
     "outputs[0].encrypt.encryption_context: is only used with kms keys"),
    (one(encrypt=f"{{kms: [{ARN}], encryption_context: {{'{{a}}': b}}}}"),
     "placeholders are allowed in values only"),
    (one(encrypt=f"{{kms: [{ARN}, {ARN}]}}"), "outputs[0].encrypt.kms[1]: "),
    (one(encrypt=f"{{age: [{AGE}, {AGE}]}}"), "outputs[0].encrypt.age[1]: "),
    (one(encrypt="{age: [bob]}"), "outputs[0].encrypt.age[0]: 'bob' is not an age recipient"),
    (one(encrypt="{hc_vault: []}"), "outputs[0].encrypt: no keys: give KMS key ARNs (kms), "
                                    "age recipients (age) or Vault transit key URIs (hc_vault)"),
    (one(encrypt="{hc_vault: ['vault:8200/v1/transit/keys/k']}"),
     "outputs[0].encrypt.hc_vault[0]: 'vault:8200/v1/transit/keys/k' is not a Vault transit "
     "key URI (the address must be http(s)://HOST[:PORT] with no query)"),
    (one(encrypt="{hc_vault: ['v.example/v1/transit/keys/k']}"),
     "is not a Vault transit key URI (missing scheme in Vault URL"),
    (one(encrypt="{hc_vault: ['https://v/v1//transit/keys/k']}"),
     "outputs[0].encrypt.hc_vault[0]: 'https://v/v1//transit/keys/k' is not a Vault transit "
     "key URI (vault path does not seem"),
    (one(encrypt="{hc_vault: ['https://v/v1/transit/keys/k', 'https://v/v1/transit/keys/k']}"),
     "outputs[0].encrypt.hc_vault[1]: 'https://v/v1/transit/keys/k' is listed twice"),
    (one(top="matrix: {env: [a]}\n", encrypt="{hc_vault: ['https://v/v1/transit/keys/{k}']}"),
     "outputs[0].encrypt.hc_vault[0]: placeholder {k} names no matrix variable"),
    # extract
    (one(inputs="[{file: a, extract: a}]"), "outputs[0].inputs[0].extract: 'a' is not an "
                                            "extract path"),
    (one(inputs="[{file: a, extract: '[\"a\"'}]"), "is not an extract path"),
    (one(inputs="[{file: a, extract: '[\"a]'}]"), "is not an extract path"),
    (one(inputs="[{file: a, extract: '[\"a\"b\"]'}]"), "is not an extract path"),
    (one(inputs="[{file: a, extract: '[x]'}]"), "is not an extract path"),
    (one(inputs="[{file: a, extract: '[-1]'}]"), "is not an extract path"),
    (one(inputs="[{file: a, extract: '[\"a\"]x'}]"), "is not an extract path"),
    (one(top="matrix: {s: ['a\"b']}\n", target="t{s}", inputs="[{file: a, extract: "
                                                              "'[\"{s}\"]'}]"),
     "outputs[0].inputs[0].extract: '[\"a\"b\"]' is not an extract path like [\"key\"][0] "
     "(target 'ta\"b')"),
    # targets
    (one(target="a b"), "must not contain white space"),
    (one(target="-a"), "start with '-'"),
]

BAD_ARNS = [
    "arn:aws:kms:eu-west-1:1111:key/x",                     # short account
    "arn:aws:s3:::bucket",                                  # not kms
    "alias/foo",                                            # not an ARN
    "1234abcd-12ab-34cd-56ef-1234567890ab",                 # a bare key id
    "arn:aws:kms:eu-west-1:111122223333:thing/x",           # neither key nor alias
    "arn:aws:kms:eu-west-1:111122223333:key/",              # no id
    "arn:aws:kms:eu-west-1:111122223333:key/a b",           # white space
    "arn:aws:kms::111122223333:key/x",                      # no region
    "arn:gcp:kms:eu-west-1:111122223333:key/x",             # other partition scheme
    "xarn:aws:kms:eu-west-1:111122223333:key/x",
]


@pytest.mark.parametrize("text,expected", E, ids=[f"{i}" for i in range(len(E))])
def test_errors(text, expected):
    msg = error(text)
    assert msg.startswith(".sops-enclave.yaml: ")
    assert expected in msg


@pytest.mark.parametrize("arn", BAD_ARNS)
def test_invalid_arns_are_refused(arn):
    msg = error(one(encrypt=f"{{kms: [{arn!r}]}}"))
    assert msg.startswith(".sops-enclave.yaml: outputs[0].encrypt.kms[0]: ")
    assert "is not a KMS key ARN" in msg


@pytest.mark.parametrize("arn", [
    ARN, "arn:aws:kms:us-east-1:123456789012:alias/my/app-key_1",
    "arn:aws-us-gov:kms:us-gov-west-1:123456789012:key/mrk-1234abcd12ab34cd56ef1234567890ab",
    "arn:aws-cn:kms:cn-north-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
])
def test_valid_arns_are_accepted(arn):
    assert load(one(encrypt=f"{{kms: [{arn!r}]}}")).outputs[0].encrypt.kms == [arn]


def test_vault_transit_outputs_expand_and_are_described():
    m = load(one(top="matrix: {env: [prod, dev]}\n", target="t-{env}",
                 path="out/{env}.yaml",
                 encrypt="{hc_vault: ['https://vault.example.com:8200/v1/transit/keys/{env}'], "
                         f"kms: [{ARN}]}}"))
    assert [o.encrypt.hc_vault for o in m.outputs] == [
        ["https://vault.example.com:8200/v1/transit/keys/prod"],
        ["https://vault.example.com:8200/v1/transit/keys/dev"]]
    assert [o.encrypt.kms for o in m.outputs] == [[ARN], [ARN]]
    assert "  hc_vault https://vault.example.com:8200/v1/transit/keys/dev" in \
        m.describe(m.outputs)


def test_duplicate_targets_after_expansion():
    text = f"""\
        version: 1
        matrix: {{service: [api, worker], env: [prod]}}
        outputs:
          - target: "{{env}}"
            path: "deploy/{{service}}/{{env}}.enc.json"
            inputs: [common.enc.yaml]
            encrypt: {{kms: [{ARN}]}}
        """
    assert error(text) == (".sops-enclave.yaml: outputs[0].target: target 'prod' is also made "
                           "by outputs[0]")


def test_duplicate_output_paths_after_expansion():
    text = f"""\
        version: 1
        matrix: {{env: [staging, prod]}}
        outputs:
          - target: "a-{{env}}"
            path: "deploy/{{env}}.enc.json"
            inputs: [common.enc.yaml]
            encrypt: {{kms: [{ARN}]}}
          - target: "b"
            path: "deploy/./PROD.enc.json"
            inputs: [common.enc.yaml]
            encrypt: {{kms: [{ARN}]}}
        """
    assert error(text) == (".sops-enclave.yaml: outputs[1].path: output path "
                           "'deploy/PROD.enc.json' (target 'b') is also the output path of "
                           "target 'a-prod'")


def test_output_over_another_outputs_receipt():
    text = f"""\
        version: 1
        outputs:
          - {{target: a, path: x, inputs: [i.enc.yaml], encrypt: {{age: [{AGE}]}}}}
          - {{target: b, path: x.receipt.json.bin, inputs: [i.enc.yaml], encrypt: {{age: [{AGE}]}}}}
          - {{target: c, path: x.receipt.json, inputs: [i.enc.yaml], encrypt: {{age: [{AGE}]}}}}
        """
    assert "outputs[2].path: output path 'x.receipt.json' ends with .receipt.json" in error(text)


def test_output_may_not_overwrite_an_input_or_the_manifest():
    text = f"""\
        version: 1
        outputs:
          - {{target: a, path: secrets/a.enc.yaml, inputs: [x.enc.yaml], encrypt: {{age: [{AGE}]}}}}
          - {{target: b, path: b.enc.yaml, inputs: [Secrets/A.enc.yaml], encrypt: {{age: [{AGE}]}}}}
        """
    assert error(text) == (".sops-enclave.yaml: outputs[1].inputs[0]: input 'Secrets/A.enc.yaml'"
                           " (target 'b') would be overwritten: it is the output path of "
                           "target 'a'")
    assert "would overwrite the manifest" in error(one(path="pack.yaml"), path="./pack.yaml")


def test_matrix_too_large():
    values = ", ".join(f"v{i}" for i in range(70))
    text = one(top=f"matrix: {{a: [{values}], b: [{values}]}}\n", target="{a}-{b}",
               path="o/{a}/{b}.enc.yaml")
    assert f"expands to more than {mf.MAX_OUTPUTS} outputs" in error(text)


# ------------------------------------------------------------------------------ YAML-level

def test_duplicate_yaml_keys():
    assert error("version: 1\nversion: 1\noutputs: []\n") == \
        ".sops-enclave.yaml: line 2, column 1: duplicate key 'version'"
    text = one(inputs="[{file: a, file: b}]")
    assert "duplicate key 'file'" in error(text)


def test_yaml_limits_and_encoding():
    aliases = "a: &a [x]\nb: [" + ", ".join(["*a"] * (mf._MAX_YAML_ALIASES + 1)) + "]\n"
    assert "aliases" in error(aliases)
    deep = "version: 1\nx: " + "[" * 40 + "]" * 40 + "\n"
    assert "nested deeper than" in error(deep)
    with pytest.raises(ManifestError, match="not UTF-8"):
        load_manifest(b"version: 1\noutputs: [\xff]\n")
    with pytest.raises(ManifestError, match="larger than"):
        load_manifest(b"#" * (mf.MAX_MANIFEST_BYTES + 1))
    assert error("version: 1\n---\nversion: 1\n") == (
        ".sops-enclave.yaml: line 2, column 1: expected a single document in the stream; "
        "but found another document")
    assert "line 2, column 1: while parsing a flow sequence" in error("version: [1\n")
    assert "got binary data" in error(one(inputs="[!!binary aGVsbG8=]"))
    assert "outputs[0].inputs[0]: expected a path or a map with 'file', got a date" in \
        error(one(inputs="[2024-01-01]"))


# ------------------------------------------------------------------------------ describe

LABELS = {"manifest", "of", "targets", "target", "matrix", "output", "receipt", "input",
          "extract", "optional", "skipped", "not", "found", "kms", "context", "age"}


def _words(text: str) -> set[str]:
    return set(re.findall(r"[A-Za-z0-9]+", text))


def test_describe_says_only_what_the_manifest_says():
    text = DESIGN_EXAMPLE.replace("encryption_context", f"age: [{AGE}]\n      encryption_context")
    m = load(text)
    secrets = {"secrets/common.enc.yaml": "hunter2", "secrets/staging.enc.yaml": "s3cr3t",
               "secrets/prod.enc.yaml": "pr0dpass"}
    plans = m.plan(["api/staging", "worker/prod"], exists=lambda p: p in secrets)
    out = m.describe(plans)
    assert out.splitlines() == [
        "manifest .sops-enclave.yaml: 2 of 4 targets",
        "target api/staging",
        "  matrix   service=api env=staging",
        "  output   deploy/api/staging.enc.json (json)",
        "  receipt  deploy/api/staging.enc.json.receipt.json",
        "  input    secrets/common.enc.yaml",
        '  input    secrets/staging.enc.yaml extract ["api"]',
        "  skipped  secrets/api/staging.enc.yaml (optional) not found",
        "  kms      arn:aws:kms:eu-west-1:111122223333:key/...staging",
        '  context  {"service": "api", "env": "staging"}',
        f"  age      {AGE}",
        "target worker/prod",
        "  matrix   service=worker env=prod",
        "  output   deploy/worker/prod.enc.json (json)",
        "  receipt  deploy/worker/prod.enc.json.receipt.json",
        "  input    secrets/common.enc.yaml",
        '  input    secrets/prod.enc.yaml extract ["worker"]',
        "  skipped  secrets/worker/prod.enc.yaml (optional) not found",
        "  kms      arn:aws:kms:eu-west-1:111122223333:key/...prod",
        '  context  {"service": "worker", "env": "prod"}',
        f"  age      {AGE}",
    ]
    assert _words(out) <= _words(text) | _words(m.path) | LABELS | {"2", "4"}
    assert not any(v in out for v in secrets.values())


def test_describe_shows_optional_inputs_that_are_present():
    m = load(DESIGN_EXAMPLE)
    out = m.describe(m.plan(["api/prod"], exists=lambda p: True))
    assert "  input    secrets/api/prod.enc.yaml (optional)" in out
    assert "skipped" not in out
