"""The host side of ``exec`` without an enclave: which inputs exist in the commit (one git
process for all of them), and the dev enclave started early is stopped when a host-side
check fails after it started."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pack_world import git as _git
from sops_enclave.errors import SopsError
from sops_enclave.pack import host

MANIFEST = """version: 1
outputs:
  - target: app
    path: deploy/app.enc.json
    inputs:
      - secrets/a.enc.yaml
      - {file: "secrets/with space.enc.yaml", optional: true}
      - {file: "secrets/absent.enc.yaml", optional: true}
      - {file: "secrets", optional: true}
      - {file: "secrets/é.enc.yaml", optional: true}
    encrypt:
      age: ["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"]
"""


@pytest.fixture
def repo(tmp_path):
    r = tmp_path / "repo"
    (r / "secrets" / "sub").mkdir(parents=True)
    for name in ("a.enc.yaml", "with space.enc.yaml", "é.enc.yaml", "sub/b.enc.yaml"):
        (r / "secrets" / name).write_text("x: 1\n")
    (r / ".sops-enclave.yaml").write_text(MANIFEST)
    _git(r, "init", "-q")
    _git(r, "add", "-A")
    _git(r, "commit", "-q", "-m", "inputs")
    return r


def test_existing_paths_agree_with_cat_file_e(repo):
    commit = _git(repo, "rev-parse", "HEAD").decode().strip()
    paths = {"secrets/a.enc.yaml", "secrets/with space.enc.yaml", "secrets/é.enc.yaml",
             "secrets/absent.enc.yaml", "secrets", "secrets/sub", "nope/x", "secrets/a.enc.yaml/x"}
    found = host._existing_paths(str(repo), commit, paths)
    assert set(found) == paths
    for p in paths:
        one = subprocess.run(["git", "-C", str(repo), "cat-file", "-e", f"{commit}:{p}"],
                             capture_output=True)
        assert found[p] == (one.returncode == 0), p
    # A path that cannot go on one line is left to the caller.
    assert host._existing_paths(str(repo), commit, {"a\nb"}) == {}


def test_plan_at_commit_drops_only_the_absent_optional_input(repo):
    calls = []
    commit, _, plans = host.plan_at_commit(host.ExecOptions(repo=str(repo)), calls.append)
    assert calls == [commit]
    assert [i.file for i in plans[0].inputs] == [
        "secrets/a.enc.yaml", "secrets/with space.enc.yaml", "secrets", "secrets/é.enc.yaml"]


def test_missing_required_input_is_still_named(repo):
    (repo / ".sops-enclave.yaml").write_text(MANIFEST.replace("secrets/a.enc.yaml",
                                                              "secrets/gone.enc.yaml"))
    _git(repo, "commit", "-q", "-am", "required input missing")
    with pytest.raises(SopsError, match="gone.enc.yaml"):
        host.plan_at_commit(host.ExecOptions(repo=str(repo)))


def test_dev_enclave_started_early_is_stopped_when_a_later_check_fails(repo, monkeypatch,
                                                                        tmp_path):
    """The dev enclave starts right after the commit check; a failing recipient check (made
    after it) stops it and the error is the check's."""
    (repo / ".sops-enclave.yaml").write_text(MANIFEST.replace("age1ql3z", "age1bad"))
    _git(repo, "commit", "-q", "-am", "bad recipient")
    started = []

    def fake_start(workdir, env, enclave_policy=None):
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        started.append(proc)
        return proc, str(tmp_path / "never.sock")

    monkeypatch.setattr(host, "start_dev_enclave", fake_start)
    with pytest.raises(SopsError, match="age recipient"):
        host.run_exec(host.ExecOptions(repo=str(repo)), {})
    assert len(started) == 1
    assert started[0].poll() is not None  # stopped, not left running


def test_no_dev_enclave_when_the_commit_check_fails(repo, monkeypatch):
    started = []
    monkeypatch.setattr(host, "start_dev_enclave", lambda *a, **k: started.append(a))

    def refuse(commit):
        raise SopsError("dirty")

    with pytest.raises(SopsError, match="dirty"):
        host.run_exec(host.ExecOptions(repo=str(repo)), {}, check_commit=refuse)
    assert started == []
