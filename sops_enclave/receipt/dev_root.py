"""Where the dev CA of the software NSM lives, and how a verifier reads its fingerprint.

The software NSM (``sops_enclave.devtools.nsm_soft``) keeps its P-384 root and
intermediate in a per-user directory. Verification never trusts that root by default;
``sops-enclave verify --allow-dev`` reads its fingerprint from here, without creating
anything::

    fp = local_dev_root_fingerprint(environ=os.environ)

The directory is ``$SOPS_ENCLAVE_DEV_CA_DIR`` if set, else
``$XDG_STATE_HOME/sops-enclave/dev-ca``, else ``~/.local/state/sops-enclave/dev-ca``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from .nitro_root import fingerprint

__all__ = ["DEV_CA_DIR_ENV", "ROOT_CERT_FILE", "default_dev_ca_dir",
           "local_dev_root_fingerprint"]

DEV_CA_DIR_ENV = "SOPS_ENCLAVE_DEV_CA_DIR"
ROOT_CERT_FILE = "root.pem"


def default_dev_ca_dir(environ: Mapping[str, str]) -> Path:
    """The dev CA directory chosen from ``environ`` (pass ``os.environ``)."""
    if environ.get(DEV_CA_DIR_ENV):
        return Path(environ[DEV_CA_DIR_ENV])
    state = environ.get("XDG_STATE_HOME")
    base = Path(state) if state else Path(environ.get("HOME") or Path.home()) / ".local" / "state"
    return base / "sops-enclave" / "dev-ca"


def local_dev_root_fingerprint(ca_dir: str | Path | None = None, *,
                               environ: Mapping[str, str] | None = None) -> str:
    """SHA-256 (hex) of the dev root certificate in ``ca_dir`` (or the default directory).

    Raises ``FileNotFoundError`` when there is no dev CA yet and ``ValueError`` when the
    file is not a PEM certificate.
    """
    if ca_dir is None:
        ca_dir = default_dev_ca_dir(environ or {})
    pem = (Path(ca_dir) / ROOT_CERT_FILE).read_bytes()
    return fingerprint(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER))
