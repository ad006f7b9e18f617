"""The Nitro Secure Module (NSM) through ``/dev/nsm``: attestation, PCRs and randomness.

Inside a Nitro Enclave the NSM is a virtio device; the ``nsm`` kernel driver (upstream since
Linux 6.8, ``drivers/misc/nsm.c``; before that the ``nsm.ko`` that nitro-cli puts in the
bootstrap ramdisk) exposes it as ``/dev/nsm`` with exactly one ioctl. Its ABI, from
``include/uapi/linux/nsm.h``::

    #define NSM_MAGIC              0x0A
    #define NSM_REQUEST_MAX_SIZE   0x1000          /* 4 KiB  */
    #define NSM_RESPONSE_MAX_SIZE  0x3000          /* 12 KiB */
    struct nsm_iovec { __u64 addr; __u64 len; };
    struct nsm_raw   { struct nsm_iovec request; struct nsm_iovec response; };   /* 32 bytes */
    #define NSM_IOCTL_RAW  _IOWR(NSM_MAGIC, 0x0, struct nsm_raw)

``_IOWR(type, nr, size)`` with the generic Linux encoding used on x86_64 and arm64 (the two
architectures Nitro runs) is ``(_IOC_READ|_IOC_WRITE) << 30 | size << 16 | type << 8 | nr``,
so ``NSM_IOCTL_RAW = 3 << 30 | 32 << 16 | 0x0A << 8 | 0 = 0xC0200A00``. The AWS reference
client (aws-nitro-enclaves-nsm-api, ``src/driver/mod.rs``) computes the same number with
``request_code_readwrite!(0x0A, 0, size_of::<NsmMessage>())`` over two ``iovec`` slices.

One exchange: the caller puts a CBOR request in ``request`` and an empty buffer in
``response``; the driver copies the request to the device, waits for the answer, copies
``min(response.len, answer length)`` bytes back and writes that length into
``response.len``. **Longer answers are truncated silently**, so this module always offers a
16 KiB buffer (more than the 12 KiB the driver can return) and treats a completely filled
buffer as a truncated answer. The raw ioctl requires ``CAP_SYS_ADMIN``: the enclave program
runs as root.

Messages are serde's externally tagged CBOR of the Rust ``Request``/``Response`` enums
(nsm-api ``src/api/mod.rs``)::

    request                                                   response
    {"Attestation": {"user_data": b|null, "nonce": b|null,    {"Attestation": {"document": b}}
                     "public_key": b|null}}
    {"DescribePCR": {"index": u16}}                           {"DescribePCR": {"lock": bool, "data": b}}
    {"ExtendPCR": {"index": u16, "data": b}}                  {"ExtendPCR": {"data": b}}
    {"LockPCR": {"index": u16}}                               "LockPCR"
    {"LockPCRs": {"range": u16}}                              "LockPCRs"
    "DescribeNSM"                                             {"DescribeNSM": {...}}
    "GetRandom"                                               {"GetRandom": {"random": b}}
                                                              {"Error": "<ErrorCode>"} on failure

``Option::None`` is serialised by serde as CBOR ``null``, so an attestation request always
carries the three keys, in that order; absent ones are ``null`` (``0xf6``).

Example (inside an enclave)::

    nsm = NitroNSM()
    doc = nsm.attest(public_key=spki_der, user_data=digest)   # raw COSE_Sign1 bytes
    key = nsm.get_random(32)
    pcr0 = nsm.describe_pcr(0).data

The interface is the one of :class:`sops_enclave.devtools.nsm_soft.SoftNSM`, so the enclave
program runs unchanged on either. ``ioctl`` is injectable: tests pass a fake device that
reads the request from the ``nsm_raw`` buffer and writes a CBOR answer back, as the driver
does.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import fcntl
import io
import os
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import cbor2

from sops_enclave.errors import SopsError

__all__ = [
    "NitroNSM", "NSMError", "PCRDescription", "NsmIovec", "NsmRaw",
    "NSM_IOCTL_RAW", "NSM_MAGIC", "NSM_REQUEST_MAX_SIZE", "NSM_RESPONSE_MAX_SIZE",
    "RESPONSE_BUFFER_SIZE", "MAX_DOCUMENT_SIZE", "MAX_USER_FIELD", "ERROR_CODES",
    "encode_request", "decode_response", "iowr",
]

# --- the ioctl ABI ------------------------------------------------------------------------

_IOC_NRSHIFT, _IOC_TYPESHIFT, _IOC_SIZESHIFT, _IOC_DIRSHIFT = 0, 8, 16, 30
_IOC_WRITE, _IOC_READ = 1, 2
_IOC_SIZEMASK = (1 << 14) - 1


def iowr(type_: int, nr: int, size: int) -> int:
    """Linux ``_IOWR(type, nr, size)`` in the generic encoding (x86_64, arm64)."""
    if not 0 <= size <= _IOC_SIZEMASK or not 0 <= type_ <= 0xFF or not 0 <= nr <= 0xFF:
        raise ValueError("ioctl fields out of range")
    return (((_IOC_READ | _IOC_WRITE) << _IOC_DIRSHIFT) | (size << _IOC_SIZESHIFT)
            | (type_ << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT))


class NsmIovec(ctypes.Structure):
    """``struct nsm_iovec { __u64 addr; __u64 len; }``."""

    _fields_ = [("addr", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class NsmRaw(ctypes.Structure):
    """``struct nsm_raw { struct nsm_iovec request, response; }`` (32 bytes)."""

    _fields_ = [("request", NsmIovec), ("response", NsmIovec)]


NSM_MAGIC = 0x0A
NSM_IOCTL_RAW = iowr(NSM_MAGIC, 0, ctypes.sizeof(NsmRaw))
assert ctypes.sizeof(NsmRaw) == 32 and NSM_IOCTL_RAW == 0xC0200A00

NSM_REQUEST_MAX_SIZE = 0x1000     # the driver refuses larger requests with EMSGSIZE
NSM_RESPONSE_MAX_SIZE = 0x3000    # the most the driver can return
RESPONSE_BUFFER_SIZE = 0x4000     # what we offer: 16 KiB, as the AWS C SDK does for documents
MAX_DOCUMENT_SIZE = 0x4000        # an attestation document larger than this is refused
MAX_USER_FIELD = 1024             # public_key/user_data/nonce, the API's CDDL limit (as SoftNSM)
_MAX_RANDOM = 1 << 20             # get_random(n) refuses n above 1 MiB (a caller bug)
_PCR_SIZES = (32, 48, 64)         # SHA-256/384/512 banks; Nitro uses SHA-384

#: The NSM's ``ErrorCode`` values (nsm-api ``src/api/mod.rs``).
ERROR_CODES = ("Success", "InvalidArgument", "InvalidIndex", "InvalidResponse",
               "ReadOnlyIndex", "InvalidOperation", "BufferTooSmall", "InputTooLarge",
               "InternalError")


class NSMError(SopsError):
    """The NSM refused a request, or the device or its answer is unusable.

    ``code`` is the NSM ``ErrorCode`` name when the device answered ``{"Error": code}``, and
    otherwise the closest one (``InputTooLarge`` for EMSGSIZE, ``InvalidResponse`` for an
    answer that does not parse, ``InternalError`` for other device failures).
    """

    def __init__(self, message: str, *, code: str = "InternalError", hint: str | None = None):
        super().__init__(message, hint=hint)
        self.code = code


class PCRDescription(NamedTuple):
    """What ``DescribePCR`` returns: whether the register is locked, and its value."""

    lock: bool
    data: bytes


# --- CBOR messages ------------------------------------------------------------------------

_UNIT_REQUESTS = ("DescribeNSM", "GetRandom")


def encode_request(name: str, **fields: Any) -> bytes:
    """CBOR of one NSM request, byte for byte as the Rust client (serde) encodes it.

    Unit requests (``DescribeNSM``, ``GetRandom``) are a bare text string; the others a
    one-entry map ``{name: {field: value, ...}}`` with the fields in the order given.
    """
    if name in _UNIT_REQUESTS:
        if fields:
            raise ValueError(f"{name} takes no fields")
        obj: Any = name
    else:
        obj = {name: dict(fields)}
    data = cbor2.dumps(obj)
    if len(data) > NSM_REQUEST_MAX_SIZE:
        raise NSMError(f"NSM {name} request is {len(data)} bytes; the device accepts at most "
                       f"{NSM_REQUEST_MAX_SIZE}", code="InputTooLarge")
    return data


def _loads_exact(data: bytes) -> Any:
    """Decode exactly one CBOR item that spans all of ``data``."""
    fp = io.BytesIO(data)
    obj = cbor2.CBORDecoder(fp).decode()
    if fp.tell() != len(data):
        raise ValueError(f"{len(data) - fp.tell()} bytes after the CBOR item")
    return obj


def decode_response(data: bytes) -> tuple[str, Any]:
    """Parse an NSM response into ``(variant, body)``; raise :class:`NSMError` on ``Error``.

    A unit response (``"LockPCR"``) gives ``(name, None)``.
    """
    if not data:
        raise NSMError("the NSM returned an empty response", code="InvalidResponse")
    try:
        obj = _loads_exact(bytes(data))
    except Exception as e:  # cbor2 raises several types for malformed or truncated input
        raise NSMError(f"the NSM response is not one well-formed CBOR item ({e})",
                       code="InvalidResponse") from None
    if isinstance(obj, str):
        return obj, None
    if not isinstance(obj, dict) or len(obj) != 1:
        raise NSMError("the NSM response is not a one-entry CBOR map", code="InvalidResponse")
    ((name, body),) = obj.items()
    if not isinstance(name, str):
        raise NSMError("the NSM response variant is not a text string", code="InvalidResponse")
    if name == "Error":
        code = body if isinstance(body, str) else "InternalError"
        if code not in ERROR_CODES:
            raise NSMError(f"the NSM answered with an unknown error {body!r}",
                           code="InvalidResponse")
        raise NSMError(f"the NSM refused the request: {code}", code=code)
    return name, body


def _optional_bytes(name: str, value: bytes | None) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be bytes or None")
    value = bytes(value)
    if len(value) > MAX_USER_FIELD:
        raise ValueError(f"{name} is {len(value)} bytes; the NSM accepts at most "
                         f"{MAX_USER_FIELD}")
    return value


def _u16(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise ValueError(f"{name} must be an integer in 0..65535")
    return value


def _field(body: Any, variant: str, key: str, kind: type) -> Any:
    if not isinstance(body, dict) or not isinstance(body.get(key), kind):
        raise NSMError(f"the NSM {variant} response has no {kind.__name__} {key!r}",
                       code="InvalidResponse")
    return body[key]


# --- the device ---------------------------------------------------------------------------

IoctlFn = Callable[[int, int, Any], Any]


class NitroNSM:
    """``/dev/nsm``, with the interface of the software NSM.

    ``device``: the device node (default ``/dev/nsm``). ``ioctl``: a callable with the
    signature of :func:`fcntl.ioctl` (``ioctl(fd, request, buffer)``), default
    :func:`fcntl.ioctl`; the buffer it gets is an :class:`NsmRaw` whose iovecs point at the
    request and response memory, and the callee updates ``response.len`` in place.

    Thread-safe: one exchange at a time (the driver serialises them as well).
    """

    #: Receipts built with this NSM are Nitro receipts (see ``receipt.builder``).
    is_dev = False

    def __init__(self, device: str = "/dev/nsm", ioctl: IoctlFn | None = None) -> None:
        self.device = device
        self._ioctl: IoctlFn = ioctl if ioctl is not None else fcntl.ioctl
        self._lock = threading.Lock()          # one ioctl at a time
        self._pool_lock = threading.Lock()     # never held across an ioctl
        self._random_pool = bytearray()
        self._fd: int | None = None
        try:
            self._fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NSMError(f"{device} does not exist: this is not a Nitro Enclave",
                           hint="outside an enclave run the dev enclave (--enclave dev), "
                                "which uses the software NSM") from None
        except OSError as e:
            raise NSMError(f"cannot open {device}: {e.strerror}",
                           hint="the enclave program must run as root") from None

    # lifecycle
    def close(self) -> None:
        """Close the device (idempotent)."""
        with self._lock:
            fd, self._fd = getattr(self, "_fd", None), None
        with self._pool_lock:
            self._random_pool = bytearray()
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> NitroNSM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; close() is the way
        try:
            self.close()
        except Exception:
            pass

    # transport
    def _exchange(self, request: bytes) -> bytes:
        """One ioctl: send ``request`` (CBOR), return the response bytes."""
        if len(request) > NSM_REQUEST_MAX_SIZE:
            raise NSMError(f"NSM request is {len(request)} bytes; the device accepts at most "
                           f"{NSM_REQUEST_MAX_SIZE}", code="InputTooLarge")
        req_buf = ctypes.create_string_buffer(request, len(request))
        resp_buf = ctypes.create_string_buffer(RESPONSE_BUFFER_SIZE)
        msg = NsmRaw(NsmIovec(ctypes.addressof(req_buf), len(request)),
                     NsmIovec(ctypes.addressof(resp_buf), RESPONSE_BUFFER_SIZE))
        with self._lock:
            if self._fd is None:
                raise NSMError(f"{self.device} is closed")
            try:
                self._ioctl(self._fd, NSM_IOCTL_RAW, msg)
            except OSError as e:
                raise _ioctl_error(self.device, e) from None
        n = msg.response.len
        if n > RESPONSE_BUFFER_SIZE:
            raise NSMError(f"the NSM driver reported a {n}-byte response for a "
                           f"{RESPONSE_BUFFER_SIZE}-byte buffer", code="InvalidResponse")
        if n == RESPONSE_BUFFER_SIZE:
            # The driver truncates silently; a full buffer means we cannot tell.
            raise NSMError(f"the NSM response filled the whole {RESPONSE_BUFFER_SIZE}-byte "
                           "buffer and may be truncated", code="BufferTooSmall")
        return ctypes.string_at(resp_buf, n)

    def request(self, name: str, **fields: Any) -> tuple[str, Any]:
        """Send one request and return ``(variant, body)`` of the answer.

        Raises :class:`NSMError` for ``{"Error": ...}`` and for an answer of another variant.
        """
        variant, body = decode_response(self._exchange(encode_request(name, **fields)))
        if variant != name:
            raise NSMError(f"the NSM answered {variant!r} to a {name} request",
                           code="InvalidResponse")
        return variant, body

    # operations
    def attest(self, public_key: bytes | None = None, user_data: bytes | None = None,
               nonce: bytes | None = None) -> bytes:
        """The attestation document (raw COSE_Sign1 bytes) carrying the given fields."""
        # serde field order of Request::Attestation: user_data, nonce, public_key.
        _, body = self.request("Attestation",
                               user_data=_optional_bytes("user_data", user_data),
                               nonce=_optional_bytes("nonce", nonce),
                               public_key=_optional_bytes("public_key", public_key))
        doc = _field(body, "Attestation", "document", bytes)
        if not 0 < len(doc) <= MAX_DOCUMENT_SIZE:
            raise NSMError(f"the NSM returned a {len(doc)}-byte attestation document",
                           code="InvalidResponse")
        return bytes(doc)

    def describe_pcr(self, index: int) -> PCRDescription:
        """Lock state and value of PCR ``index``."""
        _, body = self.request("DescribePCR", index=_u16("index", index))
        lock = _field(body, "DescribePCR", "lock", bool)
        data = _field(body, "DescribePCR", "data", bytes)
        if len(data) not in _PCR_SIZES:
            raise NSMError(f"the NSM returned a {len(data)}-byte PCR value",
                           code="InvalidResponse")
        return PCRDescription(lock, bytes(data))

    def extend_pcr(self, index: int, data: bytes) -> bytes:
        """Extend an unlocked PCR (16..31 on Nitro) with ``data``; return the new value."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("data must be bytes")
        _, body = self.request("ExtendPCR", index=_u16("index", index), data=bytes(data))
        value = _field(body, "ExtendPCR", "data", bytes)
        if len(value) not in _PCR_SIZES:
            raise NSMError(f"the NSM returned a {len(value)}-byte PCR value",
                           code="InvalidResponse")
        return bytes(value)

    def lock_pcr(self, index: int) -> None:
        """Lock PCR ``index`` against further extends."""
        self.request("LockPCR", index=_u16("index", index))

    def lock_pcrs(self, range_: int) -> None:
        """Lock PCRs ``0 .. range_-1``."""
        self.request("LockPCRs", range=_u16("range", range_))

    def describe_nsm(self) -> dict[str, Any]:
        """Version, module id, PCR count, locked PCRs and digest of the NSM."""
        _, body = self.request("DescribeNSM")
        if not isinstance(body, dict) or not isinstance(body.get("module_id"), str):
            raise NSMError("the NSM DescribeNSM response has no module_id",
                           code="InvalidResponse")
        return dict(body)

    def get_random(self, n: int) -> bytes:
        """``n`` random bytes from the NSM, asking as many times as needed.

        Each ``GetRandom`` answers with a block of bytes (256 on current hardware); what a
        call does not use is kept for the next call and never handed out twice.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError("n must be an integer >= 0")
        if n > _MAX_RANDOM:
            raise ValueError(f"get_random({n}) asks for more than {_MAX_RANDOM} bytes")
        out = bytearray()
        with self._pool_lock:
            take = min(n, len(self._random_pool))
            out += self._random_pool[:take]
            del self._random_pool[:take]
        while len(out) < n:
            _, body = self.request("GetRandom")
            chunk = _field(body, "GetRandom", "random", bytes)
            if not chunk:
                raise NSMError("the NSM returned no random bytes", code="InvalidResponse")
            need = n - len(out)
            out += chunk[:need]
            if len(chunk) > need:
                with self._pool_lock:
                    self._random_pool += chunk[need:]
        return bytes(out)


def _ioctl_error(device: str, e: OSError) -> NSMError:
    name = _errno.errorcode.get(e.errno or 0, str(e.errno))
    if e.errno == _errno.EMSGSIZE:
        return NSMError(f"{device}: request too large (EMSGSIZE)", code="InputTooLarge")
    if e.errno in (_errno.EPERM, _errno.EACCES):
        return NSMError(f"{device}: ioctl not permitted ({name})",
                        hint="the raw NSM ioctl needs CAP_SYS_ADMIN: run the enclave program "
                             "as root")
    if e.errno in (_errno.ENOTTY, _errno.EINVAL):
        return NSMError(f"{device}: the device rejected NSM_IOCTL_RAW ({name}); "
                        "is it the Nitro Secure Module?")
    return NSMError(f"{device}: NSM ioctl failed ({name}: {e.strerror or e})")
