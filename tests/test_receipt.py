"""Receipts: build then verify, each link of the chain broken in turn, policy files, CLI."""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import shutil
import subprocess
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sops_enclave.devtools.nsm_soft import SoftNSM, measure_bundle
from sops_enclave.errors import ConfigError, ConflictingParameters, CouldNotReadInputFile
from sops_enclave.receipt import (
    EnclavePolicyRecord, InputRecord, KMSKeyUse, KMSRecipient, MergeConflict, OutputRecipients,
    PCRPolicy, ReceiptError, ReceiptFacts, ReceiptPolicy, SignerRecord, build_receipt,
    verify_receipt)
from sops_enclave.receipt.cli import register
from sops_enclave.receipt.dsse import PAYLOAD_TYPE_INTOTO, Envelope, pae
from sops_enclave.receipt.statement import BUILDER_ID_DEV, parse_statement

UTC = timezone.utc
NITRO = Path(__file__).parent.parent.parent / "shared" / "vectors" / "nitro"
SECRET_VALUE = "hunter2-plaintext-value"


# --------------------------------------------------------------------------- fixtures

def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    if not shutil.which("git"):
        pytest.skip("git is not installed")
    root = tmp_path_factory.mktemp("repo")
    _git(root, "init", "-q")
    (root / "secrets").mkdir()
    (root / "secrets" / "common.enc.yaml").write_bytes(b"db: ENC[AES256_GCM,data:xx,iv:yy]\n")
    (root / "secrets" / "prod.enc.yaml").write_bytes(b"api: ENC[AES256_GCM,data:zz,iv:ww]\n")
    (root / ".sops-enclave.yaml").write_bytes(b"version: 1\n")
    _git(root, "add", ".")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "init")
    return root


def _record(repo: Path, path: str, source: str = "kms-attested") -> InputRecord:
    return InputRecord(path, _git(repo, "rev-parse", f"HEAD:{path}"),
                       hashlib.sha256((repo / path).read_bytes()).hexdigest(), source)


@pytest.fixture(scope="module")
def facts(repo) -> ReceiptFacts:
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    return ReceiptFacts(
        output_name="deploy/api/prod.enc.json", repository="git+https://example.invalid/org/repo",
        commit=_git(repo, "rev-parse", "HEAD"), manifest_path=".sops-enclave.yaml",
        manifest_blob=_git(repo, "rev-parse", "HEAD:.sops-enclave.yaml"), target="api/prod",
        inputs=[_record(repo, "secrets/common.enc.yaml"), _record(repo, "secrets/prod.enc.yaml")],
        kms_keys=[KMSKeyUse("arn:aws:kms:eu-west-1:111122223333:key/k1", "req-1",
                            ("secrets/common.enc.yaml", "secrets/prod.enc.yaml"),
                            {"env": "prod"})],
        recipients=OutputRecipients(kms=(KMSRecipient("arn:aws:kms:eu-west-1:111122223333:key/out",
                                                      {"service": "api"}),),
                                    age=("age1examplerecipient",)),
        conflicts=[MergeConflict("db", ("secrets/common.enc.yaml", "secrets/prod.enc.yaml"),
                                 "secrets/prod.enc.yaml")],
        started_on=now, finished_on=now + timedelta(seconds=3), invocation_id="ci-run-42")


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dev-ca") / "ca"


@pytest.fixture(scope="module")
def nsm(ca_dir) -> SoftNSM:
    return SoftNSM(ca_dir, pcrs=measure_bundle({"enclave/app.py": b"serve()\n"}))


@pytest.fixture(scope="module")
def policy(nsm) -> ReceiptPolicy:
    pcrs = PCRPolicy([{i: nsm.describe_pcr(i).data for i in (0, 1, 2)}])
    return ReceiptPolicy(pcrs=pcrs, dev_root_fingerprint=nsm.root_fingerprint)


OUTPUT = b'{"db":"ENC[AES256_GCM,data:out,iv:1]","sops":{"version":"3.11.0"}}\n'


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def receipt(facts, nsm, key) -> bytes:
    return build_receipt(facts, OUTPUT, signing_key=key, nsm=nsm)


def _verify(receipt, policy, *, output=OUTPUT, allow_dev=True, allow_unrestricted=True, **kw):
    # The ``facts`` receipts record no enclave policy: UNRESTRICTED dev receipts, accepted
    # here so each test checks what it is about; the restricted ones are tested below.
    return verify_receipt(receipt, output, policy, allow_dev=allow_dev,
                          allow_unrestricted=allow_unrestricted, **kw)


def _refused(step: int, receipt, policy, **kw) -> ReceiptError:
    with pytest.raises(ReceiptError) as e:
        _verify(receipt, policy, **kw)
    assert e.value.step == step, str(e.value)
    assert set(e.value.completed) == set(range(1, step))
    return e.value


def _edit(receipt: bytes, fn) -> bytes:
    obj = json.loads(receipt)
    fn(obj)
    return json.dumps(obj).encode()


# --------------------------------------------------------------------------- the happy path

def test_build_then_verify(receipt, policy, repo, facts, nsm):
    r = _verify(receipt, policy, repo=repo, expected_subject="deploy/api/prod.enc.json")
    assert r.dev and r.root_fingerprint == nsm.root_fingerprint
    assert [r.details[n][0] for n in range(1, 11)] == ["ok"] * 9 + ["skipped"]
    assert "UNRESTRICTED" in r.details[9][1] and "no commit signer" in r.details[10][1]
    # Step 1 speaks before the signature is checked: it quotes nothing from the receipt.
    assert facts.output_name not in r.details[1][1] and facts.target not in r.details[1][1]
    st = r.statement
    assert st.commit == facts.commit and st.subject_name == facts.output_name
    assert st.subject_sha256 == hashlib.sha256(OUTPUT).hexdigest()
    assert [i.path for i in st.inputs] == ["secrets/common.enc.yaml", "secrets/prod.enc.yaml"]
    assert st.builder_id == BUILDER_ID_DEV
    assert r.attestation.user_data == hashlib.sha256(
        Envelope.from_json_obj(json.loads(receipt)["envelope"]).pae).digest()
    # Without a repository, step 7 is skipped, not failed; without an expected subject
    # only the digest is compared, and the detail says so.
    r = _verify(receipt, policy)
    assert r.details[7][0] == "skipped" and "path not compared" in r.details[6][1]


def test_receipt_layout_and_statement_shape(receipt, facts):
    obj = json.loads(receipt)
    assert set(obj) == {"envelope", "attestation"}
    env = obj["envelope"]
    assert env["payloadType"] == PAYLOAD_TYPE_INTOTO and len(env["signatures"]) == 1
    st = json.loads(base64.b64decode(env["payload"]))
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert st["predicateType"] == "https://slsa.dev/provenance/v1"
    bd = st["predicate"]["buildDefinition"]
    assert bd["externalParameters"] == {"source": facts.repository,
                                        "manifest": ".sops-enclave.yaml", "target": "api/prod"}
    assert bd["internalParameters"]["kms"][0] == {
        "arn": "arn:aws:kms:eu-west-1:111122223333:key/k1", "encryptionContext": {"env": "prod"},
        "requestId": "req-1", "dataKeyFor": ["secrets/common.enc.yaml", "secrets/prod.enc.yaml"]}
    assert bd["internalParameters"]["conflicts"] == [
        {"key": "db", "inputs": ["secrets/common.enc.yaml", "secrets/prod.enc.yaml"],
         "winner": "secrets/prod.enc.yaml"}]
    roles = [d["annotations"]["role"] for d in bd["resolvedDependencies"]]
    assert roles == ["source", "manifest", "input", "input"]
    assert st["predicate"]["runDetails"]["metadata"] == {
        "invocationId": "ci-run-42", "startedOn": "2025-01-02T03:04:05Z",
        "finishedOn": "2025-01-02T03:04:08Z"}


def test_no_plaintext_in_receipt(facts, nsm, key):
    # The output is ciphertext; the receipt holds only its digest and metadata, so even a
    # value that appears in the output file never reaches the receipt.
    output = OUTPUT.replace(b"out", SECRET_VALUE.encode())
    data = build_receipt(facts, output, signing_key=key, nsm=nsm)
    payload = base64.b64decode(json.loads(data)["envelope"]["payload"])
    assert SECRET_VALUE.encode() not in data and SECRET_VALUE.encode() not in payload
    assert output not in payload


def test_dsse_pae_known_answer():
    assert pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


def test_url_safe_unpadded_base64_accepted(receipt, policy):
    def urlsafe(o):
        raw = base64.b64decode(o["envelope"]["payload"])
        o["envelope"]["payload"] = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    _verify(_edit(receipt, urlsafe), policy)


def test_rollout_policy_second_set_matches(receipt, policy, nsm):
    old = {0: b"\x01" * 48, 1: nsm.describe_pcr(1).data, 2: b"\x02" * 48}
    two = replace(policy, pcrs=PCRPolicy([old, policy.pcrs.allowed[0]]))
    assert "set 2 of 2" in _verify(receipt, two).details[3][1]


# --------------------------------------------------------------------------- broken links

def test_output_changed(receipt, policy):
    _refused(6, receipt, policy, output=OUTPUT + b" ")


def test_envelope_payload_changed(receipt, policy):
    def retarget(o):
        st = json.loads(base64.b64decode(o["envelope"]["payload"]))
        st["predicate"]["buildDefinition"]["externalParameters"]["target"] = "api/staging"
        o["envelope"]["payload"] = base64.b64encode(json.dumps(st).encode()).decode()
    assert "user_data" in _refused(4, _edit(receipt, retarget), policy).reason


def test_signature_swapped(receipt, policy):
    other = ec.generate_private_key(ec.SECP256R1())

    def swap(o):
        env = Envelope.from_json_obj(o["envelope"])
        sig = other.sign(env.pae, ec.ECDSA(hashes.SHA256()))
        o["envelope"]["signatures"][0]["sig"] = base64.b64encode(sig).decode()
    _refused(5, _edit(receipt, swap), policy)


def test_second_signature_refused(receipt, policy):
    def add(o):
        o["envelope"]["signatures"].append(dict(o["envelope"]["signatures"][0]))
    _refused(5, _edit(receipt, add), policy)


def test_user_data_mismatch(receipt, policy, nsm, key):
    spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)

    def reattest(o):
        doc = nsm.attest(public_key=spki, user_data=hashlib.sha256(b"something else").digest())
        o["attestation"] = base64.b64encode(doc).decode()
    assert "user_data" in _refused(4, _edit(receipt, reattest), policy).reason


def test_attested_key_is_not_the_signing_key(receipt, policy, nsm):
    other = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo)

    def reattest(o):
        env = Envelope.from_json_obj(o["envelope"])
        doc = nsm.attest(public_key=other, user_data=hashlib.sha256(env.pae).digest())
        o["attestation"] = base64.b64encode(doc).decode()
    _refused(5, _edit(receipt, reattest), policy)


def test_attestation_without_public_key(receipt, policy, nsm):
    def reattest(o):
        env = Envelope.from_json_obj(o["envelope"])
        o["attestation"] = base64.b64encode(
            nsm.attest(user_data=hashlib.sha256(env.pae).digest())).decode()
    _refused(4, _edit(receipt, reattest), policy)


def test_attestation_tampered(receipt, policy):
    def flip(o):
        raw = bytearray(base64.b64decode(o["attestation"]))
        raw[-3] ^= 1
        o["attestation"] = base64.b64encode(bytes(raw)).decode()
    err = _refused(2, _edit(receipt, flip), policy)
    assert err.attestation_error is not None and err.attestation_error.step == 6


def test_pcr_policy_mismatch(receipt, policy):
    wrong = replace(policy, pcrs=PCRPolicy([{0: b"\x05" * 48}]))
    assert "PCR0" in _refused(3, receipt, wrong).reason


def test_no_pcr_policy_refused(receipt, policy):
    _refused(3, receipt, replace(policy, pcrs=None))


def test_debug_enclave_refused(facts, key, ca_dir, policy):
    debug = SoftNSM(ca_dir, pcrs={1: b"\x01" * 48})              # PCR0 all zeros
    data = build_receipt(facts, OUTPUT, signing_key=key, nsm=debug)
    zeros = replace(policy, pcrs=PCRPolicy([{0: bytes(48)}]))
    err = _refused(3, data, zeros)
    assert err.attestation_error.step == 7


def test_dev_receipt_without_allow_dev(receipt, policy):
    err = _refused(2, receipt, policy, allow_dev=False)
    assert "allow_dev" in err.reason and err.dev
    # Pinning the dev root as *the* root does not make it a production receipt either.
    as_root = replace(policy, root_fingerprint=policy.dev_root_fingerprint)
    _refused(2, receipt, as_root, allow_dev=False)
    _verify(receipt, as_root, allow_dev=True)


def test_dev_receipt_from_another_dev_ca(receipt, policy, tmp_path):
    stranger = SoftNSM(tmp_path / "other-ca", pcrs={})
    err = _refused(2, receipt, replace(policy, dev_root_fingerprint=stranger.root_fingerprint))
    assert err.attestation_error.step == 4


def test_payload_type_mismatch(receipt, policy):
    def retype(o):
        o["envelope"]["payloadType"] = "application/json"
    assert "payloadType" in _refused(1, _edit(receipt, retype), policy).reason


@pytest.mark.parametrize("breakage", ["duplicate_key", "unknown_field", "not_json",
                                      "bad_base64", "statement_type", "no_envelope"])
def test_malformed_receipts_refused_at_parse(receipt, policy, breakage):
    if breakage == "duplicate_key":
        text = receipt.decode()
        bad = text.replace('"attestation":', '"attestation": "AAAA", "attestation":', 1).encode()
    elif breakage == "unknown_field":
        bad = _edit(receipt, lambda o: o.update(extra=1))
    elif breakage == "not_json":
        bad = receipt[:-10]
    elif breakage == "bad_base64":
        bad = _edit(receipt, lambda o: o.update(attestation="%%%"))
    elif breakage == "no_envelope":
        bad = _edit(receipt, lambda o: o.pop("envelope"))
    else:
        def retype(o):
            st = json.loads(base64.b64decode(o["envelope"]["payload"]))
            st["_type"] = "https://in-toto.io/Statement/v0.1"
            o["envelope"]["payload"] = base64.b64encode(json.dumps(st).encode()).decode()
        bad = _edit(receipt, retype)
    _refused(1, bad, policy)


def test_repo_check_with_wrong_blob(facts, nsm, key, policy, repo):
    inputs = list(facts.inputs)
    inputs[1] = replace(inputs[1], git_blob=inputs[0].git_blob)      # a blob that exists elsewhere
    data = build_receipt(replace(facts, inputs=inputs), OUTPUT, signing_key=key, nsm=nsm)
    _verify(data, policy)                                             # fine without --repo
    assert "secrets/prod.enc.yaml" in _refused(7, data, policy, repo=repo).reason


@pytest.mark.parametrize("change", ["commit", "path", "sha256", "manifest"])
def test_repo_check_other_mismatches(facts, nsm, key, policy, repo, change):
    if change == "commit":
        f = replace(facts, commit="0" * 40)
    elif change == "path":
        f = replace(facts, inputs=[replace(facts.inputs[0], path="secrets/missing.enc.yaml")])
    elif change == "sha256":
        f = replace(facts, inputs=[replace(facts.inputs[0], sha256="ab" * 32)])
    else:
        f = replace(facts, manifest_blob=facts.inputs[0].git_blob)
    data = build_receipt(f, OUTPUT, signing_key=key, nsm=nsm)
    reason = _refused(7, data, policy, repo=repo).reason
    expected = {"commit": "is not in", "path": "does not exist", "sha256": "blob sha256",
                "manifest": ".sops-enclave.yaml"}[change]
    assert expected in reason, reason


def test_host_held_keys_follow_the_policy(facts, nsm, key, policy):
    inputs = [facts.inputs[0], replace(facts.inputs[1], key_source="host-age")]
    data = build_receipt(replace(facts, inputs=inputs), OUTPUT, signing_key=key, nsm=nsm)
    assert "host-held" in _verify(data, policy).details[8][1]        # dev: allowed by default
    err = _refused(8, data, replace(policy, allow_host_keys=False))
    assert "secrets/prod.enc.yaml" in err.reason
    _verify(data, replace(policy, allow_host_keys=True))


def test_kms_attestation_checked(facts, nsm, key, policy, ca_dir):
    kms_doc = nsm.attest(public_key=b"rsa-spki-placeholder")
    data = build_receipt(facts, OUTPUT, signing_key=key, nsm=nsm, kms_attestation=kms_doc)
    r = _verify(data, policy)
    assert r.kms_attestation is not None and "KMS attestation" in r.details[2][1]
    other_image = SoftNSM(ca_dir, pcrs=measure_bundle({"enclave/app.py": b"evil()\n"}))
    data = build_receipt(facts, OUTPUT, signing_key=key, nsm=nsm,
                         kms_attestation=other_image.attest(public_key=b"x"))
    _refused(3, data, policy)
    # Even when the policy allows both images, KMS keys released to another image do not
    # vouch for this run.
    other_pcrs = {i: other_image.describe_pcr(i).data for i in (0, 1, 2)}
    both = replace(policy, pcrs=PCRPolicy([policy.pcrs.allowed[0], other_pcrs]))
    assert "different image" in _refused(3, data, both).reason
    tampered = bytearray(kms_doc)
    tampered[-1] ^= 1
    data = build_receipt(facts, OUTPUT, signing_key=key, nsm=nsm, kms_attestation=bytes(tampered))
    _refused(2, data, policy)


def test_genuine_aws_attestation_is_not_a_dev_receipt(receipt):
    path = NITRO / "evervault_2022-10-13_prod_pcr8.cose"
    if not path.is_file():
        pytest.skip(f"Nitro vectors not found at {NITRO}")
    raw = path.read_bytes()
    data = _edit(receipt, lambda o: o.update(attestation=base64.b64encode(raw).decode()))
    pcr0 = ("f4d48b81a460c9916d1e685119074bf24660afd3e34fae9f"
            "ca0a0d28d9d5599936332687e6f66fc890ac8cf150142d8b")
    aws = ReceiptPolicy(pcrs=PCRPolicy.from_hex([{0: pcr0}]))
    err = _refused(4, data, aws, allow_dev=False)       # chain and PCRs fine, binds nothing
    assert not err.dev and "public_key" in err.reason


# --------------------------------------------------------------------------- statement & policy

def test_statement_round_trip_and_strictness(receipt):
    raw = base64.b64decode(json.loads(receipt)["envelope"]["payload"])
    st = parse_statement(raw)
    assert st.raw == raw and st.target == "api/prod"
    obj = json.loads(raw)
    obj["predicate"]["buildDefinition"]["externalParameters"]["surprise"] = 1
    with pytest.raises(ValueError, match="externalParameters"):
        parse_statement(json.dumps(obj).encode())
    with pytest.raises(ValueError):
        InputRecord("../etc/passwd", "a" * 40, "b" * 64)
    with pytest.raises(ValueError):
        InputRecord("a.yaml", "a" * 40, "b" * 64, key_source="magic")


def test_policy_file_parsing(nsm):
    p0 = nsm.describe_pcr(0).data.hex()
    text = f"""
version: 1
pcrs:
  - {{0: "{p0}", PCR1: "{'11' * 48}"}}
  - {{0: "{'22' * 48}"}}
root_fingerprint: "{'AB:' * 31}AB"
dev_root_fingerprint: "{nsm.root_fingerprint}"
allow_host_keys: false
"""
    p = ReceiptPolicy.from_yaml(text)
    assert len(p.pcrs.allowed) == 2 and p.pcrs.allowed[0][1] == b"\x11" * 48
    assert p.root_fingerprint == "ab" * 32 and p.allow_host_keys is False
    assert ReceiptPolicy.from_yaml("{}").root_fingerprint.startswith("641a0321")
    with pytest.raises(ValueError, match="duplicate"):
        ReceiptPolicy.from_yaml("pcrs: [{0: '%s', 0: '%s'}]" % ("00" * 48, "11" * 48))
    for bad in ("pcrs: [{0: 000000}]", "pcrs: []", "nope: 1", "version: 2",
                "pcrs: [{0: 'ab'}]", "allow_host_keys: maybe", "root_fingerprint: 'xyz'",
                "pcrs: [{0: '%s'}]\npcrs: [{1: '%s'}]" % ("00" * 48, "00" * 48),
                "- a list", "pcrs: [{}]"):
        with pytest.raises(ValueError):
            ReceiptPolicy.from_yaml(bad)


# --------------------------------------------------------------------------- CLI

@pytest.fixture
def files(repo, receipt, ca_dir, monkeypatch):
    """The output and its receipt at the path the receipt names, in the work tree."""
    monkeypatch.setenv("SOPS_ENCLAVE_DEV_CA_DIR", str(ca_dir))
    out = repo / "deploy" / "api" / "prod.enc.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(OUTPUT)
    (out.parent / "prod.enc.json.receipt.json").write_bytes(receipt)
    return out


def _run(argv: list[str]) -> tuple[int, str]:
    p = argparse.ArgumentParser()
    register(p.add_subparsers())
    args = p.parse_args(argv)
    out = io.StringIO()
    rc = args.func(args, out=out)
    return rc, out.getvalue()


def _pcr_args(nsm) -> list[str]:
    return [a for i in (0, 1, 2) for a in ("--pcr", f"{i}={nsm.describe_pcr(i).data.hex()}")]


def test_cli_verify_dev_ok(files, nsm, repo):
    rc, out = _run(["verify", str(files), *_pcr_args(nsm), "--allow-dev", "--repo", str(repo),
                    "--allow-unrestricted"])
    lines = out.splitlines()
    assert rc == 0 and len(lines) == 11, out
    for n, name in enumerate(["parse", "attestation", "pcrs", "binding", "signature",
                              "subject", "repo", "key sources", "enclave policy"], 1):
        assert lines[n - 1].startswith(f"[{n}] {name} ..") and " ok (dev)" in lines[n - 1]
    assert lines[9].startswith("[10] signer ..") and " skipped (dev)" in lines[9]
    assert all("(dev)" in line for line in lines)
    assert lines[-1].startswith("receipt verified (dev): deploy/api/prod.enc.json")


def test_cli_verify_failures(files, nsm):
    rc, out = _run(["verify", str(files), *_pcr_args(nsm)])           # no --allow-dev
    lines = out.splitlines()
    assert rc == 1 and "FAILED (dev)" in lines[1] and "not run" in lines[2]
    assert lines[-1].startswith("receipt NOT verified (dev): check [2] attestation")
    files.write_bytes(OUTPUT + b"changed")
    rc, out = _run(["verify", str(files), *_pcr_args(nsm), "--allow-dev", "--allow-unrestricted"])
    lines = out.splitlines()
    assert rc == 1 and "FAILED" in lines[5] and "not run" in lines[6] and " ok" in lines[4]
    rc, out = _run(["verify", str(files), "--allow-dev"])             # no PCR policy
    assert rc == 1 and "FAILED" in out.splitlines()[2]


def test_cli_verify_json_and_policy_file(files, nsm, tmp_path):
    pol = tmp_path / "policy.yaml"
    pol.write_text("pcrs:\n  - {" + ", ".join(
        f'{i}: "{nsm.describe_pcr(i).data.hex()}"' for i in (0, 1, 2)) + "}\n")
    rc, out = _run(["verify", str(files), "--policy", str(pol), "--allow-dev", "--json",
                    "--allow-unrestricted"])
    obj = json.loads(out)
    assert rc == 0 and obj["ok"] and obj["dev"]
    assert [c["status"] for c in obj["checks"]] == ["ok"] * 6 + ["skipped", "ok", "ok",
                                                                 "skipped"]
    assert obj["statement"]["target"] == "api/prod" and obj["statement"]["unrestricted"]
    assert obj["expected_subject"] == "deploy/api/prod.enc.json"
    assert obj["subject_from"] == "the git work tree"
    receipt2 = tmp_path / "elsewhere.json"
    receipt2.write_bytes((files.parent / "prod.enc.json.receipt.json").read_bytes())
    rc, _ = _run(["verify", str(files), "--receipt", str(receipt2), "--policy", str(pol),
                  "--allow-dev", "--allow-unrestricted"])
    assert rc == 0
    # The same policy file saying allow_unrestricted replaces the flag.
    pol.write_text(pol.read_text() + "allow_unrestricted: true\n")
    rc, _ = _run(["verify", str(files), "--policy", str(pol), "--allow-dev"])
    assert rc == 0


def test_cli_verify_usage_errors(files, tmp_path, nsm):
    with pytest.raises(CouldNotReadInputFile, match="nothing.json"):
        _run(["verify", str(files), "--receipt", str(tmp_path / "nothing.json")])
    with pytest.raises(CouldNotReadInputFile, match="missing.enc"):
        _run(["verify", str(tmp_path / "missing.enc")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("pcrs: [{0: 123}]\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        _run(["verify", str(files), "--policy", str(bad)])
    with pytest.raises(SystemExit):
        _run(["verify", str(files), "--policy", str(bad), *_pcr_args(nsm)])


def test_example_audit_policy_parses():
    """examples/audit-policy.yaml is a valid policy file (the docs match the code)."""
    from pathlib import Path

    from sops_enclave.receipt.policy import ReceiptPolicy

    text = (Path(__file__).resolve().parents[1] / "examples" / "audit-policy.yaml").read_text()
    policy = ReceiptPolicy.from_yaml(text)
    assert policy.allow_host_keys is False and policy.pcrs is not None
    assert policy.allow_unrestricted is False and policy.signers == ("release@example.com",)
    assert policy.enclave_policy_sha256 == ("0" * 64,)
    # The commented-out keys parse too, once uncommented.
    uncommented = text.replace("# ref:", "ref:").replace("# not_before:", "not_before:")
    again = ReceiptPolicy.from_yaml(uncommented)
    assert again.ref == "origin/main" and again.not_before.year == 2025


# --------------------------------------------------------------------------- enclave policy,
# commit signer and request nonce (issue #11)

ENCLAVE_POLICY = ("version: 1\ncommit_signers:\n  - \"release@example.com ssh-ed25519 AAAA\"\n"
                  "outputs: {kms: [\"arn:aws:kms:eu-west-1:111122223333:key/*\"]}\n")
NONCE = "a1" * 32


def _ssh_fingerprint() -> str:
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives.serialization import Encoding as E, PublicFormat as F

    line = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(E.OpenSSH, F.OpenSSH)
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


@pytest.fixture(scope="module")
def signer() -> SignerRecord:
    return SignerRecord("release@example.com,ops@example.com", "ssh-ed25519",
                        _ssh_fingerprint())


@pytest.fixture(scope="module")
def restricted_facts(facts, signer) -> ReceiptFacts:
    record = EnclavePolicyRecord(hashlib.sha256(ENCLAVE_POLICY.encode()).hexdigest(),
                                 ENCLAVE_POLICY)
    return replace(facts, enclave_policy=record, signer=signer, request_nonce=NONCE)


@pytest.fixture(scope="module")
def restricted(restricted_facts, nsm, key) -> bytes:
    return build_receipt(restricted_facts, OUTPUT, signing_key=key, nsm=nsm)


def _strict(receipt, policy, **kw):
    return _verify(receipt, policy, allow_unrestricted=False, **kw)


def _statement(receipt: bytes) -> dict:
    return json.loads(base64.b64decode(json.loads(receipt)["envelope"]["payload"]))


def test_restricted_statement_shape(restricted, restricted_facts, signer):
    st = _statement(restricted)
    ip = st["predicate"]["buildDefinition"]["internalParameters"]
    assert ip["enclavePolicy"] == {"sha256": restricted_facts.enclave_policy.sha256,
                                   "document": ENCLAVE_POLICY}
    assert ip["commitSigner"] == {"principal": signer.principal, "keyType": "ssh-ed25519",
                                  "fingerprint": signer.fingerprint}
    assert ip["requestNonce"] == NONCE
    source = st["predicate"]["buildDefinition"]["resolvedDependencies"][0]
    assert source["annotations"] == {"role": "source", "hostAsserted": ["uri"]}
    # The attestation carries the request nonce (build_receipt takes it from the facts).
    from sops_enclave.receipt.attestation import parse_attestation
    doc = parse_attestation(base64.b64decode(json.loads(restricted)["attestation"]))
    assert doc.nonce == bytes.fromhex(NONCE)
    parsed = parse_statement(base64.b64decode(json.loads(restricted)["envelope"]["payload"]))
    assert not parsed.unrestricted and parsed.signer == signer
    assert parsed.enclave_policy_sha256 == restricted_facts.enclave_policy.sha256
    assert parsed.enclave_policy_document == ENCLAVE_POLICY
    assert parsed.request_nonce == NONCE and parsed.host_asserted == ("uri",)


def test_unrestricted_statement_shape(receipt):
    ip = _statement(receipt)["predicate"]["buildDefinition"]["internalParameters"]
    assert ip["enclavePolicy"] == {"unrestricted": True}
    assert ip["commitSigner"] is None and ip["requestNonce"] is None


def test_restricted_receipt_verifies_and_shows_signer_and_policy(restricted, policy,
                                                                 restricted_facts, signer):
    r = _strict(restricted, policy, expected_subject="deploy/api/prod.enc.json")
    assert [r.details[n][0] for n in range(1, 11)] == ["ok"] * 6 + ["skipped"] + ["ok"] * 3
    assert f"sha256 {restricted_facts.enclave_policy.sha256}" in r.details[9][1]
    assert r.details[10][1] == f"{signer.principal} (ssh-ed25519 {signer.fingerprint})"
    assert f"nonce {NONCE[:16]}" in r.details[4][1]


def test_unrestricted_dev_receipt_needs_allow_unrestricted(receipt, policy):
    err = _refused(9, receipt, policy, allow_unrestricted=False)
    assert "UNRESTRICTED" in err.reason and "--allow-unrestricted" in err.reason
    assert "UNRESTRICTED" in _verify(receipt, policy).details[9][1]
    _verify(receipt, replace(policy, allow_unrestricted=True), allow_unrestricted=False)
    # Asking for a particular enclave policy cannot be met by a run that had none.
    pinned = replace(policy, enclave_policy_sha256=("ab" * 32,))
    assert "UNRESTRICTED" in _refused(9, receipt, pinned).reason
    # Asking for a signer cannot either.
    err = _refused(10, receipt, replace(policy, signers=("release@example.com",)))
    assert "no commit signer" in err.reason


def test_unrestricted_aws_receipt_is_refused_even_with_the_flag(receipt, restricted, policy,
                                                                nsm, monkeypatch):
    """A Nitro image always holds a policy: an AWS-rooted unrestricted receipt is refused
    whatever the flags. (The dev root stands in for the AWS one here.)"""
    from sops_enclave.receipt import verifier

    monkeypatch.setattr(verifier, "AWS_NITRO_ROOT_G1_SHA256", nsm.root_fingerprint)
    aws = replace(policy, root_fingerprint=nsm.root_fingerprint)
    err = _refused(9, receipt, aws, allow_dev=False, allow_unrestricted=True)
    assert not err.dev and "AWS root" in err.reason
    r = _strict(restricted, aws, allow_dev=False)                    # the control
    assert not r.dev


def test_required_enclave_policy(restricted, policy, restricted_facts):
    sha = restricted_facts.enclave_policy.sha256
    r = _strict(restricted, replace(policy, enclave_policy_sha256=("cd" * 32, sha.upper())))
    assert "as required" in r.details[9][1]
    err = _refused(9, restricted, replace(policy, enclave_policy_sha256=("cd" * 32,)),
                   allow_unrestricted=False)
    assert sha in err.reason and "cd" * 32 in err.reason


def test_policy_document_must_hash_to_its_sha256(restricted_facts, nsm, key, policy):
    record = EnclavePolicyRecord(restricted_facts.enclave_policy.sha256, ENCLAVE_POLICY)
    object.__setattr__(record, "document", ENCLAVE_POLICY.replace("release@", "anyone@"))
    forged = build_receipt(replace(restricted_facts, enclave_policy=record), OUTPUT,
                           signing_key=key, nsm=nsm)
    err = _refused(9, forged, policy, allow_unrestricted=False)
    assert "does not hash" in err.reason
    with pytest.raises(ValueError, match="does not hash"):
        EnclavePolicyRecord("ab" * 32, ENCLAVE_POLICY)


@pytest.mark.parametrize("wanted,ok", [
    ("release@example.com", True), ("ops@example.com", True),
    ("release@example.com,ops@example.com", True), ("FINGERPRINT", True),
    ("release@example", False), ("elease@example.com", False), ("OTHER_FINGERPRINT", False)])
def test_required_signer(restricted, policy, signer, wanted, ok):
    wanted = {"FINGERPRINT": signer.fingerprint,
              "OTHER_FINGERPRINT": _ssh_fingerprint()}.get(wanted, wanted)
    pol = replace(policy, signers=("nobody@example.com", wanted))
    if ok:
        assert _strict(restricted, pol).details[10][1].endswith(", allowed")
    else:
        err = _refused(10, restricted, pol, allow_unrestricted=False)
        assert signer.fingerprint in err.reason and "nobody@example.com" in err.reason


def test_nonce_binds_the_attestation(restricted_facts, nsm, key, policy):
    class OtherNonce:
        is_dev = True

        def attest(self, public_key=None, user_data=None, nonce=None):
            return nsm.attest(public_key=public_key, user_data=user_data, nonce=b"\x00" * 32)

    forged = build_receipt(restricted_facts, OUTPUT, signing_key=key, nsm=OtherNonce())
    assert "nonce" in _refused(4, forged, policy, allow_unrestricted=False).reason
    with pytest.raises(ValueError, match="nonce"):
        build_receipt(restricted_facts, OUTPUT, signing_key=key, nsm=nsm, nonce=b"\x01" * 32)


def _parse_edited(receipt: bytes, edit) -> None:
    st = _statement(receipt)
    edit(st["predicate"]["buildDefinition"])
    parse_statement(json.dumps(st).encode())


@pytest.mark.parametrize("edit", [
    lambda bd: bd["internalParameters"]["commitSigner"].update(fingerprint="SHA256:abc"),
    lambda bd: bd["internalParameters"]["commitSigner"].update(
        fingerprint=bd["internalParameters"]["commitSigner"]["fingerprint"][:-1] + "B"),
    lambda bd: bd["internalParameters"]["commitSigner"].update(fingerprint="MD5:aa"),
    lambda bd: bd["internalParameters"]["commitSigner"].update(keyType="ssh-dss"),
    lambda bd: bd["internalParameters"]["commitSigner"].update(principal="a\x1b[8mb"),
    lambda bd: bd["internalParameters"]["commitSigner"].update(principal=""),
    lambda bd: bd["internalParameters"]["commitSigner"].update(extra=1),
    lambda bd: bd["internalParameters"].update(commitSigner="release@example.com"),
    lambda bd: bd["internalParameters"].update(enclavePolicy={"unrestricted": False}),
    lambda bd: bd["internalParameters"].update(enclavePolicy={"unrestricted": 1}),
    lambda bd: bd["internalParameters"].update(enclavePolicy=None),
    lambda bd: bd["internalParameters"]["enclavePolicy"].update(unrestricted=True),
    lambda bd: bd["internalParameters"]["enclavePolicy"].update(sha256="AB" * 32),
    lambda bd: bd["internalParameters"]["enclavePolicy"].update(document=None),
    lambda bd: bd["internalParameters"].update(requestNonce="xyz"),
    lambda bd: bd["internalParameters"].update(requestNonce="abc"),
    lambda bd: bd["internalParameters"].update(requestNonce=""),
    lambda bd: bd["internalParameters"].update(requestNonce="AB" * 16),
    lambda bd: bd["internalParameters"].update(surprise=1),
    lambda bd: bd["resolvedDependencies"][0]["annotations"].update(hostAsserted=["commit"]),
    lambda bd: bd["resolvedDependencies"][0]["annotations"].update(hostAsserted="uri"),
    lambda bd: bd["resolvedDependencies"][0]["annotations"].update(hostAsserted=["uri", "uri"]),
])
def test_new_statement_fields_are_strict(restricted, edit):
    _parse_edited(restricted, lambda bd: None)                       # the control parses
    with pytest.raises(ValueError):
        _parse_edited(restricted, edit)


def test_statement_without_the_new_fields_is_unrestricted(restricted):
    st = _statement(restricted)
    ip = st["predicate"]["buildDefinition"]["internalParameters"]
    for k in ("enclavePolicy", "commitSigner", "requestNonce"):
        del ip[k]
    del st["predicate"]["buildDefinition"]["resolvedDependencies"][0]["annotations"][
        "hostAsserted"]
    parsed = parse_statement(json.dumps(st).encode())
    assert parsed.unrestricted and parsed.signer is None and parsed.request_nonce is None
    assert parsed.enclave_policy_sha256 is None and parsed.host_asserted == ()


def test_new_records_validate_on_construction(facts, signer):
    for bad in (dict(key_type="ssh-dss"), dict(fingerprint="SHA256:" + "A" * 42),
                dict(principal="a\u202eb"), dict(principal="")):
        with pytest.raises(ValueError):
            replace(signer, **bad)
    for nonce in ("", "abc", "AB" * 8, "zz", "00" * 1025):
        with pytest.raises(ValueError):
            replace(facts, request_nonce=nonce)
    with pytest.raises(ValueError):
        replace(facts, signer="release@example.com")
    assert signer.matches("ops@example.com") and not signer.matches("ops@example")


def test_policy_file_new_keys(nsm):
    p0 = nsm.describe_pcr(0).data.hex()
    p = ReceiptPolicy.from_yaml(f"""
pcrs: [{{0: "{p0}"}}]
allow_unrestricted: true
signers: ["release@example.com", "SHA256:{'A' * 43}"]
enclave_policy_sha256: ["{'AB' * 32}"]
ref: origin/main
not_before: 2025-01-31T12:00:00+01:00
""")
    assert p.allow_unrestricted and p.signers == ("release@example.com", "SHA256:" + "A" * 43)
    assert p.enclave_policy_sha256 == ("ab" * 32,) and p.ref == "origin/main"
    assert p.not_before == datetime(2025, 1, 31, 11, tzinfo=UTC)
    assert ReceiptPolicy.from_yaml("not_before: 2025-01-31").not_before == \
        datetime(2025, 1, 31, tzinfo=UTC)
    assert ReceiptPolicy.from_yaml("not_before: '2025-01-31T00:00:00Z'").not_before == \
        datetime(2025, 1, 31, tzinfo=UTC)
    for bad in ("allow_unrestricted: maybe", "signers: release@example.com", "signers: []",
                "signers: [1]", "enclave_policy_sha256: ['abc']",
                "enclave_policy_sha256: [1234]", "ref: '-x'", "ref: 'a b'",
                "not_before: yesterday", "pcrs: [{3: '%s'}]" % ("00" * 48),
                "pcrs: [{1: '%s'}]" % ("00" * 48)):
        with pytest.raises(ValueError):
            ReceiptPolicy.from_yaml(bad)


@pytest.fixture
def restricted_files(repo, restricted, ca_dir, monkeypatch):
    monkeypatch.setenv("SOPS_ENCLAVE_DEV_CA_DIR", str(ca_dir))
    out = repo / "deploy" / "api" / "prod.enc.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(OUTPUT)
    (out.parent / "prod.enc.json.receipt.json").write_bytes(restricted)
    return out


def test_cli_signer_and_enclave_policy(restricted_files, nsm, signer, tmp_path):
    base = ["verify", str(restricted_files), *_pcr_args(nsm), "--allow-dev"]
    rc, out = _run(base)
    lines = out.splitlines()
    assert rc == 0, out
    assert lines[8].startswith("[9] enclave policy") and "sha256 " in lines[8]
    assert lines[9].startswith("[10] signer") and signer.fingerprint in lines[9] \
        and "ssh-ed25519" in lines[9] and signer.principal in lines[9]
    good = tmp_path / "enclave-policy.yaml"
    good.write_text(ENCLAVE_POLICY)
    other = tmp_path / "other.yaml"
    other.write_text(ENCLAVE_POLICY + "# changed\n")
    rc, out = _run(base + ["--enclave-policy", str(good), "--signer", signer.fingerprint])
    assert rc == 0 and "as required" in out and ", allowed" in out
    rc, out = _run(base + ["--enclave-policy", str(other)])
    assert rc == 1 and "FAILED" in out.splitlines()[8]
    rc, out = _run(base + ["--signer", "mallory@example.com"])
    assert rc == 1 and "FAILED" in out.splitlines()[9]
    rc, out = _run(base + ["--signer", "mallory@example.com", "--signer", "ops@example.com"])
    assert rc == 0
    rc, out = _run(base + ["--json"])
    obj = json.loads(out)
    assert obj["statement"]["signer"] == {"principal": signer.principal,
                                          "key_type": "ssh-ed25519",
                                          "fingerprint": signer.fingerprint}
    assert obj["statement"]["enclave_policy"]["document"] == ENCLAVE_POLICY
    assert obj["statement"]["request_nonce"] == NONCE and not obj["statement"]["unrestricted"]
    # A requirement in the policy file and as a flag: refused, not merged.
    pol = tmp_path / "policy.yaml"
    pol.write_text("pcrs:\n  - {" + ", ".join(
        f'{i}: "{nsm.describe_pcr(i).data.hex()}"' for i in (0, 1, 2))
        + "}\nsigners: [release@example.com]\n")
    rc, out = _run(["verify", str(restricted_files), "--policy", str(pol), "--allow-dev"])
    assert rc == 0, out
    with pytest.raises(ConflictingParameters, match="--signer"):
        _run(["verify", str(restricted_files), "--policy", str(pol), "--allow-dev",
              "--signer", "x@example.com"])
