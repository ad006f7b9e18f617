"""``sops-enclave dev``: moto's KMS and the KMS-with-attestation layer on 127.0.0.1, trusting
the local dev CA of the software NSM. For demos and tests only.

:class:`DevStack` runs the two servers for the life of a Python object (tests, ``make demo``).
``sops-enclave dev up`` runs one in the background for a shell session, with a *state
directory* (``--state DIR``; default ``$SOPS_ENCLAVE_DEV_STATE``, else
``$XDG_STATE_HOME/sops-enclave/dev``, else ``~/.local/state/sops-enclave/dev``)::

    config.json     the attested KMS's port and the default enclave policy (kept)
    run.json        pid, URLs and the dev principals while the stack runs (0600)
    dev-ca/         the dev CA with --state DIR (default state: the default dev CA, where
                    `verify --allow-dev` looks; $SOPS_ENCLAVE_DEV_CA_DIR wins)
    kms-secret      32 random bytes (0600): every key's material is derived from it
    kms-keys.json   the keys: id, ARN, description, state, key policy, aliases
    dev.log         the stack's log

moto keeps its keys in memory. With a state directory the moto process derives each
symmetric key's material from ``kms-secret`` and the key id (HMAC-SHA256), and at start
re-creates the keys listed in ``kms-keys.json`` with their ids, key policies and aliases,
so files encrypted before a restart still decrypt after it, at the same URL (the port is
kept in ``config.json``). ``kms-keys.json`` is written after every ``dev kms`` command and
when the stack stops (``dev down``, SIGTERM, Ctrl+C). Not kept: grants, tags, rotations,
the private halves of asymmetric and HMAC keys (new ones after a restart), keys in regions
other than us-east-1, and keys created with another client since the last snapshot by a
stack that was then killed with SIGKILL. The state directory holds key material: it is a
dev stand-in, never a place for real keys.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

__all__ = ["DevStack", "up", "dev_pcrs", "changed_code_copy", "STATE_ENV",
           "default_state_dir", "running", "env_exports", "down", "serve", "create_key",
           "put_key_policy", "list_keys", "snapshot_keys", "resolve_state",
           "not_running_error"]

#: The environment variable naming the state directory (``dev env`` exports it).
STATE_ENV = "SOPS_ENCLAVE_DEV_STATE"
#: The region ``DevStack.env`` exports; the keys of this region are the ones kept.
REGION = "us-east-1"
#: Access key ids of the default dev principals: the enclave host role and the key admin.
HOST_KEY_ID = "dev"
ADMIN_KEY_ID = "kms-admin"
_MATERIAL_LABEL = b"sops-enclave dev kms key material\0"


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
    ``state_dir``: keep moto's keys there (see the module docstring); None: in memory only.
    """

    def __init__(self, port: int = 0, ca_dir: str | None = None,
                 principals: dict[str, tuple[str, str]] | None = None,
                 state_dir: str | None = None):
        self.port = port
        self.ca_dir = ca_dir
        self.principals = principals
        self.state_dir = state_dir
        self.moto: subprocess.Popen | None = None
        self.kms = None
        self.url = ""
        self.upstream = ""

    def start(self) -> "DevStack":
        from sops_enclave.devtools.kms_attested import AttestedKMS
        from sops_enclave.devtools.nsm_soft import SoftNSM

        # moto in a child process that binds a free port itself and reports it on its
        # stdout once it listens: no port race, no polling.
        # Its stdin is a pipe it watches: when this process ends, however it ends, moto
        # sees EOF and exits too.
        cmd = [sys.executable, "-m", "sops_enclave.devtools.devstack", "--moto"]
        if self.state_dir:
            cmd += ["--state", str(self.state_dir)]
        self.moto = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        try:
            assert self.moto.stdout is not None
            line = self.moto.stdout.readline().decode(errors="replace").strip()
            self.moto.stdout.close()
            if not line.startswith("port "):
                raise RuntimeError(f"moto did not start: {line or 'no answer'} (it needs "
                                   "pip install 'moto[server]')")
            self.upstream = f"http://127.0.0.1:{int(line.split()[1])}"
            root = SoftNSM(ca_dir=self.ca_dir).root_fingerprint
            self.kms = AttestedKMS(self.upstream, trusted_roots=[root],
                                   principals=self.principals)
            self.url = self.kms.start(host="127.0.0.1", port=self.port)
        except BaseException:
            self.stop()
            raise
        return self

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL_KMS": self.url, "AWS_ACCESS_KEY_ID": HOST_KEY_ID,
                "AWS_SECRET_ACCESS_KEY": "dev", "AWS_DEFAULT_REGION": REGION}

    def principal_table(self) -> Mapping[str, tuple[str, str]]:
        """``{access key id: (secret, ARN)}`` of the callers the attested KMS accepts."""
        if self.principals is not None:
            return self.principals
        from sops_enclave.devtools.kms_sigv4 import DEFAULT_PRINCIPALS

        return DEFAULT_PRINCIPALS

    def stop(self) -> None:
        if self.kms is not None:
            self.kms.stop()
            self.kms = None
        if self.moto is not None:
            if self.moto.stdin is not None:
                self.moto.stdin.close()
            self.moto.terminate()
            try:
                self.moto.wait(10)
            except subprocess.TimeoutExpired:
                self.moto.kill()
                self.moto.wait()
            self.moto = None

    def __enter__(self) -> "DevStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ------------------------------------------------------------------ moto with kept keys

def _material(secret: bytes, key_id: str) -> bytes:
    return hmac.new(secret, _MATERIAL_LABEL + key_id.encode(), hashlib.sha256).digest()


def _read_secret(state: Path) -> bytes:
    """The state's ``kms-secret``, made (0600) on first use."""
    path = state / "kms-secret"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return bytes.fromhex(path.read_text().strip())
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    return bytes.fromhex(path.read_text().strip())


def _install_state(state: Path) -> int:
    """In the moto process: derive key material from the state's secret, and re-create the
    recorded keys. Returns the number of keys restored."""
    import moto.kms.models as km

    secret = _read_secret(state)
    original_init = km.Key.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.key_material = _material(secret, self.id)

    km.Key.__init__ = init  # type: ignore[method-assign]
    records = _read_json(state / "kms-keys.json") or {}
    restored = 0
    for rec in records.get("keys", []):
        _, _, _, region, account, _ = rec["Arn"].split(":", 5)
        backend = km.kms_backends[account][region]
        if rec["KeyId"] in backend.keys:
            continue
        make_id = km.generate_key_id
        km.generate_key_id = lambda multi_region=False, _k=rec["KeyId"]: _k
        try:
            key = backend.create_key(rec.get("Policy"), rec.get("KeyUsage") or "ENCRYPT_DECRYPT",
                                     rec.get("KeySpec") or "SYMMETRIC_DEFAULT",
                                     rec.get("Description", ""), None)
        finally:
            km.generate_key_id = make_id
        for alias in rec.get("Aliases", []):
            backend.create_alias(key.id, alias)
        if rec.get("KeyState") == "Disabled":
            backend.disable_key(key.id)
        restored += 1
    return restored


def _moto_main(argv: list[str]) -> int:
    """``python -m sops_enclave.devtools.devstack --moto [--state DIR]``: moto's server on a
    free port of 127.0.0.1; prints ``port N`` (or ``error ...``) on stdout when ready."""
    import argparse

    ap = argparse.ArgumentParser(prog="sops-enclave-dev-moto")
    ap.add_argument("--moto", action="store_true")
    ap.add_argument("--state")
    args = ap.parse_args(argv)
    try:
        from moto.moto_server.werkzeug_app import MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        if args.state:
            _install_state(Path(args.state))
        # moto's KMS application alone (the layer forwards nothing else): moto_server's
        # dispatcher, which serves every service, lists moto's modules on disk for each
        # request (a third of moto's time per KMS call here).
        app = create_backend_app("kms")
        server = make_server("127.0.0.1", 0, app, True, request_handler=MotoRequestHandler)
    except Exception as e:  # reported to the parent, which raises it
        print(f"error {type(e).__name__}: {e}", flush=True)
        return 1
    os.environ["MOTO_PORT"] = str(server.server_port)

    def parent_gone() -> None:
        sys.stdin.buffer.read()   # returns at EOF: the parent closed the pipe or died
        os._exit(0)

    import threading

    threading.Thread(target=parent_gone, daemon=True).start()
    print(f"port {server.server_port}", flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # nothing more to the parent's pipe, which it no longer reads
    server.serve_forever()
    return 0


# ------------------------------------------------------------------ the state directory

def default_state_dir(environ: Mapping[str, str]) -> Path:
    """``$SOPS_ENCLAVE_DEV_STATE``, else ``$XDG_STATE_HOME/sops-enclave/dev``, else
    ``~/.local/state/sops-enclave/dev``."""
    if environ.get(STATE_ENV):
        return Path(environ[STATE_ENV]).absolute()
    base = environ.get("XDG_STATE_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".local", "state")
    return Path(base).absolute() / "sops-enclave" / "dev"


def resolve_state(state: str | None, environ: Mapping[str, str]) -> Path:
    """The state directory: ``state`` (--state) if given, else the default one."""
    return Path(state).absolute() if state else default_state_dir(environ)


def _ca_dir(state_given: bool, d: Path, cfg: Mapping[str, Any],
            environ: Mapping[str, str]) -> str:
    """The dev CA the stack trusts (and the dev enclave signs with): $SOPS_ENCLAVE_DEV_CA_DIR,
    else the one this state used before, else DIR/dev-ca with --state, else the default dev
    CA (where ``verify --allow-dev`` looks without any variable)."""
    from sops_enclave.receipt.dev_root import DEV_CA_DIR_ENV, default_dev_ca_dir

    if environ.get(DEV_CA_DIR_ENV):
        return str(Path(environ[DEV_CA_DIR_ENV]).absolute())
    if cfg.get("ca_dir"):
        return str(cfg["ca_dir"])
    return str(d / "dev-ca") if state_given else str(default_dev_ca_dir(environ).absolute())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        from sops_enclave.errors import SopsError

        raise SopsError(f"{path}: cannot be read ({e}); remove it and run "
                        "'sops-enclave dev up' again") from None


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def running(state: Path) -> dict | None:
    """The ``run.json`` of a stack that is running for ``state``, else None."""
    run = _read_json(state / "run.json")
    if not isinstance(run, dict) or not isinstance(run.get("pid"), int):
        return None
    try:
        with open(f"/proc/{run['pid']}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
    except OSError:
        return None
    # The pid must still be this state's stack (pids are reused).
    if b"sops_enclave" not in cmdline or str(state).encode() not in cmdline:
        return None
    return run


def not_running_error(state: Path) -> Exception:
    from sops_enclave.errors import SopsError

    flag = "" if os.environ.get(STATE_ENV) == str(state) else f" --state {shlex.quote(str(state))}"
    return SopsError(f"no dev stack is running for {state}: start it with "
                     f"'sops-enclave dev up{flag}'")


def env_exports(run: Mapping[str, Any], state: Path) -> list[str]:
    """The ``export`` lines for a shell (``eval "$(sops-enclave dev env)"``)."""
    host = run["principals"]["host"]
    env = {"AWS_ENDPOINT_URL_KMS": run["url"], "AWS_ACCESS_KEY_ID": host["access_key_id"],
           "AWS_SECRET_ACCESS_KEY": host["secret"], "AWS_DEFAULT_REGION": REGION,
           "SOPS_ENCLAVE_DEV_CA_DIR": run["ca_dir"], STATE_ENV: str(state)}
    return [f"export {k}={shlex.quote(v)}" for k, v in env.items()]


def _policy_bytes(path: str | None) -> bytes | None:
    if not path:
        return None
    from sops_enclave.fileio import read_input
    from sops_enclave.pack.enclave_policy import load_enclave_policy

    raw = read_input(path)
    load_enclave_policy(raw, path)
    return raw


def _summary(run: Mapping[str, Any], state: Path, policy: str | None, out) -> None:
    pcr0 = dev_pcrs(_policy_bytes(policy))[0].hex()
    for line in env_exports(run, state):
        print(line, file=out)
    if policy:
        print(f"# dev enclave PCR0 with enclave policy {policy}: {pcr0}", file=out)
    else:
        print(f"# dev enclave PCR0 without an enclave policy (unrestricted runs): {pcr0}",
              file=out)
    print("# keys: sops-enclave dev kms create-key --alias NAME [--gated]", file=out)


def up(state: str | None = None, port: int = 0, enclave_policy: str | None = None, *,
       environ: Mapping[str, str] | None = None, out=None) -> int:
    """``dev up``: start the stack in the background (or say it already runs), print the
    environment to use. Returns when the stack listens."""
    from sops_enclave.errors import SopsError

    environ = os.environ if environ is None else environ
    out = out or sys.stdout
    d = resolve_state(state, environ)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    policy = os.path.abspath(enclave_policy) if enclave_policy else None
    _policy_bytes(policy)  # refuse a bad policy before starting anything
    cfg = _read_json(d / "config.json") or {}
    if policy:
        cfg["enclave_policy"] = policy
    run = running(d)
    if run is not None:
        _write_json(d / "config.json", cfg)
        print(f"# the dev stack for {d} is already running at {run['url']} (pid {run['pid']})",
              file=out)
        _summary(run, d, cfg.get("enclave_policy"), out)
        return 0
    if port:
        cfg["port"] = port
    cfg["ca_dir"] = _ca_dir(state is not None, d, cfg, environ)
    _write_json(d / "config.json", cfg)
    r, w = os.pipe()
    child_env = {k: v for k, v in environ.items() if not k.startswith("AWS_")}
    child_env["SOPS_ENCLAVE_DEV_CA_DIR"] = cfg["ca_dir"]
    with open(d / "dev.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "sops_enclave", "dev", "up",
                                 "--foreground", "--state", str(d), "--ready-fd", str(w)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                pass_fds=(w,), start_new_session=True, cwd=str(d),
                                env=child_env)
    os.close(w)
    with os.fdopen(r, "rb") as f:  # EOF once the stack is up (or has died)
        answer = f.read().decode(errors="replace").strip()
    if not answer.startswith("ok"):
        proc.wait()
        why = answer.removeprefix("error ").strip() or _last_log_line(d)
        raise SopsError(f"the dev stack did not start: {why} (log: {d / 'dev.log'})")
    run = running(d)
    if run is None:
        raise SopsError(f"the dev stack did not start (log: {d / 'dev.log'})")
    restored = len((_read_json(d / "kms-keys.json") or {}).get("keys", []))
    kept = f", {restored} key(s) restored" if restored else ""
    print(f"# sops-enclave dev stack is up: KMS with attestation at {run['url']} "
          f"(pid {run['pid']}, state {d}{kept})", file=out)
    _summary(run, d, cfg.get("enclave_policy"), out)
    return 0


def _last_log_line(d: Path) -> str:
    try:
        lines = (d / "dev.log").read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no message"
    return lines[-1][:300] if lines else "no message"


def serve(state: str | None = None, port: int = 0, enclave_policy: str | None = None, *,
          ready_fd: int | None = None, environ: Mapping[str, str] | None = None) -> int:
    """``dev up --foreground``: run the stack in this process until SIGTERM/SIGINT; keep the
    keys in the state directory when it stops."""
    environ = os.environ if environ is None else environ
    d = resolve_state(state, environ)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    cfg = _read_json(d / "config.json") or {}
    if enclave_policy:
        cfg["enclave_policy"] = os.path.abspath(enclave_policy)
    port = port or int(cfg.get("port") or 0)
    ca_dir = cfg["ca_dir"] = _ca_dir(state is not None, d, cfg, environ)
    # Signals only wake the main thread up (through the wakeup fd): the servers' threads
    # keep answering until the keys are written and the stack is stopped.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    try:
        stack = DevStack(port=port, ca_dir=ca_dir, state_dir=str(d)).start()
    except Exception as e:
        msg = str(e)
        if isinstance(e, OSError) and port:
            msg = (f"port {port} is in use ({e.strerror}); it is kept in {d / 'config.json'}: "
                   "stop what uses it, or pass --port N")
        if ready_fd is not None:
            os.write(ready_fd, f"error {msg}\n".encode())
            os.close(ready_fd)
            return 1
        from sops_enclave.errors import SopsError

        raise SopsError(f"the dev stack did not start: {msg}") from None
    try:
        table = stack.principal_table()
        host, admin = table[HOST_KEY_ID], table[ADMIN_KEY_ID]
        run = {"pid": os.getpid(), "url": stack.url, "upstream": stack.upstream,
               "ca_dir": ca_dir,
               "principals": {"host": {"access_key_id": HOST_KEY_ID, "secret": host[0],
                                       "arn": host[1]},
                              "admin": {"access_key_id": ADMIN_KEY_ID, "secret": admin[0],
                                        "arn": admin[1]}}}
        cfg["port"] = int(stack.url.rsplit(":", 1)[1])
        _write_json(d / "config.json", cfg)
        _write_json(d / "run.json", run)
        if ready_fd is not None:
            os.write(ready_fd, b"ok\n")
            os.close(ready_fd)
        else:
            print(f"# sops-enclave dev stack is up at {stack.url} (Ctrl+C stops it)")
            _summary(run, d, cfg.get("enclave_policy"), sys.stdout)
            sys.stdout.flush()
        os.read(wake_r, 1)  # blocks until a signal arrives
    finally:
        try:
            snapshot_keys(stack.upstream, d)
        except Exception as e:  # the stack still stops; the last snapshot stays
            print(f"sops-enclave dev: keys not written: {e}", file=sys.stderr)
        stack.stop()
        try:
            os.unlink(d / "run.json")
        except FileNotFoundError:
            pass
    print("# dev stack stopped", file=sys.stderr)
    return 0


def down(state: str | None = None, *, environ: Mapping[str, str] | None = None,
         out=None) -> int:
    """``dev down``: stop the stack of the state directory (its keys stay there)."""
    environ = os.environ if environ is None else environ
    out = out or sys.stdout
    d = resolve_state(state, environ)
    run = running(d)
    if run is None:
        print(f"# no dev stack is running for {d}", file=out)
        return 0
    pid = run["pid"]
    fd = None
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pass
    os.kill(pid, signal.SIGTERM)
    if fd is not None:
        import select

        ready, _, _ = select.select([fd], [], [], 30)  # readable when the process exits
        if not ready:
            os.kill(pid, signal.SIGKILL)
            select.select([fd], [], [], 10)
        os.close(fd)
    print(f"# dev stack stopped; its keys are kept in {d} ('sops-enclave dev up"
          f"{'' if environ.get(STATE_ENV) == str(d) else ' --state ' + shlex.quote(str(d))}' "
          "brings them back)", file=out)
    return 0


# ------------------------------------------------------------------ keys

def _client(run: Mapping[str, Any], who: str):
    import boto3

    p = run["principals"][who]
    return boto3.client("kms", region_name=REGION, endpoint_url=run["url"],
                        aws_access_key_id=p["access_key_id"],
                        aws_secret_access_key=p["secret"])


def _collect_keys(upstream: str) -> list[dict[str, Any]]:
    """The customer keys of moto (directly, not through the attested layer)."""
    import boto3

    c = boto3.client("kms", region_name=REGION, endpoint_url=upstream,
                     aws_access_key_id="snapshot", aws_secret_access_key="snapshot")
    aliases: dict[str, list[str]] = {}
    for page in c.get_paginator("list_aliases").paginate():
        for a in page["Aliases"]:
            if a.get("TargetKeyId") and not a["AliasName"].startswith("alias/aws/"):
                aliases.setdefault(a["TargetKeyId"], []).append(a["AliasName"])
    keys = []
    for page in c.get_paginator("list_keys").paginate():
        for k in page["Keys"]:
            m = c.describe_key(KeyId=k["KeyId"])["KeyMetadata"]
            if m.get("KeyManager") != "CUSTOMER" or m.get("KeyState") == "PendingDeletion" \
                    or m.get("MultiRegion"):
                continue
            policy = c.get_key_policy(KeyId=k["KeyId"], PolicyName="default")["Policy"]
            keys.append({"KeyId": m["KeyId"], "Arn": m["Arn"],
                         "Description": m.get("Description", ""),
                         "KeyUsage": m.get("KeyUsage"), "KeySpec": m.get("KeySpec"),
                         "KeyState": m.get("KeyState"), "Policy": policy,
                         "Aliases": sorted(aliases.get(m["KeyId"], []))})
    return keys


def snapshot_keys(upstream: str, state: Path) -> int:
    """Write ``kms-keys.json`` from moto's keys; returns how many."""
    keys = _collect_keys(upstream)
    _write_json(Path(state) / "kms-keys.json", {"version": 1, "keys": keys})
    return len(keys)


def _gate_pcr0(policy: str) -> str | None:
    """The PCR0 a key policy pins (its ImageSha384 condition), or None."""
    try:
        doc = json.loads(policy)
    except ValueError:
        return None
    from sops_enclave.image.policy import IMAGE_SHA384_KEY

    for st in doc.get("Statement", []) if isinstance(doc, dict) else []:
        if st.get("Effect") != "Allow":
            continue
        for cond in (st.get("Condition") or {}).values():
            if isinstance(cond, dict) and IMAGE_SHA384_KEY in cond:
                value = cond[IMAGE_SHA384_KEY]
                return value[0] if isinstance(value, list) else value
    return None


def _alias_name(alias: str) -> str:
    import re

    from sops_enclave.errors import SopsError

    name = alias if alias.startswith("alias/") else f"alias/{alias}"
    if not re.fullmatch(r"alias/[A-Za-z0-9/_-]{1,250}", name) or name.startswith("alias/aws/"):
        raise SopsError(f"--alias {alias!r}: an alias is letters, digits, '/', '_' and '-' "
                        "(not starting with aws/)")
    return name


def _default_policy(d: Path, enclave_policy: str | None) -> str | None:
    if enclave_policy:
        return os.path.abspath(enclave_policy)
    return (_read_json(d / "config.json") or {}).get("enclave_policy")


def _gated_policy(run: Mapping[str, Any], arn: str, policy_file: str | None) -> tuple[dict, str]:
    from sops_enclave.image.policy import key_policy

    pcr0 = dev_pcrs(_policy_bytes(policy_file))[0].hex()
    doc = key_policy(pcr0, role_arn=run["principals"]["host"]["arn"],
                     admin_arns=[run["principals"]["admin"]["arn"]], key_arn=arn)
    return doc, pcr0


def _kms_call(what: str, fn, *args: Any, **kwargs: Any) -> Any:
    from sops_enclave.errors import SopsError

    try:
        return fn(*args, **kwargs)
    except Exception as e:
        resp = getattr(e, "response", None)
        err = resp.get("Error", {}) if isinstance(resp, dict) else {}
        why = f"{err.get('Code')}: {err.get('Message', '')}" if err else type(e).__name__
        raise SopsError(f"{what}: {why}") from None


def create_key(state: str | None = None, alias: str | None = None, gated: bool = False,
               enclave_policy: str | None = None, *,
               environ: Mapping[str, str] | None = None, err=None) -> str:
    """``dev kms create-key``: a symmetric key (made by the key admin), optionally with an
    alias and with the attestation-gated key policy of ``sops-enclave policy`` pinned to the
    dev PCR0 of ``enclave_policy`` (default: the one ``dev up`` was given). Returns the ARN."""
    from sops_enclave.errors import SopsError

    environ = os.environ if environ is None else environ
    err = err or sys.stderr
    d = resolve_state(state, environ)
    run = running(d)
    if run is None:
        raise not_running_error(d)
    name = _alias_name(alias) if alias else None
    policy_file = _default_policy(d, enclave_policy) if gated else None
    if gated:
        _policy_bytes(policy_file)
    admin = _client(run, "admin")
    if name:
        for k in _collect_keys(run["upstream"]):
            if name in k["Aliases"]:
                raise SopsError(f"{name} already names {k['Arn']} (sops-enclave dev kms list); "
                                "choose another alias")
    desc = f"sops-enclave dev key{' ' + name if name else ''}"
    arn = _kms_call("CreateKey", admin.create_key, Description=desc)["KeyMetadata"]["Arn"]
    if name:
        _kms_call("CreateAlias", admin.create_alias, AliasName=name, TargetKeyId=arn)
    if gated:
        doc, pcr0 = _gated_policy(run, arn, policy_file)
        _kms_call("PutKeyPolicy", admin.put_key_policy, KeyId=arn, PolicyName="default",
                  Policy=json.dumps(doc))
        which = f"enclave policy {policy_file}" if policy_file else \
            "no enclave policy: unrestricted dev runs"
        print(f"# {name or arn}: Decrypt only for the dev enclave with PCR0 {pcr0[:16]}... "
              f"({which})", file=err)
    snapshot_keys(run["upstream"], d)
    return arn


def _resolve(run: Mapping[str, Any], key: str) -> str:
    for k in _collect_keys(run["upstream"]):
        if key in (k["KeyId"], k["Arn"]) or key in k["Aliases"] or \
                any(key.endswith(":" + a) for a in k["Aliases"]):
            return k["Arn"]
    from sops_enclave.errors import SopsError

    raise SopsError(f"{key}: no such key in the dev KMS (sops-enclave dev kms list)")


def put_key_policy(state: str | None, key: str, policy_text: str, *,
                   environ: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """``dev kms put-key-policy``: set a key's policy as the key admin (the stand-in for
    ``aws kms put-key-policy``). Returns (ARN, the PCR0 it pins or None)."""
    from sops_enclave.errors import SopsError

    environ = os.environ if environ is None else environ
    d = resolve_state(state, environ)
    run = running(d)
    if run is None:
        raise not_running_error(d)
    try:
        json.loads(policy_text)
    except ValueError as e:
        raise SopsError(f"the key policy is not JSON: {e}") from None
    arn = _resolve(run, key)
    _kms_call("PutKeyPolicy", _client(run, "admin").put_key_policy, KeyId=arn,
              PolicyName="default", Policy=policy_text)
    snapshot_keys(run["upstream"], d)
    return arn, _gate_pcr0(policy_text)


def list_keys(state: str | None = None, *, environ: Mapping[str, str] | None = None
              ) -> list[dict[str, Any]]:
    """``dev kms list``: each key's ARN, aliases, state and the PCR0 its policy pins."""
    environ = os.environ if environ is None else environ
    d = resolve_state(state, environ)
    run = running(d)
    if run is None:
        raise not_running_error(d)
    keys = _collect_keys(run["upstream"])
    for k in keys:
        k["GatedPCR0"] = _gate_pcr0(k.pop("Policy"))
    return keys


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


if __name__ == "__main__":
    raise SystemExit(_moto_main(sys.argv[1:]))
