"""The KMS key policy generator (sops_enclave.image.policy), enforced by the dev KMS's
policy evaluator (sops_enclave.devtools.kms_attested.evaluate_key_policy)."""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json

import pytest

from sops_enclave.devtools import nsm_soft
from sops_enclave.devtools.kms_attested import attestation_context, evaluate_key_policy
from sops_enclave.errors import SopsError
from sops_enclave.image import cli as image_cli
from sops_enclave.image.policy import PolicyError, key_policy, policy_for_dev
from sops_enclave.receipt.attestation import parse_attestation

ACCOUNT = "111122223333"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/pack-host"
ADMIN = f"arn:aws:iam::{ACCOUNT}:role/kms-admins"
ADMIN2 = f"arn:aws:iam::{ACCOUNT}:user/alice"
KEY = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
PCR0 = hashlib.sha384(b"image").hexdigest()
PCR1 = hashlib.sha384(b"kernel").hexdigest()
PCR2 = hashlib.sha384(b"app").hexdigest()
OTHER = hashlib.sha384(b"other").hexdigest()
PREFIX = "kms:recipientattestation:"

GATED = ("kms:Decrypt", "kms:GenerateDataKey")
DATA_PLANE = ("kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey",
              "kms:GenerateDataKeyWithoutPlaintext", "kms:GenerateDataKeyPair",
              "kms:GenerateDataKeyPairWithoutPlaintext", "kms:ReEncryptFrom", "kms:ReEncryptTo",
              "kms:GenerateRandom", "kms:DeriveSharedSecret", "kms:Sign", "kms:GenerateMac")


def ctx(image: str | None = PCR0, pcr1: str | None = PCR1, pcr2: str | None = PCR2
        ) -> dict[str, str]:
    """Condition-key context as the dev KMS builds it from an attested request."""
    out = {}
    if image is not None:
        out[PREFIX + "imagesha384"] = image
        out[PREFIX + "pcr0"] = image
    if pcr1 is not None:
        out[PREFIX + "pcr1"] = pcr1
    if pcr2 is not None:
        out[PREFIX + "pcr2"] = pcr2
    return out


def principals(statement: dict) -> set[str]:
    p = statement["Principal"]
    if p == "*":
        return {"*"}
    aws = p["AWS"]
    return {aws} if isinstance(aws, str) else set(aws)


def as_seen_by(policy: dict, arn: str) -> dict:
    """The statements that apply to ``arn`` (the dev evaluator ignores principals)."""
    return {**policy, "Statement": [s for s in policy["Statement"]
                                    if principals(s) & {"*", arn}]}


def allowed(policy: dict, action: str, context: dict[str, str]) -> bool:
    return evaluate_key_policy(policy, action, context).allowed


@pytest.fixture
def policy() -> dict:
    return key_policy(PCR0, pcr1=PCR1, pcr2=PCR2, role_arn=ROLE, admin_arns=[ADMIN, ADMIN2],
                      key_arn=KEY, account=ACCOUNT)


# --- enforcement by the dev KMS evaluator -----------------------------------------------

@pytest.mark.parametrize("action", GATED)
def test_right_measurement_is_allowed_for_the_role(policy, action):
    d = evaluate_key_policy(as_seen_by(policy, ROLE), action, ctx())
    assert d.allowed, d.reason
    assert "EnclaveDecryptWithAttestation" in d.reason
    # The whole policy (evaluated as if the caller were every principal) agrees.
    assert allowed(policy, action, ctx())
    # Condition values compare case-insensitively (KMS examples use IgnoreCase).
    assert allowed(policy, action, ctx(PCR0.upper(), PCR1.upper(), PCR2.upper()))


@pytest.mark.parametrize("action", GATED + ("kms:GenerateDataKeyWithoutPlaintext",
                                            "kms:GenerateDataKeyPair"))
@pytest.mark.parametrize("context,deny", [
    (ctx(image=None, pcr1=None, pcr2=None), "DenyDecryptWithoutAttestation"),
    (ctx(image=OTHER), "DenyDecryptForOtherImages"),
    (ctx(pcr1=OTHER), "DenyDecryptForOtherPCR1"),
    (ctx(pcr2=OTHER), "DenyDecryptForOtherPCR2"),
    (ctx(pcr1=None), "DenyDecryptForOtherPCR1"),
    (ctx(image=PCR0[:-1] + "0" if PCR0[-1] != "0" else PCR0[:-1] + "1"),
     "DenyDecryptForOtherImages"),
], ids=["absent", "wrong-image", "wrong-pcr1", "wrong-pcr2", "pcr1-absent", "one-digit"])
def test_anything_else_is_explicitly_denied(policy, action, context, deny):
    d = evaluate_key_policy(policy, action, context)
    assert not d.allowed
    assert f"explicitly denied by key policy statement '{deny}'" in d.reason


@pytest.mark.parametrize("sid,context", [
    ("DenyDecryptWithoutAttestation", {}),
    ("DenyDecryptForOtherImages", {}),
    ("DenyDecryptForOtherImages", ctx(image=OTHER)),
    ("DenyDecryptForOtherPCR1", ctx(pcr1=OTHER)),
    ("DenyDecryptForOtherPCR2", ctx(pcr2=OTHER)),
])
def test_each_deny_statement_denies_on_its_own(policy, sid, context):
    """Each Deny, alone next to an unconditional Allow, denies its case and not the
    enclave's own request."""
    deny = next(s for s in policy["Statement"] if s["Sid"] == sid)
    alone = {**policy, "Statement": [deny, {"Sid": "AllowAll", "Effect": "Allow",
                                            "Principal": "*", "Action": "kms:*",
                                            "Resource": "*"}]}
    for action in GATED:
        assert not allowed(alone, action, context)
        assert allowed(alone, action, ctx())


def test_without_pcr1_pin_only_image_matters():
    p = key_policy(PCR0, role_arn=ROLE, admin_arns=[ADMIN])
    assert allowed(p, "kms:Decrypt", ctx(pcr1=OTHER, pcr2=OTHER))
    assert not allowed(p, "kms:Decrypt", ctx(image=OTHER))
    assert not allowed(p, "kms:Decrypt", {})
    sids = [s["Sid"] for s in p["Statement"]]
    assert "DenyDecryptForOtherPCR1" not in sids
    cond = next(s for s in p["Statement"] if s["Sid"] == "EnclaveDecryptWithAttestation")
    assert cond["Condition"] == {"StringEqualsIgnoreCase": {
        "kms:RecipientAttestation:ImageSha384": PCR0}}


def test_a_second_unconditional_allow_does_not_open_the_key(policy):
    """The classic pitfall: another Allow for kms:Decrypt. The Deny statements still win."""
    leaky = {**policy, "Statement": policy["Statement"] + [
        {"Sid": "Oops", "Effect": "Allow", "Principal": {"AWS": "*"},
         "Action": "kms:*", "Resource": "*"}]}
    for action in GATED:
        assert not allowed(leaky, action, {})
        assert not allowed(leaky, action, ctx(image=OTHER))
        assert allowed(leaky, action, ctx())
    assert not allowed(leaky, "kms:ReEncryptFrom", ctx())


def test_the_deny_statements_are_what_protects():
    """Removing them (but keeping the conditional Allow) lets the leaky Allow through,
    so the previous test really exercises the Deny statements."""
    p = key_policy(PCR0, role_arn=ROLE, admin_arns=[ADMIN])
    no_deny = [s for s in p["Statement"] if s["Effect"] == "Allow"]
    leaky = {**p, "Statement": no_deny + [{"Sid": "Oops", "Effect": "Allow", "Principal": "*",
                                          "Action": "kms:Decrypt", "Resource": "*"}]}
    assert allowed(leaky, "kms:Decrypt", {})


def test_admins_cannot_decrypt_even_from_the_enclave(policy):
    for admin in (ADMIN, ADMIN2):
        seen = as_seen_by(policy, admin)
        for action in DATA_PLANE:
            for context in (ctx(), {}):
                assert not allowed(seen, action, context), (admin, action)
        for action in ("kms:PutKeyPolicy", "kms:ScheduleKeyDeletion", "kms:DescribeKey",
                       "kms:CreateGrant", "kms:TagResource", "kms:DisableKey"):
            assert allowed(seen, action, {}), action


def test_admin_statement_has_no_data_plane_action(policy):
    admin_statements = [s for s in policy["Statement"]
                        if s["Effect"] == "Allow" and principals(s) & {ADMIN, ADMIN2}]
    assert [s["Sid"] for s in admin_statements] == ["KeyAdministration"]
    patterns = admin_statements[0]["Action"]
    for action in DATA_PLANE:
        assert not any(fnmatch.fnmatchcase(action.lower(), p.lower()) for p in patterns), action
    assert principals(admin_statements[0]) == {ADMIN, ADMIN2}
    assert "Condition" not in admin_statements[0]


def test_role_gets_only_the_gated_actions_and_encrypt(policy):
    seen = as_seen_by(policy, ROLE)
    assert allowed(seen, "kms:Encrypt", {})
    for action in ("kms:PutKeyPolicy", "kms:ReEncryptFrom", "kms:ScheduleKeyDeletion",
                   "kms:GenerateDataKeyWithoutPlaintext", "kms:CreateGrant"):
        assert not allowed(seen, action, ctx()), action
    p = key_policy(PCR0, role_arn=ROLE, admin_arns=[ADMIN], allow_encrypt=False)
    assert not allowed(as_seen_by(p, ROLE), "kms:Encrypt", {})


def test_reencrypt_from_is_always_denied(policy):
    for context in (ctx(), {}, ctx(image=OTHER)):
        assert not allowed(policy, "kms:ReEncryptFrom", context)


def test_lock_policy():
    p = key_policy(PCR0, role_arn=ROLE, admin_arns=[ADMIN], lock_policy=True)
    admin = next(s for s in p["Statement"] if s["Sid"] == "KeyAdministration")
    assert "kms:Put*" not in admin["Action"]
    assert not allowed(p, "kms:PutKeyPolicy", {})
    assert allowed(as_seen_by(p, ADMIN), "kms:ScheduleKeyDeletion", {})
    assert allowed(p, "kms:Decrypt", ctx())


def test_document_shape(policy):
    assert policy["Version"] == "2012-10-17"
    assert KEY in policy["Id"]
    sids = [s["Sid"] for s in policy["Statement"]]
    assert len(sids) == len(set(sids))
    assert sids == ["KeyAdministration", "EnclaveDecryptWithAttestation", "EnclaveHostEncrypt",
                    "DenyDecryptWithoutAttestation", "DenyDecryptForOtherImages",
                    "DenyDecryptForOtherPCR1", "DenyDecryptForOtherPCR2", "DenyReEncryptFrom"]
    for s in policy["Statement"]:
        assert s["Resource"] == "*"
        if s["Effect"] == "Deny":
            assert s["Principal"] == "*"
    allow = policy["Statement"][1]
    assert allow["Principal"] == {"AWS": ROLE}
    assert allow["Action"] == ["kms:Decrypt", "kms:GenerateDataKey"]
    assert allow["Condition"] == {"StringEqualsIgnoreCase": {
        "kms:RecipientAttestation:ImageSha384": PCR0,
        "kms:RecipientAttestation:PCR1": PCR1, "kms:RecipientAttestation:PCR2": PCR2}}
    assert policy["Statement"][3]["Condition"] == {
        "Null": {"kms:RecipientAttestation:ImageSha384": "true"}}
    json.loads(json.dumps(policy))


def test_pcr_inputs_are_normalised():
    p = key_policy("0x" + PCR0.upper(), pcr1=bytes.fromhex(PCR1), role_arn=ROLE,
                   admin_arns=[ADMIN])
    cond = p["Statement"][1]["Condition"]["StringEqualsIgnoreCase"]
    assert cond["kms:RecipientAttestation:ImageSha384"] == PCR0
    assert cond["kms:RecipientAttestation:PCR1"] == PCR1


# --- input validation -------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["", PCR0[:-1], PCR0 + "0", "g" * 96, PCR0[:-2] + " 1",
                                 "0" * 96, b"\x01" * 47, 12345])
def test_bad_pcr0_rejected(bad):
    with pytest.raises(PolicyError):
        key_policy(bad, role_arn=ROLE, admin_arns=[ADMIN])


@pytest.mark.parametrize("field", ["pcr1", "pcr2", "pcr8"])
def test_bad_optional_pcr_rejected(field):
    with pytest.raises(PolicyError, match=field.upper()):
        key_policy(PCR0, role_arn=ROLE, admin_arns=[ADMIN], **{field: "ab" * 47})


def test_zero_pcr_only_with_allow_debug():
    p = key_policy("0" * 96, role_arn=ROLE, admin_arns=[ADMIN], allow_debug=True)
    assert allowed(p, "kms:Decrypt", ctx("0" * 96))


@pytest.mark.parametrize("arn", [
    "arn:aws:iam::12345:role/x", "arn:aws:s3:::bucket", "role/pack-host",
    f"arn:aws:iam::{ACCOUNT}:group/admins", f"arn:aws:sts::{ACCOUNT}:assumed-role/r/s",
    f"arn:aws:iam::{ACCOUNT}:role/", f"arn:aws:iam::{ACCOUNT}:role/a b",
    f"arn:aws:iam::{ACCOUNT}:root", f"arn:aws:iam::{ACCOUNT}:role/x\n", "*", "",
])
def test_bad_role_rejected(arn):
    with pytest.raises(PolicyError):
        key_policy(PCR0, role_arn=arn, admin_arns=[ADMIN])


@pytest.mark.parametrize("arn", [
    "arn:aws:iam::12345:role/x", "arn:aws:kms:us-east-1:111122223333:key/x", "admin", "*",
    f"arn:aws:iam::{ACCOUNT}:policy/p"])
def test_bad_admin_rejected(arn):
    with pytest.raises(PolicyError):
        key_policy(PCR0, role_arn=ROLE, admin_arns=[ADMIN, arn])


@pytest.mark.parametrize("arn", [
    f"arn:aws:iam::{ACCOUNT}:root", f"arn:aws-us-gov:iam::{ACCOUNT}:role/path/to/r",
    f"arn:aws-cn:iam::{ACCOUNT}:user/bob@example.com"])
def test_good_admins_accepted(arn):
    p = key_policy(PCR0, role_arn=ROLE, admin_arns=[arn])
    assert p["Statement"][0]["Principal"] == {"AWS": arn}


@pytest.mark.parametrize("key", [
    f"arn:aws:kms:us-east-1:{ACCOUNT}:alias/sops", "1234abcd-12ab-34cd-56ef-1234567890ab",
    f"arn:aws:kms:us-east-1:{ACCOUNT}:key/not-a-key-id", f"arn:aws:iam::{ACCOUNT}:role/x",
    f"arn:aws:kms:useast1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"])
def test_bad_key_arn_rejected(key):
    with pytest.raises(PolicyError, match="KMS key ARN"):
        key_policy(PCR0, role_arn=ROLE, admin_arns=[ADMIN], key_arn=key)


def test_multi_region_key_accepted():
    key = f"arn:aws:kms:eu-west-1:{ACCOUNT}:key/mrk-" + "ab" * 16
    assert key in key_policy(PCR0, role_arn=ROLE, admin_arns=[ADMIN], key_arn=key)["Id"]


def test_account_consistency():
    with pytest.raises(PolicyError, match="not 999988887777"):
        key_policy(PCR0, role_arn=ROLE, admin_arns=[ADMIN], key_arn=KEY,
                   account="999988887777")
    with pytest.raises(PolicyError, match="12-digit"):
        key_policy(PCR0, role_arn=ROLE, admin_arns=[ADMIN], account="1234")
    with pytest.raises(PolicyError, match="admin"):
        key_policy(PCR0, role_arn=ROLE, admin_arns=["arn:aws:iam::999988887777:root"],
                   account=ACCOUNT)


def test_admins_required_and_role_not_an_admin():
    with pytest.raises(PolicyError, match="at least one"):
        key_policy(PCR0, role_arn=ROLE, admin_arns=[])
    with pytest.raises(PolicyError, match="must not also be"):
        key_policy(PCR0, role_arn=ROLE, admin_arns=[ADMIN, ROLE])


def test_policy_error_is_a_sops_error():
    assert issubclass(PolicyError, SopsError)


# --- the dev measurement, end to end through the software NSM ---------------------------

FILES = {"sops_enclave/__init__.py": b"x = 1\n", "enclave/main.py": b"print('pack')\n"}


def test_policy_for_dev_pins_the_dev_measurement():
    pcrs = nsm_soft.measure_bundle(FILES)
    p = policy_for_dev(role_arn=ROLE, admin_arns=[ADMIN], files=FILES)
    assert p == key_policy(pcrs[0], pcr1=pcrs[1], pcr2=pcrs[2], role_arn=ROLE,
                           admin_arns=[ADMIN])


def test_policy_for_dev_with_soft_nsm_documents(tmp_path):
    p = policy_for_dev(role_arn=ROLE, admin_arns=[ADMIN], files=FILES)
    good = SoftNSMContext(tmp_path, FILES)
    changed = SoftNSMContext(tmp_path, {**FILES, "enclave/main.py": b"print('evil')\n"})
    for action in GATED:
        assert allowed(p, action, good)
        d = evaluate_key_policy(p, action, changed)
        assert not d.allowed and "DenyDecryptForOtherImages" in d.reason


def SoftNSMContext(tmp_path, files) -> dict[str, str]:  # noqa: N802 - reads as a constructor
    nsm = nsm_soft.SoftNSM(ca_dir=tmp_path / "ca", pcrs=nsm_soft.measure_bundle(files))
    return attestation_context(parse_attestation(nsm.attest(public_key=b"\x30" * 40)))


# --- CLI --------------------------------------------------------------------------------

def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    p = argparse.ArgumentParser()
    image_cli.register(p.add_subparsers())
    args = p.parse_args(argv)
    rc = args.func(args)
    return rc, capsys.readouterr().out


def test_cli_policy_prints_valid_json(capsys):
    rc, out = run_cli(["policy", "--pcr0", PCR0, "--pcr1", PCR1, "--pcr2", PCR2, "--role", ROLE,
                       "--admin", ADMIN, "--admin", ADMIN2, "--key-arn", KEY], capsys)
    assert rc == 0
    doc = json.loads(out)
    assert doc == key_policy(PCR0, pcr1=PCR1, pcr2=PCR2, role_arn=ROLE,
                             admin_arns=[ADMIN, ADMIN2], key_arn=KEY)
    assert allowed(doc, "kms:Decrypt", ctx()) and not allowed(doc, "kms:Decrypt", {})


def test_cli_policy_options(capsys):
    _, out = run_cli(["policy", "--pcr0", PCR0, "--role", ROLE, "--admin", ADMIN,
                      "--no-encrypt", "--lock-policy"], capsys)
    doc = json.loads(out)
    sids = [s["Sid"] for s in doc["Statement"]]
    assert "EnclaveHostEncrypt" not in sids and "DenyKeyPolicyChanges" in sids


def _dev_pcrs_stable(fn):
    """Run ``fn(expected)`` against the live dev measurement; others may be editing the
    package concurrently, so retry a few times if the tree changed in between."""
    for _ in range(3):
        before = nsm_soft.measure_bundle(nsm_soft.default_bundle())
        result = fn(before)
        after = nsm_soft.measure_bundle(nsm_soft.default_bundle())
        if before == after:
            return before, result
    pytest.skip("the installed package kept changing while measuring")


def test_cli_measure_dev_equals_measure_bundle(capsys):
    def run(_):
        rc, out = run_cli(["measure", "--dev", "--json"], capsys)
        assert rc == 0
        return json.loads(out)
    expected, doc = _dev_pcrs_stable(run)
    assert doc["Measurements"] == {"HashAlgorithm": "Sha384 { ... }",
                                   **{f"PCR{i}": expected[i].hex() for i in (0, 1, 2)}}
    assert doc["Dev"] is True

    expected, out = _dev_pcrs_stable(lambda _: run_cli(["measure", "--dev"], capsys)[1])
    lines = dict(line.split() for line in out.splitlines() if not line.startswith("#"))
    assert lines == {f"PCR{i}": expected[i].hex() for i in (0, 1, 2)}


def test_cli_policy_dev(capsys):
    expected, out = _dev_pcrs_stable(
        lambda _: run_cli(["policy", "--dev", "--role", ROLE, "--admin", ADMIN], capsys)[1])
    doc = json.loads(out)
    assert doc == key_policy(expected[0], pcr1=expected[1], pcr2=expected[2], role_arn=ROLE,
                             admin_arns=[ADMIN])


def test_cli_policy_from_eif(tmp_path, capsys):
    import struct
    import zlib

    from sops_enclave.image.eif import parse_eif

    body, offsets, sizes = b"", [], []
    for stype, data in [(1, b"kernel"), (2, b"cmdline"), (5, b"{}"), (3, b"boot"),
                        (3, b"app")]:
        offsets.append(548 + len(body))
        sizes.append(len(data))
        body += struct.pack(">HHQ", stype, 0, len(data)) + data
    head = struct.pack(">4sHHQQHH32Q32QI", b".eif", 4, 0, 0, 0, 0, 5,
                       *(offsets + [0] * 27), *(sizes + [0] * 27), 0)
    eif = head + struct.pack(">I", zlib.crc32(head + body)) + body
    path = tmp_path / "image.eif"
    path.write_bytes(eif)
    m = parse_eif(eif)
    _, out = run_cli(["policy", "--eif", str(path), "--role", ROLE, "--admin", ADMIN], capsys)
    assert json.loads(out) == key_policy(m.pcr0, pcr1=m.pcr1, pcr2=m.pcr2, role_arn=ROLE,
                                         admin_arns=[ADMIN])


def test_cli_policy_errors(capsys):
    with pytest.raises(PolicyError, match="96 hex"):
        run_cli(["policy", "--pcr0", "abc", "--role", ROLE, "--admin", ADMIN], capsys)
    with pytest.raises(PolicyError, match="not an IAM"):
        run_cli(["policy", "--pcr0", PCR0, "--role", "bob", "--admin", ADMIN], capsys)
    with pytest.raises(SopsError, match="--pcr1"):
        run_cli(["policy", "--dev", "--pcr1", PCR1, "--role", ROLE, "--admin", ADMIN], capsys)
    with pytest.raises(SystemExit):          # --pcr0 and --dev are mutually exclusive
        run_cli(["policy", "--dev", "--pcr0", PCR0, "--role", ROLE, "--admin", ADMIN], capsys)
    with pytest.raises(SystemExit):          # one of --pcr0/--dev/--eif is required
        run_cli(["policy", "--role", ROLE, "--admin", ADMIN], capsys)
