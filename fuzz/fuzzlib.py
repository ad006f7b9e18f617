"""Parser fuzzing, shared part: the targets with their contracts, seeds, and input generators.

Two drivers use this module:

* ``tests/test_fuzz_parsers.py``: bounded Hypothesis runs that are part of ``make test``;
* ``fuzz/fuzz_<target>.py`` (all of them through ``fuzz/run.sh SECONDS``): open-ended runs under
  atheris (coverage-guided libFuzzer), or under a Hypothesis loop when atheris is missing.

A *target* takes one input and calls one parser with it. Each parser has a contract: a list of
exception types that mean "refused, this input is bad" (for most, ``SopsError`` and its
subclasses). Any other exception escapes from the target and is a finding, and so is an input
that takes longer than :data:`TIME_LIMIT` seconds (:class:`Hang`) or needs more than
:data:`MEMORY_LIMIT` bytes of address space (``MemoryError``). Targets return ``"accepted"`` or
``"refused"`` so the drivers can count both.

Known findings (reported, not yet fixed) are listed in :data:`KNOWN`: a failure that matches
one (exception type plus a function in its traceback) is counted under that name instead of
failing the run, so the fuzzers keep looking for new problems. Every entry has a strict xfail
regression test in ``tests/test_fuzz_parsers.py``; when the code is fixed that test passes,
fails as "XPASS(strict)", and the entry is deleted here with the xfail mark. Set
``FUZZ_STRICT=1`` to make known findings fail too.

Test data under ``../shared/vectors`` is read at run time (never copied); without it the seeds
fall back to inputs made here.
"""

from __future__ import annotations

import base64
import contextlib
import faulthandler
import functools
import hashlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))
VECTORS = ROOT.parent / "shared" / "vectors"
REGRESSIONS = ROOT / "tests" / "regressions"

from sops_enclave.errors import SopsError  # noqa: E402

__all__ = ["TARGETS", "KNOWN", "STATS", "Hang", "EmitFailed", "execute", "classify",
           "seeds_for", "TIME_LIMIT", "MEMORY_LIMIT"]

ACCEPTED, REFUSED = "accepted", "refused"
STORE_ERRORS = (ValueError, SopsError)
STRICT = os.environ.get("FUZZ_STRICT", "") not in ("", "0")
#: Seconds one input may take (per target call). libFuzzer's -timeout replaces it under atheris.
TIME_LIMIT = float(os.environ.get("FUZZ_TIME_LIMIT", "10"))
#: Extra address space one input may use (0: no limit). libFuzzer's -rss_limit_mb under atheris.
MEMORY_LIMIT = int(os.environ.get("FUZZ_MEMORY_LIMIT", str(1 << 30)))
#: Off under atheris: libFuzzer owns SIGALRM and the memory limit there.
USE_LIMITS = True


class Hang(BaseException):
    """An input ran longer than :data:`TIME_LIMIT` (a BaseException, so that the
    ``except Exception`` in the code under test cannot swallow it)."""


class EmitFailed(AssertionError):
    """``emit_plain`` raised for a document that ``load_plain`` had accepted."""


# ------------------------------------------------------------------------------ known findings

@dataclass(frozen=True)
class Known:
    key: str
    exc: type | tuple[type, ...]
    where: str          # "file.py:function" somewhere in the exception's traceback
    contains: str = ""  # substring of the message, when the type alone is too broad
    summary: str = ""


KNOWN: tuple[Known, ...] = (
    Known("ini-comment-empty-line", SopsError, "ini.py:_comment_lines", "empty line",
          summary="INI: load_plain accepts ';\\n;\\n[x]' (the section comment becomes "
                  "'\\n;'), emit_plain refuses it: 'comment contains an empty line' (sops 3.11 "
                  "panics there: go-ini indexes line[0])"),
)
#: Found by this fuzzing and fixed since (fuzz/README.md has the inputs); no longer tolerated.
FIXED = ("flatten-unflatten-recursion", "json-emit-recursion", "json-float-overflow",
         "metadata-tz-offset", "metadata-crypt-rule-regex", "config-path-regex",
         "config-any-recursion", "config-int-digits", "manifest-int-digits",
         "config-alias-bomb", "cipher-time-utf8", "cipher-enc-regex-backtracking",
         "receipt-json-recursion", "manifest-template-amplification",
         "yaml-alias-scalar-amplification", "manifest-yaml-tag-constructor")


def _chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _where(exc: BaseException) -> set[str]:
    out = set()
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        out.add(f"{Path(code.co_filename).name}:{code.co_name}")
        tb = tb.tb_next
    return out


def classify(exc: BaseException) -> Known | None:
    """The known finding ``exc`` is an instance of, or None for a new one."""
    for e in _chain(exc):
        where = None
        for k in KNOWN:
            if isinstance(e, k.exc) and k.contains in str(e):
                where = where if where is not None else _where(e)
                if k.where in where:
                    return k
    return None


# ------------------------------------------------------------------------------ running one input

@dataclass
class Stats:
    examples: int = 0
    accepted: int = 0
    refused: int = 0
    seconds: float = 0.0   # inside the target
    wall: float = 0.0      # the whole run, input generation included (set by the drivers)
    known: Counter = field(default_factory=Counter)


STATS: dict[str, Stats] = {}


class _Alarm:
    active = False


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Raise :class:`Hang` in the main thread after ``seconds``, then again every 0.25 s until
    the block is left (a Hang raised inside a finalizer, which Python ignores, is not lost)."""
    if (not USE_LIMITS or seconds <= 0 or not hasattr(signal, "setitimer")
            or threading.current_thread() is not threading.main_thread()):
        yield
        return

    def on_alarm(signum, frame):
        if _Alarm.active:
            raise Hang(f"no result after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    _Alarm.active = True
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.25)
    # Backstop for C code that never returns to the interpreter: dump stacks and exit.
    faulthandler.dump_traceback_later(seconds * 6 + 30, exit=True)
    try:
        yield
    finally:
        while True:
            try:
                _Alarm.active = False
                signal.setitimer(signal.ITIMER_REAL, 0)
                break
            except Hang:  # fired between the end of the block and here
                continue
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, old)


def _vm_size() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _memory_limit(extra: int):
    try:
        import resource
    except ImportError:
        resource = None
    vm = _vm_size() if resource is not None and USE_LIMITS and extra > 0 else None
    if vm is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = vm + extra
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft != resource.RLIM_INFINITY and soft <= limit:
        yield
        return
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def execute(name: str, fn: Callable[..., str], *args: Any) -> str:
    """Run ``fn(*args)`` (a target) under the time and memory limits and count the outcome.

    Returns ``"accepted"``, ``"refused"`` or ``"known:<key>"``; raises for a new finding.
    """
    stats = STATS.setdefault(name, Stats())
    t0 = time.perf_counter()
    try:
        with _time_limit(TIME_LIMIT), _memory_limit(MEMORY_LIMIT):
            outcome = fn(*args)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:
        known = None if STRICT else classify(e)
        if known is None:
            raise
        stats.known[known.key] += 1
        return f"known:{known.key}"
    finally:
        stats.examples += 1
        stats.seconds += time.perf_counter() - t0
    if outcome == ACCEPTED:
        stats.accepted += 1
    else:
        stats.refused += 1
    return outcome


def _call(allowed: tuple[type, ...], fn: Callable, *args: Any, **kw: Any) -> tuple[bool, Any]:
    """(True, result), or (False, exc) when ``fn`` raised one of ``allowed``; anything else
    propagates."""
    try:
        return True, fn(*args, **kw)
    except allowed as e:
        return False, e


# ------------------------------------------------------------------------------ targets

#: The data key of every ENC[...] value made here.
KEY = bytes(range(32))
AAD = b"db:password:"


def enc_value(plaintext: bytes, typ: str, aad: bytes = AAD, iv: bytes | None = None) -> str:
    """An ENC[...] string that authenticates under :data:`KEY` with any plaintext and type."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    iv = iv if iv is not None else hashlib.sha256(plaintext + typ.encode("utf-8", "surrogatepass")).digest()
    ct = AESGCM(KEY).encrypt(iv, plaintext, aad)
    b = lambda x: base64.b64encode(x).decode()  # noqa: E731
    return f"ENC[AES256_GCM,data:{b(ct[:-16])},iv:{b(iv)},tag:{b(ct[-16:])},type:{typ}]"


def cipher_text(s: str, aad: bytes = AAD) -> str:
    """``ValueCipher(key).decrypt(s, aad)``: only SopsError."""
    from sops_enclave.cipher import ValueCipher

    ok, _ = _call((SopsError,), ValueCipher(KEY).decrypt, s, aad)
    return ACCEPTED if ok else REFUSED


def cipher_bytes(data: bytes) -> str:
    """Byte entry point: ``0x00`` + text, or ``0x01`` + type + ``0x00`` + plaintext (an authentic
    value, so that the typed plaintext parsers run); otherwise the bytes are the text."""
    if data[:1] == b"\x01":
        typ, _, pt = data[1:].partition(b"\x00")
        return cipher_text(enc_value(pt, typ.decode("utf-8", "surrogateescape")))
    if data[:1] == b"\x00":
        data = data[1:]
    return cipher_text(data.decode("utf-8", "surrogateescape"))


STORES = ("yaml", "json", "dotenv", "ini", "binary")


def store(fmt: str, data: bytes) -> str:
    """``load_encrypted`` and ``load_plain``: only ValueError/SopsError; then ``emit_plain`` of
    what ``load_plain`` accepted: no exception at all."""
    from sops_enclave.formats import get_store

    s = get_store(fmt)
    _call(STORE_ERRORS, s.load_encrypted, data)
    ok, docs = _call(STORE_ERRORS, s.load_plain, data)
    if not ok:
        return REFUSED
    try:
        s.emit_plain(docs)
    except Exception as e:
        raise EmitFailed(f"{fmt} emit_plain raised {type(e).__name__} for a document that "
                         f"load_plain accepted: {e}") from e
    return ACCEPTED


def metadata_tree(tree: Any) -> str:
    """``parse_metadata(tree)``: only SopsError."""
    from sops_enclave.metadata import parse_metadata

    ok, _ = _call((SopsError,), parse_metadata, tree)
    return ACCEPTED if ok else REFUSED


def metadata_bytes(data: bytes) -> str:
    return metadata_tree(tree_from_bytes(data))


def config(data: bytes) -> str:
    """``load_config`` then ``creation_rule_for``: only SopsError."""
    from sops_enclave.config import load_config

    ok, cfg = _call((SopsError,), load_config, data, "/x/.sops.yaml")
    if not ok:
        return REFUSED
    ok1, _ = _call((SopsError,), cfg.creation_rule_for, "/x/a.yaml")
    ok2, _ = _call((SopsError,), cfg.creation_rule_for, "/x/sub/b.enc.json",
                   {"env": "prod"})
    return ACCEPTED if ok1 or ok2 else REFUSED


def _exists(path: str) -> bool:
    return zlib.crc32(path.encode("utf-8", "surrogatepass")) % 3 != 0


def manifest(data: bytes) -> str:
    """``load_manifest`` then ``plan()`` (all, with an ``exists`` callback, by target) and
    ``describe``: only SopsError."""
    from sops_enclave.pack.manifest import load_manifest

    ok, m = _call((SopsError,), load_manifest, data)
    if not ok:
        return REFUSED
    ok, plans = _call((SopsError,), m.plan)
    if ok:
        m.describe(plans)
    _call((SopsError,), m.plan, exists=_exists)
    if m.outputs:
        _call((SopsError,), m.plan, [m.outputs[-1].target])
        _call((SopsError,), m.plan, [m.outputs[0].target, "no/such/target"])
    return ACCEPTED


def attestation(data: bytes) -> str:
    """``parse_attestation`` and ``verify_attestation`` (AWS root; the document's own root, at
    its time and now, with a PCR policy): only SopsError."""
    from sops_enclave.receipt.attestation import parse_attestation, verify_attestation
    from sops_enclave.receipt.nitro_root import fingerprint
    from sops_enclave.receipt.pcr_policy import PCRPolicy

    _call((SopsError,), verify_attestation, data)
    ok, doc = _call((SopsError,), parse_attestation, data)
    if not ok:
        return REFUSED
    own = fingerprint(doc.cabundle[0])
    policy = PCRPolicy([dict(doc.pcrs), {0: bytes(48)}])
    ok, _ = _call((SopsError,), verify_attestation, data, root_fingerprint=own,
                  pcr_policy=policy, allow_debug=True)
    _call((SopsError,), verify_attestation, data, root_fingerprint=[own], at="now")
    return ACCEPTED if ok else REFUSED


@functools.cache
def cms_key():
    """The KMS sample's test key when ../shared is there, else a fresh RSA-2048 key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    p = VECTORS / "cms" / "enclaver_TEST_ONLY_rsa2048_private_key.pk8.der"
    if p.is_file():
        return serialization.load_der_private_key(p.read_bytes(), None)
    return rsa.generate_private_key(65537, 2048)


def cms(data: bytes) -> str:
    """``open_ciphertext_for_recipient(data, key)``: only SopsError (CMSError)."""
    from sops_enclave.cms import open_ciphertext_for_recipient

    ok, _ = _call((SopsError,), open_ciphertext_for_recipient, data, cms_key())
    return ACCEPTED if ok else REFUSED


@dataclass
class ReceiptKit:
    nsm: Any
    key: Any
    output: bytes
    policy: Any
    receipt: bytes
    receipt_with_kms: bytes


_KIT_DIRS: list[str] = []


def _cleanup() -> None:
    for d in _KIT_DIRS:
        shutil.rmtree(d, ignore_errors=True)


@functools.cache
def receipt_kit() -> ReceiptKit:
    """A software NSM (dev CA in a temporary directory), a genuine receipt and its policy."""
    import atexit

    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from sops_enclave.devtools.nsm_soft import SoftNSM, measure_bundle
    from sops_enclave.receipt import (InputRecord, KMSKeyUse, KMSRecipient, MergeConflict,
                                      OutputRecipients, PCRPolicy, ReceiptFacts, ReceiptPolicy,
                                      build_receipt)

    ca = os.environ.get("FUZZ_CA_DIR")  # the atheris runs keep one (libFuzzer skips atexit)
    if not ca:
        tmp = tempfile.mkdtemp(prefix="sops-enclave-fuzz-ca-")
        _KIT_DIRS.append(tmp)
        atexit.register(_cleanup)
        ca = str(Path(tmp) / "ca")
    nsm = SoftNSM(ca, pcrs=measure_bundle({"enclave/app.py": b"serve()\n"}))
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    facts = ReceiptFacts(
        output_name="deploy/api/prod.enc.json", repository="git+https://example.invalid/r",
        commit="1" * 40, manifest_path=".sops-enclave.yaml", manifest_blob="2" * 40,
        target="api/prod",
        inputs=[InputRecord("secrets/a.enc.yaml", "3" * 40, "4" * 64),
                InputRecord("secrets/b.enc.yaml", "5" * 64, "6" * 64, "host-age")],
        kms_keys=[KMSKeyUse("arn:aws:kms:eu-west-1:111122223333:key/k1", "req-1",
                            ("secrets/a.enc.yaml",), {"env": "prod"})],
        recipients=OutputRecipients(kms=(KMSRecipient("arn:aws:kms:eu-west-1:111122223333:"
                                                      "key/out", {"service": "api"}),),
                                    age=("age1examplerecipient",)),
        conflicts=[MergeConflict("db", ("secrets/a.enc.yaml", "secrets/b.enc.yaml"),
                                 "secrets/b.enc.yaml")],
        started_on=now, finished_on=now + timedelta(seconds=3), invocation_id="fuzz")
    output = b'{"db":"ENC[AES256_GCM,data:out,iv:1]","sops":{"version":"3.11.0"}}\n'
    key = ec.generate_private_key(ec.SECP256R1())
    policy = ReceiptPolicy(pcrs=PCRPolicy([{i: nsm.describe_pcr(i).data for i in (0, 1, 2)}]),
                           dev_root_fingerprint=nsm.root_fingerprint)
    receipt = build_receipt(facts, output, signing_key=key, nsm=nsm)
    rsa_spki = rsa.generate_private_key(65537, 2048).public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    with_kms = build_receipt(facts, output, signing_key=key, nsm=nsm,
                             kms_attestation=nsm.attest(public_key=rsa_spki))
    return ReceiptKit(nsm, key, output, policy, receipt, with_kms)


def resign(statement: bytes, *, public_key: bytes | None = None,
           user_data: bytes | None = None, attestation_edit: Callable | None = None) -> bytes:
    """A receipt whose envelope carries ``statement`` and is signed and attested for real (the
    attestation binds ``public_key``/``user_data`` when given, the right ones otherwise)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from sops_enclave.receipt.dsse import PAYLOAD_TYPE_INTOTO, sign_envelope

    kit = receipt_kit()
    env = sign_envelope(PAYLOAD_TYPE_INTOTO, statement, kit.key)
    spki = kit.key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    doc = kit.nsm.attest(public_key=spki if public_key is None else public_key,
                         user_data=(hashlib.sha256(env.pae).digest() if user_data is None
                                    else user_data))
    if attestation_edit is not None:
        doc = attestation_edit(doc)
    return json.dumps({"envelope": env.to_json_obj(),
                       "attestation": base64.b64encode(doc).decode()}).encode()


def receipt(data: bytes) -> str:
    """``verify_receipt(data, output, policy)`` with and without ``allow_dev``: only SopsError."""
    from sops_enclave.receipt import verify_receipt

    kit = receipt_kit()
    ok, _ = _call((SopsError,), verify_receipt, data, kit.output, kit.policy, allow_dev=True,
                  allow_unrestricted=True)
    _call((SopsError,), verify_receipt, data, kit.output, kit.policy)
    return ACCEPTED if ok else REFUSED


def frame(data: bytes) -> str:
    """``decode_frame``: only FrameError."""
    from sops_enclave.rpc import FrameError, decode_frame

    ok, _ = _call((FrameError,), decode_frame, data)
    return ACCEPTED if ok else REFUSED


def recv_frame(data: bytes) -> str:
    """``recv_frame`` on a socket pair fed ``data`` then closed: only FrameError."""
    from sops_enclave.rpc import FrameError
    from sops_enclave.rpc import recv_frame as recv

    a, b = socket.socketpair()
    errors: list[BaseException] = []

    def feed() -> None:
        try:
            a.sendall(data)
            a.shutdown(socket.SHUT_WR)
        except OSError as e:  # the reader stopped early and closed its end
            errors.append(e)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        b.settimeout(max(TIME_LIMIT, 1.0))
        ok, _ = _call((FrameError,), recv, b)
    finally:
        b.close()
        writer.join(5)
        a.close()
    return ACCEPTED if ok else REFUSED


def _store_target(fmt: str) -> Callable[[bytes], str]:
    return lambda data: store(fmt, data)


#: name -> bytes entry point (what the atheris scripts and the replay of tests/regressions use).
TARGETS: dict[str, Callable[[bytes], str]] = {
    "cipher": cipher_bytes,
    **{f"{fmt}_store": _store_target(fmt) for fmt in STORES},
    "metadata": metadata_bytes,
    "config": config,
    "manifest": manifest,
    "attestation": attestation,
    "cms": cms,
    "receipt": receipt,
    "frame": frame,
    "recv_frame": recv_frame,
}


# ------------------------------------------------------------------------------ trees from bytes

_META_KEYS = ["kms", "gcp_kms", "azure_kv", "hc_vault", "hckms", "age", "pgp", "key_groups",
              "lastmodified", "mac", "version", "shamir_threshold", "mac_only_encrypted",
              "encrypted_suffix", "unencrypted_suffix", "encrypted_regex", "unencrypted_regex",
              "encrypted_comment_regex", "unencrypted_comment_regex", "recipient", "enc", "fp",
              "created_at", "arn", "role", "context", "aws_profile", "vault_address",
              "resource_id", "key_id", "sops", "data"]
_META_STRINGS = ["", "3.11.0", "2024-01-02T03:04:05Z", "2024-01-02T03:04:05+24:00",
                 "2024-02-30T00:00:00Z", "0000-01-01T00:00:00Z", "2024-01-02T03:04:05.123456789Z",
                 "ENC[AES256_GCM,data:AA==,iv:AA==,tag:AA==,type:str]", "age1abc", "true",
                 "1", "x" * 40, "(", "a{4294967296}", "(" * 300 + ")" * 300, "_unencrypted",
                 "arn:aws:kms:us-east-1:111122223333:key/k", "-----BEGIN AGE", "\x00", "\udcff"]


class _Source:
    """Reads a tree description out of bytes (for coverage-guided fuzzers)."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def chunk(self) -> bytes:
        n = self.byte()
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out


def tree_from_bytes(data: bytes) -> Any:
    from sops_enclave.tree import Branch, Comment, Timestamp

    src = _Source(data)
    budget = [256]

    def node(depth: int) -> Any:
        budget[0] -= 1
        kind = src.byte() % 12 if budget[0] > 0 and depth < 12 else 2 + src.byte() % 6
        if kind in (0, 1):
            br = Branch()
            for _ in range(src.byte() % 6):
                k = src.byte()
                key: Any = (_META_KEYS[k % len(_META_KEYS)] if k < 200 else
                            Comment(src.chunk().decode("utf-8", "surrogateescape")) if k < 230
                            else src.chunk().decode("utf-8", "surrogateescape"))
                br.append((key, None if isinstance(key, Comment) else node(depth + 1)))
            return br
        if kind in (10, 11):
            return [node(depth + 1) for _ in range(src.byte() % 5)]
        if kind == 2:
            return _META_STRINGS[src.byte() % len(_META_STRINGS)]
        if kind == 3:
            return src.chunk().decode("utf-8", "surrogateescape")
        if kind == 4:
            return int.from_bytes(src.chunk(), "big", signed=True)
        if kind == 5:
            return [0.0, -0.0, 1.5, float("inf"), float("nan"), 1e308][src.byte() % 6]
        if kind == 6:
            return bool(src.byte() & 1)
        if kind == 7:
            return None
        if kind == 8:
            return Timestamp(_META_STRINGS[src.byte() % 6])
        return src.chunk()

    return node(0)


# ------------------------------------------------------------------------------ seeds

def _read(paths: Iterable[Path]) -> list[bytes]:
    return [p.read_bytes() for p in sorted(paths) if p.is_file()]


def _vectors(pattern: str, sub: str = "sops") -> list[bytes]:
    d = VECTORS / sub
    return _read(d.glob(pattern)) if d.is_dir() else []


YAML_SEEDS = [
    b"a: 1\nb: [x, y]\nc: {d: e}\n",
    b"# head\nkey: value # tail\nlist:\n  - a  # item\n  # foot\n  - b\n",
    b"base: &b {x: 1, y: [1, 2]}\nderived:\n  <<: *b\n  z: !!binary aGVsbG8=\n",
    b"---\na: 1\n...\n---\nb: !!str 2\nc: !!int '3'\nd: 2001-12-14t21:59:43.10-05:00\n",
    b"s: |\n  literal\n  text\nf: >-\n  folded\n  text\nq: 'it''s'\nd: \"\\u00e9\\n\"\n",
    b"? complex\n: value\n!custom tagged: x\nnull: ~\nbool: yes\noct: 0o17\nhex: 0xff\n",
    b"sops:\n    age:\n        - recipient: age1xyz\n          enc: |\n            -----BEGIN AGE\n"
    b"    lastmodified: \"2024-01-02T03:04:05Z\"\n    mac: ENC[AES256_GCM,data:AA==,iv:AA==,"
    b"tag:AA==,type:str]\n    unencrypted_suffix: _unencrypted\n    version: 3.11.0\n",
]
JSON_SEEDS = [
    b'{"a": 1, "b": [true, null, 1.5e3], "c": {"d": "e\\u00e9"}}',
    b'{"a": 1, "a": 2, "sops": {"version": "3.11.0", "lastmodified": "2024-01-02T03:04:05Z"}}',
    b'{"data": "ENC[AES256_GCM,data:AA==,iv:AA==,tag:AA==,type:str]", "sops": {"kms": null}}',
    b'  {"x": -0.0, "y": 1e400, "z": "\\ud800", "w": [[[]]], "v": {}}  trailing',
]
DOTENV_SEEDS = [
    b"A=1\nB=two words\n#comment\nC=multi\\nline\n",
    b"export X=\"quoted\"\r\nY='single'\n\nZ=\n",
    b"DATA=ENC[AES256_GCM,data:AA==,iv:AA==,tag:AA==,type:str]\nsops_version=3.11.0\n"
    b"sops_lastmodified=2024-01-02T03:04:05Z\nsops_age__list_0__map_recipient=age1xyz\n"
    b"sops_age__list_0__map_enc=-----BEGIN AGE\\nx\\n-----END AGE\\n\n",
]
INI_SEEDS = [
    b"top = 1\n[section]\nkey = value ; comment\n# c\nother: x\n",
    b"[a]\nm = \"\"\"multi\nline\"\"\"\nb = `back#tick`\nc = cont \\\n  inued\n- = auto\n- = auto2\n",
    b"[data]\nk = ENC[AES256_GCM,data:AA==,iv:AA==,tag:AA==,type:str]\n[sops]\nversion = 3.11.0\n"
    b"lastmodified = 2024-01-02T03:04:05Z\nage__list_0__map_recipient = age1xyz\n",
    b"\xef\xbb\xbf[x]\n\"quoted key\" = v\n`tick key` = w\n\"\"\"tri\"\"\" = z\n",
]
CONFIG_SEEDS = [
    b"creation_rules:\n  - path_regex: \\.yaml$\n    age: age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\n"
    b"  - pgp: FBC7B9E2A4F9289AC0C1D4843D16CEE4A27381B4\n    encrypted_regex: ^data$\n",
    b"creation_rules:\n  - path_regex: a\n    kms: arn:aws:kms:us-east-1:111122223333:key/k+arn:aws:iam::1:role/r\n"
    b"    shamir_threshold: 2\n    key_groups:\n      - kms:\n          - arn: arn:aws:kms:us-east-1:1:key/x\n"
    b"            context: {env: prod}\n        age: [age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p]\n"
    b"      - merge:\n          - pgp: [ABC]\nstores:\n  yaml: {indent: 2}\n  json: {indent: 4}\n",
    b"base: &r {age: 'age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p'}\n"
    b"creation_rules:\n  - <<: *r\n    path_regex: '\\z'\n    mac_only_encrypted: yes\n"
    b"destination_rules:\n  - s3_bucket: b\n    recreation_rule: {pgp: X}\n",
]
MANIFEST_SEEDS = [
    b"version: 1\nmatrix: {service: [api, worker], env: [staging, prod]}\noutputs:\n"
    b"  - target: \"{service}/{env}\"\n    path: \"deploy/{service}/{env}.enc.json\"\n    inputs:\n"
    b"      - secrets/common.enc.yaml\n      - {file: \"secrets/{env}.enc.yaml\", extract: '[\"{service}\"]'}\n"
    b"      - {file: \"secrets/{service}/{env}.enc.yaml\", optional: true}\n    encrypt:\n"
    b"      kms: [\"arn:aws:kms:eu-west-1:111122223333:key/k-{env}\"]\n"
    b"      encryption_context: {service: \"{service}\", env: \"{env}\"}\n",
    b"version: 1\noutputs:\n  - target: t\n    path: out/t.enc.yaml\n    format: yaml\n"
    b"    inputs: [a.enc.yaml, {file: b.enc.env, optional: true}]\n"
    b"    encrypt: {age: [age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p]}\n",
]


def _frame_seeds() -> list[bytes]:
    import cbor2

    from sops_enclave.rpc import encode_frame
    msgs = [{"op": "pack", "version": 1, "git": {"objects": {"a" * 40: b"blob"}},
             "plans": [{"target": "t", "inputs": ["x"]}], "env": {"AWS_REGION": "eu-west-1"}},
            {"ok": False, "error": "boom", "exit_code": 25},
            {"ok": True, "outputs": [{"path": "p", "data": b"\x00" * 8, "receipt": b"{}"}]}]
    out = []
    for m in msgs:
        out.append(cbor2.dumps(m))
        out.append(encode_frame(m))
    return out


def _cms_seeds() -> list[bytes]:
    from sops_enclave.cms import make_ciphertext_for_recipient

    out = _vectors("*.ber", "cms")
    pub = cms_key().public_key()
    out += [make_ciphertext_for_recipient(pt, pub) for pt in (b"", b"k" * 32, b"x" * 1500)]
    return out


def _attestation_seeds() -> list[bytes]:
    out = _vectors("*.cose", "nitro")
    kit = receipt_kit()
    out.append(kit.nsm.attest(public_key=b"\x30" * 91, user_data=b"u" * 32, nonce=b"n"))
    return out


def _receipt_seeds() -> list[bytes]:
    kit = receipt_kit()
    return [kit.receipt, kit.receipt_with_kms]


def _metadata_seeds() -> list[bytes]:
    """Byte strings that :func:`tree_from_bytes` turns into plausible metadata blocks."""
    def k(name: str) -> bytes:
        return bytes([_META_KEYS.index(name)])

    def s(value: str) -> bytes:  # a string from _META_STRINGS
        return bytes([2, _META_STRINGS.index(value)])

    enc = s(_META_STRINGS[7])
    age = k("age") + bytes([10, 1, 0, 2]) + k("recipient") + s("age1abc") + k("enc") + enc
    kms = k("kms") + bytes([10, 1, 0, 3]) + k("arn") + s(_META_STRINGS[16]) + k("enc") + enc \
        + k("context") + bytes([0, 1]) + k("role") + s("1")
    common = k("lastmodified") + s("2024-01-02T03:04:05Z") + k("version") + s("3.11.0")
    groups = k("key_groups") + bytes([10, 2, 0, 1]) + age + bytes([0, 1]) + kms
    return [bytes([0, 4]) + age + common + k("mac") + enc,
            bytes([0, 5]) + kms + common + k("shamir_threshold") + bytes([4, 1, 2])
            + k("encrypted_regex") + s("_unencrypted"),
            bytes([0, 3]) + groups + common]


@functools.cache
def seeds_for(name: str) -> tuple[bytes, ...]:
    """Valid (or nearly valid) inputs of a target, to mutate."""
    if name == "cipher":
        from sops_enclave.cipher import ValueCipher
        from sops_enclave.tree import Comment, Timestamp
        c = ValueCipher(KEY)
        vals = ["secret", 42, 1.5, True, False, Timestamp("2024-01-02T03:04:05Z"),
                Comment("note"), b"\x00\xff", "", -7, 1e300]
        out = [c.encrypt(v, AAD).encode() for v in vals]
        out += [b"\x01time\x00\xff\xfe", b"\x01int\x00" + b"9" * 30, b"\x01bytes\x00",
                b"\x01float\x00nan", b"\x01bool\x00TRUE"]
        return tuple(out)
    if name == "yaml_store":
        return tuple(YAML_SEEDS + _vectors("*.yaml") + _read((ROOT / "fixtures").rglob("*.yaml")))
    if name in ("json_store", "binary_store"):
        return tuple(JSON_SEEDS + _vectors("*.json") + _read((ROOT / "fixtures").rglob("*.json")))
    if name == "dotenv_store":
        return tuple(DOTENV_SEEDS + _vectors("*.env") + _read((ROOT / "fixtures").rglob("*.env")))
    if name == "ini_store":
        return tuple(INI_SEEDS + _vectors("*.ini") + _read((ROOT / "fixtures").rglob("*.ini")))
    if name == "metadata":
        return tuple(_metadata_seeds())
    if name == "config":
        return tuple(CONFIG_SEEDS + _vectors("*.sops.yaml"))
    if name == "manifest":
        fx = ROOT / "fixtures" / "pack" / "manifest.yaml.in"
        return tuple(MANIFEST_SEEDS + _read([fx]))
    if name == "attestation":
        return tuple(_attestation_seeds())
    if name == "cms":
        return tuple(_cms_seeds())
    if name == "receipt":
        return tuple(_receipt_seeds())
    if name in ("frame", "recv_frame"):
        return tuple(_frame_seeds())
    raise KeyError(name)


# ------------------------------------------------------------------------------ dictionaries

#: Tokens the mutator inserts (and atheris gets as -dict), per target.
TOKENS: dict[str, list[bytes]] = {
    "cipher": [b"ENC[AES256_GCM,", b"data:", b",iv:", b",tag:", b",type:", b"]", b"str",
               b"int", b"float", b"bool", b"time", b"comment", b"bytes", b"==", b"AAAA",
               b"\n", b"\xff"],
    "yaml": [b"&a ", b"*a", b"<<: ", b"!!binary ", b"!!int ", b"!!float ", b"!!timestamp ",
             b"!!str ", b"!!map ", b"!!seq ", b"!custom ", b"- ", b": ", b"? ", b"{", b"}",
             b"[", b"]", b", ", b"# c\n", b"---\n", b"...\n", b"|\n", b">-\n", b"'", b'"',
             b"\t", b"\n  ", b"%YAML 1.1\n", b"%TAG ! tag:x,2000:\n", b"~", b"0x", b"0o",
             b"1e400", b".nan", b"2001-12-14 21:59:43.10", b"sops:\n", b"\xef\xbb\xbf"],
    "json": [b"{", b"}", b"[", b"]", b'"', b":", b",", b'"sops"', b"\\u", b"\\ud800", b"1e999",
             b"-", b"NaN", b"Infinity", b"null", b"true", b"\\", b"\x00"],
    "dotenv": [b"=", b"\n", b"#", b"\\n", b"sops_", b"__map_", b"__list_", b"__list_0",
               b"__list_-1", b"__list_99999999999999999999", b"\r", b"export "],
    "ini": [b"[", b"]", b"[sops]\n", b"=", b":", b";", b"#", b'"""', b"`", b'"', b"'",
            b"\\\n", b"\n", b"- ", b"__map_", b"__list_0", b"\xef\xbb\xbf", b"\xfe\xff"],
    "config": [b"creation_rules:\n", b"  - ", b"path_regex: ", b"key_groups:\n", b"kms: ",
               b"age: ", b"pgp: ", b"merge:\n", b"<<: *a\n", b"&a ", b"*a", b"shamir_threshold: ",
               b"stores:\n", b"indent: ", b"(", b")", b"{4294967296}", b"\\z", b"\\p{L}",
               b"[", b"]", b"{", b"}", b"context: ", b"!!binary ", b"~", b"\t", b"!!timestamp ",
               b"!!bool ", b"!!int ", b"!!float "],
    "manifest": [b"{a}", b"{{", b"}}", b"{", b"}", b"matrix: ", b"outputs:\n", b"  - ",
                 b"target: ", b"path: ", b"inputs: ", b"encrypt: ", b"extract: ", b"optional: ",
                 b"kms: ", b"age: ", b"encryption_context: ", b"../", b".git/", b"\\",
                 b".receipt.json", b"&a ", b"*a", b"<<: ", b"\xe2\x80\xae", b"!!timestamp ",
                 b"!!bool ", b"!!int ", b"!!float ", b"!!binary ", b"!!set ", b"!!omap ",
                 b"!!pairs ", b"!!null "],
    "cbor": [b"\xa1", b"\x84", b"\xd2", b"\x40", b"\x60", b"\x9f", b"\xff", b"\xf6", b"\xf5",
             b"\xfb", b"\x1b\xff\xff\xff\xff\xff\xff\xff\xff", b"\x5b\x7f\xff\xff\xff\xff\xff\xff\xff",
             b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff", b"\xbb\xff\xff\xff\xff\xff\xff\xff\xff",
             b"\xc0", b"\xd8\x1c", b"\xd8\x1d\x00", b"\x44\xa1\x01\x38\x22"],
    "ber": [b"\x30\x80", b"\x00\x00", b"\x84\xff\xff\xff\xff", b"\x83\xff\xff\xff", b"\xa0\x80",
            b"\x04\x82\x10\x00", b"\x06\x09", b"\x1f\xff\xff\xff\x7f", b"\x05\x00", b"\x02\x01\x02"],
    "json_receipt": [b"[", b"]", b"{", b"}", b'"', b":", b",", b'"envelope"', b'"attestation"',
                     b'"kms_attestation"', b'"payload"', b'"signatures"', b"null", b"=", b"-", b"_"],
}
TOKEN_SET = {"cipher": "cipher", "yaml_store": "yaml", "json_store": "json",
             "binary_store": "json", "dotenv_store": "dotenv", "ini_store": "ini",
             "metadata": "cbor", "config": "config", "manifest": "manifest",
             "attestation": "cbor", "cms": "ber", "receipt": "json_receipt", "frame": "cbor",
             "recv_frame": "cbor"}
#: (opener, closer) pairs for the "deep nesting" mutation.
NESTING: dict[str, list[tuple[bytes, bytes]]] = {
    "yaml": [(b"[", b"]"), (b"{a: ", b"}"), (b"- ", b"")],
    "json": [(b"[", b"]"), (b'{"a":', b"}")],
    "dotenv": [(b"__map_a", b""), (b"__list_0", b"")],
    "ini": [(b"__map_a", b""), (b"__list_0", b"")],
    "config": [(b"[", b"]"), (b"{a: ", b"}")],
    "manifest": [(b"[", b"]"), (b"{a: ", b"}")],
    "cbor": [(b"\x81", b""), (b"\xa1\x00", b"")],
    "ber": [(b"\x30\x80", b"\x00\x00")],
    "json_receipt": [(b"[", b"]"), (b'{"a":', b"}")],
    "cipher": [(b"ENC[AES256_GCM,data:", b"]")],
}


def tokens_for(name: str) -> list[bytes]:
    return TOKENS[TOKEN_SET[name]]


def nesting_for(name: str) -> list[tuple[bytes, bytes]]:
    return NESTING[TOKEN_SET[name]]


def write_dictionary(name: str, path: Path) -> Path:
    """The target's tokens as a libFuzzer dictionary file."""
    lines = []
    for i, t in enumerate(tokens_for(name)):
        lines.append(f'tok{i}="' + "".join(f"\\x{b:02x}" for b in t) + '"')
    path.write_text("\n".join(lines) + "\n")
    return path
