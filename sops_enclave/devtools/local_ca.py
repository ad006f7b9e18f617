"""A throw-away certificate authority for the local cloud stand-ins (tests and dev only).

``LocalCA(directory)`` makes an ECDSA P-256 root and, with :meth:`LocalCA.issue`, server
certificates for the names and addresses a stand-in listens on. Clients trust the root through
the usual variables: ``REQUESTS_CA_BUNDLE`` (requests: Azure and HuaweiCloud SDKs),
``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`` (gRPC: GCP KMS), ``SSL_CERT_FILE`` (Go, OpenSSL).
Nothing here is fit for production: keys are written unencrypted next to the certificates.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
import ssl
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["LocalCA", "TLSHTTPServer"]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sops-enclave test CA"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


class LocalCA:
    """A root CA kept in ``directory`` (``ca.pem``, ``ca.key``)."""


    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cert_path = self.dir / "ca.pem"
        now = _dt.datetime.now(_dt.timezone.utc)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._cert = (x509.CertificateBuilder()
                      .subject_name(_name("sops-enclave test root"))
                      .issuer_name(_name("sops-enclave test root"))
                      .public_key(self._key.public_key())
                      .serial_number(x509.random_serial_number())
                      .not_valid_before(now - _dt.timedelta(hours=1))
                      .not_valid_after(now + _dt.timedelta(days=2))
                      .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                      .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                                   False, False), critical=True)
                      .sign(self._key, hashes.SHA256()))
        _write(self.cert_path, self._cert.public_bytes(serialization.Encoding.PEM))
        _write(self.dir / "ca.key", self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()), 0o600)

    @property
    def pem(self) -> bytes:
        return self.cert_path.read_bytes()

    def issue(self, name: str, hosts: list[str]) -> tuple[Path, Path]:
        """A server certificate and key for ``hosts`` (DNS names or IP addresses), written
        as ``NAME.pem``/``NAME.key``; returns their paths."""
        now = _dt.datetime.now(_dt.timezone.utc)
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        cert = (x509.CertificateBuilder()
                .subject_name(_name(hosts[0]))
                .issuer_name(self._cert.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - _dt.timedelta(hours=1))
                .not_valid_after(now + _dt.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .sign(self._key, hashes.SHA256()))
        cert_path, key_path = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        _write(key_path, key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()), 0o600)
        return cert_path, key_path

    def server_context(self, name: str, hosts: list[str]) -> ssl.SSLContext:
        """A TLS server context with a fresh certificate for ``hosts``."""
        cert, key = self.issue(name, hosts)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(cert), str(key))
        return ctx


class TLSHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that speaks TLS; the handshake runs in the request's thread,
    so a client that never finishes it blocks only itself."""

    daemon_threads = True
    request_queue_size = 128  # not socketserver's 5: concurrent clients are not dropped

    def __init__(self, address: tuple[str, int], handler, context: ssl.SSLContext):
        self._tls = context
        super().__init__(address, handler)

    def get_request(self):  # type: ignore[override]
        sock, addr = self.socket.accept()
        return self._tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def start(self, name: str = "tls-http") -> "TLSHTTPServer":
        threading.Thread(target=self.serve_forever, daemon=True, name=name).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
