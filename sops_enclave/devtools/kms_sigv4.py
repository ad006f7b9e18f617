"""DEV STAND-IN, NOT AWS: who is calling the dev KMS (:mod:`.kms_attested`).

The caller is the principal of the access key id in the request's AWS Signature Version 4
``Authorization`` header, looked up in a table of dev principals
(``{access key id: (secret access key, principal ARN)}``), and the signature is checked
with that secret. This module implements the header form of SigV4 for the KMS JSON
protocol (``POST /``, the payload hashed into the canonical request); query-string
signing and chunked payloads are not supported; a session token
(``X-Amz-Security-Token``) is not checked (it is signed like any header, and the table has
no tokens), so a leftover ``AWS_SESSION_TOKEN`` in a developer's shell does not matter.

Errors, as AWS names them: no ``Authorization`` header ``MissingAuthenticationTokenException``;
a malformed one ``IncompleteSignatureException``; an access key id not in the table
``UnrecognizedClientException``; a wrong signature, a credential scope that is not
``DATE/REGION/kms/aws4_request`` or a request time more than 15 minutes off
``InvalidSignatureException``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

from .kms_policy_eval import Principal

__all__ = ["DEFAULT_PRINCIPALS", "AuthError", "PrincipalTable", "authenticate",
           "parse_principal_spec", "principal_table"]

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW_SECONDS = 15 * 60

#: The dev principals the stand-in knows unless told otherwise. ``dev``/``dev`` is what
#: :class:`~sops_enclave.devtools.devstack.DevStack` and ``make demo`` use (the enclave host
#: role of the policies they generate), ``kms-admin``/``kms-admin`` the key administrator
#: those policies name, ``testing``/``testing`` moto's conventional test credentials. All
#: are in moto's default account 123456789012, which owns the keys moto creates.
DEFAULT_PRINCIPALS: Mapping[str, tuple[str, str]] = {
    "dev": ("dev", "arn:aws:iam::123456789012:role/ci-host"),
    "kms-admin": ("kms-admin", "arn:aws:iam::123456789012:role/kms-admin"),
    "testing": ("testing", "arn:aws:iam::123456789012:user/testing"),
}

PrincipalTable = Mapping[str, tuple[str, Principal]]

_AUTH_RE = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<cred>[^,\s]+),\s*SignedHeaders=(?P<signed>[^,\s]+),"
    r"\s*Signature=(?P<sig>[0-9a-f]{64})", re.ASCII)
_DATE_RE = re.compile(r"\d{8}T\d{6}Z", re.ASCII)
_REGION_RE = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d", re.ASCII)
_HEADER_NAME_RE = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+", re.ASCII)


class AuthError(Exception):
    """The request is not authenticated; ``error_type`` is the AWS error code."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


def principal_table(table: Mapping[str, tuple[str, str]] | None) -> dict[str, tuple[str, Principal]]:
    """Validate ``{access key id: (secret, principal ARN)}`` (``None``: the defaults)."""
    out: dict[str, tuple[str, Principal]] = {}
    for key_id, entry in (DEFAULT_PRINCIPALS if table is None else table).items():
        if not isinstance(key_id, str) or not key_id or not key_id.isascii() or "/" in key_id:
            raise ValueError(f"access key id {key_id!r} is not usable")
        try:
            secret, arn = entry
        except (TypeError, ValueError):
            raise ValueError(f"principal table entry for {key_id!r} must be (secret, ARN)"
                             ) from None
        if not isinstance(secret, str) or not secret:
            raise ValueError(f"the secret for {key_id!r} must be a non-empty string")
        out[key_id] = (secret, Principal(arn))
    if not out:
        raise ValueError("the principal table is empty")
    return out


def parse_principal_spec(spec: str) -> tuple[str, tuple[str, str]]:
    """``ACCESS_KEY_ID:SECRET:ARN`` (the command line form) -> (key id, (secret, ARN))."""
    parts = spec.split(":", 2)
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"--principal {spec!r} is not ACCESS_KEY_ID:SECRET:ARN")
    return parts[0], (parts[1], parts[2])


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def _canonical_value(values: Sequence[str]) -> str:
    return ",".join(" ".join(v.split()) for v in values)


def authenticate(method: str, path: str, headers: Sequence[tuple[str, str]], body: bytes,
                 table: PrincipalTable, now: datetime | None = None) -> Principal:
    """The principal who signed this request, or :class:`AuthError`.

    ``headers``: every header as received, in order (names in any case, duplicates kept).
    """
    return verify_signature(method, path, headers, body, table, now)[0]


def verify_signature(method: str, path: str, headers: Sequence[tuple[str, str]], body: bytes,
                     table: PrincipalTable, now: datetime | None = None
                     ) -> tuple[Principal, str]:
    """:func:`authenticate`, and the region the signature is scoped to."""
    by_name: dict[str, list[str]] = {}
    for name, value in headers:
        by_name.setdefault(name.lower(), []).append(value)
    auth = by_name.get("authorization", [])
    if not auth:
        raise AuthError("MissingAuthenticationTokenException", "Missing Authentication Token")
    if len(auth) != 1:
        raise AuthError("IncompleteSignatureException", "more than one Authorization header")
    m = _AUTH_RE.fullmatch(auth[0].strip())
    if m is None:
        raise AuthError("IncompleteSignatureException",
                        f"Authorization header is not '{ALGORITHM} Credential=..., "
                        "SignedHeaders=..., Signature=...'")
    cred = m["cred"].split("/")
    if len(cred) != 5:
        raise AuthError("IncompleteSignatureException", "malformed Credential in Authorization")
    key_id, date, region, service, terminator = cred
    entry = table.get(key_id)
    if entry is None:
        raise AuthError("UnrecognizedClientException",
                        "The security token included in the request is invalid.")
    secret, principal = entry
    if service != "kms" or terminator != "aws4_request" or not _REGION_RE.fullmatch(region):
        raise AuthError("InvalidSignatureException",
                        f"Credential should be scoped to a valid region and the kms service, "
                        f"not {'/'.join(cred[1:])}")
    amz_dates = by_name.get("x-amz-date", [])
    if len(amz_dates) != 1 or not _DATE_RE.fullmatch(amz_dates[0]):
        raise AuthError("IncompleteSignatureException",
                        "one X-Amz-Date header (YYYYMMDDTHHMMSSZ) is required")
    amz_date = amz_dates[0]
    if amz_date[:8] != date:
        raise AuthError("InvalidSignatureException",
                        "Credential should be scoped to the date of X-Amz-Date")
    try:
        when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise AuthError("IncompleteSignatureException", "X-Amz-Date is not a date") from None
    now = now or datetime.now(timezone.utc)
    if abs((now - when).total_seconds()) > MAX_SKEW_SECONDS:
        raise AuthError("InvalidSignatureException",
                        f"Signature expired: {amz_date} is more than 15 minutes from "
                        f"{now.strftime('%Y%m%dT%H%M%SZ')}")
    signed = m["signed"].split(";")
    if (signed != sorted(set(signed)) or not all(_HEADER_NAME_RE.fullmatch(s) for s in signed)
            or "host" not in signed or "x-amz-date" not in signed):
        raise AuthError("IncompleteSignatureException",
                        "SignedHeaders must be sorted, lower-case, and include host and "
                        "x-amz-date")
    lines = []
    for name in signed:
        if name not in by_name:
            raise AuthError("InvalidSignatureException",
                            f"signed header {name!r} is not in the request")
        lines.append(f"{name}:{_canonical_value(by_name[name])}\n")
    canonical = "\n".join([method, path, "", "".join(lines), m["signed"],
                           hashlib.sha256(body).hexdigest()])
    scope = f"{date}/{region}/{service}/{terminator}"
    to_sign = "\n".join([ALGORITHM, amz_date, scope,
                         hashlib.sha256(canonical.encode("utf-8")).hexdigest()])
    k = _hmac(("AWS4" + secret).encode("utf-8"), date)
    for part in (region, service, terminator):
        k = _hmac(k, part)
    expected = hmac.new(k, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, m["sig"]):
        raise AuthError("InvalidSignatureException",
                        "The request signature we calculated does not match the signature "
                        "you provided. Check your AWS Secret Access Key and signing method.")
    return principal, region
