"""The SOPS key service protocol (gRPC): a server, a client, and the wire messages.

* :mod:`sops_enclave.keyservice.server` serves ``/KeyService/Encrypt`` and
  ``/KeyService/Decrypt`` with a :class:`~sops_enclave.keys.groups.LocalKeyService`, so the
  real ``sops --keyservice URI`` (or another sops-enclave) can use the keys of this process.
* :mod:`sops_enclave.keyservice.client` has :class:`RemoteKeyService`, a drop-in next to
  ``LocalKeyService`` that forwards to a key service at ``tcp://host:port`` or
  ``unix:///abs/path.sock``.
* :mod:`sops_enclave.keyservice.cli` adds the ``keyservice`` subcommand.

Importing this package (or ``client``) does not import ``grpc`` or ``protobuf``; they are
loaded on first use by :func:`grpc_modules`, with an installable hint when missing.
``keyservice_pb2*.py`` are generated from ``keyservice.proto``; see ``README.md`` here for
the exact regeneration command.
"""

from __future__ import annotations

from sops_enclave.errors import SopsError

__all__ = ["grpc_modules"]

_INSTALL_HINT = "pip install 'grpcio>=1.72.2' 'protobuf>=6.30.0'"


def grpc_modules():
    """``(grpc, keyservice_pb2, keyservice_pb2_grpc)``, or a :class:`SopsError` saying what to install."""
    try:
        import grpc
    except ImportError:
        raise SopsError("the key service needs the grpcio package, which is not installed",
                        hint=f"Install it with: {_INSTALL_HINT}") from None
    try:
        from sops_enclave.keyservice import keyservice_pb2, keyservice_pb2_grpc
    except ImportError as e:  # protobuf missing
        raise SopsError(f"the key service cannot load its protocol modules: {e}",
                        hint=f"Install them with: {_INSTALL_HINT}") from None
    except Exception as e:  # protobuf's VersionError, grpc's "generated code needs grpcio>=" check
        raise SopsError(f"the key service cannot load its protocol modules: "
                        f"{' '.join(str(e).split())}", hint=f"Upgrade with: {_INSTALL_HINT}") from None
    return grpc, keyservice_pb2, keyservice_pb2_grpc
