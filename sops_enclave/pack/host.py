"""The host side of ``sops-enclave exec``: gather git objects and ciphertext, talk to the
enclave, write every output and receipt atomically. It never holds plaintext or data keys.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from sops_enclave.errors import CouldNotWriteOutputFile, SopsError
from sops_enclave.rpc import PROTOCOL_VERSION, FrameError, recv_frame, send_frame

__all__ = ["ExecOptions", "plan_at_commit", "build_request", "run_exec", "write_all_atomically",
           "EnclaveError", "start_dev_enclave", "working_tree_changes", "check_recipients",
           "preflight_kms", "DEV_HINT"]

#: What to do when the dev KMS is missing (dev runs).
DEV_HINT = ("start it with 'sops-enclave dev up', then eval \"$(sops-enclave dev env)\" "
            "in this shell")


class EnclaveError(SopsError):
    """The enclave refused the request or could not be reached."""


@dataclass
class ExecOptions:
    repo: str
    commit: str = "HEAD"
    manifest_path: str = ".sops-enclave.yaml"
    targets: Sequence[str] = ()
    enclave: str = "dev"
    repository_name: str = ""
    #: Dev enclave only: the enclave policy file it starts with (None: an unrestricted run).
    enclave_policy: str | None = None


def _git(repo: str, *args: str) -> bytes:
    p = subprocess.run(["git", "-C", repo, *args], capture_output=True)
    if p.returncode != 0:
        raise SopsError(f"git {' '.join(args)}: {p.stderr.decode(errors='replace').strip()}")
    return p.stdout


def _resolve_commit(repo: str, rev: str) -> str:
    """The commit id of ``rev`` in ``repo``, or a one-line error saying what is missing (never
    git's own text)."""
    if not os.path.isdir(repo):
        raise SopsError(f"{repo}: no such directory (--repo DIR names the git repository of "
                        "the manifest)")
    if rev.startswith("-"):
        raise SopsError(f"--commit {rev!r}: not a commit")
    probe = subprocess.run(["git", "-C", repo, "rev-parse", "--git-dir"], capture_output=True)
    if probe.returncode != 0:
        raise SopsError(f"{repo} is not in a git repository: exec packs a commit of the "
                        "repository that holds the manifest and the inputs (git init, commit "
                        "them, or pass --repo DIR)")
    p = subprocess.run(["git", "-C", repo, "rev-parse", "--verify", "--quiet",
                        f"{rev}^{{commit}}"], capture_output=True)
    if p.returncode == 0:
        return p.stdout.decode().strip()
    head = subprocess.run(["git", "-C", repo, "rev-parse", "--verify", "--quiet", "HEAD"],
                          capture_output=True)
    if head.returncode != 0 and rev == "HEAD":
        raise SopsError(f"{repo} has no commit yet: exec packs a commit, not the working tree; "
                        "commit the manifest and the inputs first")
    raise SopsError(f"commit {rev!r} not found in {repo} (--commit takes a commit id, branch "
                    "or tag of that repository)")


def working_tree_changes(repo: str, commit: str, paths: Sequence[str]) -> list[tuple[str, str]]:
    """``[(path, how)]`` for the paths whose working-tree (or index) state differs from
    ``commit`` when it is the checked-out HEAD: modified, deleted, added or untracked. Empty
    for another commit, a bare repository or no differences."""
    head = subprocess.run(["git", "-C", repo, "rev-parse", "--verify", "--quiet", "HEAD"],
                          capture_output=True)
    inside = subprocess.run(["git", "-C", repo, "rev-parse", "--is-inside-work-tree"],
                            capture_output=True)
    if head.stdout.decode().strip() != commit or inside.stdout.strip() != b"true" or not paths:
        return []
    specs = [f":(top,literal){p}" for p in sorted(set(paths))]
    out = _git(repo, "status", "--porcelain=v1", "-z", "--untracked-files=all",
               "--ignored=no", "--", *specs)
    changes = []
    entries = iter(out.split(b"\0"))
    for entry in entries:
        if len(entry) < 4:
            continue
        xy, path = entry[:2].decode(), entry[3:].decode(errors="replace")
        if xy[0] in "RC":
            next(entries, None)  # a staged rename or copy: its source path follows
        how = ("untracked" if xy == "??" else "deleted" if "D" in xy else
               "added" if "A" in xy else "renamed" if xy[0] == "R" else "modified")
        changes.append((path, how))
    return changes


def check_recipients(manifest_path: str, plans) -> None:
    """Parse every age recipient of the plan as the enclave will (a malformed one is refused
    here, in --dry-run, not inside the enclave)."""
    from sops_enclave.keys.age import parse_recipient
    from sops_enclave.pack.manifest import ManifestError

    for plan in plans:
        for r in plan.encrypt.age:
            try:
                parse_recipient(r)
            except SopsError as e:
                raise ManifestError(f"{manifest_path}: target {plan.target}: age recipient "
                                    f"{r!r} is not valid: {e.message}") from None


def _inputs_use_kms(opts: ExecOptions, commit: str, plans) -> bool:
    """Does any input have a KMS key, as far as the host can tell from the commit?"""
    from sops_enclave.formats import format_for_path, get_store
    from sops_enclave.metadata import KMSEntry, parse_metadata

    for path in sorted({i.file for p in plans for i in p.inputs}):
        try:
            blob = _git(opts.repo, "cat-file", "blob", f"{commit}:{path}")
            _, raw = get_store(format_for_path(path)).load_encrypted(blob)
            groups = parse_metadata(raw).key_groups
        except Exception:  # noqa: BLE001 - the enclave reports unreadable inputs itself
            continue
        if any(isinstance(e, KMSEntry) for g in groups for e in g):
            return True
    return False


def preflight_kms(opts: ExecOptions, commit: str, plans, env: Mapping[str, str]) -> None:
    """Before the enclave starts: refuse, in one line with what to do, a run whose KMS calls
    cannot work (no credentials; in dev mode no dev KMS configured, or not listening)."""
    dev = opts.enclave == "dev"
    if not (any(p.encrypt.kms for p in plans) or _inputs_use_kms(opts, commit, plans)):
        return
    if dev:
        url = env.get("AWS_ENDPOINT_URL_KMS") or env.get("AWS_ENDPOINT_URL")
        if not url:
            raise EnclaveError("the dev enclave needs the dev KMS, and AWS_ENDPOINT_URL_KMS is "
                               f"not set: {DEV_HINT}")
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise EnclaveError(f"AWS_ENDPOINT_URL_KMS={url!r} is not a URL: {DEV_HINT}") from None
        try:
            with socket.create_connection((host, port), timeout=5):
                pass
        except OSError as e:
            raise EnclaveError(f"the dev KMS at {url} is not reachable "
                               f"({e.strerror or type(e).__name__}): {DEV_HINT}") from None
    if not _credentials(env):
        where = DEV_HINT if dev else ("give the host an instance role (or AWS_ACCESS_KEY_ID "
                                      "and AWS_SECRET_ACCESS_KEY)")
        raise EnclaveError(f"no AWS credentials for the enclave's KMS calls: {where}")


def _explain(error: str, dev: bool, env: Mapping[str, str]) -> str:
    """The enclave's error, with what to do when it is a KMS connection or credential one."""
    url = env.get("AWS_ENDPOINT_URL_KMS") or env.get("AWS_ENDPOINT_URL") or "the KMS endpoint"
    if any(k in error for k in ("EndpointConnectionError", "ConnectTimeoutError",
                                "ConnectionClosedError", "ReadTimeoutError")):
        return (f"{error}; {url} did not answer: {DEV_HINT}" if dev else
                f"{error}; KMS did not answer: is the vsock-proxy to KMS running?")
    if "NoCredentialsError" in error:
        return f"{error}; no AWS credentials: {DEV_HINT}" if dev else error
    return error


def plan_at_commit(opts: ExecOptions, check_commit: Callable[[str], None] | None = None):
    """(commit id, manifest, plans) read from the commit, not the working tree.
    ``check_commit(commit id)`` runs once the commit is known, before its manifest is read."""
    from sops_enclave.pack.manifest import load_manifest

    commit = _resolve_commit(opts.repo, opts.commit)
    if check_commit is not None:
        check_commit(commit)
    try:
        data = _git(opts.repo, "show", f"{commit}:{opts.manifest_path}")
    except SopsError:
        raise SopsError(f"{opts.manifest_path}: not found in commit {commit[:12]}") from None
    manifest = load_manifest(data, opts.manifest_path)
    targets = list(opts.targets) or None
    found = _existing_paths(opts.repo, commit,
                            {i.file for p in manifest.plan(targets) for i in p.inputs})

    def exists(p: str) -> bool:
        if p in found:
            return found[p]
        r = subprocess.run(["git", "-C", opts.repo, "cat-file", "-e", f"{commit}:{p}"],
                           capture_output=True)
        return r.returncode == 0

    plans = manifest.plan(targets, exists=exists)
    return commit, manifest, plans


def _existing_paths(repo: str, commit: str, paths: set[str]) -> dict[str, bool]:
    """``{path: is there an object at commit:path}`` for ``paths``, from one ``git cat-file
    --batch-check`` (as ``git cat-file -e`` per path would say, without a process each).
    Paths it cannot ask about in one line are left out (the caller asks git for them)."""
    asked = sorted(p for p in paths if p and not any(c in p for c in "\0\n\r"))
    if not asked:
        return {}
    p = subprocess.run(["git", "-C", repo, "cat-file", "--batch-check"], capture_output=True,
                       input="".join(f"{commit}:{q}\n" for q in asked).encode())
    lines = p.stdout.decode(errors="replace").splitlines()
    if p.returncode != 0 or len(lines) != len(asked):
        return {}
    return {q: not line.endswith(" missing") for q, line in zip(asked, lines)}


def _split_inputs(plans) -> tuple[list[str], list[str]]:
    required = sorted({i.file for p in plans for i in p.inputs if not i.optional})
    optional = sorted({i.file for p in plans for i in p.inputs if i.optional} - set(required))
    return required, optional


def build_request(opts: ExecOptions, commit: str, plans, env: Mapping[str, str], *,
                  dev: bool) -> dict:
    """The pack request. Optional inputs are sent with the trees that prove whether they
    exist, so a host cannot silently leave one out."""
    from sops_enclave.pack import gitobjects

    full = plan_all_inputs(opts, commit)
    required, optional = _split_inputs(full)
    bundle = gitobjects.collect(opts.repo, commit, [opts.manifest_path] + required,
                                optional=optional)
    req: dict = {"type": "pack", "version": PROTOCOL_VERSION, "commit": commit,
                 "git": bundle.to_wire(), "manifest_path": opts.manifest_path,
                 "targets": list(opts.targets), "nonce": os.urandom(32),
                 "repository": opts.repository_name or _origin(opts.repo)}
    req["aws"] = _credentials(env)
    if any(p.encrypt.hc_vault for p in plans):
        req["hc_vault"] = _vault_credentials(env)
    if dev:
        if env.get("AWS_ENDPOINT_URL_KMS") or env.get("AWS_ENDPOINT_URL"):
            req["kms_endpoint"] = env.get("AWS_ENDPOINT_URL_KMS") or env.get("AWS_ENDPOINT_URL")
        ids = _dev_age_identities(env)
        if ids:
            req["dev_age_identities"] = ids
    return req


def plan_all_inputs(opts: ExecOptions, commit: str):
    """The plan before optional inputs are dropped (what the enclave will check)."""
    from sops_enclave.pack.manifest import load_manifest

    data = _git(opts.repo, "show", f"{commit}:{opts.manifest_path}")
    return load_manifest(data, opts.manifest_path).plan(list(opts.targets) or None,
                                                        exists=lambda p: True)


def _origin(repo: str) -> str:
    p = subprocess.run(["git", "-C", repo, "remote", "get-url", "origin"], capture_output=True)
    return p.stdout.decode().strip() if p.returncode == 0 else os.path.basename(os.path.abspath(repo))


def _vault_credentials(env: Mapping[str, str]) -> dict:
    """The Vault token for outputs encrypted to a transit key, found as sops finds it
    (``VAULT_TOKEN``, else ``~/.vault-token``), and ``VAULT_NAMESPACE``. It only lets the
    enclave call Vault: the server and key come from the enclave policy."""
    from sops_enclave.keys.hcvault import vault_token

    token = vault_token(env)
    if not token:
        raise EnclaveError("an output is encrypted to a Vault transit key and no Vault token "
                           "is set: export VAULT_TOKEN (or write ~/.vault-token)")
    out = {"token": token}
    if env.get("VAULT_NAMESPACE"):
        out["namespace"] = env["VAULT_NAMESPACE"]
    return out


def _credentials(env: Mapping[str, str]) -> dict:
    """Credentials for the enclave's KMS calls: the session credentials boto3 resolves on the
    host (an instance role's short-lived ones on Nitro), or the AWS_* variables."""
    if env.get("AWS_ACCESS_KEY_ID"):
        out = {"access_key_id": env["AWS_ACCESS_KEY_ID"],
               "secret_access_key": env.get("AWS_SECRET_ACCESS_KEY", "")}
        if env.get("AWS_SESSION_TOKEN"):
            out["session_token"] = env["AWS_SESSION_TOKEN"]
        return out
    try:
        import boto3

        creds = boto3.Session().get_credentials()
    except Exception:
        creds = None
    if creds is None:
        return {}
    frozen = creds.get_frozen_credentials()
    out = {"access_key_id": frozen.access_key, "secret_access_key": frozen.secret_key}
    if frozen.token:
        out["session_token"] = frozen.token
    return out


def _dev_age_identities(env: Mapping[str, str]) -> str:
    """The host's age identities for a dev run, found exactly as sops finds them (one key
    discovery for the whole tool; ``SOPS_AGE_KEY_CMD`` included)."""
    from sops_enclave.keys.discovery import x25519_identity_lines

    try:
        return x25519_identity_lines(env)
    except SopsError:
        return ""


def start_dev_enclave(workdir: str, env: Mapping[str, str], enclave_policy: str | None = None
                      ) -> tuple[subprocess.Popen, str]:
    """The dev enclave: the same enclave program as a local process, with the software NSM.

    Its stderr goes to ``enclave.log`` in ``workdir`` (never the user's terminal)."""
    path = os.path.join(workdir, "enclave.sock")
    if len(path.encode()) + len(".starting") > 100:  # AF_UNIX paths are limited to 108 bytes
        sockdir = tempfile.mkdtemp(prefix="se-", dir="/tmp")
        path = os.path.join(sockdir, "enclave.sock")
    child_env = {k: v for k, v in env.items()
                 if not k.startswith(("AWS_", "SOPS_AGE", "GNUPG"))}
    # cwd is the private work dir, so the enclave never imports code from the caller's cwd.
    log = open(os.path.join(workdir, "enclave.log"), "wb")
    cmd = [sys.executable, "-m", "sops_enclave.devtools.dev_enclave", "--unix", path, "--dev"]
    if enclave_policy:
        cmd += ["--enclave-policy", os.path.abspath(enclave_policy)]
    proc = subprocess.Popen(cmd, env=child_env, stdin=subprocess.DEVNULL, cwd=workdir,
                            stdout=log, stderr=log)
    log.close()
    deadline = time.time() + 30
    while not os.path.exists(path):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise EnclaveError("the dev enclave did not start: " + _last_line(workdir))
        time.sleep(0.02)
    return proc, path


def _last_line(workdir: str) -> str:
    try:
        with open(os.path.join(workdir, "enclave.log"), "rb") as f:
            lines = f.read().decode(errors="replace").strip().splitlines()
        return lines[-1][:300] if lines else "no message"
    except OSError:
        return "no message"


def _connect(spec: str, dev_socket: str | None) -> socket.socket:
    if spec == "dev":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(dev_socket)
        return s
    parts = spec.split(":")
    cid = int(parts[1]) if len(parts) > 1 and parts[1] else 16
    port = int(parts[2]) if len(parts) > 2 and parts[2] else 5000
    try:
        s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)  # type: ignore[attr-defined]
        s.connect((cid, port))
    except (AttributeError, OSError) as e:
        raise EnclaveError(f"cannot reach the Nitro enclave at vsock {cid}:{port}: {e}") from None
    return s


def _progress(msg: str) -> None:
    if sys.stderr.isatty():
        print(f"[sops-enclave] {msg}", file=sys.stderr, flush=True)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def run_exec(opts: ExecOptions, env: Mapping[str, str],
             check_commit: Callable[[str], None] | None = None) -> dict:
    """Run the pack in the enclave; writes the outputs and receipts. ``check_commit(commit)``
    is called once the commit is known, before its manifest is read, the other host-side
    checks (recipients, KMS) and the enclave start. The dev enclave starts right after it, so
    that its start-up overlaps them and the building of the request (it is stopped if one of
    them fails; it gets nothing before the request frame).

    Returns ``{"commit", "outputs": [{"target", "path", "receipt", "sha256"}],
    "kms_decrypt_calls"}`` (no content)."""
    dev = opts.enclave == "dev"
    if not dev and not opts.enclave.startswith("nitro"):
        raise SopsError(f"--enclave must be dev or nitro[:CID[:PORT]], not {opts.enclave!r}")
    sock_path = None
    with tempfile.TemporaryDirectory(prefix="sops-enclave-") as work:
        proc = None
        with ThreadPoolExecutor(1) as pool:
            starting: list[Future] = []

            def checked(commit: str) -> None:
                if check_commit is not None:
                    check_commit(commit)
                if dev:  # it starts up (interpreter, imports, measurement) meanwhile
                    starting.append(pool.submit(start_dev_enclave, work, env,
                                                opts.enclave_policy))

            try:
                commit, _, plans = plan_at_commit(opts, checked)
                check_recipients(opts.manifest_path, plans)
                preflight_kms(opts, commit, plans, env)
                _progress(f"{len(plans)} output(s) at {commit[:12]}; collecting git objects")
                req = build_request(opts, commit, plans, env, dev=dev)
            except BaseException:
                for f in starting:
                    if f.exception() is None:
                        _stop(f.result()[0])
                raise
            if starting:
                proc, sock_path = starting[0].result()
        _progress(f"sending {len(req['git'].get('objects', req['git']))} git objects to the "
                  f"{'dev ' if dev else ''}enclave")
        try:
            with _connect(opts.enclave, sock_path) as s:
                send_frame(s, req)
                resp = recv_frame(s)
        except (FrameError, OSError) as e:
            code = proc.poll() if proc is not None else None
            who = "the dev enclave" if dev else "the enclave"
            state = f" (it exited with status {code})" if code is not None else ""
            raise EnclaveError(f"{who} went away before answering{state}: "
                               f"{getattr(e, 'message', None) or e}") from None
        finally:
            if proc is not None:
                _stop(proc)
    if not resp.get("ok"):
        raise EnclaveError("the enclave refused the run: "
                           + _explain(str(resp.get("error")), dev, env),
                           exit_code=int(resp.get("exit_code") or 1))
    from sops_enclave.receipt.builder import receipt_path

    items = []
    for out in resp["outputs"]:
        items.append((out["path"], out["content"]))
        items.append((receipt_path(out["path"]), out["receipt"]))
    write_all_atomically(items, root=opts.repo)
    import hashlib

    _progress(f"wrote {len(resp['outputs'])} output(s) and their receipts")
    return {"commit": commit, "kms_decrypt_calls": resp.get("kms_decrypt_calls"),
            "outputs": [{"target": o["target"], "path": o["path"],
                         "receipt": receipt_path(o["path"]),
                         "sha256": hashlib.sha256(o["content"]).hexdigest()}
                        for o in resp["outputs"]]}


def _safe_parts(rel: str) -> list[str]:
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in rel:
        raise CouldNotWriteOutputFile(f"{rel}: not a normalised path inside the repository")
    return parts


def _open_dir_nofollow(root_fd: int, parts: Sequence[str], rel: str) -> int:
    """An fd of the directory ``parts`` under ``root_fd``, created as needed, refusing any
    symlink on the way (a committed ``deploy -> /outside`` link must not send files out)."""
    fd = os.dup(root_fd)
    try:
        for name in parts:
            try:
                os.mkdir(name, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            try:
                nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise CouldNotWriteOutputFile(
                        f"{rel}: {name} is a symbolic link or not a directory; outputs are "
                        "written only inside the repository, never through a link") from None
                raise
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def write_all_atomically(items: Sequence[tuple[str, bytes]], *, root: str) -> None:
    """Write every file or none: all temporaries first, then renames, rolled back on failure.

    Paths are relative to ``root`` (the repository) and resolved without following any
    symbolic link (directories or the file itself). An existing file keeps its mode; new
    files are 0644."""
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise CouldNotWriteOutputFile(f"could not write outputs: {root}: {e.strerror}") from None
    # (dir fd, name, temporary name, path shown to the user)
    temps: list[tuple[int, str, str, str]] = []
    fds: list[int] = [root_fd]
    try:
        try:
            for rel, data in items:
                parts = _safe_parts(rel)
                dfd = _open_dir_nofollow(root_fd, parts[:-1], rel)
                fds.append(dfd)
                name = parts[-1]
                mode = 0o644
                try:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except FileNotFoundError:
                    st = None
                if st is not None:
                    if not stat.S_ISREG(st.st_mode):
                        raise CouldNotWriteOutputFile(
                            f"{rel}: exists and is not a regular file (a symbolic link?); "
                            "not replaced")
                    mode = stat.S_IMODE(st.st_mode)
                tmp = f".sops-enclave-{os.urandom(6).hex()}.tmp"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                             dir_fd=dfd)
                temps.append((dfd, name, tmp, rel))
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fchmod(f.fileno(), mode)
                    os.fsync(f.fileno())
        except OSError as e:
            for dfd, _, tmp, _ in temps:
                _unlink_at(tmp, dfd)
            raise CouldNotWriteOutputFile(f"could not write outputs: {e}") from None
        except CouldNotWriteOutputFile:
            for dfd, _, tmp, _ in temps:
                _unlink_at(tmp, dfd)
            raise
        done: list[tuple[int, str, str | None]] = []
        try:
            for dfd, name, tmp, _ in temps:
                backup = None
                try:
                    os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    backup = tmp + ".bak"
                    os.link(name, backup, src_dir_fd=dfd, dst_dir_fd=dfd,
                            follow_symlinks=False)
                except FileNotFoundError:
                    backup = None
                os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                done.append((dfd, name, backup))
        except OSError as e:
            for dfd, name, backup in reversed(done):
                if backup:
                    os.replace(backup, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                else:
                    _unlink_at(name, dfd)
            for dfd, _, tmp, _ in temps:
                _unlink_at(tmp, dfd)
                _unlink_at(tmp + ".bak", dfd)
            raise CouldNotWriteOutputFile(
                f"could not write outputs, nothing was changed: {e}") from None
        for dfd, _, backup in done:
            if backup:
                _unlink_at(backup, dfd)
    finally:
        for fd in fds:
            os.close(fd)


def _unlink_at(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def _unlink(p: str) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass
