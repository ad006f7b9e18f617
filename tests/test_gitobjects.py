"""Git objects: the host collects them with git, the enclave checks them without it.

Real repositories are made in temporary directories with the git CLI; hand-made objects cover
what git itself will not write (wrong types, duplicate entries, forged histories).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sops_enclave.pack import gitobjects as go
from sops_enclave.pack.gitobjects import (GitBundle, GitObjectError, collect, commit_info,
                                          object_id, verify_paths)

GIT = shutil.which("git")
pytestmark = pytest.mark.skipif(GIT is None, reason="the git CLI is not installed")

IDENT = ["-c", "user.name=Test Author", "-c", "user.email=test@example.invalid",
         "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false", "-c", "init.defaultBranch=main",
         "-c", "core.symlinks=true"]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), GIT_CONFIG_NOSYSTEM="1",
               GIT_AUTHOR_DATE="2024-01-02T03:04:05Z", GIT_COMMITTER_DATE="2024-01-02T03:04:05Z",
               LC_ALL="C")
    return env


def git(repo: Path, *args: str, input: bytes | None = None) -> bytes:
    return subprocess.run([GIT, *IDENT, *args], cwd=repo, env=_env(repo.parent), input=input,
                          capture_output=True, check=True, timeout=60).stdout


def rev(repo: Path, *names: str) -> list[str]:
    """Object ids of ``names`` (``COMMIT:path`` included). cat-file, not rev-parse: rev-parse
    would read ``COMMIT:...`` (a file named "...") as a range."""
    out = git(repo, "cat-file", "--batch-check=%(objectname)",
              input="".join(f"{n}\n" for n in names).encode()).decode().split("\n")[:-1]
    assert len(out) == len(names) and all(len(x) == 40 for x in out), (names, out)
    return out


def write_tree(root: Path, files: dict[str, bytes | tuple[str, str]]) -> None:
    for path, content in files.items():
        p = root / path
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, tuple):  # ("link", target)
            os.symlink(content[1], p)
        else:
            p.write_bytes(content)


def make_repo(root: Path, files: dict, *, init_args: tuple[str, ...] = ()) -> tuple[Path, str]:
    repo = root / "repo"
    repo.mkdir()
    git(repo, "init", "-q", *init_args)
    write_tree(repo, files)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "secrets")
    return repo, git(repo, "rev-parse", "HEAD").decode().strip()


@pytest.fixture(autouse=True)
def _no_user_git_config(tmp_path, monkeypatch):
    # collect() drops GIT_* variables, so keep it away from the user's ~/.gitconfig instead.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))


FILES = {
    "README.md": b"# hello\n",
    "secrets/common.enc.yaml": b"common: ENC[...]\n",
    "secrets/api/prod.enc.yaml": b"api: prod\n",
    "secrets/api/staging.enc.yaml": b"api: staging\n",
    "secrets/worker/prod.enc.yaml": b"worker: prod\n",
    "deep/a/b/c/d/e.txt": b"deep\n",
    "bin/data.bin": bytes(range(256)) * 3 + b"\0\n\r\n",
    "names/\u00fcn\u00efcode file.yaml": "ünï: 1\n".encode(),
    "same/one.txt": b"dup\n",
    "same/two.txt": b"dup\n",
    "exec.sh": b"#!/bin/sh\n",
}
PATHS = ["secrets/common.enc.yaml", "secrets/api/prod.enc.yaml", "deep/a/b/c/d/e.txt",
         "bin/data.bin", "names/\u00fcn\u00efcode file.yaml", "same/one.txt", "same/two.txt",
         "exec.sh"]


@pytest.fixture
def repo(tmp_path) -> tuple[Path, str]:
    repo, commit = make_repo(tmp_path, FILES)
    os.chmod(repo / "exec.sh", 0o755)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "exec bit")
    return repo, rev(repo, "HEAD")[0]


def expected_objects(repo: Path, commit: str, paths: list[str]) -> set[str]:
    names = [commit, f"{commit}^{{tree}}"]
    for p in paths:
        parts = p.split("/")
        names += [f"{commit}:{'/'.join(parts[:k])}" for k in range(1, len(parts))]
        names.append(f"{commit}:{p}")
    return set(rev(repo, *names))


# ------------------------------------------------------------------------------ hand-made objects

class Objects(dict):
    """An object store built in Python, ids computed as git does."""

    def add(self, obj_type: str, content: bytes) -> str:
        oid = object_id(obj_type, content)
        self[oid] = (obj_type, content)
        return oid

    def tree(self, *entries: tuple[str, str, str]) -> str:
        raw = b"".join(f"{mode} ".encode() + name.encode() + b"\0" + bytes.fromhex(oid)
                       for mode, name, oid in entries)
        return self.add("tree", raw)

    def commit(self, tree: str, *parents: str, extra: bytes = b"") -> str:
        raw = f"tree {tree}\n".encode() + b"".join(f"parent {p}\n".encode() for p in parents)
        raw += b"author A U Thor <a@example.invalid> 1700000000 +0100\n"
        raw += b"committer C O Mitter <c@example.invalid> 1700000001 -0500\n" + extra
        raw += b"\nmessage\n"
        return self.add("commit", raw)


def small_bundle() -> tuple[Objects, str, dict[str, str]]:
    """``dir/file.txt`` and ``top.txt`` in one commit."""
    o = Objects()
    ids = {"file": o.add("blob", b"in a dir\n"), "top": o.add("blob", b"at the top\n")}
    ids["dir"] = o.tree(("100644", "file.txt", ids["file"]))
    ids["root"] = o.tree(("40000", "dir", ids["dir"]), ("100644", "top.txt", ids["top"]))
    return o, o.commit(ids["root"]), ids


def test_python_object_ids_match_git(tmp_path):
    repo, _ = make_repo(tmp_path, {"x": b"x\n"})
    data = b"some \0 bytes\n"
    assert git(repo, "hash-object", "--stdin", input=data).decode().strip() == \
        object_id("blob", data)
    blob = git(repo, "hash-object", "-w", "--stdin", input=data).decode().strip()
    tree = git(repo, "mktree", input=f"100644 blob {blob}\ta b\n".encode()).decode().strip()
    assert Objects().tree(("100644", "a b", blob)) == tree


def test_small_bundle_verifies():
    o, c, ids = small_bundle()
    assert verify_paths(o, c, ["dir/file.txt", "top.txt"]) == {
        "dir/file.txt": (ids["file"], b"in a dir\n"), "top.txt": (ids["top"], b"at the top\n")}


# ------------------------------------------------------------------------------ collect + verify

def test_collect_then_verify_returns_what_git_shows(repo):
    repo, commit = repo
    bundle = collect(str(repo), "HEAD", PATHS)
    assert bundle.commit == commit
    assert set(bundle.objects) == expected_objects(repo, commit, PATHS)
    assert bundle.absent == frozenset()
    found = verify_paths(bundle.objects, bundle.commit, PATHS)
    assert set(found) == set(PATHS)
    for p in PATHS:
        assert found[p] == (rev(repo, f"{commit}:{p}")[0], git(repo, "show", f"{commit}:{p}"))
    assert found["bin/data.bin"][1] == FILES["bin/data.bin"]
    assert {t for t, _ in bundle.objects.values()} == {"commit", "tree", "blob"}


def test_collect_holds_only_the_objects_on_the_way(repo):
    repo, commit = repo
    bundle = collect(repo, commit, ["secrets/api/prod.enc.yaml"])
    assert len(bundle.objects) == 5  # commit, root, secrets, secrets/api, the blob
    assert rev(repo, f"{commit}:secrets/worker")[0] not in bundle.objects
    assert rev(repo, f"{commit}:README.md")[0] not in bundle.objects


def test_commit_names_resolve(repo):
    repo, commit = repo
    first = rev(repo, "HEAD~1")[0]
    git(repo, "tag", "-a", "-m", "release", "v1", first)
    (repo / "secrets/common.enc.yaml").write_bytes(b"changed\n")
    git(repo, "commit", "-q", "-am", "change")
    for name in (commit[:10], f"{commit}", "HEAD~1"):
        assert collect(repo, name, ["exec.sh"]).commit == commit
    old = collect(repo, "v1", ["secrets/common.enc.yaml"])  # an annotated tag, peeled
    assert old.commit == first
    assert old.verify(["secrets/common.enc.yaml"])["secrets/common.enc.yaml"][1] == \
        FILES["secrets/common.enc.yaml"]
    new = collect(repo, "main", ["secrets/common.enc.yaml"])
    assert new.verify(["secrets/common.enc.yaml"])["secrets/common.enc.yaml"][1] == b"changed\n"


def test_missing_and_non_file_paths_are_refused(repo):
    repo, commit = repo
    cases = {
        "secrets/nope.enc.yaml": "secrets/nope.enc.yaml: not found in the commit",
        "nope/x.yaml": "nope/x.yaml: not found ('nope' is not in the commit)",
        "secrets/api": "secrets/api: is a directory, not a file",
        "README.md/x": "README.md/x: 'README.md' is a file, not a directory",
    }
    for path, msg in cases.items():
        with pytest.raises(GitObjectError) as e:
            collect(repo, commit, ["README.md", path])
        assert e.value.message.endswith(msg)
        assert e.value.exit_code == 1
    bundle = collect(repo, commit, ["secrets/common.enc.yaml"])
    with pytest.raises(GitObjectError, match="secrets/api/prod.enc.yaml"):
        verify_paths(bundle.objects, commit, ["secrets/api/prod.enc.yaml"])


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a//b", "./a", "a/./b", "a/../b", "",
                                  "a/", "a\0b"])
def test_unnormalised_paths_are_refused(repo, path):
    repo, commit = repo
    with pytest.raises(GitObjectError, match="path"):
        collect(repo, commit, [path])
    o, c, _ = small_bundle()
    with pytest.raises(GitObjectError, match="path"):
        verify_paths(o, c, [path])


def test_symlinks_are_refused(tmp_path):
    repo, commit = make_repo(tmp_path, {"real/s.enc.yaml": b"x\n",
                                        "link.enc.yaml": ("link", "real/s.enc.yaml"),
                                        "dirlink": ("link", "real")})
    for path, what in (("link.enc.yaml", "link.enc.yaml"), ("dirlink/s.enc.yaml", "dirlink")):
        with pytest.raises(GitObjectError, match=f"'{what}' is a symlink"):
            collect(repo, commit, [path])
    # The same refusal on the enclave side, for objects a host might send anyway.
    o, _, ids = small_bundle()
    link = o.add("blob", b"dir/file.txt")
    c = o.commit(o.tree(("40000", "dir", ids["dir"]), ("120000", "l", link)))
    with pytest.raises(GitObjectError, match="'l' is a symlink"):
        verify_paths(o, c, ["l"])
    c = o.commit(o.tree(("120000", "dir", ids["dir"])))
    with pytest.raises(GitObjectError, match="'dir' is a symlink"):
        verify_paths(o, c, ["dir/file.txt"])


def test_submodules_are_refused(tmp_path):
    repo, _ = make_repo(tmp_path, {"a.txt": b"a\n"})
    git(repo, "update-index", "--add", "--cacheinfo", f"160000,{'ab' * 20},sub")
    git(repo, "commit", "-q", "-m", "submodule")
    commit = rev(repo, "HEAD")[0]
    assert collect(repo, commit, ["a.txt"]).verify(["a.txt"])["a.txt"][1] == b"a\n"
    for path in ("sub", "sub/x.yaml"):
        with pytest.raises(GitObjectError, match="'sub' is a submodule"):
            collect(repo, commit, [path])


def test_objects_of_the_wrong_type_are_refused():
    o, c, ids = small_bundle()
    # A file entry that points at a tree, a directory entry that points at a blob.
    c1 = o.commit(o.tree(("100644", "f", ids["dir"])))
    with pytest.raises(GitObjectError, match="is a tree, not a blob"):
        verify_paths(o, c1, ["f"])
    c2 = o.commit(o.tree(("40000", "d", ids["top"])))
    with pytest.raises(GitObjectError, match="is a blob, not a tree"):
        verify_paths(o, c2, ["d/x"])
    with pytest.raises(GitObjectError, match="is a tree, not a commit"):
        verify_paths(o, ids["root"], ["top.txt"])
    c3 = o.commit(ids["top"])  # a commit whose "tree" is a blob
    with pytest.raises(GitObjectError, match="is a blob, not a tree"):
        verify_paths(o, c3, ["top.txt"])


# ------------------------------------------------------------------------------ tampering

def test_tampering_with_any_object_is_refused(repo):
    repo, commit = repo
    bundle = collect(repo, commit, PATHS)
    kinds = set()
    for oid, (obj_type, content) in bundle.objects.items():
        for changed in (content[:-1] + bytes([content[-1] ^ 1]), content + b" ", content[1:]):
            objects = dict(bundle.objects)
            objects[oid] = (obj_type, changed)
            with pytest.raises(GitObjectError, match=f"{oid[:12]} .*hashes to"):
                verify_paths(objects, commit, PATHS)
        kinds.add(obj_type)
        # The same content declared as another type hashes differently too.
        other = "blob" if obj_type != "blob" else "tree"
        objects = dict(bundle.objects)
        objects[oid] = (other, content)
        with pytest.raises(GitObjectError, match="hashes to"):
            verify_paths(objects, commit, PATHS)
    assert kinds == {"commit", "tree", "blob"}


def test_swapping_a_blob_is_refused(repo):
    repo, commit = repo
    paths = ["secrets/api/prod.enc.yaml", "secrets/common.enc.yaml"]
    bundle = collect(repo, commit, paths)
    a, b = (bundle.verify(paths)[p][0] for p in paths)
    objects = dict(bundle.objects)
    objects[a] = objects[b]
    with pytest.raises(GitObjectError, match=f"git object {a[:12]} \\(blob\\)"):
        verify_paths(objects, commit, paths)


def test_a_missing_object_is_refused(repo):
    repo, commit = repo
    bundle = collect(repo, commit, ["deep/a/b/c/d/e.txt"])
    for name in ("deep/a/b", "deep/a/b/c/d/e.txt", ""):
        objects = dict(bundle.objects)
        del objects[rev(repo, f"{commit}:{name}")[0]]
        with pytest.raises(GitObjectError, match="is missing from the git objects"):
            verify_paths(objects, commit, ["deep/a/b/c/d/e.txt"])
    objects = dict(bundle.objects)
    del objects[commit]
    with pytest.raises(GitObjectError, match=f"commit {commit[:12]} .*missing"):
        verify_paths(objects, commit, ["deep/a/b/c/d/e.txt"])


def test_a_forged_history_only_verifies_under_its_own_commit_id():
    o, c, ids = small_bundle()
    forged = Objects()
    blob = forged.add("blob", b"attacker's value\n")
    d = forged.tree(("100644", "file.txt", blob))
    c2 = forged.commit(forged.tree(("40000", "dir", d), ("100644", "top.txt", ids["top"])))
    forged[ids["top"]] = o[ids["top"]]
    with pytest.raises(GitObjectError, match="missing"):
        verify_paths(forged, c, ["dir/file.txt"])
    # Under its own id it verifies: the receipt records that id, and `verify --repo` finds
    # no such commit in the real repository.
    assert verify_paths(forged, c2, ["dir/file.txt"])["dir/file.txt"] == \
        (blob, b"attacker's value\n")


@pytest.mark.parametrize("raw,msg", [
    (b"100644 a\0" + b"\1" * 19, "malformed"),                     # truncated id
    (b"100644 a" + b"\1" * 20, "malformed"),                       # no NUL
    (b"10064 a\0" + b"\1" * 20, "unknown mode"),
    (b"100644 \0" + b"\1" * 20, "invalid entry name"),
    (b"100644 ..\0" + b"\1" * 20, "invalid entry name"),
    (b"100644 a\0" + b"\1" * 20 + b"100644 a\0" + b"\2" * 20, "duplicate entry"),
])
def test_malformed_trees_are_refused(raw, msg):
    o = Objects()
    c = o.commit(o.add("tree", raw))
    with pytest.raises(GitObjectError, match=msg):
        verify_paths(o, c, ["a"])


@pytest.mark.parametrize("raw,msg", [
    (b"author a\ncommitter c\n\nm\n", "does not start with a tree line"),
    (b"tree " + b"0" * 40 + b"\ncommitter c\n\nm\n", "no author line"),
    (b"tree " + b"0" * 40 + b"\nauthor a\n\nm\n", "no committer line"),
    (b"tree " + b"0" * 40 + b"\nauthor a\nauthor b\ncommitter c\n\n", "two author lines"),
    (b"tree " + b"0" * 40 + b"\nauthor a\ntree " + b"1" * 40 + b"\ncommitter c\n\n",
     "misplaced tree"),
    (b"tree " + b"0" * 39 + b"\nauthor a\ncommitter c\n\nm\n", "not a git object id"),
    (b"tree " + b"0" * 64 + b"\nauthor a\ncommitter c\n\nm\n", "SHA-256"),
    (b"tree\n", "header line"),
])
def test_malformed_commits_are_refused(raw, msg):
    with pytest.raises(GitObjectError, match=msg):
        commit_info(raw)
    o = Objects()
    with pytest.raises(GitObjectError, match=msg):
        verify_paths(o, o.add("commit", raw), ["a"])


# ------------------------------------------------------------------------------ commit_info

def test_commit_info_of_a_merge(tmp_path):
    repo, first = make_repo(tmp_path, {"a": b"1\n"})
    git(repo, "checkout", "-q", "-b", "side")
    (repo / "b").write_bytes(b"2\n")
    git(repo, "add", "b")
    git(repo, "commit", "-q", "-m", "side")
    git(repo, "checkout", "-q", "main")
    (repo / "c").write_bytes(b"3\n")
    git(repo, "add", "c")
    git(repo, "commit", "-q", "-m", "main")
    git(repo, "merge", "-q", "--no-edit", "side")
    merge = rev(repo, "HEAD")[0]
    bundle = collect(repo, merge, ["a", "b", "c"])
    info = commit_info(bundle.objects[merge][1])
    assert info == {
        "tree": rev(repo, "HEAD^{tree}")[0],
        "parents": rev(repo, "HEAD^1", "HEAD^2"),
        "author": "Test Author <test@example.invalid> 1704164645 +0000",
        "committer": "Test Author <test@example.invalid> 1704164645 +0000",
    }
    assert commit_info(collect(repo, first, ["a"]).objects[first][1])["parents"] == []


def test_commit_info_skips_multiline_headers():
    o = Objects()
    tree = o.tree()
    sig = (b"gpgsig -----BEGIN PGP SIGNATURE-----\n \n iQEzBAAB\n author fake\n"
           b" -----END PGP SIGNATURE-----\n")
    c = o.commit(tree, "1" * 40, "2" * 40, extra=sig)
    assert commit_info(o[c][1]) == {
        "tree": tree, "parents": ["1" * 40, "2" * 40],
        "author": "A U Thor <a@example.invalid> 1700000000 +0100",
        "committer": "C O Mitter <c@example.invalid> 1700000001 -0500"}


# ------------------------------------------------------------------------------ optional paths

def test_optional_absent_paths_are_proven_absent(repo):
    repo, commit = repo
    optional = ["secrets/api/dev.enc.yaml", "nothere/x.yaml", "secrets/worker/prod.enc.yaml"]
    bundle = collect(repo, commit, ["secrets/common.enc.yaml"], optional=optional)
    assert bundle.absent == {"secrets/api/dev.enc.yaml", "nothere/x.yaml"}
    found = bundle.verify(["secrets/common.enc.yaml"], optional=optional)
    assert set(found) == {"secrets/common.enc.yaml", "secrets/worker/prod.enc.yaml"}
    # A host that leaves out an optional input's blob (to drop it from the output) is caught.
    objects = dict(bundle.objects)
    del objects[found["secrets/worker/prod.enc.yaml"][0]]
    with pytest.raises(GitObjectError, match="secrets/worker/prod.enc.yaml"):
        verify_paths(objects, commit, [], optional=optional)
    # ... and so is one that leaves out the tree that shows the absence.
    objects = dict(bundle.objects)
    del objects[rev(repo, f"{commit}:secrets/api")[0]]
    with pytest.raises(GitObjectError, match="missing"):
        verify_paths(objects, commit, [], optional=optional)
    # A path that is both required and optional is required.
    with pytest.raises(GitObjectError, match="nothere/x.yaml: not found"):
        verify_paths(bundle.objects, commit, ["nothere/x.yaml"], optional=optional)


# ------------------------------------------------------------------------------ limits

def test_collect_limits(repo):
    repo, commit = repo
    # commit, six trees (root, deep, a, b, c, d) and the blob
    with pytest.raises(GitObjectError, match="more than the limit of 7"):
        collect(repo, commit, ["deep/a/b/c/d/e.txt"], max_objects=7)
    assert len(collect(repo, commit, ["deep/a/b/c/d/e.txt"], max_objects=8).objects) == 8
    with pytest.raises(GitObjectError, match="past the limit of 700 bytes"):
        collect(repo, commit, ["bin/data.bin"], max_bytes=700)


def test_verify_limits(repo):
    repo, commit = repo
    bundle = collect(repo, commit, PATHS)
    n = len(bundle.objects)
    size = sum(len(c) for _, c in bundle.objects.values())
    verify_paths(bundle.objects, commit, PATHS, max_objects=n, max_bytes=size)
    with pytest.raises(GitObjectError, match=f"{n} objects, more than the limit of {n - 1}"):
        verify_paths(bundle.objects, commit, PATHS, max_objects=n - 1)
    with pytest.raises(GitObjectError, match=f"more than the limit of {size - 1} bytes"):
        verify_paths(bundle.objects, commit, PATHS, max_bytes=size - 1)
    # The defaults apply without being asked for; the count is checked before any hashing.
    many = {f"{i:040x}": ("blob", b"") for i in range(go.MAX_BUNDLE_OBJECTS + 1)}
    with pytest.raises(GitObjectError, match="more than the limit"):
        verify_paths(many, commit, PATHS)
    with pytest.raises(GitObjectError, match="more than the limit"):
        GitBundle.from_wire(GitBundle(commit, many).to_wire())


# ------------------------------------------------------------------------------ wire form

def _only_maps_str_bytes(v) -> bool:
    if isinstance(v, dict):
        return all(isinstance(k, str) and _only_maps_str_bytes(x) for k, x in v.items())
    return isinstance(v, (str, bytes))


def test_wire_round_trip(repo):
    import cbor2

    repo, commit = repo
    bundle = collect(repo, commit, PATHS)
    wire = bundle.to_wire()
    assert _only_maps_str_bytes(wire)
    back = GitBundle.from_wire(cbor2.loads(cbor2.dumps(wire)))
    assert back.commit == bundle.commit
    assert back.objects == bundle.objects
    assert back.verify(PATHS) == bundle.verify(PATHS)


@pytest.mark.parametrize("change,msg", [
    (lambda w: w.pop("commit"), "expected a map"),
    (lambda w: w.update(extra=1), "expected a map"),
    (lambda w: w.update(object_format="sha256"), "SHA-256"),
    (lambda w: w.update(commit="HEAD"), "not a git object id"),
    (lambda w: w.update(objects=[]), "objects must be a map"),
    (lambda w: next(iter(w["objects"].values())).update(content="text"), "must be"),
    (lambda w: next(iter(w["objects"].values())).update(type=1), "must be"),
    (lambda w: w["objects"].update({"XYZ": {"type": "blob", "content": b""}}), "object id"),
])
def test_from_wire_refuses_bad_shapes(change, msg):
    o, c, _ = small_bundle()
    wire = GitBundle(c, dict(o)).to_wire()
    change(wire)
    with pytest.raises(GitObjectError, match=msg):
        GitBundle.from_wire(wire)


def test_verify_refuses_bad_shapes():
    o, c, _ = small_bundle()
    with pytest.raises(GitObjectError, match="expected a map"):
        verify_paths([], c, ["top.txt"])  # type: ignore[arg-type]
    with pytest.raises(GitObjectError, match="expected \\(type, bytes\\)"):
        verify_paths({c: ("commit", "text")}, c, ["top.txt"])
    with pytest.raises(GitObjectError, match="unknown type"):
        verify_paths({object_id("blobby", b""): ("blobby", b"")}, c, ["top.txt"])
    with pytest.raises(GitObjectError, match="not a string"):
        verify_paths(o, c, "top.txt")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ repositories

def test_sha256_repositories_are_refused(tmp_path):
    try:
        repo, commit = make_repo(tmp_path, {"a": b"a\n"}, init_args=("--object-format=sha256",))
    except subprocess.CalledProcessError:
        pytest.skip("this git cannot make SHA-256 repositories")
    assert len(commit) == 64
    with pytest.raises(GitObjectError, match="SHA-256 repositories .* are not supported"):
        collect(repo, "HEAD", ["a"])
    with pytest.raises(GitObjectError, match="SHA-256"):
        verify_paths({}, commit, ["a"])


def test_git_environment_does_not_redirect_collect(repo, tmp_path, monkeypatch):
    repo, commit = repo
    other = tmp_path / "other"
    other.mkdir()
    other_repo, _ = make_repo(other, {"README.md": b"other\n"})
    monkeypatch.setenv("GIT_DIR", str(other_repo / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(other_repo))
    found = collect(repo, "HEAD", ["README.md"]).verify(["README.md"])
    assert found["README.md"][1] == FILES["README.md"]


def test_replace_refs_are_ignored(repo):
    repo, commit = repo
    real = rev(repo, f"{commit}:README.md")[0]
    fake = git(repo, "hash-object", "-w", "--stdin", input=b"replaced\n").decode().strip()
    git(repo, "replace", real, fake)
    assert git(repo, "show", f"{commit}:README.md") == b"replaced\n"  # git itself is fooled
    assert collect(repo, commit, ["README.md"]).verify(["README.md"])["README.md"] == \
        (real, FILES["README.md"])


def test_bad_commit_names_and_repositories(repo, tmp_path):
    repo, commit = repo
    for name in ("nope", "-h", "--all", "a\nb", "", f"{commit}:README.md"):
        with pytest.raises(GitObjectError):
            collect(repo, name, ["README.md"])
    with pytest.raises(GitObjectError, match="not a directory"):
        collect(tmp_path / "missing", "HEAD", ["README.md"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(GitObjectError, match="not a git repository|not a commit"):
        collect(empty, "HEAD", ["README.md"])


# ------------------------------------------------------------------------------ property

_names = st.text(alphabet="abcxyz019_-.", min_size=1, max_size=6).filter(
    lambda s: s not in (".", "..") and s.casefold() != ".git")
_trees = st.recursive(
    st.binary(max_size=40),
    lambda children: st.dictionaries(_names, children, min_size=1, max_size=4),
    max_leaves=12,
).filter(lambda t: isinstance(t, dict))


def _flatten(tree: dict, prefix: str = "") -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{name}/"))
        else:
            out[prefix + name] = v
    return out


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(tree=_trees, data=st.data())
def test_random_trees_verify(tree, data):
    files = _flatten(tree)
    paths = data.draw(st.lists(st.sampled_from(sorted(files)), min_size=1, unique=True),
                      label="paths")
    with tempfile.TemporaryDirectory() as tmp:
        repo, commit = make_repo(Path(tmp), files)
        bundle = collect(repo, commit, paths)
        assert set(bundle.objects) == expected_objects(repo, commit, paths)
        found = GitBundle.from_wire(bundle.to_wire()).verify(paths)
        blob_ids = rev(repo, *(f"{commit}:{p}" for p in paths))
        assert found == {p: (oid, files[p]) for p, oid in zip(paths, blob_ids)}
