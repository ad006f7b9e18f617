"""Nitro attestation verification: genuine AWS documents, tampering, hostile CBOR, CLI."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from sops_enclave.errors import ConflictingParameters, CouldNotReadInputFile, SopsError
from sops_enclave.receipt import strict_cbor as _cbor
from sops_enclave.receipt.attestation import (
    MAX_DOCUMENT_SIZE, AttestationError, parse_attestation, verify_attestation)
from sops_enclave.receipt.cli import register
from sops_enclave.receipt.cose import ES384_PROTECTED, sign_es384
from sops_enclave.receipt.nitro_root import (
    AWS_NITRO_ROOT_G1_PEM, AWS_NITRO_ROOT_G1_SHA256, aws_nitro_root_der, fingerprint)
from sops_enclave.receipt.pcr_policy import PCRPolicy

NITRO = Path(__file__).parent.parent.parent / "shared" / "vectors" / "nitro"
_MANIFEST_FILE = NITRO / "MANIFEST.json"
MANIFEST = json.loads(_MANIFEST_FILE.read_text()) if _MANIFEST_FILE.is_file() else {}
VECTOR_NAMES = sorted(MANIFEST) or ["<no vectors>"]
PROD = "evervault_2022-10-13_prod_pcr8.cose"
DEBUG = "evervault_2022-10-12_debug.cose"
MOCK = "oyster_mock_selfsigned_chain_NOT_AWS.cose"
BAD_SIG = "eternis_2024-07-23_BAD_COSE_SIGNATURE.cose"
UTC = timezone.utc


def _vector(name: str) -> bytes:
    if not MANIFEST:
        pytest.skip(f"Nitro vectors not found at {NITRO} "
                    "(they live in ../shared/vectors next to the repository)")
    return (NITRO / name).read_bytes()


def _expected_step(meta: dict, allow_debug: bool) -> int | None:
    """The check a vector must fail at, from the independent MANIFEST analysis."""
    if not meta["cabundle0_is_aws_nitro_root_g1"]:
        return 4
    if not (meta["chain_signatures_ok"] and meta["all_certs_valid_at_doc_timestamp"]):
        return 5
    if not meta["cose_signature_ok"]:
        return 6
    if 0 in meta["zero_pcrs"] and not allow_debug:
        return 7
    return None


def _step(exc_info: pytest.ExceptionInfo) -> int:
    return exc_info.value.step


# --------------------------------------------------------------------------- genuine vectors

def test_manifest_lists_two_documents_that_must_be_refused():
    _vector(PROD)
    refused = [n for n, m in MANIFEST.items() if _expected_step(m, allow_debug=True)]
    assert sorted(refused) == sorted([BAD_SIG, MOCK])


@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_vector_bytes_match_manifest(name):
    raw = _vector(name)
    assert hashlib.sha256(raw).hexdigest() == MANIFEST[name]["sha256"]


@pytest.mark.parametrize("name", VECTOR_NAMES)
@pytest.mark.parametrize("allow_debug", [False, True])
def test_vector_outcome_at_document_time(name, allow_debug):
    raw = _vector(name)
    want = _expected_step(MANIFEST[name], allow_debug)
    if want is None:
        doc = verify_attestation(raw, allow_debug=allow_debug)
        assert doc.module_id == MANIFEST[name]["module_id"]
    else:
        with pytest.raises(AttestationError) as e:
            verify_attestation(raw, allow_debug=allow_debug)
        assert _step(e) == want, str(e.value)


@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_vector_fields_match_manifest(name):
    raw = _vector(name)
    meta = MANIFEST[name]
    doc = parse_attestation(raw)
    assert not doc.tagged and doc.raw == raw
    assert doc.module_id == meta["module_id"]
    assert doc.timestamp_ms == meta["timestamp_ms"]
    assert doc.timestamp == datetime.fromisoformat(meta["timestamp_utc"])
    assert len(doc.pcrs) == meta["num_pcrs_in_doc"]
    assert len(doc.cabundle) == meta["cabundle_len"]
    for idx, value in meta["nonzero_pcrs"].items():
        assert doc.pcrs[int(idx)].hex() == value
    for idx in meta["zero_pcrs"]:
        assert doc.pcrs[idx] == bytes(48)
    assert doc.is_debug == (0 in meta["zero_pcrs"])
    for field in ("public_key", "user_data", "nonce"):
        want, have = meta[field], getattr(doc, field)
        if want is None:
            assert have is None
        elif want.startswith("<"):
            size, _, prefix = want.partition(" bytes> ")
            assert len(have) == int(size[1:]) and have.hex().startswith(prefix)
        else:
            assert have.hex() == want


@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_vector_expired_chain_fails_now(name):
    raw = _vector(name)
    want = 4 if name == MOCK else 5      # every AWS chain has long expired; the mock is not AWS
    with pytest.raises(AttestationError) as e:
        verify_attestation(raw, at="now", allow_debug=True)
    assert _step(e) == want


def test_leaf_validity_window_bounds_the_check_time():
    raw = _vector(PROD)
    meta = MANIFEST[PROD]
    not_before = datetime.fromisoformat(meta["leaf_not_before"])
    not_after = datetime.fromisoformat(meta["leaf_not_after"])
    verify_attestation(raw, at=not_before + timedelta(seconds=1))
    verify_attestation(raw, at=not_after - timedelta(seconds=1))
    for when in (not_before - timedelta(seconds=1), not_after + timedelta(seconds=1)):
        with pytest.raises(AttestationError) as e:
            verify_attestation(raw, at=when)
        assert _step(e) == 5 and "certificate" in e.value.reason


def test_mock_chain_is_stopped_only_by_the_root_pin():
    raw = _vector(MOCK)
    pinned = fingerprint(parse_attestation(raw).cabundle[0])
    assert pinned != AWS_NITRO_ROOT_G1_SHA256
    doc = verify_attestation(raw, root_fingerprint=pinned, allow_debug=True)
    assert doc.user_data == bytes.fromhex("abcdef")


def test_pcr_policy_on_production_vector():
    raw = _vector(PROD)
    pcrs = {int(k): v for k, v in MANIFEST[PROD]["nonzero_pcrs"].items()}
    good = {i: pcrs[i] for i in (0, 1, 2, 8)}
    verify_attestation(raw, pcr_policy=PCRPolicy.from_hex([good]))
    bad = {**good, 2: "00" + good[2][2:]}
    with pytest.raises(AttestationError) as e:
        verify_attestation(raw, pcr_policy=PCRPolicy.from_hex([bad]))
    assert _step(e) == 8 and "PCR2" in e.value.reason
    # Rollout: the second allowed set matches.
    doc = parse_attestation(raw)
    from sops_enclave.receipt.attestation import check_pcrs
    assert check_pcrs(doc, PCRPolicy.from_hex([bad, good])) == 2
    with pytest.raises(AttestationError) as e:
        verify_attestation(raw, pcr_policy=PCRPolicy.from_hex([{16: "11" * 48}]))
    assert _step(e) == 8 and "PCR16 absent" in e.value.reason


def test_debug_document_cannot_pass_a_zero_pinned_policy_without_allow_debug():
    raw = _vector(DEBUG)
    zeros = PCRPolicy.from_hex([{0: "00" * 48}])
    with pytest.raises(AttestationError) as e:
        verify_attestation(raw, pcr_policy=zeros)
    assert _step(e) == 7
    verify_attestation(raw, pcr_policy=zeros, allow_debug=True)


def test_embedded_root_is_the_vector_root_and_the_pinned_fingerprint():
    assert fingerprint(aws_nitro_root_der()) == AWS_NITRO_ROOT_G1_SHA256
    if (NITRO / "aws_nitro_root_g1.pem").is_file():
        vec = x509.load_pem_x509_certificate((NITRO / "aws_nitro_root_g1.pem").read_bytes())
        assert vec.public_bytes(Encoding.DER) == aws_nitro_root_der()
        assert AWS_NITRO_ROOT_G1_PEM.strip() in (NITRO / "aws_nitro_root_g1.pem").read_bytes()


def test_cryptography_verifier_agrees_on_genuine_chains():
    verification = pytest.importorskip("cryptography.x509.verification")
    if not hasattr(verification.PolicyBuilder, "extension_policies"):
        pytest.skip("this cryptography has no extension_policies")
    for name, meta in MANIFEST.items() or pytest.skip("no vectors"):
        doc = parse_attestation((NITRO / name).read_bytes())
        certs = [x509.load_der_x509_certificate(c) for c in doc.cabundle]
        aws_root = x509.load_der_x509_certificate(aws_nitro_root_der())
        builder = (verification.PolicyBuilder()
                   .store(verification.Store([aws_root]))
                   .time(doc.timestamp)
                   .extension_policies(ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                                       ee_policy=verification.ExtensionPolicy.permit_all()))
        leaf = x509.load_der_x509_certificate(doc.certificate)
        if meta["cabundle0_is_aws_nitro_root_g1"]:
            builder.build_client_verifier().verify(leaf, certs[1:])
        else:
            with pytest.raises(verification.VerificationError):
                builder.build_client_verifier().verify(leaf, certs[1:])


# --------------------------------------------------------------------------- tampering real bytes

def _flip(raw: bytes, offset: int) -> bytes:
    return raw[:offset] + bytes([raw[offset] ^ 0x01]) + raw[offset + 1:]


def test_flipped_signature_byte_fails_signature_check():
    raw = _vector(PROD)
    verify_attestation(raw)
    with pytest.raises(AttestationError) as e:
        verify_attestation(_flip(raw, len(raw) - 5))
    assert _step(e) == 6


def test_modified_payload_fails_signature_check():
    raw = _vector(PROD)
    pcr0 = bytes.fromhex(MANIFEST[PROD]["nonzero_pcrs"]["0"])
    at = raw.index(pcr0)
    tampered = _flip(raw, at + 10)
    doc = parse_attestation(tampered)               # still well-formed...
    assert doc.pcrs[0] != pcr0
    with pytest.raises(AttestationError) as e:      # ...but no longer what AWS signed
        verify_attestation(tampered)
    assert _step(e) == 6


def test_wrong_root_fingerprint_fails_root_check():
    raw = _vector(PROD)
    with pytest.raises(AttestationError) as e:
        verify_attestation(raw, root_fingerprint="00" * 32)
    assert _step(e) == 4


def test_trailing_bytes_refused_at_parse():
    raw = _vector(PROD)
    for bad in (raw + b"\x00", raw + b"\xa0"):
        with pytest.raises(AttestationError) as e:
            parse_attestation(bad)
        assert _step(e) == 1 and "trailing" in e.value.reason


def test_protected_header_other_than_es384_refused():
    raw = _vector(PROD)
    assert raw[1:6] == b"\x44" + ES384_PROTECTED
    for header in (b"\xa1\x01\x26", b"\xa1\x01\xf5", b"\xa2\x01\x38\x22\x01\x38\x22",
                   b"\xa1\x01\x78\x05ES384"):
        bad = raw[:1] + bytes([0x40 + len(header)]) + header + raw[6:]
        with pytest.raises(AttestationError) as e:
            parse_attestation(bad)
        assert _step(e) == 1, header


# --------------------------------------------------------------------------- forged documents

def _name(cn: str, *, aws: bool = False) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if aws:
        attrs = [x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                 x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Amazon"),
                 x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "AWS"), *attrs]
    return x509.Name(attrs)


def _cert(subject, key, issuer, issuer_key, *, ca=True, path_length=None, days=30,
          key_cert_sign=None, digital_signature=True):
    now = datetime.now(UTC)
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None),
                        critical=True)
         .add_extension(x509.KeyUsage(digital_signature=digital_signature, content_commitment=False,
                                      key_encipherment=False, data_encipherment=False,
                                      key_agreement=False,
                                      key_cert_sign=ca if key_cert_sign is None else key_cert_sign,
                                      crl_sign=ca, encipher_only=False, decipher_only=False),
                        critical=True))
    return b.sign(issuer_key, hashes.SHA384())


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


class Forge:
    """A throwaway P-384 CA that signs Nitro-shaped documents with any payload."""

    def __init__(self, root_subject: x509.Name | None = None) -> None:
        self.root_key = ec.generate_private_key(ec.SECP384R1())
        subject = root_subject or _name("forge root")
        self.root = _cert(subject, self.root_key, subject, self.root_key)
        self.int_key = ec.generate_private_key(ec.SECP384R1())
        self.inter = _cert(_name("forge intermediate"), self.int_key, subject, self.root_key)
        self.fp = fingerprint(_der(self.root))

    def leaf(self, key=None, **kw):
        key = key or ec.generate_private_key(ec.SECP384R1())
        return key, _cert(_name("forge leaf"), key, self.inter.subject, self.int_key,
                          ca=kw.pop("ca", False), **kw)

    def payload(self, leaf_cert, **overrides) -> dict:
        p = {"module_id": "i-forge-enc0000000000000000", "digest": "SHA384",
             "timestamp": int(datetime.now(UTC).timestamp() * 1000),
             "pcrs": {i: bytes([i + 1]) * 48 for i in range(16)},
             "certificate": _der(leaf_cert), "cabundle": [_der(self.root), _der(self.inter)],
             "public_key": None, "user_data": b"hello", "nonce": None}
        p.update(overrides)
        return {k: v for k, v in p.items() if v is not _DROP}

    def sign(self, payload_bytes: bytes, leaf_key, *, tag: bool = True,
             protected: bytes = ES384_PROTECTED) -> bytes:
        arr = [protected, {}, payload_bytes, sign_es384(leaf_key, protected, payload_bytes)]
        return cbor2.dumps(cbor2.CBORTag(18, arr) if tag else arr)

    def doc(self, **overrides) -> bytes:
        key, leaf = self.leaf()
        return self.sign(cbor2.dumps(self.payload(leaf, **overrides)), key)


_DROP = object()


@pytest.fixture(scope="module")
def forge() -> Forge:
    return Forge()


def test_forged_baseline_verifies_with_its_root_only(forge):
    doc = forge.doc()
    assert verify_attestation(doc, root_fingerprint=forge.fp).user_data == b"hello"
    with pytest.raises(AttestationError) as e:
        verify_attestation(doc)
    assert _step(e) == 4


def test_untagged_and_tagged_both_accepted(forge):
    doc = forge.doc()
    untagged = _cbor.decode(doc, top_level_tags=frozenset({18})).value
    raw = cbor2.dumps(untagged)
    assert raw[0] == 0x84 and doc[0] == 0xD2
    assert verify_attestation(raw, root_fingerprint=forge.fp).tagged is False
    assert verify_attestation(doc, root_fingerprint=forge.fp).tagged is True
    with pytest.raises(AttestationError) as e:
        parse_attestation(cbor2.dumps(cbor2.CBORTag(98, untagged)))
    assert _step(e) == 1


def test_look_alike_root_refused_at_root_check():
    # Same subject as the AWS root, different key: only the fingerprint tells them apart.
    fake = Forge(root_subject=_name("aws.nitro-enclaves", aws=True))
    aws_root = x509.load_der_x509_certificate(aws_nitro_root_der())
    assert fake.root.subject == aws_root.subject
    with pytest.raises(AttestationError) as e:
        verify_attestation(fake.doc())
    assert _step(e) == 4
    # Putting the real root in front does not help: the fake intermediate is not signed by it.
    key, leaf = fake.leaf()
    p = fake.payload(leaf, cabundle=[aws_nitro_root_der(), _der(fake.inter)])
    with pytest.raises(AttestationError) as e:
        verify_attestation(fake.sign(cbor2.dumps(p), key))
    assert _step(e) == 5 and "not signed by" in e.value.reason


def test_chain_with_a_loop_refused(forge):
    key, leaf = forge.leaf()
    p = forge.payload(leaf, cabundle=[_der(forge.root), _der(forge.inter), _der(forge.inter)])
    with pytest.raises(AttestationError) as e:
        verify_attestation(forge.sign(cbor2.dumps(p), key), root_fingerprint=forge.fp)
    assert _step(e) == 5 and "twice" in e.value.reason
    # The root again in the middle of the chain is a loop too.
    p = forge.payload(leaf, cabundle=[_der(forge.root), _der(forge.root), _der(forge.inter)])
    with pytest.raises(AttestationError) as e:
        verify_attestation(forge.sign(cbor2.dumps(p), key), root_fingerprint=forge.fp)
    assert _step(e) == 5


@pytest.mark.parametrize("case", ["leaf_is_ca", "leaf_no_digital_signature",
                                  "intermediate_not_ca", "path_length", "wrong_order"])
def test_chain_constraints(forge, case):
    key, leaf = forge.leaf()
    bundle = [_der(forge.root), _der(forge.inter)]
    if case == "leaf_is_ca":
        key, leaf = forge.leaf(ca=True)
    elif case == "leaf_no_digital_signature":
        key, leaf = forge.leaf(digital_signature=False)
    elif case == "intermediate_not_ca":
        bad = _cert(forge.inter.subject, forge.int_key, forge.root.subject, forge.root_key,
                    ca=False)
        bundle = [_der(forge.root), _der(bad)]
    elif case == "path_length":
        k2 = ec.generate_private_key(ec.SECP384R1())
        inter0 = _cert(_name("forge intermediate"), forge.int_key, forge.root.subject,
                       forge.root_key, path_length=0)
        below = _cert(_name("second"), k2, inter0.subject, forge.int_key)
        key = ec.generate_private_key(ec.SECP384R1())
        leaf = _cert(_name("leaf"), key, below.subject, k2, ca=False)
        bundle = [_der(forge.root), _der(inter0), _der(below)]
    elif case == "wrong_order":
        bundle = [_der(forge.root), _der(leaf)]
    p = forge.payload(leaf, cabundle=bundle)
    with pytest.raises(AttestationError) as e:
        verify_attestation(forge.sign(cbor2.dumps(p), key), root_fingerprint=forge.fp)
    assert _step(e) == 5, e.value.reason


def test_oversize_document_refused_even_when_validly_signed(forge):
    key, leaf = forge.leaf()
    payload = cbor2.dumps(forge.payload(leaf))
    sig = sign_es384(key, ES384_PROTECTED, payload)

    def doc(pad: int) -> bytes:  # the unprotected header is not signed: padding keeps it valid
        return cbor2.dumps(cbor2.CBORTag(18, [ES384_PROTECTED, {"pad": b"x" * pad}, payload, sig]))
    pad = next(n for n in range(MAX_DOCUMENT_SIZE, 0, -1) if len(doc(n)) <= MAX_DOCUMENT_SIZE)
    small, big = doc(pad), doc(pad + 1)
    assert len(small) == MAX_DOCUMENT_SIZE == len(big) - 1
    verify_attestation(small, root_fingerprint=forge.fp)
    with pytest.raises(AttestationError) as e:
        verify_attestation(big, root_fingerprint=forge.fp)
    assert _step(e) == 1 and "more than" in e.value.reason


def test_leaf_with_p256_key_refused_at_certificates(forge):
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = _cert(_name("leaf"), key, forge.inter.subject, forge.int_key, ca=False)
    p = forge.payload(leaf)
    doc = cbor2.dumps(cbor2.CBORTag(18, [ES384_PROTECTED, {}, cbor2.dumps(p), b"\x00" * 96]))
    with pytest.raises(AttestationError) as e:
        verify_attestation(doc, root_fingerprint=forge.fp)
    assert _step(e) == 3


def _resign_with_serial(cert: x509.Certificate, serial: int, issuer_key) -> bytes:
    """DER of ``cert`` with its serial replaced and a valid signature (CertificateBuilder
    refuses non-positive serials, so the TBS is edited and signed by hand)."""
    asn1_x509 = pytest.importorskip("asn1crypto.x509")
    parsed = asn1_x509.Certificate.load(_der(cert))
    tbs = parsed["tbs_certificate"].copy()
    tbs["serial_number"] = serial
    sig = issuer_key.sign(tbs.dump(), ec.ECDSA(hashes.SHA384()))
    out = asn1_x509.Certificate({"tbs_certificate": tbs,
                                 "signature_algorithm": parsed["signature_algorithm"],
                                 "signature_value": sig})
    return out.dump()


def test_non_positive_serial_refused_at_certificates(forge):
    key, leaf = forge.leaf()
    same = _resign_with_serial(leaf, 12345, forge.int_key)
    doc = forge.sign(cbor2.dumps(forge.payload(leaf, certificate=same)), key)
    verify_attestation(doc, root_fingerprint=forge.fp)         # the hand-signing is sound
    for serial in (-5, 0):
        bad = _resign_with_serial(leaf, serial, forge.int_key)
        doc = forge.sign(cbor2.dumps(forge.payload(leaf, certificate=bad)), key)
        with pytest.raises(AttestationError) as e:
            verify_attestation(doc, root_fingerprint=forge.fp)
        assert _step(e) == 3 and "serial" in e.value.reason


def _map(*pairs) -> bytes:
    """Encode a CBOR map from pairs, duplicates and all."""
    assert len(pairs) < 24
    return bytes([0xA0 + len(pairs)]) + b"".join(cbor2.dumps(k) + cbor2.dumps(v) for k, v in pairs)


def test_duplicate_payload_key_refused_even_when_validly_signed(forge):
    key, leaf = forge.leaf()
    pairs = list(forge.payload(leaf, user_data=b"first").items())
    good = _map(*pairs)
    doc = verify_attestation(forge.sign(good, key), root_fingerprint=forge.fp)
    assert doc.user_data == b"first"
    dup = _map(*pairs, ("user_data", b"second"))
    assert len(cbor2.loads(dup)) == len(pairs)       # a lenient decoder would keep "second"
    with pytest.raises(AttestationError) as e:
        verify_attestation(forge.sign(dup, key), root_fingerprint=forge.fp)
    assert _step(e) == 2 and "duplicate" in e.value.reason


def test_duplicate_pcr_index_refused(forge):
    key, leaf = forge.leaf()
    p = forge.payload(leaf)
    pcrs = _map(*p["pcrs"].items(), (0, b"\x07" * 48))
    body = _map(*[(k, v) for k, v in p.items() if k != "pcrs"])
    payload = bytes([body[0] + 1]) + body[1:] + cbor2.dumps("pcrs") + pcrs
    with pytest.raises(AttestationError) as e:
        verify_attestation(forge.sign(payload, key), root_fingerprint=forge.fp)
    assert _step(e) == 2 and "duplicate" in e.value.reason


def test_duplicate_key_in_protected_header_refused(forge):
    key, leaf = forge.leaf()
    payload = cbor2.dumps(forge.payload(leaf))
    doc = forge.sign(payload, key, protected=b"\xa2\x01\x38\x22\x01\x38\x22")
    with pytest.raises(AttestationError) as e:
        parse_attestation(doc)
    assert _step(e) == 1


@pytest.mark.parametrize("overrides", [
    {"digest": "SHA256"},
    {"module_id": ""},
    {"module_id": b"bytes"},
    {"timestamp": 0},
    {"timestamp": True},
    {"timestamp": -5},
    {"pcrs": {}},
    {"pcrs": {0: b"\x01" * 47}},
    {"pcrs": {32: b"\x01" * 48}},
    {"pcrs": {"0": b"\x01" * 48}},
    {"pcrs": {True: b"\x01" * 48}},
    {"cabundle": []},
    {"cabundle": "nope"},
    {"certificate": b""},
    {"certificate": b"\x30" * 1025},
    {"user_data": b"\x00" * 1025},
    {"nonce": "text"},
    {"public_key": 5},
    {"extra": b"x"},
    {"nonce": _DROP, "digest": _DROP},
])
def test_payload_schema_violations_refused_at_payload(forge, overrides):
    with pytest.raises(AttestationError) as e:
        parse_attestation(forge.doc(**overrides))
    assert _step(e) == 2, e.value.reason


def test_optional_fields_may_be_absent_null_or_empty(forge):
    doc = parse_attestation(forge.doc(user_data=_DROP, nonce=None, public_key=b""))
    assert doc.user_data is None and doc.nonce is None and doc.public_key == b""
    assert parse_attestation(forge.doc(user_data=b"\x00" * 1024)).user_data == b"\x00" * 1024


@pytest.mark.parametrize("raw", [
    b"\x5b\x40\x00\x00\x00\x00\x00\x00\x00",              # bstr claiming 2**62 bytes
    b"\x9b\x40\x00\x00\x00\x00\x00\x00\x00\x01",          # array claiming 2**62 items
    b"\xbb\x00\x00\x00\x01\x00\x00\x00\x00\x01\x01",      # map claiming 2**32 pairs
    b"\x84\x40\xa0\x40\xfb\x3f\xf0\x00\x00\x00\x00\x00\x00",  # a float
    b"\x84\x40\xa1\x40\x01\x40\x40",                       # bytes as a map key is fine...
    b"\x84\x40\xa1\x80\x01\x40\x40",                       # ...an array is not
    b"\x84\x40\xa0\x40\xc1\x00",                           # a nested tag
    b"\x81" * 40 + b"\x00",                                # deep nesting
    b"\xd2",                                               # tag and nothing else
    b"",
])
def test_hostile_cbor_refused_at_parse(raw):
    with pytest.raises(AttestationError) as e:
        parse_attestation(raw)
    assert _step(e) == 1


@pytest.mark.parametrize("raw", [
    b"\x84\x5f\x41\x00\xff\xa0\x41\x00\x41\x00",          # indefinite-length bstr
    b"\x9f\x40\xa0\x40\x40\xff",                           # indefinite-length array
])
def test_indefinite_lengths_refused(raw):
    with pytest.raises(AttestationError) as e:
        parse_attestation(raw)
    assert _step(e) == 1 and "indefinite" in e.value.reason


def test_strict_decoder_basics():
    assert _cbor.decode(cbor2.dumps({"a": [1, -2, b"x", None, True, False]})) == \
        {"a": [1, -2, b"x", None, True, False]}
    # Non-shortest integer encodings occur in real documents (8-byte timestamps).
    assert _cbor.decode(b"\x1b\x00\x00\x00\x00\x00\x00\x00\x05") == 5
    with pytest.raises(_cbor.CBORDecodeError):
        _cbor.decode(b"\x62\xff\xfe")                      # invalid UTF-8


# --------------------------------------------------------------------------- CLI

def _run(argv: list[str]) -> tuple[int, str]:
    p = argparse.ArgumentParser()
    register(p.add_subparsers())
    args = p.parse_args(argv)
    out = io.StringIO()
    rc = args.func(args, out=out)
    return rc, out.getvalue()


def _lines(text: str) -> dict[int, str]:
    return {int(line[1]): line for line in text.splitlines() if line.startswith("[")}


def test_cli_attestation_ok_with_pcr():
    _vector(PROD)
    pcr0 = MANIFEST[PROD]["nonzero_pcrs"]["0"]
    rc, out = _run(["attestation", str(NITRO / PROD), "--pcr", f"0={pcr0}"])
    lines = _lines(out)
    assert rc == 0 and len(lines) == 8
    assert all(" ok" in line for line in lines.values())
    assert lines[1].startswith("[1] parse ...")
    assert f"pcr0: {pcr0}" in out and "module_id: " + MANIFEST[PROD]["module_id"] in out
    assert "(dev)" not in out and out.rstrip().endswith("attestation verified")


def test_cli_attestation_debug_refused_then_allowed():
    _vector(DEBUG)
    rc, out = _run(["attestation", str(NITRO / DEBUG)])
    lines = _lines(out)
    assert rc == 1 and "FAILED" in lines[7] and "not run" in lines[8]
    assert all(" ok" in lines[n] for n in range(1, 7))
    rc, out = _run(["attestation", str(NITRO / DEBUG), "--allow-debug"])
    assert rc == 0 and "skipped" in _lines(out)[8]


def test_cli_attestation_at_now_and_iso():
    _vector(PROD)
    rc, out = _run(["attestation", str(NITRO / PROD), "--at", "now"])
    assert rc == 1 and "FAILED" in _lines(out)[5] and "fields (NOT verified)" in out
    rc, _ = _run(["attestation", str(NITRO / PROD), "--at", "2022-10-13T09:30:00Z"])
    assert rc == 0
    rc, _ = _run(["attestation", str(NITRO / PROD), "--at", "2022-10-13T12:30:00+00:00"])
    assert rc == 1


def test_cli_attestation_json_and_root_fingerprint():
    _vector(MOCK)
    rc, out = _run(["attestation", str(NITRO / MOCK), "--json"])
    obj = json.loads(out)
    assert rc == 1 and obj["ok"] is False
    assert [c["status"] for c in obj["checks"]][:4] == ["ok", "ok", "ok", "FAILED"]
    fp = obj["document"]["root_fingerprint"]
    rc, out = _run(["attestation", str(NITRO / MOCK), "--root-fingerprint", fp.upper(),
                    "--allow-debug"])
    assert rc == 0 and all("(dev)" in line for line in _lines(out).values())


def test_cli_attestation_errors(tmp_path):
    with pytest.raises(CouldNotReadInputFile, match="missing.cose"):
        _run(["attestation", str(tmp_path / "missing.cose")])
    doc = tmp_path / "d.cose"
    doc.write_bytes(b"\x00")
    with pytest.raises(ConflictingParameters, match="PCR0 given twice"):
        _run(["attestation", str(doc), "--pcr", "0=" + "00" * 48, "--pcr", "PCR0=" + "11" * 48])
    rc, out = _run(["attestation", str(doc)])
    assert rc == 1 and "FAILED" in _lines(out)[1]
    for bad in (["--pcr", "0=abc"], ["--pcr", "40=" + "00" * 48], ["--at", "yesterday"],
                ["--root-fingerprint", "1234"]):
        with pytest.raises(SystemExit):
            _run(["attestation", str(doc), *bad])
    assert issubclass(CouldNotReadInputFile, SopsError)


# --------------------------------------------------------------------------- robustness

_cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**64, 2**64 - 1) | st.binary(max_size=64)
    | st.text(max_size=16) | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=6)
    | st.dictionaries(st.integers(0, 40) | st.text(max_size=12), inner, max_size=6),
    max_leaves=30)


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(value=_cbor_values, tag=st.sampled_from([None, 18, 98]))
def test_arbitrary_cbor_only_raises_attestation_error(value, tag):
    raw = cbor2.dumps(value if tag is None else cbor2.CBORTag(tag, value))
    with pytest.raises(AttestationError):
        verify_attestation(raw)


@settings(max_examples=300, deadline=None, database=None)
@given(data=st.data())
def test_corrupted_genuine_document_only_raises_attestation_error(data):
    if not MANIFEST:
        pytest.skip("Nitro vectors not found")
    raw = bytearray((NITRO / PROD).read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(raw)))
    try:
        doc = verify_attestation(bytes(raw[:cut]))
    except AttestationError:
        return
    # A change that survives all checks must have left the signed bytes alone.
    assert doc.payload in (NITRO / PROD).read_bytes()


@pytest.mark.parametrize("which", ["certificate", "cabundle1"])
def test_every_corrupted_certificate_byte_is_an_attestation_error(which):
    # Regression: cryptography parses certificate fields lazily, and a bad subject,
    # version, algorithm, duplicate extension or negative serial used to escape as
    # ValueError/InvalidVersion/UnsupportedAlgorithm/DuplicateExtension instead.
    raw = _vector(PROD)
    doc = parse_attestation(raw)
    der = doc.certificate if which == "certificate" else doc.cabundle[1]
    start = raw.index(der)
    steps = set()
    for i in range(len(der)):
        for value in (der[i] ^ 0x01, 0x00):
            tampered = raw[:start + i] + bytes([value]) + raw[start + i + 1:]
            if tampered == raw:
                continue
            with pytest.raises(AttestationError) as e:
                verify_attestation(tampered)
            steps.add(e.value.step)
    assert steps <= {2, 3, 4, 5, 6} and 3 in steps and 5 in steps
