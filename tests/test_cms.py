"""CiphertextForRecipient (CMS EnvelopedData): the real KMS sample, round trips, refusals."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from asn1crypto import cms as asn1_cms
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sops_enclave.cms import (
    MAX_INPUT_SIZE, MAX_PLAINTEXT_SIZE, CMSError, make_ciphertext_for_recipient,
    open_ciphertext_for_recipient, recipient_key_identifier)
from sops_enclave.errors import SopsError

CMS_VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "cms"
SAMPLE = "enclaver_ciphertext_for_recipient_sample.ber"
SAMPLE_KEY = "enclaver_TEST_ONLY_rsa2048_private_key.pk8.der"
#: spec/nitro-enclaves.md 3.2: the sample decrypts to this.
SAMPLE_PLAINTEXT = b"Hello, World"

OID_AES256_CBC = bytes.fromhex("060960864801650304012a")
OID_AES128_CBC = bytes.fromhex("0609608648016503040102")
OID_RSAES_OAEP = bytes.fromhex("06092a864886f70d010107")
OID_RSA_PKCS1 = bytes.fromhex("06092a864886f70d010101")
OID_SHA256 = bytes.fromhex("0609608648016503040201")
OID_SHA384 = bytes.fromhex("0609608648016503040202")
OID_ENVELOPED = bytes.fromhex("06092a864886f70d010703")
OID_SIGNED = bytes.fromhex("06092a864886f70d010702")


@pytest.fixture(scope="module")
def sample() -> tuple[bytes, rsa.RSAPrivateKey]:
    if not (CMS_VECTORS / SAMPLE).is_file():
        pytest.skip(f"CMS vectors not found at {CMS_VECTORS} (a user checkout has no shared/)")
    key = serialization.load_der_private_key((CMS_VECTORS / SAMPLE_KEY).read_bytes(), None)
    return (CMS_VECTORS / SAMPLE).read_bytes(), key


@pytest.fixture(scope="module")
def key2048() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def key3072() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 3072)


def _replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1, old.hex()
    return data.replace(old, new)


def _reason(excinfo: pytest.ExceptionInfo[CMSError]) -> str:
    return excinfo.value.reason


# --- the real sample -----------------------------------------------------------------

def test_real_sample_opens(sample):
    data, key = sample
    assert data[:2] == b"\x30\x80"                 # BER, indefinite length, as KMS sends it
    assert open_ciphertext_for_recipient(data, key) == SAMPLE_PLAINTEXT


def test_real_sample_rid_is_sha256_of_spki(sample):
    data, key = sample
    ski = recipient_key_identifier(key.public_key())
    assert len(ski) == 32 and data.count(b"\x80\x20" + ski) == 1


def test_real_sample_with_another_key(sample, key2048):
    data, _ = sample
    with pytest.raises(CMSError) as e:
        open_ciphertext_for_recipient(data, key2048)
    assert "subjectKeyIdentifier does not match" in _reason(e)


def test_cms_error_is_a_sops_error():
    assert issubclass(CMSError, SopsError)


# Sample layout: IV at 415..430, the single 16-byte content block at 435..450 (it holds
# "Hello, World" and four 0x04 padding bytes).
@pytest.mark.parametrize("pos", [427, 430, 436, 443, 450])
def test_tampered_iv_or_content(sample, pos):
    data, key = sample
    assert data[413:415] == b"\x04\x10" and data[433:435] == b"\x04\x10"
    tampered = bytearray(data)
    tampered[pos] ^= 0x01
    with pytest.raises(CMSError) as e:
        open_ciphertext_for_recipient(bytes(tampered), key)
    assert "padding" in _reason(e)


def test_tampered_encrypted_key(sample):
    data, key = sample
    tampered = bytearray(data)
    tampered[200] ^= 0x80                            # inside the 256-byte encryptedKey
    with pytest.raises(CMSError) as e:
        open_ciphertext_for_recipient(bytes(tampered), key)
    assert "RSA-OAEP" in _reason(e)


@pytest.mark.parametrize("old,new,words", [
    (OID_AES256_CBC, OID_AES128_CBC, "content encryption"),
    (OID_RSAES_OAEP, OID_RSA_PKCS1, "key encryption algorithm"),
    (OID_ENVELOPED, OID_SIGNED, "content type"),
])
def test_wrong_algorithm_or_type(sample, old, new, words):
    data, key = sample
    with pytest.raises(CMSError) as e:
        open_ciphertext_for_recipient(_replace_once(data, old, new), key)
    assert words in _reason(e)


def test_wrong_oaep_hash(sample):
    data, key = sample
    assert data.count(OID_SHA256) == 2            # OAEP hash and MGF1 hash
    first = data.index(OID_SHA256)
    hash_changed = data[:first] + OID_SHA384 + data[first + len(OID_SHA384):]
    with pytest.raises(CMSError) as e:
        open_ciphertext_for_recipient(hash_changed, key)
    assert "hash is not SHA-256" in _reason(e)
    second = data.rindex(OID_SHA256)
    mgf_changed = data[:second] + OID_SHA384 + data[second + len(OID_SHA384):]
    with pytest.raises(CMSError) as e:
        open_ciphertext_for_recipient(mgf_changed, key)
    assert "MGF1" in _reason(e)


def test_wrong_versions(sample):
    data, key = sample
    # EnvelopedData version at offset 17, KeyTransRecipientInfo version at offset 28.
    for offset in (19, 30):
        assert data[offset - 2:offset + 1] == b"\x02\x01\x02"
        bad = data[:offset] + b"\x00" + data[offset + 1:]
        with pytest.raises(CMSError) as e:
            open_ciphertext_for_recipient(bad, key)
        assert "version" in _reason(e)


def test_two_recipients_refused(sample):
    data, key = sample
    # The recipientInfos SET is definite (31 82 01 6b) at offset 20; its parents are not.
    assert data[20:24] == bytes.fromhex("3182016b")
    ktri = data[24:24 + 0x16b]
    doubled = data[:20] + bytes.fromhex("318202d6") + ktri + ktri + data[24 + 0x16b:]
    with pytest.raises(CMSError) as e:
        open_ciphertext_for_recipient(doubled, key)
    assert "2 recipients" in _reason(e)


def test_every_truncation_refused(sample):
    data, key = sample
    for n in range(len(data)):
        with pytest.raises(CMSError):
            open_ciphertext_for_recipient(data[:n], key)


def test_trailing_bytes_refused(sample):
    data, key = sample
    with pytest.raises(CMSError) as e:
        open_ciphertext_for_recipient(data + b"\x00", key)
    assert "after the CMS structure" in _reason(e)


def test_oversize_refused(sample):
    data, key = sample
    with pytest.raises(CMSError) as e:
        open_ciphertext_for_recipient(data + bytes(MAX_INPUT_SIZE), key)
    assert "limit" in _reason(e)


@pytest.mark.parametrize("junk", [b"", b"\x30", b"\x30\x80" * 5000, b"\x04\x80\x00\x00",
                                  bytes(64), b"\x30\x84\xff\xff\xff\xff"])
def test_junk_refused(sample, junk):
    _, key = sample
    with pytest.raises(CMSError):
        open_ciphertext_for_recipient(junk, key)


def test_not_bytes_refused(sample):
    _, key = sample
    with pytest.raises(CMSError):
        open_ciphertext_for_recipient("not bytes", key)  # type: ignore[arg-type]


def test_der_form_also_accepted(sample):
    data, key = sample
    der = asn1_cms.ContentInfo.load(data).dump(force=True)
    assert der[:2] != b"\x30\x80" and len(der) < len(data)
    assert open_ciphertext_for_recipient(der, key) == SAMPLE_PLAINTEXT


def test_stray_bytes_inside_explicit_tag_refused(sample):
    data, key = sample
    # Shorten the OAEP hash AlgorithmIdentifier (30 0d -> 30 0b) so its NULL sits loose
    # inside the [0] wrapper: the framing stays valid, the encoding is no longer KMS's.
    bad = _replace_once(data, bytes.fromhex("a00f300d") + OID_SHA256,
                        bytes.fromhex("a00f300b") + OID_SHA256)
    with pytest.raises(CMSError):
        open_ciphertext_for_recipient(bad, key)


# --- make / open round trips ------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 32, 1023, 1024, 1025, 3000, MAX_PLAINTEXT_SIZE])
def test_round_trip(key2048, size):
    plaintext = bytes((i * 7 + 3) % 256 for i in range(size))
    data = make_ciphertext_for_recipient(plaintext, key2048.public_key())
    assert data[:2] == b"\x30\x80" and data.endswith(b"\x00\x00" * 5)
    assert open_ciphertext_for_recipient(data, key2048) == plaintext


def test_round_trip_from_spki_and_3072(key3072):
    spki = key3072.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    data = make_ciphertext_for_recipient(b"k" * 32, spki)
    assert open_ciphertext_for_recipient(data, key3072) == b"k" * 32


def test_fresh_key_and_iv_each_time(key2048):
    a = make_ciphertext_for_recipient(b"same", key2048.public_key())
    b = make_ciphertext_for_recipient(b"same", key2048.public_key())
    assert a != b


def test_made_structure_matches_the_sample_layout(sample, key2048):
    data, key = sample
    made = make_ciphertext_for_recipient(SAMPLE_PLAINTEXT, key.public_key())
    # Same length, and identical everywhere except the random key/IV/ciphertext bytes.
    assert len(made) == len(data)
    differing = [i for i in range(len(data)) if made[i] != data[i]]
    assert all(131 <= i < 387 or 415 <= i < 431 or 435 <= i < 451 for i in differing)


def test_wrong_key_round_trip(key2048, key3072):
    data = make_ciphertext_for_recipient(b"secret", key2048.public_key())
    with pytest.raises(CMSError):
        open_ciphertext_for_recipient(data, key3072)


def test_matching_ski_but_wrong_private_key(key2048):
    other = rsa.generate_private_key(65537, 2048)
    data = make_ciphertext_for_recipient(b"secret", key2048.public_key())
    forged = _replace_once(data, recipient_key_identifier(key2048.public_key()),
                           recipient_key_identifier(other.public_key()))
    with pytest.raises(CMSError) as e:
        open_ciphertext_for_recipient(forged, other)
    assert "RSA-OAEP" in _reason(e)


def test_make_refuses_bad_inputs(key2048):
    with pytest.raises(ValueError):
        make_ciphertext_for_recipient(bytes(MAX_PLAINTEXT_SIZE + 1), key2048.public_key())
    with pytest.raises(ValueError):
        make_ciphertext_for_recipient(b"x", ec.generate_private_key(ec.SECP256R1()).public_key())
    with pytest.raises(ValueError):
        make_ciphertext_for_recipient(b"x", b"not a key")
    small = rsa.generate_private_key(65537, 1024)
    with pytest.raises(ValueError):
        make_ciphertext_for_recipient(b"x", small.public_key())


def test_open_refuses_small_key(sample):
    data, _ = sample
    with pytest.raises(CMSError):
        open_ciphertext_for_recipient(data, rsa.generate_private_key(65537, 1024))


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl is not installed")
def test_openssl_opens_what_we_make(tmp_path, key2048):
    """An independent CMS implementation reads our BER output."""
    (tmp_path / "in.ber").write_bytes(make_ciphertext_for_recipient(b"cross-check",
                                                                    key2048.public_key()))
    (tmp_path / "key.pem").write_bytes(key2048.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    out = subprocess.run(["openssl", "cms", "-decrypt", "-inform", "DER", "-in",
                          str(tmp_path / "in.ber"), "-inkey", str(tmp_path / "key.pem")],
                         capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"cross-check"


# --- fuzz ---------------------------------------------------------------------------------

_FUZZ = settings(max_examples=200, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


def _open_or_cms_error(data: bytes, key: rsa.RSAPrivateKey) -> bytes | None:
    try:
        return open_ciphertext_for_recipient(data, key)
    except CMSError:
        return None


@_FUZZ
@given(st.binary(max_size=800))
def test_fuzz_random_bytes(sample, data):
    _open_or_cms_error(data, sample[1])


@_FUZZ
@given(st.lists(st.tuples(st.integers(0, 460), st.integers(0, 3),
                          st.binary(min_size=1, max_size=8)), min_size=1, max_size=6))
def test_fuzz_mutated_sample(sample, edits):
    data, key = sample
    buf = bytearray(data)
    for pos, kind, chunk in edits:
        pos = pos % (len(buf) or 1)
        if kind == 0:
            buf[pos:pos + len(chunk)] = chunk          # overwrite
        elif kind == 1:
            buf[pos:pos] = chunk                       # insert
        elif kind == 2:
            del buf[pos:pos + len(chunk)]              # delete
        else:
            buf[pos:pos] = buf[pos:pos + 2 * len(chunk)]   # duplicate a slice
    result = _open_or_cms_error(bytes(buf), key)
    # Only edits inside the IV or the content can still open (CBC has no integrity);
    # whatever opens is short, as the sample's plaintext is.
    assert result is None or len(result) <= 32


def test_accepted_algorithm_encodings_do_not_let_another_one_through(key2048, monkeypatch):
    """The check of the key encryption algorithm is skipped only for the exact bytes that
    passed it before: after a good answer, a changed OAEP hash or encoding is still refused,
    and the set of remembered encodings stays bounded."""
    from sops_enclave import cms

    good = make_ciphertext_for_recipient(b"k" * 32, key2048.public_key())
    assert open_ciphertext_for_recipient(good, key2048) == b"k" * 32
    assert len(cms._OAEP_ACCEPTED) >= 1
    first = good.index(OID_SHA256)
    sha384 = good[:first] + OID_SHA384 + good[first + len(OID_SHA384):]
    with pytest.raises(CMSError, match="hash is not SHA-256"):
        open_ciphertext_for_recipient(sha384, key2048)
    monkeypatch.setattr(cms, "_OAEP_ACCEPTED", set())
    monkeypatch.setattr(cms, "_OAEP_ACCEPTED_MAX", 0)
    assert open_ciphertext_for_recipient(good, key2048) == b"k" * 32
    assert cms._OAEP_ACCEPTED == set()
