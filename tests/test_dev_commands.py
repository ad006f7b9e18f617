"""`sops-enclave dev up|env|down|kms` (issue #15): a background dev stack whose keys and port
survive a restart, keys made and gated without the aws CLI.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run

TOOL = [sys.executable, "-m", "sops_enclave"]
ARN = re.compile(r"arn:aws:kms:us-east-1:123456789012:key/[0-9a-f-]{36}")


def dev(env, state: Path, *args: str, input: bytes | None = None):
    return run(TOOL + ["dev", *args, "--state", str(state)], env, input=input)


def exports(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line.startswith("export "):
            k, _, v = line[len("export "):].partition("=")
            out[k] = shlex.split(v)[0]
    return out


def _stop(state: Path) -> None:
    """Teardown: stop the stack of ``state`` even if a test failed half-way."""
    try:
        pid = json.loads((state / "run.json").read_text())["pid"]
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture
def state(tmp_path):
    d = tmp_path / "state"
    yield d
    _stop(d)


@pytest.fixture
def env(base_env, tmp_path):
    e = {k: v for k, v in base_env.items() if not k.startswith("SOPS_ENCLAVE")}
    e["HOME"] = str(tmp_path / "home")
    return e


@pytest.fixture(scope="module")
def enclave_policy(tmp_path_factory):
    d = tmp_path_factory.mktemp("policy")
    p = d / "enclave-policy.yaml"
    p.write_text('version: 1\ncommit_signers:\n  - "release@example.com ssh-ed25519 '
                 'AAAAC3NzaC1lZDI1NTE5AAAAIAOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4"\n'
                 'outputs:\n  kms: ["arn:aws:kms:us-east-1:123456789012:alias/runtime"]\n')
    return p


def test_keys_and_port_survive_a_restart(env, state, tmp_path, enclave_policy):
    from sops_enclave.devtools.devstack import dev_pcrs

    up = dev(env, state, "up", "--enclave-policy", str(enclave_policy))
    assert up.returncode == 0, up.stderr
    first = exports(up.stdout.decode())
    assert first["SOPS_ENCLAVE_DEV_STATE"] == str(state)
    assert first["SOPS_ENCLAVE_DEV_CA_DIR"] == str(state / "dev-ca")
    pcr0 = dev_pcrs(enclave_policy.read_bytes())[0].hex()
    assert f"with enclave policy {enclave_policy}: {pcr0}" in up.stdout.decode()
    e = dev(env, state, "env")
    assert e.returncode == 0 and exports(e.stdout.decode()) == first
    shell = dict(env, **first)

    runtime = dev(shell, state, "kms", "create-key", "--alias", "runtime")
    assert runtime.returncode == 0, runtime.stderr
    runtime_arn = runtime.stdout.decode().strip()
    assert ARN.fullmatch(runtime_arn)
    gated = dev(shell, state, "kms", "create-key", "--alias", "inputs", "--gated")
    assert gated.returncode == 0, gated.stderr
    gated_arn = gated.stdout.decode().strip()
    assert ARN.fullmatch(gated_arn) and gated_arn != runtime_arn
    # --gated defaults to the enclave policy `dev up` was given.
    assert f"PCR0 {pcr0[:16]}..." in gated.stderr.decode()
    assert str(enclave_policy) in gated.stderr.decode()

    src = tmp_path / "s.yaml"
    src.write_text("token: t0k3n-9a\n")
    for arn, name in ((runtime_arn, "rt"), (gated_arn, "gated")):
        p = run(TOOL + ["encrypt", "--kms", arn, "--output", str(tmp_path / f"{name}.enc.yaml"),
                        str(src)], shell)
        assert p.returncode == 0, p.stderr
    ok = run(TOOL + ["decrypt", str(tmp_path / "rt.enc.yaml")], shell)
    assert ok.returncode == 0 and ok.stdout == b"token: t0k3n-9a\n", ok.stderr
    # The gated key's policy is applied: the host (role/ci-host) cannot Decrypt with it.
    denied = run(TOOL + ["decrypt", str(tmp_path / "gated.enc.yaml")], shell)
    assert denied.returncode == 128 and b"DenyDecryptWithoutAttestation" in denied.stderr

    down = dev(env, state, "down")
    assert down.returncode == 0 and b"stopped" in down.stdout
    assert not (state / "run.json").exists()
    gone = dev(env, state, "env")
    assert gone.returncode == 1
    assert f"no dev stack is running for {state}: start it with 'sops-enclave dev up " \
           f"--state {state}'" in gone.stderr.decode()

    again = dev(env, state, "up")
    assert again.returncode == 0, again.stderr
    assert "2 key(s) restored" in again.stdout.decode()
    second = exports(again.stdout.decode())
    assert second["AWS_ENDPOINT_URL_KMS"] == first["AWS_ENDPOINT_URL_KMS"]   # same port
    # The enclave policy given to the first `dev up` is still the default.
    assert f"with enclave policy {enclave_policy}: {pcr0}" in again.stdout.decode()
    ok = run(TOOL + ["decrypt", str(tmp_path / "rt.enc.yaml")], shell)
    assert ok.returncode == 0 and ok.stdout == b"token: t0k3n-9a\n", ok.stderr
    listed = dev(shell, state, "kms", "list", "--json")
    keys = {k["Arn"]: k for k in json.loads(listed.stdout)}
    assert keys[runtime_arn]["Aliases"] == ["alias/runtime"]
    assert keys[runtime_arn]["GatedPCR0"] is None
    assert keys[gated_arn]["Aliases"] == ["alias/inputs"]
    assert keys[gated_arn]["GatedPCR0"] == pcr0
    denied = run(TOOL + ["decrypt", str(tmp_path / "gated.enc.yaml")], shell)
    assert denied.returncode == 128 and b"DenyDecryptWithoutAttestation" in denied.stderr
    assert dev(env, state, "down").returncode == 0


def test_a_killed_stack_keeps_the_keys_made_with_dev_kms(env, state, tmp_path):
    up = dev(env, state, "up")
    assert up.returncode == 0, up.stderr
    shell = dict(env, **exports(up.stdout.decode()))
    arn = dev(shell, state, "kms", "create-key").stdout.decode().strip()
    src = tmp_path / "s.env"
    src.write_text("A=1\n")
    enc = tmp_path / "s.enc.env"
    assert run(TOOL + ["encrypt", "--kms", arn, "--output", str(enc), str(src)],
               shell).returncode == 0
    pid = json.loads((state / "run.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)           # no snapshot at exit: the one after create-key
    fd = os.pidfd_open(pid)
    import select

    select.select([fd], [], [], 30)
    os.close(fd)
    assert (state / "run.json").exists()   # stale: the pid is gone
    again = dev(env, state, "up")
    assert again.returncode == 0, again.stderr
    assert "already running" not in again.stdout.decode()
    d = run(TOOL + ["decrypt", str(enc)], shell)
    assert d.returncode == 0 and d.stdout == b"A=1\n", d.stderr
    assert dev(env, state, "down").returncode == 0


def test_up_twice_and_down_twice(env, state):
    a = dev(env, state, "up")
    assert a.returncode == 0, a.stderr
    pid = json.loads((state / "run.json").read_text())["pid"]
    b = dev(env, state, "up")
    assert b.returncode == 0 and "already running at " in b.stdout.decode()
    assert f"(pid {pid})" in b.stdout.decode()
    assert exports(a.stdout.decode()) == exports(b.stdout.decode())
    assert dev(env, state, "down").returncode == 0
    again = dev(env, state, "down")
    assert again.returncode == 0 and b"no dev stack is running" in again.stdout


def test_key_commands_refuse_clearly(env, state, tmp_path):
    not_up = dev(env, state, "kms", "create-key")
    assert not_up.returncode == 1 and b"no dev stack is running" in not_up.stderr
    assert dev(env, state, "up").returncode == 0
    one = dev(env, state, "kms", "create-key", "--alias", "dup")
    assert one.returncode == 0, one.stderr
    two = dev(env, state, "kms", "create-key", "--alias", "alias/dup")
    assert two.returncode == 1
    assert f"alias/dup already names {one.stdout.decode().strip()}" in two.stderr.decode()
    bad = dev(env, state, "kms", "create-key", "--alias", "aws/x")
    assert bad.returncode == 1 and b"not starting with aws/" in bad.stderr
    pol = dev(env, state, "kms", "create-key", "--enclave-policy", str(tmp_path / "p.yaml"))
    assert pol.returncode == 8 and b"--enclave-policy goes with --gated" in pol.stderr
    (tmp_path / "p.json").write_text("{not json")
    pk = dev(env, state, "kms", "put-key-policy", "alias/dup", str(tmp_path / "p.json"))
    assert pk.returncode == 1 and b"the key policy is not JSON" in pk.stderr
    nokey = dev(env, state, "kms", "put-key-policy", "alias/nope", "-", input=b"{}")
    assert nokey.returncode == 1 and b"alias/nope: no such key in the dev KMS" in nokey.stderr
    for p in (one, two, bad, pol, pk, nokey):
        assert b"Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) <= 1
    assert dev(env, state, "down").returncode == 0


def test_put_key_policy_applies_a_generated_policy(env, state, tmp_path, enclave_policy):
    from sops_enclave.devtools.devstack import dev_pcrs

    up = dev(env, state, "up")
    assert up.returncode == 0, up.stderr
    shell = dict(env, **exports(up.stdout.decode()))
    arn = dev(shell, state, "kms", "create-key", "--alias", "inputs").stdout.decode().strip()
    gen = run(TOOL + ["policy", "--dev", "--enclave-policy", str(enclave_policy), "--role",
                      "arn:aws:iam::123456789012:role/ci-host", "--admin",
                      "arn:aws:iam::123456789012:role/kms-admin"], shell)
    assert gen.returncode == 0, gen.stderr
    (tmp_path / "key-policy.json").write_bytes(gen.stdout)
    p = dev(shell, state, "kms", "put-key-policy", "alias/inputs",
            str(tmp_path / "key-policy.json"))
    assert p.returncode == 0, p.stderr
    pcr0 = dev_pcrs(enclave_policy.read_bytes())[0].hex()
    assert p.stdout.decode().strip() == (f"{arn}: key policy set; Decrypt only with an "
                                         f"attestation of PCR0 {pcr0[:16]}...")
    listed = dev(shell, state, "kms", "list").stdout.decode()
    assert f"{arn}  alias/inputs  Enabled, gated to PCR0 {pcr0[:16]}..." in listed
    assert dev(env, state, "down").returncode == 0


def test_bad_enclave_policy_starts_nothing(env, state, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nsurprise: true\n")
    p = dev(env, state, "up", "--enclave-policy", str(bad))
    assert p.returncode != 0 and b"Traceback" not in p.stderr
    assert str(bad).encode() in p.stderr
    assert not (state / "run.json").exists()


def test_port_in_use_is_named(env, state, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        p = dev(env, state, "up", "--port", str(port))
    assert p.returncode == 1
    err = p.stderr.decode()
    assert f"port {port} is in use" in err and "config.json" in err
    assert not (state / "run.json").exists()


def test_default_state_directory_follows_the_environment(env, tmp_path):
    from sops_enclave.devtools.devstack import default_state_dir

    assert default_state_dir({"SOPS_ENCLAVE_DEV_STATE": "/x/s"}) == Path("/x/s")
    assert default_state_dir({"XDG_STATE_HOME": "/x"}) == Path("/x/sops-enclave/dev")
    assert default_state_dir({"HOME": "/h"}) == Path("/h/.local/state/sops-enclave/dev")
    # Without --state the commands use it.
    d = tmp_path / "via-env"
    e = dict(env, SOPS_ENCLAVE_DEV_STATE=str(d))
    try:
        up = run(TOOL + ["dev", "up"], e)
        assert up.returncode == 0, up.stderr
        assert (d / "run.json").exists()
        # No --state: the default dev CA, where `verify --allow-dev` looks by itself.
        assert exports(up.stdout.decode())["SOPS_ENCLAVE_DEV_CA_DIR"] == \
            str(Path(env["HOME"]) / ".local" / "state" / "sops-enclave" / "dev-ca")
        down = run(TOOL + ["dev", "down"], e)
        assert down.returncode == 0 and f"kept in {d}" in down.stdout.decode()
    finally:
        _stop(d)


def test_daemon_does_not_hold_the_callers_pipes(env, state):
    """`dev up` returns although its stack keeps running: the stack's stdout/stderr are its
    log, so a caller reading the command's output to EOF (as $(...) does) is not blocked."""
    p = subprocess.run(TOOL + ["dev", "up", "--state", str(state)], env=env,
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    pid = json.loads((state / "run.json").read_text())["pid"]
    os.kill(pid, 0)   # still running after our pipes reached EOF
    assert dev(env, state, "down").returncode == 0


def test_foreground_stack_stops_on_ctrl_c_and_keeps_its_keys(env, state):
    p = subprocess.Popen(TOOL + ["dev", "up", "--foreground", "--state", str(state)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in p.stdout:            # until the stack says it is up
            lines.append(line)
            if line.startswith("# keys:"):
                break
        assert lines[0].startswith("# sops-enclave dev stack is up at http://127.0.0.1:")
        shell = dict(env, **exports("".join(lines)))
        arn = dev(shell, state, "kms", "create-key", "--alias", "fg")
        assert arn.returncode == 0, arn.stderr
        p.send_signal(signal.SIGINT)
        assert p.wait(60) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert not (state / "run.json").exists()
    kept = json.loads((state / "kms-keys.json").read_text())["keys"]
    assert [k["Aliases"] for k in kept] == [["alias/fg"]]
