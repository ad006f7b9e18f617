"""End to end: `sops-enclave exec --enclave dev` against a KMS with attestation over HTTP.

A git repository holds KMS-encrypted inputs and a manifest; the dev enclave (the real
enclave program as a local process with the software NSM) gets the data keys with KMS
`Decrypt` + `Recipient`, merges, re-encrypts, and writes receipts that `verify` accepts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import run

def _policy(pcr0_hex: str) -> str:
    """The key policy `sops-enclave policy` generates: what the dev KMS enforces here."""
    from sops_enclave.image.policy import key_policy

    return json.dumps(key_policy(pcr0_hex, role_arn="arn:aws:iam::123456789012:role/ci-host",
                                 admin_arns=["arn:aws:iam::123456789012:role/kms-admin"]))


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    ca = tmp_path_factory.mktemp("dev-ca")
    os.environ["SOPS_ENCLAVE_DEV_CA_DIR"] = str(ca)
    from sops_enclave.devtools.devstack import DevStack, dev_pcrs

    stack = DevStack(ca_dir=str(ca)).start()
    yield stack, dev_pcrs(), str(ca)
    stack.stop()
    os.environ.pop("SOPS_ENCLAVE_DEV_CA_DIR", None)


@pytest.fixture(scope="module")
def kms(dev):
    import boto3

    stack, pcrs, _ = dev
    c = boto3.client("kms", region_name="us-east-1", endpoint_url=stack.url,
                     aws_access_key_id="dev", aws_secret_access_key="dev")
    gated = c.create_key(Description="inputs, enclave only")["KeyMetadata"]["Arn"]
    c.put_key_policy(KeyId=gated, PolicyName="default", Policy=_policy(pcrs[0].hex()))
    wrong = c.create_key(Description="pinned to another image")["KeyMetadata"]["Arn"]
    c.put_key_policy(KeyId=wrong, PolicyName="default", Policy=_policy("ab" * 48))
    runtime = c.create_key(Description="outputs, for the runtime")["KeyMetadata"]["Arn"]
    return c, gated, wrong, runtime


def _git(repo, *args):
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.invalid",
               GIT_CONFIG_NOSYSTEM="1", HOME=str(repo))
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          env=env).stdout


def _make_repo(tmp_path, base_env, dev, kms, age_key, input_key):
    stack, pcrs, ca = dev
    _, gated, wrong, runtime = kms
    key = {"gated": gated, "wrong": wrong}[input_key]
    repo = tmp_path / "repo"
    (repo / "secrets").mkdir(parents=True)
    env = dict(base_env, **stack.env(), SOPS_ENCLAVE_DEV_CA_DIR=ca)
    docs = {"secrets/common.yaml": b"db:\n    host: db.internal\n    password: common-pw\n"
                                   b"log_level: info\n",
            "secrets/prod.yaml": b"api:\n    db:\n        password: prod-pw\n"
                                 b"    token: t0k3n\nworker:\n    queue: q\n"}
    for path, content in docs.items():
        src = tmp_path / os.path.basename(path)
        src.write_bytes(content)
        out = repo / path.replace(".yaml", ".enc.yaml")
        p = run([sys.executable, "-m", "sops_enclave", "encrypt", "--kms", key, "--output",
                 str(out), str(src)], env)
        assert p.returncode == 0, p.stderr
    (repo / ".sops-enclave.yaml").write_text(f"""version: 1
matrix: {{service: [api]}}
outputs:
  - target: "{{service}}/prod"
    path: "deploy/{{service}}/prod.enc.json"
    inputs:
      - secrets/common.enc.yaml
      - {{file: "secrets/prod.enc.yaml", extract: '["{{service}}"]'}}
      - {{file: "secrets/{{service}}/extra.enc.yaml", optional: true}}
    encrypt:
      kms: ["{runtime}"]
      encryption_context: {{service: "{{service}}", env: prod}}
      age: ["{age_key[1]}"]
""")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "secrets")
    return repo, env


def test_exec_dev_end_to_end(tmp_path, base_env, dev, kms, age_key, sops_bin, enclave_bin):
    stack, pcrs, ca = dev
    repo, env = _make_repo(tmp_path, base_env, dev, kms, age_key, "gated")
    before = dict(stack.kms.stats)
    dry = run(enclave_bin + ["exec", "--dry-run", "--repo", str(repo)], env)
    assert dry.returncode == 0, dry.stderr
    assert b"deploy/api/prod.enc.json" in dry.stdout and b"prod-pw" not in dry.stdout
    p = run(enclave_bin + ["exec", "--json", "--repo", str(repo)], env)
    assert p.returncode == 0, p.stderr
    out = repo / "deploy" / "api" / "prod.enc.json"
    receipt = repo / "deploy" / "api" / "prod.enc.json.receipt.json"
    summary = json.loads(p.stdout)
    import hashlib

    assert summary["outputs"] == [{"target": "api/prod", "path": "deploy/api/prod.enc.json",
                                   "receipt": "deploy/api/prod.enc.json.receipt.json",
                                   "sha256": hashlib.sha256(out.read_bytes()).hexdigest()}]
    assert summary["kms_decrypt_calls"] == 2
    assert out.exists() and receipt.exists()
    for f in (out, receipt):
        data = f.read_bytes()
        for secret in (b"common-pw", b"prod-pw", b"t0k3n"):
            assert secret not in data
    # Exactly one attested KMS Decrypt per distinct data key (two inputs, two data keys).
    after = stack.kms.stats
    assert after.get("Decrypt", 0) - before.get("Decrypt", 0) == 2
    # The runtime opens the output with plain sops and its age key.
    d = run([sops_bin, "decrypt", str(out)], dict(base_env))
    assert d.returncode == 0, d.stderr
    merged = json.loads(d.stdout)
    assert merged == {"db": {"host": "db.internal", "password": "prod-pw"}, "log_level": "info",
                      "token": "t0k3n"}
    # The receipt verifies with the dev root and the dev PCRs, and checks against the repo.
    pcr_args = [f"--pcr={i}={pcrs[i].hex()}" for i in (0, 1, 2)]
    v = run(enclave_bin + ["verify", str(out), "--allow-dev", "--allow-unrestricted", *pcr_args, "--repo", str(repo)],
            env)
    assert v.returncode == 0, v.stdout + v.stderr
    nodev = run(enclave_bin + ["verify", str(out), *pcr_args], env)
    assert nodev.returncode != 0
    # Changing the output breaks the receipt.
    out.write_bytes(out.read_bytes().replace(b'"sops"', b'"sops" '))
    bad = run(enclave_bin + ["verify", str(out), "--allow-dev", "--allow-unrestricted", *pcr_args], env)
    assert bad.returncode != 0


def test_exec_refused_when_policy_pins_another_image(tmp_path, base_env, dev, kms, age_key,
                                                     enclave_bin):
    repo, env = _make_repo(tmp_path, base_env, dev, kms, age_key, "wrong")
    p = run(enclave_bin + ["exec", "--repo", str(repo)], env)
    assert p.returncode != 0
    assert b"AccessDenied" in p.stderr or b"denied" in p.stderr.lower()
    assert b"Traceback" not in p.stderr
    assert not (repo / "deploy").exists(), "no output may be written when the run fails"


def test_plain_decrypt_of_gated_input_is_denied(tmp_path, base_env, dev, kms, age_key,
                                                enclave_bin):
    repo, env = _make_repo(tmp_path, base_env, dev, kms, age_key, "gated")
    p = run(enclave_bin + ["decrypt", str(repo / "secrets" / "prod.enc.yaml")], env)
    assert p.returncode == 128  # the host cannot decrypt: only the attested enclave can


# ---------------------------------------------------------------- the chain, one link at a time

def _exec_ok(tmp_path, base_env, dev, kms, age_key, enclave_bin):
    repo, env = _make_repo(tmp_path, base_env, dev, kms, age_key, "gated")
    p = run(enclave_bin + ["exec", "--repo", str(repo)], env)
    assert p.returncode == 0, p.stderr
    return repo, env


def _pcr_args(dev):
    return [f"--pcr={i}={dev[1][i].hex()}" for i in (0, 1, 2)]


def test_changed_enclave_code_is_refused_by_kms(tmp_path, base_env, dev, kms, age_key,
                                                enclave_bin):
    """Link 4: a different measurement gets no data key from the key policy."""
    from sops_enclave.devtools.devstack import changed_code_copy

    repo, env = _make_repo(tmp_path, base_env, dev, kms, age_key, "gated")
    copy = changed_code_copy(tmp_path / "code")
    env2 = dict(env, PYTHONPATH=str(copy))
    p = run(enclave_bin + ["exec", "--repo", str(repo)], env2)
    assert p.returncode != 0
    assert b"AccessDenied" in p.stderr, p.stderr
    assert not (repo / "deploy").exists()


def test_input_edited_after_commit_is_refused(tmp_path, base_env, dev, kms, age_key):
    """Link 1/6: the enclave recomputes git object ids; a host that swaps a blob is caught."""
    from sops_enclave.pack import host

    repo, env = _make_repo(tmp_path, base_env, dev, kms, age_key, "gated")
    opts = host.ExecOptions(repo=str(repo))
    commit, _, plans = host.plan_at_commit(opts)
    req = host.build_request(opts, commit, plans, env, dev=True)
    objs = req["git"]["objects"] if "objects" in req["git"] else req["git"]
    blob_oid = next(oid for oid, v in objs.items() if (v[0] if isinstance(v, (list, tuple))
                                                        else v["type"]) == "blob"
                    and b"sops" in (v[1] if isinstance(v, (list, tuple)) else v["content"]))
    v = objs[blob_oid]
    content = v[1] if isinstance(v, (list, tuple)) else v["content"]
    tampered = content.replace(b"ENC[AES256_GCM,data:", b"ENC[AES256_GCM,data:AA", 1)
    if isinstance(v, (list, tuple)):
        objs[blob_oid] = [v[0], tampered]
    else:
        v["content"] = tampered
    resp = _send(tmp_path, req, env)
    assert resp["ok"] is False
    assert "object" in resp["error"].lower() or "mismatch" in resp["error"].lower()


def _send(tmp_path, req, env):
    from sops_enclave.pack import host
    from sops_enclave.rpc import recv_frame, send_frame
    import socket

    proc, path = host.start_dev_enclave(str(tmp_path), env)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
            send_frame(s, req)
            return recv_frame(s)
    finally:
        proc.terminate()
        proc.wait(10)


def test_receipt_of_another_output_fails(tmp_path, base_env, dev, kms, age_key, enclave_bin):
    """Link 6: a receipt binds exactly one output."""
    repo, env = _exec_ok(tmp_path, base_env, dev, kms, age_key, enclave_bin)
    out = repo / "deploy" / "api" / "prod.enc.json"
    other = tmp_path / "other.enc.json"
    other.write_bytes(out.read_bytes().replace(b'"sops"', b'"sops" ', 1))
    v = run(enclave_bin + ["verify", str(other), "--receipt", str(out) + ".receipt.json",
                           "--subject", "deploy/api/prod.enc.json",
                           "--allow-dev", "--allow-unrestricted", *_pcr_args(dev)], env)
    assert v.returncode != 0 and b"subject" in v.stdout


def test_attestation_from_another_enclave_fails(tmp_path, base_env, dev, kms, age_key,
                                                enclave_bin):
    """Link 5: swapping in an attestation document of another run breaks the binding."""
    from sops_enclave.devtools.nsm_soft import SoftNSM

    repo, env = _exec_ok(tmp_path, base_env, dev, kms, age_key, enclave_bin)
    out = repo / "deploy" / "api" / "prod.enc.json"
    rec_path = str(out) + ".receipt.json"
    receipt = json.loads(open(rec_path).read())
    import base64

    foreign = SoftNSM(ca_dir=dev[2]).attest(public_key=b"\x01" * 91, user_data=b"\x02" * 32)
    key = next(k for k in receipt if "attestation" in k and isinstance(receipt[k], str))
    receipt[key] = base64.b64encode(foreign).decode()
    with open(rec_path, "w") as f:
        json.dump(receipt, f)
    v = run(enclave_bin + ["verify", str(out), "--allow-dev", "--allow-unrestricted", *_pcr_args(dev)], env)
    assert v.returncode != 0


def test_host_messages_carry_no_plaintext_or_data_key(tmp_path, base_env, dev, kms, age_key):
    """What the host sends (the whole request frame) holds neither values nor data keys."""
    import base64

    import boto3

    from sops_enclave.formats import yaml_store
    from sops_enclave.metadata import parse_metadata
    from sops_enclave.pack import host
    from sops_enclave.rpc import encode_frame

    stack = dev[0]
    repo, env = _make_repo(tmp_path, base_env, dev, kms, age_key, "gated")
    opts = host.ExecOptions(repo=str(repo))
    commit, _, plans = host.plan_at_commit(opts)
    frame = encode_frame(host.build_request(opts, commit, plans, env, dev=True))
    for secret in (b"common-pw", b"prod-pw", b"t0k3n", b"db.internal"):
        assert secret not in frame
    # The data keys, fetched here by going around the attestation layer to moto itself.
    upstream = boto3.client("kms", region_name="us-east-1", endpoint_url=stack.upstream,
                            aws_access_key_id="dev", aws_secret_access_key="dev")
    for name in ("common.enc.yaml", "prod.enc.yaml"):
        _, raw = yaml_store.load_encrypted((repo / "secrets" / name).read_bytes())
        entry = parse_metadata(raw).key_groups[0][0]
        key = upstream.decrypt(CiphertextBlob=base64.b64decode(entry.enc))["Plaintext"]
        assert len(key) == 32 and key not in frame and base64.b64encode(key) not in frame


# ---------------------------------------------------------------- faults: nothing is written

def _no_outputs(repo):
    assert not (repo / "deploy").exists()
    leftovers = [p for p in repo.rglob("*") if ".sops-enclave-" in p.name]
    assert not leftovers


def test_missing_input_in_commit(tmp_path, base_env, dev, kms, age_key, enclave_bin):
    repo, env = _make_repo(tmp_path, base_env, dev, kms, age_key, "gated")
    _git(repo, "rm", "-q", "secrets/prod.enc.yaml")
    _git(repo, "commit", "-q", "-m", "drop an input")
    p = run(enclave_bin + ["exec", "--repo", str(repo)], env)
    assert p.returncode != 0 and b"secrets/prod.enc.yaml" in p.stderr
    assert b"Traceback" not in p.stderr
    _no_outputs(repo)


def test_kms_unreachable(tmp_path, base_env, dev, kms, age_key, enclave_bin):
    repo, env = _make_repo(tmp_path, base_env, dev, kms, age_key, "gated")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    p = run(enclave_bin + ["exec", "--repo", str(repo)], dict(env, AWS_ENDPOINT_URL_KMS=dead))
    assert p.returncode != 0 and b"KMS" in p.stderr and b"Traceback" not in p.stderr
    _no_outputs(repo)


def test_unwritable_output_directory(tmp_path, base_env, dev, kms, age_key, enclave_bin):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    repo, env = _make_repo(tmp_path, base_env, dev, kms, age_key, "gated")
    (repo / "deploy").mkdir()
    os.chmod(repo / "deploy", 0o500)
    try:
        p = run(enclave_bin + ["exec", "--repo", str(repo)], env)
        assert p.returncode == 3
    finally:
        os.chmod(repo / "deploy", 0o700)


def test_output_path_blocked_writes_nothing(tmp_path, base_env, dev, kms, age_key, enclave_bin):
    """A failure after some outputs could be written still leaves none (all or nothing)."""
    repo, env = _make_repo(tmp_path, base_env, dev, kms, age_key, "gated")
    (repo / "deploy" / "api").mkdir(parents=True)
    (repo / "deploy" / "api" / "prod.enc.json.receipt.json").mkdir()  # a directory in the way
    p = run(enclave_bin + ["exec", "--repo", str(repo)], env)
    assert p.returncode == 3, p.stderr
    assert not (repo / "deploy" / "api" / "prod.enc.json").exists()
    assert [x.name for x in (repo / "deploy" / "api").iterdir()] == ["prod.enc.json.receipt.json"]


def test_enclave_dying_mid_run(tmp_path, base_env, dev, kms, age_key):
    from sops_enclave.errors import SopsError
    from sops_enclave.rpc import recv_frame
    import socket
    import threading

    repo, env = _make_repo(tmp_path, base_env, dev, kms, age_key, "gated")
    path = str(tmp_path / "fake.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def die():
        conn, _ = srv.accept()
        conn.recv(100)
        conn.close()  # the "enclave" disappears before answering

    t = threading.Thread(target=die, daemon=True)
    t.start()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall(b"\x00\x00\x00\x10" + b"\xa0" * 4)
        with pytest.raises(SopsError) as ei:
            recv_frame(s)
    assert "connection closed" in str(ei.value)
    srv.close()


def test_oversized_frame_is_refused():
    from sops_enclave.rpc import FrameError, MAX_FRAME, recv_frame
    import socket
    import struct

    a, b = socket.socketpair()
    with a, b:
        a.sendall(struct.pack(">I", MAX_FRAME + 1))
        with pytest.raises(FrameError):
            recv_frame(b)


def test_host_cannot_hide_an_optional_input(tmp_path, base_env, dev, kms, age_key):
    """The optional input exists in the commit; a host that leaves its blob out is refused."""
    import shutil

    from sops_enclave.pack import host

    repo, env = _make_repo(tmp_path, base_env, dev, kms, age_key, "gated")
    (repo / "secrets" / "api").mkdir()
    shutil.copy(repo / "secrets" / "common.enc.yaml", repo / "secrets" / "api" / "extra.enc.yaml")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "optional input present")
    opts = host.ExecOptions(repo=str(repo))
    commit, _, plans = host.plan_at_commit(opts)
    req = host.build_request(opts, commit, plans, env, dev=True)
    extra_blob = subprocess.run(["git", "-C", str(repo), "rev-parse",
                                 f"{commit}:secrets/api/extra.enc.yaml"], capture_output=True,
                                text=True).stdout.strip()
    objs = req["git"]["objects"]
    common_blob = subprocess.run(["git", "-C", str(repo), "rev-parse",
                                  f"{commit}:secrets/common.enc.yaml"], capture_output=True,
                                 text=True).stdout.strip()
    assert extra_blob == common_blob  # same content: remove it and the required one goes too
    # So hide the whole secrets/api tree instead.
    api_tree = subprocess.run(["git", "-C", str(repo), "rev-parse", f"{commit}:secrets/api"],
                              capture_output=True, text=True).stdout.strip()
    del objs[api_tree]
    resp = _send(tmp_path, req, env)
    assert resp["ok"] is False, resp


def test_input_with_bad_mac_is_refused(tmp_path, base_env, dev, kms, age_key, enclave_bin):
    """The enclave verifies every input's MAC (there is no --ignore-mac inside)."""
    import re

    repo, env = _make_repo(tmp_path, base_env, dev, kms, age_key, "gated")
    f = repo / "secrets" / "common.enc.yaml"
    data = f.read_bytes()
    # Re-date the file: the MAC's associated data changes, so the stored MAC no longer opens.
    f.write_bytes(re.sub(rb'lastmodified: "[^"]+"', b'lastmodified: "2001-01-01T00:00:00Z"',
                         data))
    _git(repo, "commit", "-q", "-am", "tampered metadata")
    p = run(enclave_bin + ["exec", "--repo", str(repo)], env)
    assert p.returncode != 0 and b"secrets/common.enc.yaml" in p.stderr, p.stderr
    assert b"Traceback" not in p.stderr
    _no_outputs(repo)
