"""A SOPS key service server: the two RPCs of ``keyservice.proto`` over plaintext HTTP/2.

It answers the real ``sops --keyservice URI`` (and :class:`RemoteKeyService`) with the keys this
process can reach, through a :class:`~sops_enclave.keys.groups.LocalKeyService`: age (every
identity it has, whatever recipient the request names), PGP (``gpg``, ``GNUPGHOME``), AWS
KMS (boto3 credentials), GCP KMS, Azure Key Vault, Vault transit and HuaweiCloud KMS (each
with the credentials of this process's environment). The request carries key identifiers
only; private keys never leave.

Status codes (one-line messages, as ``status.Errorf`` in sops):

* no key / unset or unknown oneof -> ``NOT_FOUND`` "Must provide a key" / "Unknown key type";
* :class:`~sops_enclave.errors.KeyMismatch` (no identity/secret key/KMS access fits) -> ``NOT_FOUND``;
* :class:`~sops_enclave.keys.base.KeyUnavailable` (the key's service is unreachable or
  failing, credentials are missing) -> ``UNKNOWN`` with the key's error text (what sops'
  own server answers for every key error, so the client's report reads the same);
* other :class:`~sops_enclave.errors.SopsError` (bad recipient, gpg cannot encrypt, ...) ->
  ``FAILED_PRECONDITION``; empty plaintext, ciphertext that is not UTF-8 -> ``INVALID_ARGUMENT``;
* ``--prompt`` refused (or no answer) -> ``PERMISSION_DENIED`` "Request rejected by user";
* anything unexpected -> ``INTERNAL`` naming only the exception type.

Logs (logger ``sops_enclave.keyservice``) name the RPC, the peer, the key identifier and the
outcome; never the plaintext, the ciphertext or an identity.

Security: there is no TLS and no authentication, as in sops. Whoever can connect can use the
keys, so TCP defaults to 127.0.0.1 and a unix socket is made mode 0600 (``socket_mode``).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import stat
import sys
import threading
from typing import Callable

from sops_enclave.errors import KeyMismatch, SopsError
from sops_enclave.keys.base import KeyUnavailable
from sops_enclave.keyservice import grpc_modules
from sops_enclave.keyservice._convert import UnsupportedKey, describe, entry_from_key

__all__ = ["serve", "run", "shutdown", "KeyServiceServicer", "DEFAULT_TCP_ADDRESS", "listen_target",
           "tty_confirm"]

log = logging.getLogger("sops_enclave.keyservice")

DEFAULT_TCP_ADDRESS = "127.0.0.1:5000"

#: ``confirm(kind, key_description) -> bool``; kind is "encrypt" or "decrypt".
Confirm = Callable[[str, str], bool]

_prompt_lock = threading.Lock()


def tty_confirm(kind: str, what: str) -> bool:
    """Ask on stderr/stdin, one request at a time, as ``sops keyservice --prompt`` does."""
    with _prompt_lock:
        while True:
            sys.stderr.write(f"\nReceived {kind} request using {what}. Respond to request? (y/n): ")
            sys.stderr.flush()
            line = sys.stdin.readline()
            if not line:  # EOF: nobody to ask
                return False
            answer = line.strip().lower()
            if answer in ("y", "n"):
                return answer == "y"


def _one_line(msg: str, limit: int = 500) -> str:
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= limit else msg[:limit - 3] + "..."


class _Failure(Exception):
    def __init__(self, code_name: str, message: str):
        super().__init__(message)
        self.code_name = code_name
        self.message = _one_line(message)


class KeyServiceServicer:
    """The ``KeyService`` implementation; register with :func:`serve` (or by hand)."""

    def __init__(self, local, prompt: bool = False, confirm: Confirm | None = None):
        _, self._pb, _ = grpc_modules()
        self.local = local
        self.prompt = prompt
        self.confirm = confirm or tty_confirm

    # -- the two RPCs (names fixed by the generated servicer)
    def Encrypt(self, request, context):  # noqa: N802 (gRPC method name)
        return self._call("Encrypt", request, context)

    def Decrypt(self, request, context):  # noqa: N802
        return self._call("Decrypt", request, context)

    # -- shared path
    def _call(self, rpc: str, request, context):
        import grpc

        peer = _peer(context)
        what = describe(request.key) if request.HasField("key") else "no key"
        try:
            result = self._do(rpc, request)
        except _Failure as f:
            log.info("%s from %s with %s: %s (%s)", rpc, peer, what, f.code_name, f.message)
            context.abort(getattr(grpc.StatusCode, f.code_name), f.message)
        log.info("%s from %s with %s: OK", rpc, peer, what)
        return result

    def _do(self, rpc: str, request):
        pb = self._pb
        kind = rpc.lower()
        if not request.HasField("key"):
            raise _Failure("NOT_FOUND", "Must provide a key")
        if rpc == "Encrypt":
            if not request.plaintext:
                raise _Failure("INVALID_ARGUMENT", "empty plaintext")
            enc = ""
        else:
            try:
                enc = request.ciphertext.decode("utf-8")
            except UnicodeDecodeError:
                raise _Failure("INVALID_ARGUMENT", "ciphertext is not UTF-8 text") from None
            if not enc:
                raise _Failure("INVALID_ARGUMENT", "empty ciphertext")
        try:
            entry = entry_from_key(request.key, enc)
        except UnsupportedKey as e:
            raise _Failure("NOT_FOUND", str(e)) from None
        if self.prompt and not self._confirmed(kind, describe(request.key)):
            raise _Failure("PERMISSION_DENIED", "Request rejected by user")
        try:
            if rpc == "Encrypt":
                text = self.local.encrypt(entry, bytes(request.plaintext))
                return pb.EncryptResponse(ciphertext=text.encode("utf-8"))
            return pb.DecryptResponse(plaintext=self.local.decrypt(entry))
        except KeyMismatch as e:
            raise _Failure("NOT_FOUND", str(e) or "no key available for this request") from None
        except KeyUnavailable as e:
            raise _Failure("UNKNOWN", e.message or type(e).__name__) from None
        except SopsError as e:
            raise _Failure("FAILED_PRECONDITION", e.message or type(e).__name__) from None
        except Exception as e:
            # The message of an unexpected error is not vetted: log and return its type only.
            log.debug("%s failed unexpectedly", rpc, exc_info=True)
            raise _Failure("INTERNAL", f"internal error in the key service "
                                       f"({type(e).__name__})") from None

    def _confirmed(self, kind: str, what: str) -> bool:
        try:
            return bool(self.confirm(kind, what))
        except Exception:
            return False


def _peer(context) -> str:
    try:
        return context.peer() or "?"
    except Exception:
        return "?"


def listen_target(network: str, address: str) -> str:
    """The gRPC bind target for sops' ``--network``/``--address`` pair (``tcp`` or ``unix``)."""
    if network == "tcp":
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            raise SopsError(f"listen tcp {address}: missing or bad port in address")
        return address if host else f"[::]:{port}"  # Go's ":5000" means every interface
    if network == "unix":
        if not address:
            raise SopsError("listen unix: empty socket path")
        return "unix:" + address
    raise SopsError(f"listen {network}: unsupported network (use tcp or unix)")


def _prepare_unix_path(path: str) -> None:
    """Refuse a live socket or a non-socket file; remove a stale socket (nobody listening)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SopsError(f"listen unix {path}: bind: address already in use (not a socket)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        os.unlink(path)  # stale: left by a process that died
        return
    finally:
        probe.close()
    raise SopsError(f"listen unix {path}: bind: address already in use")


def _bind_error(network: str, address: str) -> str | None:
    """The OS's reason a bind fails (gRPC's own message does not say), or None."""
    try:
        if network == "unix":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.bind(address)
            os.unlink(address)
        else:
            host, _, port = address.rpartition(":")
            host = host.strip("[]") or "::"
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.create_server((host, int(port)), family=fam):
                pass
    except OSError as e:
        return f"bind: {os.strerror(e.errno) if e.errno else e}"
    return None


def serve(network: str = "tcp", address: str = DEFAULT_TCP_ADDRESS, local=None,
          prompt: bool = False, *, confirm: Confirm | None = None, max_workers: int = 4,
          socket_mode: int | None = 0o600) -> "grpc.Server":  # noqa: F821
    """Start a key service and return the running :class:`grpc.Server` (stop it yourself).

    ``network`` is ``tcp`` (``address`` ``host:port``; port 0 picks a free one) or ``unix``
    (``address`` a socket path). ``local`` defaults to a ``LocalKeyService`` on ``os.environ``.
    The server gets ``keyservice_uri`` (what a client passes to ``--keyservice``, with the real
    port) and ``keyservice_socket`` (the unix socket path or None) attributes.
    Raises :class:`SopsError` when it cannot listen.
    """
    grpc, _, pb2_grpc = grpc_modules()
    from concurrent import futures

    if local is None:
        from sops_enclave.keys.groups import LocalKeyService
        local = LocalKeyService()
    target = listen_target(network, address)
    if network == "unix":
        _prepare_unix_path(address)
    servicer = KeyServiceServicer(local, prompt, confirm)
    # Go's listener does not share ports; gRPC's default SO_REUSEPORT would let a second server
    # silently take half the connections.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers,
                                                    thread_name_prefix="keyservice"),
                         options=[("grpc.so_reuseport", 0)])
    pb2_grpc.add_KeyServiceServicer_to_server(servicer, server)
    try:
        port = server.add_insecure_port(target)
    except Exception as e:  # grpc >= 1.52 raises RuntimeError("Failed to bind ...")
        port, grpc_error = 0, _one_line(str(e))
    else:
        grpc_error = "could not bind"
    if not port:
        server.stop(None)
        raise SopsError(f"listen {network} {address}: "
                        f"{_bind_error(network, address) or grpc_error}")
    if network == "unix":
        if socket_mode is not None:
            os.chmod(address, socket_mode)
        server.keyservice_socket = address
        server.keyservice_uri = "unix://" + os.path.abspath(address)
        server._keyservice_inode = os.lstat(address).st_ino
    else:
        host = address.rpartition(":")[0]
        server.keyservice_socket = None
        server.keyservice_uri = f"tcp://{host}:{port}"
    server.start()
    log.info("Listening on %s", server.keyservice_uri)
    return server


def _remove_socket(server) -> None:
    path = getattr(server, "keyservice_socket", None)
    if not path:
        return
    try:
        st = os.lstat(path)
        if stat.S_ISSOCK(st.st_mode) and st.st_ino == getattr(server, "_keyservice_inode", None):
            os.unlink(path)
    except OSError:
        pass


def shutdown(server, grace: float | None = 1.0) -> None:
    """Stop a server from :func:`serve` and remove its unix socket file (if still ours)."""
    server.stop(grace).wait()
    _remove_socket(server)


def run(network: str = "tcp", address: str = DEFAULT_TCP_ADDRESS, local=None,
        prompt: bool = False, *, stop_event: threading.Event | None = None, **kw) -> int:
    """Serve until SIGINT or SIGTERM (or ``stop_event`` is set), then stop cleanly; returns 0.

    The unix socket file is removed on the way out. Signal handlers are installed only when
    called from the main thread, and restored on return. Other keywords go to :func:`serve`.
    """
    server = serve(network, address, local, prompt, **kw)
    stop = stop_event or threading.Event()
    caught: list[int] = []

    def on_signal(signum, _frame):
        caught.append(signum)
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        while not stop.wait(0.5):
            pass
        if caught:
            log.info("Caught signal %s: shutting down.", signal.Signals(caught[0]).name)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutdown(server)
    return 0
