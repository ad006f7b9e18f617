"""Host writes: a committed symlink must not send outputs or receipts out of the repository,
and an existing output keeps its mode (a 0600 file is not widened to 0644)."""

from __future__ import annotations

import os
import stat

import pytest

from sops_enclave.errors import CouldNotWriteOutputFile
from sops_enclave.pack.host import write_all_atomically


def _tree(d):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def test_directory_symlink_out_of_the_repository_is_refused(tmp_path):
    repo, outside = tmp_path / "repo", tmp_path / "outside"
    repo.mkdir()
    outside.mkdir()
    (repo / "deploy").symlink_to(outside)       # what a commit can hold
    items = [("ok/a.enc.json", b"A"), ("deploy/api/prod.enc.json", b"SECRET-ish")]
    with pytest.raises(CouldNotWriteOutputFile, match="symbolic link"):
        write_all_atomically(items, root=str(repo))
    assert _tree(outside) == []
    assert not (repo / "ok" / "a.enc.json").exists()     # all or nothing
    assert not [p for p in repo.rglob(".sops-enclave-*")]


def test_nested_symlink_and_file_symlink_are_refused(tmp_path):
    repo, outside = tmp_path / "repo", tmp_path / "outside"
    (repo / "deploy").mkdir(parents=True)
    outside.mkdir()
    (repo / "deploy" / "api").symlink_to(outside)
    with pytest.raises(CouldNotWriteOutputFile):
        write_all_atomically([("deploy/api/x.json", b"x")], root=str(repo))
    target = outside / "victim"
    target.write_bytes(b"keep")
    (repo / "deploy" / "out.json").symlink_to(target)
    with pytest.raises(CouldNotWriteOutputFile, match="not a regular file"):
        write_all_atomically([("deploy/out.json", b"x")], root=str(repo))
    assert target.read_bytes() == b"keep" and _tree(outside) == ["victim"]


@pytest.mark.parametrize("rel", ["../escape.json", "/etc/x.json", "a/./b.json", "a//b.json"])
def test_paths_that_leave_the_repository_are_refused(tmp_path, rel):
    repo = tmp_path / "repo"
    repo.mkdir()
    with pytest.raises(CouldNotWriteOutputFile):
        write_all_atomically([(rel, b"x")], root=str(repo))
    assert _tree(tmp_path) == ["repo"]


def test_existing_file_keeps_its_mode_new_ones_are_0644(tmp_path):
    repo = tmp_path / "repo"
    (repo / "deploy").mkdir(parents=True)
    old = repo / "deploy" / "prod.enc.json"
    old.write_bytes(b"old")
    os.chmod(old, 0o600)
    old_umask = os.umask(0o077)
    try:
        write_all_atomically([("deploy/prod.enc.json", b"new"),
                              ("deploy/prod.enc.json.receipt.json", b"r")], root=str(repo))
    finally:
        os.umask(old_umask)
    assert old.read_bytes() == b"new"
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
    assert stat.S_IMODE((repo / "deploy/prod.enc.json.receipt.json").stat().st_mode) == 0o644
