"""Offline receipt verification: ``verify_receipt`` runs the numbered checks.

1. parse: the receipt JSON, the DSSE envelope (payloadType must be in-toto JSON) and the
   statement; the signed payload bytes are kept exactly as received. Nothing the receipt
   says is quoted in a detail or error before step 5 has checked the signature.
2. attestation: COSE signature and chain to the pinned root, at the document's own time
   (also for the optional KMS attestation). A non-AWS root is a dev receipt and is only
   accepted with ``allow_dev``.
3. pcrs: debug documents (PCR0 all zeros) refused; PCRs match the policy.
4. binding: the attestation's ``public_key`` is the envelope's signing key, its
   ``user_data`` is ``sha256(PAE(payloadType, payload))`` and, when the statement records
   a ``requestNonce``, its ``nonce`` is those bytes.
5. signature: the DSSE signature verifies with that key.
6. subject: ``sha256(output)`` equals the statement's subject digest and, when
   ``expected_subject`` is given, the subject name equals it (the output's path in the
   repository: a receipt copied next to another output does not vouch for it).
7. repo (optional): the commit exists, the manifest and inputs are the recorded blobs,
   the commit is an ancestor of ``policy.ref`` (or, without one, on some branch or tag)
   and was committed at or after ``policy.not_before``.
8. key sources: inputs decrypted with host-held keys only if the policy allows them.
9. enclave policy: the recorded policy document hashes to its recorded sha256 and is one
   of ``policy.enclave_policy_sha256`` when that is set; an UNRESTRICTED run (no enclave
   policy) is refused for AWS-rooted receipts always and for dev receipts unless
   ``allow_unrestricted``.
10. signer: the commit signer the enclave verified is one of ``policy.signers`` when set.

Example::

    result = verify_receipt(receipt_bytes, output_bytes,
                            ReceiptPolicy(pcrs=PCRPolicy.from_assignments(["0=ab12..."])),
                            expected_subject="deploy/api/prod.enc.json")
    result.statement.commit, result.attestation.module_id
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding, PublicFormat, load_der_public_key)

from .attestation import (
    AttestationDocument, check_debug, check_pcrs, parse_attestation,
    verify_attestation_signature)
from .dsse import PAYLOAD_TYPE_INTOTO, Envelope, b64decode_any, verify_envelope_signature
from .errors import AttestationError, ReceiptError
from .git_check import RepoMismatch, check_reachable, check_repo, commit_time
from .nitro_root import AWS_NITRO_ROOT_G1_SHA256, fingerprint
from .policy import ReceiptPolicy
from .statement import HOST_KEY_SOURCES, Statement, loads_strict_json, parse_statement

__all__ = ["RECEIPT_STEPS", "MAX_RECEIPT_SIZE", "ParsedReceipt", "VerifiedReceipt",
           "parse_receipt", "verify_receipt"]

RECEIPT_STEPS: tuple[tuple[int, str], ...] = (
    (1, "parse"), (2, "attestation"), (3, "pcrs"), (4, "binding"), (5, "signature"),
    (6, "subject"), (7, "repo"), (8, "key sources"), (9, "enclave policy"), (10, "signer"))
_NAME = dict(RECEIPT_STEPS)
MAX_RECEIPT_SIZE = 1024 * 1024
_RECEIPT_KEYS = {"envelope", "attestation", "kms_attestation"}


@dataclass(frozen=True)
class ParsedReceipt:
    """Step 1's result: envelope, statement and attestation bytes, nothing verified."""

    raw: bytes
    envelope: Envelope
    statement: Statement
    attestation: bytes
    kms_attestation: bytes | None


@dataclass(frozen=True)
class VerifiedReceipt:
    """A receipt that passed every check. ``details`` maps each step number to
    ``(status, detail)``; ``dev`` is true when it chains to a non-AWS root."""

    statement: Statement
    attestation: AttestationDocument
    kms_attestation: AttestationDocument | None
    dev: bool
    root_fingerprint: str
    details: Mapping[int, tuple[str, str]]


def parse_receipt(raw: bytes) -> ParsedReceipt:
    """Step 1 alone; raise ``ValueError`` describing what is malformed."""
    if len(raw) > MAX_RECEIPT_SIZE:
        raise ValueError(f"receipt is {len(raw)} bytes, more than {MAX_RECEIPT_SIZE}")
    obj = loads_strict_json(bytes(raw))
    if not isinstance(obj, dict):
        raise ValueError("receipt is not a JSON object")
    unknown = set(obj) - _RECEIPT_KEYS
    if unknown:   # their names are unverified text: counted, never echoed
        raise ValueError(f"{len(unknown)} unknown receipt field(s); allowed: "
                         f"{', '.join(sorted(_RECEIPT_KEYS))}")
    if "envelope" not in obj or "attestation" not in obj:
        raise ValueError("receipt needs 'envelope' and 'attestation'")
    env = Envelope.from_json_obj(obj["envelope"])
    if env.payload_type != PAYLOAD_TYPE_INTOTO:
        raise ValueError(f"payloadType is not {PAYLOAD_TYPE_INTOTO!r}")
    try:
        statement = parse_statement(env.payload)
    except ValueError as e:
        raise ValueError(f"statement: {e}") from None
    try:
        att = b64decode_any(obj["attestation"])
        kms = obj.get("kms_attestation")
        kms_att = None if kms is None else b64decode_any(kms)
    except ValueError as e:
        raise ValueError(f"attestation: {e}") from None
    return ParsedReceipt(bytes(raw), env, statement, att, kms_att)


class _Run:
    def __init__(self) -> None:
        self.details: dict[int, tuple[str, str]] = {}
        self.dev = False

    def ok(self, step: int, detail: str, status: str = "ok") -> None:
        self.details[step] = (status, detail)

    def fail(self, step: int, reason: str,
             cause: AttestationError | None = None) -> ReceiptError:
        return ReceiptError(step, _NAME[step], reason, dev=self.dev, completed=self.details,
                            attestation_error=cause)


def _claims_dev(att: bytes) -> bool:
    try:
        return parse_attestation(att).root_fingerprint != AWS_NITRO_ROOT_G1_SHA256
    except AttestationError:
        return False


def verify_receipt(receipt: bytes, output: bytes, policy: ReceiptPolicy, *,
                   allow_dev: bool = False, allow_unrestricted: bool = False,
                   repo: str | Path | None = None, git: str = "git",
                   expected_subject: str | None = None) -> VerifiedReceipt:
    """Run checks 1-10 on ``receipt`` for the ``output`` bytes; raise :class:`ReceiptError`.

    ``policy.root_fingerprint`` is the pinned root (default AWS); a receipt chaining to
    any other root is a dev receipt, accepted only with ``allow_dev`` and then only if
    its root is ``policy.root_fingerprint`` or ``policy.dev_root_fingerprint``.
    ``expected_subject`` is the output's path relative to the repository root (``None``:
    the name is not checked, only the digest). ``allow_unrestricted`` (or
    ``policy.allow_unrestricted``) accepts a dev receipt of a run without enclave policy.
    ``policy.ref`` and ``policy.not_before`` need ``repo``.

    Details of steps 1-4 and errors raised there hold no string from the receipt's
    statement; later ones do (verified by then, but still to be escaped for a terminal).
    """
    run = _Run()
    # (1) parse: keep the signed bytes as received. No receipt text in the detail: nothing
    # is verified yet.
    try:
        parsed = parse_receipt(receipt)
    except ValueError as e:
        raise run.fail(1, str(e)) from None
    st = parsed.statement
    run.dev = _claims_dev(parsed.attestation)
    run.ok(1, f"{len(parsed.raw)} bytes; statement {len(st.raw)} bytes, {len(st.inputs)} "
              f"input(s); strings shown once the signature is checked")

    # (2) attestation signature and chain, at each document's own time.
    try:
        doc = parse_attestation(parsed.attestation)
    except AttestationError as e:
        raise run.fail(2, str(e), e) from None
    fp = doc.root_fingerprint
    dev = fp != AWS_NITRO_ROOT_G1_SHA256
    run.dev = dev
    if fp == policy.root_fingerprint or (allow_dev and fp == policy.dev_root_fingerprint):
        pinned = fp
    else:
        pinned = policy.root_fingerprint
    if dev and not allow_dev:
        raise run.fail(2, f"the attestation chains to a non-AWS root ({fp[:16]}...): a dev "
                          "receipt; pass allow_dev (--allow-dev) to accept it")
    try:
        verify_attestation_signature(doc, root_fingerprint=pinned, at="doc")
    except AttestationError as e:
        raise run.fail(2, str(e), e) from None
    kms_doc = None
    if parsed.kms_attestation is not None:
        try:
            kms_doc = parse_attestation(parsed.kms_attestation)
            verify_attestation_signature(kms_doc, root_fingerprint=pinned, at="doc")
        except AttestationError as e:
            raise run.fail(2, f"kms_attestation: {e}", e) from None
    root_name = "dev root" if dev else "AWS Nitro Enclaves Root-G1"
    run.ok(2, f"{root_name} {fp[:16]}..., chain valid at {doc.timestamp.isoformat()}"
              + (", KMS attestation too" if kms_doc else ""))

    # (3) PCRs against the policy; debug documents refused.
    try:
        check_debug(doc)
        if policy.pcrs is None:
            raise run.fail(3, "no PCR policy given (use a policy file or --pcr N=HEX): a "
                              "receipt from an unpinned image proves nothing")
        try:
            policy.pcrs.require_image_pinned()
        except ValueError as e:
            raise run.fail(3, str(e)) from None
        matched = check_pcrs(doc, policy.pcrs)
        if kms_doc is not None:
            check_debug(kms_doc)
            check_pcrs(kms_doc, policy.pcrs)
            if any(kms_doc.pcrs.get(i) != doc.pcrs.get(i) for i in (0, 1, 2)):
                raise run.fail(3, "kms_attestation comes from a different image "
                                  "(PCR0-2 differ)")
    except AttestationError as e:
        raise run.fail(3, e.reason, e) from None
    n_sets = len(policy.pcrs.allowed)
    run.ok(3, f"PCRs {','.join(str(i) for i in sorted(policy.pcrs.allowed[matched - 1]))} "
              f"match allowed set {matched} of {n_sets}")

    # (4) public_key, user_data and nonce bind the envelope.
    if doc.public_key is None:
        raise run.fail(4, "the attestation has no public_key")
    try:
        key = load_der_public_key(doc.public_key)
    except (ValueError, TypeError):
        raise run.fail(4, "the attestation's public_key is not a DER public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or \
            not isinstance(key.curve, ec.SECP256R1) or \
            key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) != doc.public_key:
        raise run.fail(4, "the attestation's public_key is not a DER SubjectPublicKeyInfo "
                          "of an ECDSA P-256 key")
    expected = hashlib.sha256(parsed.envelope.pae).digest()
    if doc.user_data is None or not hmac.compare_digest(doc.user_data, expected):
        raise run.fail(4, "the attestation's user_data is not sha256(PAE) of this envelope")
    nonce_note = ""
    if st.request_nonce is not None:
        want = bytes.fromhex(st.request_nonce)
        if doc.nonce is None or not hmac.compare_digest(doc.nonce, want):
            raise run.fail(4, "the attestation's nonce is not the statement's requestNonce")
        nonce_note = f", nonce {st.request_nonce[:16]}... is the request's"
    run.ok(4, f"user_data = sha256(PAE) {expected.hex()[:16]}..., public_key is the "
              "signing key" + nonce_note)

    # (5) DSSE signature with the attested key.
    try:
        verify_envelope_signature(parsed.envelope, key)
    except InvalidSignature as e:
        raise run.fail(5, f"DSSE signature does not verify with the attested key"
                          f"{': ' + str(e) if str(e) else ''}") from None
    run.ok(5, f"ECDSA P-256 over the PAE, key {fingerprint(doc.public_key)[:16]}..., "
              f"module {doc.module_id}")

    # From here on the statement is the enclave's own: its strings may be shown.
    # (6) the output's sha256 is the subject, and its path is the subject's name.
    if expected_subject is not None and expected_subject != st.subject_name:
        raise run.fail(6, f"the receipt is for {st.subject_name}, not for "
                          f"{expected_subject}: a receipt vouches only for the path it names")
    digest = hashlib.sha256(output).hexdigest()
    if not hmac.compare_digest(digest, st.subject_sha256):
        raise run.fail(6, f"output sha256 is {digest[:16]}..., the receipt's subject "
                          f"{st.subject_name} has {st.subject_sha256[:16]}...")
    run.ok(6, f"{st.subject_name} sha256 {digest[:16]}..."
              + ("" if expected_subject is not None else " (path not compared)"))

    # (7) optionally: the commit and blobs are in the given repository, the commit is
    # reachable and fresh enough.
    if repo is None:
        if policy.ref is not None or policy.not_before is not None:
            raise run.fail(7, "the policy requires "
                              + " and ".join(n for n, v in (("ref", policy.ref),
                                                            ("not-before", policy.not_before))
                                             if v is not None)
                              + ", which need a repository (--repo DIR)")
        run.ok(7, "no repository given", status="skipped")
    else:
        try:
            check_repo(repo, st.commit,
                       [(st.manifest_path, st.manifest_blob, None)]
                       + [(i.path, i.git_blob, i.sha256) for i in st.inputs], git=git)
            where = check_reachable(repo, st.commit, policy.ref, git=git)
            when = ""
            if policy.not_before is not None:
                t = commit_time(repo, st.commit, git=git)
                if t < policy.not_before:
                    raise RepoMismatch(f"commit {st.commit[:12]} was committed at "
                                       f"{t.isoformat()}, before the not-before time "
                                       f"{policy.not_before.isoformat()}")
                when = f", committed {t.isoformat()} (not before " \
                       f"{policy.not_before.isoformat()})"
        except RepoMismatch as e:
            raise run.fail(7, str(e)) from None
        run.ok(7, f"commit {st.commit[:12]} has the manifest and {len(st.inputs)} input "
                  f"blob(s) at their paths; {where}{when}")

    # (8) where the data keys came from.
    host = [i.path for i in st.inputs if i.key_source in HOST_KEY_SOURCES]
    if host and not policy.host_keys_allowed(dev):
        raise run.fail(8, f"inputs decrypted with host-held keys: {', '.join(host)} "
                          "(the policy requires attestation-gated KMS keys)")
    run.ok(8, f"{len(st.inputs) - len(host)} input(s) via attestation-gated keys"
              + (f", {len(host)} via host-held keys (allowed)" if host else ""))

    # (9) which enclave policy the run enforced.
    run.ok(9, _enclave_policy_step(run, st, policy, dev,
                                   allow_unrestricted or policy.allow_unrestricted))

    # (10) who signed the commit (the enclave verified the signature).
    signer = st.signer
    if policy.signers:
        if signer is None:
            raise run.fail(10, "the receipt records no commit signer; the policy requires "
                               "one of: " + ", ".join(policy.signers))
        if not any(signer.matches(w) for w in policy.signers):
            raise run.fail(10, f"the commit was signed by {signer.principal} "
                               f"({signer.key_type} {signer.fingerprint}), not by one of: "
                               + ", ".join(policy.signers))
    if signer is None:
        run.ok(10, "no commit signer recorded", status="skipped")
    else:
        run.ok(10, f"{signer.principal} ({signer.key_type} {signer.fingerprint})"
                   + (", allowed" if policy.signers else ""))
    return VerifiedReceipt(st, doc, kms_doc, dev, fp, dict(run.details))


def _enclave_policy_step(run: _Run, st: Statement, policy: ReceiptPolicy, dev: bool,
                         allow_unrestricted: bool) -> str:
    if st.unrestricted:
        if not dev:
            raise run.fail(9, "the run enforced no enclave policy (UNRESTRICTED), yet the "
                              "receipt chains to the AWS root: a Nitro image always holds a "
                              "policy, so this receipt is refused")
        if not allow_unrestricted:
            raise run.fail(9, "the run was UNRESTRICTED (a dev enclave without an enclave "
                              "policy): it did not check the commit signer, the recipients or "
                              "the input keys; pass --allow-unrestricted to accept it")
        if policy.enclave_policy_sha256:
            raise run.fail(9, "the run was UNRESTRICTED, the policy requires enclave policy "
                              + ", ".join(d[:16] + "..." for d in policy.enclave_policy_sha256))
        return "UNRESTRICTED: no enclave policy (accepted: dev receipt, --allow-unrestricted)"
    sha = st.enclave_policy_sha256
    doc = st.enclave_policy_document
    assert sha is not None and doc is not None
    if hashlib.sha256(doc.encode("utf-8")).hexdigest() != sha:
        raise run.fail(9, f"the enclave policy document in the receipt does not hash to its "
                          f"recorded sha256 {sha[:16]}...")
    if policy.enclave_policy_sha256 and sha not in policy.enclave_policy_sha256:
        raise run.fail(9, f"enclave policy sha256 {sha} is not one of the required "
                          + ", ".join(policy.enclave_policy_sha256))
    return (f"sha256 {sha}, {len(doc.encode('utf-8'))} bytes"
            + (", as required" if policy.enclave_policy_sha256 else ""))
