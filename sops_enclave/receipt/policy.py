"""What a receipt verifier accepts: PCR sets, pinned roots, host-held keys.

A policy file is YAML (read with ``yaml.safe_load``; duplicate keys are refused)::

    version: 1
    pcrs:                       # one or more allowed sets; each must match in full
      - {0: "f4d4...", 1: "bcdf...", 2: "d8f1..."}
      - {0: "9a0b...", 1: "bcdf...", 2: "77e3..."}     # the next image, during a rollout
    root_fingerprint: "641a0321..."     # optional; default AWS Nitro Enclaves Root-G1
    dev_root_fingerprint: "f5ce..."     # optional; used only with --allow-dev
    allow_host_keys: false              # optional; default: only dev receipts may use them

PCR values must be quoted strings (an unquoted all-digit hex value would be read as a
number). Example::

    policy = ReceiptPolicy.from_yaml(text)
    policy = ReceiptPolicy(pcrs=PCRPolicy.from_assignments(["0=ab12..."]))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from .nitro_root import AWS_NITRO_ROOT_G1_SHA256, normalize_fingerprint
from .pcr_policy import PCRPolicy

__all__ = ["ReceiptPolicy"]

_KEYS = {"version", "pcrs", "root_fingerprint", "dev_root_fingerprint", "allow_host_keys"}


class _StrictLoader(yaml.SafeLoader):
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
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                              _construct_mapping)


@dataclass(frozen=True)
class ReceiptPolicy:
    """Verification policy. ``pcrs=None`` means none was given: receipt verification
    then fails at its PCR step, because a receipt from an unknown image proves nothing.
    ``allow_host_keys=None`` allows host-held age/PGP keys for dev receipts only."""

    pcrs: PCRPolicy | None = None
    root_fingerprint: str = AWS_NITRO_ROOT_G1_SHA256
    dev_root_fingerprint: str | None = None
    allow_host_keys: bool | None = None

    def __post_init__(self) -> None:
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
        for key in ("root_fingerprint", "dev_root_fingerprint"):
            if data.get(key) is not None:
                if not isinstance(data[key], str):
                    raise ValueError(f"{key} must be a quoted hex string")
                kwargs[key] = data[key]
        return cls(**kwargs)
