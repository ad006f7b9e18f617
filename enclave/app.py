"""The enclave's serve loop: one pack request per connection, over length-prefixed CBOR frames.

On Nitro it listens on vsock (``--vsock PORT``) and uses the NSM device; as the dev enclave it
listens on a unix socket (``--unix PATH``) and uses the software NSM (``--dev``). Requests carry
short-lived AWS credentials and (dev only) the KMS endpoint; the enclave never reads the host's
environment for keys.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from sops_enclave.rpc import error_frame, recv_frame, send_frame

if TYPE_CHECKING:
    from typing import TypeAlias

    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

    from sops_enclave.pack.enclave_policy import EnclavePolicy

    from .executor import EnclaveNSM

    #: Makes the dev enclave's software NSM from ``(dev CA directory, enclave policy bytes)``.
    DevNSMFactory: TypeAlias = Callable[[str | None, bytes | None], EnclaveNSM]

__all__ = ["RecipientKeys", "serve", "main"]


_session_lock = threading.Lock()
_session: Any = None


def _botocore_session() -> Any:
    """The botocore session the KMS clients come from, with KMS's service model loaded (once
    per process: :func:`serve` loads it while the enclave waits for its first request)."""
    global _session
    with _session_lock:
        if _session is None:
            from botocore.session import get_session

            s = get_session()
            s.get_service_model("kms")
            _session = s
        return _session


def _warm_up() -> None:
    try:
        _botocore_session()
    except Exception:  # noqa: BLE001 - the request that needs KMS reports it
        pass


def _kms_factory(request: dict[str, Any], dev: bool) -> Callable[[str], Any]:
    from botocore.config import Config

    session = _botocore_session()
    aws = request.get("aws") or {}
    endpoint = request.get("kms_endpoint") if dev else None
    clients: dict[str, Any] = {}
    lock = threading.Lock()

    def factory(arn: str) -> Any:
        from sops_enclave.keys.kms import region_of

        region = region_of(arn)
        with lock:
            c = clients.get(region)
            if c is None:
                c = session.create_client(
                    "kms", region_name=region, endpoint_url=endpoint,
                    aws_access_key_id=aws.get("access_key_id"),
                    aws_secret_access_key=aws.get("secret_access_key"),
                    aws_session_token=aws.get("session_token"),
                    config=Config(retries={"mode": "standard", "max_attempts": 5},
                                  max_pool_connections=16))
                clients[region] = c
            return c

    return factory


def _new_recipient_key() -> RSAPrivateKey:
    from .executor import new_recipient_key

    return new_recipient_key()


class RecipientKeys:
    """The RSA keys for KMS ``Recipient``: the next request's key is made while the enclave
    waits for that request (key generation runs outside the GIL, so it costs the request no
    time), and :meth:`take` hands each key out once. One fresh key per request: a key is
    never given to a second request, and a request that finds none ready gets a new one."""

    def __init__(self, make: Callable[[], RSAPrivateKey] | None = None) -> None:
        self._make = make or _new_recipient_key
        self._lock = threading.Lock()
        self._next: Future[RSAPrivateKey] | None = None

    def prepare(self) -> None:
        """Start making the next key in the background (unless one is under way)."""
        with self._lock:
            if self._next is not None:
                return
            fut: Future[RSAPrivateKey] = Future()
            self._next = fut

        def make() -> None:
            try:
                fut.set_result(self._make())
            except BaseException as e:  # noqa: BLE001 - take() makes a key itself
                fut.set_exception(e)

        threading.Thread(target=make, name="recipient-key", daemon=True).start()

    def take(self) -> RSAPrivateKey:
        """The prepared key (waiting for it), else a new one; no later call returns it."""
        with self._lock:
            fut, self._next = self._next, None
        if fut is not None:
            try:
                return fut.result()
            except Exception:  # noqa: BLE001 - made again below
                pass
        return self._make()


def _handle(conn: socket.socket, nsm: EnclaveNSM, dev: bool,
            policy: EnclavePolicy | None = None,
            recipient_keys: RecipientKeys | None = None) -> None:
    from sops_enclave.enclave.executor import run_pack

    try:
        req = recv_frame(conn)
        if req.get("type") != "pack" or req.get("version") != 1:
            raise ValueError("unsupported request")
        ids = []
        if dev and req.get("dev_age_identities"):
            from sops_enclave.keys.age import parse_identities

            ids = parse_identities(req["dev_age_identities"], "the dev request")
        # This request's own key (taken: never handed to another request).
        key = recipient_keys.take() if recipient_keys is not None else None
        resp = run_pack(req, nsm, _kms_factory(req, dev), dev=dev, age_identities=ids,
                        policy=policy, recipient_key=key)
    except Exception as e:  # every failure becomes one error frame, never a traceback
        resp = error_frame(e)
    try:
        send_frame(conn, resp)
    except OSError:
        pass


def serve(sock: socket.socket, nsm: EnclaveNSM, dev: bool, once: bool = False,
          policy: EnclavePolicy | None = None) -> None:
    sock.listen(4)
    keys = RecipientKeys()
    # While waiting for the first request: botocore and KMS's model (about 0.1 s of CPU).
    warm = threading.Thread(target=_warm_up, name="warm-up", daemon=True)
    warm.start()
    while True:
        keys.prepare()  # while waiting for the connection
        conn, _ = sock.accept()
        warm.join()  # no import runs in two threads at once
        with conn:
            _handle(conn, nsm, dev, policy, keys)
        if once:
            return


def _load_policy(path: str | None, dev: bool) -> tuple[EnclavePolicy | None, bytes | None]:
    """``(EnclavePolicy or None, its bytes or None)``. On Nitro the policy is the measured
    file in the image (bundle path ``enclave-policy.yaml`` beside the package) and is
    required; the dev enclave may run without one (an unrestricted run)."""
    from sops_enclave.pack.enclave_policy import image_policy_path, load_enclave_policy

    if path is None and not dev:
        path = image_policy_path()
    if path is None:
        return None, None
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise SystemExit(f"sops-enclave-app: enclave policy {path}: {e.strerror or e}")
    try:
        return load_enclave_policy(raw, path), raw
    except Exception as e:
        raise SystemExit(f"sops-enclave-app: {getattr(e, 'message', e)}")


def main(argv: list[str] | None = None, dev_nsm: DevNSMFactory | None = None) -> int:
    """The enclave's entry point. ``dev_nsm(ca_dir, policy_bytes)`` makes the software NSM:
    only the dev launcher (``python -m sops_enclave.devtools.dev_enclave``) passes it, so this
    program, and the image, never import the dev stand-ins."""
    ap = argparse.ArgumentParser(prog="sops-enclave-app", description=__doc__.split("\n\n")[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--unix", metavar="PATH", help="listen on a unix socket (dev enclave)")
    where.add_argument("--vsock", metavar="PORT", type=int, help="listen on vsock (Nitro)")
    ap.add_argument("--dev", action="store_true", help="use the software NSM (dev enclave)")
    ap.add_argument("--dev-ca-dir", help="directory of the dev CA (software NSM)")
    ap.add_argument("--enclave-policy", metavar="FILE",
                    help="the enclave policy (dev: covered by the dev measurement; default "
                         "on Nitro: the measured one in the image)")
    args = ap.parse_args(argv)
    if args.dev and dev_nsm is None:
        ap.error("--dev: start the dev enclave with python -m sops_enclave.devtools.dev_enclave")
    policy, raw = _load_policy(args.enclave_policy, args.dev)
    nsm: EnclaveNSM
    if args.dev:
        assert dev_nsm is not None  # ap.error above exits otherwise
        nsm = dev_nsm(args.dev_ca_dir, raw)
    else:
        from sops_enclave.enclave.nsm import NitroNSM

        nsm = NitroNSM()
    if args.unix:
        try:
            os.unlink(args.unix)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)
        try:
            # Bind and listen under a temporary name, then rename: the path appears only when
            # a connection can already be accepted (no refused connections at start-up).
            tmp = args.unix + ".starting"
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            sock.bind(tmp)
            sock.listen(4)
            os.rename(tmp, args.unix)
        finally:
            os.umask(old)
    else:
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        sock.bind((socket.VMADDR_CID_ANY, args.vsock))
    # Stop at once, threads and in-flight KMS calls included; nothing to clean up but memory.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
    try:
        serve(sock, nsm, args.dev, policy=policy)
    finally:
        if args.unix:
            try:
                os.unlink(args.unix)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
