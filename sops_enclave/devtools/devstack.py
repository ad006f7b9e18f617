"""``sops-enclave dev up``: moto's KMS (server mode) and the KMS-with-attestation layer on
127.0.0.1, trusting the local dev CA of the software NSM. For demos and tests only.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["DevStack", "up", "dev_pcrs", "changed_code_copy"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dev_pcrs(enclave_policy: bytes | None = None) -> dict[int, bytes]:
    """PCR0-2 of the dev enclave (the software NSM's measurement of the installed code, with
    the enclave policy it runs with)."""
    from sops_enclave.devtools.nsm_soft import measure_bundle, policy_bundle

    return measure_bundle(policy_bundle(enclave_policy))


class DevStack:
    """Start/stop moto_server and the attested KMS in front of it.

    ``principals``: the dev KMS's callers, ``{access key id: (secret, IAM role/user ARN)}``
    (default :data:`~sops_enclave.devtools.kms_sigv4.DEFAULT_PRINCIPALS`, where ``dev``, the
    key :meth:`env` exports, is ``arn:aws:iam::123456789012:role/ci-host``).
    """

    def __init__(self, port: int = 0, ca_dir: str | None = None,
                 principals: dict[str, tuple[str, str]] | None = None):
        self.port = port
        self.ca_dir = ca_dir
        self.principals = principals
        self.moto: subprocess.Popen | None = None
        self.kms = None
        self.url = ""
        self.upstream = ""

    def start(self) -> "DevStack":
        from sops_enclave.devtools.kms_attested import AttestedKMS
        from sops_enclave.devtools.nsm_soft import SoftNSM

        moto = shutil.which("moto_server", path=str(Path(sys.executable).parent)) \
            or shutil.which("moto_server")
        if not moto:
            raise RuntimeError("moto_server not found: pip install 'moto[server]'")
        mport = _free_port()
        self.moto = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(mport)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", mport), timeout=0.5):
                    break
            except OSError:
                if time.time() > deadline or self.moto.poll() is not None:
                    self.stop()
                    raise RuntimeError("moto_server did not start")
                time.sleep(0.1)
        self.upstream = f"http://127.0.0.1:{mport}"
        root = SoftNSM(ca_dir=self.ca_dir).root_fingerprint
        self.kms = AttestedKMS(self.upstream, trusted_roots=[root], principals=self.principals)
        self.url = self.kms.start(host="127.0.0.1", port=self.port)
        return self

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL_KMS": self.url, "AWS_ACCESS_KEY_ID": "dev",
                "AWS_SECRET_ACCESS_KEY": "dev", "AWS_DEFAULT_REGION": "us-east-1"}

    def stop(self) -> None:
        if self.kms is not None:
            self.kms.stop()
            self.kms = None
        if self.moto is not None:
            self.moto.terminate()
            try:
                self.moto.wait(10)
            except subprocess.TimeoutExpired:
                self.moto.kill()
            self.moto = None

    def __enter__(self) -> "DevStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def up(port: int = 0, enclave_policy: str | None = None) -> int:
    raw = None
    if enclave_policy:
        from sops_enclave.pack.enclave_policy import load_enclave_policy

        with open(enclave_policy, "rb") as f:
            raw = f.read()
        load_enclave_policy(raw, enclave_policy)
    stack = DevStack(port=port).start()
    pcrs = dev_pcrs(raw)
    print("# sops-enclave dev stack is up (Ctrl+C stops it). Use this environment:")
    for k, v in stack.env().items():
        print(f"export {k}={v}")
    print(f"# dev enclave PCR0 (ImageSha384) for key policies: {pcrs[0].hex()}")
    if raw is None:
        print("# no --enclave-policy: dev runs are unrestricted (verify needs "
              "--allow-unrestricted)")
        print("# then: sops-enclave exec --enclave dev; sops-enclave verify OUTPUT --allow-dev "
              f"--allow-unrestricted --pcr 0={pcrs[0].hex()}")
    else:
        print(f"# then: sops-enclave exec --enclave dev --enclave-policy {enclave_policy}; "
              f"sops-enclave verify OUTPUT --allow-dev --pcr 0={pcrs[0].hex()}")
    sys.stdout.flush()
    stopped = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(1))
    try:
        while not stopped:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
    return 0


def changed_code_copy(dest: Path) -> Path:
    """A copy of the installed code (package and enclave program) with one changed line in the
    enclave program: put it on PYTHONPATH and the dev enclave has another measurement."""
    import sops_enclave
    import sops_enclave.enclave as prog

    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(os.path.dirname(sops_enclave.__file__), dest / "sops_enclave", ignore=ignore)
    shutil.copytree(os.path.dirname(prog.__file__), dest / "sops_enclave" / "enclave",
                    ignore=ignore, dirs_exist_ok=True)
    with open(dest / "sops_enclave" / "enclave" / "executor.py", "a") as f:
        f.write("\n# one changed line in the enclave program\n")
    return dest
