"""The AWS Nitro Enclaves Root-G1 certificate, pinned by its SHA-256 fingerprint.

The PEM below is AWS's public root (CN=aws.nitro-enclaves, P-384, 2019-10-28 to
2049-10-28), as published in ``AWS_NitroEnclaves_Root-G1.zip`` on
aws-nitro-enclaves.amazonaws.com. Verification trusts a certificate only through
:data:`AWS_NITRO_ROOT_G1_SHA256`, the SHA-256 of its DER encoding; the PEM is kept for
auditors and for :func:`aws_nitro_root_der`, which checks it against the fingerprint::

    >>> fingerprint(aws_nitro_root_der()) == AWS_NITRO_ROOT_G1_SHA256
    True
"""

from __future__ import annotations

import hashlib
import re

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

__all__ = ["AWS_NITRO_ROOT_G1_PEM", "AWS_NITRO_ROOT_G1_SHA256", "aws_nitro_root_der",
           "fingerprint", "normalize_fingerprint"]

#: SHA-256 of the DER certificate (not of AWS's zip download, which is 8cf60e2b...).
AWS_NITRO_ROOT_G1_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"

AWS_NITRO_ROOT_G1_PEM = b"""\
-----BEGIN CERTIFICATE-----
MIICETCCAZagAwIBAgIRAPkxdWgbkK/hHUbMtOTn+FYwCgYIKoZIzj0EAwMwSTEL
MAkGA1UEBhMCVVMxDzANBgNVBAoMBkFtYXpvbjEMMAoGA1UECwwDQVdTMRswGQYD
VQQDDBJhd3Mubml0cm8tZW5jbGF2ZXMwHhcNMTkxMDI4MTMyODA1WhcNNDkxMDI4
MTQyODA1WjBJMQswCQYDVQQGEwJVUzEPMA0GA1UECgwGQW1hem9uMQwwCgYDVQQL
DANBV1MxGzAZBgNVBAMMEmF3cy5uaXRyby1lbmNsYXZlczB2MBAGByqGSM49AgEG
BSuBBAAiA2IABPwCVOumCMHzaHDimtqQvkY4MpJzbolL//Zy2YlES1BR5TSksfbb
48C8WBoyt7F2Bw7eEtaaP+ohG2bnUs990d0JX28TcPQXCEPZ3BABIeTPYwEoCWZE
h8l5YoQwTcU/9KNCMEAwDwYDVR0TAQH/BAUwAwEB/zAdBgNVHQ4EFgQUkCW1DdkF
R+eWw5b6cp3PmanfS5YwDgYDVR0PAQH/BAQDAgGGMAoGCCqGSM49BAMDA2kAMGYC
MQCjfy+Rocm9Xue4YnwWmNJVA44fA0P5W2OpYow9OYCVRaEevL8uO1XYru5xtMPW
rfMCMQCi85sWBbJwKKXdS6BptQFuZbT73o/gBh1qUxl/nNr12UO8Yfwr6wPLb+6N
IwLz3/Y=
-----END CERTIFICATE-----
"""

_HEX64 = re.compile(r"[0-9a-f]{64}")


def fingerprint(der: bytes) -> str:
    """Lower-case hex SHA-256 of a DER certificate."""
    return hashlib.sha256(der).hexdigest()


def normalize_fingerprint(value: str) -> str:
    """Accept ``AB:CD:...`` (openssl style) or plain hex; return 64 lower-case hex digits.

    Raises ``ValueError`` for anything else.
    """
    v = value.strip().replace(":", "").lower()
    if not _HEX64.fullmatch(v):
        raise ValueError(f"not a SHA-256 fingerprint (64 hex digits): {value!r}")
    return v


def aws_nitro_root_der() -> bytes:
    """DER of the embedded AWS root, after checking it against the pinned fingerprint."""
    der = x509.load_pem_x509_certificate(AWS_NITRO_ROOT_G1_PEM).public_bytes(Encoding.DER)
    if fingerprint(der) != AWS_NITRO_ROOT_G1_SHA256:  # pragma: no cover - a corrupted install
        raise RuntimeError("embedded AWS Nitro root does not match its pinned fingerprint")
    return der
