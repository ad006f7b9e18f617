"""The dev KMS with attestation, in front of moto's KMS server, driven through boto3."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sops_enclave.cms import CMSError, open_ciphertext_for_recipient
from sops_enclave.devtools.kms_attested import (
    STATS_PATH, AttestedKMS, attestation_context, evaluate_key_policy)
from sops_enclave.devtools.kms_policy_eval import (
    UNKNOWN, Principal, RequestContext, Uncertain, encryption_context_values)
from sops_enclave.devtools.nsm_soft import SoftNSM

ROOT = Path(__file__).resolve().parents[1]
ACCOUNT_ROOT = "arn:aws:iam::123456789012:root"
GATED = ["kms:Decrypt", "kms:GenerateDataKey"]


def _pcrs(tag: bytes) -> dict[int, bytes]:
    return {i: hashlib.sha384(tag + bytes([i])).digest() for i in range(3)}


IMAGE_A = _pcrs(b"image A")
IMAGE_B = _pcrs(b"image B")
DEBUG = {i: bytes(48) for i in range(3)}


def _spki(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def _client(url: str):
    return boto3.client("kms", region_name="us-east-1", endpoint_url=url,
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        config=Config(retries={"max_attempts": 1}))


def _recipient(doc: bytes) -> dict:
    return {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": doc}


def _attested_policy(condition: dict) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "KeyAdmin", "Effect": "Allow", "Principal": {"AWS": ACCOUNT_ROOT},
         "NotAction": GATED, "Resource": "*"},
        {"Sid": "EnclaveOnly", "Effect": "Allow", "Principal": {"AWS": ACCOUNT_ROOT},
         "Action": GATED, "Resource": "*", "Condition": condition},
        {"Sid": "DenyWithoutAttestation", "Effect": "Deny", "Principal": "*",
         "Action": GATED, "Resource": "*",
         "Condition": {"Null": {"kms:RecipientAttestation:ImageSha384": "true"}}},
    ]})


def _denied(excinfo: pytest.ExceptionInfo[ClientError], code: str = "AccessDeniedException"
            ) -> str:
    err = excinfo.value.response["Error"]
    assert err["Code"] == code, err
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    return err["Message"]


# --- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dev-ca")


@pytest.fixture(scope="module")
def nsm(ca_dir) -> SoftNSM:
    return SoftNSM(ca_dir=ca_dir, pcrs=IMAGE_A)


@pytest.fixture(scope="module")
def recipient_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def doc(nsm, recipient_key) -> bytes:
    return nsm.attest(public_key=_spki(recipient_key))


@pytest.fixture(scope="module")
def proxy(kms_server, nsm):
    kms = AttestedKMS(kms_server, [nsm.root_fingerprint])
    kms.start()
    yield kms
    kms.stop()


@pytest.fixture(scope="module")
def client(proxy):
    return _client(proxy.url)


@pytest.fixture(scope="module")
def moto(kms_server):
    """moto directly, behind no policy checks: the ground truth for data keys."""
    return _client(kms_server)


@pytest.fixture(scope="module")
def image_key(client) -> str:
    """A key that releases data keys only to image A (PCR0 = ImageSha384)."""
    arn = client.create_key(Description="attested")["KeyMetadata"]["Arn"]
    client.put_key_policy(KeyId=arn, PolicyName="default", Policy=_attested_policy(
        {"StringEqualsIgnoreCase": {
            "kms:RecipientAttestation:ImageSha384": IMAGE_A[0].hex().upper()}}))
    return arn


@pytest.fixture(scope="module")
def data_key(moto, image_key) -> tuple[bytes, bytes]:
    """(plaintext, CiphertextBlob) of a data key under ``image_key``, straight from moto."""
    r = moto.generate_data_key(KeyId=image_key, KeySpec="AES_256",
                               EncryptionContext={"app": "test"})
    return r["Plaintext"], r["CiphertextBlob"]


# --- the Recipient flow ---------------------------------------------------------------------

def test_generate_data_key_with_recipient(client, moto, image_key, doc, recipient_key):
    r = client.generate_data_key(KeyId=image_key, KeySpec="AES_256",
                                 Recipient=_recipient(doc))
    assert "Plaintext" not in r and "KeyMaterialId" not in r
    assert r["KeyId"] == image_key
    key = open_ciphertext_for_recipient(r["CiphertextForRecipient"], recipient_key)
    assert len(key) == 32
    # The stored CiphertextBlob is the real data key under the KMS key.
    assert moto.decrypt(CiphertextBlob=r["CiphertextBlob"])["Plaintext"] == key


def test_decrypt_with_recipient(client, data_key, doc, recipient_key, image_key):
    plaintext, blob = data_key
    r = client.decrypt(CiphertextBlob=blob, EncryptionContext={"app": "test"},
                       Recipient=_recipient(doc))
    assert "Plaintext" not in r
    assert r["KeyId"] == image_key
    assert open_ciphertext_for_recipient(r["CiphertextForRecipient"], recipient_key) == plaintext


def test_decrypt_with_key_id_and_alias(client, data_key, doc, recipient_key, image_key):
    alias = "alias/sops-enclave-attested-test"
    client.create_alias(AliasName=alias, TargetKeyId=image_key)
    plaintext, blob = data_key
    r = client.decrypt(CiphertextBlob=blob, KeyId=image_key, EncryptionContext={"app": "test"},
                       Recipient=_recipient(doc))
    assert open_ciphertext_for_recipient(r["CiphertextForRecipient"], recipient_key) == plaintext
    r = client.generate_data_key(KeyId=alias, NumberOfBytes=64, Recipient=_recipient(doc))
    assert len(open_ciphertext_for_recipient(r["CiphertextForRecipient"], recipient_key)) == 64


def test_recipient_key_other_than_the_callers_cannot_open(client, data_key, doc):
    _, blob = data_key
    r = client.decrypt(CiphertextBlob=blob, EncryptionContext={"app": "test"},
                       Recipient=_recipient(doc))
    with pytest.raises(CMSError):
        open_ciphertext_for_recipient(r["CiphertextForRecipient"],
                                      rsa.generate_private_key(65537, 2048))


# --- refusals -------------------------------------------------------------------------------

def test_other_image_denied(client, data_key, ca_dir, recipient_key, image_key):
    other = SoftNSM(ca_dir=ca_dir, pcrs=IMAGE_B)          # same trusted root, other PCR0
    doc_b = other.attest(public_key=_spki(recipient_key))
    with pytest.raises(ClientError) as e:
        client.decrypt(CiphertextBlob=data_key[1], EncryptionContext={"app": "test"},
                       Recipient=_recipient(doc_b))
    assert "no key policy statement allows kms:Decrypt" in _denied(e)
    with pytest.raises(ClientError) as e:
        client.generate_data_key(KeyId=image_key, KeySpec="AES_256", Recipient=_recipient(doc_b))
    _denied(e)


def test_untrusted_root_denied(client, data_key, tmp_path, recipient_key):
    stranger = SoftNSM(ca_dir=tmp_path / "other-ca", pcrs=IMAGE_A)   # right PCRs, wrong root
    with pytest.raises(ClientError) as e:
        client.decrypt(CiphertextBlob=data_key[1], EncryptionContext={"app": "test"},
                       Recipient=_recipient(stranger.attest(public_key=_spki(recipient_key))))
    assert "[4] root" in _denied(e)


def test_tampered_attestation_denied(client, data_key, doc):
    bad = bytearray(doc)
    bad[-1] ^= 0x01                                    # inside the COSE signature
    with pytest.raises(ClientError) as e:
        client.decrypt(CiphertextBlob=data_key[1], EncryptionContext={"app": "test"},
                       Recipient=_recipient(bytes(bad)))
    assert "[6] signature" in _denied(e)


def test_stale_attestation_denied(client, data_key, ca_dir, recipient_key):
    hour_ago = datetime.now(timezone.utc) - timedelta(hours=1)
    old = SoftNSM(ca_dir=ca_dir, pcrs=IMAGE_A, clock=lambda: hour_ago)
    with pytest.raises(ClientError) as e:
        client.decrypt(CiphertextBlob=data_key[1], EncryptionContext={"app": "test"},
                       Recipient=_recipient(old.attest(public_key=_spki(recipient_key))))
    assert "old" in _denied(e)


def test_debug_document_denied_unless_allowed(kms_server, client, ca_dir, recipient_key):
    debug = SoftNSM(ca_dir=ca_dir, pcrs=DEBUG)
    doc_debug = debug.attest(public_key=_spki(recipient_key))
    key = client.create_key(Description="debug image")["KeyMetadata"]["Arn"]
    client.put_key_policy(KeyId=key, PolicyName="default", Policy=_attested_policy(
        {"StringEquals": {"kms:RecipientAttestation:ImageSha384": "00" * 48}}))
    with pytest.raises(ClientError) as e:
        client.generate_data_key(KeyId=key, KeySpec="AES_256", Recipient=_recipient(doc_debug))
    assert "debug" in _denied(e)
    with AttestedKMS(kms_server, [debug.root_fingerprint], allow_debug=True) as lenient:
        r = _client(lenient.url).generate_data_key(KeyId=key, KeySpec="AES_256",
                                                    Recipient=_recipient(doc_debug))
        assert len(open_ciphertext_for_recipient(r["CiphertextForRecipient"],
                                                 recipient_key)) == 32


def test_plain_calls_hit_the_explicit_deny(client, data_key, image_key):
    with pytest.raises(ClientError) as e:
        client.decrypt(CiphertextBlob=data_key[1], EncryptionContext={"app": "test"})
    assert "explicitly denied" in _denied(e) and "DenyWithoutAttestation" in _denied(e)
    with pytest.raises(ClientError) as e:
        client.generate_data_key(KeyId=image_key, KeySpec="AES_256")
    assert "DenyWithoutAttestation" in _denied(e)


def test_key_without_conditions_still_works_plainly(client):
    key = client.create_key(Description="moto default policy")["KeyMetadata"]["Arn"]
    r = client.generate_data_key(KeyId=key, KeySpec="AES_256")
    assert len(r["Plaintext"]) == 32
    assert client.decrypt(CiphertextBlob=r["CiphertextBlob"])["Plaintext"] == r["Plaintext"]


def test_pcr_conditions(client, doc, recipient_key):
    key = client.create_key(Description="pcr policy")["KeyMetadata"]["Arn"]
    cond = {"StringEquals": {f"kms:RecipientAttestation:PCR{i}": IMAGE_A[i].hex()
                             for i in range(3)}}
    client.put_key_policy(KeyId=key, PolicyName="default", Policy=_attested_policy(cond))
    r = client.generate_data_key(KeyId=key, KeySpec="AES_256", Recipient=_recipient(doc))
    assert len(open_ciphertext_for_recipient(r["CiphertextForRecipient"], recipient_key)) == 32
    cond["StringEquals"]["kms:RecipientAttestation:PCR2"] = IMAGE_B[2].hex()
    client.put_key_policy(KeyId=key, PolicyName="default", Policy=_attested_policy(cond))
    with pytest.raises(ClientError) as e:
        client.generate_data_key(KeyId=key, KeySpec="AES_256", Recipient=_recipient(doc))
    _denied(e)


def test_unknown_operator_fails_closed(client, doc):
    key = client.create_key(Description="odd policy")["KeyMetadata"]["Arn"]
    client.put_key_policy(KeyId=key, PolicyName="default", Policy=_attested_policy(
        {"NumericLessThan": {"kms:RecipientAttestation:ImageSha384": "1"}}))
    with pytest.raises(ClientError) as e:
        client.generate_data_key(KeyId=key, KeySpec="AES_256", Recipient=_recipient(doc))
    assert "unsupported condition NumericLessThan" in _denied(e)


def test_string_like_condition(client, doc, recipient_key):
    key = client.create_key(Description="StringLike policy")["KeyMetadata"]["Arn"]
    client.put_key_policy(KeyId=key, PolicyName="default", Policy=_attested_policy(
        {"StringLike": {"kms:RecipientAttestation:ImageSha384": IMAGE_A[0].hex()[:10] + "*"}}))
    r = client.generate_data_key(KeyId=key, KeySpec="AES_256", Recipient=_recipient(doc))
    assert len(open_ciphertext_for_recipient(r["CiphertextForRecipient"], recipient_key)) == 32
    client.put_key_policy(KeyId=key, PolicyName="default", Policy=_attested_policy(
        {"StringLike": {"kms:RecipientAttestation:ImageSha384": IMAGE_B[0].hex()[:10] + "*"}}))
    with pytest.raises(ClientError) as e:
        client.generate_data_key(KeyId=key, KeySpec="AES_256", Recipient=_recipient(doc))
    _denied(e)


def test_malformed_recipients(client, image_key, doc, nsm):
    with pytest.raises(ClientError) as e:
        client.generate_data_key(KeyId=image_key, KeySpec="AES_256", Recipient={
            "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_1", "AttestationDocument": doc})
    _denied(e, "ValidationException")
    with pytest.raises(ClientError) as e:
        client.generate_data_key(KeyId=image_key, KeySpec="AES_256",
                                 Recipient={"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256"})
    _denied(e, "ValidationException")
    with pytest.raises(ClientError) as e:                   # no public_key in the document
        client.generate_data_key(KeyId=image_key, KeySpec="AES_256",
                                 Recipient=_recipient(nsm.attest(user_data=b"x")))
    assert "public_key" in _denied(e, "ValidationException")
    ec_doc = nsm.attest(public_key=_spki(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(ClientError) as e:                   # not an RSA key
        client.generate_data_key(KeyId=image_key, KeySpec="AES_256", Recipient=_recipient(ec_doc))
    assert "RSA" in _denied(e, "ValidationException")


def test_recipient_on_unimplemented_operation_refused(client, doc):
    with pytest.raises(ClientError) as e:
        client.generate_random(NumberOfBytes=32, Recipient=_recipient(doc))
    assert "GenerateRandom" in _denied(e, "ValidationException")


def test_upstream_errors_pass_through(client, doc):
    missing = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000"
    with pytest.raises(ClientError) as e:
        client.generate_data_key(KeyId=missing, KeySpec="AES_256", Recipient=_recipient(doc))
    assert e.value.response["Error"]["Code"] == "NotFoundException"


# --- forwarding and counters -----------------------------------------------------------------

def test_encrypt_forwarded_unchanged(client, moto, image_key):
    r = client.encrypt(KeyId=image_key, Plaintext=b"hello", EncryptionContext={"a": "b"})
    assert r["KeyId"] == image_key
    assert moto.decrypt(CiphertextBlob=r["CiphertextBlob"],
                        EncryptionContext={"a": "b"})["Plaintext"] == b"hello"
    assert client.describe_key(KeyId=image_key)["KeyMetadata"]["Arn"] == image_key


def test_stats_count_requests(kms_server, nsm, image_key, data_key, doc, recipient_key):
    with AttestedKMS(kms_server, [nsm.root_fingerprint]) as kms:
        c = _client(kms.url)
        _, blob = data_key
        clients = [_client(kms.url) for _ in range(8)]

        def decrypt(cl):
            r = cl.decrypt(CiphertextBlob=blob, EncryptionContext={"app": "test"},
                           Recipient=_recipient(doc))
            return open_ciphertext_for_recipient(r["CiphertextForRecipient"], recipient_key)

        with ThreadPoolExecutor(8) as pool:
            keys = list(pool.map(decrypt, clients))
        assert keys == [data_key[0]] * 8
        c.generate_data_key(KeyId=image_key, KeySpec="AES_256", Recipient=_recipient(doc))
        with pytest.raises(ClientError):
            c.decrypt(CiphertextBlob=blob, EncryptionContext={"app": "test"})
        c.encrypt(KeyId=image_key, Plaintext=b"x")
        expected = {"Decrypt": 9, "GenerateDataKey": 1, "Encrypt": 1}
        assert kms.stats == expected
        assert kms.denied == {"Decrypt": 1}
        with urllib.request.urlopen(kms.url + STATS_PATH, timeout=10) as resp:
            assert json.load(resp) == {"requests": expected, "denied": {"Decrypt": 1}}
        kms.reset_stats()
        assert kms.stats == {} and kms.denied == {}


def test_constructor_checks(kms_server):
    with pytest.raises(ValueError):
        AttestedKMS(kms_server, [])
    with pytest.raises(ValueError):
        AttestedKMS(kms_server, ["not-a-fingerprint"])
    with pytest.raises(ValueError):
        AttestedKMS("ftp://127.0.0.1:1", ["ab" * 32])


def test_command_line(kms_server, nsm, base_env):
    env = dict(base_env, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "sops_enclave.devtools.kms_attested",
                             "--upstream", kms_server, "--root", nsm.root_fingerprint],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()))
        reader.start()
        reader.join(30)
        assert line and line[0].startswith("http://127.0.0.1:"), proc.stderr
        url = line[0].strip()
        with urllib.request.urlopen(url + STATS_PATH, timeout=10) as resp:
            assert json.load(resp) == {"requests": {}, "denied": {}}
        key = _client(url).create_key()["KeyMetadata"]["KeyId"]
        assert key
    finally:
        proc.terminate()
        rc = proc.wait(15)
    assert rc == 0
    assert "NOT AWS" in proc.stderr.read()


# --- the policy evaluator on its own -------------------------------------------------------------

PCR0 = IMAGE_A[0].hex()


def _policy(*statements: dict) -> dict:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def _allow(condition: dict | None = None, action: object = "kms:Decrypt") -> dict:
    st = {"Effect": "Allow", "Principal": "*", "Action": action, "Resource": "*"}
    if condition is not None:
        st["Condition"] = condition
    return st


def _deny(condition: dict | None = None, action: object = "kms:*") -> dict:
    return dict(_allow(condition, action), Effect="Deny")


class _Doc:
    pcrs = IMAGE_A


CTX = attestation_context(_Doc())  # type: ignore[arg-type]


@pytest.mark.parametrize("policy,context,allowed", [
    (_policy(_allow()), {}, True),
    (_policy(_allow(action="kms:*")), {}, True),
    (_policy(_allow(action=["kms:Encrypt", "kms:Gen*"])), {}, False),
    (_policy({"Effect": "Allow", "NotAction": "kms:Decrypt", "Resource": "*"}), {}, False),
    (_policy(), CTX, False),
    (_policy(_allow({"StringEquals": {"kms:RecipientAttestation:ImageSha384": PCR0}})), CTX, True),
    (_policy(_allow({"StringEquals": {"kms:RecipientAttestation:ImageSha384": PCR0}})), {}, False),
    (_policy(_allow({"StringEquals": {"kms:RecipientAttestation:ImageSha384": PCR0.upper()}})),
     CTX, False),
    (_policy(_allow({"StringEqualsIgnoreCase": {"KMS:RecipientAttestation:imagesha384":
                                                PCR0.upper()}})), CTX, True),
    (_policy(_allow({"StringEquals": {"kms:RecipientAttestation:PCR0": ["ab" * 48, PCR0]}})),
     CTX, True),
    (_policy(_allow({"StringEquals": {"kms:RecipientAttestation:PCR0": PCR0,
                                      "kms:RecipientAttestation:PCR1": "ab" * 48}})), CTX, False),
    (_policy(_allow({"StringEquals": {"kms:RecipientAttestation:PCR0": PCR0},
                     "Null": {"kms:RecipientAttestation:PCR3": "false"}})), CTX, False),
    (_policy(_allow({"StringEqualsIfExists": {"kms:RecipientAttestation:PCR0": PCR0}})), {}, True),
    (_policy(_allow({"StringNotEquals": {"kms:RecipientAttestation:PCR0": PCR0}})), CTX, False),
    (_policy(_allow(), _deny({"Null": {"kms:RecipientAttestation:ImageSha384": "true"}})),
     {}, False),
    (_policy(_allow(), _deny({"Null": {"kms:RecipientAttestation:ImageSha384": "true"}})),
     CTX, True),
    (_policy(_allow(), _deny({"StringNotEqualsIgnoreCase": {
        "kms:RecipientAttestation:ImageSha384": PCR0}})), CTX, True),
    (_policy(_allow(), _deny({"StringNotEqualsIgnoreCase": {
        "kms:RecipientAttestation:ImageSha384": PCR0}})), {}, False),
    (_policy(_allow({"StringLike": {"kms:RecipientAttestation:ImageSha384": "*"}})), CTX, True),
    (_policy(_allow({"StringLike": {"kms:RecipientAttestation:ImageSha384": "*"}})), {}, False),
    (_policy(_allow(), _deny({"StringLike": {"kms:RecipientAttestation:ImageSha384": "x"}})),
     CTX, True),
    (_policy(_allow(), _deny({"StringNotLike": {"kms:RecipientAttestation:ImageSha384":
                                                PCR0[:4] + "*"}})), CTX, True),
    (_policy(_allow(), _deny({"StringNotLike": {"kms:RecipientAttestation:ImageSha384":
                                                "ff*"}})), CTX, False),
    # Fail closed: what the evaluator does not understand never allows.
    (_policy(_allow({"NumericEquals": {"kms:RecipientAttestation:ImageSha384": "1"}})), CTX,
     False),
    (_policy(_allow({"ForAnyValue:StringEquals": {"kms:RecipientAttestation:PCR0": PCR0}})),
     CTX, False),
    (_policy(_allow({"StringEquals": {"kms:EncryptionContext:app": "x"}})), CTX, False),
    (_policy(_allow({"StringEquals": {"kms:RecipientAttestation:PCR0": 5}})), CTX, False),
    (_policy(_allow(), _deny({"NumericEquals": {"kms:RecipientAttestation:ImageSha384": "x"}})),
     CTX, False),
    (_policy(_allow(), _deny({"StringEquals": {"aws:PrincipalArn": "x"}})), CTX, False),
    (_policy(_allow(), {"Effect": "Maybe", "Action": "kms:*"}), CTX, False),
    ("not json", CTX, False),
])
def test_evaluate_key_policy(policy, context, allowed):
    text = policy if isinstance(policy, str) else json.dumps(policy)
    assert evaluate_key_policy(text, "kms:Decrypt", context).allowed is allowed


def test_attestation_context():
    assert CTX["kms:recipientattestation:imagesha384"] == PCR0
    assert CTX["kms:recipientattestation:pcr2"] == IMAGE_A[2].hex()
    assert attestation_context(None) == {}


# --- principals, resources and the wider condition set -------------------------------------------

ROLE = "arn:aws:iam::123456789012:role/ci-host"
OTHER_ROLE = "arn:aws:iam::123456789012:role/other"
FOREIGN = "arn:aws:iam::210987654321:role/ci-host"
KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def _st(effect="Allow", principal: object = "*", action: object = "kms:Decrypt",
        resource: object = "*", condition: dict | None = None, **extra) -> dict:
    st = {"Effect": effect, "Principal": principal, "Action": action, "Resource": resource}
    if condition is not None:
        st["Condition"] = condition
    st.update(extra)
    return st


def _decide(*statements, caller=ROLE, action="kms:Decrypt", context=None, resource=KEY):
    ctx = context if context is not None else RequestContext(
        {"aws:principalarn": (caller,), "kms:calleraccount": (caller.split(":")[4],)},
        ec_known=True)
    return evaluate_key_policy(_policy(*statements), action, ctx, principal=caller,
                               resource=resource)


@pytest.mark.parametrize("principal,caller,applies", [
    ("*", ROLE, True),
    ({"AWS": "*"}, ROLE, True),
    ({"AWS": ROLE}, ROLE, True),
    ({"AWS": [OTHER_ROLE, ROLE]}, ROLE, True),
    ({"AWS": OTHER_ROLE}, ROLE, False),
    ({"AWS": "arn:aws:iam::123456789012:root"}, ROLE, True),   # the account: IAM allows all
    ({"AWS": "123456789012"}, ROLE, True),
    ({"AWS": "arn:aws:iam::123456789012:root"}, FOREIGN, False),
    ({"AWS": ROLE}, FOREIGN, False),
    ({"Service": "ec2.amazonaws.com"}, ROLE, False),
    # not understood: never allows
    ({"AWS": "arn:aws:iam::123456789012:role/ci-*"}, ROLE, False),
    ({"AWS": "arn:aws:sts::123456789012:assumed-role/ci-host/i-1"}, ROLE, False),
    ({"Weird": ROLE}, ROLE, False),
    ({"AWS": []}, ROLE, False),
])
def test_principal_in_allow(principal, caller, applies):
    assert _decide(_st(principal=principal), caller=caller).allowed is applies


@pytest.mark.parametrize("principal,caller,denied", [
    ({"AWS": ROLE}, ROLE, True),
    ({"AWS": OTHER_ROLE}, ROLE, False),
    ({"AWS": "arn:aws:iam::123456789012:root"}, ROLE, True),
    ({"Service": "ec2.amazonaws.com"}, ROLE, False),
    # not understood: a Deny applies
    ({"AWS": "arn:aws:iam::123456789012:role/*"}, OTHER_ROLE, True),
    ({"Federated": 5}, ROLE, True),
])
def test_principal_in_deny(principal, caller, denied):
    d = _decide(_st(), _st("Deny", principal=principal), caller=caller)
    assert (not d.allowed) is denied and d.explicit_deny is denied


def test_not_principal():
    account = "arn:aws:iam::123456789012:root"
    # A statement with both Principal and NotPrincipal is malformed: everything is denied.
    assert not _decide(_st(), _st("Deny", NotPrincipal={"AWS": [ROLE, account]})).allowed
    # Deny everyone but ROLE: the exemption needs the role and its account (IAM checks both).
    deny_all_but = {k: v for k, v in _st("Deny").items() if k != "Principal"}
    assert _decide(_st(), dict(deny_all_but, NotPrincipal={"AWS": [ROLE, account]})).allowed
    assert not _decide(_st(), dict(deny_all_but, NotPrincipal={"AWS": ROLE})).allowed
    assert not _decide(_st(), dict(deny_all_but, NotPrincipal={"AWS": [ROLE, account]}),
                       caller=OTHER_ROLE).allowed
    # Allow everyone but ...: the account alone already excludes its principals.
    allow_all_but = {k: v for k, v in _st().items() if k != "Principal"}
    assert not _decide(dict(allow_all_but, NotPrincipal={"AWS": account})).allowed
    assert _decide(dict(allow_all_but, NotPrincipal={"AWS": OTHER_ROLE})).allowed


def test_statement_without_principal_fails_closed():
    no_principal = {k: v for k, v in _st().items() if k != "Principal"}
    assert not _decide(no_principal).allowed
    assert not _decide(_st(), {k: v for k, v in _st("Deny").items() if k != "Principal"}).allowed


@pytest.mark.parametrize("resource,allowed", [
    ("*", True), (KEY, True), ([KEY.replace("1234abcd", "99999999"), KEY], True),
    ("arn:aws:kms:us-east-1:123456789012:key/*", True),
    ("arn:aws:kms:*:123456789012:key/1234abcd-*", True),
    ("arn:aws:kms:us-west-2:123456789012:key/*", False),
    (KEY.upper(), False),                                # ARN matching is case-sensitive
    ("arn:aws:kms:us-east-1:123456789012:alias/x", False),
])
def test_resource(resource, allowed):
    assert _decide(_st(resource=resource)).allowed is allowed
    st = {k: v for k, v in _st().items() if k != "Resource"}
    assert _decide(dict(st, NotResource=resource)).allowed is not allowed


def test_action_patterns_are_iam_globs_only():
    assert _decide(_st(action="KMS:decrypt")).allowed               # case-insensitive
    assert _decide(_st(action="kms:De?rypt")).allowed
    assert not _decide(_st(action="kms:[D]ecrypt")).allowed         # no character classes
    assert not _decide(_st(action="kms:Decrypt*"), action="kms:Encrypt").allowed
    assert _decide(_st(action="*"), action="kms:ScheduleKeyDeletion").allowed


def _ctx(**values) -> RequestContext:
    return RequestContext({k.replace("__", ":").lower(): v for k, v in values.items()},
                          ec_known=True)


EC = encryption_context_values({"App": "billing", "stage": "prod"})


@pytest.mark.parametrize("condition,values,holds", [
    ({"ArnLike": {"aws:PrincipalArn": "arn:aws:iam::*:role/ci-*"}}, {}, True),
    ({"ArnLike": {"aws:PrincipalArn": "arn:aws:iam::*:user/*"}}, {}, False),
    ({"ArnEquals": {"aws:PrincipalArn": ROLE}}, {}, True),
    ({"ArnNotLike": {"aws:PrincipalArn": "arn:aws:iam::*:role/ci-*"}}, {}, False),
    ({"StringEquals": {"kms:CallerAccount": "123456789012"}}, {}, True),
    ({"StringEquals": {"kms:CallerAccount": ["1", "123456789012"]}}, {}, True),
    ({"StringEquals": {"kms:ViaService": "ec2.us-east-1.amazonaws.com"}}, {}, False),
    ({"StringEqualsIfExists": {"kms:ViaService": "ec2.us-east-1.amazonaws.com"}}, {}, True),
    ({"Null": {"kms:ViaService": "true"}}, {}, True),
    ({"Null": {"kms:ViaService": False}}, {}, False),
    ({"Bool": {"kms:GrantIsForAWSResource": "true"}},
     {"kms:grantisforawsresource": ("false",)}, False),
    ({"Bool": {"kms:GrantIsForAWSResource": True}},
     {"kms:grantisforawsresource": ("true",)}, True),
    # the context keys of the encryption context: key case-insensitive, value as the operator
    ({"StringEquals": {"kms:EncryptionContext:app": "billing"}}, EC, True),
    ({"StringEquals": {"kms:EncryptionContext:APP": "billing"}}, EC, True),
    ({"StringEquals": {"kms:EncryptionContext:app": "Billing"}}, EC, False),
    ({"StringEqualsIgnoreCase": {"kms:EncryptionContext:app": "Billing"}}, EC, True),
    ({"StringEquals": {"kms:EncryptionContext:tenant": "x"}}, EC, False),
    ({"StringNotEquals": {"kms:EncryptionContext:tenant": "x"}}, EC, True),
    ({"Null": {"kms:EncryptionContext:tenant": "true"}}, EC, True),
    ({"ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": "App"}}, EC, True),
    ({"ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": "app"}}, EC, False),
    ({"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["App", "stage"]}}, EC, True),
    ({"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["App"]}}, EC, False),
    # the documented pitfall, faithfully: ForAllValues holds on a missing key
    ({"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["App"]}},
     encryption_context_values({}), True),
    ({"ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": ["App"]}},
     encryption_context_values({}), False),
    ({"ForAllValues:StringEquals": {"kms:GrantOperations": ["Decrypt", "RetireGrant"]}},
     {"kms:grantoperations": ("Decrypt",)}, True),
    ({"ForAllValues:StringEquals": {"kms:GrantOperations": ["Decrypt"]}},
     {"kms:grantoperations": ("Decrypt", "ReEncryptFrom")}, False),
    ({"ForAnyValue:StringNotEquals": {"kms:GrantOperations": ["Decrypt"]}},
     {"kms:grantoperations": ("Decrypt", "ReEncryptFrom")}, True),
])
def test_conditions(condition, values, holds):
    base = {"aws:principalarn": (ROLE,), "kms:calleraccount": ("123456789012",),
            "kms:viaservice": None}
    ctx = RequestContext(dict(base, **values), ec_known=True)
    assert _decide(_st(condition=condition), context=ctx).allowed is holds


@pytest.mark.parametrize("condition,values", [
    ({"StringEquals": {"kms:EncryptionContextKeys": "App"}}, EC),     # multivalued, no set op
    ({"ForAnyValue:StringEquals": {"kms:CallerAccount": "123456789012"}}, {}),
    ({"StringEquals": {"aws:PrincipalArn": "${aws:username}"}}, {}),   # policy variable
    ({"StringEquals": {"aws:SourceIp": "127.0.0.1"}}, {}),            # key not in the context
    ({"DateLessThan": {"aws:CurrentTime": "2100-01-01T00:00:00Z"}}, {}),
    ({"StringEquals": {"kms:EncryptionContext:app": "billing"}},
     {"kms:encryptioncontext:app": UNKNOWN}),                         # colliding keys
    ({"Bool": {"kms:GrantIsForAWSResource": "false"}},
     {"kms:grantisforawsresource": Uncertain((("false",), None))}),   # false, or absent?
    ({"Bool": {"kms:GrantIsForAWSResource": "maybe"}},
     {"kms:grantisforawsresource": ("false",)}),
    ({"Null": {"kms:ViaService": "perhaps"}}, {}),
    ({"StringEquals": "not an object"}, {}),
    ({}, {}),
])
def test_not_understood_conditions_fail_closed(condition, values):
    base = {"aws:principalarn": (ROLE,), "kms:calleraccount": ("123456789012",),
            "kms:viaservice": None}
    ctx = RequestContext(dict(base, **values), ec_known=True)
    assert not _decide(_st(condition=condition), context=ctx).allowed
    d = _decide(_st(), _st("Deny", condition=condition), context=ctx)
    assert not d.allowed and d.explicit_deny


def test_uncertain_value_that_agrees_is_understood():
    ctx = RequestContext({"kms:grantisforawsresource": Uncertain((("false",), None))})
    # "true" fails on both alternatives (false, and absent): a definite no
    d = _decide(_st(condition={"Bool": {"kms:GrantIsForAWSResource": "true"}}), context=ctx)
    assert not d.allowed and "unsupported" not in d.reason
    d = _decide(_st(), _st("Deny", condition={"Bool": {"kms:GrantIsForAWSResource": "true"}}),
                context=ctx)
    assert d.allowed


def test_colliding_encryption_context_keys_are_unknown():
    values = encryption_context_values({"app": "a", "App": "b"})
    assert values["kms:encryptioncontext:app"] is UNKNOWN
    assert values["kms:encryptioncontextkeys"] == ("app", "App")


@pytest.mark.parametrize("policy", [
    '{"Statement": [{"Effect": "Allow", "Effect": "Allow", "Principal": "*", '
    '"Action": "kms:*", "Resource": "*"}]}',                          # duplicate key
    '{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*", '
    '"Resource": "*", "Conditon": {}}]}',                              # unknown element
    '{"Statement": [], "Extra": 1}',
    '{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": 5, "Resource": "*"}]}',
    '{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*", '
    '"NotAction": "kms:Decrypt", "Resource": "*"}]}',
    '{"Statement": "x"}', "[1]", "NaN",
])
def test_unreadable_policies_deny_everything(policy):
    d = evaluate_key_policy(policy, "kms:Decrypt", {}, principal=ROLE, resource=KEY)
    assert not d.allowed


def test_principal_must_be_a_role_or_user():
    for bad in ("arn:aws:iam::123456789012:root", "*", "arn:aws:sts::1:assumed-role/a/b",
                "role/x"):
        with pytest.raises(ValueError):
            Principal(bad)
    assert Principal(ROLE).account == "123456789012"


# --- the operation table and the request format ------------------------------------------------

def test_every_kms_operation_is_mapped():
    import botocore.session

    from sops_enclave.devtools.kms_operations import GRANT_OPERATIONS, OPERATIONS

    model = botocore.session.get_session().get_service_model("kms")
    assert set(OPERATIONS) == set(model.operation_names)
    assert GRANT_OPERATIONS == set(model.shape_for("GrantOperation").enum)
    for name, op in OPERATIONS.items():
        members = model.operation_model(name).input_shape.members
        assert op.action == f"kms:{name}"
        assert op.recipient == ("Recipient" in members), name
        if op.kind == "key":
            assert "KeyId" in model.operation_model(name).input_shape.required_members, name
        for param in op.ec_params:
            assert param in members


def _signed(url: str, target: str, params: dict, creds=("testing", "testing")):
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    body = json.dumps(params).encode()
    req = AWSRequest(method="POST", url=url + "/", data=body)
    req.headers["Content-Type"] = "application/x-amz-json-1.1"
    req.headers["X-Amz-Target"] = target
    SigV4Auth(Credentials(*creds), "kms", "us-east-1").add_auth(req)
    return [(k, v if isinstance(v, str) else v.decode()) for k, v in req.headers.items()], body


def test_sigv4_verification_matches_botocore():
    from datetime import datetime, timezone

    from sops_enclave.devtools.kms_sigv4 import AuthError, authenticate, principal_table

    table = principal_table(None)
    headers, body = _signed("http://127.0.0.1:1234", "TrentService.ListKeys", {})
    headers.append(("Host", "127.0.0.1:1234"))
    assert authenticate("POST", "/", headers, body, table).arn == \
        "arn:aws:iam::123456789012:user/testing"
    for change, error in [
        (lambda h, b: (h, b + b" "), "InvalidSignatureException"),
        (lambda h, b: ([(k, "127.0.0.1:9") if k == "Host" else (k, v) for k, v in h], b),
         "InvalidSignatureException"),
        (lambda h, b: ([(k, "TrentService.Decrypt") if k == "X-Amz-Target" else (k, v)
                        for k, v in h], b), "InvalidSignatureException"),
        (lambda h, b: ([(k, v.replace("testing/", "nobody/")) if k == "Authorization"
                        else (k, v) for k, v in h], b), "UnrecognizedClientException"),
        (lambda h, b: ([(k, v.replace("/kms/", "/s3/")) if k == "Authorization"
                        else (k, v) for k, v in h], b), "InvalidSignatureException"),
        (lambda h, b: ([(k, v) for k, v in h if k != "Authorization"], b),
         "MissingAuthenticationTokenException"),
        (lambda h, b: ([(k, v[:-3]) if k == "Authorization" else (k, v) for k, v in h], b),
         "IncompleteSignatureException"),
    ]:
        h, b = change(list(headers), body)
        with pytest.raises(AuthError) as e:
            authenticate("POST", "/", h, b, table)
        assert e.value.error_type == error
    later = datetime.now(timezone.utc) + timedelta(minutes=20)
    with pytest.raises(AuthError, match="expired"):
        authenticate("POST", "/", headers, body, table, now=later)


def test_principal_table_and_command_line_flag(kms_server, nsm, base_env):
    with pytest.raises(ValueError):
        AttestedKMS(kms_server, [nsm.root_fingerprint], principals={"k": ("s", "not-an-arn")})
    with pytest.raises(ValueError):
        AttestedKMS(kms_server, [nsm.root_fingerprint],
                    principals={"k": ("s", "arn:aws:iam::123456789012:root")})
    with pytest.raises(ValueError):
        AttestedKMS(kms_server, [nsm.root_fingerprint], principals={})
    env = dict(base_env, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "sops_enclave.devtools.kms_attested",
                             "--upstream", kms_server, "--root", nsm.root_fingerprint,
                             "--principal", "AKIDCLI:cli-secret:arn:aws:iam::123456789012:role/cli"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()))
        reader.start()
        reader.join(30)
        assert line and line[0].startswith("http://127.0.0.1:"), proc.stderr
        url = line[0].strip()
        cli = boto3.client("kms", region_name="us-east-1", endpoint_url=url,
                           aws_access_key_id="AKIDCLI", aws_secret_access_key="cli-secret",
                           config=Config(retries={"max_attempts": 1}))
        assert cli.create_key()["KeyMetadata"]["Arn"]
        with pytest.raises(ClientError) as e:          # the default table is replaced
            _client(url).list_keys()
        assert e.value.response["Error"]["Code"] == "UnrecognizedClientException"
    finally:
        proc.terminate()
        rc = proc.wait(15)
    assert rc == 0
    assert "role/cli" in proc.stderr.read()


def test_decrypt_with_a_mismatched_key_id_leaks_nothing(client, image_key, data_key):
    """KeyId names an open key, the ciphertext belongs to the gated one."""
    open_key = client.create_key(Description="open")["KeyMetadata"]["Arn"]
    with pytest.raises(ClientError) as e:
        client.decrypt(CiphertextBlob=data_key[1], KeyId=open_key,
                       EncryptionContext={"app": "test"})
    assert e.value.response["Error"]["Code"] in ("AccessDeniedException",
                                                 "IncorrectKeyException")
    assert "Plaintext" not in e.value.response


class _FakeKMS:
    """An upstream that names another key in its answers than the one DescribeKey gave (as
    moto would if an alias moved between the look-up and the operation)."""

    EVALUATED = "arn:aws:kms:us-east-1:123456789012:key/11111111-1111-1111-1111-111111111111"
    USED = "arn:aws:kms:us-east-1:123456789012:key/22222222-2222-2222-2222-222222222222"

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        fake = self
        self.operations: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                op = self.headers["X-Amz-Target"].split(".")[1]
                fake.operations.append(op)
                answer = {
                    "DescribeKey": {"KeyMetadata": {"Arn": fake.EVALUATED}},
                    "GetKeyPolicy": {"Policy": json.dumps(_policy(
                        {"Effect": "Allow", "Principal": "*", "Action": "kms:*",
                         "Resource": "*"}))},
                }.get(op, {"KeyId": fake.USED, "Plaintext": "c2VjcmV0",
                           "CiphertextBlob": "YQ=="})
                body = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_answer_for_another_key_than_evaluated_is_dropped(nsm):
    fake = _FakeKMS()
    try:
        with AttestedKMS(fake.url, [nsm.root_fingerprint]) as kms:
            c = _client(kms.url)
            for call in (lambda: c.decrypt(CiphertextBlob=b"x", KeyId="alias/moved"),
                         lambda: c.generate_data_key(KeyId="alias/moved", KeySpec="AES_256"),
                         lambda: c.encrypt(KeyId="alias/moved", Plaintext=b"x")):
                with pytest.raises(ClientError) as e:
                    call()
                assert e.value.response["Error"]["Code"] == "AccessDeniedException"
                assert "not the evaluated" in e.value.response["Error"]["Message"]
                assert "Plaintext" not in e.value.response
        assert {"Decrypt", "GenerateDataKey", "Encrypt"} <= set(fake.operations)
    finally:
        fake.close()


def test_a_key_arn_is_not_looked_up_but_its_policy_is_read_on_every_call(nsm):
    """A key ARN names itself (no DescribeKey); the policy is fetched for every call, and
    the key moto reports using must still be the ARN that was evaluated."""
    fake = _FakeKMS()
    try:
        with AttestedKMS(fake.url, [nsm.root_fingerprint]) as kms:
            c = _client(kms.url)
            for _ in range(2):
                assert c.decrypt(CiphertextBlob=b"x", KeyId=fake.USED)["KeyId"] == fake.USED
            assert fake.operations == ["GetKeyPolicy", "Decrypt"] * 2
            with pytest.raises(ClientError) as e:
                c.decrypt(CiphertextBlob=b"x", KeyId=fake.EVALUATED)
            assert "not the evaluated" in e.value.response["Error"]["Message"]
            assert "Plaintext" not in e.value.response
            fake.operations.clear()
            with pytest.raises(ClientError):
                c.decrypt(CiphertextBlob=b"x", KeyId="alias/moved")
            assert fake.operations[0] == "DescribeKey"  # an alias is resolved every time
    finally:
        fake.close()


def test_a_key_arn_of_another_account_or_region_is_still_looked_up(nsm):
    fake = _FakeKMS()
    try:
        with AttestedKMS(fake.url, [nsm.root_fingerprint]) as kms:
            c = _client(kms.url)
            for arn in (fake.USED.replace(":123456789012:", ":210987654321:"),
                        fake.USED.replace(":us-east-1:", ":eu-west-1:")):
                fake.operations.clear()
                with pytest.raises(ClientError):
                    c.decrypt(CiphertextBlob=b"x", KeyId=arn)
                assert fake.operations[0] == "DescribeKey"
    finally:
        fake.close()
