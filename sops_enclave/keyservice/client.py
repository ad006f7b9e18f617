"""A key service client: :class:`RemoteKeyService`, used like ``LocalKeyService``.

``RemoteKeyService("tcp://host:port")`` or ``RemoteKeyService("unix:///abs/path.sock")``
forwards ``encrypt(entry, plaintext) -> enc`` and ``decrypt(entry) -> plaintext`` to a SOPS
key service (``sops keyservice``, ``sops-enclave keyservice`` or any plugin that serves
``/KeyService/Encrypt`` and ``/KeyService/Decrypt``).

URIs are read as sops 3.11 reads ``--keyservice``: for ``tcp`` the URL host (``host:port``) is
dialed directly (no HTTP proxy); for ``unix`` the whole URI goes to gRPC, so
``unix:///abs/path`` and ``unix:relative/path`` work and ``unix://name/path`` does not. The port
is required. Malformed or unsupported URIs raise :class:`SopsError` at construction (sops
instead skips them with a warning, or fails at the first call).

Every failure of a call -- a gRPC status from the server, a server that cannot be reached, a
key type the protocol cannot carry -- raises :class:`KeyServiceError`, which is both a
:class:`KeyMismatch` (so ``get_data_key`` tries the next service or key) and a
:class:`SopsError` (so ``protect_data_key`` does the same). Status errors read as in sops:
``rpc error: code = NotFound desc = ...``; connection failures name the URI.

Nothing here imports ``grpc`` until the first call.
"""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

from sops_enclave.errors import KeyMismatch, SopsError

__all__ = ["RemoteKeyService", "KeyServiceError", "parse_keyservice_uri"]


class KeyServiceError(KeyMismatch, SopsError):
    """A remote key service could not do it; the caller moves on to the next service or key."""


def parse_keyservice_uri(uri: str) -> str:
    """The gRPC channel target for a ``--keyservice`` URI, or :class:`SopsError`."""
    try:
        u = urlsplit(uri)
        port = u.port if u.scheme == "tcp" else None
    except ValueError as e:
        raise SopsError(f"invalid key service URI {uri!r}: {e}") from None
    if u.scheme == "tcp":
        if not u.hostname or port is None:
            raise SopsError(f"invalid key service URI {uri!r}: expected tcp://host:port")
        host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
        return f"dns:///{host}:{port}"
    if u.scheme == "unix":
        if u.netloc:
            raise SopsError(f"invalid key service URI {uri!r}: expected unix:///absolute/path "
                            f"(unix://{u.netloc}/... names a host)")
        if not u.path:
            raise SopsError(f"invalid key service URI {uri!r}: no socket path")
        return uri
    raise SopsError(f"invalid key service URI {uri!r}: the scheme must be tcp or unix "
                    f"(tcp://host:port, unix:///path/to.sock)")


# Go spells status codes in CamelCase in "rpc error: code = X desc = Y".
def _go_code(code) -> str:
    special = {"OK": "OK", "CANCELLED": "Canceled"}
    return special.get(code.name) or "".join(p.capitalize() for p in code.name.split("_"))


class RemoteKeyService:
    """A key service reached over gRPC. Thread-safe; the channel opens on first use."""

    def __init__(self, uri: str, *, timeout: float | None = None):
        self.uri = uri
        self.target = parse_keyservice_uri(uri)
        #: seconds per call; None (the default, as sops) waits as long as the server takes,
        #: e.g. for a human answering ``--prompt``. Unreachable servers fail at once either way.
        self.timeout = timeout
        self._lock = threading.Lock()
        self._channel = None
        self._stub = None
        self._pb = None

    def __repr__(self) -> str:
        return f"RemoteKeyService({self.uri!r})"

    def _connect(self):
        with self._lock:
            if self._stub is None:
                from sops_enclave.keyservice import grpc_modules

                grpc, pb, pb_grpc = grpc_modules()
                self._channel = grpc.insecure_channel(self.target,
                                                      options=[("grpc.enable_http_proxy", 0)])
                self._stub = pb_grpc.KeyServiceStub(self._channel)
                self._pb = pb
            return self._stub, self._pb

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel = self._stub = None

    def __enter__(self) -> "RemoteKeyService":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _key(self, entry, pb):
        from sops_enclave.keyservice._convert import UnsupportedKey, key_from_entry

        try:
            return key_from_entry(entry, pb)
        except UnsupportedKey as e:
            raise KeyServiceError(f"key service {self.uri}: {e}") from None

    def _invoke(self, method, request):
        import grpc

        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            details = (e.details() if hasattr(e, "details") else None) or str(e)
            details = " ".join(str(details).split())
            if code is grpc.StatusCode.UNAVAILABLE:
                raise KeyServiceError(f"failed to connect to key service {self.uri}: "
                                      f"{details}") from None
            if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                raise KeyServiceError(f"key service {self.uri} did not answer within "
                                      f"{self.timeout} s") from None
            name = _go_code(code) if code is not None else "Unknown"
            raise KeyServiceError(f"rpc error: code = {name} desc = {details}") from None

    def encrypt(self, entry, plaintext: bytes) -> str:
        """The ``enc`` string for ``plaintext`` (a data key or a Shamir share) under ``entry``."""
        stub, pb = self._connect()
        req = pb.EncryptRequest(key=self._key(entry, pb), plaintext=bytes(plaintext))
        resp = self._invoke(stub.Encrypt, req)
        try:
            enc = resp.ciphertext.decode("utf-8")
        except UnicodeDecodeError:
            raise KeyServiceError(f"key service {self.uri} returned a ciphertext that is not "
                                  f"text") from None
        if not enc:
            raise KeyServiceError(f"key service {self.uri} returned an empty ciphertext")
        return enc

    def decrypt(self, entry) -> bytes:
        """The data key (or share) protected by ``entry.enc``."""
        stub, pb = self._connect()
        enc = getattr(entry, "enc", None)
        if enc is None and hasattr(entry, "fields"):  # OtherEntry keeps enc among its fields
            enc = entry.fields.get("enc")
        req = pb.DecryptRequest(key=self._key(entry, pb),
                                ciphertext=str(enc or "").encode("utf-8", "surrogateescape"))
        return bytes(self._invoke(stub.Decrypt, req).plaintext)
