"""The software NSM: Nitro document format, dev CA on disk, measurement, trust only on request."""

from __future__ import annotations

import hashlib
import os
import stat
from datetime import datetime, timedelta, timezone

import cbor2
import pytest
from cryptography import x509

from sops_enclave.devtools import nsm_soft
from sops_enclave.devtools.dev_ca import DevCA
from sops_enclave.devtools.nsm_soft import SoftNSM, bundle_archive, measure_bundle
from sops_enclave.receipt.attestation import AttestationError, parse_attestation, verify_attestation
from sops_enclave.receipt.dev_root import default_dev_ca_dir, local_dev_root_fingerprint
from sops_enclave.receipt.nitro_root import AWS_NITRO_ROOT_G1_SHA256, fingerprint
from sops_enclave.receipt.pcr_policy import PCRPolicy

UTC = timezone.utc
NITRO_KEY_ORDER = ["module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle",
                   "public_key", "user_data", "nonce"]


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("dev-ca") / "ca"


@pytest.fixture(scope="module")
def nsm(ca_dir):
    return SoftNSM(ca_dir, pcrs=measure_bundle({"app/main.py": b"print('hi')\n"}))


def test_document_has_the_nitro_format(nsm):
    doc = nsm.attest(public_key=b"pk", user_data=b"ud")
    assert doc[:6] == bytes.fromhex("d28444a1013822")[:6]        # tag 18, array(4), h'a1013822'
    tagged = cbor2.loads(doc)
    assert tagged.tag == 18
    protected, unprotected, payload, signature = tagged.value
    assert protected == b"\xa1\x01\x38\x22" and unprotected == {} and len(signature) == 96
    body = cbor2.loads(payload)
    assert list(body) == NITRO_KEY_ORDER
    assert body["digest"] == "SHA384" and body["nonce"] is None
    assert body["public_key"] == b"pk" and body["user_data"] == b"ud"
    # The timestamp is a uint in milliseconds, 8-byte encoded like the NSM's.
    assert b"itimestamp\x1b" in payload
    assert abs(body["timestamp"] / 1000 - datetime.now(UTC).timestamp()) < 60
    assert sorted(body["pcrs"]) == list(range(16))
    assert all(len(v) == 48 for v in body["pcrs"].values())
    assert len(body["cabundle"]) == 2 and fingerprint(body["cabundle"][0]) == nsm.root_fingerprint
    leaf = x509.load_der_x509_certificate(body["certificate"])
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(hours=3)
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_documents_verify_with_its_root_and_not_without(nsm):
    doc = nsm.attest(user_data=b"x" * 32, nonce=b"n" * 16)
    policy = PCRPolicy([{i: nsm.describe_pcr(i).data for i in (0, 1, 2)}])
    parsed = verify_attestation(doc, root_fingerprint=nsm.root_fingerprint, pcr_policy=policy)
    assert parsed.user_data == b"x" * 32 and parsed.nonce == b"n" * 16
    assert parsed.module_id == nsm.module_id and parsed.tagged
    with pytest.raises(AttestationError) as e:
        verify_attestation(doc)                                   # default: AWS root only
    assert e.value.step == 4
    assert nsm.root_fingerprint != AWS_NITRO_ROOT_G1_SHA256


def test_each_document_has_its_own_leaf(nsm):
    a, b = (parse_attestation(nsm.attest()) for _ in range(2))
    assert a.certificate != b.certificate and a.cabundle == b.cabundle


def test_cryptography_verifier_accepts_the_dev_chain(nsm):
    verification = pytest.importorskip("cryptography.x509.verification")
    if not hasattr(verification.PolicyBuilder, "extension_policies"):
        pytest.skip("this cryptography has no extension_policies")
    doc = parse_attestation(nsm.attest())
    root = x509.load_pem_x509_certificate(nsm.root_pem)
    (verification.PolicyBuilder().store(verification.Store([root])).time(doc.timestamp)
     .extension_policies(ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                         ee_policy=verification.ExtensionPolicy.permit_all())
     .build_client_verifier()
     .verify(x509.load_der_x509_certificate(doc.certificate),
             [x509.load_der_x509_certificate(doc.cabundle[1])]))


def test_document_from_the_past_verifies_at_its_time_only(ca_dir):
    then = datetime.now(UTC) - timedelta(days=2)
    old = SoftNSM(ca_dir, pcrs={}, clock=lambda: then)
    doc = old.attest()
    parsed = verify_attestation(doc, root_fingerprint=old.root_fingerprint, allow_debug=True)
    assert abs(parsed.timestamp - then) < timedelta(milliseconds=2)
    with pytest.raises(AttestationError) as e:
        verify_attestation(doc, root_fingerprint=old.root_fingerprint, at="now", allow_debug=True)
    assert e.value.step == 5


def test_dev_ca_files_are_private_and_reused(ca_dir, nsm):
    assert stat.S_IMODE(os.stat(ca_dir).st_mode) == 0o700
    names = sorted(p.name for p in ca_dir.iterdir())
    assert names == [".lock", "intermediate.key", "intermediate.pem", "root.key", "root.pem"]
    for p in ca_dir.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    again = SoftNSM(ca_dir, pcrs={})
    assert again.root_fingerprint == nsm.root_fingerprint and again.root_pem == nsm.root_pem
    assert local_dev_root_fingerprint(ca_dir) == nsm.root_fingerprint


def test_expiring_intermediate_is_reissued_under_the_same_root(tmp_path):
    now = datetime.now(UTC)
    first = DevCA.load_or_create(tmp_path / "ca", now=now)
    later = DevCA.load_or_create(tmp_path / "ca", now=now + timedelta(days=365))
    assert later.root_fingerprint == first.root_fingerprint
    assert later.intermediate_cert.serial_number != first.intermediate_cert.serial_number
    same = DevCA.load_or_create(tmp_path / "ca", now=now + timedelta(days=365))
    assert same.intermediate_cert.serial_number == later.intermediate_cert.serial_number


def test_default_ca_dir_from_environment(monkeypatch, tmp_path):
    assert default_dev_ca_dir({"SOPS_ENCLAVE_DEV_CA_DIR": "/x/y"}).as_posix() == "/x/y"
    assert default_dev_ca_dir({"XDG_STATE_HOME": "/s"}).as_posix() == "/s/sops-enclave/dev-ca"
    assert default_dev_ca_dir({"HOME": "/h"}).as_posix() == "/h/.local/state/sops-enclave/dev-ca"
    monkeypatch.delenv("SOPS_ENCLAVE_DEV_CA_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    made = SoftNSM(pcrs={})
    assert (tmp_path / "state" / "sops-enclave" / "dev-ca" / "root.pem").is_file()
    monkeypatch.setenv("SOPS_ENCLAVE_DEV_CA_DIR", str(tmp_path / "env-ca"))
    other = SoftNSM(pcrs={})
    assert (tmp_path / "env-ca" / "root.pem").is_file()
    assert other.root_fingerprint != made.root_fingerprint
    with pytest.raises(FileNotFoundError):
        local_dev_root_fingerprint(tmp_path / "nowhere")


def _ext(d: bytes) -> bytes:
    return hashlib.sha384(bytes(48) + d).digest()


def test_measurement_follows_the_documented_formula():
    files = {"b/x.py": b"x = 1\n", "a.py": b""}
    archive = (b"sops-enclave-bundle/v1\n"
               + (4).to_bytes(4, "big") + b"a.py" + (0).to_bytes(8, "big")
               + (6).to_bytes(4, "big") + b"b/x.py" + (6).to_bytes(8, "big") + b"x = 1\n")
    assert bundle_archive(files) == archive
    boot = b"sops-enclave soft-nsm boot v1\n"
    assert measure_bundle(files) == {
        0: _ext(hashlib.sha384(boot + archive).digest()),
        1: _ext(hashlib.sha384(boot).digest()),
        2: _ext(hashlib.sha384(archive).digest())}


def test_code_change_changes_image_pcrs_but_not_boot_pcr():
    base = measure_bundle({"app.py": b"a", "lib.py": b"b"})
    assert measure_bundle({"lib.py": b"b", "app.py": b"a"}) == base      # order-independent
    for changed in ({"app.py": b"A", "lib.py": b"b"}, {"app2.py": b"a", "lib.py": b"b"},
                    {"app.py": b"a", "lib.py": b"b", "new.py": b""}, {"app.pyl": b"ib.py"}):
        m = measure_bundle(changed)
        assert m[0] != base[0] and m[2] != base[2] and m[1] == base[1], changed
    for bad in ("/abs.py", "../up.py", "a//b.py", "./a.py", ""):
        with pytest.raises(ValueError):
            bundle_archive({bad: b""})


def test_default_bundle_measures_this_package(tmp_path):
    files = nsm_soft.default_bundle()
    assert "sops_enclave/enclave/executor.py" in files and "sops_enclave/cipher.py" in files
    assert "sops_enclave/devtools/nsm_soft.py" not in files     # dev stand-ins stay out
    assert not any(p.endswith(".pyc") or "__pycache__" in p for p in files)
    nsm = SoftNSM(tmp_path / "ca")
    assert nsm.describe_pcr(0).data == measure_bundle(files)[0]
    tree = tmp_path / "tree"
    (tree / "__pycache__").mkdir(parents=True)
    (tree / "__pycache__" / "m.pyc").write_bytes(b"junk")
    (tree / "m.py").write_bytes(b"m")
    assert nsm_soft.collect_bundle(tree, prefix="p/") == {"p/m.py": b"m"}


def test_pcr_operations(tmp_path):
    nsm = SoftNSM(tmp_path / "ca", pcrs={0: b"\x01" * 48})
    assert nsm.describe_pcr(0) == (True, b"\x01" * 48)
    assert nsm.describe_pcr(3) == (True, bytes(48))
    assert nsm.describe_pcr(16) == (False, bytes(48))
    with pytest.raises(PermissionError):
        nsm.extend_pcr(0, b"x")
    value = nsm.extend_pcr(16, b"app-config")
    assert value == _ext(b"app-config")
    nsm.lock_pcr(16)
    with pytest.raises(PermissionError):
        nsm.extend_pcr(16, b"more")
    doc = parse_attestation(nsm.attest())
    assert doc.pcrs[16] == value and len(doc.pcrs) == 17
    with pytest.raises(ValueError):
        nsm.describe_pcr(32)
    with pytest.raises(ValueError):
        SoftNSM(tmp_path / "ca", pcrs={0: b"short"})


def test_field_limits_and_randomness(nsm):
    nsm.attest(user_data=b"u" * 1024)
    with pytest.raises(ValueError):
        nsm.attest(user_data=b"u" * 1025)
    with pytest.raises(TypeError):
        nsm.attest(nonce="text")  # type: ignore[arg-type]
    a, b = nsm.get_random(32), nsm.get_random(32)
    assert len(a) == 32 and a != b
