"""DEV/TEST STAND-IN, NOT FOR PRODUCTION: an HTTP proxy on 127.0.0.1 that injects KMS faults.

It sits between a KMS client (boto3 on the host, or the dev enclave) and a KMS endpoint
(moto's server, or the attested dev KMS of :class:`~sops_enclave.devtools.devstack.DevStack`)
and, following a *plan*, answers some requests itself instead of forwarding them::

    from sops_enclave.devtools.faulty_proxy import Fault, FaultyProxy

    proxy = FaultyProxy(stack.url, [Fault.throttle(first=2)])
    url = proxy.start()          # AWS_ENDPOINT_URL_KMS=url
    ...
    proxy.counts                 # {"requests": 5, "forwarded": 3, "throttle": 2,
                                 #  "op:Decrypt": 4, "op:Encrypt": 1}
    proxy.stop()

Faults (see :class:`Fault`):

* ``throttle`` -- HTTP 400 ``{"__type": "ThrottlingException", "message": ...}``, what KMS
  answers when a request quota is exceeded (botocore retries it, with a longer backoff);
* ``error`` -- an HTTP 5xx (500 ``KMSInternalException``, 503 ``ServiceUnavailable``, ...);
* ``timeout`` -- read the request, answer nothing for ``seconds`` (longer than the client's
  read timeout), then close the connection;
* ``reset`` -- read the request, then close the socket without a response (with
  ``SO_LINGER`` 0, so the peer sees a TCP reset);
* ``delay`` -- wait ``seconds``, then forward normally (a slow but working KMS).

Each fault applies either to the first ``first`` requests it matches or, with
``first=None``, to every one; ``target`` restricts it to one operation (the
``X-Amz-Target`` header, ``"Decrypt"`` or ``"TrentService.Decrypt"``). The first fault
of the plan that matches and still has budget is applied; otherwise the request is
forwarded unchanged.

Bounds: every wait is at most :data:`MAX_HOLD` seconds and ends early when the proxy is
stopped; :meth:`FaultyProxy.stop` closes every open client connection and waits (bounded)
for the handler threads. It only listens on loopback addresses.
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import threading
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

__all__ = ["Fault", "FaultyProxy", "MAX_HOLD", "KINDS"]

#: Longest a ``timeout`` or ``delay`` fault holds a request, in seconds.
MAX_HOLD = 30.0
#: Fault kinds.
KINDS = ("throttle", "error", "timeout", "reset", "delay")

# Host is forwarded as the client sent it: SigV4 signs it, and the dev KMS checks signatures.
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
               "trailers", "transfer-encoding", "upgrade", "content-length"}
_ERROR_TYPES = {500: "KMSInternalException", 502: "BadGateway", 503: "ServiceUnavailable",
                504: "GatewayTimeout"}
_MAX_BODY = 16 * 1024 * 1024


@dataclass
class Fault:
    """One rule of a plan. Use the constructors: ``Fault.throttle(first=2)``,
    ``Fault.error(503, target="Decrypt")``, ``Fault.timeout(5)``, ``Fault.reset()``,
    ``Fault.delay(2, target="Decrypt")``."""

    kind: str
    first: int | None = None
    target: str | None = None
    status: int = 500
    seconds: float = 0.0
    message: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r} (one of {', '.join(KINDS)})")
        if self.first is not None and self.first < 0:
            raise ValueError("first must be >= 0 or None")
        if self.kind == "error" and not 500 <= self.status <= 599:
            raise ValueError(f"an error fault needs a 5xx status, not {self.status}")
        self.seconds = min(max(float(self.seconds), 0.0), MAX_HOLD)
        if self.target and "." not in self.target:
            self.target = f"TrentService.{self.target}"

    @classmethod
    def throttle(cls, first: int | None = None, target: str | None = None,
                 message: str = "Rate exceeded") -> "Fault":
        return cls("throttle", first, target, status=400, message=message)

    @classmethod
    def error(cls, status: int = 500, first: int | None = None,
              target: str | None = None) -> "Fault":
        return cls("error", first, target, status=status)

    @classmethod
    def timeout(cls, seconds: float = 5.0, first: int | None = None,
                target: str | None = None) -> "Fault":
        return cls("timeout", first, target, seconds=seconds)

    @classmethod
    def reset(cls, first: int | None = None, target: str | None = None) -> "Fault":
        return cls("reset", first, target)

    @classmethod
    def delay(cls, seconds: float, first: int | None = None,
              target: str | None = None) -> "Fault":
        return cls("delay", first, target, seconds=seconds)

    def matches(self, target: str) -> bool:
        return self.target is None or self.target == target


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # not socketserver's 5: concurrent clients are not dropped
    proxy: "FaultyProxy"

    def process_request_thread(self, request, client_address):  # type: ignore[override]
        self.proxy._opened(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.proxy._closed(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = MAX_HOLD + 5  # an idle keep-alive connection is dropped after this

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass

    def _handle(self) -> None:
        self.server.proxy._handle(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle


class FaultyProxy:
    """A fault-injecting HTTP proxy in front of ``upstream_url`` (see the module docstring).

    ``plan``: a :class:`Fault`, an iterable of them, or ``None`` (forward everything).
    """

    def __init__(self, upstream_url: str, plan: Fault | Iterable[Fault] | None = None, *,
                 upstream_timeout: float = 30.0) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream must be an http(s) URL, got {upstream_url!r}")
        self.upstream = upstream_url.rstrip("/")
        self._upstream = parts
        self.upstream_timeout = upstream_timeout
        self._lock = threading.Lock()
        self._plan: list[Fault] = []
        self._used: list[int] = []
        self._counts: Counter[str] = Counter()
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self.set_plan(plan)

    # -- plan and counters --

    def set_plan(self, plan: Fault | Iterable[Fault] | None) -> None:
        """Replace the plan (and restart the ``first`` budgets)."""
        faults = [] if plan is None else [plan] if isinstance(plan, Fault) else list(plan)
        for f in faults:
            if not isinstance(f, Fault):
                raise TypeError(f"a plan holds Fault objects, not {type(f).__name__}")
        with self._lock:
            self._plan = faults
            self._used = [0] * len(faults)

    @property
    def counts(self) -> dict[str, int]:
        """A snapshot: ``requests`` received, ``forwarded``, one counter per fault kind
        applied, and ``op:<Operation>`` per KMS operation (all outcomes)."""
        with self._lock:
            return dict(self._counts)

    def reset_counts(self) -> None:
        with self._lock:
            self._counts.clear()

    def _pick(self, target: str) -> Fault | None:
        with self._lock:
            self._counts["requests"] += 1
            op = target.split(".", 1)[1] if "." in target else (target or "(other)")
            self._counts[f"op:{op}"] += 1
            for i, f in enumerate(self._plan):
                if not f.matches(target):
                    continue
                if f.first is not None and self._used[i] >= f.first:
                    continue
                self._used[i] += 1
                self._counts[f.kind] += 1
                return f
            return None

    # -- lifecycle --

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (loopback only; 0 = a free port); return the URL."""
        if self._server is not None:
            raise RuntimeError("already started")
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the faulty proxy listens on loopback only")
        self._stopping.clear()
        server = _Server((host, port), _Handler)
        server.proxy = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="faulty-proxy", daemon=True)
        self._thread.start()
        bound_host, bound_port = server.server_address[:2]
        self.url = f"http://{bound_host}:{bound_port}"
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        """Stop listening, end held requests, close client connections, join the threads."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        self._stopping.set()
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout)
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in threads:
            t.join(timeout / max(len(threads), 1))

    def __enter__(self) -> "FaultyProxy":
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _opened(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.add(conn)
            self._threads.add(threading.current_thread())

    def _closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.discard(conn)
            self._threads.discard(threading.current_thread())

    # -- request handling --

    def _handle(self, req: _Handler) -> None:
        length = int(req.headers.get("Content-Length") or 0)
        if req.headers.get("Transfer-Encoding") or not 0 <= length <= _MAX_BODY:
            self._error(req, 400, "ValidationException", "faulty proxy: unsupported body")
            req.close_connection = True
            return
        body = req.rfile.read(length) if length else b""
        target = req.headers.get("X-Amz-Target", "")
        fault = self._pick(target)
        kind = fault.kind if fault else None
        if kind == "throttle":
            self._error(req, 400, "ThrottlingException", fault.message or "Rate exceeded")
        elif kind == "error":
            self._error(req, fault.status, _ERROR_TYPES.get(fault.status, "InternalFailure"),
                        f"faulty proxy: injected HTTP {fault.status}")
        elif kind == "timeout":
            self._stopping.wait(fault.seconds)
            self._abort(req)
        elif kind == "reset":
            self._abort(req)
        else:
            if kind == "delay":
                self._stopping.wait(fault.seconds)
                if self._stopping.is_set():
                    self._abort(req)
                    return
            self._forward(req, body)

    def _abort(self, req: _Handler) -> None:
        """Close the connection without an answer; SO_LINGER 0 makes it a TCP reset."""
        req.close_connection = True
        try:
            req.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            req.connection.close()
        except OSError:
            pass

    def _forward(self, req: _Handler, body: bytes) -> None:
        parts = self._upstream
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = cls(parts.hostname, parts.port, timeout=self.upstream_timeout)
        headers = {k: v for k, v in req.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["Content-Length"] = str(len(body))
        try:
            conn.request(req.command, req.path, body=body, headers=headers)
            resp = conn.getresponse()
            status, resp_headers, resp_body = resp.status, resp.getheaders(), resp.read()
        except (OSError, http.client.HTTPException) as e:
            self._error(req, 502, "BadGateway", f"faulty proxy: upstream failed: {e}")
            return
        finally:
            conn.close()
        with self._lock:
            self._counts["forwarded"] += 1
        self._send(req, status, {k: v for k, v in resp_headers if k.lower() not in _HOP_BY_HOP},
                   resp_body)

    @staticmethod
    def _send(req: _Handler, status: int, headers: Mapping[str, str], body: bytes) -> None:
        try:
            req.send_response(status)
            for k, v in headers.items():
                if k.lower() not in ("server", "date"):
                    req.send_header(k, v)
            req.send_header("Content-Length", str(len(body)))
            req.end_headers()
            if req.command != "HEAD":
                req.wfile.write(body)
        except OSError:
            req.close_connection = True

    def _error(self, req: _Handler, status: int, error_type: str, message: str) -> None:
        body = json.dumps({"__type": error_type, "message": message}).encode()
        self._send(req, status, {"Content-Type": "application/x-amz-json-1.1",
                                 "x-amzn-RequestId": str(uuid.uuid4())}, body)
