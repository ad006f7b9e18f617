"""Certificate checks for Nitro attestation documents (private; used by ``attestation``).

Path validation is done by hand for the fixed Nitro profile, following
``docs/receipt.md`` and spec/nitro-enclaves.md 1.4 steps 4-7, because
``cryptography``'s WebPKI verifier insists on an AuthorityKeyIdentifier that real Nitro
leaf certificates lack. The path is exactly
``pinned root = cabundle[0] -> cabundle[1] -> ... -> cabundle[N] -> certificate``.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID

from .nitro_root import fingerprint

__all__ = ["CertificateProblem", "RootProblem", "ChainProblem", "load_certificates",
           "check_root", "verify_path"]

# Critical extensions we understand; any other critical extension makes a cert unusable
# (RFC 5280 4.2). Nitro certificates only mark these two critical.
_KNOWN_CRITICAL = {ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE}


class CertificateProblem(ValueError):
    """A certificate does not parse or is outside the Nitro profile (EC P-384, SHA-384)."""


class RootProblem(ValueError):
    """``cabundle[0]`` is not the pinned root."""


class ChainProblem(ValueError):
    """The path from the pinned root to the leaf does not verify."""


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "<empty subject>"


def load_certificates(leaf_der: bytes, bundle_der: Sequence[bytes]
                      ) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """Parse the leaf and the cabundle; check each against the static profile."""
    certs: list[x509.Certificate] = []
    for label, der in [("certificate", leaf_der)] + [
            (f"cabundle[{i}]", d) for i, d in enumerate(bundle_der)]:
        try:
            # cryptography parses most fields lazily: touch every field used later here,
            # so that a malformed one is reported as check 3 and not as a crash.
            with warnings.catch_warnings():
                # Some malformations only warn today (a non-positive serial, a country
                # name of the wrong length); the serial is refused below, and anything
                # else malformed cannot carry a valid signature.
                warnings.simplefilter("ignore")
                cert = x509.load_der_x509_certificate(der)
                serial = cert.serial_number
                version = cert.version
                _ = (cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(),
                     cert.not_valid_before_utc, cert.not_valid_after_utc,
                     cert.tbs_certificate_bytes, cert.signature_algorithm_oid)
                key = cert.public_key()
                hash_alg = cert.signature_hash_algorithm
                exts = cert.extensions
        except (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion,
                x509.DuplicateExtension) as e:
            raise CertificateProblem(f"{label} is not a usable DER X.509 certificate: "
                                     f"{e}") from None
        if version != x509.Version.v3:
            raise CertificateProblem(f"{label} is not an X.509 v3 certificate")
        if serial <= 0:
            raise CertificateProblem(f"{label} has a serial number that is not positive")
        if not isinstance(key, ec.EllipticCurvePublicKey) or \
                not isinstance(key.curve, ec.SECP384R1):
            raise CertificateProblem(f"{label} ({_name(cert)}) does not have an EC P-384 key")
        if not isinstance(hash_alg, hashes.SHA384) or \
                cert.signature_algorithm_oid.dotted_string != "1.2.840.10045.4.3.3":
            raise CertificateProblem(f"{label} ({_name(cert)}) is not signed with "
                                     "ecdsa-with-SHA384")
        for ext in exts:
            if ext.critical and ext.oid not in _KNOWN_CRITICAL:
                raise CertificateProblem(f"{label} ({_name(cert)}) has an unsupported "
                                         f"critical extension {ext.oid.dotted_string}")
        certs.append(cert)
    return certs[0], certs[1:]


def check_root(root_der: bytes, pinned: Collection[str]) -> str:
    """Require ``sha256(cabundle[0])`` to be one of the pinned fingerprints; return it."""
    fp = fingerprint(root_der)
    if fp not in pinned:
        raise RootProblem(f"cabundle[0] has SHA-256 {fp}, which is not the pinned root "
                          f"({', '.join(sorted(pinned))})")
    return fp


def _ext(cert: x509.Certificate, cls: type) -> object | None:
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def _check_time(cert: x509.Certificate, label: str, at: datetime) -> None:
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    if not nb <= at <= na:
        raise ChainProblem(f"{label} ({_name(cert)}) is not valid at {at.isoformat()} "
                           f"(valid {nb.isoformat()} to {na.isoformat()})")


def _check_issued(child: x509.Certificate, parent: x509.Certificate, label: str) -> None:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as e:
        raise ChainProblem(f"{label} ({_name(child)}) is not signed by "
                           f"{_name(parent)}: {e or type(e).__name__}") from None


def verify_path(root: x509.Certificate, intermediates: Sequence[x509.Certificate],
                leaf: x509.Certificate, at: datetime) -> None:
    """Verify root -> intermediates (in order) -> leaf, every certificate valid at ``at``."""
    path = [root, *intermediates]
    labels = [f"cabundle[{i}]" for i in range(len(path))]
    # A certificate may appear once: repeats would form a loop.
    seen: set[bytes] = set()
    for cert, label in [*zip(path, labels), (leaf, "certificate")]:
        tbs = cert.tbs_certificate_bytes
        if tbs in seen:
            raise ChainProblem(f"{label} ({_name(cert)}) appears twice in the chain (loop)")
        seen.add(tbs)
    for i, (cert, label) in enumerate(zip(path, labels)):
        bc = _ext(cert, x509.BasicConstraints)
        if not isinstance(bc, x509.BasicConstraints) or not bc.ca:
            raise ChainProblem(f"{label} ({_name(cert)}) is not a CA certificate")
        below = len(path) - 1 - i  # CA certificates after this one in the path
        if bc.path_length is not None and bc.path_length < below:
            raise ChainProblem(f"{label} ({_name(cert)}) allows a path length of "
                               f"{bc.path_length}, but {below} CA certificates follow it")
        ku = _ext(cert, x509.KeyUsage)
        if not isinstance(ku, x509.KeyUsage) or not ku.key_cert_sign:
            raise ChainProblem(f"{label} ({_name(cert)}) may not sign certificates "
                               "(no keyCertSign)")
        if i > 0 and cert.subject == cert.issuer:
            raise ChainProblem(f"{label} ({_name(cert)}) is self-issued inside the chain")
        _check_time(cert, label, at)
        _check_issued(cert, path[i - 1] if i else cert, label)
    bc = _ext(leaf, x509.BasicConstraints)
    if isinstance(bc, x509.BasicConstraints) and bc.ca:
        raise ChainProblem(f"certificate ({_name(leaf)}) is a CA certificate, not a leaf")
    ku = _ext(leaf, x509.KeyUsage)
    if not isinstance(ku, x509.KeyUsage) or not ku.digital_signature:
        raise ChainProblem(f"certificate ({_name(leaf)}) may not sign (no digitalSignature)")
    _check_time(leaf, "certificate", at)
    _check_issued(leaf, path[-1], "certificate")
