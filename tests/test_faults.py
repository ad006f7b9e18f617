"""Fault injection: KMS throttling/5xx/resets/timeouts, a killed host or enclave, an unwritable
or full output directory. After every fault: the originals are byte-identical, there is no
partial output and no receipt without its output, no temporary file is left behind, the
error is short and has no traceback, and the exit code is the one sops uses.

KMS faults come from :class:`sops_enclave.devtools.faulty_proxy.FaultyProxy` (127.0.0.1)
placed in front of moto (host commands) or in front of the attested dev KMS (``exec``).
botocore reads ``AWS_MAX_ATTEMPTS``/``AWS_RETRY_MODE`` from the environment but has no
variable for the read timeout; the timeout scenarios lower botocore's default read timeout
with a test-only ``sitecustomize`` on ``PYTHONPATH`` (the dev enclave inherits it too).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SE = [sys.executable, "-m", "sops_enclave"]
PCR0_KEY = "kms:RecipientAttestation:ImageSha384"

# ------------------------------------------------------------------------------- helpers


class Leftover(AssertionError):
    """A temporary file or directory was left behind."""


class PartialWrite(AssertionError):
    """A target holds neither its old nor its complete new content."""


TEMP_PATTERNS = (".sops-enclave-*", "*.tmp", "*.bak", "sops-enclave-edit*", "sops-enclave-*")
# Everything in the code goes through ``tempfile`` (honours TMPDIR) or the target's directory,
# so the per-test TMPDIR is the real check. In /tmp only the exec-file/edit prefixes are
# watched: other sessions on this machine create short-lived /tmp/sops-enclave-* work dirs.
_TMP_PATTERNS = (".sops*", "sops-enclave-edit*")


def _tmp_entries() -> set[str]:
    try:
        return {n for n in os.listdir("/tmp") if any(fnmatch.fnmatch(n, p) for p in _TMP_PATTERNS)}
    except OSError:
        return set()


class Sandbox:
    """A per-test TMPDIR and the leftover checks (TMPDIR must end empty; the watched
    directories must hold no temp-like names; /tmp must have no new ``.sops*`` /
    ``sops-enclave-edit*`` entries)."""

    def __init__(self, root: Path):
        import tempfile

        self.root = root
        # Short on purpose: the dev enclave's socket lives in $TMPDIR/sops-enclave-*/ and
        # AF_UNIX paths are limited to 108 bytes (see test_exec_with_a_long_tmpdir).
        self.tmpdir = Path(tempfile.mkdtemp(prefix="sefx-", dir="/tmp"))
        self._tmp_before = _tmp_entries()

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def env(self, env: dict[str, str], **extra: str) -> dict[str, str]:
        return dict(env, TMPDIR=str(self.tmpdir), **extra)

    def leftovers(self, *dirs: Path) -> list[str]:
        found = [str(p) for p in self.tmpdir.rglob("*")]
        for d in dirs:
            if not Path(d).exists():
                continue
            for p in Path(d).rglob("*"):
                if any(fnmatch.fnmatch(p.name, pat) for pat in TEMP_PATTERNS):
                    found.append(str(p))
        new = _tmp_entries() - self._tmp_before
        if new:  # other processes on the machine may own short-lived ones: re-check once
            time.sleep(1.0)
            new &= _tmp_entries()
        found += [f"/tmp/{n}" for n in sorted(new)]
        return found

    def assert_clean(self, *dirs: Path) -> None:
        left = self.leftovers(*dirs)
        if left:
            raise Leftover(f"temporary files left behind: {left}")


@pytest.fixture
def sandbox(tmp_path):
    sb = Sandbox(tmp_path)
    yield sb
    sb.close()


def _run(cmd, env, cwd=None, timeout=90) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _assert_clean_error(p: subprocess.CompletedProcess, code: int, *, multiline: bool = False,
                        mentions: tuple[str, ...] = ()) -> str:
    """The exit code; no traceback; a one-line message (``multiline``: sops' key-group report,
    which is several lines by design, as sops prints it)."""
    err = p.stderr.decode(errors="replace")
    assert p.returncode == code, f"exit {p.returncode}, expected {code}: {err}"
    assert "Traceback" not in err and 'File "' not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("[sops-enclave]")]
    assert lines, "no error message"
    if not multiline:
        assert len(lines) == 1, f"expected a one-line error, got:\n{err}"
    for m in mentions:
        assert m in err, f"{m!r} not in: {err}"
    return err


@pytest.fixture(scope="module")
def boto_shim(tmp_path_factory) -> Path:
    """A ``sitecustomize`` that lowers botocore's default read timeout to
    ``$SOPS_ENCLAVE_TEST_READ_TIMEOUT`` seconds (botocore has no environment variable for it)."""
    d = tmp_path_factory.mktemp("boto-shim")
    (d / "sitecustomize.py").write_text(
        "import os\n"
        "_t = os.environ.get('SOPS_ENCLAVE_TEST_READ_TIMEOUT')\n"
        "if _t:\n"
        "    try:\n"
        "        from botocore.config import Config\n"
        "        Config.OPTION_DEFAULTS['read_timeout'] = float(_t)\n"
        "    except Exception:\n"
        "        pass\n")
    return d


def _with_shim(env: dict[str, str], shim: Path, read_timeout: float) -> dict[str, str]:
    pp = env.get("PYTHONPATH")
    return dict(env, PYTHONPATH=str(shim) + (os.pathsep + pp if pp else ""),
                SOPS_ENCLAVE_TEST_READ_TIMEOUT=str(read_timeout))


@pytest.fixture
def proxy_factory():
    from sops_enclave.devtools.faulty_proxy import FaultyProxy

    started = []

    def make(upstream, plan):
        px = FaultyProxy(upstream, plan)
        px.start()
        started.append(px)
        return px

    yield make
    for px in started:
        px.stop()


def _plan(kind: str, target: str | None = None, first: int | None = None):
    from sops_enclave.devtools.faulty_proxy import Fault

    if kind == "throttle":
        return Fault.throttle(first=first, target=target)
    if kind in ("500", "503"):
        return Fault.error(int(kind), first=first, target=target)
    if kind == "reset":
        return Fault.reset(first=first, target=target)
    if kind == "timeout":
        return Fault.timeout(2.0, first=first, target=target)
    raise ValueError(kind)


# ------------------------------------------------------------------ the proxy itself

def test_faulty_proxy_plan_semantics():
    """first-N budgets, per-operation targets, 5xx/throttle bodies, resets, loopback only, and
    stop() ending a held request at once."""
    import http.client
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from sops_enclave.devtools.faulty_proxy import Fault, FaultyProxy

    class Up(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    up = ThreadingHTTPServer(("127.0.0.1", 0), Up)
    t = threading.Thread(target=up.serve_forever, daemon=True)
    t.start()
    px = FaultyProxy(f"http://127.0.0.1:{up.server_address[1]}",
                     [Fault.throttle(first=2), Fault.error(503, target="Decrypt"),
                      Fault.reset(first=1, target="Encrypt"),
                      Fault.timeout(20, target="GenerateRandom")])
    host, port = px.start()[len("http://"):].split(":")

    def call(op: str):
        c = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            c.request("POST", "/", body=b"{}", headers={"X-Amz-Target": f"TrentService.{op}"})
            r = c.getresponse()
            return r.status, r.read()
        except (OSError, http.client.HTTPException) as e:
            return None, type(e).__name__
        finally:
            c.close()

    try:
        with pytest.raises(ValueError):
            FaultyProxy("http://127.0.0.1:1").start(host="0.0.0.0")
        assert Fault.timeout(10_000).seconds == 30.0  # bounded
        s1, b1 = call("Encrypt")
        assert s1 == 400 and json.loads(b1)["__type"] == "ThrottlingException"
        assert call("Decrypt")[0] == 400  # the second throttled request
        assert call("Decrypt")[0] == 503  # throttle budget used up: the Decrypt rule
        assert call("Encrypt")[0] is None  # reset, once
        assert call("Encrypt") == (200, b"{}")  # forwarded
        held = {}
        th = threading.Thread(target=lambda: held.update(r=call("GenerateRandom")))
        t0 = time.monotonic()
        th.start()
        deadline = time.monotonic() + 5
        while px.counts.get("timeout", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        px.stop()
        th.join(10)
        assert not th.is_alive() and held["r"][0] is None and time.monotonic() - t0 < 5
        assert px.counts == {"requests": 6, "op:Encrypt": 3, "op:Decrypt": 2,
                             "op:GenerateRandom": 1, "throttle": 2, "error": 1, "reset": 1,
                             "forwarded": 1, "timeout": 1}
    finally:
        px.stop()
        up.shutdown()
        up.server_close()


# ------------------------------------------------------------------ host KMS through the proxy

PLAIN = (b"db:\n    user: admin\n    password: LEAKCANARY-faults-pw\n"
         b"api_token: LEAKCANARY-faults-token\nport: 5432\n")


def _host_env(kms_env, sandbox, url, *, attempts=3, shim=None, read_timeout=0.5):
    env = sandbox.env(kms_env, AWS_ENDPOINT_URL_KMS=url, AWS_MAX_ATTEMPTS=str(attempts),
                      AWS_RETRY_MODE="standard")
    env.pop("SOPS_AGE_KEY", None)  # only the KMS key can open these files
    if shim is not None:
        env = _with_shim(env, shim, read_timeout)
    return env


def _kms_encrypted(tmp_path, kms_env, kms_key, name="secret.yaml") -> Path:
    src = tmp_path / "plain-src.yaml"
    src.write_bytes(PLAIN)
    out = tmp_path / name
    p = _run(SE + ["encrypt", "--kms", kms_key, "--output", out, src], kms_env)
    assert p.returncode == 0, p.stderr
    src.unlink()
    return out


@pytest.mark.parametrize("op", ["encrypt", "decrypt"])
def test_host_kms_throttling_is_retried(op, tmp_path, sandbox, kms_env, kms_key, kms_server,
                                        proxy_factory):
    """ThrottlingException on the first 2 requests: botocore (standard mode) retries it."""
    px = proxy_factory(kms_server, _plan("throttle", first=2))
    env = _host_env(kms_env, sandbox, px.url, attempts=3)
    if op == "encrypt":
        f = tmp_path / "secret.yaml"
        f.write_bytes(PLAIN)
        p = _run(SE + ["encrypt", "--kms", kms_key, "-i", f], env)
    else:
        f = _kms_encrypted(tmp_path, kms_env, kms_key)
        p = _run(SE + ["decrypt", "-i", f], env)
    assert p.returncode == 0, p.stderr
    assert px.counts.get("throttle") == 2 and px.counts.get("forwarded", 0) >= 1, px.counts
    if op == "encrypt":
        assert b"LEAKCANARY" not in f.read_bytes() and b"ENC[AES256_GCM" in f.read_bytes()
        d = _run(SE + ["decrypt", f], dict(kms_env, SOPS_AGE_KEY=""))
        assert d.returncode == 0 and d.stdout == PLAIN, d.stderr
    else:
        assert f.read_bytes() == PLAIN
    sandbox.assert_clean(tmp_path)


@pytest.mark.parametrize("kind", ["500", "503", "reset", "timeout"])
@pytest.mark.parametrize("op", ["encrypt", "decrypt"])
def test_host_kms_permanent_failure_leaves_file_unchanged(op, kind, tmp_path, sandbox, kms_env,
                                                          kms_key, kms_server, proxy_factory,
                                                          boto_shim):
    attempts = 2 if kind == "timeout" else 3
    px = proxy_factory(kms_server, _plan(kind))
    env = _host_env(kms_env, sandbox, px.url, attempts=attempts,
                    shim=boto_shim if kind == "timeout" else None)
    if op == "encrypt":
        f = tmp_path / "secret.yaml"
        f.write_bytes(PLAIN)
    else:
        f = _kms_encrypted(tmp_path, kms_env, kms_key)
    before = f.read_bytes()
    t0 = time.monotonic()
    if op == "encrypt":
        p = _run(SE + ["encrypt", "--kms", kms_key, "-i", f], env)
        _assert_clean_error(p, 1, mentions=("Could not generate data key", "AWS KMS"))
    else:
        p = _run(SE + ["decrypt", "-i", f], env)
        err = _assert_clean_error(p, 128, multiline=True, mentions=("AWS KMS",))
        assert err.startswith("Failed to get the data key required to decrypt the SOPS file.")
    if kind == "timeout":
        assert b"Read timeout" in p.stderr, p.stderr
        assert time.monotonic() - t0 < 30
    assert f.read_bytes() == before, "the file changed"
    assert px.counts.get("requests") == attempts, px.counts  # retried, and bounded
    assert px.counts.get("forwarded", 0) == 0
    assert sorted(x.name for x in tmp_path.iterdir()) == ["secret.yaml"]
    sandbox.assert_clean(tmp_path)


def test_host_kms_failure_writes_no_output_file(tmp_path, sandbox, kms_env, kms_key, kms_server,
                                                proxy_factory):
    px = proxy_factory(kms_server, _plan("503"))
    env = _host_env(kms_env, sandbox, px.url)
    src = tmp_path / "secret.yaml"
    src.write_bytes(PLAIN)
    out = tmp_path / "out" / "secret.enc.yaml"
    out.parent.mkdir()
    p = _run(SE + ["encrypt", "--kms", kms_key, "--output", out, src], env)
    _assert_clean_error(p, 1)
    assert not out.exists() and list(out.parent.iterdir()) == []
    assert src.read_bytes() == PLAIN
    sandbox.assert_clean(tmp_path)


def test_host_kms_throttled_beyond_max_attempts_fails_cleanly(tmp_path, sandbox, kms_env,
                                                              kms_key, kms_server,
                                                              proxy_factory):
    """Throttled on every request: botocore gives up after AWS_MAX_ATTEMPTS, exit 128."""
    f = _kms_encrypted(tmp_path, kms_env, kms_key)
    before = f.read_bytes()
    px = proxy_factory(kms_server, _plan("throttle"))
    p = _run(SE + ["decrypt", "-i", f], _host_env(kms_env, sandbox, px.url, attempts=2))
    _assert_clean_error(p, 128, multiline=True, mentions=("ThrottlingException",))
    assert px.counts.get("throttle") == 2
    assert f.read_bytes() == before
    sandbox.assert_clean(tmp_path)


# ---------------------------------------------------------- exec: KMS faults behind the enclave

def _policy() -> str:
    """Decrypt only with an attestation document (any measurement: PCR pinning is tested in
    test_exec.py, and the dev PCR0 changes whenever the source does, which others edit
    while these tests run)."""
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": "*"},
         "Action": ["kms:Encrypt", "kms:DescribeKey", "kms:GetKeyPolicy", "kms:PutKeyPolicy"],
         "Resource": "*"},
        {"Sid": "AttestedOnly", "Effect": "Allow", "Principal": {"AWS": "*"},
         "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*",
         "Condition": {"Null": {PCR0_KEY: "false"}}},
        {"Sid": "DenyWithoutAttestation", "Effect": "Deny", "Principal": {"AWS": "*"},
         "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*",
         "Condition": {"Null": {PCR0_KEY: "true"}}},
    ]})


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    ca = tmp_path_factory.mktemp("dev-ca")
    old = os.environ.get("SOPS_ENCLAVE_DEV_CA_DIR")
    os.environ["SOPS_ENCLAVE_DEV_CA_DIR"] = str(ca)
    from sops_enclave.devtools.devstack import DevStack

    stack = DevStack(ca_dir=str(ca)).start()
    try:
        import boto3

        c = boto3.client("kms", region_name="us-east-1", endpoint_url=stack.url,
                         aws_access_key_id="dev", aws_secret_access_key="dev")
        gated = c.create_key(Description="inputs, enclave only")["KeyMetadata"]["Arn"]
        c.put_key_policy(KeyId=gated, PolicyName="default", Policy=_policy())
        runtime = c.create_key(Description="outputs")["KeyMetadata"]["Arn"]
        yield {"stack": stack, "ca": str(ca), "gated": gated, "runtime": runtime}
    finally:
        stack.stop()
        if old is None:
            os.environ.pop("SOPS_ENCLAVE_DEV_CA_DIR", None)
        else:
            os.environ["SOPS_ENCLAVE_DEV_CA_DIR"] = old


def _git(repo, *args):
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.invalid",
               GIT_CONFIG_NOSYSTEM="1", HOME=str(repo))
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env,
                   timeout=30)


EXEC_DOCS = {"secrets/common.yaml": (b"db:\n    host: db.internal\n"
                                     b"    password: LEAKCANARY-common\n"),
             "secrets/prod.yaml": b"api:\n    token: LEAKCANARY-prod-token\n"}


@pytest.fixture(scope="module")
def repo_template(tmp_path_factory, base_env, dev, age_key) -> Path:
    """A committed repository with two gated inputs and a manifest (built once, copied)."""
    stack = dev["stack"]
    d = tmp_path_factory.mktemp("repo-template")
    repo = d / "repo"
    (repo / "secrets").mkdir(parents=True)
    env = dict(base_env, **stack.env(), SOPS_ENCLAVE_DEV_CA_DIR=dev["ca"])
    for path, content in EXEC_DOCS.items():
        src = d / os.path.basename(path)
        src.write_bytes(content)
        p = _run(SE + ["encrypt", "--kms", dev["gated"], "--output",
                       repo / path.replace(".yaml", ".enc.yaml"), src], env)
        assert p.returncode == 0, p.stderr
        src.unlink()
    (repo / ".sops-enclave.yaml").write_text(f"""version: 1
outputs:
  - target: "api/prod"
    path: "deploy/api/prod.enc.json"
    inputs:
      - secrets/common.enc.yaml
      - {{file: "secrets/prod.enc.yaml", extract: '["api"]'}}
    encrypt:
      kms: ["{dev['runtime']}"]
      age: ["{age_key[1]}"]
""")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "secrets")
    return repo


@pytest.fixture
def exec_repo(tmp_path, repo_template, base_env, dev) -> tuple[Path, dict[str, str]]:
    """(a fresh copy of the template repository, the exec environment)."""
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(repo_template, repo, symlinks=True)
    return repo, dict(base_env, **dev["stack"].env(), SOPS_ENCLAVE_DEV_CA_DIR=dev["ca"])


def _snapshot(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for p in sorted(repo.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(repo).parts}


def _no_outputs(repo: Path, before: dict[str, bytes]) -> None:
    assert _snapshot(repo) == before, "a file in the work tree changed or appeared"
    deploy = repo / "deploy"
    assert not deploy.exists() or not [p for p in deploy.rglob("*") if p.is_file()]
    for rec in repo.rglob("*.receipt.json"):
        raise AssertionError(f"receipt without its output: {rec}")


def _exec(repo: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return _run(SE + ["exec", "--repo", repo], env)


def _exec_until_kms(repo: Path, env: dict[str, str], px, log: Path) -> subprocess.Popen:
    """Start exec (stderr to ``log``: an orphaned enclave would hold a pipe open) and wait,
    bounded, until the enclave's first KMS Decrypt reached the proxy."""
    with open(log, "wb") as errf:
        proc = subprocess.Popen(SE + ["exec", "--repo", str(repo)], env=env,
                                stdout=subprocess.DEVNULL, stderr=errf, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while px.counts.get("op:Decrypt", 0) < 1 and time.monotonic() < deadline \
            and proc.poll() is None:
        time.sleep(0.02)
    if px.counts.get("op:Decrypt", 0) >= 1:
        return proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    raise AssertionError(f"the enclave never called KMS: {log.read_bytes()!r}")


def test_exec_kms_throttling_is_retried(tmp_path, sandbox, exec_repo, dev, base_env,
                                        proxy_factory):
    repo, env = exec_repo
    px = proxy_factory(dev["stack"].url, _plan("throttle", first=2))
    p = _exec(repo, sandbox.env(env, AWS_ENDPOINT_URL_KMS=px.url))
    assert p.returncode == 0, p.stderr
    assert px.counts.get("throttle") == 2, px.counts
    out = repo / "deploy" / "api" / "prod.enc.json"
    assert out.exists() and Path(str(out) + ".receipt.json").exists()
    d = _run(SE + ["decrypt", out], base_env)
    assert d.returncode == 0 and json.loads(d.stdout)["token"] == "LEAKCANARY-prod-token"
    sandbox.assert_clean(repo)


@pytest.mark.parametrize("kind", ["503", "reset", "timeout"])
def test_exec_kms_decrypt_failure_writes_nothing(kind, tmp_path, sandbox, exec_repo, dev,
                                                 proxy_factory, boto_shim):
    repo, env = exec_repo
    before = _snapshot(repo)
    px = proxy_factory(dev["stack"].url, _plan(kind, target="Decrypt"))
    env = sandbox.env(env, AWS_ENDPOINT_URL_KMS=px.url)
    if kind == "timeout":
        env = _with_shim(env, boto_shim, 0.2)
    t0 = time.monotonic()
    p = _exec(repo, env)
    _assert_clean_error(p, 128, mentions=("KMS",))
    assert time.monotonic() - t0 < 60
    assert px.counts.get("forwarded", 0) == 0 and px.counts.get("op:Decrypt", 0) >= 5, px.counts
    _no_outputs(repo, before)
    sandbox.assert_clean(repo)


def test_exec_kms_encrypt_failure_writes_nothing(tmp_path, sandbox, exec_repo, dev,
                                                 proxy_factory):
    """Inputs decrypt fine; encrypting the output for the runtime KMS key fails."""
    repo, env = exec_repo
    before = _snapshot(repo)
    px = proxy_factory(dev["stack"].url, _plan("500", target="Encrypt"))
    p = _exec(repo, sandbox.env(env, AWS_ENDPOINT_URL_KMS=px.url))
    _assert_clean_error(p, 1, mentions=("KMS Encrypt",))
    assert px.counts.get("op:Encrypt", 0) >= 1 and px.counts.get("error", 0) >= 1, px.counts
    _no_outputs(repo, before)
    sandbox.assert_clean(repo)


def _our_enclaves(marker: str) -> list[int]:
    """PIDs of dev enclaves (``sops_enclave.devtools.dev_enclave``) whose command line names ``marker``
    (the per-test TMPDIR): only processes this test started."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"sops_enclave.devtools.dev_enclave" in cmd and marker.encode() in cmd:
            pids.append(int(d))
    return pids


def _kill_all(pids, sig=signal.SIGKILL):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _reap(proc: subprocess.Popen, marker: str) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    _kill_all(_our_enclaves(marker))


class Slow(AssertionError):
    """A command did not stop in time."""


_SHUTDOWN_NOISE = re.compile(r"Exception ignored in: .*?\nSystemExit: 0\n", re.S)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_exec_enclave_killed_mid_run(sig, tmp_path, sandbox, exec_repo, dev,
                                     proxy_factory):
    """The enclave dies while its KMS Decrypt is slow: exec fails, nothing written.

    (SIGTERM: the enclave's own 'Exception ignored ... SystemExit: 0' shutdown noise, which
    shows up in some runs, is checked by test_exec_enclave_repeated_sigterm_prints_no_traceback.)
    """
    from sops_enclave.devtools.faulty_proxy import Fault

    repo, env = exec_repo
    before = _snapshot(repo)
    px = proxy_factory(dev["stack"].url, Fault.delay(2, target="Decrypt"))
    log = tmp_path / "stderr.log"
    marker = str(sandbox.tmpdir)
    proc = _exec_until_kms(repo, sandbox.env(env, AWS_ENDPOINT_URL_KMS=px.url), px, log)
    try:
        pids = _our_enclaves(marker)
        assert len(pids) == 1, pids
        os.kill(pids[0], sig)
        proc.wait(30)
    finally:
        _reap(proc, marker)
    err = log.read_bytes()
    if sig == signal.SIGTERM:
        err = _SHUTDOWN_NOISE.sub("", err.decode(errors="replace")).encode()
    _assert_clean_error(subprocess.CompletedProcess(proc.args, proc.returncode, b"", err), 1)
    _no_outputs(repo, before)
    sandbox.assert_clean(repo)


def test_exec_enclave_sigterm_is_prompt(tmp_path, sandbox, exec_repo, dev, proxy_factory):
    from sops_enclave.devtools.faulty_proxy import Fault

    repo, env = exec_repo
    px = proxy_factory(dev["stack"].url, Fault.delay(3, target="Decrypt"))
    marker = str(sandbox.tmpdir)
    proc = _exec_until_kms(repo, sandbox.env(env, AWS_ENDPOINT_URL_KMS=px.url), px,
                           tmp_path / "stderr.log")
    try:
        _kill_all(_our_enclaves(marker), signal.SIGTERM)
        t0 = time.monotonic()
        proc.wait(30)
        took = time.monotonic() - t0
    finally:
        _reap(proc, marker)
    assert proc.returncode != 0
    if took > 1.5:
        raise Slow(f"exec took {took:.1f}s to fail after the enclave got SIGTERM")


def test_exec_enclave_repeated_sigterm_prints_no_traceback(tmp_path, sandbox, exec_repo, dev,
                                                           proxy_factory):
    """A process manager may send SIGTERM more than once; exec's output stays clean."""
    from sops_enclave.devtools.faulty_proxy import Fault

    repo, env = exec_repo
    px = proxy_factory(dev["stack"].url, Fault.delay(2, target="Decrypt"))
    log = tmp_path / "stderr.log"
    marker = str(sandbox.tmpdir)
    proc = _exec_until_kms(repo, sandbox.env(env, AWS_ENDPOINT_URL_KMS=px.url), px, log)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = _our_enclaves(marker)
            if not pids:
                break
            _kill_all(pids, signal.SIGTERM)
            time.sleep(0.02)
        proc.wait(30)
    finally:
        _reap(proc, marker)
    assert proc.returncode == 1
    assert b"Traceback" not in log.read_bytes(), log.read_bytes().decode(errors="replace")


def test_exec_enclave_killed_error_names_the_enclave(tmp_path, sandbox, exec_repo, dev,
                                                     proxy_factory):
    from sops_enclave.devtools.faulty_proxy import Fault

    repo, env = exec_repo
    px = proxy_factory(dev["stack"].url, Fault.delay(20, target="Decrypt"))
    log = tmp_path / "stderr.log"
    marker = str(sandbox.tmpdir)
    proc = _exec_until_kms(repo, sandbox.env(env, AWS_ENDPOINT_URL_KMS=px.url), px, log)
    try:
        _kill_all(_our_enclaves(marker))
        proc.wait(30)
    finally:
        _reap(proc, marker)
    err = log.read_bytes().replace(b"[sops-enclave] dev enclave (software NSM)", b"")
    assert proc.returncode != 0
    assert b"enclave" in err.lower(), err


def test_exec_host_sigterm_leaves_no_enclave_or_workdir(tmp_path, sandbox, exec_repo, dev,
                                                        proxy_factory):
    """The host gets SIGTERM while the enclave waits on KMS: nothing written, and the dev
    enclave process and its private work directory must not outlive the host."""
    from sops_enclave.devtools.faulty_proxy import Fault

    repo, env = exec_repo
    before = _snapshot(repo)
    px = proxy_factory(dev["stack"].url, Fault.delay(20, target="Decrypt"))
    marker = str(sandbox.tmpdir)
    proc = _exec_until_kms(repo, sandbox.env(env, AWS_ENDPOINT_URL_KMS=px.url), px,
                           tmp_path / "stderr.log")
    try:
        proc.terminate()
        proc.wait(30)
        time.sleep(0.3)
        orphans = _our_enclaves(marker)
        left = sandbox.leftovers(repo)
    finally:
        _reap(proc, marker)
    _no_outputs(repo, before)
    if orphans or left:
        raise Leftover(f"after SIGTERM of the host: enclave processes still running {orphans}, "
                       f"left behind {left}")


@pytest.fixture(scope="module")
def listen_shim(tmp_path_factory) -> Path:
    """A ``sitecustomize`` that, in the dev enclave process only, waits
    ``$SOPS_ENCLAVE_TEST_LISTEN_DELAY`` seconds before ``listen()`` on its unix socket: a slow
    enclave start (the socket file exists from ``bind()`` on)."""
    d = tmp_path_factory.mktemp("listen-shim")
    (d / "sitecustomize.py").write_text(
        "import os, sys\n"
        "_d = os.environ.get('SOPS_ENCLAVE_TEST_LISTEN_DELAY')\n"
        "if _d and 'sops_enclave.devtools.dev_enclave' in getattr(sys, 'orig_argv', []):\n"
        "    import socket, time\n"
        "    _listen = socket.socket.listen\n"
        "    def listen(self, *a):\n"
        "        if self.family == socket.AF_UNIX:\n"
        "            time.sleep(float(_d))\n"
        "        return _listen(self, *a)\n"
        "    socket.socket.listen = listen\n")
    return d


def test_dev_enclave_start_race(tmp_path, sandbox, exec_repo, dev, listen_shim):
    """A slow enclave start (listen() 0.5 s after bind()): the host must not connect early.
    (Failed with 'internal error: ConnectionRefusedError in _connect' before c0a496d.)"""
    repo, env = exec_repo
    env = sandbox.env(env, PYTHONPATH=str(listen_shim), SOPS_ENCLAVE_TEST_LISTEN_DELAY="0.5")
    p = _run(SE + ["exec", "--repo", repo], env)
    _kill_all(_our_enclaves(str(sandbox.tmpdir)))
    assert b"Traceback" not in p.stderr
    assert p.returncode == 0, p.stderr


def test_exec_with_a_long_tmpdir(tmp_path, exec_repo, dev):
    repo, env = exec_repo
    long_tmp = tmp_path / ("t" * 10) / ("d" * 40)  # a CI-style nested TMPDIR
    long_tmp.mkdir(parents=True)
    assert len(str(long_tmp)) > 80
    p = _run(SE + ["exec", "--repo", repo], dict(env, TMPDIR=str(long_tmp)))
    _kill_all(_our_enclaves(str(long_tmp)))
    assert b"Traceback" not in p.stderr, p.stderr.decode(errors="replace")
    assert p.returncode == 0 or b"too long" in p.stderr, p.stderr


# ------------------------------------------------------------------ the host killed mid-write

def _big_yaml(groups: int = 500, per: int = 100) -> bytes:
    # 50,000 values, nested (a flat 50,000-key map is quadratic to load, see the report).
    lines = []
    for g in range(groups):
        lines.append(f"group{g}:")
        lines += [f"    key{i}: LEAKCANARY-{g}-{i}" for i in range(per)]
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def big(tmp_path_factory, base_env, age_key):
    """(plaintext, its encryption) for the kill tests."""
    d = tmp_path_factory.mktemp("big")
    plain = _big_yaml()
    (d / "big.yaml").write_bytes(plain)
    p = _run(SE + ["encrypt", "--age", age_key[1], "--output", d / "big.enc.yaml",
                   d / "big.yaml"], base_env)
    assert p.returncode == 0, p.stderr
    return plain, (d / "big.enc.yaml").read_bytes()


def _decrypts_to(data: bytes, plain: bytes, age_key) -> bool:
    from sops_enclave import api
    from sops_enclave.keys.groups import LocalKeyService

    try:
        d = api.decrypt_document(data, "yaml", services=[LocalKeyService({"SOPS_AGE_KEY":
                                                                          age_key[0]})])
    except Exception:
        return False
    return api.emit_plain(d.branches, "yaml") == plain


def _temps(watch: Path) -> list[str]:
    return [n for n in os.listdir(watch) if n.startswith(".sops-enclave-")]


def _stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except OSError:
        return False


def _kill_at(proc: subprocess.Popen, sig: int, when, watch: Path) -> bool:
    """Send ``sig`` after ``when`` seconds, or (``when == "tmpfile"``) while a
    ``.sops-enclave-*`` temporary exists in ``watch``: on sight the process is stopped
    (SIGSTOP), the temporary is checked to be still there, then ``sig`` and SIGCONT are sent
    (a default-action fatal signal kills a stopped process; a handler would run on SIGCONT).
    True if the signal was sent at that point."""
    if when == "tmpfile":
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if _temps(watch):
                break
        else:
            return False
        proc.send_signal(signal.SIGSTOP)
        stop_deadline = time.monotonic() + 5
        while not _stopped(proc.pid) and proc.poll() is None \
                and time.monotonic() < stop_deadline:
            time.sleep(0.001)
        if proc.poll() is not None or not _stopped(proc.pid) or not _temps(watch):
            proc.send_signal(signal.SIGCONT)  # too late: the rename already happened
            proc.communicate(timeout=30)
            return False
        proc.send_signal(sig)
        proc.send_signal(signal.SIGCONT)
        proc.communicate(timeout=30)
        return True
    time.sleep(when)
    if proc.poll() is not None:
        return False
    proc.send_signal(sig)
    proc.communicate(timeout=30)
    return True


CASES = {"encrypt-output": "encrypt", "encrypt-in-place": "encrypt",
         "decrypt-in-place": "decrypt"}


def _start(case: str, d: Path, big, age_key, env) -> tuple[subprocess.Popen, Path, Path]:
    """Start the command; returns (process, input, target)."""
    plain, enc = big
    src = d / "data.yaml"
    src.write_bytes(enc if case == "decrypt-in-place" else plain)
    if case == "encrypt-output":
        target = d / "out.yaml"
        cmd = SE + ["encrypt", "--age", age_key[1], "--output", str(target), str(src)]
    elif case == "encrypt-in-place":
        target = src
        cmd = SE + ["encrypt", "--age", age_key[1], "-i", str(src)]
    else:
        target = src
        cmd = SE + ["decrypt", "-i", str(src)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    return proc, src, target


def _check_after_kill(case: str, d: Path, src: Path, target: Path, big, age_key) -> None:
    """The original is intact; the target is absent/old or complete and correct."""
    plain, enc = big
    if case == "encrypt-output":
        if src.read_bytes() != plain:
            raise PartialWrite("the input changed")
        if target.exists() and not _decrypts_to(target.read_bytes(), plain, age_key):
            raise PartialWrite(f"{target.name} exists but is not a complete encryption")
    elif case == "encrypt-in-place":
        data = src.read_bytes()
        if data != plain and not _decrypts_to(data, plain, age_key):
            raise PartialWrite("the file is neither the old nor a complete new content")
    else:
        data = src.read_bytes()
        if data != enc and data != plain:
            raise PartialWrite("the file is neither the old nor a complete new content")


def _hidden_temps_only(left: list[str], d: Path) -> None:
    for p in map(Path, left):
        assert p.parent == d and p.name.startswith(".sops-enclave-") \
            and p.name.endswith(".tmp"), f"unexpected leftover {p} (not a hidden temp in {d})"


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_host_killed_at_timed_points(sig, case, tmp_path, big, base_env, age_key):
    """Killed after 50/100/200 ms (reading, parsing, encrypting): nothing changes."""
    sent = []
    for when in (0.05, 0.1, 0.2):
        d = tmp_path / f"at{int(when * 1000)}"
        d.mkdir()
        sb = Sandbox(d)
        try:
            proc, src, target = _start(case, d, big, age_key, sb.env(base_env))
            try:
                sent.append(_kill_at(proc, sig, when, d))
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate(timeout=10)
            _check_after_kill(case, d, src, target, big, age_key)
            left = sb.leftovers(d)
        finally:
            sb.close()
        if sig == signal.SIGKILL:
            _hidden_temps_only(left, d)
        elif left:
            raise Leftover(f"SIGTERM at {when}s left {left}")
    assert any(sent), "the process ended before any kill: the test proved nothing"


def _kill_while_writing(case, d, big, age_key, env, sig) -> tuple[Path, Path]:
    """Run until ``sig`` lands while the temporary exists (at most 5 tries: on a loaded
    machine a short write can finish between two polls). Returns (input, target)."""
    for _ in range(5):
        for p in d.iterdir():  # a fresh start: no input, no output of the previous try
            if p.is_file():
                p.unlink()
        proc, src, target = _start(case, d, big, age_key, env)
        try:
            if _kill_at(proc, sig, "tmpfile", d):
                return src, target
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
    raise AssertionError("the process always finished before its temporary file was seen")


@pytest.mark.parametrize("case", list(CASES))
def test_host_sigkilled_while_writing(case, tmp_path, sandbox, big, base_env, age_key):
    """SIGKILL the moment the temporary appears. A SIGKILLed process cannot clean up: what may
    remain is a hidden ``.sops-enclave-*.tmp`` next to the target, never a partial target."""
    src, target = _kill_while_writing(case, tmp_path, big, age_key, sandbox.env(base_env),
                                      signal.SIGKILL)
    _check_after_kill(case, tmp_path, src, target, big, age_key)
    left = sandbox.leftovers(tmp_path)
    _hidden_temps_only(left, tmp_path)
    print(f"\n[{case}] left after SIGKILL while writing: {[Path(p).name for p in left]}")


@pytest.mark.parametrize("case", list(CASES))
def test_host_sigtermed_while_writing(case, tmp_path, sandbox, big, base_env, age_key):
    """SIGTERM the moment the temporary appears: old or new content, and no temp file left
    (SIGTERM can be caught, unlike SIGKILL)."""
    src, target = _kill_while_writing(case, tmp_path, big, age_key, sandbox.env(base_env),
                                      signal.SIGTERM)
    _check_after_kill(case, tmp_path, src, target, big, age_key)
    sandbox.assert_clean(tmp_path)


# ------------------------------------------------------- unwritable and full output directories

def _mount(*args: str) -> str | None:
    """Run mount; the error text, or None on success."""
    try:
        p = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    return None if p.returncode == 0 else (p.stderr.strip() or f"exit {p.returncode}")


def _umount(path: Path) -> None:
    p = subprocess.run(["umount", str(path)], capture_output=True, timeout=20)
    if p.returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=20)


@pytest.fixture
def readonly_dir(tmp_path):
    """A directory writes are refused in, even for root: a read-only bind mount, else an
    immutable (chattr +i) directory, else chmod 0500 for a non-root user."""
    d = tmp_path / "ro"
    d.mkdir()
    (d / "existing.yaml").write_bytes(PLAIN)
    how = None
    if os.geteuid() == 0:
        if _mount("--bind", str(d), str(d)) is None:
            if _mount("-o", "remount,bind,ro", str(d)) is None:
                how = "bind"
            else:
                _umount(d)
        if how is None:
            p = subprocess.run(["chattr", "+i", str(d)], capture_output=True, timeout=20)
            if p.returncode == 0:
                how = "chattr"
        if how is None:
            pytest.skip("running as root and neither a read-only bind mount nor chattr +i is "
                        "permitted here: permissions alone do not stop root")
    else:
        os.chmod(d, 0o500)
        how = "chmod"
    try:
        probe = d / ".probe"
        probe.write_bytes(b"x")
        probe.unlink()
        pytest.skip(f"the {how} directory is still writable here")
    except OSError:
        pass
    yield d
    if how == "bind":
        _umount(d)
    elif how == "chattr":
        subprocess.run(["chattr", "-i", str(d)], capture_output=True, timeout=20)
    else:
        os.chmod(d, 0o700)


def test_output_into_readonly_directory(readonly_dir, tmp_path, sandbox, base_env, age_key):
    src = tmp_path / "plain.yaml"
    src.write_bytes(PLAIN)
    out = readonly_dir / "out.yaml"
    p = _run(SE + ["encrypt", "--age", age_key[1], "--output", out, src], sandbox.env(base_env))
    _assert_clean_error(p, 3)
    assert not out.exists() and src.read_bytes() == PLAIN
    p = _run(SE + ["encrypt", "--age", age_key[1], "-i", readonly_dir / "existing.yaml"],
             sandbox.env(base_env))
    _assert_clean_error(p, 3)
    assert (readonly_dir / "existing.yaml").read_bytes() == PLAIN
    assert sorted(x.name for x in readonly_dir.iterdir()) == ["existing.yaml"]
    sandbox.assert_clean(tmp_path)


def test_output_path_through_a_file(tmp_path, sandbox, base_env, age_key):
    """A directory of the output path is a regular file (works for root too)."""
    src = tmp_path / "plain.yaml"
    src.write_bytes(PLAIN)
    (tmp_path / "blocker").write_bytes(b"not a directory")
    p = _run(SE + ["encrypt", "--age", age_key[1], "--output", tmp_path / "blocker" / "o.yaml",
                   src], sandbox.env(base_env))
    _assert_clean_error(p, 3)
    assert (tmp_path / "blocker").read_bytes() == b"not a directory"
    assert src.read_bytes() == PLAIN
    sandbox.assert_clean(tmp_path)


@pytest.fixture
def small_tmpfs(tmp_path):
    d = tmp_path / "full"
    d.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    err = _mount("-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(d))
    if err is not None:
        pytest.skip(f"cannot mount a 64k tmpfs here: {err}")
    yield d
    _umount(d)


def _plain_of_size(n: int) -> bytes:
    lines, i = [], 0
    while sum(len(x) + 1 for x in lines) < n:
        lines.append(f"key{i}: LEAKCANARY-disk-{i:06d}")
        i += 1
    return ("\n".join(lines) + "\n").encode()


def test_full_disk_output(small_tmpfs, tmp_path, sandbox, base_env, age_key):
    src = tmp_path / "plain.yaml"
    src.write_bytes(_plain_of_size(40_000))  # ~4x larger once encrypted: > 64k
    out = small_tmpfs / "out.yaml"
    p = _run(SE + ["encrypt", "--age", age_key[1], "--output", out, src], sandbox.env(base_env))
    _assert_clean_error(p, 3)
    assert list(small_tmpfs.iterdir()) == [], "partial output or temporary left on the full disk"
    sandbox.assert_clean(tmp_path)


def test_full_disk_in_place(small_tmpfs, tmp_path, sandbox, base_env, age_key):
    plain = _plain_of_size(20_000)
    f = small_tmpfs / "secret.yaml"
    f.write_bytes(plain)
    p = _run(SE + ["encrypt", "--age", age_key[1], "-i", f], sandbox.env(base_env))
    _assert_clean_error(p, 3)
    assert f.read_bytes() == plain
    assert [x.name for x in small_tmpfs.iterdir()] == ["secret.yaml"]
    sandbox.assert_clean(tmp_path)


def test_exec_full_disk_writes_nothing(tmp_path, sandbox, exec_repo, dev):
    """The output fits, its receipt does not: all or nothing (no output without receipt)."""
    repo, env = exec_repo
    before = _snapshot(repo)
    deploy = repo / "deploy"
    deploy.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    err = _mount("-t", "tmpfs", "-o", "size=4k,mode=0755", "tmpfs", str(deploy))
    if err is not None:
        pytest.skip(f"cannot mount a tmpfs here: {err}")
    try:
        p = _exec(repo, sandbox.env(env))
        _assert_clean_error(p, 3)
        files = [x for x in deploy.rglob("*") if x.is_file()]
    finally:
        _umount(deploy)
    assert files == [], f"files left on the full disk: {files}"
    _no_outputs(repo, before)
    sandbox.assert_clean(repo)


def test_exec_readonly_output_directory(tmp_path, sandbox, exec_repo, dev):
    repo, env = exec_repo
    before = _snapshot(repo)
    deploy = repo / "deploy"
    deploy.mkdir()
    if os.geteuid() != 0:
        os.chmod(deploy, 0o500)
        how = "chmod"
    elif _mount("--bind", str(deploy), str(deploy)) is None:
        if _mount("-o", "remount,bind,ro", str(deploy)) is not None:
            _umount(deploy)
            pytest.skip("a read-only bind mount is not permitted here (root ignores modes)")
        how = "bind"
    else:
        pytest.skip("a read-only bind mount is not permitted here (root ignores modes)")
    try:
        p = _exec(repo, sandbox.env(env))
    finally:
        if how == "bind":
            _umount(deploy)
        else:
            os.chmod(deploy, 0o700)
    _assert_clean_error(p, 3)
    _no_outputs(repo, before)
    sandbox.assert_clean(repo)
