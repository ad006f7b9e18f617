"""The SOPS key service protocol against the real sops 3.11 binary, both directions.

* our server (``sops_enclave.keyservice.server``) answering ``sops --keyservice URI`` with
  ``--enable-local-keyservice=false`` and no key material in sops' own environment;
* our client (``RemoteKeyService``) talking to ``sops keyservice``;
* unix sockets and TCP, failures (exit 128, the server stays up), PGP and AWS KMS (moto).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

grpc = pytest.importorskip("grpc")
pyrage = pytest.importorskip("pyrage")

from sops_enclave.errors import KeyMismatch, SopsError  # noqa: E402
from sops_enclave.formats.yaml_store import load_encrypted  # noqa: E402
from sops_enclave.keys.groups import LocalKeyService, get_data_key, protect_data_key  # noqa: E402
from sops_enclave.keyservice.client import KeyServiceError, RemoteKeyService  # noqa: E402
from sops_enclave.keyservice.server import serve, shutdown  # noqa: E402
from sops_enclave.metadata import AgeEntry, Metadata, OtherEntry, parse_metadata  # noqa: E402
from sops_enclave.tree import Branch  # noqa: E402

PLAIN = b"db:\n    user: admin\n    password: hunter2\nport: 5432\n"
PLAIN_TEXT = PLAIN.decode()
GCP_ID = "projects/p/locations/global/keyRings/r/cryptoKeys/k"


# ------------------------------------------------------------------------------ helpers

def _sops(sops_bin, args, env, cwd, timeout=60):
    return subprocess.run([sops_bin, *args], env=env, cwd=cwd, capture_output=True,
                          timeout=timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_unix(path: str, proc: subprocess.Popen | None = None, timeout: float = 15) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited early: {proc.stderr.read().decode()[-2000:]}")
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listening on {path}")


def _wait_tcp(port: int, proc: subprocess.Popen | None = None, timeout: float = 15) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited early: {proc.stderr.read().decode()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listening on 127.0.0.1:{port}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _age_entry(path: Path) -> AgeEntry:
    _, raw = load_encrypted(path.read_bytes())
    md = parse_metadata(raw)
    (entry,) = [e for g in md.key_groups for e in g]
    assert isinstance(entry, AgeEntry)
    return entry


class Counting(LocalKeyService):
    """A LocalKeyService that records which (operation, key type) it served."""

    def __init__(self, env):
        super().__init__(env)
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def encrypt(self, entry, plaintext):
        with self._lock:
            self.calls.append(("encrypt", entry.type))
        return super().encrypt(entry, plaintext)

    def decrypt(self, entry):
        with self._lock:
            self.calls.append(("decrypt", entry.type))
        return super().decrypt(entry)


# ------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def sops(sops_bin) -> str:
    return sops_bin


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ks")
    (d / "plain.yaml").write_bytes(PLAIN)
    return d


@pytest.fixture(scope="module")
def no_key_env(tmp_path_factory) -> dict[str, str]:
    """sops' environment: no age key, no PGP keyring, no AWS, no user config."""
    home = tmp_path_factory.mktemp("home")
    gnupg = home / "gnupg-empty"
    gnupg.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SOPS_", "AWS_", "GNUPG"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), GNUPGHOME=str(gnupg),
               SOPS_DISABLE_VERSION_CHECK="1", TZ="UTC")
    return env


@pytest.fixture(scope="module")
def age_file(sops, work, age_key, no_key_env) -> Path:
    """plain.yaml encrypted by the real sops for the test age recipient."""
    p = _sops(sops, ["encrypt", "--age", age_key[1], "plain.yaml"], no_key_env, work)
    assert p.returncode == 0, p.stderr.decode()
    out = work / "age.enc.yaml"
    out.write_bytes(p.stdout)
    return out


@pytest.fixture
def sockdir():
    # Short path: unix socket paths are limited to ~107 bytes.
    d = tempfile.mkdtemp(prefix="ks-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def our_server(sockdir):
    """Factory: start our server (in this process) and stop it at teardown."""
    started = []

    def start(local, network="unix", address=None, **kw):
        if address is None:
            address = os.path.join(sockdir, f"ours{len(started)}.sock")
        srv = serve(network, address, local, **kw)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        shutdown(srv, None)


@pytest.fixture
def real_keyservice(sops, sockdir, no_key_env):
    """Factory: start ``sops keyservice`` (a real sops) and stop it at teardown."""
    procs = []

    def start(env_extra: dict[str, str], network="unix"):
        env = dict(no_key_env, **env_extra)
        if network == "unix":
            address = os.path.join(sockdir, f"real{len(procs)}.sock")
        else:
            port = _free_port()
            address = f"127.0.0.1:{port}"
        proc = subprocess.Popen([sops, "keyservice", "--network", network, "--address", address],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(proc)
        if network == "unix":
            _wait_unix(address, proc)
            return f"unix://{address}"
        _wait_tcp(port, proc)
        return f"tcp://{address}"

    yield start
    for proc in procs:
        _stop(proc)
        if proc.stderr:
            proc.stderr.close()


@pytest.fixture(scope="module")
def gpg_key(tmp_path_factory):
    """(GNUPGHOME, fingerprint) of a fresh passphrase-less key."""
    gpg = shutil.which("gpg")
    if not gpg:
        pytest.skip("gpg is not installed")
    home = Path(tempfile.mkdtemp(prefix="ksg-", dir="/tmp"))  # short: gpg-agent socket path
    os.chmod(home, 0o700)
    env = dict(os.environ, GNUPGHOME=str(home))
    subprocess.run([gpg, "--batch", "--passphrase", "", "--quick-generate-key",
                    "ks test <t@example.invalid>", "future-default", "default", "never"],
                   env=env, check=True, capture_output=True, timeout=60)
    out = subprocess.run([gpg, "--with-colons", "--list-secret-keys"], env=env, check=True,
                         capture_output=True, text=True).stdout
    fpr = next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))
    yield str(home), fpr
    subprocess.run(["gpgconf", "--kill", "all"], env=env, capture_output=True)
    shutil.rmtree(home, ignore_errors=True)


def _via(uri: str) -> list[str]:
    return ["--enable-local-keyservice=false", "--keyservice", uri]


# ------------------------------------------------- (a) real sops -> our server, unix socket

def test_real_sops_decrypts_through_our_server(sops, work, age_file, age_key, no_key_env,
                                               our_server):
    # Without a key service sops cannot decrypt: the key really comes from our server.
    p = _sops(sops, ["decrypt", age_file.name], no_key_env, work)
    assert p.returncode == 128, p.stderr.decode()

    local = Counting({"SOPS_AGE_KEY": age_key[0]})
    srv = our_server(local)
    assert "SOPS_AGE_KEY" not in no_key_env
    p = _sops(sops, ["decrypt", *_via(srv.keyservice_uri), age_file.name], no_key_env, work)
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout == PLAIN
    assert local.calls == [("decrypt", "age")]


def test_real_sops_encrypts_through_our_server(sops, work, age_key, no_key_env, our_server):
    local = Counting({})  # encrypting needs only the recipient
    srv = our_server(local)
    p = _sops(sops, ["encrypt", *_via(srv.keyservice_uri), "--age", age_key[1], "plain.yaml"],
              no_key_env, work)
    assert p.returncode == 0, p.stderr.decode()
    assert local.calls == [("encrypt", "age")]
    (work / "via-ours.enc.yaml").write_bytes(p.stdout)
    entry = _age_entry(work / "via-ours.enc.yaml")
    assert entry.recipient == age_key[1]
    # decrypt locally: with the real sops (its own local key service) ...
    p = _sops(sops, ["decrypt", "via-ours.enc.yaml"], dict(no_key_env, SOPS_AGE_KEY=age_key[0]),
              work)
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout == PLAIN
    # ... and the data key with pyrage directly
    ident = pyrage.x25519.Identity.from_str(age_key[0])
    assert len(pyrage.decrypt(entry.enc.encode(), [ident])) == 32


def test_unix_socket_is_private_and_removed(age_key, our_server, sockdir):
    path = os.path.join(sockdir, "mode.sock")
    srv = our_server(LocalKeyService({"SOPS_AGE_KEY": age_key[0]}), address=path)
    assert srv.keyservice_uri == f"unix://{path}"
    assert (os.stat(path).st_mode & 0o777) == 0o600
    # a second server on a live socket is refused, the first keeps its socket
    with pytest.raises(SopsError, match="address already in use"):
        serve("unix", path, LocalKeyService({}))
    assert os.path.exists(path)
    shutdown(srv, None)
    assert not os.path.exists(path)
    # a stale socket file (nobody listening) is replaced
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()
    srv2 = our_server(LocalKeyService({}), address=path)
    _wait_unix(path)
    shutdown(srv2, None)


# ------------------------------------------------- (b) our client -> real `sops keyservice`

def test_remote_client_decrypts_with_real_sops_keyservice(age_file, age_key, real_keyservice):
    uri = real_keyservice({"SOPS_AGE_KEY": age_key[0]})
    entry = _age_entry(age_file)
    ident = pyrage.x25519.Identity.from_str(age_key[0])
    expected = pyrage.decrypt(entry.enc.encode(), [ident])
    with RemoteKeyService(uri) as remote:
        assert remote.decrypt(entry) == expected
        # and through the group logic, as the CLI will use it
        _, raw = load_encrypted(age_file.read_bytes())
        assert get_data_key(parse_metadata(raw), [remote]) == expected


def test_remote_client_encrypts_with_real_sops_keyservice(age_key, real_keyservice):
    uri = real_keyservice({})  # the real server needs no identity to encrypt
    data_key = os.urandom(32)
    with RemoteKeyService(uri) as remote:
        enc = remote.encrypt(AgeEntry(age_key[1]), data_key)
    assert enc.startswith("-----BEGIN AGE ENCRYPTED FILE-----")
    ident = pyrage.x25519.Identity.from_str(age_key[0])
    assert pyrage.decrypt(enc.encode(), [ident]) == data_key
    # and the local key service can read what the remote one wrote
    assert LocalKeyService({"SOPS_AGE_KEY": age_key[0]}).decrypt(AgeEntry(age_key[1], enc)) == data_key


def test_remote_client_errors_are_key_mismatch(age_file, real_keyservice, sockdir):
    uri = real_keyservice({})  # holds no age identity
    entry = _age_entry(age_file)
    remote = RemoteKeyService(uri)
    with pytest.raises(KeyMismatch) as ei:
        remote.decrypt(entry)
    assert isinstance(ei.value, SopsError)  # protect_data_key catches SopsError
    assert str(ei.value).startswith("rpc error: code = ")
    assert "\n" not in str(ei.value)
    # nobody listening: a clear message naming the URI, still a KeyMismatch
    dead = f"unix://{sockdir}/nobody.sock"
    with pytest.raises(KeyServiceError, match=re.escape(f"failed to connect to key service {dead}")):
        RemoteKeyService(dead).decrypt(entry)
    remote.close()


def test_client_falls_through_to_next_service(age_file, age_key, our_server, sockdir):
    srv = our_server(LocalKeyService({"SOPS_AGE_KEY": age_key[0]}))
    _, raw = load_encrypted(age_file.read_bytes())
    md = parse_metadata(raw)
    services = [RemoteKeyService(f"unix://{sockdir}/nobody.sock"),
                RemoteKeyService(srv.keyservice_uri)]
    key = get_data_key(md, services)
    assert len(key) == 32
    # protect_data_key through the remote service too (encrypt direction)
    md2 = Metadata(key_groups=[[AgeEntry(age_key[1])]])
    protect_data_key(md2, key, services)
    enc = md2.key_groups[0][0].enc
    assert LocalKeyService({"SOPS_AGE_KEY": age_key[0]}).decrypt(AgeEntry(age_key[1], enc)) == key


@pytest.mark.parametrize("uri", ["tcp://127.0.0.1", "tcp://:5000", "http://127.0.0.1:5000",
                                 "unix://host/x.sock", "unix://", "127.0.0.1:5000"])
def test_client_rejects_bad_uris(uri):
    with pytest.raises(SopsError, match="invalid key service URI"):
        RemoteKeyService(uri)


def test_client_import_does_not_load_grpc():
    code = ("import sys, sops_enclave.keyservice.client as c; c.RemoteKeyService('unix:///x'); "
            "assert 'grpc' not in sys.modules and 'google.protobuf' not in sys.modules, "
            "sorted(m for m in sys.modules if 'grpc' in m or 'protobuf' in m)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ------------------------------------------------------------------------------ (c) TCP

def test_tcp_both_directions(sops, work, age_file, age_key, no_key_env, our_server,
                             real_keyservice):
    port = _free_port()
    srv = our_server(LocalKeyService({"SOPS_AGE_KEY": age_key[0]}), network="tcp",
                     address=f"127.0.0.1:{port}")
    assert srv.keyservice_uri == f"tcp://127.0.0.1:{port}"
    p = _sops(sops, ["decrypt", *_via(srv.keyservice_uri), age_file.name], no_key_env, work)
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout == PLAIN
    # a second server on the same port is refused (no silent SO_REUSEPORT sharing)
    with pytest.raises(SopsError, match=f"listen tcp 127.0.0.1:{port}"):
        serve("tcp", f"127.0.0.1:{port}", LocalKeyService({}))

    uri = real_keyservice({"SOPS_AGE_KEY": age_key[0]}, network="tcp")
    assert uri.startswith("tcp://127.0.0.1:")
    entry = _age_entry(age_file)
    with RemoteKeyService(uri) as remote:
        key = remote.decrypt(entry)
        enc = remote.encrypt(AgeEntry(age_key[1]), key)
    ident = pyrage.x25519.Identity.from_str(age_key[0])
    assert pyrage.decrypt(entry.enc.encode(), [ident]) == key
    assert pyrage.decrypt(enc.encode(), [ident]) == key


def test_tcp_port_zero_reports_the_real_port(age_key, our_server):
    srv = our_server(LocalKeyService({"SOPS_AGE_KEY": age_key[0]}), network="tcp",
                     address="127.0.0.1:0")
    port = int(srv.keyservice_uri.rpartition(":")[2])
    assert port > 0
    data_key = os.urandom(32)
    with RemoteKeyService(srv.keyservice_uri) as remote:
        enc = remote.encrypt(AgeEntry(age_key[1]), data_key)
        assert remote.decrypt(AgeEntry(age_key[1], enc)) == data_key


# ------------------------------------- (d) failures, other key types, PGP, KMS, the CLI

def _as_gcp_only(text: str) -> str:
    """Replace the age key of a sops YAML file by a GCP KMS key (a type we do not serve)."""
    block = ("    gcp_kms:\n"
             f"        - resource_id: {GCP_ID}\n"
             "          created_at: \"2024-01-01T00:00:00Z\"\n"
             "          enc: CiQAbm90LWEtcmVhbC1rZXk=\n")
    out, n = re.subn(r"^    age:\n(?: {8,}.*\n)+", block, text, flags=re.M)
    assert n == 1
    return out


def test_key_types_we_do_not_hold_fail_and_server_stays_up(sops, work, age_file, age_key,
                                                           no_key_env, our_server, gpg_key):
    local = Counting({"SOPS_AGE_KEY": age_key[0], "GNUPGHOME": no_key_env["GNUPGHOME"],
                      "PATH": os.environ.get("PATH", "")})
    srv = our_server(local)
    via = _via(srv.keyservice_uri)

    # a GCP KMS key the server has no credentials for: its GCP error, sops exits 128
    (work / "gcp.enc.yaml").write_text(_as_gcp_only(age_file.read_text()))
    p = _sops(sops, ["decrypt", *via, "gcp.enc.yaml"], no_key_env, work)
    assert p.returncode == 128, p.stderr.decode()
    assert b"GCP KMS" in p.stderr and b"Unknown key type" not in p.stderr

    # encrypting for a GCP key fails the same way
    p = _sops(sops, ["encrypt", *via, "--gcp-kms", GCP_ID, "plain.yaml"], no_key_env, work)
    assert p.returncode != 0
    assert b"GCP KMS" in p.stderr

    # a PGP key whose secret key the server does not have
    gnupg_home, fpr = gpg_key
    p = _sops(sops, ["encrypt", "--pgp", fpr, "plain.yaml"], dict(no_key_env, GNUPGHOME=gnupg_home),
              work)
    assert p.returncode == 0, p.stderr.decode()
    (work / "pgp-only.enc.yaml").write_bytes(p.stdout)
    p = _sops(sops, ["decrypt", *via, "pgp-only.enc.yaml"], no_key_env, work)
    assert p.returncode == 128, p.stderr.decode()

    # an age file for another recipient
    other = pyrage.x25519.Identity.generate()
    p = _sops(sops, ["encrypt", "--age", str(other.to_public()), "plain.yaml"], no_key_env, work)
    (work / "other-age.enc.yaml").write_bytes(p.stdout)
    p = _sops(sops, ["decrypt", *via, "other-age.enc.yaml"], no_key_env, work)
    assert p.returncode == 128, p.stderr.decode()

    # the server is still up and serving
    p = _sops(sops, ["decrypt", *via, age_file.name], no_key_env, work)
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout == PLAIN
    assert ("decrypt", "pgp") in local.calls and ("decrypt", "age") in local.calls
    assert ("decrypt", "gcp_kms") in local.calls  # served (and failed) by LocalKeyService


def test_pgp_through_our_server(sops, work, gpg_key, no_key_env, our_server):
    gnupg_home, fpr = gpg_key
    local = Counting(dict(os.environ, GNUPGHOME=gnupg_home))
    srv = our_server(local)
    via = _via(srv.keyservice_uri)
    # sops' own GNUPGHOME is empty: only our server can use the key, both ways
    p = _sops(sops, ["encrypt", *via, "--pgp", fpr, "plain.yaml"], no_key_env, work)
    assert p.returncode == 0, p.stderr.decode()
    assert b"-----BEGIN PGP MESSAGE-----" in p.stdout
    (work / "pgp.enc.yaml").write_bytes(p.stdout)
    p = _sops(sops, ["decrypt", *via, "pgp.enc.yaml"], no_key_env, work)
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout == PLAIN
    # what our server wrote, the real sops decrypts locally with the keyring
    p = _sops(sops, ["decrypt", "pgp.enc.yaml"], dict(no_key_env, GNUPGHOME=gnupg_home), work)
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout == PLAIN
    assert local.calls == [("encrypt", "pgp"), ("decrypt", "pgp")]


def test_kms_with_context_through_our_server_process(sops, work, kms_env, kms_key, no_key_env,
                                                     sockdir):
    """AWS KMS (moto) and an encryption context, the server running as its own process."""
    path = os.path.join(sockdir, "kms.sock")
    env = dict(kms_env)
    env.pop("SOPS_AGE_KEY", None)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen([sys.executable, "-m", "sops_enclave.keyservice", "--network", "unix",
                             "--address", path, "--verbose"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_unix(path, proc)
        via = _via(f"unix://{path}")
        # sops' env has no AWS credentials: it cannot reach KMS itself
        p = _sops(sops, ["encrypt", *via, "--kms", kms_key, "--encryption-context",
                         "app:ks,env:test", "plain.yaml"], no_key_env, work)
        assert p.returncode == 0, p.stderr.decode()
        assert b"app: ks" in p.stdout
        (work / "kms.enc.yaml").write_bytes(p.stdout)
        p = _sops(sops, ["decrypt", *via, "kms.enc.yaml"], no_key_env, work)
        assert p.returncode == 0, p.stderr.decode()
        assert p.stdout == PLAIN
        # run() stops cleanly on SIGTERM and removes its socket
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert not os.path.exists(path)
        log = proc.stderr.read().decode()
        assert "Listening on unix://" in log and "Caught signal SIGTERM" in log
        assert "Decrypt from" in log and "AWS KMS key with ARN" in log
    finally:
        _stop(proc)
        proc.stderr.close()


def test_our_server_process_serves_real_sops_and_stops_on_sigint(sops, work, age_file, age_key,
                                                                 no_key_env, sockdir):
    path = os.path.join(sockdir, "proc.sock")
    env = dict(no_key_env, SOPS_AGE_KEY=age_key[0],
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    code = ("import sys; from sops_enclave.keyservice.server import run; "
            "from sops_enclave.keys.groups import LocalKeyService; "
            "sys.exit(run('unix', sys.argv[1], LocalKeyService()))")
    proc = subprocess.Popen([sys.executable, "-c", code, path], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_unix(path, proc)
        p = _sops(sops, ["decrypt", *_via(f"unix://{path}"), age_file.name], no_key_env, work)
        assert p.returncode == 0, p.stderr.decode()
        assert p.stdout == PLAIN
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
        assert not os.path.exists(path)
        assert age_key[0] not in proc.stderr.read().decode()
    finally:
        _stop(proc)
        proc.stderr.close()


# ------------------------------------------------- the protocol itself, without sops

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _raw_call(uri_target: str, method: str, body: bytes) -> bytes:
    """Call ``/KeyService/<method>`` with hand-encoded protobuf (no generated code)."""
    with grpc.insecure_channel(uri_target) as ch:
        fn = ch.unary_unary(f"/KeyService/{method}", request_serializer=None,
                            response_deserializer=None)
        return fn(body, timeout=30)


def test_wire_format_by_hand(age_key, our_server):
    """Field numbers and method paths as in sops' keyservice.proto, checked without our stubs."""
    srv = our_server(LocalKeyService({"SOPS_AGE_KEY": age_key[0]}))
    target = srv.keyservice_uri
    data_key = os.urandom(32)
    age_key_msg = _ld(6, _ld(1, age_key[1].encode()))          # Key.age_key = 6
    req = _ld(1, age_key_msg) + _ld(2, data_key)                # EncryptRequest{key=1, plaintext=2}
    resp = _raw_call(target, "Encrypt", req)
    assert resp[0] == (1 << 3 | 2)                              # EncryptResponse.ciphertext = 1
    # parse the single length-delimited field
    n, i, shift = 0, 1, 0
    while True:
        b = resp[i]
        n |= (b & 0x7F) << shift
        i += 1
        shift += 7
        if not b & 0x80:
            break
    enc = resp[i:i + n]
    assert enc.startswith(b"-----BEGIN AGE ENCRYPTED FILE-----")
    resp = _raw_call(target, "Decrypt", _ld(1, age_key_msg) + _ld(2, enc))
    assert resp == _ld(1, data_key)                             # DecryptResponse.plaintext = 1


@pytest.mark.parametrize("key_bytes, code, msg", [
    (None, "NOT_FOUND", "Must provide a key"),
    (b"", "NOT_FOUND", "Unknown key type"),
    (_ld(9, _ld(1, b"future")), "NOT_FOUND", "Unknown key type"),               # unknown field
])
def test_unknown_key_types_are_not_found(age_key, our_server, key_bytes, code, msg):
    srv = our_server(LocalKeyService({"SOPS_AGE_KEY": age_key[0]}))
    body = (b"" if key_bytes is None else _ld(1, key_bytes)) + _ld(2, b"x" * 32)
    for method in ("Encrypt", "Decrypt"):
        with pytest.raises(grpc.RpcError) as ei:
            _raw_call(srv.keyservice_uri, method, body)
        assert ei.value.code().name == code
        assert ei.value.details().startswith(msg)


def test_error_statuses(age_key, our_server):
    from sops_enclave.keyservice import keyservice_pb2 as pb
    from sops_enclave.keyservice import keyservice_pb2_grpc as pbg

    srv = our_server(LocalKeyService({"SOPS_AGE_KEY": age_key[0]}))
    other = pyrage.x25519.Identity.generate()
    foreign = pyrage.encrypt(b"k" * 32, [other.to_public()], armored=True)
    age = pb.Key(age_key=pb.AgeKey(recipient=age_key[1]))
    cases = [
        ("Decrypt", pb.DecryptRequest(key=age, ciphertext=foreign), "NOT_FOUND"),
        ("Decrypt", pb.DecryptRequest(key=age, ciphertext=b"\xff\xfe"), "INVALID_ARGUMENT"),
        ("Decrypt", pb.DecryptRequest(key=age, ciphertext=b""), "INVALID_ARGUMENT"),
        ("Encrypt", pb.EncryptRequest(key=age, plaintext=b""), "INVALID_ARGUMENT"),
        ("Encrypt", pb.EncryptRequest(key=pb.Key(age_key=pb.AgeKey(recipient="age1nope")),
                                      plaintext=b"k" * 32), "FAILED_PRECONDITION"),
    ]
    with grpc.insecure_channel(srv.keyservice_uri) as ch:
        stub = pbg.KeyServiceStub(ch)
        for method, req, code in cases:
            with pytest.raises(grpc.RpcError) as ei:
                getattr(stub, method)(req, timeout=30)
            assert ei.value.code().name == code, (method, ei.value.details())
            assert "\n" not in ei.value.details()
            assert age_key[0] not in ei.value.details()


def test_prompt_refused_and_accepted(age_key, our_server):
    answers: list[tuple[str, str]] = []
    verdict = {"ok": False}

    def confirm(kind, what):
        answers.append((kind, what))
        return verdict["ok"]

    srv = our_server(LocalKeyService({"SOPS_AGE_KEY": age_key[0]}), prompt=True, confirm=confirm)
    remote = RemoteKeyService(srv.keyservice_uri)
    with pytest.raises(KeyServiceError, match="code = PermissionDenied desc = Request rejected by user"):
        remote.encrypt(AgeEntry(age_key[1]), b"k" * 32)
    verdict["ok"] = True
    enc = remote.encrypt(AgeEntry(age_key[1]), b"k" * 32)
    assert remote.decrypt(AgeEntry(age_key[1], enc)) == b"k" * 32
    assert answers == [("encrypt", f"age key with recipient {age_key[1]}")] * 2 + \
        [("decrypt", f"age key with recipient {age_key[1]}")]
    remote.close()


def test_other_entry_types_reach_the_server(age_key, our_server):
    """gcp_kms/hc_vault entries are forwarded and served: the server's key errors come back."""
    srv = our_server(LocalKeyService({"GOOGLE_APPLICATION_CREDENTIALS": "/nonexistent"}))
    remote = RemoteKeyService(srv.keyservice_uri)
    for entry, why in (
            (OtherEntry("gcp_kms", Branch([("resource_id", GCP_ID), ("enc", "abc")])),
             "cannot create GCP KMS service: open /nonexistent"),
            (OtherEntry("hc_vault", Branch([("vault_address", "https://v.invalid:8200"),
                                            ("engine_path", "transit"),
                                            ("key_name", "k"), ("enc", "vault:v1:x")])),
             "Vault transit backend 'transit/decrypt/k'")):
        with pytest.raises(KeyServiceError, match=why):
            remote.decrypt(entry)
    with pytest.raises(KeyServiceError, match="cannot be sent"):
        remote.decrypt(OtherEntry("nonsense", Branch()))
    remote.close()


def test_concurrent_requests(age_key, our_server):
    srv = our_server(LocalKeyService({"SOPS_AGE_KEY": age_key[0]}))
    remote = RemoteKeyService(srv.keyservice_uri)
    keys = [os.urandom(32) for _ in range(12)]
    encs = [remote.encrypt(AgeEntry(age_key[1]), k) for k in keys]
    out: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def work(i):
        try:
            out[i] = remote.decrypt(AgeEntry(age_key[1], encs[i]))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(keys))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert [out[i] for i in range(len(keys))] == keys
    remote.close()


def test_cli_register_and_handler_errors():
    import argparse

    from sops_enclave.keyservice import cli

    parser = argparse.ArgumentParser(prog="sops-enclave")
    sub = parser.add_subparsers(dest="command")
    cli.register(sub)
    args = parser.parse_args(["keyservice", "--net", "unix", "--addr", "/tmp/x.sock", "--prompt",
                              "--verbose"])
    assert (args.network, args.address, args.prompt, args.verbose) == ("unix", "/tmp/x.sock",
                                                                      True, True)
    assert args.func is cli.handler
    args = parser.parse_args(["keyservice"])
    assert (args.network, args.address, args.prompt) == ("tcp", None, False)
    with pytest.raises(SystemExit):
        parser.parse_args(["keyservice", "--network", "udp"])
    with pytest.raises(SopsError, match="--address is required"):
        cli.handler(parser.parse_args(["keyservice", "--network", "unix"]))
    with pytest.raises(SopsError, match="missing or bad port"):
        cli.handler(parser.parse_args(["keyservice", "--address", "127.0.0.1"]))


def test_enclave_cli_decrypts_through_real_sops_keyservice(age_file, age_key, real_keyservice,
                                                           no_key_env, enclave_bin, sops):
    """`sops-enclave decrypt --keyservice URI` with no local keys, served by a real sops."""
    uri = real_keyservice({"SOPS_AGE_KEY": age_key[0]})
    args = ["decrypt", "--enable-local-keyservice=false", "--keyservice", uri, str(age_file)]
    ours = subprocess.run(enclave_bin + args, env=no_key_env, capture_output=True, timeout=60)
    ref = subprocess.run([sops, "decrypt", str(age_file)],
                         env=dict(no_key_env, SOPS_AGE_KEY=age_key[0]), capture_output=True)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == ref.stdout
    # Without the key service and without local keys it cannot work.
    none = subprocess.run(enclave_bin + ["decrypt", str(age_file)], env=no_key_env,
                          capture_output=True, timeout=60)
    assert none.returncode == 128
