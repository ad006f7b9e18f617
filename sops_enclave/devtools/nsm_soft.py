"""A software NSM: attestation documents in exactly the Nitro format, signed by a dev CA.

Documents are ``tag 18 [h'a1013822', {}, payload, signature]`` (COSE_Sign1, ES384) with
the payload map ``module_id, digest, timestamp, pcrs, certificate, cabundle, public_key,
user_data, nonce`` in the NSM's order (absent optional fields are CBOR null), PCRs 0-15
present, each 48 bytes, and ``cabundle = [dev root, dev intermediate]``::

    nsm = SoftNSM()                      # dev CA in the default per-user directory
    doc = nsm.attest(public_key=spki_der, user_data=digest)
    verify_attestation(doc, root_fingerprint=nsm.root_fingerprint, pcr_policy=...)

Measurement (what PCR0/1/2 hold; ``ext(d) = SHA384(48 zero bytes || d)``, the Nitro
extend of a fresh register):

* ``bundle archive`` = ``b"sops-enclave-bundle/v1\\n"`` then, for every file sorted by
  its UTF-8 path, ``u32be(len(path)) || path || u64be(len(content)) || content``. Paths
  are relative POSIX paths; modes and mtimes are not measured.
* ``PCR1 = ext(SHA384(BOOT))`` with ``BOOT = b"sops-enclave soft-nsm boot v1\\n"``: the
  stand-in for Nitro's kernel + bootstrap ramdisk; the same on every machine.
* ``PCR2 = ext(SHA384(archive))``: the application, as Nitro's PCR2.
* ``PCR0 = ext(SHA384(BOOT || archive))``: the whole image, as Nitro's PCR0 covers what
  PCR1 and PCR2 cover.
* PCR3-15 are 48 zero bytes (no IAM role or instance id); PCR16-31 may be extended.

So a code change in the bundle changes PCR0 and PCR2, as on Nitro. The dev root is
never trusted by default; verifiers accept it only when given its fingerprint.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from ..receipt.cose import COSE_SIGN1_TAG, ES384_PROTECTED, sign_es384
from ..receipt.dev_root import default_dev_ca_dir
from .dev_ca import DevCA

__all__ = ["SoftNSM", "PCRDescription", "BOOT_MEASUREMENT", "bundle_archive",
           "collect_bundle", "default_bundle", "policy_bundle", "measure_bundle", "extend"]

BOOT_MEASUREMENT = b"sops-enclave soft-nsm boot v1\n"
_ARCHIVE_MAGIC = b"sops-enclave-bundle/v1\n"
_ZERO = bytes(48)
_PLATFORM_PCRS = 16           # 0..15 are owned by the platform and locked, as on Nitro
_MAX_PCRS = 32
_MAX_FIELD = 1024             # the NSM API's CDDL limit for public_key/user_data/nonce


class PCRDescription(NamedTuple):
    """What ``DescribePCR`` returns: whether the register is locked, and its value."""

    lock: bool
    data: bytes


def extend(value: bytes, data: bytes) -> bytes:
    """Nitro PCR extend: ``SHA384(value || data)``."""
    return hashlib.sha384(value + data).digest()


def _check_path(path: str) -> bytes:
    p = PurePosixPath(path)
    if not path or p.is_absolute() or ".." in p.parts or "\0" in path or str(p) != path:
        raise ValueError(f"bundle path must be a normalised relative POSIX path: {path!r}")
    return path.encode("utf-8")


def bundle_archive(files: Mapping[str, bytes]) -> bytes:
    """The deterministic archive that is measured (format in the module docstring)."""
    entries = sorted((_check_path(p), bytes(c)) for p, c in files.items())
    out = [_ARCHIVE_MAGIC]
    for path, content in entries:
        out += [len(path).to_bytes(4, "big"), path, len(content).to_bytes(8, "big"), content]
    return b"".join(out)


def measure_bundle(files: Mapping[str, bytes]) -> dict[int, bytes]:
    """PCR0, PCR1 and PCR2 for a bundle of ``{relative path: content}``."""
    archive = bundle_archive(files)
    return {0: extend(_ZERO, hashlib.sha384(BOOT_MEASUREMENT + archive).digest()),
            1: extend(_ZERO, hashlib.sha384(BOOT_MEASUREMENT).digest()),
            2: extend(_ZERO, hashlib.sha384(archive).digest())}


def collect_bundle(root: str | Path, *, prefix: str = "",
                   exclude: Callable[[PurePosixPath], bool] | None = None) -> dict[str, bytes]:
    """Read every regular file under ``root`` as ``{prefix + relative path: content}``.

    ``__pycache__`` directories and ``*.pyc`` files are always skipped; symlinks are not
    followed.
    """
    root = Path(root)
    out: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in filenames:
            full = Path(dirpath) / name
            rel = PurePosixPath(full.relative_to(root).as_posix())
            if name.endswith(".pyc") or full.is_symlink() or not full.is_file():
                continue
            if exclude is not None and exclude(rel):
                continue
            out[prefix + str(rel)] = full.read_bytes()
    return out


def default_bundle() -> dict[str, bytes]:
    """The installed ``sops_enclave`` package sources, as ``sops_enclave/...`` paths, plus the
    enclave program (``sops_enclave.enclave``, from the top-level ``enclave/`` directory)."""
    pkg = Path(__file__).resolve().parent.parent
    files = collect_bundle(pkg, prefix="sops_enclave/")
    try:
        import sops_enclave.enclave as prog
    except ImportError:
        return files
    prog_dir = Path(prog.__file__).resolve().parent
    if prog_dir != pkg / "enclave":
        files.update(collect_bundle(prog_dir, prefix="sops_enclave/enclave/"))
    return files


def policy_bundle(enclave_policy: bytes | None) -> dict[str, bytes]:
    """:func:`default_bundle` plus the enclave policy at its bundle path (when given): what
    the dev enclave started with ``--enclave-policy FILE`` measures, as a Nitro image built
    with that policy measures it."""
    from ..pack.enclave_policy import BUNDLE_PATH

    files = default_bundle()
    if enclave_policy is not None:
        files[BUNDLE_PATH] = bytes(enclave_policy)
    return files


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
