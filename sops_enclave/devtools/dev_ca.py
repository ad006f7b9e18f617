"""The dev CA behind the software NSM: a P-384 root and intermediate kept on disk.

Created on first use in the dev CA directory (see
:func:`sops_enclave.receipt.dev_root.default_dev_ca_dir`), directory 0700, files 0600.
Each attestation document gets a fresh leaf key and a 3-hour leaf certificate issued by
the intermediate, like the NSM. These keys are for local development only::

    ca = DevCA.load_or_create(tmp_path)
    ca.root_fingerprint, ca.root_pem
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..receipt.dev_root import ROOT_CERT_FILE
from ..receipt.nitro_root import fingerprint

__all__ = ["DevCA", "LEAF_LIFETIME"]

ROOT_KEY_FILE = "root.key"
INTERMEDIATE_CERT_FILE = "intermediate.pem"
INTERMEDIATE_KEY_FILE = "intermediate.key"
LEAF_LIFETIME = timedelta(hours=3)
_ROOT_LIFETIME = timedelta(days=3650)
_INTERMEDIATE_LIFETIME = timedelta(days=365)
# CA certificates are backdated so that a slightly slow clock (or a test clock set in
# the past) still falls inside their validity.
_BACKDATE = timedelta(days=7)
_ORG = "sops-enclave dev (NOT FOR PRODUCTION)"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _ca_cert(subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
             issuer_key: ec.EllipticCurvePrivateKey, path_length: int, now: datetime,
             lifetime: timedelta) -> x509.Certificate:
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - _BACKDATE).not_valid_after(now + lifetime)
         .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                      key_encipherment=False, data_encipherment=False,
                                      key_agreement=False, key_cert_sign=True, crl_sign=True,
                                      encipher_only=False, decipher_only=False), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                        critical=False))
    if issuer_key is not key:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
    return b.sign(issuer_key, hashes.SHA384())


@dataclass(frozen=True)
class DevCA:
    """A loaded dev CA. Build it with :meth:`load_or_create`."""

    directory: Path
    root_key: ec.EllipticCurvePrivateKey
    root_cert: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey
    intermediate_cert: x509.Certificate

    @classmethod
    def load_or_create(cls, directory: str | Path, *, now: datetime | None = None) -> DevCA:
        """Load the CA in ``directory``, creating the root and/or intermediate if absent.

        The intermediate is re-issued when it expires within a day of ``now``. A lock
        file serialises concurrent first uses.
        """
        now = now or datetime.now(timezone.utc)
        d = Path(directory)
        if not d.exists():
            d.mkdir(parents=True, mode=0o700)
        with open(d / ".lock", "a") as lock:
            os.chmod(d / ".lock", 0o600)
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                return cls._load_or_create_locked(d, now)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @classmethod
    def _load_or_create_locked(cls, d: Path, now: datetime) -> DevCA:
        root_key_path, root_path = d / ROOT_KEY_FILE, d / ROOT_CERT_FILE
        int_key_path, int_path = d / INTERMEDIATE_KEY_FILE, d / INTERMEDIATE_CERT_FILE
        if root_key_path.exists() and root_path.exists():
            root_key = serialization.load_pem_private_key(root_key_path.read_bytes(), None)
            root_cert = x509.load_pem_x509_certificate(root_path.read_bytes())
            assert isinstance(root_key, ec.EllipticCurvePrivateKey)
        else:
            root_key = ec.generate_private_key(ec.SECP384R1())
            root_cert = _ca_cert(_name("sops-enclave dev root"), root_key,
                                 _name("sops-enclave dev root"), root_key, 1, now,
                                 _ROOT_LIFETIME)
            _write_private(root_key_path, _key_pem(root_key))
            _write_private(root_path, root_cert.public_bytes(serialization.Encoding.PEM))
            for stale in (int_key_path, int_path):
                stale.unlink(missing_ok=True)
        int_key = int_cert = None
        if int_key_path.exists() and int_path.exists():
            k = serialization.load_pem_private_key(int_key_path.read_bytes(), None)
            c = x509.load_pem_x509_certificate(int_path.read_bytes())
            if isinstance(k, ec.EllipticCurvePrivateKey) and c.issuer == root_cert.subject \
                    and c.not_valid_after_utc - timedelta(days=1) > now:
                int_key, int_cert = k, c
        if int_key is None or int_cert is None:
            int_key = ec.generate_private_key(ec.SECP384R1())
            int_cert = _ca_cert(_name("sops-enclave dev intermediate"), int_key,
                                root_cert.subject, root_key, 0, now, _INTERMEDIATE_LIFETIME)
            _write_private(int_key_path, _key_pem(int_key))
            _write_private(int_path, int_cert.public_bytes(serialization.Encoding.PEM))
        return cls(d, root_key, root_cert, int_key, int_cert)

    @property
    def root_pem(self) -> bytes:
        """The dev root certificate, PEM."""
        return self.root_cert.public_bytes(serialization.Encoding.PEM)

    @property
    def root_der(self) -> bytes:
        """The dev root certificate, DER (``cabundle[0]`` of every document)."""
        return self.root_cert.public_bytes(serialization.Encoding.DER)

    @property
    def root_fingerprint(self) -> str:
        """SHA-256 (hex) of :attr:`root_der`, what a verifier pins."""
        return fingerprint(self.root_der)

    def issue_leaf(self, common_name: str, public_key: ec.EllipticCurvePublicKey,
                   now: datetime) -> x509.Certificate:
        """A Nitro-shaped leaf: not a CA, digitalSignature, no AKI, valid 3 hours."""
        start = now.replace(microsecond=0) - timedelta(seconds=1)
        return (x509.CertificateBuilder()
                .subject_name(_name(common_name)).issuer_name(self.intermediate_cert.subject)
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(start + LEAF_LIFETIME)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, key_cert_sign=False,
                                             crl_sign=False, encipher_only=False,
                                             decipher_only=False), critical=False)
                .sign(self.intermediate_key, hashes.SHA384()))
