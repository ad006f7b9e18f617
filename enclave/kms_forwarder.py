"""Inside the enclave: reach AWS KMS over vsock, with TLS ending in the enclave.

An enclave has no network, only vsock. On the host, ``vsock-proxy 8000
kms.<region>.amazonaws.com 443`` relays a vsock port to KMS; here, this module listens on
``127.0.0.1:443``, and for every TCP connection opens a vsock stream to the parent (CID 3,
port 8000) and copies bytes both ways. ``/etc/hosts`` maps ``kms.<region>.amazonaws.com``
to ``127.0.0.1``, so boto3 connects "to KMS" with its normal HTTPS client: TLS, certificate
verification (botocore's CA bundle, in the image) and SigV4 all happen in the enclave, and the
host sees only TLS records. (``spec/nitro-enclaves.md`` 3.4.)

Several regions: region ``i`` (0-based, in the order given) listens on ``127.0.0.(1+i):443``
and forwards to vsock port ``8000 + i``; the host runs one vsock-proxy per region on those
ports. The enclave's loopback interface is down at boot: :func:`bring_up_loopback` raises it
(the kernel then assigns 127.0.0.1/8 to it), and :func:`ensure_hosts_entries` writes the
host names. ``/etc/hosts`` must be written at boot, not in the Docker image: nitro-cli builds
the root file system with linuxkit, which replaces ``/etc/hosts`` with a fixed file.

As the image's command it runs the enclave program as its child::

    python -m sops_enclave.enclave.kms_forwarder --region eu-west-1 -- \\
        python -m sops_enclave.enclave.app --vsock 5000

and exits with the child's status. Without a command it forwards until stopped.

Vault transit outputs: for every distinct ``HOST:PORT`` among the ``https`` URIs of the
measured enclave policy's ``outputs.hc_vault`` (in the order listed), Vault host ``j`` listens
on ``127.0.1.(1+j):PORT`` and forwards to vsock port ``8100 + j``; the host runs
``vsock-proxy 8100+j HOST PORT``. TLS to Vault also ends in the enclave (with the policy's
``hc_vault_ca``). The routes come from the policy in the image, never from the host.

The forwarder itself is transport-neutral (:class:`Forwarder` takes a ``connect`` callable),
so tests run it against a TCP or unix-socket stand-in for the vsock-proxy.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence

__all__ = ["Forwarder", "Route", "routes_for", "vault_routes", "kms_hostname", "vsock_connector",
           "tcp_connector", "unix_connector", "bring_up_loopback", "ensure_hosts_entries",
           "main", "PARENT_CID", "DEFAULT_VSOCK_PORT"]

PARENT_CID = 3                 # the parent instance, always CID 3 as seen from an enclave
DEFAULT_VSOCK_PORT = 8000      # vsock-proxy's usual port (nitro-enclaves-vsock-proxy.service)
DEFAULT_LISTEN_PORT = 443
VAULT_VSOCK_PORT = 8100        # the first Vault host's vsock port (the next ones +1, +2, ...)
REGIONS_ENV = "SOPS_ENCLAVE_KMS_REGIONS"

_REGION = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-[0-9]+$")

Connect = Callable[[], socket.socket]


def _log(msg: str) -> None:
    print(f"kms-forwarder: {msg}", file=sys.stderr, flush=True)


# --- upstream connectors ------------------------------------------------------------------

def vsock_connector(cid: int = PARENT_CID, port: int = DEFAULT_VSOCK_PORT,
                    timeout: float = 10.0) -> Connect:
    """Connect to ``(cid, port)`` over AF_VSOCK (the host's vsock-proxy)."""
    def connect() -> socket.socket:
        s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        try:
            s.settimeout(timeout)
            s.connect((cid, port))
            s.settimeout(None)
        except BaseException:
            s.close()
            raise
        return s
    return connect


def tcp_connector(host: str, port: int, timeout: float = 10.0) -> Connect:
    """Connect over TCP (a stand-in for vsock in tests and local runs)."""
    def connect() -> socket.socket:
        s = socket.create_connection((host, port), timeout=timeout)
        s.settimeout(None)
        return s
    return connect


def unix_connector(path: str, timeout: float = 10.0) -> Connect:
    """Connect to a unix stream socket (a stand-in for vsock in tests)."""
    def connect() -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(timeout)
            s.connect(path)
            s.settimeout(None)
        except BaseException:
            s.close()
            raise
        return s
    return connect


# --- the byte forwarder -------------------------------------------------------------------

def _shutdown(s: socket.socket, how: int) -> None:
    try:
        s.shutdown(how)
    except OSError:
        pass


def _pump(src: socket.socket, dst: socket.socket, bufsize: int) -> None:
    """Copy ``src`` to ``dst`` until EOF (then half-close ``dst``) or an error (then tear
    both down, which also wakes the pump running the other way)."""
    try:
        while True:
            data = src.recv(bufsize)
            if not data:
                dst.shutdown(socket.SHUT_WR)
                return
            dst.sendall(data)
    except OSError:  # reset, broken pipe, idle timeout
        _shutdown(src, socket.SHUT_RDWR)
        _shutdown(dst, socket.SHUT_RDWR)


class Forwarder:
    """Accept TCP connections on ``listen`` and splice each one to a fresh ``connect()``.

    ``max_connections`` bounds the connections in flight (further clients wait in the
    listen backlog); ``idle_timeout`` (seconds) ends a connection that moves no byte in
    either direction for that long. Two threads per connection.
    """

    def __init__(self, listen: tuple[str, int], connect: Connect, *,
                 max_connections: int = 64, idle_timeout: float = 300.0,
                 bufsize: int = 65536, name: str = "") -> None:
        self.listen = listen
        self._connect = connect
        self._slots = threading.BoundedSemaphore(max_connections)
        self._idle = idle_timeout
        self._bufsize = bufsize
        self._closed = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.name = name or f"{listen[0]}:{listen[1]}"

    def bind(self) -> tuple[str, int]:
        """Open the listening socket; return its address (the port, when 0 was asked)."""
        if self._sock is None:
            self._sock = socket.create_server(self.listen, backlog=128)
        addr = self._sock.getsockname()
        return addr[0], addr[1]

    def start(self) -> tuple[str, int]:
        """Bind and serve in a daemon thread; return the bound address."""
        addr = self.bind()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True,
                                        name=f"forward {self.name}")
        self._thread.start()
        return addr

    def serve_forever(self) -> None:
        sock = self._sock
        if sock is None:
            self.bind()
            sock = self._sock
        assert sock is not None
        while not self._closed.is_set():
            self._slots.acquire()
            try:
                conn, _ = sock.accept()
            except OSError as e:
                self._slots.release()
                if self._closed.is_set():
                    return
                if e.errno in (errno.ECONNABORTED, errno.EINTR, errno.EMFILE, errno.ENFILE):
                    continue
                raise
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        upstream = None
        try:
            try:
                upstream = self._connect()
            except OSError as e:
                _log(f"{self.name}: upstream connect failed: {e}")
                return
            conn.settimeout(self._idle)
            upstream.settimeout(self._idle)
            back = threading.Thread(target=_pump, args=(upstream, conn, self._bufsize),
                                    daemon=True)
            back.start()
            _pump(conn, upstream, self._bufsize)
            back.join()
        finally:
            conn.close()
            if upstream is not None:
                upstream.close()
            self._slots.release()

    def close(self) -> None:
        """Stop accepting (connections in flight finish on their own)."""
        self._closed.set()
        if self._sock is not None:
            _shutdown(self._sock, socket.SHUT_RDWR)
            self._sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)


# --- routes: which region listens where ---------------------------------------------------

class Route:
    """Region ``region`` is reached at ``listen`` and forwarded to vsock ``vsock_port``."""

    def __init__(self, region: str, hostname: str, listen: tuple[str, int],
                 vsock_port: int) -> None:
        self.region, self.hostname, self.listen, self.vsock_port = (
            region, hostname, listen, vsock_port)

    def __repr__(self) -> str:
        return (f"Route({self.hostname} -> {self.listen[0]}:{self.listen[1]} -> "
                f"vsock:{self.vsock_port})")


def kms_hostname(region: str) -> str:
    """The KMS endpoint of ``region`` (``kms.<region>.amazonaws.com``, ``.com.cn`` in China)."""
    if not _REGION.match(region):
        raise ValueError(f"not an AWS region name: {region!r}")
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"kms.{region}.{suffix}"


def routes_for(regions: Sequence[str], *, vsock_port: int = DEFAULT_VSOCK_PORT,
               listen_port: int = DEFAULT_LISTEN_PORT) -> list[Route]:
    """Region ``i`` -> ``127.0.0.(1+i):listen_port`` -> vsock ``vsock_port + i``."""
    if not regions:
        raise ValueError("no KMS region given")
    if len(set(regions)) != len(regions):
        raise ValueError("a region is listed twice")
    if len(regions) > 200:
        raise ValueError("too many regions")
    return [Route(r, kms_hostname(r), (f"127.0.0.{1 + i}", listen_port), vsock_port + i)
            for i, r in enumerate(regions)]


def vault_routes(uris: Sequence[str], *, vsock_port: int = VAULT_VSOCK_PORT) -> list[Route]:
    """Vault host ``j`` (distinct ``HOST:PORT`` of the https ``uris``, in order) ->
    ``127.0.1.(1+j):PORT`` -> vsock ``vsock_port + j``. http URIs get no route: the enclave
    refuses them. A host given as an IP address cannot be mapped in ``/etc/hosts``."""
    import ipaddress
    from urllib.parse import urlsplit

    seen: list[tuple[str, int]] = []
    for uri in uris:
        u = urlsplit(uri)
        if u.scheme != "https" or not u.hostname:
            continue
        try:
            ipaddress.ip_address(u.hostname)
        except ValueError:
            pass
        else:
            raise ValueError(f"Vault at an IP address ({uri}) cannot be reached from the "
                             "enclave: name it by a host name its certificate holds")
        hp = (u.hostname.lower(), u.port or 443)
        if hp not in seen:
            seen.append(hp)
    if len(seen) > 200:
        raise ValueError("too many Vault hosts")
    return [Route("vault", h, (f"127.0.1.{1 + j}", port), vsock_port + j)
            for j, (h, port) in enumerate(seen)]


def _policy_vault_uris(path: str) -> list[str]:
    """The ``outputs.hc_vault`` URIs of the enclave policy at ``path`` (none if the file is
    absent: the enclave program then refuses to start anyway)."""
    from sops_enclave.pack.enclave_policy import load_enclave_policy

    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return []
    return list(load_enclave_policy(raw, path).output_hc_vault)


# --- boot-time set-up ---------------------------------------------------------------------

_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_IFREQ = struct.Struct("16sH22x")   # struct ifreq: name[16] + union (ifr_flags), 40 bytes


def bring_up_loopback(ifname: str = "lo") -> bool:
    """Set ``IFF_UP`` on ``ifname``; return True if it was down. Needs CAP_NET_ADMIN."""
    name = ifname.encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = bytearray(_IFREQ.pack(name, 0))
        fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req)
        _, flags = _IFREQ.unpack(req)
        if flags & _IFF_UP:
            return False
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, _IFREQ.pack(name, flags | _IFF_UP))
        return True


def ensure_hosts_entries(entries: Mapping[str, str], path: str = "/etc/hosts") -> bool:
    """Make ``path`` map each host name to its address; return True if the file changed.

    Lines naming one of the hosts are dropped, other lines are kept; the file is replaced
    atomically.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = []
    names = set(entries)
    kept = [ln for ln in lines
            if not names.intersection(ln.split("#", 1)[0].split()[1:])]
    wanted = kept + [f"{addr}\t{name}" for name, addr in entries.items()]
    if wanted == lines:
        return False
    from sops_enclave.fileio import write_atomic

    write_atomic(path, ("\n".join(wanted) + "\n").encode("utf-8"), mode=0o644)
    return True


# --- command line -------------------------------------------------------------------------

def _run_child(cmd: list[str]) -> int:
    child = subprocess.Popen(cmd)

    def forward(signum: int, _frame: object) -> None:
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    rc = child.wait()
    return rc if rc >= 0 else 128 - rc


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, cmd = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(
        prog="python -m sops_enclave.enclave.kms_forwarder",
        description="Forward 127.0.0.x:443 to the host's vsock-proxy for AWS KMS, then run "
                    "the command given after '--' (if any) and exit with its status.")
    ap.add_argument("--region", action="append", default=[],
                    help=f"KMS region (repeatable; default: ${REGIONS_ENV}, comma-separated)")
    ap.add_argument("--vsock-cid", type=int, default=PARENT_CID)
    ap.add_argument("--vsock-port", type=int, default=DEFAULT_VSOCK_PORT,
                    help="vsock port of the first region (the next regions use +1, +2, ...)")
    ap.add_argument("--listen-port", type=int, default=DEFAULT_LISTEN_PORT)
    ap.add_argument("--vault-vsock-port", type=int, default=VAULT_VSOCK_PORT,
                    help="vsock port of the first Vault host of the enclave policy")
    ap.add_argument("--enclave-policy", metavar="FILE",
                    help="the enclave policy whose outputs.hc_vault hosts get routes "
                         "(default: the measured one in the image)")
    ap.add_argument("--hosts-file", default="/etc/hosts")
    ap.add_argument("--no-hosts", action="store_true", help="do not write the hosts file")
    ap.add_argument("--no-loopback", action="store_true", help="do not bring up lo")
    args = ap.parse_args(argv)

    regions = [r for spec in (args.region or [os.environ.get(REGIONS_ENV, "")])
               for r in spec.split(",") if r.strip()]
    regions = [r.strip() for r in regions]
    try:
        routes = routes_for(regions, vsock_port=args.vsock_port, listen_port=args.listen_port)
    except ValueError as e:
        _log(f"{e} (use --region or ${REGIONS_ENV})")
        return 2
    try:
        from sops_enclave.pack.enclave_policy import image_policy_path

        policy = args.enclave_policy or image_policy_path()
        routes += vault_routes(_policy_vault_uris(policy), vsock_port=args.vault_vsock_port)
    except Exception as e:  # noqa: BLE001 - a policy error: one line, then stop
        _log(f"enclave policy: {getattr(e, 'message', e)}")
        return 2
    forwarders: list[Forwarder] = []
    try:
        if not args.no_loopback and bring_up_loopback():
            _log("brought up lo")
        if not args.no_hosts:
            ensure_hosts_entries({r.hostname: r.listen[0] for r in routes}, args.hosts_file)
        for r in routes:
            fw = Forwarder(r.listen, vsock_connector(args.vsock_cid, r.vsock_port),
                           name=r.hostname)
            host, port = fw.start()
            forwarders.append(fw)
            _log(f"{r.hostname} -> {host}:{port} -> vsock {args.vsock_cid}:{r.vsock_port}")
    except OSError as e:
        _log(f"set-up failed: {e}")
        for fw in forwarders:
            fw.close()
        return 1
    try:
        if cmd:
            return _run_child(cmd)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        threading.Event().wait()
        return 0
    finally:
        for fw in forwarders:
            fw.close()


if __name__ == "__main__":
    raise SystemExit(main())
