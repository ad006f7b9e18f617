"""The git objects that tie a commit to the files a pack reads (DESIGN section 6, step 1).

The host gathers, with ``git``, exactly the objects that connect a commit to some paths: the
commit object, every tree on the way to each path, and each path's blob. The enclave, with no
``git`` and no trust in the host, recomputes every object id from the bytes it was given and
walks from the commit to each path, so the commit id it records is one it checked::

    bundle = collect("/src/repo", "HEAD", ["secrets/a.enc.yaml"])         # host
    wire = bundle.to_wire()                                               # -> CBOR frame
    bundle = GitBundle.from_wire(wire)                                    # enclave
    blobs = verify_paths(bundle.objects, bundle.commit, ["secrets/a.enc.yaml"])
    blob_id, content = blobs["secrets/a.enc.yaml"]

Optional paths: pass them as ``optional=`` to both :func:`collect` and :func:`verify_paths`.
For one that is not in the commit, the host sends the trees down to where the path stops, and
the enclave checks that absence from those trees, so a host cannot hide an input by leaving
its blob out. ``collect`` lists such paths in ``GitBundle.absent``; ``verify_paths`` leaves
them out of its result.

Only SHA-1 repositories are supported (ids are 40 hex digits); a repository with
``extensions.objectformat=sha256`` is refused with a clear error. Ids are recomputed with plain
SHA-1, not git's collision-detecting SHA-1 (SHA-1DC).

Paths are repository-relative, ``/``-separated and normalised (no empty, ``.`` or ``..``
components). Symlinks, submodules and directories are refused where a file is expected, and
symlinks and submodules are refused on the way to it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from sops_enclave.errors import SopsError

__all__ = ["GitObjectError", "GitBundle", "collect", "verify_paths", "commit_info", "object_id",
           "OBJECT_FORMAT", "MAX_BUNDLE_OBJECTS", "MAX_BUNDLE_BYTES"]

#: The only object format supported.
OBJECT_FORMAT = "sha1"
#: Objects in one bundle (commit + trees + blobs).
MAX_BUNDLE_OBJECTS = 4096
#: Total size of the objects' contents in one bundle.
MAX_BUNDLE_BYTES = 64 << 20
_MAX_PATH_DEPTH = 64
_TIMEOUT = 120

_TYPES = ("commit", "tree", "blob", "tag")
_SHA1_HEX = re.compile(r"[0-9a-f]{40}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# Tree entry modes: directory, regular files (100664 is an old git's, still read as a file),
# symlink, submodule. 040000 is a zero-padded directory mode some tools write.
_DIR_MODES = (b"40000", b"040000")
_FILE_MODES = (b"100644", b"100755", b"100664")
_LINK_MODE = b"120000"
_GITLINK_MODE = b"160000"
_SHA256_MSG = ("SHA-256 repositories (extensions.objectformat=sha256) are not supported: "
               "sops-enclave verifies SHA-1 object ids only")


class GitObjectError(SopsError):
    """Git objects are missing, malformed, over a limit, or do not hash to their ids (exit 1)."""


def object_id(obj_type: str, content: bytes) -> str:
    """The SHA-1 object id git gives ``content`` stored as ``obj_type``."""
    h = hashlib.sha1(f"{obj_type} {len(content)}\0".encode("ascii"))  # noqa: S324 - git ids
    h.update(content)
    return h.hexdigest()


# ----------------------------------------------------------------------------- parsing (pure)

def _check_oid(oid: Any, what: str) -> str:
    if isinstance(oid, str) and _SHA1_HEX.fullmatch(oid):
        return oid
    if isinstance(oid, str) and _SHA256_HEX.fullmatch(oid):
        raise GitObjectError(f"{what} {oid[:16]}... is a SHA-256 id; {_SHA256_MSG}")
    shown = repr(oid) if len(repr(oid)) <= 60 else repr(oid)[:57] + "..."
    raise GitObjectError(f"{what} {shown} is not a git object id (40 lowercase hex digits)")


def commit_info(content: bytes) -> dict[str, Any]:
    """The header of a commit object: ``tree`` (id), ``parents`` (ids), ``author`` and
    ``committer`` (the text after the keyword: ``Name <email> 1700000000 +0000``).

    Names are decoded as UTF-8 with replacement characters for anything else. Raises
    :class:`GitObjectError` when the commit is malformed.
    """
    header = content.split(b"\n\n", 1)[0]
    lines = header.split(b"\n")
    fields: list[tuple[bytes, bytes]] = []
    for line in lines:
        if line.startswith(b" ") and fields:
            continue  # continuation of a multi-line header (gpgsig, mergetag)
        key, sep, value = line.partition(b" ")
        if not sep:
            raise GitObjectError(f"malformed commit: header line {line[:40]!r}")
        fields.append((key, value))
    if not fields or fields[0][0] != b"tree":
        raise GitObjectError("malformed commit: it does not start with a tree line")
    tree = _check_oid(fields[0][1].decode("ascii", "replace"), "commit tree")
    parents = []
    k = 1
    while k < len(fields) and fields[k][0] == b"parent":
        parents.append(_check_oid(fields[k][1].decode("ascii", "replace"), "commit parent"))
        k += 1
    people: dict[str, str] = {}
    for key, value in fields[k:]:
        if key in (b"tree", b"parent"):
            raise GitObjectError(f"malformed commit: misplaced {key.decode()} line")
        if key in (b"author", b"committer"):
            name = key.decode()
            if name in people:
                raise GitObjectError(f"malformed commit: two {name} lines")
            people[name] = value.decode("utf-8", "replace")
    for name in ("author", "committer"):
        if name not in people:
            raise GitObjectError(f"malformed commit: no {name} line")
    return {"tree": tree, "parents": parents, "author": people["author"],
            "committer": people["committer"]}


def _parse_tree(content: bytes, oid: str) -> dict[bytes, tuple[bytes, str]]:
    """``name -> (mode, id)`` of a tree object's binary entries."""
    entries: dict[bytes, tuple[bytes, str]] = {}
    pos, n = 0, len(content)
    while pos < n:
        sp = content.find(b" ", pos)
        nul = content.find(b"\0", sp + 1) if sp >= 0 else -1
        if sp < 0 or nul < 0 or nul + 21 > n:
            raise GitObjectError(f"tree {oid[:12]} is malformed at byte {pos}")
        mode, name = content[pos:sp], content[sp + 1:nul]
        if mode not in _DIR_MODES + _FILE_MODES + (_LINK_MODE, _GITLINK_MODE):
            raise GitObjectError(f"tree {oid[:12]}: entry {name[:60]!r} has unknown mode "
                                 f"{mode[:10]!r}")
        if not name or b"/" in name or name in (b".", b".."):
            raise GitObjectError(f"tree {oid[:12]}: invalid entry name {name[:60]!r}")
        if name in entries:
            raise GitObjectError(f"tree {oid[:12]}: duplicate entry {name[:60]!r}")
        entries[name] = (mode, content[nul + 1:nul + 21].hex())
        pos = nul + 21
    return entries


def _split_path(path: Any) -> list[bytes]:
    if not isinstance(path, str) or not path:
        raise GitObjectError(f"path {path!r} is not a non-empty string")
    parts = path.split("/")
    if (path.startswith("/") or "\0" in path
            or any(p in ("", ".", "..") for p in parts)):
        raise GitObjectError(f"path {path!r} is not a normalised repository-relative path")
    if len(parts) > _MAX_PATH_DEPTH:
        raise GitObjectError(f"path {path!r} is deeper than {_MAX_PATH_DEPTH} directories")
    try:
        return [p.encode("utf-8") for p in parts]
    except UnicodeEncodeError:
        raise GitObjectError(f"path {path!r} is not valid UTF-8") from None


# get(oid, expected type, description) -> content
_Getter = Callable[[str, str, str], bytes]


def _walk(get: _Getter, root_tree: str, path: str, *, optional: bool) -> str | None:
    """The blob id at ``path`` under ``root_tree``; None when ``optional`` and absent.

    Trees are read through ``get``, which refuses an object that is missing or of the wrong
    type. Absence counts only when a name is missing from a tree that exists.
    """
    parts = _split_path(path)
    tree = root_tree
    for depth, name in enumerate(parts):
        here = "/".join(p.decode() for p in parts[:depth]) or "the root directory"
        entries = _parse_tree(get(tree, "tree", f"{path}: the tree of {here}"), tree)
        entry = entries.get(name)
        sofar = "/".join(p.decode() for p in parts[:depth + 1])
        if entry is None:
            if optional:
                return None
            if sofar == path:
                raise GitObjectError(f"{path}: not found in the commit")
            raise GitObjectError(f"{path}: not found ({sofar!r} is not in the commit)")
        mode, oid = entry
        last = depth == len(parts) - 1
        if mode == _LINK_MODE:
            raise GitObjectError(f"{path}: {sofar!r} is a symlink; only regular files are read")
        if mode == _GITLINK_MODE:
            raise GitObjectError(f"{path}: {sofar!r} is a submodule; only regular files of "
                                 "this repository are read")
        if last:
            if mode in _DIR_MODES:
                raise GitObjectError(f"{path}: is a directory, not a file")
            return oid
        if mode not in _DIR_MODES:
            raise GitObjectError(f"{path}: {sofar!r} is a file, not a directory")
        tree = oid
    raise AssertionError("unreachable")  # pragma: no cover


# ----------------------------------------------------------------------------- enclave side

def _checked_objects(objects: Any, max_objects: int, max_bytes: int
                     ) -> dict[str, tuple[str, bytes]]:
    """Every object, its shape checked and its id recomputed; limits first."""
    if not isinstance(objects, Mapping):
        raise GitObjectError(f"git objects: expected a map of id -> (type, content), got "
                             f"{type(objects).__name__}")
    if len(objects) > max_objects:
        raise GitObjectError(f"git objects: {len(objects)} objects, more than the limit of "
                             f"{max_objects}")
    total = 0
    for oid, value in objects.items():
        _check_oid(oid, "git object")
        if (not isinstance(value, (tuple, list)) or len(value) != 2
                or not isinstance(value[0], str) or not isinstance(value[1], bytes)):
            raise GitObjectError(f"git object {oid[:12]}: expected (type, bytes)")
        total += len(value[1])
        if total > max_bytes:
            raise GitObjectError(f"git objects: more than the limit of {max_bytes} bytes")
    out: dict[str, tuple[str, bytes]] = {}
    for oid, (obj_type, content) in objects.items():
        if obj_type not in _TYPES:
            raise GitObjectError(f"git object {oid[:12]}: unknown type {obj_type[:20]!r}")
        actual = object_id(obj_type, content)
        if not hmac.compare_digest(actual, oid):
            raise GitObjectError(f"git object {oid[:12]} ({obj_type}): its content hashes to "
                                 f"{actual[:12]}; the object was altered or swapped")
        out[oid] = (obj_type, content)
    return out


def verify_paths(bundle_objects: Mapping[str, tuple[str, bytes]], commit_id: str,
                 paths: Sequence[str], *, optional: Iterable[str] = (),
                 max_objects: int = MAX_BUNDLE_OBJECTS, max_bytes: int = MAX_BUNDLE_BYTES
                 ) -> dict[str, tuple[str, bytes]]:
    """``path -> (blob id, content)`` for each path, proven to be in commit ``commit_id``.

    Every object id in ``bundle_objects`` is recomputed first (all of them, used or not); then
    the commit's tree is walked to each path. Raises :class:`GitObjectError` for a hash
    mismatch, a missing object, an object of the wrong type, a path that is not in the commit
    or is not a regular file, a malformed object, or a bundle over the limits. Paths in
    ``optional`` that the trees show to be absent are left out of the result (a path in both
    lists is required).
    """
    _check_oid(commit_id, "commit")
    if isinstance(paths, str) or isinstance(optional, str):
        raise GitObjectError("paths must be a list of paths, not a string")
    objects = _checked_objects(bundle_objects, max_objects, max_bytes)

    def get(oid: str, want: str, what: str) -> bytes:
        found = objects.get(oid)
        if found is None:
            raise GitObjectError(f"{what} is missing from the git objects ({want} {oid[:12]})")
        if found[0] != want:
            raise GitObjectError(f"{what}: object {oid[:12]} is a {found[0]}, not a {want}")
        return found[1]

    tree = commit_info(get(commit_id, "commit", f"commit {commit_id[:12]}"))["tree"]
    required = list(paths)
    want_optional = [p for p in dict.fromkeys(optional) if p not in set(required)]
    out: dict[str, tuple[str, bytes]] = {}
    for path, opt in [(p, False) for p in required] + [(p, True) for p in want_optional]:
        blob = _walk(get, tree, path, optional=opt)
        if blob is not None:
            out[path] = (blob, get(blob, "blob", f"{path}: its blob"))
    return out


# ----------------------------------------------------------------------------- the bundle

@dataclass(frozen=True)
class GitBundle:
    """A commit id and the objects that connect it to some paths.

    ``absent`` (host side only, not sent) lists the optional paths that are not in the commit.
    """

    commit: str
    objects: dict[str, tuple[str, bytes]]
    absent: frozenset[str] = field(default=frozenset())

    def verify(self, paths: Sequence[str], *, optional: Iterable[str] = ()
               ) -> dict[str, tuple[str, bytes]]:
        """:func:`verify_paths` on this bundle."""
        return verify_paths(self.objects, self.commit, paths, optional=optional)

    def to_wire(self) -> dict[str, Any]:
        """A CBOR-friendly form (maps, str and bytes only)::

            {"object_format": "sha1", "commit": HEX,
             "objects": {HEX: {"type": "tree", "content": b"..."}, ...}}
        """
        return {"object_format": OBJECT_FORMAT, "commit": self.commit,
                "objects": {oid: {"type": t, "content": bytes(c)}
                            for oid, (t, c) in self.objects.items()}}

    @classmethod
    def from_wire(cls, d: Any, *, max_objects: int = MAX_BUNDLE_OBJECTS) -> GitBundle:
        """Read :meth:`to_wire`'s form, checking its shape (not the hashes: that is
        :func:`verify_paths`' job)."""
        if not isinstance(d, Mapping) or set(d) != {"object_format", "commit", "objects"}:
            raise GitObjectError("git bundle: expected a map with object_format, commit and "
                                 "objects")
        if d["object_format"] != OBJECT_FORMAT:
            fmt = d["object_format"]
            raise GitObjectError(f"git bundle: object format {fmt!r}"
                                 + (f"; {_SHA256_MSG}" if fmt == "sha256" else
                                    " is not supported"))
        commit = _check_oid(d["commit"], "git bundle: commit")
        wire = d["objects"]
        if not isinstance(wire, Mapping):
            raise GitObjectError("git bundle: objects must be a map")
        if len(wire) > max_objects:
            raise GitObjectError(f"git bundle: {len(wire)} objects, more than the limit of "
                                 f"{max_objects}")
        objects: dict[str, tuple[str, bytes]] = {}
        for oid, v in wire.items():
            _check_oid(oid, "git bundle: object")
            if (not isinstance(v, Mapping) or set(v) != {"type", "content"}
                    or not isinstance(v["type"], str) or not isinstance(v["content"], bytes)):
                raise GitObjectError(f"git bundle: object {oid[:12]} must be "
                                     "{type: str, content: bytes}")
            objects[oid] = (v["type"], v["content"])
        return cls(commit, objects)


# ----------------------------------------------------------------------------- host side

def _git_env() -> dict[str, str]:
    # GIT_DIR, GIT_OBJECT_DIRECTORY and friends must not redirect us to other objects, and
    # `git replace` refs must not substitute objects (the enclave would refuse them anyway).
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_NO_REPLACE_OBJECTS="1", GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    return env


def _run_git(git: str, repo: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run([git, "-C", repo, *args], env=_git_env(), capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=_TIMEOUT, check=False)
    except FileNotFoundError:
        raise GitObjectError(f"cannot run {git!r}") from None
    except subprocess.TimeoutExpired:
        raise GitObjectError(f"git {args[0]} timed out after {_TIMEOUT}s") from None


def _last_line(stderr: bytes) -> str:
    """git's own complaint: its first ``fatal:``/``error:`` line (hints follow it), else the
    last line."""
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    for line in lines:
        if line.startswith(("fatal:", "error:")):
            return line
    return lines[-1] if lines else "no message"


class _CatFile:
    """One ``git cat-file --batch`` process, asked for one object at a time."""

    def __init__(self, git: str, repo: str) -> None:
        self._err = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen([git, "-C", repo, "cat-file", "--batch"],
                                         env=_git_env(), stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self._err)
        except OSError as e:
            self._err.close()
            raise GitObjectError(f"cannot run {git!r}: {e}") from None
        self._timer = threading.Timer(_TIMEOUT, self.proc.kill)
        self._timer.daemon = True
        self._timer.start()

    def _stderr(self) -> str:
        self._err.seek(0)
        return _last_line(self._err.read(4096))

    def read(self, oid: str, budget: int, limit: int) -> tuple[str, bytes]:
        """(type, content) of ``oid``; refuses content larger than ``budget`` unread."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(oid.encode("ascii") + b"\n")
            self.proc.stdin.flush()
            header = self.proc.stdout.readline()
        except OSError:
            header = b""
        if not header:
            raise GitObjectError(f"git cat-file stopped: {self._stderr()}")
        parts = header.split()
        if len(parts) == 2 and parts[1] == b"missing":
            raise GitObjectError(f"object {oid[:12]} is missing from the repository")
        if len(parts) != 3 or parts[0] != oid.encode("ascii") or not parts[2].isdigit():
            raise GitObjectError(f"git cat-file: unexpected answer {header[:80]!r}")
        obj_type, size = parts[1].decode("ascii"), int(parts[2])
        if size > budget:
            raise GitObjectError(f"object {oid[:12]} ({size} bytes) would take the git "
                                 f"objects past the limit of {limit} bytes")
        data = self.proc.stdout.read(size + 1)
        if len(data) != size + 1 or data[-1:] != b"\n":
            raise GitObjectError(f"git cat-file: short read of object {oid[:12]}")
        return obj_type, data[:-1]

    def close(self) -> None:
        self._timer.cancel()
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self._err.close()


def _object_format(git: str, repo: str) -> str:
    r = _run_git(git, repo, "rev-parse", "--show-object-format")
    if r.returncode == 0 and r.stdout.strip():
        return r.stdout.strip().decode("ascii", "replace")
    # git older than 2.25 has no --show-object-format (and no SHA-256 either), but a
    # repository can still say what it is.
    c = _run_git(git, repo, "config", "--get", "extensions.objectformat")
    if c.returncode == 0 and c.stdout.strip():
        return c.stdout.strip().decode("ascii", "replace").lower()
    if r.returncode != 0:
        raise GitObjectError(f"{repo}: not a git repository ({_last_line(r.stderr)})")
    return OBJECT_FORMAT


def collect(repo_dir: str | os.PathLike[str], commit: str, paths: Sequence[str], *,
            optional: Iterable[str] = (),
            git: str = "git", max_objects: int = MAX_BUNDLE_OBJECTS,
            max_bytes: int = MAX_BUNDLE_BYTES) -> GitBundle:
    """Gather from ``repo_dir`` the objects that tie ``commit`` to each of ``paths``.

    ``commit`` is any name git resolves to a commit (``HEAD``, a branch, a tag, an id). The
    bundle holds exactly the commit object, the trees on the way to each path and each path's
    blob (for an absent ``optional`` path: the trees down to where it stops). Raises
    :class:`GitObjectError` naming a missing path, a symlink or submodule on the way, a
    SHA-256 repository, or a bundle over the limits. The result is checked with
    :func:`verify_paths` before it is returned.
    """
    repo_dir = os.fspath(repo_dir)
    if isinstance(paths, str) or isinstance(optional, str):
        raise GitObjectError("paths must be a list of paths, not a string")
    if not os.path.isdir(repo_dir):
        raise GitObjectError(f"{repo_dir}: not a directory")
    required = list(paths)
    want_optional = [p for p in dict.fromkeys(optional) if p not in set(required)]
    for p in required + want_optional:
        _split_path(p)
    if (not isinstance(commit, str) or not commit or commit.startswith("-")
            or any(c in commit for c in "\0\n\r")):
        raise GitObjectError(f"{commit!r} is not a commit name")
    fmt = _object_format(git, repo_dir)
    if fmt != OBJECT_FORMAT:
        raise GitObjectError(f"{repo_dir}: object format {fmt}; {_SHA256_MSG}"
                             if fmt == "sha256" else
                             f"{repo_dir}: object format {fmt} is not supported")
    r = _run_git(git, repo_dir, "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}")
    commit_id = r.stdout.strip().decode("ascii", "replace")
    if r.returncode != 0 or not commit_id:
        raise GitObjectError(f"{commit!r} is not a commit in {repo_dir}")
    _check_oid(commit_id, "commit")

    objects: dict[str, tuple[str, bytes]] = {}
    total = 0
    cat = _CatFile(git, repo_dir)
    try:
        def get(oid: str, want: str, what: str) -> bytes:
            nonlocal total
            if oid in objects:
                found = objects[oid]
            else:
                if len(objects) >= max_objects:
                    raise GitObjectError(f"the git objects for these paths are more than the "
                                         f"limit of {max_objects}")
                obj_type, content = cat.read(oid, max_bytes - total, max_bytes)
                found = objects[oid] = (obj_type, content)
                total += len(content)
            if found[0] != want:
                raise GitObjectError(f"{what}: object {oid[:12]} is a {found[0]}, not a {want}")
            return found[1]

        tree = commit_info(get(commit_id, "commit", f"commit {commit_id[:12]}"))["tree"]
        absent = set()
        for path, opt in [(p, False) for p in required] + [(p, True) for p in want_optional]:
            blob = _walk(get, tree, path, optional=opt)
            if blob is None:
                absent.add(path)
            else:
                get(blob, "blob", f"{path}: its blob")
    except GitObjectError as e:
        raise GitObjectError(f"{repo_dir} at {commit_id[:12]}: {e.message}") from None
    finally:
        cat.close()
    bundle = GitBundle(commit_id, objects, frozenset(absent))
    # The same check the enclave runs: catches a git that answers with other bytes.
    verify_paths(objects, commit_id, required, optional=want_optional,
                 max_objects=max_objects, max_bytes=max_bytes)
    return bundle
