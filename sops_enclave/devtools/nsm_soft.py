"""A software NSM: attestation documents in exactly the Nitro format, signed by a dev CA.

Documents are ``tag 18 [h'a1013822', {}, payload, signature]`` (COSE_Sign1, ES384) with
the payload map ``module_id, digest, timestamp, pcrs, certificate, cabundle, public_key,
user_data, nonce`` in the NSM's order (absent optional fields are CBOR null), PCRs 0-15
present, each 48 bytes, and ``cabundle = [dev root, dev intermediate]``::

    nsm = SoftNSM()                      # dev CA in the default per-user directory
    doc = nsm.attest(public_key=spki_der, user_data=digest)
    verify_attestation(doc, root_fingerprint=nsm.root_fingerprint, pcr_policy=...)

PCR0-2 are the dev measurement of the enclave bundle, defined in
:mod:`sops_enclave.image.measure` (what goes into the image and how it is measured);
PCR3-15 are 48 zero bytes (no IAM role or instance id); PCR16-31 may be extended.

So a code change in the bundle changes PCR0 and PCR2, as on Nitro. The dev root is
never trusted by default; verifiers accept it only when given its fingerprint.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from ..image.measure import (BOOT_MEASUREMENT, bundle_archive, collect_bundle,
                             default_bundle, extend, measure_bundle, policy_bundle)
from ..receipt.cose import COSE_SIGN1_TAG, ES384_PROTECTED, sign_es384
from ..receipt.dev_root import default_dev_ca_dir
from .dev_ca import DevCA

__all__ = ["SoftNSM", "PCRDescription", "BOOT_MEASUREMENT", "bundle_archive",
           "collect_bundle", "default_bundle", "policy_bundle", "measure_bundle", "extend"]

_ZERO = bytes(48)
_PLATFORM_PCRS = 16           # 0..15 are owned by the platform and locked, as on Nitro
_MAX_PCRS = 32
_MAX_FIELD = 1024             # the NSM API's CDDL limit for public_key/user_data/nonce


class PCRDescription(NamedTuple):
    """What ``DescribePCR`` returns: whether the register is locked, and its value."""

    lock: bool
    data: bytes


def _optional(name: str, value: bytes | None) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be bytes or None")
    value = bytes(value)
    if len(value) > _MAX_FIELD:
        raise ValueError(f"{name} is {len(value)} bytes; the NSM accepts at most {_MAX_FIELD}")
    return value


class SoftNSM:
    """A stand-in for ``/dev/nsm`` with the same operations and document format.

    ``ca_dir``: the dev CA directory (default: ``$SOPS_ENCLAVE_DEV_CA_DIR``, else
    ``$XDG_STATE_HOME/sops-enclave/dev-ca``, else ``~/.local/state/sops-enclave/dev-ca``);
    created on first use. ``pcrs``: register values to report (missing ones among 0-15
    are zero); by default PCR0-2 measure :func:`default_bundle`. ``clock`` returns an
    aware datetime (tests pin it); ``module_id`` defaults to a fresh dev id.
    """

    #: Receipts built with this NSM are dev receipts (see ``receipt.builder``).
    is_dev = True

    def __init__(self, ca_dir: str | Path | None = None,
                 pcrs: Mapping[int, bytes] | None = None, *,
                 module_id: str | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        self.ca = DevCA.load_or_create(
            Path(ca_dir) if ca_dir is not None else default_dev_ca_dir(os.environ),
            now=self._clock())
        values = dict(measure_bundle(default_bundle()) if pcrs is None else pcrs)
        self._pcrs: dict[int, bytes] = {i: _ZERO for i in range(_PLATFORM_PCRS)}
        for i, v in values.items():
            if not 0 <= int(i) < _MAX_PCRS or len(v) != 48:
                raise ValueError(f"PCR{i}: index must be 0..31 and value 48 bytes")
            self._pcrs[int(i)] = bytes(v)
        self._locked = set(range(_PLATFORM_PCRS))
        self.module_id = module_id or f"i-0de0000000000000d-enc{secrets.token_hex(8)}"

    @property
    def root_fingerprint(self) -> str:
        """SHA-256 (hex) of the dev root: pass it to the verifier to trust this NSM."""
        return self.ca.root_fingerprint

    @property
    def root_pem(self) -> bytes:
        """The dev root certificate, PEM."""
        return self.ca.root_pem

    def describe_pcr(self, index: int) -> PCRDescription:
        """Lock state and value of PCR ``index`` (a never-extended PCR16+ is zero)."""
        if not 0 <= index < _MAX_PCRS:
            raise ValueError(f"PCR index {index} is outside 0..{_MAX_PCRS - 1}")
        return PCRDescription(index in self._locked, self._pcrs.get(index, _ZERO))

    def extend_pcr(self, index: int, data: bytes) -> bytes:
        """Extend an unlocked PCR (16..31) with ``data``; return the new value."""
        if not 0 <= index < _MAX_PCRS:
            raise ValueError(f"PCR index {index} is outside 0..{_MAX_PCRS - 1}")
        if index in self._locked:
            raise PermissionError(f"PCR{index} is locked (ReadOnlyIndex)")
        self._pcrs[index] = extend(self._pcrs.get(index, _ZERO), bytes(data))
        return self._pcrs[index]

    def lock_pcr(self, index: int) -> None:
        """Lock PCR ``index`` against further extends."""
        if not 0 <= index < _MAX_PCRS:
            raise ValueError(f"PCR index {index} is outside 0..{_MAX_PCRS - 1}")
        self._pcrs.setdefault(index, _ZERO)
        self._locked.add(index)

    def get_random(self, n: int) -> bytes:
        """``n`` random bytes from the OS (the NSM's GetRandom)."""
        if n < 0:
            raise ValueError("n must be >= 0")
        return os.urandom(n)

    def attest(self, public_key: bytes | None = None, user_data: bytes | None = None,
               nonce: bytes | None = None) -> bytes:
        """A tagged COSE_Sign1 attestation document carrying the given fields."""
        fields = {"public_key": _optional("public_key", public_key),
                  "user_data": _optional("user_data", user_data),
                  "nonce": _optional("nonce", nonce)}
        now = self._clock()
        leaf_key = ec.generate_private_key(ec.SECP384R1())
        leaf = self.ca.issue_leaf(f"{self.module_id}.dev.sops-enclave", leaf_key.public_key(),
                                  now)
        payload = cbor2.dumps({
            "module_id": self.module_id,
            "digest": "SHA384",
            "timestamp": int(now.timestamp() * 1000),
            "pcrs": dict(sorted(self._pcrs.items())),
            "certificate": leaf.public_bytes(Encoding.DER),
            "cabundle": [self.ca.root_der,
                         self.ca.intermediate_cert.public_bytes(Encoding.DER)],
            **fields,
        })
        signature = sign_es384(leaf_key, ES384_PROTECTED, payload)
        return cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG,
                                         [ES384_PROTECTED, {}, payload, signature]))
