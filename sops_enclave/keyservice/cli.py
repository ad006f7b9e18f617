"""The ``keyservice`` subcommand: ``sops-enclave keyservice [--network tcp|unix] [--address ADDR]
[--prompt] [--verbose]``, as ``sops keyservice``.

The main CLI calls :func:`register` with its ``add_subparsers()`` object; the parser's
``func`` default is :func:`handler`, which blocks until SIGINT/SIGTERM and returns the exit
code (errors are raised as :class:`~sops_enclave.errors.SopsError`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from sops_enclave.errors import SopsError

__all__ = ["register", "add_arguments", "handler"]

_HELP = "start a SOPS key service server"


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--network", "--net", choices=("tcp", "unix"), default="tcp",
                   help="network to listen on: tcp or unix (default tcp)")
    p.add_argument("--address", "--addr", default=None,
                   help="address to listen on, e.g. '127.0.0.1:5000' (the tcp default) or "
                   "'/tmp/sops.sock' (required with --network unix)")
    p.add_argument("--prompt", action="store_true",
                   help="ask on the terminal before answering each request")
    p.add_argument("--verbose", action="store_true", help="log debug details")
    p.set_defaults(func=handler)
    return p


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``keyservice`` to an ``argparse`` subparsers object; returns the new parser."""
    p = subparsers.add_parser("keyservice", help=_HELP, description=_HELP + ". It serves the "
                              "age, PGP, AWS KMS, GCP KMS, Azure Key Vault, Vault transit and "
                              "HuaweiCloud KMS keys this process can reach to 'sops "
                              "--keyservice URI' over plaintext gRPC (no TLS, no auth).")
    return add_arguments(p)


def _setup_logging(verbose: bool) -> None:
    logger = logging.getLogger("sops_enclave.keyservice")
    if not logger.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("[KEYSERVICE] %(levelname)s %(message)s"))
        logger.addHandler(h)
        logger.propagate = False
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)


def handler(args: argparse.Namespace) -> int:
    network = getattr(args, "network", "tcp") or "tcp"
    address = getattr(args, "address", None)
    if not address:
        if network == "unix":
            raise SopsError("--address is required with --network unix (a socket path)")
        from sops_enclave.keyservice.server import DEFAULT_TCP_ADDRESS
        address = DEFAULT_TCP_ADDRESS
    verbose = bool(getattr(args, "verbose", False))
    _setup_logging(verbose)
    if not verbose:  # gRPC's C core would repeat our bind errors in its own log format
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    from sops_enclave.keys.groups import LocalKeyService
    from sops_enclave.keyservice.server import run

    return run(network, address, LocalKeyService(), prompt=bool(getattr(args, "prompt", False)))
