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
        {"StringLike": {"kms:RecipientAttestation:ImageSha384": "*"}}))
    with pytest.raises(ClientError) as e:
        client.generate_data_key(KeyId=key, KeySpec="AES_256", Recipient=_recipient(doc))
    assert "unsupported condition StringLike" in _denied(e)


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
    # Fail closed: what the evaluator does not understand never allows.
    (_policy(_allow({"StringLike": {"kms:RecipientAttestation:ImageSha384": "*"}})), CTX, False),
    (_policy(_allow({"ForAnyValue:StringEquals": {"kms:RecipientAttestation:PCR0": PCR0}})),
     CTX, False),
    (_policy(_allow({"StringEquals": {"kms:EncryptionContext:app": "x"}})), CTX, False),
    (_policy(_allow({"StringEquals": {"kms:RecipientAttestation:PCR0": 5}})), CTX, False),
    (_policy(_allow(), _deny({"StringLike": {"kms:RecipientAttestation:ImageSha384": "x"}})),
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
