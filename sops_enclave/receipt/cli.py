"""The ``attestation`` and ``verify`` subcommands (argparse handlers).

Wire them into the main parser with ``register(subparsers)``; each subparser sets
``func`` to a handler ``handler(args) -> int`` that prints one line per check and
returns 0 when every check passed, 1 otherwise. Unreadable files, bad policy files and
flags that cannot work together raise :class:`~sops_enclave.errors.SopsError` subclasses
with a one-line message. Text output escapes control characters (see :mod:`.safe_text`);
``--json`` leaves escaping to ``json.dumps`` and holds receipt strings only when the
signature verified::

    p = argparse.ArgumentParser(); sp = p.add_subparsers(); register(sp)
    args = p.parse_args(["attestation", "doc.cose", "--allow-debug"])
    rc = args.func(args)
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

from ..errors import ConfigError, ConflictingParameters, CouldNotReadInputFile
from .attestation import (
    MAX_DOCUMENT_SIZE, STEPS, AttestationDocument, AttestationError, At, check_debug,
    check_pcrs, parse_attestation, verify_attestation_signature)
from .builder import receipt_path
from .dev_root import local_dev_root_fingerprint
from .errors import ReceiptError
from .git_check import SubjectPathError, repo_toplevel, subject_name
from .nitro_root import AWS_NITRO_ROOT_G1_SHA256, normalize_fingerprint
from .pcr_policy import PCRPolicy, parse_pcr_assignment
from .policy import ReceiptPolicy, check_ref, parse_time
from .safe_text import escape
from .verifier import MAX_RECEIPT_SIZE, RECEIPT_STEPS, VerifiedReceipt, verify_receipt

__all__ = ["register", "cmd_attestation", "cmd_verify"]

_WIDTH = 22


def _arg_pcr(text: str) -> str:
    try:
        parse_pcr_assignment(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _arg_at(text: str) -> At:
    if text in ("doc", "now"):
        return text  # type: ignore[return-value]
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected doc, now or an ISO-8601 time, got {text!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _arg_time(text: str) -> datetime:
    try:
        return parse_time(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _arg_ref(text: str) -> str:
    try:
        return check_ref(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _arg_fingerprint(text: str) -> str:
    try:
        return normalize_fingerprint(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def register(subparsers: Any) -> None:
    """Add the ``attestation`` and ``verify`` subcommands to an argparse subparsers object."""
    a = subparsers.add_parser(
        "attestation", help="verify a raw Nitro attestation document and print its fields",
        description="Verify a raw attestation document (COSE_Sign1 bytes) offline: "
                    "signature, certificate chain to the pinned root, debug mode, PCRs.")
    a.add_argument("doc", metavar="DOC", help="file holding the raw document")
    a.add_argument("--pcr", action="append", default=[], type=_arg_pcr, metavar="N=HEX",
                   help="require PCR N to equal HEX (repeatable)")
    a.add_argument("--at", default="doc", type=_arg_at, metavar="doc|now|ISO-8601",
                   help="when the certificates must be valid (default: the document's "
                        "own timestamp)")
    a.add_argument("--root-fingerprint", default=AWS_NITRO_ROOT_G1_SHA256,
                   type=_arg_fingerprint, metavar="HEX",
                   help="SHA-256 of the pinned root certificate (default: AWS Nitro "
                        "Enclaves Root-G1)")
    a.add_argument("--allow-debug", action="store_true",
                   help="accept a debug-mode document (PCR0 all zeros)")
    a.add_argument("--json", action="store_true", help="print one JSON object")
    a.set_defaults(func=cmd_attestation)

    v = subparsers.add_parser(
        "verify", help="verify an output file against its receipt, offline",
        description="Verify OUTPUT against OUTPUT.receipt.json: attestation, PCR policy, "
                    "binding, DSSE signature, output digest and path, optionally the git "
                    "commit (blobs, reachability, freshness), key sources, enclave policy "
                    "and commit signer.")
    v.add_argument("output", metavar="OUTPUT", help="the output file the receipt is for")
    v.add_argument("--receipt", metavar="PATH", help="receipt file (default OUTPUT"
                   ".receipt.json)")
    g = v.add_mutually_exclusive_group()
    g.add_argument("--policy", metavar="FILE", help="YAML policy file (PCR sets, root, "
                   "host-held keys, signers, enclave policies, ref, not_before)")
    g.add_argument("--pcr", action="append", default=[], type=_arg_pcr, metavar="N=HEX",
                   help="require PCR N to equal HEX (repeatable; PCR0, or PCR1 and PCR2, "
                        "or PCR8 must be among them)")
    v.add_argument("--repo", metavar="DIR", help="the git repository: check the commit, the "
                   "input blobs and that a branch or tag holds the commit; OUTPUT's path is "
                   "taken relative to DIR")
    v.add_argument("--ref", type=_arg_ref, metavar="REF", help="with --repo: the commit must "
                   "be an ancestor of REF (e.g. origin/main)")
    v.add_argument("--not-before", type=_arg_time, metavar="ISO-8601",
                   help="with --repo: the commit's committer time must be at or after this")
    v.add_argument("--subject", metavar="NAME", help="the repository path the receipt must "
                   "name (default: OUTPUT's path relative to --repo or to its git work tree)")
    v.add_argument("--signer", action="append", default=[], metavar="PRINCIPAL|SHA256:FP",
                   help="the commit signer must be this principal or key fingerprint "
                        "(repeatable: any of them)")
    v.add_argument("--enclave-policy", action="append", default=[], metavar="FILE",
                   help="the run must have enforced this enclave policy file (its sha256; "
                        "repeatable: any of them)")
    v.add_argument("--allow-dev", action="store_true",
                   help="accept receipts from the software NSM (dev root)")
    v.add_argument("--allow-unrestricted", action="store_true",
                   help="accept a dev receipt of a run without an enclave policy")
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.set_defaults(func=cmd_verify)


def _read(path: str, limit: int | None = None) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read() if limit is None else f.read(limit)
    except OSError as e:
        raise CouldNotReadInputFile(f"{path}: {e.strerror or e}") from None


def _pcr_policy(items: list[str]) -> PCRPolicy | None:
    if not items:
        return None
    try:
        return PCRPolicy.from_assignments(items)
    except ValueError as e:
        raise ConflictingParameters(f"--pcr: {e}") from None


def _line(out: TextIO, text: str) -> None:
    """Write one line with every control character escaped (see :mod:`.safe_text`)."""
    out.write(escape(text) + "\n")


def _print_checks(out: TextIO, steps: tuple[tuple[int, str], ...],
                  results: dict[int, tuple[str, str]], dev: bool) -> None:
    tag = " (dev)" if dev else ""
    for n, name in steps:
        status, detail = results.get(n, ("not run", ""))
        label = f"[{n}] {name} ".ljust(_WIDTH, ".")
        _line(out, f"{label} {status}{tag}{': ' + detail if detail else ''}")


def _checks_json(steps: tuple[tuple[int, str], ...],
                 results: dict[int, tuple[str, str]]) -> list[dict[str, Any]]:
    return [{"step": n, "name": name, "status": results.get(n, ("not run", ""))[0],
             "detail": results.get(n, ("", ""))[1]} for n, name in steps]


def _doc_fields(doc: AttestationDocument) -> dict[str, Any]:
    def hx(b: bytes | None) -> str | None:
        return None if b is None else b.hex()
    return {"module_id": doc.module_id, "timestamp": doc.timestamp.isoformat(),
            "timestamp_ms": doc.timestamp_ms, "digest": doc.digest, "tagged": doc.tagged,
            "pcrs": {str(k): v.hex() for k, v in doc.pcrs.items()},
            "root_fingerprint": doc.root_fingerprint, "cabundle_length": len(doc.cabundle),
            "public_key": hx(doc.public_key), "user_data": hx(doc.user_data),
            "nonce": hx(doc.nonce)}


def _attestation_detail(doc: AttestationDocument, step: int, args: argparse.Namespace,
                        when: str) -> str:
    if step == 1:
        return f"{'tagged' if doc.tagged else 'untagged'} COSE_Sign1, ES384, {len(doc.raw)} bytes"
    if step == 2:
        return f"module {doc.module_id}, {len(doc.pcrs)} PCRs"
    if step == 3:
        return f"{len(doc.cabundle) + 1} certificates, EC P-384"
    if step == 4:
        return ("AWS Nitro Enclaves Root-G1" if args.root_fingerprint ==
                AWS_NITRO_ROOT_G1_SHA256 else f"pinned root {args.root_fingerprint[:16]}...")
    if step == 5:
        return f"valid at {when}"
    if step == 6:
        return "ES384 over the payload as received"
    if step == 7:
        return "debug document accepted (--allow-debug)" if doc.is_debug else "PCR0 not zero"
    return ""


def cmd_attestation(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Handler of ``attestation``: verify one raw document and print checks and fields."""
    out = out or sys.stdout
    raw = _read(args.doc, MAX_DOCUMENT_SIZE + 1)
    policy = _pcr_policy(args.pcr)
    dev = args.root_fingerprint != AWS_NITRO_ROOT_G1_SHA256
    results: dict[int, tuple[str, str]] = {}
    doc: AttestationDocument | None = None
    error: AttestationError | None = None
    when = "the document's timestamp"
    try:
        doc = parse_attestation(raw)
        when = (doc.timestamp if args.at == "doc" else
                datetime.now(timezone.utc) if args.at == "now" else args.at).isoformat()
        verify_attestation_signature(doc, root_fingerprint=args.root_fingerprint, at=args.at)
        check_debug(doc, allow_debug=args.allow_debug)
        if policy is not None:
            check_pcrs(doc, policy)
    except AttestationError as e:
        error = e
    last = error.step if error else len(STEPS) + 1
    for n, _ in STEPS:
        if n < last and doc is not None:
            results[n] = ("ok", _attestation_detail(doc, n, args, when))
    if error is not None:
        results[error.step] = ("FAILED", error.reason)
    elif policy is None:
        results[8] = ("skipped", "no --pcr given")
    else:
        results[8] = ("ok", f"PCR {','.join(str(i) for i in sorted(policy.allowed[0]))} match")
    if args.json:
        obj = {"ok": error is None, "dev": dev, "checks": _checks_json(STEPS, results),
               "document": _doc_fields(doc) if doc is not None else None}
        out.write(json.dumps(obj, indent=2) + "\n")
        return 0 if error is None else 1
    _print_checks(out, STEPS, results, dev)
    if doc is not None:
        f = _doc_fields(doc)
        _line(out, "fields:" if error is None else "fields (NOT verified):")
        for key in ("module_id", "timestamp", "digest", "root_fingerprint",
                    "public_key", "user_data", "nonce"):
            _line(out, f"  {key}: {f[key] if f[key] is not None else '(none)'}")
        for k, v in f["pcrs"].items():
            _line(out, f"  pcr{k}: {v}")
    tag = " (dev)" if dev else ""
    _line(out, f"attestation verified{tag}" if error is None else
          f"attestation NOT verified{tag}: check [{error.step}] {error.check} failed")
    return 0 if error is None else 1


def _policy_for(args: argparse.Namespace) -> ReceiptPolicy:
    """The policy file (or ``--pcr``) with the command-line requirements added. A
    requirement given both in the file and as a flag is an error, not a silent merge."""
    fields: dict[str, Any] = {}
    if args.policy:
        text = _read(args.policy, 1024 * 1024)
        try:
            policy = ReceiptPolicy.from_yaml(text)
        except ValueError as e:
            raise ConfigError(f"{args.policy}: {e}") from None
    else:
        pcrs = _pcr_policy(args.pcr)
        try:
            policy = ReceiptPolicy(pcrs=pcrs)
        except ValueError as e:
            raise ConflictingParameters(f"--pcr: {e}") from None
    digests = tuple(hashlib.sha256(_read(f)).hexdigest() for f in args.enclave_policy)
    for flag, key, value in (("--ref", "ref", args.ref),
                             ("--not-before", "not_before", args.not_before),
                             ("--signer", "signers", tuple(args.signer)),
                             ("--enclave-policy", "enclave_policy_sha256", digests)):
        if not value:
            continue
        if getattr(policy, key):
            raise ConflictingParameters(f"{flag} given, and the policy file sets {key}: "
                                        "use one of them")
        fields[key] = value
    if args.allow_unrestricted:
        fields["allow_unrestricted"] = True
    if args.allow_dev and policy.dev_root_fingerprint is None:
        try:
            fp = local_dev_root_fingerprint(environ=os.environ)
        except (OSError, ValueError):
            fp = None  # no local dev CA: a dev receipt then fails its root check
        if fp:
            fields["dev_root_fingerprint"] = fp
    try:
        policy = dataclasses.replace(policy, **fields)
    except ValueError as e:
        raise ConflictingParameters(str(e)) from None
    if args.repo is None and (policy.ref is not None or policy.not_before is not None):
        which = "--ref" if policy.ref is not None else "--not-before"
        raise ConflictingParameters(
            f"{which} (or the policy's ref/not_before) needs --repo DIR: reachability and "
            "commit time are read from a clone, the receipt does not record them")
    return policy


def _expected_subject(args: argparse.Namespace) -> tuple[str, str]:
    """``(name, how)``: the repository path OUTPUT must have in the receipt."""
    if args.subject is not None:
        return args.subject, "--subject"
    if args.repo is not None:
        root, how = args.repo, "--repo"
    else:
        top = repo_toplevel(os.path.dirname(os.path.abspath(args.output)))
        if top is None:
            raise ConflictingParameters(
                f"{escape(args.output)} is not inside a git work tree, so its repository path "
                "cannot be compared with the receipt's subject: pass --repo DIR (the "
                "repository it belongs to) or --subject NAME (the path the receipt must "
                "name, for a file moved on purpose)")
        root, how = str(top), "the git work tree"
    try:
        return subject_name(args.output, root), how
    except SubjectPathError as e:
        # Paths (and where a link leads) may hold anything: escaped for the terminal.
        raise ConflictingParameters(f"{escape(str(e))}; pass --subject NAME to name the "
                                    "repository path the receipt must have") from None


def _statement_json(result: VerifiedReceipt) -> dict[str, Any]:
    st = result.statement
    return {"subject": st.subject_name, "sha256": st.subject_sha256,
            "repository": st.repository, "host_asserted": list(st.host_asserted),
            "commit": st.commit, "manifest": st.manifest_path, "target": st.target,
            "inputs": [dataclasses.asdict(i) for i in st.inputs], "builder": st.builder_id,
            "unrestricted": st.unrestricted,
            "enclave_policy": None if st.unrestricted else {
                "sha256": st.enclave_policy_sha256, "document": st.enclave_policy_document},
            "signer": None if st.signer is None else dataclasses.asdict(st.signer),
            "request_nonce": st.request_nonce}


def cmd_verify(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Handler of ``verify``: check OUTPUT against its receipt and print each step."""
    out = out or sys.stdout
    rpath = args.receipt or receipt_path(args.output)
    output = _read(args.output)
    receipt = _read(rpath, MAX_RECEIPT_SIZE + 1)
    policy = _policy_for(args)
    expected, how = _expected_subject(args)
    result: VerifiedReceipt | None = None
    try:
        result = verify_receipt(receipt, output, policy, allow_dev=args.allow_dev,
                                repo=args.repo, expected_subject=expected)
    except ReceiptError as e:
        results = dict(e.completed)
        results[e.step] = ("FAILED", e.reason)
        dev, summary = e.dev, f"check [{e.step}] {e.check} failed"
    else:
        results = dict(result.details)
        st = result.statement
        dev = result.dev
        asserted = " (host-asserted)" if "uri" in st.host_asserted else ""
        summary = (f"{st.subject_name} from {st.repository}{asserted} @ {st.commit[:12]}, "
                   f"target {st.target}")
    ok = result is not None
    tag = " (dev)" if dev else ""
    if args.json:
        # Receipt strings appear only once verified; json.dumps escapes every control and
        # non-ASCII character.
        obj: dict[str, Any] = {"ok": ok, "dev": dev, "output": args.output, "receipt": rpath,
                               "expected_subject": expected, "subject_from": how,
                               "checks": _checks_json(RECEIPT_STEPS, results)}
        if result is not None:
            obj["statement"] = _statement_json(result)
            obj["attestation"] = _doc_fields(result.attestation)
        out.write(json.dumps(obj, indent=2) + "\n")
        return 0 if ok else 1
    _print_checks(out, RECEIPT_STEPS, results, dev)
    if how == "--subject":
        _line(out, f"note{tag}: the path compared with the receipt was given with "
                   f"--subject: {expected}")
    _line(out, f"receipt verified{tag}: {summary}" if ok else
          f"receipt NOT verified{tag}: {summary}")
    return 0 if ok else 1
