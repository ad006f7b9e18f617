"""No plaintext value and no data key where they must not be: files the host writes, the
host <-> enclave frames, receipts, CLI output of failing commands (with and without
``--verbose``), the key service's log, exception messages; and the exec-file / edit
temporaries are private (0600 in a 0700 directory) and gone once the child exits, even when
the child is killed.

Every secret value carries a random ``LEAKCANARY-<hex>`` marker. Data keys are fetched
around the protection layer (age identities, or moto itself behind the attested KMS) and
searched for raw, base64 (standard, URL-safe, unpadded) and hex.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import pytest

SE = [sys.executable, "-m", "sops_enclave"]
CANARY = f"LEAKCANARY-{secrets.token_hex(8)}"
PCR0_KEY = "kms:RecipientAttestation:ImageSha384"


class Leak(AssertionError):
    """A plaintext value or a data key was found where it must not be."""


class Leftover(AssertionError):
    """A temporary file or directory was left behind."""


def _doc(tag: str = "") -> bytes:
    return (f"db:\n    host: db.internal\n    password: {CANARY}-db{tag}\n"
            f"api_token: {CANARY}-token{tag}\nreplicas: 3\n").encode()


def _forms(key: bytes) -> list[bytes]:
    b64 = base64.b64encode(key)
    return [key, b64, b64.rstrip(b"="), base64.urlsafe_b64encode(key).rstrip(b"="),
            key.hex().encode(), key.hex().upper().encode()]


def _scan(blob: bytes | str, what: str, keys: list[bytes] = (), extra: list[bytes] = ()) -> None:
    data = blob.encode(errors="surrogateescape") if isinstance(blob, str) else blob
    if CANARY.encode() in data:
        i = data.index(CANARY.encode())
        raise Leak(f"plaintext marker in {what}: ...{data[max(0, i - 60):i + 60]!r}...")
    for k in keys:
        for f in _forms(k):
            if f in data:
                raise Leak(f"data key ({f[:8]!r}...) in {what}")
    for e in extra:
        if e in data:
            raise Leak(f"{e[:16]!r}... in {what}")


def _run(cmd, env, cwd=None, timeout=60, input=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True,
                          timeout=timeout, input=input,
                          stdin=None if input is not None else subprocess.DEVNULL)


def _age_data_key(data: bytes, identity: str) -> bytes:
    from sops_enclave.formats import yaml_store
    from sops_enclave.keys import age
    from sops_enclave.metadata import parse_metadata

    _, raw = yaml_store.load_encrypted(data)
    md = parse_metadata(raw)
    entry = next(e for g in md.key_groups for e in g if e.type == "age")
    return age.unwrap(entry.enc, age.parse_identities(identity, "test"))


def _json_age_data_key(data: bytes, identity: str) -> bytes:
    from sops_enclave.keys import age
    from sops_enclave.metadata import parse_metadata

    raw = json.loads(data)["sops"]
    entry = next(e for g in parse_metadata(raw).key_groups for e in g if e.type == "age")
    return age.unwrap(entry.enc, age.parse_identities(identity, "test"))


def _kms_data_key(data: bytes, endpoint: str) -> bytes:
    import boto3

    from sops_enclave.formats import yaml_store
    from sops_enclave.metadata import parse_metadata

    _, raw = yaml_store.load_encrypted(data)
    entry = next(e for g in parse_metadata(raw).key_groups for e in g if e.type == "kms")
    c = boto3.client("kms", region_name="us-east-1", endpoint_url=endpoint,
                     aws_access_key_id="testing", aws_secret_access_key="testing")
    return c.decrypt(CiphertextBlob=base64.b64decode(entry.enc))["Plaintext"]


def _short_tmpdir() -> Path:
    """A per-test TMPDIR with a short path (AF_UNIX socket paths in it are limited to 108
    bytes, see test_faults.test_exec_with_a_long_tmpdir)."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix="selk-", dir="/tmp"))


@pytest.fixture
def short_tmp():
    import shutil

    d = _short_tmpdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def tmpdir_env(short_tmp, base_env) -> tuple[Path, dict[str, str]]:
    return short_tmp, dict(base_env, TMPDIR=str(short_tmp))


@pytest.fixture
def age_file(tmp_path, base_env, age_key) -> tuple[Path, bytes]:
    """(an age-encrypted YAML file, its data key)."""
    src = tmp_path / "plain.yaml"
    src.write_bytes(_doc())
    out = tmp_path / "secret.enc.yaml"
    p = _run(SE + ["encrypt", "--age", age_key[1], "--output", out, src], base_env)
    assert p.returncode == 0, p.stderr
    src.unlink()
    return out, _age_data_key(out.read_bytes(), age_key[0])


# ------------------------------------------------------------------ files the host writes

def test_encrypted_files_hold_no_plaintext_or_data_key(tmp_path, tmpdir_env, age_key, kms_env,
                                                       kms_key):
    tmpdir, env = tmpdir_env
    age_out = tmp_path / "age.enc.yaml"
    src = tmp_path / "p.yaml"
    src.write_bytes(_doc())
    assert _run(SE + ["encrypt", "--age", age_key[1], "--output", age_out, src],
                env).returncode == 0
    inplace = tmp_path / "inplace.yaml"
    inplace.write_bytes(_doc("-i"))
    assert _run(SE + ["encrypt", "--age", age_key[1], "-i", inplace], env).returncode == 0
    kms_out = tmp_path / "kms.enc.yaml"
    p = _run(SE + ["encrypt", "--kms", kms_key, "--output", kms_out, src],
             dict(kms_env, TMPDIR=str(tmpdir)))
    assert p.returncode == 0, p.stderr
    # set and rotate rewrite the file with a (same / new) data key
    s = _run(SE + ["set", age_out, '["extra"]', json.dumps(f"{CANARY}-set")], env)
    assert s.returncode == 0, s.stderr
    rot = tmp_path / "rotated.enc.yaml"
    r = _run(SE + ["rotate", "--output", rot, inplace], env)
    assert r.returncode == 0, r.stderr
    checks = [(age_out, _age_data_key(age_out.read_bytes(), age_key[0])),
              (inplace, _age_data_key(inplace.read_bytes(), age_key[0])),
              (rot, _age_data_key(rot.read_bytes(), age_key[0])),
              (kms_out, _kms_data_key(kms_out.read_bytes(), kms_env["AWS_ENDPOINT_URL_KMS"]))]
    for f, key in checks:
        assert len(key) == 32
        _scan(f.read_bytes(), f.name, [key])
    assert list(tmpdir.iterdir()) == []


# ------------------------------------------------------------------ exec: frames and receipts

def _policy(pcr0: str | None) -> str:
    cond = {"StringEqualsIgnoreCase": {PCR0_KEY: pcr0}} if pcr0 else \
        {"Null": {PCR0_KEY: "false"}}
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": "*"},
         "Action": ["kms:Encrypt", "kms:DescribeKey", "kms:GetKeyPolicy", "kms:PutKeyPolicy"],
         "Resource": "*"},
        {"Sid": "Attested", "Effect": "Allow", "Principal": {"AWS": "*"},
         "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*", "Condition": cond},
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
        keys = {}
        # gated: any attested enclave (PCR pinning is test_exec's; the dev PCR0 changes with
        # every edit of the source, which others make while this runs); wrong: another image
        for name, pcr0 in (("gated", None), ("wrong", "00" * 48)):
            keys[name] = c.create_key(Description=name)["KeyMetadata"]["Arn"]
            c.put_key_policy(KeyId=keys[name], PolicyName="default", Policy=_policy(pcr0))
        keys["runtime"] = c.create_key(Description="outputs")["KeyMetadata"]["Arn"]
        yield {"stack": stack, "ca": str(ca), **keys}
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


def _make_repo(tmp_path, base_env, dev, age_key, tmpdir: Path, key="gated"):
    repo = tmp_path / "repo"
    (repo / "secrets").mkdir(parents=True)
    env = dict(base_env, **dev["stack"].env(), SOPS_ENCLAVE_DEV_CA_DIR=dev["ca"],
               TMPDIR=str(tmpdir))
    docs = {"secrets/common.yaml": _doc("-common"),
            "secrets/prod.yaml": f"api:\n    token: {CANARY}-prod\n".encode()}
    for path, content in docs.items():
        src = tmp_path / os.path.basename(path)
        src.write_bytes(content)
        p = _run(SE + ["encrypt", "--kms", dev[key], "--output",
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
    return repo, env


def _input_keys(repo: Path, dev) -> list[bytes]:
    """The inputs' data keys, from moto itself (around the attestation layer)."""
    return [_kms_data_key(p.read_bytes(), dev["stack"].upstream)
            for p in sorted((repo / "secrets").glob("*.enc.yaml"))]


class _Relay:
    """A unix-socket man in the middle: ``front`` <-> ``back``, recording both directions."""

    def __init__(self, back: str, front: str):
        self.back, self.front = back, front
        self.up = bytearray()    # host -> enclave
        self.down = bytearray()  # enclave -> host
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(front)
        self.srv.listen(1)
        self.srv.settimeout(30)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            a, _ = self.srv.accept()
        except OSError:
            return
        b = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + 10
        while True:  # the enclave may not listen yet (see test_faults' start-race test)
            try:
                b.connect(self.back)
                break
            except OSError:
                if time.monotonic() > deadline:
                    a.close()
                    return
                time.sleep(0.02)
        pumps = [threading.Thread(target=self._pump, args=(a, b, self.up), daemon=True),
                 threading.Thread(target=self._pump, args=(b, a, self.down), daemon=True)]
        for t in pumps:
            t.start()
        for t in pumps:
            t.join(60)
        a.close()
        b.close()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, record: bytearray) -> None:
        src.settimeout(60)
        try:
            while True:
                chunk = src.recv(1 << 16)
                if not chunk:
                    break
                record += chunk
                dst.sendall(chunk)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.srv.close()
        self.thread.join(10)


def test_exec_frames_outputs_and_receipts(tmp_path, short_tmp, base_env, dev, age_key,
                                          monkeypatch):
    """The real host<->enclave exchange, captured by a man in the middle; the files written."""
    import tempfile

    from sops_enclave.pack import host
    from sops_enclave.rpc import decode_frame

    repo, env = _make_repo(tmp_path, base_env, dev, age_key, short_tmp)
    in_keys = _input_keys(repo, dev)
    assert len(in_keys) == 2 and all(len(k) == 32 for k in in_keys)
    relays: list[_Relay] = []
    real_start = host.start_dev_enclave
    short = tempfile.mkdtemp(prefix="sel-", dir="/tmp")  # AF_UNIX paths are short (108)

    def start_with_relay(workdir, env_, enclave_policy=None):
        proc, path = real_start(workdir, env_, enclave_policy)
        front = os.path.join(short, "mitm.sock")
        try:
            relays.append(_Relay(path, front))
        except BaseException:
            proc.kill()
            proc.wait(10)
            raise
        return proc, front

    monkeypatch.setattr(host, "start_dev_enclave", start_with_relay)
    monkeypatch.setattr(tempfile, "tempdir", str(short_tmp))
    try:
        summary = host.run_exec(host.ExecOptions(repo=str(repo)), env)
    finally:
        for r in relays:
            r.close()
        import shutil

        shutil.rmtree(short, ignore_errors=True)
    assert len(relays) == 1 and summary["outputs"]
    up, down = bytes(relays[0].up), bytes(relays[0].down)
    assert len(up) > 4 and len(down) > 4
    out = repo / "deploy" / "api" / "prod.enc.json"
    receipt = Path(str(out) + ".receipt.json")
    out_key = _json_age_data_key(out.read_bytes(), age_key[0])
    _scan(up, "the host->enclave request frame", in_keys + [out_key])
    _scan(down, "the enclave->host response frame", in_keys + [out_key])
    _scan(out.read_bytes(), "the exec output", in_keys + [out_key])
    _scan(receipt.read_bytes(), "the receipt", in_keys + [out_key])
    # In dev mode the host hands its age identity to the dev enclave (dev_age_identities);
    # a Nitro request carries none.
    req = decode_frame(up[4:])
    assert req["type"] == "pack"
    opts = host.ExecOptions(repo=str(repo), enclave="nitro")
    commit, _, plans = host.plan_at_commit(opts)
    from sops_enclave.rpc import encode_frame

    nitro = encode_frame(host.build_request(opts, commit, plans, env, dev=False))
    _scan(nitro, "a Nitro request frame", in_keys, extra=[age_key[0].encode()])
    assert list(short_tmp.iterdir()) == []


def test_exec_verbose_output_holds_no_secret(tmp_path, short_tmp, base_env, dev, age_key):
    repo, env = _make_repo(tmp_path, base_env, dev, age_key, short_tmp)
    in_keys = _input_keys(repo, dev)
    p = _run(SE + ["exec", "--verbose", "--json", "--repo", repo], env)
    assert p.returncode == 0, p.stderr
    _scan(p.stdout + p.stderr, "exec --verbose output", in_keys)
    dry = _run(SE + ["exec", "--dry-run", "--verbose", "--repo", repo], env)
    assert dry.returncode == 0, dry.stderr
    _scan(dry.stdout + dry.stderr, "exec --dry-run output", in_keys)


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_exec_denied_output_holds_no_secret(verbose, tmp_path, short_tmp, base_env, dev,
                                            age_key):
    """KMS denies the enclave (the key pins another image)."""
    repo, env = _make_repo(tmp_path, base_env, dev, age_key, short_tmp, key="wrong")
    in_keys = _input_keys(repo, dev)
    p = _run(SE + ["exec", *(["--verbose"] if verbose else []), "--repo", repo], env)
    assert p.returncode == 128 and b"AccessDenied" in p.stderr, p.stderr
    _scan(p.stdout + p.stderr, "exec output (KMS denied)", in_keys)
    assert not (repo / "deploy").exists()


# ------------------------------------------------------------------ failing commands' output

def _bad_mac(data: bytes) -> bytes:
    """Drop one encrypted value: the file still decrypts, its MAC no longer matches."""
    lines = data.split(b"\n")
    i = next(n for n, ln in enumerate(lines) if ln.startswith(b"api_token:"))
    return b"\n".join(lines[:i] + lines[i + 1:])


def _corrupt_value(data: bytes) -> bytes:
    """Flip one character in a value's ciphertext: AES-GCM authentication fails."""
    i = data.index(b"ENC[AES256_GCM,data:") + len(b"ENC[AES256_GCM,data:")
    c = data[i:i + 1]
    return data[:i] + (b"B" if c != b"B" else b"C") + data[i + 1:]


def _other_age_identity() -> str:
    import pyrage

    return str(pyrage.x25519.Identity.generate())


CASES = ["bad-mac", "corrupt-value", "wrong-key"]
COMMANDS = {
    "decrypt": lambda f: ["decrypt", f],
    "decrypt-extract": lambda f: ["decrypt", "--extract", '["db"]["password"]', f],
    "decrypt-in-place": lambda f: ["decrypt", "-i", f],
    "rotate": lambda f: ["rotate", f],
    "set": lambda f: ["set", f, '["db"]["password"]', json.dumps(f"{CANARY}-new")],
    "exec-env": lambda f: ["exec-env", f, "true"],
    "exec-file": lambda f: ["exec-file", f, "cat {} >/dev/null"],
    "legacy-d": lambda f: ["-d", f],
}


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
@pytest.mark.parametrize("case", CASES)
def test_failing_commands_print_no_secret(case, verbose, tmp_path, tmpdir_env, age_file):
    tmpdir, env = tmpdir_env
    f, key = age_file
    good = f.read_bytes()
    if case == "bad-mac":
        f.write_bytes(_bad_mac(good))
    elif case == "corrupt-value":
        f.write_bytes(_corrupt_value(good))
    else:
        env = dict(env, SOPS_AGE_KEY=_other_age_identity())
    before = f.read_bytes()
    expected = {"bad-mac": 51, "corrupt-value": 25, "wrong-key": 128}[case]
    for name, cmd in COMMANDS.items():
        args = cmd(f)
        if verbose:
            args = [args[0], "--verbose", *args[1:]] if not args[0].startswith("-") \
                else ["--verbose", *args]
        p = _run(SE + args, env)
        assert p.returncode != 0, (name, p.stdout)
        if name in ("decrypt", "decrypt-in-place", "legacy-d", "set", "rotate"):
            assert p.returncode == expected, (name, p.returncode, p.stderr)
        _scan(p.stdout + p.stderr, f"the output of {name} ({case}, verbose={verbose})", [key])
        assert f.read_bytes() == before, f"{name} changed the file"
    assert list(tmpdir.iterdir()) == []


def test_kms_denied_output_holds_no_secret(tmp_path, base_env, dev):
    """The host cannot decrypt a gated file (attestation required): AccessDenied, exit 128."""
    env = dict(base_env, **dev["stack"].env())
    env.pop("SOPS_AGE_KEY", None)
    src = tmp_path / "p.yaml"
    src.write_bytes(_doc())
    f = tmp_path / "gated.enc.yaml"
    assert _run(SE + ["encrypt", "--kms", dev["gated"], "--output", f, src], env).returncode == 0
    key = _kms_data_key(f.read_bytes(), dev["stack"].upstream)
    for verbose in ([], ["--verbose"]):
        p = _run(SE + ["decrypt", *verbose, f], env)
        assert p.returncode == 128 and b"AccessDenied" in p.stderr, p.stderr
        _scan(p.stdout + p.stderr, f"decrypt {verbose} (KMS denied)", [key])


def _wait_unix(path: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(path)
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the key service did not start")


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_keyservice_log_holds_no_secret(verbose, tmp_path, tmpdir_env, age_file, age_key):
    """Through ``keyservice [--verbose]``: a good decrypt, a bad MAC, a wrong key; the
    service's log and the client's output hold neither values nor the data key."""
    tmpdir, env = tmpdir_env
    f, key = age_file
    sock = str(tmp_path / "ks.sock")
    log = tmp_path / "ks.log"
    ks_env = dict(env, SOPS_AGE_KEY=age_key[0])
    client = dict(env)
    client.pop("SOPS_AGE_KEY", None)
    via = ["--keyservice", f"unix://{sock}", "--enable-local-keyservice=false"]
    outputs = b""
    with open(log, "wb") as logf:
        proc = subprocess.Popen(SE + ["keyservice", "--network", "unix", "--address", sock,
                                      *(["--verbose"] if verbose else [])], env=ks_env,
                                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait_unix(sock, proc)
        ok = _run(SE + ["decrypt", *via, f], client)
        assert ok.returncode == 0, ok.stderr
        assert CANARY.encode() in ok.stdout  # the decrypt did go through the service
        bad = tmp_path / "bad.enc.yaml"
        bad.write_bytes(_bad_mac(f.read_bytes()))
        p = _run(SE + ["decrypt", "--verbose", *via, bad], client)
        assert p.returncode == 51, p.stderr
        outputs += p.stdout + p.stderr
        other = tmp_path / "other.enc.yaml"
        src = tmp_path / "o.yaml"
        src.write_bytes(_doc("-other"))
        import pyrage

        rcpt = str(pyrage.x25519.Identity.generate().to_public())
        assert _run(SE + ["encrypt", "--age", rcpt, "--output", other, src], env).returncode == 0
        p = _run(SE + ["decrypt", "--verbose", *via, other], client)
        assert p.returncode == 128, p.stderr
        outputs += p.stdout + p.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    text = log.read_bytes()
    assert b"Decrypt from" in text, text
    _scan(text, f"the key service log (verbose={verbose})", [key],
          extra=[age_key[0].encode()])
    _scan(outputs, "the client's output", [key])


# ------------------------------------------------------------------ exception messages

def _all_text(exc: BaseException) -> str:
    parts = ["".join(traceback.format_exception(exc)), repr(exc), str(exc)]
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:  # also suppressed contexts
        seen.add(id(e))
        parts += [repr(e), str(e), repr(getattr(e, "args", ()))]
        e = e.__cause__ or e.__context__
    return "\n".join(parts)


def test_api_exceptions_hold_no_secret(age_file, age_key, tmp_path):
    from sops_enclave import api
    from sops_enclave.errors import SopsError
    from sops_enclave.keys.groups import LocalKeyService

    f, key = age_file
    good = f.read_bytes()
    right = [LocalKeyService({"SOPS_AGE_KEY": age_key[0]})]
    wrong = [LocalKeyService({"SOPS_AGE_KEY": _other_age_identity()})]
    attempts = {
        "bad MAC": lambda: api.decrypt_document(_bad_mac(good), "yaml", services=right),
        "corrupt value": lambda: api.decrypt_document(_corrupt_value(good), "yaml",
                                                      services=right),
        "corrupt value, MAC ignored": lambda: api.decrypt_document(
            _corrupt_value(good), "yaml", services=right, ignore_mac=True),
        "wrong key": lambda: api.decrypt_document(good, "yaml", services=wrong),
        "no key service": lambda: api.decrypt_document(good, "yaml", services=[]),
        "decrypt_bytes, bad MAC": lambda: api.decrypt_bytes(_bad_mac(good), fmt="yaml"),
        "decrypt_file, wrong key": lambda: api.decrypt_file(str(f)),
        "extract missing": lambda: api.extract(
            api.decrypt_document(good, "yaml", services=right).branches[0],
            api.parse_tree_path('["db"]["password"]["deeper"]')),
        "extract missing key": lambda: api.extract(
            api.decrypt_document(good, "yaml", services=right).branches[0],
            api.parse_tree_path('["nope"]')),
        "emit dotenv of a nested value": lambda: api.emit_plain(
            api.decrypt_document(good, "yaml", services=right).branches, "dotenv"),
        "bad format": lambda: api.decrypt_document(good, "toml", services=right),
    }
    old = os.environ.get("SOPS_AGE_KEY")
    os.environ["SOPS_AGE_KEY"] = _other_age_identity()  # decrypt_bytes/_file use the env
    try:
        raised = 0
        for name, fn in attempts.items():
            try:
                fn()
            except SopsError as e:
                raised += 1
                _scan(_all_text(e), f"the exception of {name!r}", [key])
            except Exception as e:  # not a SopsError: still no secret in it
                raised += 1
                _scan(_all_text(e), f"the {type(e).__name__} of {name!r}", [key])
            else:
                if name != "corrupt value, MAC ignored":
                    raise AssertionError(f"{name}: no exception")
        assert raised >= len(attempts) - 1
    finally:
        if old is None:
            os.environ.pop("SOPS_AGE_KEY", None)
        else:
            os.environ["SOPS_AGE_KEY"] = old


def test_exec_pack_exceptions_hold_no_secret(tmp_path, short_tmp, base_env, dev, age_key):
    """The enclave's error frame for a failing input (bad MAC) names the file, not values."""
    from sops_enclave.pack import host
    from sops_enclave.rpc import recv_frame, send_frame

    repo, env = _make_repo(tmp_path, base_env, dev, age_key, short_tmp)
    in_keys = _input_keys(repo, dev)
    common = repo / "secrets" / "common.enc.yaml"
    common.write_bytes(_bad_mac(common.read_bytes()))
    _git(repo, "commit", "-q", "-am", "tampered")
    opts = host.ExecOptions(repo=str(repo))
    commit, _, plans = host.plan_at_commit(opts)
    req = host.build_request(opts, commit, plans, env, dev=True)
    work = short_tmp / "work"
    work.mkdir()
    proc, path = host.start_dev_enclave(str(work), env)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(path)
                break
            except OSError:
                s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        with s:
            s.settimeout(60)
            send_frame(s, req)
            resp = recv_frame(s)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert resp["ok"] is False and resp["exit_code"] == 51, resp
    assert "secrets/common.enc.yaml" in resp["error"]
    _scan(json.dumps(resp), "the enclave's error frame", in_keys)


# ------------------------------------------------------------------ exec-file / edit temporaries

def _wait_for(path: Path, what: str, timeout: float = 20, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() or path.stat().st_size == 0:
        if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
            raise AssertionError(f"{what} never appeared"
                                 + (f" (exit {proc.returncode})" if proc is not None else ""))
        time.sleep(0.02)


def _kill_pid(pid: int, sig=signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _stat_script(info: Path) -> str:
    """Shell lines that record 'mode type' of the file $T and the mode of its directory."""
    return (f'stat -c "%a %F" "$T" > {info}.part; stat -c "%a" "$(dirname "$T")" >> {info}.part; '
            f'echo "$T" >> {info}.part; mv {info}.part {info}')


def _check_private(info: Path) -> Path:
    lines = info.read_text().splitlines()
    file_mode, kind = lines[0].split(" ", 1)
    assert file_mode == "600", f"the temporary ({kind}) is {file_mode}, not 600"
    assert lines[1] == "700", f"its directory is {lines[1]}, not 700"
    return Path(lines[2])


@pytest.mark.parametrize("fifo", [True, False], ids=["fifo", "no-fifo"])
def test_exec_file_temporary_is_private_and_removed(fifo, tmp_path, tmpdir_env, age_file):
    tmpdir, env = tmpdir_env
    f, key = age_file
    info, copy = tmp_path / "info", tmp_path / "copy"
    cmd = f'T={{}}; {_stat_script(info)}; cat "$T" > {copy}'
    p = _run(SE + ["exec-file", *([] if fifo else ["--no-fifo"]), f, cmd], env)
    assert p.returncode == 0, p.stderr
    target = _check_private(info)
    assert CANARY.encode() in copy.read_bytes()
    assert target.is_relative_to(tmpdir) and not target.exists()
    assert list(tmpdir.iterdir()) == []


@pytest.mark.parametrize("fifo", [True, False], ids=["fifo", "no-fifo"])
def test_exec_file_child_killed_removes_temporary(fifo, tmp_path, tmpdir_env, age_file):
    tmpdir, env = tmpdir_env
    f, _ = age_file
    info, pidf = tmp_path / "info", tmp_path / "pid"
    cmd = f'T={{}}; {_stat_script(info)}; echo $$ > {pidf}; exec sleep 30'
    proc = subprocess.Popen(SE + ["exec-file", *([] if fifo else ["--no-fifo"]), str(f), cmd],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        _wait_for(pidf, "the child's pid file", proc=proc)
        _wait_for(info, "the stat record", proc=proc)
        target = _check_private(info)
        assert target.exists()
        _kill_pid(int(pidf.read_text()))
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
        if pidf.exists():
            _kill_pid(int(pidf.read_text()))
    assert proc.returncode == 255 and b"signal: killed" in err, (proc.returncode, err)
    assert list(tmpdir.iterdir()) == [], "the temporary outlived the killed child"


def _sigterm_and_collect(proc, info, pidf, tmpdir, what: str) -> tuple[list[str], list[str]]:
    """Wait until the child recorded itself, SIGTERM sops-enclave, and return what is left in
    ``tmpdir`` and which of it holds the canary; always removes it and stops the child."""
    left: list[str] = []
    plain: list[str] = []
    try:
        _wait_for(info, "the stat record", proc=proc)
        _wait_for(pidf, what, proc=proc)
        proc.terminate()
        proc.wait(30)
        time.sleep(0.2)
        left = [str(p) for p in tmpdir.rglob("*")]
        plain = [p for p in left if Path(p).is_file() and CANARY.encode() in Path(p).read_bytes()]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if pidf.exists():
            _kill_pid(int(pidf.read_text()))
        for p in sorted(tmpdir.rglob("*"), reverse=True):  # do not leave plaintext behind
            p.rmdir() if p.is_dir() else p.unlink()
    return left, plain


@pytest.mark.parametrize("fifo", [True, False], ids=["fifo", "no-fifo"])
def test_exec_file_sigterm_removes_temporary(fifo, tmp_path, tmpdir_env, age_file):
    """SIGTERM to sops-enclave itself while the command runs."""
    tmpdir, env = tmpdir_env
    f, _ = age_file
    info, pidf = tmp_path / "info", tmp_path / "pid"
    cmd = f'T={{}}; {_stat_script(info)}; echo $$ > {pidf}; exec sleep 30'
    proc = subprocess.Popen(SE + ["exec-file", *([] if fifo else ["--no-fifo"]), str(f), cmd],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    left, plain = _sigterm_and_collect(proc, info, pidf, tmpdir, "the child's pid file")
    if left:
        raise Leftover(f"left after SIGTERM: {left}; holding plaintext: {plain}")


def test_exec_file_sigkill_leaves_only_private_files(tmp_path, tmpdir_env, age_file):
    """A SIGKILLed sops-enclave cannot clean up; what stays is private (0700 dir, 0600 file)."""
    tmpdir, env = tmpdir_env
    f, _ = age_file
    info, pidf = tmp_path / "info", tmp_path / "pid"
    cmd = f'T={{}}; {_stat_script(info)}; echo $$ > {pidf}; exec sleep 30'
    proc = subprocess.Popen(SE + ["exec-file", "--no-fifo", str(f), cmd], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    try:
        _wait_for(info, "the stat record", proc=proc)
        _wait_for(pidf, "the child's pid file", proc=proc)
        proc.kill()
        proc.wait(30)
        left = sorted(tmpdir.rglob("*"))
        for p in left:
            mode = p.stat().st_mode & 0o777
            assert mode == (0o700 if p.is_dir() else 0o600), (p, oct(mode))
        print(f"\nleft after SIGKILL of exec-file --no-fifo: "
              f"{[str(p.relative_to(tmpdir)) for p in left]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if pidf.exists():
            _kill_pid(int(pidf.read_text()))
        for p in sorted(tmpdir.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()


def _editor(tmp_path: Path, body: str) -> str:
    script = tmp_path / "editor.sh"
    script.write_text("#!/bin/sh\nT=\"$1\"\n" + body + "\n")
    return f"sh {script}"


def test_edit_temporary_is_private_and_removed(tmp_path, tmpdir_env, age_file, age_key):
    tmpdir, env = tmpdir_env
    f, old_key = age_file
    info = tmp_path / "info"
    editor = _editor(tmp_path, _stat_script(info) + '\nsed -i "s/replicas: 3/replicas: 4/" "$T"')
    p = _run(SE + ["edit", f], dict(env, SOPS_EDITOR=editor))
    assert p.returncode == 0, p.stderr
    target = _check_private(info)
    assert target.is_relative_to(tmpdir) and not target.exists()
    assert list(tmpdir.iterdir()) == []
    _scan(f.read_bytes(), "the edited file", [old_key])
    _scan(p.stdout + p.stderr, "edit's output", [old_key])


def test_edit_editor_killed_removes_temporary(tmp_path, tmpdir_env, age_file):
    tmpdir, env = tmpdir_env
    f, _ = age_file
    before = f.read_bytes()
    info, pidf = tmp_path / "info", tmp_path / "pid"
    editor = _editor(tmp_path, _stat_script(info) + f"\necho $$ > {pidf}\nexec sleep 30")
    proc = subprocess.Popen(SE + ["edit", str(f)], env=dict(env, SOPS_EDITOR=editor),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        _wait_for(info, "the stat record", proc=proc)
        _wait_for(pidf, "the editor's pid file", proc=proc)
        assert _check_private(info).exists()
        _kill_pid(int(pidf.read_text()))
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
        if pidf.exists():
            _kill_pid(int(pidf.read_text()))
    assert proc.returncode == 201 and b"Could not run editor" in err, (proc.returncode, err)
    assert b"Traceback" not in err
    assert f.read_bytes() == before
    assert list(tmpdir.iterdir()) == [], "the temporary outlived the killed editor"


def test_edit_sigterm_removes_temporary(tmp_path, tmpdir_env, age_file):
    tmpdir, env = tmpdir_env
    f, _ = age_file
    before = f.read_bytes()
    info, pidf = tmp_path / "info", tmp_path / "pid"
    editor = _editor(tmp_path, _stat_script(info) + f"\necho $$ > {pidf}\nexec sleep 30")
    proc = subprocess.Popen(SE + ["edit", str(f)], env=dict(env, SOPS_EDITOR=editor),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    left, plain = _sigterm_and_collect(proc, info, pidf, tmpdir, "the editor's pid file")
    assert f.read_bytes() == before
    if left:
        raise Leftover(f"left after SIGTERM: {left}; holding plaintext: {plain}")

