"""The ``measure`` and ``policy`` subcommands (argparse handlers).

Wire them into the main parser with ``register(subparsers)``; each subparser sets
``func`` to a handler ``handler(args) -> int``. Errors are
:class:`~sops_enclave.errors.SopsError` subclasses with a one-line message::

    p = argparse.ArgumentParser(); sp = p.add_subparsers(); register(sp)
    args = p.parse_args(["measure", "image.eif", "--json"])
    rc = args.func(args)

``measure EIF`` prints the PCRs of an enclave image file as ``nitro-cli describe-eif``
computes them (``--json``: the whole description). ``measure --dev`` prints the dev
measurement of the installed code (what the software NSM reports). ``policy`` prints the
KMS key policy JSON that pins a measurement (:func:`~sops_enclave.image.policy.key_policy`).
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator, TextIO

from ..errors import ConflictingParameters, CouldNotReadInputFile
from .eif import HASH_ALGORITHM, EIFError, EIFMeasurement, describe_eif, parse_eif
from .policy import key_policy

__all__ = ["register", "cmd_measure", "cmd_policy", "dev_measurement"]

_DEV_NOTE = ("dev measurement of the installed code (software NSM), not a Nitro image: "
             "real KMS and verify without --allow-dev will not accept it")


def register(subparsers: Any) -> None:
    """Add the ``measure`` and ``policy`` subcommands to an argparse subparsers object."""
    m = subparsers.add_parser(
        "measure", help="print the PCRs of an enclave image (EIF) or the dev measurement",
        description="Parse an enclave image file and print PCR0/1/2 (and PCR8 when "
                    "signed) as nitro-cli describe-eif computes them, or with --dev the "
                    "software-NSM measurement of the installed code.")
    m.add_argument("eif", nargs="?", metavar="EIF", help="enclave image file")
    m.add_argument("--dev", action="store_true",
                   help="print the dev measurement of the installed code instead")
    m.add_argument("--enclave-policy", metavar="FILE",
                   help="with --dev: measure the code together with this enclave policy, as "
                        "'exec --enclave dev --enclave-policy FILE' runs it")
    m.add_argument("--json", action="store_true", help="print one JSON object")
    m.set_defaults(func=cmd_measure)

    p = subparsers.add_parser(
        "policy", help="print a KMS key policy that pins the enclave measurement",
        description="Print a KMS key policy: admins manage the key, the enclave host role "
                    "may Decrypt/GenerateDataKey only from an attested enclave whose "
                    "ImageSha384 (PCR0) and optional PCR1/PCR2 match, everyone else is "
                    "denied.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pcr0", metavar="HEX", help="PCR0 (ImageSha384), 96 hex digits")
    src.add_argument("--dev", action="store_true",
                     help="pin PCR0/1/2 of the dev measurement of the installed code")
    src.add_argument("--eif", metavar="EIF", help="pin PCR0/1/2 measured from this EIF")
    p.add_argument("--enclave-policy", metavar="FILE",
                   help="with --dev: the enclave policy the dev enclave runs with (it is "
                        "part of the measurement)")
    p.add_argument("--pcr1", metavar="HEX", help="also pin PCR1 (kernel + bootstrap)")
    p.add_argument("--pcr2", metavar="HEX", help="also pin PCR2 (application)")
    p.add_argument("--role", required=True, metavar="ARN", help="enclave host (instance) role")
    p.add_argument("--admin", action="append", required=True, metavar="ARN",
                   help="key administrator (repeatable)")
    p.add_argument("--key-arn", metavar="ARN", help="the KMS key (recorded in the policy Id)")
    p.add_argument("--account", metavar="ID", help="require the key and principals to be in "
                   "this 12-digit account")
    p.add_argument("--no-encrypt", dest="allow_encrypt", action="store_false",
                   help="do not allow the role kms:Encrypt")
    p.add_argument("--lock-policy", action="store_true",
                   help="deny kms:PutKeyPolicy to everyone, admins included (irreversible)")
    p.set_defaults(func=cmd_policy)


@contextmanager
def _mapped(path: str) -> Iterator[Any]:
    """The file's bytes, memory-mapped when possible (EIFs are often hundreds of MB)."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise CouldNotReadInputFile(f"{path}: {e.strerror or e}") from None
    with f:
        mm: mmap.mmap | None = None
        try:
            if os.fstat(f.fileno()).st_size > 0:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            data: Any = mm if mm is not None else f.read()
        except (OSError, ValueError) as e:
            raise CouldNotReadInputFile(f"{path}: {getattr(e, 'strerror', None) or e}"
                                        ) from None
        try:
            yield data
        finally:
            if mm is not None:
                try:
                    mm.close()
                except BufferError:  # a view still referenced somewhere; GC closes it
                    pass


def _measure_file(path: str) -> EIFMeasurement:
    with _mapped(path) as data:
        reason = ""
        try:
            return parse_eif(data)
        except EIFError as e:
            reason = e.message
        # Raised outside the except block so no traceback keeps a view of the mapping.
        raise EIFError(f"{path}: {reason}")


def dev_measurement(enclave_policy: bytes | None = None) -> dict[int, bytes]:
    """PCR0/1/2 of the installed code (with the enclave policy, when given) as the software
    NSM measures it."""
    from .measure import measure_bundle, policy_bundle

    return measure_bundle(policy_bundle(enclave_policy))


def _policy_arg(args: argparse.Namespace) -> tuple[bytes | None, str | None]:
    """The ``--enclave-policy`` file's bytes (checked) and sha256, or ``(None, None)``."""
    path = getattr(args, "enclave_policy", None)
    if not path:
        return None, None
    if not args.dev:
        raise ConflictingParameters("--enclave-policy goes with --dev (a Nitro image's "
                                    "policy is inside it: build it with enclave/build.sh "
                                    "--enclave-policy FILE)")
    import hashlib

    from ..pack.enclave_policy import load_enclave_policy

    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise CouldNotReadInputFile(f"{path}: {e.strerror or e}") from None
    load_enclave_policy(raw, path)
    return raw, hashlib.sha256(raw).hexdigest()


def cmd_measure(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Handler of ``measure``: print PCRs of an EIF (or the dev measurement)."""
    out = out or sys.stdout
    if args.dev and args.eif:
        raise ConflictingParameters("measure: give either an EIF file or --dev, not both")
    if not args.dev and not args.eif:
        raise ConflictingParameters("measure: give an EIF file, or --dev for the dev "
                                    "measurement of the installed code")
    raw, digest = _policy_arg(args)
    if args.dev:
        pcrs = dev_measurement(raw)
        if args.json:
            doc = {"Measurements": {"HashAlgorithm": HASH_ALGORITHM,
                                    **{f"PCR{i}": pcrs[i].hex() for i in (0, 1, 2)}},
                   "Dev": True, "Note": _DEV_NOTE,
                   "EnclavePolicySha256": digest}
            out.write(json.dumps(doc, indent=2) + "\n")
        else:
            out.write(f"# {_DEV_NOTE}\n")
            out.write(f"# enclave policy: {'sha256 ' + digest if digest else 'NONE (unrestricted)'}\n")
            for i in (0, 1, 2):
                out.write(f"PCR{i} {pcrs[i].hex()}\n")
        return 0

    m = _measure_file(args.eif)
    desc = describe_eif(m)
    if args.json:
        out.write(json.dumps(desc, indent=2) + "\n")
    else:
        signed = ("no" if m.pcr8 is None else
                  "yes, signature valid" if m.signature_valid else "yes, SIGNATURE INVALID")
        out.write(f"# EIF version {desc['EifVersion']}, {desc['Architecture']}, "
                  f"{len(m.sections)} sections, CRC ok ({desc['Crc32']}), signed: {signed}\n")
        for name, value in desc["Measurements"].items():
            if name != "HashAlgorithm":
                out.write(f"{name} {value}\n")
    if m.pcr8 is not None and not m.signature_valid:
        sys.stderr.write(f"{args.eif}: the EIF's signature does not verify against its "
                         "signing certificate and PCR0; Nitro will refuse to boot it\n")
        return 1
    return 0


def cmd_policy(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Handler of ``policy``: print the key policy JSON."""
    out = out or sys.stdout
    pcr1, pcr2 = args.pcr1, args.pcr2
    if args.dev or args.eif:
        if pcr1 or pcr2:
            raise ConflictingParameters("policy: --pcr1/--pcr2 come from the measurement "
                                        "with --dev or --eif; do not give them too")
        if args.dev:
            pcrs = dev_measurement(_policy_arg(args)[0])
            pcr0, pcr1, pcr2 = pcrs[0], pcrs[1], pcrs[2]
        else:
            m = _measure_file(args.eif)
            pcr0, pcr1, pcr2 = m.pcr0, m.pcr1, m.pcr2
    else:
        pcr0 = args.pcr0
    policy = key_policy(pcr0, pcr1=pcr1, pcr2=pcr2, role_arn=args.role,
                        admin_arns=args.admin, key_arn=args.key_arn, account=args.account,
                        allow_encrypt=args.allow_encrypt, lock_policy=args.lock_policy)
    out.write(json.dumps(policy, indent=2) + "\n")
    return 0
