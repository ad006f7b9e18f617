"""Bounded fuzzing of every parser that reads untrusted bytes (the hardening issue).

Each target has a contract: only the documented error types, never anything else, no hang, no
unbounded memory. The targets, their contracts, seeds and generators live in ``fuzz/``
(``fuzzlib.py``, ``strategies.py``) and are shared with the open-ended atheris runs
(``fuzz/run.sh SECONDS``); see ``fuzz/README.md``.

* ``test_fuzz[...]``: one bounded Hypothesis run per target (raw bytes, mutated seeds and
  structured documents). Open findings (``fuzzlib.KNOWN``) are counted, not failed, so that
  new ones still show up; ``FUZZ_STRICT=1`` fails on them too.
* one test per finding, with a minimal input: ``test_known_*`` (strict xfail) while it is
  open; when the code is fixed it XPASSes, which fails the run: then drop the ``known_`` and
  the xfail mark and delete the ``fuzzlib.KNOWN`` entry. The test stays as a regression test.
* ``test_regression_corpus``: every input saved under ``tests/regressions/<target>/``.
* bombs and 10,000-deep inputs for every store and YAML reader: refused in under 2 s with a
  clear error.

``pytest -s tests/test_fuzz_parsers.py`` prints how many inputs each target tried;
``FUZZ_SCALE=10`` runs ten times as many.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "fuzz"))

import fuzzlib  # noqa: E402
import strategies  # noqa: E402
from fuzzlib import STORE_ERRORS, _call, execute  # noqa: E402

from sops_enclave.errors import SopsError  # noqa: E402
from sops_enclave.tree import Branch  # noqa: E402

SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
#: Examples per target: sized so that the whole file stays well under a minute.
BUDGET = {
    "cipher": 1200, "yaml_store": 600, "json_store": 800, "binary_store": 500,
    "dotenv_store": 800, "ini_store": 800, "metadata": 1200, "config": 500, "manifest": 500,
    "attestation": 300, "cms": 400, "receipt": 250, "frame": 1000, "recv_frame": 400,
}
NITRO = fuzzlib.VECTORS / "nitro"
#: Per-input time limit here (fuzz/run.sh allows 10 s): a slow input fails, or costs at most
#: this much when it is a known finding.
fuzzlib.TIME_LIMIT = float(os.environ.get("FUZZ_TIME_LIMIT", "3"))


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    rows = []
    for name, s in sorted(fuzzlib.STATS.items()):
        known = ", ".join(f"{k}={n}" for k, n in sorted(s.known.items())) or "-"
        rows.append((name, s.examples, s.accepted, s.refused, f"{s.seconds:.2f}",
                     f"{s.wall:.2f}" if s.wall else "-", known))
    if not rows:
        return
    head = ("target", "inputs", "accepted", "refused", "s in target", "s wall",
            "known findings hit")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    print("\n\nfuzz inputs per target (tests/test_fuzz_parsers.py)\n" + line(head))
    for r in rows:
        print(line(r))
    out = os.environ.get("FUZZ_COUNTS_JSON")
    if out:
        Path(out).write_text(json.dumps({name: {"inputs": s.examples, "accepted": s.accepted,
                                                "refused": s.refused, "seconds": s.seconds,
                                                "wall": s.wall, "known": dict(s.known)}
                                         for name, s in fuzzlib.STATS.items()}, indent=2))


# ------------------------------------------------------------------------------ the fuzzing

@pytest.mark.filterwarnings("ignore:Possible nested set:FutureWarning")  # user regexes
@pytest.mark.parametrize("name", sorted(BUDGET))
def test_fuzz(name):
    if name == "attestation" and not NITRO.is_dir():
        print("(no ../shared/vectors/nitro: attestation seeds are dev-NSM documents only)")
    fn = strategies.function(name)

    # No "explain" phase: it re-runs the failing input under a tracer, 10-100x slower, which
    # turns the per-input time limit into a false Hang.
    @settings(max_examples=max(1, int(BUDGET[name] * SCALE)), deadline=None, database=None,
              suppress_health_check=list(HealthCheck), print_blob=True,
              phases=[p for p in Phase if p is not Phase.explain])
    @given(strategies.inputs(name))
    def run(x):
        execute(name, fn, x)

    t0 = time.perf_counter()
    try:
        run()
    finally:
        fuzzlib.STATS.setdefault(name, fuzzlib.Stats()).wall += time.perf_counter() - t0


def test_seeds_are_accepted():
    """The generators start from valid inputs: most seeds must pass their parser (otherwise
    the mutations explore only the first error path)."""
    assert fuzzlib.TARGETS["json_store"](fuzzlib.seeds_for("json_store")[0]) == "accepted"
    assert fuzzlib.TARGETS["yaml_store"](fuzzlib.seeds_for("yaml_store")[0]) == "accepted"
    assert fuzzlib.TARGETS["manifest"](fuzzlib.seeds_for("manifest")[0]) == "accepted"
    assert fuzzlib.TARGETS["config"](fuzzlib.seeds_for("config")[0]) == "accepted"
    assert fuzzlib.TARGETS["cms"](fuzzlib.seeds_for("cms")[-1]) == "accepted"
    assert fuzzlib.TARGETS["receipt"](fuzzlib.receipt_kit().receipt) == "accepted"
    assert fuzzlib.TARGETS["cipher"](fuzzlib.seeds_for("cipher")[0]) == "accepted"
    assert fuzzlib.TARGETS["frame"](fuzzlib.seeds_for("frame")[0]) == "accepted"
    assert fuzzlib.TARGETS["recv_frame"](fuzzlib.seeds_for("frame")[1]) == "accepted"


# ------------------------------------------------------------------------------ replayed findings

def _regression_files():
    out = []
    for p in sorted(fuzzlib.REGRESSIONS.glob("*/*.bin")):
        target, key = p.parent.name, p.stem
        marks = []
        known = next((k for k in fuzzlib.KNOWN if k.key == key), None)
        if known is not None:
            marks.append(pytest.mark.xfail(strict=True, reason=known.summary))
        out.append(pytest.param(target, p, marks=marks, id=f"{target}/{p.name}"))
    return out


@pytest.mark.parametrize("target,path", _regression_files())
def test_regression_corpus(target, path):
    """Every input in tests/regressions/<target>/ keeps its target's contract. A file named
    after a fuzzlib.KNOWN entry is a reported, unfixed finding (strict xfail)."""
    saved = fuzzlib.STRICT
    fuzzlib.STRICT = True
    try:
        execute(f"regressions/{target}", fuzzlib.TARGETS[target], path.read_bytes())
    finally:
        fuzzlib.STRICT = saved


# ------------------------------------------------------------------------------ findings
#
# One test per problem the fuzzing found, with a minimal input ("was:" is what the code did
# then). Still open (strict xfail): the INI comment. The others were fixed in sops_enclave/ and
# stay as regression tests; fuzz/README.md lists them all.

def _only(allowed, fn, *args, **kw):
    """``fn(*args, **kw)`` under the fuzz limits (time, memory): it must return or raise one of
    ``allowed``; anything else fails the test with the original traceback."""
    def body():
        _call(allowed, fn, *args, **kw)
        return "accepted"
    saved = fuzzlib.STRICT
    fuzzlib.STRICT = True
    try:
        execute("findings", body)
    finally:
        fuzzlib.STRICT = saved


def _xfail(key: str):
    k = next(k for k in fuzzlib.KNOWN if k.key == key)
    return pytest.mark.xfail(strict=True, reason=f"{k.key}: {k.summary}")


@_xfail("ini-comment-empty-line")
@pytest.mark.parametrize("data", [b";\n;\n[\x00]", b";\n;\n[x]\nk = v\n", b"k = v\n#\n# c\n[s]\n"])
def test_known_ini_comment_that_cannot_be_written_back(data):
    """OPEN. Found by test_fuzz[ini_store]: load_plain accepts these, emit_plain raises
    ErrorDumpingTree "comment contains an empty line" (the comment ';\n;' is stored as '\n;').
    sops 3.11 panics on the same files when it writes them (go-ini indexes line[0] of the
    empty line), so this may be deliberate: then delete this test and fuzzlib.KNOWN's entry;
    otherwise load_plain should refuse or normalise such comments."""
    from sops_enclave.formats import ini
    _only((), ini.emit_plain, ini.load_plain(data))


@pytest.mark.parametrize("data", [b"!!timestamp", b"version: !!timestamp x\n",
                                  b"version: !!bool x\n", b"version: !!int ''\n",
                                  b"version: 1\nmatrix: {a: [!!bool x]}\n"])
def test_manifest_tag_that_pyyaml_cannot_construct(data):
    """Found by test_fuzz[manifest] (FUZZ_SCALE=15, input b'!!timestamp') after 9c2346e.
    Was: PyYAML's SafeConstructor raised AttributeError ('NoneType' object has no attribute
    'groupdict'), KeyError or IndexError, and pack/manifest.py:_parse_yaml caught only
    YAMLError, RecursionError and ValueError. (ReceiptPolicy.from_yaml has the same hole.)"""
    from sops_enclave.pack.manifest import load_manifest
    _only((SopsError,), load_manifest, data)


@pytest.mark.parametrize("fmt,data", [
    ("dotenv", b"sops_version" + b"__map_a" * 600 + b"=1\n"),
    ("ini", b"[sops]\nversion" + b"__map_a" * 600 + b" = 1\n"),
    ("dotenv", b"sops_age" + b"__list_0" * 600 + b"=1\n"),
])
def test_deep_flattened_metadata_key(fmt, data):
    """Was: RecursionError in flatten._convert (dotenv/ini load_encrypted)."""
    from sops_enclave.formats import get_store
    _only(STORE_ERRORS, get_store(fmt).load_encrypted, data)


def _deepest_json_map() -> bytes:
    """The deepest {"a":{"a":...}} that json_store.load_plain accepts from here."""
    from sops_enclave.formats import json_store
    lo, hi = 1, 20000
    while lo < hi:
        mid = (lo + hi + 1) // 2
        ok, _ = _call(STORE_ERRORS, json_store.load_plain, b'{"a":' * mid + b"1" + b"}" * mid)
        lo, hi = (mid, hi) if ok else (lo, mid - 1)
    return b'{"a":' * lo + b"1" + b"}" * lo


def _deeper(n: int, fn, *args):
    """``fn(*args)`` called ``n`` frames further down the stack (as from a real caller)."""
    return _deeper(n - 1, fn, *args) if n else fn(*args)


def test_json_emit_of_what_load_accepted():
    """Was: json_store had no depth limit of its own; load_plain accepted whatever the
    recursion limit allowed at the call site (~990 levels), and emit_plain (recursive) raised
    RecursionError when called a few frames deeper."""
    from sops_enclave.formats import json_store
    docs = json_store.load_plain(_deepest_json_map())
    _only((), _deeper, 40, json_store.emit_plain, docs)


@pytest.mark.parametrize("number", [b"1e400", b"-1e999", b"1" * 400])
def test_json_number_out_of_float_range(number):
    """Was: load_plain read 1e400 as inf, then emit_plain raised ErrorDumpingTree
    (fixed in e81e86c: refused at load, as sops does)."""
    assert fuzzlib.store("json", b'{"a": ' + number + b"}") == "refused"


def _meta(**fields) -> Branch:
    b = Branch([("age", [Branch([("recipient", "age1x"), ("enc", "x")])]),
                ("lastmodified", "2024-01-02T03:04:05Z"), ("mac", "m"), ("version", "3.11.0")])
    for k, v in fields.items():
        i = b.index_of(k)
        if i >= 0:
            b[i] = (k, v)
        else:
            b.append((k, v))
    return b


def test_metadata_seed_is_valid():
    from sops_enclave.metadata import parse_metadata
    assert parse_metadata(_meta()).version == "3.11.0"


@pytest.mark.parametrize("stamp", ["2024-01-02T03:04:05+24:00", "2024-01-02T03:04:05-99:00"])
def test_lastmodified_offset_of_a_day(stamp):
    """Was: ValueError "offset must be a timedelta strictly between..." (parse_time built the
    timezone outside its try)."""
    from sops_enclave.metadata import parse_metadata
    _only((SopsError,), parse_metadata, _meta(lastmodified=stamp))


@pytest.mark.parametrize("rx", ["a{4294967296}", "(" * 1000 + ")" * 1000])
def test_metadata_crypt_rule_regex(rx):
    """Was: OverflowError / RecursionError from re.compile in walk.CryptRule."""
    from sops_enclave.metadata import parse_metadata
    _only((SopsError,), parse_metadata, _meta(encrypted_regex=rx))


@pytest.mark.parametrize("rx", ["a{4294967296}", "(" * 1000 + ")" * 1000])
def test_config_path_regex(rx):
    """Was: OverflowError / RecursionError from re.compile in config._compile."""
    from sops_enclave.config import load_config
    cfg = load_config(f"creation_rules:\n  - path_regex: '{rx}'\n    pgp: ABC\n".encode(),
                      "/x/.sops.yaml")
    _only((SopsError,), cfg.creation_rule_for, "/x/a.yaml")


def test_config_nested_value():
    """Was: RecursionError in config._Decoder.any (~500 levels under an interface{} field)."""
    from sops_enclave.config import load_config
    data = b"creation_rules:\n  - kms: " + b"[" * 600 + b"]" * 600 + b"\n"
    _only((SopsError,), load_config, data, "/x/.sops.yaml")


@pytest.mark.parametrize("field", ["shamir_threshold", "kms", "path_regex"])
def test_config_integer_of_4301_digits(field):
    """Was: ValueError "Exceeds the limit (4300 digits) for integer string conversion" from
    yaml_resolve.parse_go_int (the twin of the manifest finding)."""
    from sops_enclave.config import load_config
    data = f"creation_rules:\n  - {field}: {'1' * 4301}\n".encode()
    _only((SopsError,), load_config, data, "/x/.sops.yaml")


@pytest.mark.parametrize("where", ["version", "matrix"])
def test_manifest_integer_of_4301_digits(where):
    """Was: the same ValueError from PyYAML's int constructor, uncaught by _parse_yaml.
    Found by test_fuzz[manifest] at FUZZ_SCALE=20 (a mutation repeating a digit)."""
    from sops_enclave.pack.manifest import load_manifest
    big = "1" * 4301
    data = (f"version: {big}\n" if where == "version" else
            f"version: 1\nmatrix: {{a: [{big}]}}\n").encode()
    _only((SopsError,), load_manifest, data)


def _lol(levels: int, width: int = 9) -> str:
    """A YAML mapping of alias levels: each anchor holds `width` copies of the previous one."""
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_config_billion_laughs():
    """Was: _Decoder.any expanded every alias (9**9 values: minutes, then memory)."""
    from sops_enclave.config import load_config
    bomb = "x:\n" + "".join("  " + l + "\n" for l in _lol(9).splitlines())
    data = (bomb + "creation_rules:\n  - kms: *l9\n").encode()
    _refused_quickly(lambda: load_config(data, "/x/.sops.yaml"), (SopsError,),
                     message="alias|expand")


def test_time_value_not_utf8():
    """Was: UnicodeDecodeError for an authentic ENC[...,type:time] value that is not UTF-8."""
    from sops_enclave.cipher import ValueCipher
    _only((SopsError,), ValueCipher(fuzzlib.KEY).decrypt, fuzzlib.enc_value(b"\xff", "time"),
          fuzzlib.AAD)


def test_enc_regex_backtracking():
    """Was: the ENC[...] regex (four greedy .+ groups) backtracked polynomially: this 3 KB
    value took ~20 s, 6 KB over a minute."""
    from sops_enclave.cipher import ValueCipher
    s = "ENC[AES256_GCM,data:" + ",iv:" * 200 + ",tag:" * 200 + ",type:" * 200
    _refused_quickly(lambda: ValueCipher(fuzzlib.KEY).decrypt(s, b""), (SopsError,),
                     seconds=1.0)


@pytest.mark.parametrize("where", ["receipt", "statement"])
def test_deeply_nested_receipt(where):
    """Was: RecursionError from json.loads in statement.loads_strict_json (only ValueError was
    caught), for the receipt itself or its (genuinely signed) statement."""
    from sops_enclave.receipt import ReceiptPolicy, verify_receipt
    deep = b"[" * 100_000 + b"]" * 100_000
    data = deep if where == "receipt" else fuzzlib.resign(deep)
    _only((SopsError,), verify_receipt, data, b"out", ReceiptPolicy(), allow_dev=True)


def test_manifest_placeholder_amplification():
    """Was: a 0.9 MB manifest rendered a 60 GB target ({a} x 100,000 with a 600 KB value):
    MemoryError, or the OOM killer; 40 KB of manifest already took 300 MB and 2 s."""
    from sops_enclave.pack.manifest import MAX_MANIFEST_BYTES, load_manifest
    data = ("version: 1\nmatrix: {a: [" + "x" * 600_000 + "]}\noutputs:\n  - target: '"
            + "{a}" * 100_000 + "'\n    path: o.yaml\n    inputs: [i.yaml]\n    encrypt: {age: "
            "[age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p]}\n").encode()
    assert len(data) < MAX_MANIFEST_BYTES
    _refused_quickly(lambda: load_manifest(data), (SopsError,))


# ------------------------------------------------------------------------------ bombs and depth

def _refused_quickly(fn, allowed, *, seconds: float = 2.0, message: str | None = None,
                     must_refuse: bool = True):
    """``fn()`` raises one of ``allowed`` (or returns, when not ``must_refuse``) within
    ``seconds`` and 1 GiB of extra address space; the error message matches ``message``."""
    saved = fuzzlib.TIME_LIMIT, fuzzlib.MEMORY_LIMIT, fuzzlib.STRICT
    fuzzlib.TIME_LIMIT, fuzzlib.MEMORY_LIMIT, fuzzlib.STRICT = seconds, 1 << 30, True
    result: list = []

    def body():
        ok, r = _call(allowed, fn)
        result.append((ok, r))
        return "accepted"
    try:
        # fuzzlib's limits turn a run over ``seconds`` (or 1 GiB) into a Hang/OOM failure.
        execute("bombs and depth", body)
    finally:
        fuzzlib.TIME_LIMIT, fuzzlib.MEMORY_LIMIT, fuzzlib.STRICT = saved
    ok, r = result[0]
    if must_refuse:
        assert not ok, "accepted"
        if message:
            assert re.search(message, str(r), re.I), str(r)
    return r


@pytest.mark.parametrize("fn", ["load_plain", "load_encrypted"])
def test_yaml_billion_laughs_refused(fn):
    from sops_enclave.formats import yaml_store
    _refused_quickly(lambda: getattr(yaml_store, fn)(_lol(9).encode()), STORE_ERRORS,
                     message="alias")


@pytest.mark.parametrize("fn", ["load_plain", "load_encrypted"])
def test_yaml_alias_of_a_long_scalar(fn):
    """A 1 MiB scalar aliased 2,000 times. Was: accepted as 2,001 values, then emit_plain (or
    encrypting, or decrypting each copy) materialised 2 GB."""
    from sops_enclave.formats import yaml_store
    data = b"a: &a '" + b"x" * (1 << 20) + b"'\nb: [" + b"*a, " * 2000 + b"]\n"
    _refused_quickly(lambda: getattr(yaml_store, fn)(data), STORE_ERRORS, message="alias")


N = 10_000
DEPTH_MESSAGE = r"depth|deeper|nest"
_DEEP_JSON = b'{"a":' * N + b"1" + b"}" * N
_DEEP = {
    "yaml/flow": ("yaml", b"a: " + b"[" * N + b"]" * N + b"\n"),
    "yaml/block": ("yaml", b"".join(b" " * i + b"k:\n" for i in range(N))),
    "json/maps": ("json", _DEEP_JSON),
    "json/lists": ("json", b'{"a":' + b"[" * N + b"]" * N + b"}"),
    "binary/envelope": ("binary", _DEEP_JSON),
    "dotenv/flattened": ("dotenv", b"sops_version" + b"__map_a" * N + b"=1\n"),
    "ini/flattened": ("ini", b"[sops]\nversion" + b"__map_a" * N + b" = 1\n"),
}


@pytest.mark.parametrize("case", list(_DEEP))
def test_deep_nesting_refused_by_load_encrypted(case):
    from sops_enclave.formats import get_store
    fmt, data = _DEEP[case]
    _refused_quickly(lambda: get_store(fmt).load_encrypted(data), STORE_ERRORS,
                     message=DEPTH_MESSAGE)


@pytest.mark.parametrize("case", list(_DEEP))
def test_deep_nesting_refused_by_load_plain(case):
    """Nesting is refused; the dotenv, INI and binary stores have none in plaintext (the same
    bytes are one long flat key, or the data), which must be quick."""
    from sops_enclave.formats import get_store
    fmt, data = _DEEP[case]
    flat = fmt in ("dotenv", "ini", "binary")
    _refused_quickly(lambda: get_store(fmt).load_plain(data), STORE_ERRORS,
                     message=None if flat else DEPTH_MESSAGE, must_refuse=not flat)


@pytest.mark.parametrize("what", ["config", "manifest"])
def test_deep_nesting_refused_by_yaml_readers(what):
    from sops_enclave.config import load_config
    from sops_enclave.pack.manifest import load_manifest
    flow = b"[" * N + b"]" * N
    if what == "config":
        _refused_quickly(lambda: load_config(b"creation_rules:\n  - kms: " + flow + b"\n",
                                             "/x/.sops.yaml"), (SopsError,), message=DEPTH_MESSAGE)
    else:
        _refused_quickly(lambda: load_manifest(b"version: 1\noutputs: " + flow + b"\n"),
                         (SopsError,), message=DEPTH_MESSAGE)


def test_manifest_billion_laughs_refused():
    from sops_enclave.pack.manifest import load_manifest
    # 12 levels: 108 aliases, each doubling nothing but the work of whoever expands them
    data = ("version: 1\nmatrix:\n" + "".join("  " + l + "\n" for l in _lol(12).splitlines())
            + "outputs: *l12\n").encode()
    _refused_quickly(lambda: load_manifest(data), (SopsError,), message="alias")
