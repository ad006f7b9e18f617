"""What a receipt verifier accepts: PCR sets, roots, host-held keys, enclave policy, commit.

A policy file is YAML (read with ``yaml.safe_load``; duplicate keys are refused)::

    version: 1
    pcrs:                       # one or more allowed sets; each must match in full
      - {0: "f4d4...", 1: "bcdf...", 2: "d8f1..."}
      - {0: "9a0b...", 1: "bcdf...", 2: "77e3..."}     # the next image, during a rollout
    root_fingerprint: "641a0321..."     # optional; default AWS Nitro Enclaves Root-G1
    dev_root_fingerprint: "f5ce..."     # optional; used only with --allow-dev
    allow_host_keys: false              # optional; default: only dev receipts may use them
    allow_unrestricted: false           # optional; dev receipts of runs without an enclave
                                        # policy (AWS ones are always refused)
    signers: ["release@example.com", "SHA256:uV3q..."]   # optional; the commit signer must
                                        # be one of these (principal or key fingerprint)
    enclave_policy_sha256: ["9f86..."]  # optional; the enclave policy must be one of these
    ref: refs/heads/main                # optional, needs --repo: the commit is an ancestor
    not_before: 2025-01-01T00:00:00Z    # optional, needs --repo: committed at or after this

Every allowed PCR set must pin an image (PCR0, or PCR1 and PCR2, or PCR8). PCR values and
digests must be quoted strings (an unquoted all-digit hex value would be read as a
number). Example::

    policy = ReceiptPolicy.from_yaml(text)
    policy = ReceiptPolicy(pcrs=PCRPolicy.from_assignments(["0=ab12..."]))
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

import yaml

from .nitro_root import AWS_NITRO_ROOT_G1_SHA256, normalize_fingerprint
from .pcr_policy import PCRPolicy
from .safe_text import has_unsafe

__all__ = ["ReceiptPolicy", "check_ref", "parse_time"]

_KEYS = {"version", "pcrs", "root_fingerprint", "dev_root_fingerprint", "allow_host_keys",
         "allow_unrestricted", "signers", "enclave_policy_sha256", "ref", "not_before"}
_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_ref(ref: Any) -> str:
    """A git ref or revision to give ``git``: non-empty, not an option, no whitespace or
    control characters. Raise ``ValueError`` otherwise."""
    if not isinstance(ref, str) or not ref or ref.startswith("-") or len(ref) > 1024 \
            or has_unsafe(ref) or any(c.isspace() for c in ref):
        raise ValueError("ref must be a git ref name (not starting with '-', no spaces or "
                         "control characters)")
    return ref


def parse_time(value: Any) -> datetime:
    """ISO-8601 text (``Z`` accepted), a ``datetime`` or a ``date`` -> an aware datetime;
    a time without a zone is UTC, a date is its midnight UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("expected an ISO-8601 time such as 2025-01-31T00:00:00Z") \
                from None
    elif isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if not isinstance(value, datetime):
        raise ValueError("expected an ISO-8601 time such as 2025-01-31T00:00:00Z")
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


# PyYAML has no type stubs here (SafeLoader is Any): subclassing it is intended.
class _StrictLoader(yaml.SafeLoader):  # type: ignore[misc]
    """SafeLoader that refuses duplicate mapping keys."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False
                       ) -> dict[Any, Any]:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    mapping: dict[Any, Any] = yaml.SafeLoader.construct_mapping(loader, node, deep=deep)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                              _construct_mapping)


@dataclass(frozen=True)
class ReceiptPolicy:
    """Verification policy. ``pcrs=None`` means none was given: receipt verification
    then fails at its PCR step, because a receipt from an unknown image proves nothing;
    every allowed set must pin an image (``ValueError`` "no image pinned" otherwise).
    ``allow_host_keys=None`` allows host-held age/PGP keys for dev receipts only.

    ``allow_unrestricted`` accepts dev receipts of runs without an enclave policy.
    ``signers`` (principals or ``SHA256:`` fingerprints) and ``enclave_policy_sha256``
    (hex digests of enclave policy files), when non-empty, list what the receipt's commit
    signer and enclave policy must be. ``ref`` and ``not_before`` need a repository: the
    commit must be an ancestor of ``ref`` and committed at or after ``not_before``."""

    pcrs: PCRPolicy | None = None
    root_fingerprint: str = AWS_NITRO_ROOT_G1_SHA256
    dev_root_fingerprint: str | None = None
    allow_host_keys: bool | None = None
    allow_unrestricted: bool = False
    signers: tuple[str, ...] = ()
    enclave_policy_sha256: tuple[str, ...] = ()
    ref: str | None = None
    not_before: datetime | None = None

    def __post_init__(self) -> None:
        if self.pcrs is not None:
            self.pcrs.require_image_pinned()
        signers = tuple(self.signers)
        if any(not isinstance(x, str) or not x or has_unsafe(x) for x in signers):
            raise ValueError("signers must be non-empty principals or SHA256: fingerprints")
        object.__setattr__(self, "signers", signers)
        digests = []
        for d in self.enclave_policy_sha256:
            if not isinstance(d, str) or not _SHA256.fullmatch(d.strip().lower()):
                raise ValueError("enclave_policy_sha256 entries must be 64 hex digits")
            digests.append(d.strip().lower())
        object.__setattr__(self, "enclave_policy_sha256", tuple(digests))
        if self.ref is not None:
            check_ref(self.ref)
        if self.not_before is not None:
            object.__setattr__(self, "not_before", parse_time(self.not_before))
        object.__setattr__(self, "root_fingerprint",
                           normalize_fingerprint(self.root_fingerprint))
        if self.dev_root_fingerprint is not None:
            object.__setattr__(self, "dev_root_fingerprint",
                               normalize_fingerprint(self.dev_root_fingerprint))

    def host_keys_allowed(self, dev: bool) -> bool:
        """Whether inputs decrypted with host-held keys are acceptable."""
        return dev if self.allow_host_keys is None else self.allow_host_keys

    @classmethod
    def from_yaml(cls, text: str | bytes) -> ReceiptPolicy:
        """Parse a policy file; raise ``ValueError`` describing the first problem."""
        try:
            data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as e:
            raise ValueError(f"not valid YAML: {e}") from None
        except (AttributeError, KeyError, IndexError, TypeError, RecursionError):
            raise ValueError("not valid YAML: a tagged value cannot be read") from None
        if not isinstance(data, dict):
            raise ValueError("a policy file must be a mapping")
        unknown = sorted(str(k) for k in set(data) - _KEYS)
        if unknown:
            raise ValueError(f"unknown policy keys: {', '.join(unknown)}")
        if data.get("version", 1) != 1:
            raise ValueError(f"unsupported policy version {data.get('version')!r}")
        pcrs = None
        if "pcrs" in data:
            sets = data["pcrs"]
            if isinstance(sets, dict):
                sets = [sets]
            if not isinstance(sets, list) or not sets:
                raise ValueError("pcrs must be a list of {index: hex} mappings")
            for s in sets:
                if not isinstance(s, dict) or not all(isinstance(v, str) for v in s.values()):
                    raise ValueError("each PCR set must map indexes to quoted hex strings")
            pcrs = PCRPolicy.from_hex(sets)
        allow = data.get("allow_host_keys")
        if allow is not None and not isinstance(allow, bool):
            raise ValueError("allow_host_keys must be true or false")
        kwargs: dict[str, Any] = {"pcrs": pcrs, "allow_host_keys": allow}
        unrestricted = data.get("allow_unrestricted", False)
        if not isinstance(unrestricted, bool):
            raise ValueError("allow_unrestricted must be true or false")
        kwargs["allow_unrestricted"] = unrestricted
        for key in ("signers", "enclave_policy_sha256"):
            if key in data:
                items = data[key]
                if not isinstance(items, list) or not items \
                        or not all(isinstance(x, str) for x in items):
                    raise ValueError(f"{key} must be a non-empty list of quoted strings")
                kwargs[key] = tuple(items)
        if data.get("ref") is not None:
            kwargs["ref"] = check_ref(data["ref"])
        if data.get("not_before") is not None:
            try:
                kwargs["not_before"] = parse_time(data["not_before"])
            except ValueError as e:
                raise ValueError(f"not_before: {e}") from None
        for key in ("root_fingerprint", "dev_root_fingerprint"):
            if data.get(key) is not None:
                if not isinstance(data[key], str):
                    raise ValueError(f"{key} must be a quoted hex string")
                kwargs[key] = data[key]
        return cls(**kwargs)
