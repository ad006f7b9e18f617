"""Parse an AWS Nitro Enclave Image File (EIF) and compute its PCR0/1/2/8 (pure).

Format (aws-nitro-enclaves-image-format README, spec dated 2024-06-21; shared spec
``nitro-enclaves.md`` 2.2 and 2.3). Every multi-byte field is big-endian::

    EifHeader (548 bytes)
      0x000 magic ".eif"          0x004 version u16        0x006 flags u16 (bit 0: aarch64)
      0x008 default_mem u64       0x010 default_cpus u64
      0x018 reserved u16          0x01a num_sections u16 (2..32)
      0x01c section_offsets[32] u64   (offset of each section *header* from file start)
      0x11c section_sizes[32] u64     (size of each section's *data*, header excluded)
      0x21c unused u32            0x220 eif_crc32 u32
    then, for each section in table order: EifSectionHeader (12 bytes: type u16,
    flags u16, size u64) followed by ``size`` bytes of data.

    Section types: 1 Kernel, 2 Cmdline, 3 Ramdisk, 4 Signature (v3+, at most 32768
    bytes), 5 Metadata (v4+, mandatory there; JSON, never measured). 0 and >= 6 are
    rejected, as the Nitro virtualization stack does.

    eif_crc32 = CRC-32/ISO-HDLC (zlib's crc32) over the whole file except the 4 bytes
    of the eif_crc32 field itself: header bytes 0..543, then every section header and
    its data in file order.

Measurements (README "EIF Measurements"; ``EifHasher::tpm_extend_finalize_reset``). Each
register is an *extend of a fresh (all-zero) register by the SHA-384 of the content*,
not the plain hash of the content::

    PCRx = SHA-384( 48 zero bytes || SHA-384(content_x) )
    content_0 = data of the Kernel, Cmdline and every Ramdisk section, in file order
    content_1 = data of the Kernel, Cmdline and the first Ramdisk section, in file order
    content_2 = data of every Ramdisk section after the first, in file order
    content_8 = DER of the signing certificate (only when a Signature section exists)

Headers, the Signature section and the Metadata section are not measured.

Stricter than the format requires, so that what is measured here is what the
hypervisor loads: sections must be contiguous and in table order (each offset equals
the end of the previous section, the first starts right after the header, the last ends
at the end of the file), unused section-table entries must be zero, and each section
header's size must equal the table's. Metadata is parsed (it must be a JSON object) but
is informational only: it is not measured and must not be trusted.

The Signature section is a CBOR array of ``{"signing_certificate", "signature"}`` maps
(the reference writer serialises both byte strings as CBOR arrays of small integers;
byte strings are accepted too). Only the first entry matters. ``signing_certificate`` is
PEM (as ``nitro-cli sign-eif`` writes it) or DER; ``signature`` is a COSE_Sign1
(ES256/ES384/ES512) over the CBOR map ``{"register_index": 0, "register_value": PCR0}``.
A signature that is well formed but does not verify is reported
(:attr:`EIFMeasurement.signature_valid` is False), not raised: the PCRs are still what
they are, but Nitro will refuse to boot such an image.
"""

from __future__ import annotations

import enum
import hashlib
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from ..errors import SopsError
from ..receipt.strict_cbor import CBORDecodeError, Tagged, decode as cbor_decode

__all__ = [
    "EIFError", "EIFHeader", "EIFSection", "EIFMeasurement", "SectionType", "parse_eif",
    "describe_eif", "measure_content", "EIF_MAGIC", "HEADER_SIZE", "SECTION_HEADER_SIZE",
    "MAX_SECTIONS", "SIGNATURE_MAX_SIZE", "SUPPORTED_VERSIONS", "HASH_ALGORITHM",
]

EIF_MAGIC = b".eif"
MAX_SECTIONS = 32
HEADER_SIZE = 548
SECTION_HEADER_SIZE = 12
SIGNATURE_MAX_SIZE = 32768
#: Versions 0 and 1 were never published; versions above 4 are reserved (undefined).
SUPPORTED_VERSIONS = (2, 3, 4)
#: What ``nitro-cli describe-eif`` prints as ``HashAlgorithm`` (Rust ``Debug`` of Sha384).
HASH_ALGORITHM = "Sha384 { ... }"

_HEADER = struct.Struct(f">4sHHQQHH{MAX_SECTIONS}Q{MAX_SECTIONS}QII")
_SECTION = struct.Struct(">HHQ")
_CRC_AT = HEADER_SIZE - 4
_ZERO_PCR = bytes(48)
_ARCH_AARCH64 = 0x1
assert _HEADER.size == HEADER_SIZE and _SECTION.size == SECTION_HEADER_SIZE


class EIFError(SopsError):
    """The bytes are not a well-formed EIF; the message says what is wrong and where."""


class SectionType(enum.IntEnum):
    """EIF section types (0 is ``EifSectionInvalid`` and never accepted)."""

    KERNEL = 1
    CMDLINE = 2
    RAMDISK = 3
    SIGNATURE = 4
    METADATA = 5

    @property
    def label(self) -> str:
        return self.name.capitalize()


@dataclass(frozen=True)
class EIFHeader:
    """The decoded ``EifHeader`` (``section_offsets``/``section_sizes`` cut to the used entries)."""

    version: int
    flags: int
    default_mem: int
    default_cpus: int
    reserved: int
    num_sections: int
    section_offsets: tuple[int, ...]
    section_sizes: tuple[int, ...]
    unused: int
    crc32: int

    @property
    def architecture(self) -> str:
        return "aarch64" if self.flags & _ARCH_AARCH64 else "x86_64"


@dataclass(frozen=True)
class EIFSection:
    """One section: ``offset`` is where its 12-byte header starts, ``size`` its data length."""

    index: int
    type: SectionType
    flags: int
    offset: int
    size: int

    @property
    def data_offset(self) -> int:
        return self.offset + SECTION_HEADER_SIZE

    @property
    def end(self) -> int:
        return self.data_offset + self.size


@dataclass(frozen=True)
class EIFMeasurement:
    """What :func:`parse_eif` returns: the image registers and the parsed structure.

    ``pcr8`` is None when the EIF has no Signature section; ``metadata`` is None when it
    has no Metadata section (EIF version < 4). ``signing_certificate`` is the DER of the
    certificate PCR8 measures; ``signature_valid`` says whether the first signature
    verifies with it and covers ``(0, pcr0)`` (None when unsigned).
    """

    pcr0: bytes
    pcr1: bytes
    pcr2: bytes
    pcr8: bytes | None
    sections: tuple[EIFSection, ...]
    metadata: dict[str, Any] | None
    header: EIFHeader | None = field(repr=False, default=None)
    signing_certificate: bytes | None = field(repr=False, default=None)
    signature_valid: bool | None = None
    crc32: int = 0
    size: int = 0

    @property
    def pcrs(self) -> dict[int, bytes]:
        """``{0: pcr0, 1: pcr1, 2: pcr2[, 8: pcr8]}``."""
        out = {0: self.pcr0, 1: self.pcr1, 2: self.pcr2}
        if self.pcr8 is not None:
            out[8] = self.pcr8
        return out


def measure_content(*chunks: bytes | memoryview) -> bytes:
    """``SHA-384(48 zero bytes || SHA-384(chunk_0 || chunk_1 || ...))``: a fresh PCR
    extended once with the digest of the content, as the EIF PCRs are computed."""
    h = hashlib.sha384()
    for c in chunks:
        h.update(c)
    return hashlib.sha384(_ZERO_PCR + h.digest()).digest()


# --- parsing ----------------------------------------------------------------------------

def _view(data: Any) -> memoryview:
    try:
        mv = memoryview(data)
    except TypeError:
        raise TypeError("parse_eif expects bytes or another bytes-like object") from None
    return mv if (mv.format == "B" and mv.ndim == 1) else mv.cast("B")


def _type_name(t: int) -> str:
    try:
        return SectionType(t).label
    except ValueError:
        return f"type {t}"


def _parse_header(mv: memoryview) -> EIFHeader:
    n = len(mv)
    if n < HEADER_SIZE:
        if n >= 4 and bytes(mv[:4]) != EIF_MAGIC:
            raise EIFError(f"not an EIF: bad magic {bytes(mv[:4])!r} (expected b'.eif')")
        raise EIFError(f"truncated EIF: {n} bytes, but the EIF header alone is {HEADER_SIZE}")
    fields = _HEADER.unpack_from(mv, 0)
    magic, version, flags, mem, cpus, reserved, count = fields[:7]
    offsets = fields[7:7 + MAX_SECTIONS]
    sizes = fields[7 + MAX_SECTIONS:7 + 2 * MAX_SECTIONS]
    unused, crc = fields[-2:]
    if magic != EIF_MAGIC:
        raise EIFError(f"not an EIF: bad magic {magic!r} (expected b'.eif')")
    if version not in SUPPORTED_VERSIONS:
        raise EIFError(f"unsupported EIF version {version} (supported: "
                       f"{', '.join(map(str, SUPPORTED_VERSIONS))})")
    if count == 0:
        raise EIFError("EIF header declares zero sections (at least kernel and cmdline "
                       "are required)")
    if count > MAX_SECTIONS:
        raise EIFError(f"too many sections: the EIF header declares {count}, the format "
                       f"allows at most {MAX_SECTIONS}")
    if count < 2:
        raise EIFError(f"EIF header declares {count} section; at least 2 (kernel and "
                       "cmdline) are required")
    for i in range(count, MAX_SECTIONS):
        if offsets[i] or sizes[i]:
            raise EIFError(f"section table entry {i} is not zero, but the EIF header "
                           f"declares only {count} sections")
    return EIFHeader(version=version, flags=flags, default_mem=mem, default_cpus=cpus,
                     reserved=reserved, num_sections=count,
                     section_offsets=tuple(offsets[:count]),
                     section_sizes=tuple(sizes[:count]), unused=unused, crc32=crc)


def _parse_sections(mv: memoryview, header: EIFHeader) -> tuple[EIFSection, ...]:
    n = len(mv)
    expected = HEADER_SIZE
    sections: list[EIFSection] = []
    for i, (off, size) in enumerate(zip(header.section_offsets, header.section_sizes)):
        if off + SECTION_HEADER_SIZE > n:
            raise EIFError(f"section {i} header at offset {off} runs past the end of the "
                           f"file ({n} bytes): truncated EIF or section out of range")
        if off < expected:
            where = ("the EIF header" if i == 0 else
                     f"section {i - 1} ({sections[-1].type.label}, ends at {expected})")
            raise EIFError(f"section {i} at offset {off} overlaps {where}")
        if off > expected:
            raise EIFError(f"section {i} at offset {off} leaves a gap of {off - expected} "
                           f"bytes after offset {expected} (sections must be contiguous, "
                           "in table order)")
        stype, sflags, ssize = _SECTION.unpack_from(mv, off)
        if stype == 0:
            raise EIFError(f"section {i} at offset {off} has the invalid section type 0")
        try:
            kind = SectionType(stype)
        except ValueError:
            raise EIFError(f"section {i} at offset {off} has unknown section type {stype} "
                           "(known: 1 kernel, 2 cmdline, 3 ramdisk, 4 signature, "
                           "5 metadata)") from None
        if ssize != size:
            raise EIFError(f"section {i} ({kind.label}) header says {ssize} bytes, the EIF "
                           f"header's section table says {size}")
        end = off + SECTION_HEADER_SIZE + size
        if end > n:
            raise EIFError(f"section {i} ({kind.label}) data [{off + SECTION_HEADER_SIZE}, "
                           f"{end}) runs past the end of the file ({n} bytes): truncated "
                           "EIF or section out of range")
        sections.append(EIFSection(i, kind, sflags, off, size))
        expected = end
    if expected != n:
        raise EIFError(f"{n - expected} trailing bytes after the last section (offset "
                       f"{expected})")
    return tuple(sections)


def _check_layout(header: EIFHeader, sections: tuple[EIFSection, ...]) -> None:
    counts = {t: 0 for t in SectionType}
    kernel_seen = False
    for s in sections:
        counts[s.type] += 1
        if s.type is SectionType.KERNEL:
            kernel_seen = True
        elif s.type is SectionType.RAMDISK and not kernel_seen:
            raise EIFError(f"ramdisk section {s.index} comes before the kernel section "
                           "(ramdisks must follow the kernel)")
        elif s.type is SectionType.SIGNATURE and s.size > SIGNATURE_MAX_SIZE:
            raise EIFError(f"signature section {s.index} is {s.size} bytes; at most "
                           f"{SIGNATURE_MAX_SIZE} are allowed")
        elif s.type is SectionType.METADATA and header.version < 4:
            raise EIFError(f"metadata section {s.index} in an EIF of version "
                           f"{header.version} (metadata exists from version 4)")
    for t in (SectionType.KERNEL, SectionType.CMDLINE):
        if counts[t] != 1:
            raise EIFError(f"an EIF needs exactly one {t.label.lower()} section, this one "
                           f"has {counts[t]}")
    for t in (SectionType.SIGNATURE, SectionType.METADATA):
        if counts[t] > 1:
            raise EIFError(f"an EIF has at most one {t.label.lower()} section, this one "
                           f"has {counts[t]}")
    if header.version >= 4 and counts[SectionType.METADATA] != 1:
        raise EIFError(f"an EIF of version {header.version} needs a metadata section")


def _crc(mv: memoryview) -> int:
    return zlib.crc32(mv[HEADER_SIZE:], zlib.crc32(mv[:_CRC_AT])) & 0xFFFFFFFF


def _byte_string(value: Any, what: str) -> bytes:
    """A CBOR byte string, or an array of integers 0..255 (serde_cbor's ``Vec<u8>``)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, list) and all(type(b) is int and 0 <= b <= 255 for b in value):
        return bytes(value)
    raise EIFError(f"signature section: {what} is neither a byte string nor an array of "
                   "bytes")


_COSE_ALGS = {-7: (hashes.SHA256, ec.SECP256R1, 32),
              -35: (hashes.SHA384, ec.SECP384R1, 48),
              -36: (hashes.SHA512, ec.SECP521R1, 66)}


def _load_certificate(raw: bytes) -> x509.Certificate:
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(raw)
        return x509.load_der_x509_certificate(raw)
    except ValueError:
        raise EIFError("signature section: the signing certificate is not a PEM or DER "
                       "X.509 certificate") from None


def _parse_signature(section: bytes) -> tuple[x509.Certificate, bytes, int, bytes, bytes]:
    """Return (certificate, protected, alg, payload, signature) of the first entry."""
    try:
        entries = cbor_decode(section, max_depth=4)
    except CBORDecodeError as e:
        raise EIFError(f"signature section is not valid CBOR: {e}") from None
    if not isinstance(entries, list) or not entries:
        raise EIFError("signature section is not a non-empty CBOR array")
    first = entries[0]
    if not isinstance(first, dict) or not {"signing_certificate", "signature"} <= set(first):
        raise EIFError("signature section: the first entry is not a map with "
                       "signing_certificate and signature")
    cert = _load_certificate(_byte_string(first["signing_certificate"], "signing_certificate"))
    cose_raw = _byte_string(first["signature"], "signature")
    try:
        cose = cbor_decode(cose_raw, max_depth=4, top_level_tags=frozenset({18}))
        if isinstance(cose, Tagged):
            cose = cose.value
        if not (isinstance(cose, list) and len(cose) == 4 and isinstance(cose[0], bytes)
                and isinstance(cose[1], dict) and isinstance(cose[2], bytes)
                and isinstance(cose[3], bytes)):
            raise EIFError("signature section: the signature is not a COSE_Sign1 array "
                           "(bstr, map, bstr, bstr)")
        protected = cbor_decode(cose[0], max_depth=2)
    except CBORDecodeError as e:
        raise EIFError(f"signature section: the COSE_Sign1 is not valid CBOR: {e}") from None
    if not isinstance(protected, dict) or protected.get(1) not in _COSE_ALGS:
        raise EIFError("signature section: the COSE protected header does not name ES256, "
                       "ES384 or ES512")
    return cert, cose[0], protected[1], cose[2], cose[3]


def _signature_valid(cert: x509.Certificate, protected: bytes, alg: int, payload: bytes,
                     signature: bytes, pcr0: bytes) -> bool:
    hash_cls, curve_cls, size = _COSE_ALGS[alg]
    key = cert.public_key()
    if (not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, curve_cls)
            or len(signature) != 2 * size):
        return False
    r, s = int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
    tbs = cbor2.dumps(["Signature1", protected, b"", payload])
    try:
        key.verify(encode_dss_signature(r, s), tbs, ec.ECDSA(hash_cls()))
    except InvalidSignature:
        return False
    try:
        info = cbor_decode(payload, max_depth=3)
    except CBORDecodeError:
        return False
    if not isinstance(info, dict) or info.get("register_index") != 0:
        return False
    try:
        value = _byte_string(info.get("register_value"), "register_value")
    except EIFError:
        return False
    return value == pcr0


def parse_eif(data: bytes | bytearray | memoryview) -> EIFMeasurement:
    """Parse and check an EIF, and compute its PCR0/1/2 (and PCR8 when signed).

    ``data`` may be any bytes-like object (an ``mmap`` of a large file works without a
    copy). Raises :class:`EIFError` for anything malformed: truncation, bad magic or
    version, section count outside 2..32, unknown section types, sections out of range,
    overlapping or not contiguous, a wrong section mix, a CRC mismatch, a signature
    section that cannot be decoded, metadata that is not a JSON object.
    """
    mv = _view(data)
    header = _parse_header(mv)
    sections = _parse_sections(mv, header)
    _check_layout(header, sections)
    crc = _crc(mv)
    if crc != header.crc32:
        raise EIFError(f"CRC32 mismatch: the EIF header says 0x{header.crc32:08x}, the file "
                       f"hashes to 0x{crc:08x} (corrupted or modified EIF)")

    image, boot, app = hashlib.sha384(), hashlib.sha384(), hashlib.sha384()
    ramdisks = 0
    signature: bytes | None = None
    metadata: dict[str, Any] | None = None
    for s in sections:
        body = mv[s.data_offset:s.end]
        if s.type in (SectionType.KERNEL, SectionType.CMDLINE):
            image.update(body)
            boot.update(body)
        elif s.type is SectionType.RAMDISK:
            image.update(body)
            (boot if ramdisks == 0 else app).update(body)
            ramdisks += 1
        elif s.type is SectionType.SIGNATURE:
            signature = bytes(body)
        elif s.type is SectionType.METADATA:
            try:
                metadata = json.loads(bytes(body).decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise EIFError(f"metadata section {s.index} is not valid UTF-8 JSON") from None
            if not isinstance(metadata, dict):
                raise EIFError(f"metadata section {s.index} is not a JSON object")

    def extend(h: Any) -> bytes:
        return hashlib.sha384(_ZERO_PCR + h.digest()).digest()

    pcr0, pcr1, pcr2 = extend(image), extend(boot), extend(app)
    pcr8 = cert_der = valid = None
    if signature is not None:
        cert, protected, alg, payload, sig = _parse_signature(signature)
        cert_der = cert.public_bytes(Encoding.DER)
        pcr8 = measure_content(cert_der)
        valid = _signature_valid(cert, protected, alg, payload, sig, pcr0)
    return EIFMeasurement(pcr0=pcr0, pcr1=pcr1, pcr2=pcr2, pcr8=pcr8, sections=sections,
                          metadata=metadata, header=header, signing_certificate=cert_der,
                          signature_valid=valid, crc32=crc, size=len(mv))


# --- description ------------------------------------------------------------------------

def _certificate_info(der: bytes) -> dict[str, Any]:
    cert = x509.load_der_x509_certificate(der)
    return {"Subject": cert.subject.rfc4514_string(),
            "IssuerName": cert.issuer.rfc4514_string(),
            "Algorithm": getattr(cert.signature_algorithm_oid, "_name",
                                 cert.signature_algorithm_oid.dotted_string),
            "NotBefore": cert.not_valid_before_utc.isoformat(),
            "NotAfter": cert.not_valid_after_utc.isoformat(),
            "Sha256Fingerprint": hashlib.sha256(der).hexdigest()}


def describe_eif(m: EIFMeasurement) -> dict[str, Any]:
    """A dict shaped like ``nitro-cli describe-eif`` output, plus the section table.

    ``Measurements`` holds ``HashAlgorithm`` and lower-case hex ``PCR0``/``PCR1``/``PCR2``
    (and ``PCR8`` when signed). ``Metadata`` is copied from the unmeasured metadata
    section: informational only.
    """
    measurements: dict[str, str] = {"HashAlgorithm": HASH_ALGORITHM, "PCR0": m.pcr0.hex(),
                                    "PCR1": m.pcr1.hex(), "PCR2": m.pcr2.hex()}
    if m.pcr8 is not None:
        measurements["PCR8"] = m.pcr8.hex()
    out: dict[str, Any] = {
        "EifVersion": m.header.version if m.header else None,
        "Measurements": measurements,
        "IsSigned": m.pcr8 is not None,
        "CheckCRC": True,
        "Crc32": f"0x{m.crc32:08x}",
        "Architecture": m.header.architecture if m.header else None,
        "Flags": m.header.flags if m.header else None,
        "DefaultMemory": m.header.default_mem if m.header else None,
        "DefaultCpus": m.header.default_cpus if m.header else None,
        "FileSize": m.size,
        "Sections": [{"Index": s.index, "Type": s.type.label, "Flags": s.flags,
                      "Offset": s.offset, "Size": s.size} for s in m.sections],
    }
    if m.pcr8 is not None and m.signing_certificate is not None:
        out["SignatureCheck"] = bool(m.signature_valid)
        out["SigningCertificate"] = _certificate_info(m.signing_certificate)
    if m.metadata is not None:
        out["ImageName"] = m.metadata.get("ImageName")
        out["ImageVersion"] = m.metadata.get("ImageVersion")
        out["Metadata"] = {k: v for k, v in m.metadata.items()
                           if k not in ("ImageName", "ImageVersion")}
    return out
