"""EIF parsing and PCR computation (sops_enclave.image.eif).

EIFs are built section by section here, by a small builder that follows the published
format (aws-nitro-enclaves-image-format README: 548-byte big-endian header, 12-byte
section headers, CRC-32 over everything but the CRC field) and does not use eif.py. The
expected PCRs are computed here from the published formula
``PCRx = SHA384(48 zero bytes || SHA384(content_x))``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import zlib
from datetime import datetime, timedelta, timezone

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sops_enclave.errors import SopsError
from sops_enclave.image import cli as image_cli
from sops_enclave.image.eif import EIFError, describe_eif, parse_eif

KERNEL, CMDLINE, RAMDISK, SIGNATURE, METADATA = 1, 2, 3, 4, 5
HEADER_FMT = ">4sHHQQHH32Q32QII"          # magic ... section_sizes[32], unused, crc32
assert struct.calcsize(HEADER_FMT) == 548


# --- an independent EIF builder ---------------------------------------------------------

def eif_crc(data: bytes) -> int:
    """CRC-32 (ISO-HDLC, as zlib) of the whole file except bytes 544..547 (the CRC field)."""
    return zlib.crc32(data[:544] + data[548:]) & 0xFFFFFFFF


def with_crc(data: bytes, crc: int | None = None) -> bytes:
    crc = eif_crc(data) if crc is None else crc
    return data[:544] + struct.pack(">I", crc) + data[548:]


def build_eif(sections: list[tuple[int, bytes]], *, version: int = 4, flags: int = 0,
              default_mem: int = 1 << 30, default_cpus: int = 2, count: int | None = None,
              magic: bytes = b".eif", unused: int = 0, section_flags: int = 0) -> bytes:
    """Header, then for each (type, data): a 12-byte section header and the data."""
    offsets, sizes, body = [], [], b""
    pos = 548
    for stype, data in sections:
        offsets.append(pos)
        sizes.append(len(data))
        body += struct.pack(">HHQ", stype, section_flags, len(data)) + data
        pos += 12 + len(data)
    table_o = (offsets + [0] * 32)[:32]
    table_s = (sizes + [0] * 32)[:32]
    header = struct.pack(HEADER_FMT, magic, version, flags, default_mem, default_cpus, 0,
                         len(sections) if count is None else count, *table_o, *table_s,
                         unused, 0)
    return with_crc(header + body)


def set_header(data: bytes, **fields: int) -> bytes:
    """Rewrite header fields (names below), then recompute the CRC."""
    names = ["magic", "version", "flags", "mem", "cpus", "reserved", "count"]
    values = list(struct.unpack_from(HEADER_FMT, data))
    for k, v in fields.items():
        if k.startswith("offset"):
            values[7 + int(k[6:])] = v
        elif k.startswith("size"):
            values[39 + int(k[4:])] = v
        else:
            values[names.index(k)] = v
    return with_crc(struct.pack(HEADER_FMT, *values) + data[548:])


def pcr(content: bytes) -> bytes:
    return hashlib.sha384(b"\x00" * 48 + hashlib.sha384(content).digest()).digest()


KERNEL_DATA = b"\x7fKERNEL bzImage " + bytes(range(256)) * 3
CMDLINE_DATA = (b"reboot=k panic=30 pci=off nomodules console=ttyS0 i8042.noaux i8042.nomux "
                b"i8042.nopnp i8042.dumbkbd random.trust_cpu=on")
RAMDISK_BOOT = b"070701" + b"init + nsm.ko cpio" * 20
RAMDISK_APP = b"070701" + b"rootfs/ cmd env" * 33
METADATA_DOC = {"ImageName": "sops-enclave", "ImageVersion": "1.0",
                "BuildMetadata": {"BuildTime": "1970-01-01T00:00:00Z", "BuildTool": "test",
                                  "BuildToolVersion": "0", "OperatingSystem": "Linux",
                                  "KernelVersion": "6"},
                "DockerInfo": {}}
METADATA_DATA = json.dumps(METADATA_DOC).encode()


def standard_sections(ramdisks: tuple[bytes, ...] = (RAMDISK_BOOT, RAMDISK_APP),
                      metadata: bytes | None = METADATA_DATA) -> list[tuple[int, bytes]]:
    """In eif_build's order: kernel, cmdline, metadata, ramdisks."""
    out = [(KERNEL, KERNEL_DATA), (CMDLINE, CMDLINE_DATA)]
    if metadata is not None:
        out.append((METADATA, metadata))
    out += [(RAMDISK, r) for r in ramdisks]
    return out


def expected_pcrs(kernel: bytes, cmdline: bytes, ramdisks: tuple[bytes, ...]
                  ) -> tuple[bytes, bytes, bytes]:
    return (pcr(kernel + cmdline + b"".join(ramdisks)),
            pcr(kernel + cmdline + b"".join(ramdisks[:1])),
            pcr(b"".join(ramdisks[1:])))


# --- signing (a self-signed certificate and the CBOR signature section) -----------------

_ALGS = {-7: (ec.SECP256R1, hashes.SHA256, 32), -35: (ec.SECP384R1, hashes.SHA384, 48),
         -36: (ec.SECP521R1, hashes.SHA512, 66)}


def make_signer(alg: int = -35) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    curve = _ALGS[alg][0]
    key = ec.generate_private_key(curve())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eif signer (test)")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
            .sign(key, _ALGS[alg][1]()))
    return key, cert


SIGNER = make_signer()


def signature_section(pcr0: bytes, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate,
                      *, alg: int = -35, arrays: bool = True, pem: bool = True,
                      register_index: int = 0) -> bytes:
    """CBOR ``[{"signing_certificate": cert, "signature": COSE_Sign1}]`` (README layout:
    byte strings serialised as arrays of integers when ``arrays``)."""
    _, hash_cls, size = _ALGS[alg]

    def blob(b: bytes) -> object:
        return list(b) if arrays else b

    protected = cbor2.dumps({1: alg})
    payload = cbor2.dumps({"register_index": register_index, "register_value": list(pcr0)})
    tbs = cbor2.dumps(["Signature1", protected, b"", payload])
    r, s = decode_dss_signature(key.sign(tbs, ec.ECDSA(hash_cls())))
    cose = cbor2.dumps([protected, {}, payload,
                        r.to_bytes(size, "big") + s.to_bytes(size, "big")])
    cert_bytes = cert.public_bytes(Encoding.PEM if pem else Encoding.DER)
    return cbor2.dumps([{"signing_certificate": blob(cert_bytes), "signature": blob(cose)}])


def signed_eif(**kw: object) -> tuple[bytes, bytes]:
    """A signed EIF and the DER of its signing certificate."""
    key, cert = kw.pop("signer", SIGNER)  # type: ignore[misc]
    p0, _, _ = expected_pcrs(KERNEL_DATA, CMDLINE_DATA, (RAMDISK_BOOT, RAMDISK_APP))
    sig = signature_section(kw.pop("signed_pcr0", p0), key, cert, **kw)  # type: ignore[arg-type]
    return (build_eif(standard_sections() + [(SIGNATURE, sig)]),
            cert.public_bytes(Encoding.DER))


# --- measurements -----------------------------------------------------------------------

def test_unsigned_eif_pcrs_match_the_published_formula():
    data = build_eif(standard_sections())
    m = parse_eif(data)
    p0, p1, p2 = expected_pcrs(KERNEL_DATA, CMDLINE_DATA, (RAMDISK_BOOT, RAMDISK_APP))
    assert (m.pcr0, m.pcr1, m.pcr2) == (p0, p1, p2)
    assert m.pcr8 is None and m.signature_valid is None
    # Extend of a zero register, not the plain hash of the content.
    assert m.pcr1 != hashlib.sha384(KERNEL_DATA + CMDLINE_DATA + RAMDISK_BOOT).digest()
    assert m.metadata == METADATA_DOC
    assert [s.type for s in m.sections] == [KERNEL, CMDLINE, METADATA, RAMDISK, RAMDISK]
    assert m.sections[0].offset == 548 and m.sections[0].size == len(KERNEL_DATA)
    assert m.header.version == 4 and m.header.architecture == "x86_64"
    assert m.header.default_mem == 1 << 30 and m.header.default_cpus == 2
    assert m.pcrs == {0: p0, 1: p1, 2: p2}


def test_headers_metadata_and_section_flags_are_not_measured():
    a = parse_eif(build_eif(standard_sections()))
    b = parse_eif(build_eif(standard_sections(metadata=b'{"ImageName": "other"}'),
                            default_mem=4 << 30, default_cpus=8, unused=7, section_flags=3))
    assert (a.pcr0, a.pcr1, a.pcr2) == (b.pcr0, b.pcr1, b.pcr2)


def test_section_file_order_is_the_measured_order():
    """Ramdisk order matters, and cmdline-before-kernel is measured in file order."""
    swapped = parse_eif(build_eif(standard_sections((RAMDISK_APP, RAMDISK_BOOT))))
    assert swapped.pcr1 == pcr(KERNEL_DATA + CMDLINE_DATA + RAMDISK_APP)
    assert swapped.pcr2 == pcr(RAMDISK_BOOT)
    first = parse_eif(build_eif([(CMDLINE, CMDLINE_DATA), (KERNEL, KERNEL_DATA),
                                 (METADATA, METADATA_DATA), (RAMDISK, RAMDISK_BOOT)]))
    assert first.pcr0 == pcr(CMDLINE_DATA + KERNEL_DATA + RAMDISK_BOOT)
    assert first.pcr2 == pcr(b"")


def test_three_ramdisks_and_version_3_without_metadata():
    rds = (RAMDISK_BOOT, RAMDISK_APP, b"third ramdisk")
    m = parse_eif(build_eif(standard_sections(rds, metadata=None), version=3, flags=1))
    assert (m.pcr0, m.pcr1, m.pcr2) == expected_pcrs(KERNEL_DATA, CMDLINE_DATA, rds)
    assert m.metadata is None and m.header.architecture == "aarch64"


@pytest.mark.parametrize("arrays,pem", [(True, True), (False, True), (True, False),
                                        (False, False)])
def test_signed_eif_pcr8_is_the_certificate_der(arrays, pem):
    data, der = signed_eif(arrays=arrays, pem=pem)
    m = parse_eif(data)
    assert m.pcr8 == pcr(der)
    assert m.signing_certificate == der
    assert m.signature_valid is True
    # Signing does not change PCR0/1/2.
    assert (m.pcr0, m.pcr1, m.pcr2) == expected_pcrs(KERNEL_DATA, CMDLINE_DATA,
                                                     (RAMDISK_BOOT, RAMDISK_APP))
    d = describe_eif(m)
    assert d["IsSigned"] is True and d["SignatureCheck"] is True
    assert d["Measurements"]["PCR8"] == pcr(der).hex()


@pytest.mark.parametrize("alg", [-7, -36])
def test_signed_with_es256_and_es512(alg):
    data, der = signed_eif(signer=make_signer(alg), alg=alg)
    m = parse_eif(data)
    assert m.pcr8 == pcr(der) and m.signature_valid is True


def test_signature_over_another_pcr0_or_index_is_reported_invalid():
    data, der = signed_eif(signed_pcr0=b"\x01" * 48)
    m = parse_eif(data)
    assert m.pcr8 == pcr(der) and m.signature_valid is False
    assert parse_eif(signed_eif(register_index=1)[0]).signature_valid is False
    other_key, _ = make_signer()
    forged, _ = signed_eif(signer=(other_key, SIGNER[1]))
    assert parse_eif(forged).signature_valid is False


def test_describe_eif_looks_like_nitro_cli():
    m = parse_eif(build_eif(standard_sections()))
    d = describe_eif(m)
    assert d["Measurements"] == {"HashAlgorithm": "Sha384 { ... }", "PCR0": m.pcr0.hex(),
                                 "PCR1": m.pcr1.hex(), "PCR2": m.pcr2.hex()}
    assert d["EifVersion"] == 4 and d["IsSigned"] is False and d["CheckCRC"] is True
    assert d["ImageName"] == "sops-enclave" and d["ImageVersion"] == "1.0"
    assert [s["Type"] for s in d["Sections"]] == ["Kernel", "Cmdline", "Metadata", "Ramdisk",
                                                  "Ramdisk"]
    json.dumps(d)


def test_memoryview_and_bytearray_inputs():
    data = build_eif(standard_sections())
    assert parse_eif(bytearray(data)).pcr0 == parse_eif(memoryview(data)).pcr0


# --- malformed input --------------------------------------------------------------------

GOOD = build_eif(standard_sections())
SIGNED, _ = signed_eif()


def boundaries(data: bytes) -> list[int]:
    cuts = {0, 1, 4, 8, 100, 543, 544, 547, 548}
    m = parse_eif(data)
    for s in m.sections:
        cuts.update({s.offset, s.offset + 1, s.offset + 11, s.offset + 12, s.end - 1})
    return sorted(c for c in cuts if c < len(data))


@pytest.mark.parametrize("data", [GOOD, SIGNED], ids=["unsigned", "signed"])
def test_truncated_at_every_boundary(data):
    for cut in boundaries(data):
        with pytest.raises(EIFError):
            parse_eif(data[:cut])


def test_truncated_messages():
    with pytest.raises(EIFError, match="truncated"):
        parse_eif(GOOD[:547])
    with pytest.raises(EIFError, match="truncated"):
        parse_eif(GOOD[:-1])
    with pytest.raises(EIFError, match="truncated"):
        parse_eif(b"")


def test_trailing_bytes():
    with pytest.raises(EIFError, match="trailing"):
        parse_eif(with_crc(GOOD + b"\0"))


def test_bad_magic():
    with pytest.raises(EIFError, match="magic"):
        parse_eif(set_header(GOOD, magic=b"EIF."))
    with pytest.raises(EIFError, match="magic"):
        parse_eif(b"\x7fELF" + GOOD[4:])


@pytest.mark.parametrize("version", [0, 1, 5, 0xFFFF])
def test_unsupported_version(version):
    with pytest.raises(EIFError, match="version"):
        parse_eif(set_header(GOOD, version=version))


@pytest.mark.parametrize("at", [544, 545, 546, 547])
def test_flipped_crc_byte(at):
    bad = bytearray(GOOD)
    bad[at] ^= 0x01
    with pytest.raises(EIFError, match="CRC32 mismatch"):
        parse_eif(bytes(bad))


@pytest.mark.parametrize("where", ["kernel", "ramdisk", "metadata", "unused", "reserved",
                                   "section flags", "signature", "cpus"])
def test_crc_covers_header_and_every_section(where):
    data = SIGNED
    m = parse_eif(data)
    by_type = {s.type: s for s in m.sections}
    at = {"kernel": by_type[KERNEL].data_offset + 5,
          "ramdisk": by_type[RAMDISK].end - 1,
          "metadata": by_type[METADATA].data_offset + 2,
          "signature": by_type[SIGNATURE].end - 3,
          "unused": 0x21C + 3, "reserved": 0x18 + 1, "cpus": 0x10 + 7,
          "section flags": by_type[RAMDISK].offset + 3}[where]
    bad = bytearray(data)
    bad[at] ^= 0x20
    with pytest.raises(EIFError, match="CRC32 mismatch"):
        parse_eif(bytes(bad))


def test_zero_sections():
    with pytest.raises(EIFError, match="zero sections"):
        parse_eif(build_eif([]))
    with pytest.raises(EIFError, match="zero sections"):
        parse_eif(set_header(GOOD, count=0))


def test_one_section():
    with pytest.raises(EIFError, match="at least 2"):
        parse_eif(build_eif([(KERNEL, KERNEL_DATA)]))


@pytest.mark.parametrize("count", [33, 64, 0xFFFF])
def test_too_many_sections(count):
    with pytest.raises(EIFError, match="too many sections"):
        parse_eif(set_header(GOOD, count=count))


def test_more_sections_in_the_file_than_declared():
    data = build_eif(standard_sections() + [(RAMDISK, b"x")])
    with pytest.raises(EIFError, match="trailing"):
        parse_eif(set_header(data, count=5, offset5=0, size5=0))


def test_nonzero_unused_table_entry():
    with pytest.raises(EIFError, match="table entry 5"):
        parse_eif(set_header(GOOD, offset5=1))
    with pytest.raises(EIFError, match="table entry 31"):
        parse_eif(set_header(GOOD, size31=1))


@pytest.mark.parametrize("stype", [0, 6, 7, 0x100, 0xFFFF])
def test_unknown_section_type(stype):
    data = build_eif(standard_sections()[:-1] + [(stype, b"payload")])
    with pytest.raises(EIFError, match="section type"):
        parse_eif(data)


def test_section_out_of_range():
    last = 4
    with pytest.raises(EIFError, match="out of range"):
        parse_eif(set_header(GOOD, **{f"offset{last}": len(GOOD) + 100}))
    with pytest.raises(EIFError, match="out of range"):
        parse_eif(set_header(GOOD, **{f"offset{last}": 2**64 - 1}))
    # Size in the table and in the section header both inflated: data runs past the end.
    m = parse_eif(GOOD)
    s = m.sections[last]
    bad = bytearray(set_header(GOOD, **{f"size{last}": s.size + 10}))
    struct.pack_into(">Q", bad, s.offset + 4, s.size + 10)
    with pytest.raises(EIFError, match="out of range"):
        parse_eif(with_crc(bytes(bad)))


def test_section_size_disagrees_with_table():
    m = parse_eif(GOOD)
    with pytest.raises(EIFError, match="section table says"):
        parse_eif(set_header(GOOD, size1=m.sections[1].size - 1))


def test_overlapping_and_gapped_sections():
    m = parse_eif(GOOD)
    with pytest.raises(EIFError, match="overlaps section 0"):
        parse_eif(set_header(GOOD, offset1=m.sections[1].offset - 4))
    with pytest.raises(EIFError, match="overlaps the EIF header"):
        parse_eif(set_header(GOOD, offset0=100))
    with pytest.raises(EIFError, match="gap"):
        parse_eif(set_header(GOOD, offset1=m.sections[1].offset + 1))


@pytest.mark.parametrize("sections,match", [
    ([(KERNEL, KERNEL_DATA), (KERNEL, KERNEL_DATA), (CMDLINE, b"x"), (METADATA, b"{}")],
     "exactly one kernel"),
    ([(KERNEL, KERNEL_DATA), (METADATA, b"{}"), (RAMDISK, b"r")], "exactly one cmdline"),
    ([(CMDLINE, b"c"), (METADATA, b"{}")], "exactly one kernel"),
    ([(RAMDISK, b"r"), (KERNEL, KERNEL_DATA), (CMDLINE, b"c"), (METADATA, b"{}")],
     "before the kernel"),
    ([(KERNEL, KERNEL_DATA), (CMDLINE, b"c"), (RAMDISK, b"r")], "needs a metadata"),
    ([(KERNEL, KERNEL_DATA), (CMDLINE, b"c"), (METADATA, b"{}"), (METADATA, b"{}")],
     "at most one metadata"),
    ([(KERNEL, KERNEL_DATA), (CMDLINE, b"c"), (METADATA, b"[1]")], "not a JSON object"),
    ([(KERNEL, KERNEL_DATA), (CMDLINE, b"c"), (METADATA, b"\xff")], "not valid UTF-8 JSON"),
    ([(KERNEL, KERNEL_DATA), (CMDLINE, b"c"), (METADATA, b"{}"), (SIGNATURE, b"\x80" * 40000)],
     "at most 32768"),
])
def test_bad_section_mix(sections, match):
    with pytest.raises(EIFError, match=match):
        parse_eif(build_eif(sections))


def test_metadata_before_version_4():
    with pytest.raises(EIFError, match="from version 4"):
        parse_eif(build_eif(standard_sections(), version=3))


@pytest.mark.parametrize("payload,match", [
    (b"\xff", "not valid CBOR"),
    (cbor2.dumps([]), "non-empty CBOR array"),
    (cbor2.dumps({"a": 1}), "non-empty CBOR array"),
    (cbor2.dumps([{"signature": b"x"}]), "signing_certificate and signature"),
    (cbor2.dumps([{"signing_certificate": [300], "signature": b"x"}]), "array of bytes"),
    (cbor2.dumps([{"signing_certificate": b"not a cert", "signature": b"x"}]),
     "not a PEM or DER"),
    (cbor2.dumps([{"signing_certificate": SIGNER[1].public_bytes(Encoding.DER),
                   "signature": cbor2.dumps([1, 2])}]), "COSE_Sign1"),
    (cbor2.dumps([{"signing_certificate": SIGNER[1].public_bytes(Encoding.DER),
                   "signature": cbor2.dumps([cbor2.dumps({1: -8}), {}, b"", b""])}]),
     "ES256, ES384 or ES512"),
])
def test_bad_signature_section(payload, match):
    with pytest.raises(EIFError, match=match):
        parse_eif(build_eif(standard_sections() + [(SIGNATURE, payload)]))


def test_eif_error_is_a_sops_error():
    assert issubclass(EIFError, SopsError)


# --- properties -------------------------------------------------------------------------

blobs = st.binary(max_size=96)


@st.composite
def images(draw):
    kernel, cmdline = draw(blobs), draw(blobs)
    ramdisks = tuple(draw(st.lists(blobs, min_size=0, max_size=6)))
    version = draw(st.sampled_from([2, 3, 4]))
    sections = [(KERNEL, kernel), (CMDLINE, cmdline)]
    if version == 4:
        sections.append((METADATA, json.dumps({"n": draw(st.integers(0, 9))}).encode()))
    sections += [(RAMDISK, r) for r in ramdisks]
    return sections, kernel, cmdline, ramdisks, version


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(images())
def test_property_pcrs_match_formula(image):
    sections, kernel, cmdline, ramdisks, version = image
    m = parse_eif(build_eif(sections, version=version))
    assert (m.pcr0, m.pcr1, m.pcr2) == expected_pcrs(kernel, cmdline, ramdisks)
    assert len(m.sections) == len(sections)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(images(), st.data())
def test_property_any_corruption_or_truncation_is_rejected(image, data):
    sections, _, _, _, version = image
    eif = build_eif(sections, version=version)
    i = data.draw(st.integers(0, len(eif) - 1))
    flipped = bytearray(eif)
    flipped[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(EIFError):          # CRC-32 detects every single-byte change
        parse_eif(bytes(flipped))
    with pytest.raises(EIFError):
        parse_eif(eif[:i])


# --- CLI --------------------------------------------------------------------------------

def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    p = argparse.ArgumentParser()
    image_cli.register(p.add_subparsers())
    args = p.parse_args(argv)
    rc = args.func(args)
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_measure_eif(tmp_path, capsys):
    path = tmp_path / "image.eif"
    path.write_bytes(SIGNED)
    m = parse_eif(SIGNED)
    rc, out, _ = run_cli(["measure", str(path), "--json"], capsys)
    assert rc == 0
    doc = json.loads(out)
    assert doc == json.loads(json.dumps(describe_eif(m)))
    assert doc["Measurements"]["PCR8"] == m.pcr8.hex()
    rc, out, _ = run_cli(["measure", str(path)], capsys)
    lines = dict(line.split() for line in out.splitlines() if not line.startswith("#"))
    assert lines == {"PCR0": m.pcr0.hex(), "PCR1": m.pcr1.hex(), "PCR2": m.pcr2.hex(),
                     "PCR8": m.pcr8.hex()}


def test_cli_measure_bad_signature_exits_1(tmp_path, capsys):
    path = tmp_path / "image.eif"
    path.write_bytes(signed_eif(signed_pcr0=b"\x02" * 48)[0])
    rc, _, err = run_cli(["measure", str(path)], capsys)
    assert rc == 1 and "does not verify" in err


def test_cli_measure_errors(tmp_path, capsys):
    bad = tmp_path / "bad.eif"
    bad.write_bytes(GOOD[:-3])
    with pytest.raises(EIFError, match=r"bad\.eif: .*truncated") as e:
        run_cli(["measure", str(bad)], capsys)
    assert "\n" not in e.value.message
    empty = tmp_path / "empty.eif"
    empty.write_bytes(b"")
    with pytest.raises(EIFError, match="truncated"):
        run_cli(["measure", str(empty)], capsys)
    with pytest.raises(SopsError, match="missing.eif"):
        run_cli(["measure", str(tmp_path / "missing.eif")], capsys)
    with pytest.raises(SopsError, match="not both"):
        run_cli(["measure", str(bad), "--dev"], capsys)
    with pytest.raises(SopsError, match="give an EIF"):
        run_cli(["measure"], capsys)
