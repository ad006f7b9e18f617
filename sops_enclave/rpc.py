"""Host <-> enclave messages: length-prefixed CBOR frames on a stream socket (pure framing).

A frame is a 4-byte big-endian length followed by that many bytes of one CBOR map. Frames
are capped (:data:`MAX_FRAME`) so a peer cannot make the other side allocate without bound.
The socket is passed in (vsock on Nitro, a unix socket for the dev enclave).
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import cbor2

from sops_enclave.errors import SopsError

__all__ = ["MAX_FRAME", "FrameError", "send_frame", "recv_frame", "encode_frame", "decode_frame"]

#: Largest frame either side accepts (all inputs and outputs of one run travel in one frame).
MAX_FRAME = 64 * 1024 * 1024
PROTOCOL_VERSION = 1


class FrameError(SopsError):
    """A malformed, oversized or truncated frame."""


def encode_frame(msg: dict[str, Any]) -> bytes:
    body = cbor2.dumps(msg)
    if len(body) > MAX_FRAME:
        raise FrameError(f"frame of {len(body)} bytes is larger than the {MAX_FRAME}-byte limit")
    return struct.pack(">I", len(body)) + body


def decode_frame(body: bytes) -> dict[Any, Any]:
    try:
        msg = cbor2.loads(body)
    except Exception as e:  # cbor2 raises several types for malformed input
        raise FrameError(f"malformed CBOR frame: {type(e).__name__}") from None
    if not isinstance(msg, dict):
        raise FrameError("a frame must hold a CBOR map")
    return msg


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise FrameError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def send_frame(sock: socket.socket, msg: dict[str, Any]) -> None:
    sock.sendall(encode_frame(msg))


def recv_frame(sock: socket.socket, max_size: int = MAX_FRAME) -> dict[Any, Any]:
    (n,) = struct.unpack(">I", _recv_exact(sock, 4))
    if n > max_size:
        raise FrameError(f"peer announced a {n}-byte frame; the limit is {max_size}")
    return decode_frame(_recv_exact(sock, n))


def error_frame(err: Exception) -> dict[str, Any]:
    code = getattr(err, "exit_code", 1)
    msg = err.message if isinstance(err, SopsError) else f"{type(err).__name__}"
    return {"ok": False, "error": msg, "exit_code": code}
