"""The KMS key policy that releases data keys only to the measured enclave image.

:func:`key_policy` returns a policy document (a dict; ``json.dumps`` it for
``aws kms put-key-policy``). Its statements, by ``Sid``:

``KeyAdministration`` (Allow, the admins)
    Key management only: ``kms:Create*``, ``Describe*``, ``Enable*``, ``List*``, ``Put*``,
    ``Update*``, ``Revoke*``, ``Disable*``, ``Get*``, ``Delete*``, ``TagResource``,
    ``UntagResource``, ``ScheduleKeyDeletion``, ``CancelKeyDeletion``. None of these
    patterns matches ``kms:Decrypt``, ``kms:Encrypt``, ``kms:GenerateDataKey*`` or
    ``kms:ReEncrypt*``. With ``lock_policy=True`` ``Put*`` (= ``kms:PutKeyPolicy``) is left
    out and ``DenyKeyPolicyChanges`` is added (see "Admins" below).

``EnclaveDecryptWithAttestation`` (Allow, the enclave host role)
    ``kms:Decrypt`` and ``kms:GenerateDataKey`` only with ``StringEqualsIgnoreCase`` on
    ``kms:RecipientAttestation:ImageSha384`` = PCR0 and, when given, ``...:PCR1``,
    ``...:PCR2``, ``...:PCR8``. KMS sets these keys only for a request that carries a
    ``Recipient`` with a valid attestation document, and then answers with
    ``CiphertextForRecipient``: the plaintext is readable only inside that enclave.

``EnclaveHostEncrypt`` (Allow, the enclave host role; ``allow_encrypt=True``, the default)
    ``kms:Encrypt``. It releases no plaintext, so it needs no gate, and it cannot have one
    (Encrypt takes no ``Recipient``). The pack step needs it when an output lists this key
    next to another KMS key: the output's data key comes from ``GenerateDataKey`` on one
    key and is wrapped for the others with ``Encrypt`` (nitro-enclaves.md 3.5). The cost:
    whoever holds the host role can mint ciphertexts the enclave will accept. Inputs are
    bound to their git blob ids in the receipt, so a forged input shows up there; pass
    ``allow_encrypt=False`` when every output uses a single KMS key.

``DenyDecryptWithoutAttestation`` (Deny, ``Principal: "*"``)
    ``kms:Decrypt``, ``kms:GenerateDataKey*`` when ``kms:RecipientAttestation:ImageSha384``
    is absent (``Null: true``): no plaintext key for any principal, by key policy, grant or
    IAM policy, unless the request is attested. This is what defeats the classic pitfall
    of another Allow (a second statement, a grant, an IAM policy through a delegated
    account root) granting ``kms:Decrypt`` without the condition: an explicit Deny beats
    every Allow. It also makes ``GenerateDataKeyWithoutPlaintext`` and
    ``GenerateDataKeyPair*`` unusable (they take no ``Recipient``), which this key does not
    need.

``DenyDecryptForOtherImages`` and ``DenyDecryptForOtherPCR1``/``PCR2``/``PCR8`` (Deny, ``*``)
    The same actions when the attested value differs (``StringNotEqualsIgnoreCase``).
    One statement per register because the keys inside one condition block are AND-ed
    (a single statement would deny only when *every* register differs).

``DenyReEncryptFrom`` (Deny, ``*``, unconditional)
    ``kms:ReEncryptFrom``: ReEncrypt decrypts under this key inside KMS and re-encrypts
    under a destination key of the caller's choice, which that caller may then decrypt; it
    takes no ``Recipient``, so it can never be attested.

Interplay. The enclave's own call carries an attestation whose ImageSha384 (and PCR1/2/8)
equal the pinned values: ``Null`` is false and every ``StringNotEquals...`` is false, so no
Deny applies and ``EnclaveDecryptWithAttestation`` allows it. Any other request is denied
by at least one Deny (a missing key also satisfies ``StringNotEquals...``, so the two
kinds overlap on purpose: the ``Null`` statement says the intent explicitly).

Admins. Key administrators can always rewrite the policy (``kms:PutKeyPolicy``), so "only
the enclave can decrypt" holds only as long as they do not. ``lock_policy=True`` drops
``PutKeyPolicy`` from the admins and denies it to everyone: the policy can then never be
changed again, and KMS accepts such a policy only with
``--bypass-policy-lockout-safety-check``. Admins keep ``kms:CreateGrant``; grants cannot
override the Deny statements. ``ScheduleKeyDeletion`` remains: an admin can destroy the key
(availability), not read with it.

``Resource`` is ``"*"`` (in a key policy: this key). ``key_arn`` is validated and recorded in
the policy ``Id``, not used as ``Resource``: a wrong ARN there would make every statement,
the Deny statements included, silently not apply.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import SopsError

__all__ = ["PolicyError", "key_policy", "policy_for_dev", "ADMIN_ACTIONS",
           "ENCLAVE_ACTIONS", "GATED_ACTIONS", "IMAGE_SHA384_KEY", "pcr_condition_key",
           "normalize_pcr"]

POLICY_VERSION = "2012-10-17"
IMAGE_SHA384_KEY = "kms:RecipientAttestation:ImageSha384"

ADMIN_ACTIONS = ("kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*",
                 "kms:Update*", "kms:Revoke*", "kms:Disable*", "kms:Get*", "kms:Delete*",
                 "kms:TagResource", "kms:UntagResource", "kms:ScheduleKeyDeletion",
                 "kms:CancelKeyDeletion")
#: What the attested enclave may do (the operations of the pack step that take Recipient).
ENCLAVE_ACTIONS = ("kms:Decrypt", "kms:GenerateDataKey")
#: What is denied to everyone without the right attestation.
GATED_ACTIONS = ("kms:Decrypt", "kms:GenerateDataKey*")

_PARTITION = r"aws(?:-[a-z0-9]+)*"
_IAM_NAME = r"[\w+=,.@-]+"
_PRINCIPAL_RE = re.compile(
    rf"arn:{_PARTITION}:iam::(?P<account>\d{{12}}):"
    rf"(?:(?P<root>root)|(?P<kind>role|user)/(?:{_IAM_NAME}/)*{_IAM_NAME})", re.ASCII)
_KEY_RE = re.compile(
    rf"arn:{_PARTITION}:kms:[a-z]{{2}}(?:-[a-z]+)+-\d:(?P<account>\d{{12}}):key/"
    r"(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})",
    re.ASCII)
_HEX96 = re.compile(r"[0-9a-fA-F]{96}", re.ASCII)
_ACCOUNT = re.compile(r"\d{12}", re.ASCII)


class PolicyError(SopsError):
    """A bad input to the policy generator (PCR value, ARN, account)."""


def pcr_condition_key(index: int) -> str:
    """``kms:RecipientAttestation:PCR<index>``."""
    return f"kms:RecipientAttestation:PCR{index}"


def normalize_pcr(value: str | bytes, name: str = "PCR", *, allow_zero: bool = False) -> str:
    """Lower-case 96-digit hex of a 48-byte register; raw 48 bytes are accepted too.

    An all-zero value is refused unless ``allow_zero``: debug-mode enclaves report zero
    PCR0/1/2, so pinning zeros admits every debug enclave (nitro-enclaves.md 1.6).
    """
    if isinstance(value, (bytes, bytearray)):
        if len(value) != 48:
            raise PolicyError(f"{name} must be 48 bytes, got {len(value)}")
        text = bytes(value).hex()
    elif isinstance(value, str):
        text = value.strip()
        if text[:2].lower() == "0x":
            text = text[2:]
        if not _HEX96.fullmatch(text):
            raise PolicyError(f"{name} must be 96 hex digits (a SHA-384 register), got "
                              f"{len(text)} characters")
        text = text.lower()
    else:
        raise PolicyError(f"{name} must be a hex string")
    if not allow_zero and text == "0" * 96:
        raise PolicyError(f"{name} is all zeros (a debug-mode enclave measurement); it would "
                          "admit every debug enclave")
    return text


def _principal(arn: Any, what: str, *, allow_root: bool = True) -> re.Match[str]:
    m = _PRINCIPAL_RE.fullmatch(arn) if isinstance(arn, str) else None
    if m is None:
        raise PolicyError(f"{what} {arn!r} is not an IAM role, user or account-root ARN "
                          "(arn:aws:iam::123456789012:role/NAME)")
    if m["root"] and not allow_root:
        raise PolicyError(f"{what} {arn!r} is an account root: that would let every IAM "
                          "principal of the account with a matching IAM policy use the key; "
                          "name the instance role")
    return m


def _check_account(account: str | None, arn: str, found: str, what: str) -> None:
    if account is not None and found != account:
        raise PolicyError(f"{what} {arn} is in account {found}, not {account}")


def key_policy(pcr0: str | bytes, *, pcr1: str | bytes | None = None,
               pcr2: str | bytes | None = None, pcr8: str | bytes | None = None,
               role_arn: str, admin_arns: Iterable[str], key_arn: str | None = None,
               account: str | None = None, allow_encrypt: bool = True,
               lock_policy: bool = False, allow_debug: bool = False) -> dict[str, Any]:
    """The key policy (statements in the module docstring) pinning PCR0 and optionally
    PCR1/PCR2/PCR8 for ``role_arn``, administered by ``admin_arns``.

    ``account`` (12 digits), when given, must own ``key_arn`` and every principal (a typo
    guard; leave it out for cross-account principals). Raises :class:`PolicyError` for a
    PCR that is not 96 hex digits (or is all zero without ``allow_debug``), ARNs that are
    not IAM role/user/root ARNs (the role may not be an account root), a key ARN that is
    not a KMS key ARN, no admins, or the role among the admins.
    """
    pins: dict[int, str] = {0: normalize_pcr(pcr0, "PCR0", allow_zero=allow_debug)}
    for index, value in ((1, pcr1), (2, pcr2), (8, pcr8)):
        if value is not None:
            pins[index] = normalize_pcr(value, f"PCR{index}", allow_zero=allow_debug)
    if account is not None and (not isinstance(account, str)
                                or not _ACCOUNT.fullmatch(account)):
        raise PolicyError(f"account {account!r} is not a 12-digit AWS account id")
    if key_arn is not None:
        km = _KEY_RE.fullmatch(key_arn) if isinstance(key_arn, str) else None
        if km is None:
            raise PolicyError(f"key ARN {key_arn!r} is not a KMS key ARN "
                              "(arn:aws:kms:REGION:123456789012:key/KEY-ID)")
        _check_account(account, key_arn, km["account"], "key ARN")
    role = _principal(role_arn, "enclave host role", allow_root=False)
    _check_account(account, role_arn, role["account"], "enclave host role")
    if isinstance(admin_arns, str):
        admin_arns = [admin_arns]
    admins: list[str] = []
    for arn in admin_arns:
        m = _principal(arn, "admin")
        _check_account(account, arn, m["account"], "admin")
        if arn not in admins:
            admins.append(arn)
    if not admins:
        raise PolicyError("at least one key administrator ARN is required")
    if role_arn in admins:
        raise PolicyError(f"the enclave host role {role_arn} must not also be a key "
                          "administrator (it could rewrite the policy)")

    admin_actions = [a for a in ADMIN_ACTIONS if not (lock_policy and a == "kms:Put*")]
    allow_values = {IMAGE_SHA384_KEY: pins[0]}
    allow_values.update({pcr_condition_key(i): v for i, v in pins.items() if i != 0})
    statements: list[dict[str, Any]] = [
        {"Sid": "KeyAdministration", "Effect": "Allow",
         "Principal": {"AWS": admins if len(admins) > 1 else admins[0]},
         "Action": admin_actions, "Resource": "*"},
        {"Sid": "EnclaveDecryptWithAttestation", "Effect": "Allow",
         "Principal": {"AWS": role_arn}, "Action": list(ENCLAVE_ACTIONS), "Resource": "*",
         "Condition": {"StringEqualsIgnoreCase": allow_values}},
    ]
    if allow_encrypt:
        statements.append({"Sid": "EnclaveHostEncrypt", "Effect": "Allow",
                           "Principal": {"AWS": role_arn}, "Action": "kms:Encrypt",
                           "Resource": "*"})
    statements.append({"Sid": "DenyDecryptWithoutAttestation", "Effect": "Deny",
                       "Principal": "*", "Action": list(GATED_ACTIONS), "Resource": "*",
                       "Condition": {"Null": {IMAGE_SHA384_KEY: "true"}}})
    statements.append({"Sid": "DenyDecryptForOtherImages", "Effect": "Deny",
                       "Principal": "*", "Action": list(GATED_ACTIONS), "Resource": "*",
                       "Condition": {"StringNotEqualsIgnoreCase": {IMAGE_SHA384_KEY: pins[0]}}})
    for index in sorted(i for i in pins if i != 0):
        statements.append({
            "Sid": f"DenyDecryptForOtherPCR{index}", "Effect": "Deny", "Principal": "*",
            "Action": list(GATED_ACTIONS), "Resource": "*",
            "Condition": {"StringNotEqualsIgnoreCase": {pcr_condition_key(index): pins[index]}}})
    statements.append({"Sid": "DenyReEncryptFrom", "Effect": "Deny", "Principal": "*",
                       "Action": "kms:ReEncryptFrom", "Resource": "*"})
    if lock_policy:
        statements.append({"Sid": "DenyKeyPolicyChanges", "Effect": "Deny",
                           "Principal": "*", "Action": "kms:PutKeyPolicy", "Resource": "*"})
    policy_id = "sops-enclave-key-policy" + (f" {key_arn}" if key_arn else "")
    return {"Version": POLICY_VERSION, "Id": policy_id, "Statement": statements}


def policy_for_dev(*, role_arn: str, admin_arns: Iterable[str], key_arn: str | None = None,
                   account: str | None = None, files: Mapping[str, bytes] | None = None,
                   pin_pcr1: bool = True, pin_pcr2: bool = True,
                   **options: Any) -> dict[str, Any]:
    """:func:`key_policy` for the dev measurement (software NSM) of ``files``, by default
    the installed code (``image.measure.default_bundle()``). Dev only: such a policy matches
    documents signed by the dev CA, which real KMS never accepts."""
    from .measure import default_bundle, measure_bundle

    pcrs = measure_bundle(default_bundle() if files is None else files)
    return key_policy(pcrs[0], pcr1=pcrs[1] if pin_pcr1 else None,
                      pcr2=pcrs[2] if pin_pcr2 else None, role_arn=role_arn,
                      admin_arns=admin_arns, key_arn=key_arn, account=account, **options)
