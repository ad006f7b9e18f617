"""Adversarial tests of the dev KMS (sops_enclave.devtools.kms_attested): the requests an
attacker would send to get a data key of an attestation-gated key, against the key policy
that ``sops-enclave policy`` generates.

The table test runs every data-key-revealing action as each kind of caller, with no, the
right and a wrong attestation, and compares the outcome with the decision the generated
policy states (written out by hand below, statement by statement, not computed by the
evaluator under test)."""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import http.client
import io
import json
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sops_enclave.cms import open_ciphertext_for_recipient

from sops_enclave.devtools.kms_attested import AttestedKMS
from sops_enclave.devtools.nsm_soft import SoftNSM
from sops_enclave.image import cli as image_cli
from sops_enclave.image.policy import key_policy

ACCOUNT = "123456789012"
HOST = f"arn:aws:iam::{ACCOUNT}:role/ci-host"          # the dev stand-in's defaults
ADMIN = f"arn:aws:iam::{ACCOUNT}:role/kms-admin"
HOST_CREDS = ("dev", "dev")
ADMIN_CREDS = ("kms-admin", "kms-admin")
JSON_11 = "application/x-amz-json-1.1"


def _pcrs(tag: bytes) -> dict[int, bytes]:
    return {i: hashlib.sha384(tag + bytes([i])).digest() for i in range(3)}


IMAGE_A = _pcrs(b"adversarial image A")
IMAGE_B = _pcrs(b"adversarial image B")


def _client(url: str, creds: tuple[str, str]):
    return boto3.client("kms", region_name="us-east-1", endpoint_url=url,
                        aws_access_key_id=creds[0], aws_secret_access_key=creds[1],
                        config=Config(retries={"max_attempts": 1}))


def _generated_policy(*extra: str) -> dict:
    """What ``sops-enclave policy --pcr0 .. --pcr1 .. --pcr2 .. --role HOST --admin ADMIN``
    prints (run through the command's own argument parser and handler)."""
    parser = argparse.ArgumentParser()
    image_cli.register(parser.add_subparsers())
    args = parser.parse_args(["policy", "--pcr0", IMAGE_A[0].hex(), "--pcr1", IMAGE_A[1].hex(),
                              "--pcr2", IMAGE_A[2].hex(), "--role", HOST, "--admin", ADMIN,
                              *extra])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert args.func(args) == 0
    policy = json.loads(out.getvalue())
    assert policy == key_policy(IMAGE_A[0].hex(), pcr1=IMAGE_A[1].hex(), pcr2=IMAGE_A[2].hex(),
                                role_arn=HOST, admin_arns=[ADMIN],
                                lock_policy="--lock-policy" in extra)
    return policy


def raw_request(url: str, targets: list[str], body: bytes | dict, creds=HOST_CREDS,
                content_type: str = JSON_11) -> tuple[int, bytes]:
    """POST a SigV4-signed KMS request with exactly these X-Amz-Target header values (botocore
    signs them all, so a refusal is never a signature failure)."""
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    req = AWSRequest(method="POST", url=url + "/", data=body)
    req.headers["Content-Type"] = content_type
    for t in targets:
        req.headers["X-Amz-Target"] = t          # email.message semantics: appends
    SigV4Auth(Credentials(*creds), "kms", "us-east-1").add_auth(req)
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest("POST", "/", skip_accept_encoding=True)
        for name, value in req.headers.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# --- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("dev-ca")


@pytest.fixture(scope="module")
def nsm(ca_dir) -> SoftNSM:
    return SoftNSM(ca_dir=ca_dir, pcrs=IMAGE_A)


@pytest.fixture(scope="module")
def default_kms(kms_server, nsm):
    """The dev KMS with its default principal table (dev = ci-host, kms-admin = kms-admin)."""
    kms = AttestedKMS(kms_server, [nsm.root_fingerprint])
    kms.start()
    yield kms
    kms.stop()


@pytest.fixture(scope="module")
def moto(kms_server):
    """moto itself, behind no checks: the ground truth for data keys."""
    return _client(kms_server, ("testing", "testing"))


@pytest.fixture(scope="module")
def gated(default_kms) -> str:
    """A key under the generated policy (set up through the dev KMS by the admin)."""
    admin = _client(default_kms.url, ADMIN_CREDS)
    arn = admin.create_key(Description="adversarial: gated")["KeyMetadata"]["Arn"]
    admin.put_key_policy(KeyId=arn, PolicyName="default",
                         Policy=json.dumps(_generated_policy()))
    return arn


@pytest.fixture(scope="module")
def ungated(default_kms) -> str:
    """A key with moto's default policy (the account root: every principal of the account)."""
    return _client(default_kms.url, HOST_CREDS).create_key(
        Description="adversarial: ungated")["KeyMetadata"]["Arn"]


@pytest.fixture(scope="module")
def data_key(moto, gated) -> tuple[bytes, bytes]:
    r = moto.generate_data_key(KeyId=gated, KeySpec="AES_256")
    return r["Plaintext"], r["CiphertextBlob"]


def _no_plaintext(body: bytes, secret: bytes) -> None:
    assert b"Plaintext" not in body
    assert base64.b64encode(secret) not in body and secret not in body


# --- one test per bypass found in review ------------------------------------------------------

@pytest.mark.parametrize("targets", [
    ["TrentService.decrypt"],
    ["TrentService.Decrypt "],
    ["TrentService.Encrypt", "TrentService.Decrypt"],
    ["TrentService.Decrypt", "TrentService.Decrypt"],
], ids=["lower-case", "trailing-space", "two-headers", "two-equal-headers"])
def test_target_header_tricks_are_refused(default_kms, data_key, targets):
    plaintext, blob = data_key
    body = {"CiphertextBlob": base64.b64encode(blob).decode()}
    before = default_kms.forwarded
    status, answer = raw_request(default_kms.url, targets, body)
    assert status == 400, answer
    assert json.loads(answer)["__type"] == "UnknownOperationException"
    _no_plaintext(answer, plaintext)
    assert default_kms.forwarded == before          # nothing reached moto


def test_the_same_request_spelled_right_is_denied_by_policy(default_kms, data_key):
    """Control for the test above: the body and credentials are fine, only the policy denies."""
    plaintext, blob = data_key
    status, answer = raw_request(default_kms.url, ["TrentService.Decrypt"],
                                 {"CiphertextBlob": base64.b64encode(blob).decode()})
    assert status == 400 and json.loads(answer)["__type"] == "AccessDeniedException"
    assert "DenyDecryptWithoutAttestation" in json.loads(answer)["message"]
    _no_plaintext(answer, plaintext)


def test_reencrypt_to_an_ungated_key_is_denied(default_kms, data_key, ungated, moto):
    plaintext, blob = data_key
    host = _client(default_kms.url, HOST_CREDS)
    with pytest.raises(ClientError) as e:
        host.re_encrypt(CiphertextBlob=blob, DestinationKeyId=ungated)
    assert e.value.response["Error"]["Code"] == "AccessDeniedException"
    assert "DenyReEncryptFrom" in e.value.response["Error"]["Message"]
    assert "CiphertextBlob" not in e.value.response and "Plaintext" not in e.value.response
    # with the source named explicitly, refused before anything runs
    before = default_kms.forwarded
    with pytest.raises(ClientError) as e:
        host.re_encrypt(CiphertextBlob=blob, SourceKeyId=data_key_source(moto, blob),
                        DestinationKeyId=ungated)
    assert e.value.response["Error"]["Code"] == "AccessDeniedException"
    assert default_kms.forwarded == before


def data_key_source(moto, blob: bytes) -> str:
    return moto.decrypt(CiphertextBlob=blob)["KeyId"]


def test_generate_data_key_without_plaintext_is_denied(default_kms, gated):
    host = _client(default_kms.url, HOST_CREDS)
    before = default_kms.forwarded
    with pytest.raises(ClientError) as e:
        host.generate_data_key_without_plaintext(KeyId=gated, KeySpec="AES_256")
    assert e.value.response["Error"]["Code"] == "AccessDeniedException"
    assert "DenyDecryptWithoutAttestation" in e.value.response["Error"]["Message"]
    assert "CiphertextBlob" not in e.value.response and "Plaintext" not in e.value.response
    assert default_kms.forwarded == before


# --- the table: every data-key-revealing action, every kind of caller -------------------------

GRANTEE = f"arn:aws:iam::{ACCOUNT}:role/batch-job"       # gets a grant from the admin
OUTSIDER = f"arn:aws:iam::{ACCOUNT}:role/developer"      # known, named nowhere in the policy
CALLERS = {
    "admin": ("AKIDADVADMIN", "admin-secret", ADMIN),
    "host": ("AKIDADVHOST", "host-secret", HOST),
    "grantee": ("AKIDADVGRANTEE", "grantee-secret", GRANTEE),
    "outsider": ("AKIDADVOUTSIDER", "outsider-secret", OUTSIDER),
    "unknown": ("AKIDADVUNKNOWN", "unknown-secret", None),  # not in the dev KMS's table
}
#: What the admin grants the grantee on the gated key: everything that yields key material.
GRANTEE_OPERATIONS = ["Decrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext",
                      "ReEncryptFrom", "GenerateDataKeyPair"]

# Outcomes: "allow"; "deny:<Sid>" (that Deny statement applied); "deny:no-allow" (no Allow
# statement and no grant); "unknown-caller" (UnrecognizedClientException); "unimplemented"
# (the policy allowed it, but this stand-in does not implement Recipient for the operation);
# "-" (a second step that did not run).
NO_ATT = "deny:DenyDecryptWithoutAttestation"       # Null ImageSha384 -> Deny (Principal *)
OTHER = "deny:DenyDecryptForOtherImages"            # another ImageSha384 -> Deny
NO_ALLOW = "deny:no-allow"
UNKNOWN = "unknown-caller"
REENC = "deny:DenyReEncryptFrom"                    # unconditional Deny (Principal *)

# (scenario, caller, attestation) -> expected outcome(s), as the generated policy states:
# only EnclaveDecryptWithAttestation (the host role; Decrypt and GenerateDataKey with the
# pinned ImageSha384/PCR1/PCR2) and grants allow key material, never past the Deny statements.
EXPECTED = {}
for _who in ("admin", "host", "grantee", "outsider"):
    # Decrypt and GenerateDataKey: host (policy) and grantee (grant) with the right document.
    for _scenario in ("decrypt", "generate_data_key"):
        EXPECTED[_scenario, _who, "none"] = NO_ATT
        EXPECTED[_scenario, _who, "right"] = "allow" if _who in ("host", "grantee") else NO_ALLOW
        EXPECTED[_scenario, _who, "wrong"] = OTHER
    # ReEncrypt takes no Recipient: DenyReEncryptFrom for everyone, so nothing to decrypt.
    EXPECTED["reencrypt_then_decrypt", _who, "none"] = (REENC, "-")
    # GenerateDataKeyWithoutPlaintext takes no Recipient: kms:GenerateDataKey* Deny.
    EXPECTED["generate_without_plaintext_then_decrypt", _who, "none"] = (NO_ATT, "-")
    # GenerateDataKeyPair: GenerateDataKey* Denies; with the right document only the grant
    # (which lists it) allows it, and then this stand-in refuses Recipient for it.
    EXPECTED["generate_data_key_pair", _who, "none"] = NO_ATT
    EXPECTED["generate_data_key_pair", _who, "right"] = (
        "unimplemented" if _who == "grantee" else NO_ALLOW)
    EXPECTED["generate_data_key_pair", _who, "wrong"] = OTHER
    EXPECTED["generate_data_key_pair_without_plaintext", _who, "none"] = NO_ATT
    # CreateGrant (to oneself, Decrypt) on a fresh gated key, then Decrypt: only the admins
    # may create grants (KeyAdministration: kms:Create*); a grant does not beat a Deny.
    for _att in ("none", "right", "wrong"):
        create = "allow" if _who == "admin" else NO_ALLOW
        use = {"none": NO_ATT, "wrong": OTHER}.get(
            _att, "allow" if _who in ("admin", "host") else NO_ALLOW)
        EXPECTED["create_grant_then_decrypt", _who, _att] = (create, use)
    # PutKeyPolicy (an allow-everything policy) on a fresh gated key, then a plain Decrypt:
    # only the admins may (kms:Put*), and then the admin reads the data key: the power an
    # unlocked policy leaves (test_admin_can_rewrite_unless_locked).
    EXPECTED["put_key_policy_then_decrypt", _who, "none"] = (
        ("allow", "allow") if _who == "admin" else (NO_ALLOW, NO_ATT))
for (_scenario, _who, _att), _outcome in list(EXPECTED.items()):
    if _who == "admin":
        EXPECTED[_scenario, "unknown", _att] = (
            (UNKNOWN, UNKNOWN) if isinstance(_outcome, tuple) and _outcome[1] != "-"
            else (UNKNOWN, "-") if isinstance(_outcome, tuple) else UNKNOWN)
#: Rows whose answer may carry the data key in plaintext (the admin's rewrite).
PLAINTEXT_ALLOWED = {("put_key_policy_then_decrypt", "admin", "none")}


def _outcome(call) -> tuple[str, dict | None]:
    try:
        return "allow", call()
    except ClientError as e:
        code, message = e.response["Error"]["Code"], e.response["Error"]["Message"]
        if code == "AccessDeniedException":
            if "explicitly denied by key policy statement '" in message:
                return "deny:" + message.split("statement '", 1)[1].split("'", 1)[0], None
            if "no key policy statement allows" in message:
                return NO_ALLOW, None
            return "deny:other " + message, None
        if code == "UnrecognizedClientException":
            return UNKNOWN, None
        if code == "ValidationException" and "not implemented" in message:
            return "unimplemented", None
        return f"{code}: {message}", None


@pytest.fixture(scope="module")
def table_kms(kms_server, nsm):
    principals = {k: (s, arn) for k, s, arn in CALLERS.values() if arn is not None}
    kms = AttestedKMS(kms_server, [nsm.root_fingerprint], principals=principals)
    kms.start()
    yield kms
    kms.stop()


class World:
    """Keys, ciphertexts and clients for the table, set up through the dev KMS."""

    def __init__(self, kms: AttestedKMS, moto, nsm: SoftNSM, ca_dir) -> None:
        self.kms, self.moto = kms, moto
        self.clients = {who: _client(kms.url, (k, s)) for who, (k, s, _) in CALLERS.items()}
        self.recipient_key = rsa.generate_private_key(65537, 2048)
        spki = self.recipient_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.docs = {"right": nsm.attest(public_key=spki),
                     "wrong": SoftNSM(ca_dir=ca_dir, pcrs=IMAGE_B).attest(public_key=spki)}
        self.gated = self.new_gated_key()
        self.ungated = self.clients["host"].create_key(Description="table: ungated")[
            "KeyMetadata"]["Arn"]
        r = moto.generate_data_key(KeyId=self.gated, KeySpec="AES_256")
        self.data_key, self.blob = r["Plaintext"], r["CiphertextBlob"]
        self.clients["admin"].create_grant(KeyId=self.gated, GranteePrincipal=GRANTEE,
                                           Operations=GRANTEE_OPERATIONS)

    def new_gated_key(self, *policy_flags: str) -> str:
        admin = self.clients["admin"]
        arn = admin.create_key(Description="table: gated")["KeyMetadata"]["Arn"]
        admin.put_key_policy(KeyId=arn, PolicyName="default",
                             Policy=json.dumps(_generated_policy(*policy_flags)),
                             BypassPolicyLockoutSafetyCheck=True)
        return arn

    def recipient(self, att: str) -> dict:
        if att == "none":
            return {}
        return {"Recipient": {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
                              "AttestationDocument": self.docs[att]}}


@pytest.fixture(scope="module")
def world(table_kms, moto, nsm, ca_dir) -> World:
    return World(table_kms, moto, nsm, ca_dir)


def _run_scenario(w: World, scenario: str, who: str, att: str) -> tuple[object, list[dict]]:
    c = w.clients[who]
    answers: list[dict] = []

    def step(call):
        outcome, answer = _outcome(call)
        if answer is not None:
            answers.append(answer)
        return outcome, answer

    if scenario == "decrypt":
        return step(lambda: c.decrypt(CiphertextBlob=w.blob, **w.recipient(att)))[0], answers
    if scenario == "generate_data_key":
        return step(lambda: c.generate_data_key(KeyId=w.gated, KeySpec="AES_256",
                                                **w.recipient(att)))[0], answers
    if scenario == "generate_data_key_pair":
        return step(lambda: c.generate_data_key_pair(KeyId=w.gated, KeyPairSpec="RSA_2048",
                                                     **w.recipient(att)))[0], answers
    if scenario == "generate_data_key_pair_without_plaintext":
        return step(lambda: c.generate_data_key_pair_without_plaintext(
            KeyId=w.gated, KeyPairSpec="RSA_2048"))[0], answers
    if scenario == "reencrypt_then_decrypt":
        first, r = step(lambda: c.re_encrypt(CiphertextBlob=w.blob, DestinationKeyId=w.ungated))
        second = step(lambda: c.decrypt(CiphertextBlob=r["CiphertextBlob"]))[0] if r else "-"
        return (first, second), answers
    if scenario == "generate_without_plaintext_then_decrypt":
        first, r = step(lambda: c.generate_data_key_without_plaintext(KeyId=w.gated,
                                                                      KeySpec="AES_256"))
        second = step(lambda: c.decrypt(CiphertextBlob=r["CiphertextBlob"]))[0] if r else "-"
        return (first, second), answers
    key = w.new_gated_key()
    blob = w.moto.encrypt(KeyId=key, Plaintext=w.data_key)["CiphertextBlob"]
    if scenario == "create_grant_then_decrypt":
        arn = CALLERS[who][2] or f"arn:aws:iam::{ACCOUNT}:role/nobody"
        first = step(lambda: c.create_grant(KeyId=key, GranteePrincipal=arn,
                                            Operations=["Decrypt"]))[0]
        second = step(lambda: c.decrypt(CiphertextBlob=blob, **w.recipient(att)))[0]
        return (first, second), answers
    if scenario == "put_key_policy_then_decrypt":
        open_policy = {"Version": "2012-10-17", "Statement": [
            {"Sid": "Everyone", "Effect": "Allow", "Principal": {"AWS": "*"},
             "Action": "kms:*", "Resource": "*"}]}
        first = step(lambda: c.put_key_policy(KeyId=key, PolicyName="default",
                                              Policy=json.dumps(open_policy)))[0]
        second = step(lambda: c.decrypt(CiphertextBlob=blob))[0]
        return (first, second), answers
    raise AssertionError(scenario)


@pytest.mark.parametrize("scenario,who,att", sorted(EXPECTED), ids="-".join)
def test_policy_decision_table(world, scenario, who, att):
    outcome, answers = _run_scenario(world, scenario, who, att)
    assert outcome == EXPECTED[scenario, who, att]
    for answer in answers:
        leaked = answer.get("Plaintext") == world.data_key or any(
            v == world.data_key for v in answer.values() if isinstance(v, bytes))
        if (scenario, who, att) not in PLAINTEXT_ALLOWED:
            assert "Plaintext" not in answer or answer["Plaintext"] != world.data_key
            assert not leaked
        if att != "none" and "CiphertextForRecipient" in answer:
            assert "Plaintext" not in answer
            opened = open_ciphertext_for_recipient(answer["CiphertextForRecipient"],
                                                   world.recipient_key)
            assert len(opened) == 32
            if scenario == "decrypt" or scenario == "create_grant_then_decrypt":
                assert opened == world.data_key
    if (scenario, who, att) in PLAINTEXT_ALLOWED:
        assert answers[-1]["Plaintext"] == world.data_key


def test_table_size():
    assert len(EXPECTED) == 80


def test_admin_can_rewrite_unless_locked(world):
    """The admin's remaining power: with the default (unlocked) policy PutKeyPolicy can drop
    the attestation Deny, and the admin then reads the data key; ``--lock-policy`` closes it."""
    admin = world.clients["admin"]
    unlocked = world.new_gated_key()
    blob = world.moto.encrypt(KeyId=unlocked, Plaintext=world.data_key)["CiphertextBlob"]
    with pytest.raises(ClientError):
        admin.decrypt(CiphertextBlob=blob)
    weakened = _generated_policy()
    weakened["Statement"] = [s for s in weakened["Statement"] if s["Effect"] == "Allow"] + [
        {"Sid": "AdminDecrypt", "Effect": "Allow", "Principal": {"AWS": ADMIN},
         "Action": "kms:Decrypt", "Resource": "*"}]
    admin.put_key_policy(KeyId=unlocked, PolicyName="default", Policy=json.dumps(weakened))
    assert admin.decrypt(CiphertextBlob=blob)["Plaintext"] == world.data_key

    locked = world.new_gated_key("--lock-policy")
    blob = world.moto.encrypt(KeyId=locked, Plaintext=world.data_key)["CiphertextBlob"]
    with pytest.raises(ClientError) as e:
        admin.put_key_policy(KeyId=locked, PolicyName="default", Policy=json.dumps(weakened))
    assert "DenyKeyPolicyChanges" in e.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as e:
        admin.decrypt(CiphertextBlob=blob)
    assert "DenyDecryptWithoutAttestation" in e.value.response["Error"]["Message"]
    # What the locked policy still lets the admin do: destroy (not read) the key.
    # (by key id: moto's ScheduleKeyDeletion fails on a key ARN)
    key_id = locked.rsplit("/", 1)[1]
    assert admin.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)["KeyId"]
    with pytest.raises(ClientError) as e:
        world.clients["host"].schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    assert e.value.response["Error"]["Code"] == "AccessDeniedException"


def test_grantee_cannot_widen_its_grant(world):
    """A grantee whose grant lists CreateGrant may pass on only what it has."""
    admin, grantee = world.clients["admin"], world.clients["grantee"]
    key = world.new_gated_key()
    admin.create_grant(KeyId=key, GranteePrincipal=GRANTEE, Operations=["CreateGrant",
                                                                         "DescribeKey"])
    with pytest.raises(ClientError) as e:
        grantee.create_grant(KeyId=key, GranteePrincipal=OUTSIDER,
                             Operations=["Decrypt", "DescribeKey"])
    assert "only for operations and constraints of its own grant" in str(e.value)
    grantee.create_grant(KeyId=key, GranteePrincipal=OUTSIDER, Operations=["DescribeKey"])
    assert world.clients["outsider"].describe_key(KeyId=key)["KeyMetadata"]["Arn"] == key


def test_grant_constraints_and_tokens(world):
    admin, grantee = world.clients["admin"], world.clients["grantee"]
    key = world.clients["host"].create_key(Description="constraints")["KeyMetadata"]["Arn"]
    # moto's default policy names the account root: narrow it to the admin first
    admin.put_key_policy(KeyId=key, PolicyName="default", Policy=json.dumps({
        "Version": "2012-10-17", "Statement": [
            {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": ADMIN},
             "Action": "kms:*", "Resource": "*"}]}))
    blob = admin.encrypt(KeyId=key, Plaintext=b"secret",
                         EncryptionContext={"app": "billing"})["CiphertextBlob"]
    with pytest.raises(ClientError):
        grantee.decrypt(CiphertextBlob=blob, EncryptionContext={"app": "billing"})
    g = admin.create_grant(KeyId=key, GranteePrincipal=GRANTEE, Operations=["Decrypt"],
                           Constraints={"EncryptionContextEquals": {"App": "billing"}})
    # key case-insensitive, value case-sensitive (as KMS documents for grant constraints)
    assert grantee.decrypt(CiphertextBlob=blob, EncryptionContext={"app": "billing"},
                           GrantTokens=[g["GrantToken"]])["Plaintext"] == b"secret"
    other = admin.encrypt(KeyId=key, Plaintext=b"other",
                          EncryptionContext={"app": "Billing"})["CiphertextBlob"]
    with pytest.raises(ClientError) as e:
        grantee.decrypt(CiphertextBlob=other, EncryptionContext={"app": "Billing"})
    assert e.value.response["Error"]["Code"] == "AccessDeniedException"
    with pytest.raises(ClientError) as e:
        grantee.decrypt(CiphertextBlob=blob, EncryptionContext={"app": "billing"},
                        GrantTokens=["not-a-token-we-issued"])
    assert e.value.response["Error"]["Code"] == "InvalidGrantTokenException"
    # The outsider is not the grantee; after revocation the grantee is out too.
    with pytest.raises(ClientError):
        world.clients["outsider"].decrypt(CiphertextBlob=blob,
                                          EncryptionContext={"app": "billing"})
    admin.revoke_grant(KeyId=key, GrantId=g["GrantId"])
    with pytest.raises(ClientError):
        grantee.decrypt(CiphertextBlob=blob, EncryptionContext={"app": "billing"})


def test_retire_grant_only_by_retiring_principal_or_grantee(world):
    admin = world.clients["admin"]
    key = world.new_gated_key()
    g = admin.create_grant(KeyId=key, GranteePrincipal=GRANTEE, RetiringPrincipal=OUTSIDER,
                           Operations=["DescribeKey"])
    with pytest.raises(ClientError) as e:
        world.clients["host"].retire_grant(GrantToken=g["GrantToken"])
    assert e.value.response["Error"]["Code"] == "AccessDeniedException"
    with pytest.raises(ClientError):        # the grantee's grant does not list RetireGrant
        world.clients["grantee"].retire_grant(KeyId=key, GrantId=g["GrantId"])
    world.clients["outsider"].retire_grant(GrantToken=g["GrantToken"])
    with pytest.raises(ClientError):
        world.clients["grantee"].describe_key(KeyId=key)


# --- request smuggling: what is checked must be what runs --------------------------------------

def test_duplicate_json_fields_are_refused(table_kms, world):
    """Two KeyId fields: an evaluator reading the first and moto reading the last would check
    one key and use another."""
    key_id, secret, _ = CALLERS["host"]
    body = ('{"KeyId": "%s", "KeySpec": "AES_256", "KeyId": "%s"}'
            % (world.gated, world.ungated)).encode()
    before = table_kms.forwarded
    status, answer = raw_request(table_kms.url, ["TrentService.GenerateDataKey"], body,
                                 creds=(key_id, secret))
    assert status == 400 and json.loads(answer)["__type"] == "SerializationException"
    assert table_kms.forwarded == before


@pytest.mark.parametrize("body,error", [
    (b'{"KeyId": "k", "keyid": "x"}', "SerializationException"),   # unknown field
    (b'{"KeyId": 5}', "SerializationException"),                    # wrong type
    (b'{"KeyId": "k", "NumberOfBytes": NaN}', "SerializationException"),
    (b'["KeyId"]', "SerializationException"),
    (b'\xef\xbb\xbf{"KeyId": "k"}', "SerializationException"),      # BOM
    (b'', "SerializationException"),
    (b'{}', "ValidationException"),                                  # KeyId is required
])
def test_malformed_bodies_are_refused(table_kms, body, error):
    key_id, secret, _ = CALLERS["host"]
    before = table_kms.forwarded
    status, answer = raw_request(table_kms.url, ["TrentService.GenerateDataKey"], body,
                                 creds=(key_id, secret))
    assert status == 400 and json.loads(answer)["__type"] == error, answer
    assert table_kms.forwarded == before


def test_wrong_content_type_is_refused(table_kms, world):
    key_id, secret, _ = CALLERS["host"]
    status, answer = raw_request(table_kms.url, ["TrentService.Decrypt"],
                                 {"CiphertextBlob": base64.b64encode(world.blob).decode()},
                                 creds=(key_id, secret), content_type="application/json")
    assert status == 400 and json.loads(answer)["__type"] == "UnknownOperationException"
    _no_plaintext(answer, world.data_key)


def test_unknown_and_non_kms_requests_are_not_forwarded(table_kms):
    key_id, secret, _ = CALLERS["admin"]
    before = table_kms.forwarded
    for target in ("TrentService.ExportKeyMaterial", "TrentService", "KMS.Decrypt", ""):
        status, answer = raw_request(table_kms.url, [target] if target else [], b"{}",
                                     creds=(key_id, secret))
        assert status == 400 and json.loads(answer)["__type"] == "UnknownOperationException"
    parts = urlsplit(table_kms.url)
    for method, path in (("GET", "/moto-api/data.json"), ("POST", "/moto-api/reset"),
                         ("GET", "/")):
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            assert resp.status == 400 and b"UnknownOperationException" in resp.read()
        finally:
            conn.close()
    assert table_kms.forwarded == before


def test_signatures_are_checked(table_kms, world):
    body = {"CiphertextBlob": base64.b64encode(world.blob).decode()}
    key_id, secret, _ = CALLERS["host"]
    status, answer = raw_request(table_kms.url, ["TrentService.DescribeKey"],
                                 {"KeyId": world.ungated}, creds=(key_id, secret))
    assert status == 200, answer                                     # control
    cases = [((key_id, "wrong-secret"), "InvalidSignatureException"),
             (("AKIDNOBODY", secret), "UnrecognizedClientException"),
             (("testing", "testing"), "UnrecognizedClientException")]   # not in this table
    for creds, error in cases:
        status, answer = raw_request(table_kms.url, ["TrentService.Decrypt"], body, creds=creds)
        assert status == 400 and json.loads(answer)["__type"] == error
        _no_plaintext(answer, world.data_key)
    # no Authorization header at all
    parts = urlsplit(table_kms.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("POST", "/", body=json.dumps(body),
                     headers={"Content-Type": JSON_11, "X-Amz-Target": "TrentService.Decrypt"})
        resp = conn.getresponse()
        assert resp.status == 400
        assert json.loads(resp.read())["__type"] == "MissingAuthenticationTokenException"
    finally:
        conn.close()


def test_body_changed_after_signing_is_refused(table_kms, world):
    """A body swapped under a valid signature (e.g. by a proxy) no longer verifies."""
    key_id, secret, _ = CALLERS["host"]
    good = json.dumps({"KeyId": world.ungated}).encode()
    req = AWSRequest(method="POST", url=table_kms.url + "/", data=good)
    req.headers["Content-Type"] = JSON_11
    req.headers["X-Amz-Target"] = "TrentService.DescribeKey"
    SigV4Auth(Credentials(key_id, secret), "kms", "us-east-1").add_auth(req)
    evil = json.dumps({"KeyId": world.gated}).encode()
    parts = urlsplit(table_kms.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest("POST", "/", skip_accept_encoding=True)
        for name, value in req.headers.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(evil)))
        conn.endheaders(evil)
        resp = conn.getresponse()
        assert resp.status == 400
        assert json.loads(resp.read())["__type"] == "InvalidSignatureException"
    finally:
        conn.close()


def test_dry_run_never_reaches_moto(table_kms, world):
    """moto ignores DryRun (it would return a data key); the dev KMS answers it itself."""
    host = world.clients["host"]
    before = table_kms.forwarded
    with pytest.raises(ClientError) as e:
        host.generate_data_key(KeyId=world.ungated, KeySpec="AES_256", DryRun=True)
    assert e.value.response["Error"]["Code"] == "DryRunOperationException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    with pytest.raises(ClientError) as e:
        host.generate_data_key(KeyId=world.gated, KeySpec="AES_256", DryRun=True)
    assert e.value.response["Error"]["Code"] == "AccessDeniedException"
    assert table_kms.forwarded == before


def test_aliases_only_where_kms_takes_them(table_kms, world):
    admin = world.clients["admin"]
    key = world.new_gated_key()
    admin.create_alias(AliasName="alias/adversarial-gated", TargetKeyId=key)
    assert admin.describe_key(KeyId="alias/adversarial-gated")["KeyMetadata"]["Arn"] == key
    with pytest.raises(ClientError) as e:
        admin.put_key_policy(KeyId="alias/adversarial-gated", PolicyName="default",
                             Policy=json.dumps(_generated_policy()))
    assert e.value.response["Error"]["Code"] == "NotFoundException"
    # Through the alias, the gated key is as gated as by its ARN.
    with pytest.raises(ClientError) as e:
        world.clients["host"].generate_data_key(KeyId="alias/adversarial-gated",
                                                KeySpec="AES_256")
    assert "DenyDecryptWithoutAttestation" in e.value.response["Error"]["Message"]
    # The host may not point an alias of its own at the gated key (kms:CreateAlias on it).
    with pytest.raises(ClientError) as e:
        world.clients["host"].create_alias(AliasName="alias/adversarial-host",
                                           TargetKeyId=key)
    assert e.value.response["Error"]["Code"] == "AccessDeniedException"


def test_malformed_key_policy_is_refused(world):
    admin = world.clients["admin"]
    key = world.new_gated_key()
    for bad in ('{"Statement": [{"Effect": "Allow", "Action": "kms:*", "Principal": "*", '
                '"Resource": "*", "Effect": "Deny"}]}',
                '{"Statement": [{"Effect": "Allow", "Action": "kms:*", "Principal": "*", '
                '"Resource": "*", "Conditions": {}}]}'):
        with pytest.raises(ClientError) as e:
            admin.put_key_policy(KeyId=key, PolicyName="default", Policy=bad)
        assert e.value.response["Error"]["Code"] == "MalformedPolicyDocumentException"
