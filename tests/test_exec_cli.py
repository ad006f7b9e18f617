"""`sops-enclave exec` from a user's point of view (issue #15): what it says when something
around it is wrong (no repository, no commit, uncommitted edits, no dev KMS, no credentials,
a bad recipient, a missing extract path), one line each, and that nothing ran or was written.

A module-scoped dev stack (moto's KMS behind the attested layer, in memory) with a gated input
key, a runtime key, an enclave policy and an SSH-signed repository, as in `make demo`.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from conftest import run
from pack_world import git, policy_world

TOOL = [sys.executable, "-m", "sops_enclave"]


@pytest.fixture(scope="module")
def world(tmp_path_factory, base_env):
    with policy_world(tmp_path_factory.mktemp("exec-cli"), base_env) as w:
        yield w


MANIFEST = """version: 1
matrix:
  service: [{services}]
outputs:
  - target: "{{service}}/prod"
    path: "deploy/{{service}}/prod.enc.json"
    inputs:
      - secrets/common.enc.yaml
      - {{file: secrets/prod.enc.yaml, extract: '["{{service}}"]'}}
      - {{file: "secrets/{{service}}-extra.enc.yaml", optional: true}}
    encrypt:
      kms: ["{runtime}"]
      encryption_context: {{service: "{{service}}"}}
"""


def make_repo(world, tmp_path: Path, services: str = "api, worker") -> Path:
    repo = tmp_path / "repo"
    (repo / "secrets").mkdir(parents=True)
    for name, text in (("common", b"db:\n    host: db.internal\n"),
                       ("prod", b"api:\n    token: t0k3n-a1\nworker:\n    queue: q-b2\n")):
        src = tmp_path / f"{name}.yaml"
        src.write_bytes(text)
        p = run(TOOL + ["encrypt", "--kms", world["gated"], "--output",
                        str(repo / "secrets" / f"{name}.enc.yaml"), str(src)], world["env"])
        assert p.returncode == 0, p.stderr
    (repo / ".sops-enclave.yaml").write_text(MANIFEST.format(services=services,
                                                             runtime=world["runtime"]))
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-S", "-m", "secrets", key=world["key"])
    return repo


def exec_(world, repo: Path, *args: str, env: dict | None = None, policy: bool = True):
    pol = ["--enclave-policy", str(world["policy"])] if policy else []
    return run(TOOL + ["exec", "--repo", str(repo), *pol, *args], env or world["env"])


def one_line(p) -> str:
    err = p.stderr.decode()
    assert "Traceback" not in err and "fatal:" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------- repository and commit

def test_missing_repository_directory(world, tmp_path):
    p = exec_(world, tmp_path / "nope")
    assert p.returncode == 1
    assert "no such directory" in one_line(p) and str(tmp_path / "nope") in one_line(p)


def test_not_a_repository(world, tmp_path):
    p = exec_(world, tmp_path)
    assert p.returncode == 1
    line = one_line(p)
    assert "is not in a git repository" in line and "--repo DIR" in line


def test_repository_without_a_commit(world, tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / ".sops-enclave.yaml").write_text("version: 1\n")
    p = exec_(world, tmp_path, "--dry-run")
    assert p.returncode == 1
    assert "has no commit yet" in one_line(p) and "commit the manifest" in one_line(p)


def test_unknown_commit(world, tmp_path):
    repo = make_repo(world, tmp_path)
    p = exec_(world, repo, "--commit", "deadbeef", "--dry-run")
    assert p.returncode == 1
    assert one_line(p).startswith("commit 'deadbeef' not found in ")


# ---------------------------------------------------------------- the working tree

def test_uncommitted_manifest_edit_is_refused_by_dry_run_and_exec(world, tmp_path):
    repo = make_repo(world, tmp_path)
    with open(repo / ".sops-enclave.yaml", "a") as f:
        f.write("# an edit not yet committed\n")
    before = dict(world["stack"].kms.stats)
    for args in (["--dry-run"], []):
        p = exec_(world, repo, *args)
        assert p.returncode == 1, p.stderr
        line = one_line(p)
        assert ".sops-enclave.yaml (modified) differs from commit" in line
        assert "--allow-dirty" in line and p.stdout == b""
    assert world["stack"].kms.stats == before          # nothing reached KMS
    assert not (repo / "deploy").exists()


def test_untracked_optional_input_and_deleted_input_are_named(world, tmp_path):
    repo = make_repo(world, tmp_path)
    (repo / "secrets" / "api-extra.enc.yaml").write_text("x: 1\n")    # would be skipped
    (repo / "secrets" / "common.enc.yaml").unlink()
    (repo / "secrets" / "unrelated.txt").write_text("not an input\n")
    p = exec_(world, repo, "--dry-run")
    assert p.returncode == 1
    line = one_line(p)
    assert "secrets/api-extra.enc.yaml (untracked)" in line
    assert "secrets/common.enc.yaml (deleted)" in line and "unrelated" not in line


def test_allow_dirty_warns_and_packs_the_commit(world, tmp_path):
    repo = make_repo(world, tmp_path)
    (repo / ".sops-enclave.yaml").write_text((repo / ".sops-enclave.yaml").read_text()
                                             .replace("api, worker", "api"))
    p = exec_(world, repo, "--dry-run", "--allow-dirty")
    assert p.returncode == 0, p.stderr
    assert "warning" in one_line(p) and "--allow-dirty" in one_line(p)
    # The plan is the commit's (two targets), not the edited file's (one).
    assert b"2 of 2 targets" in p.stdout and b"target worker/prod" in p.stdout


def test_another_commit_than_head_is_not_compared_with_the_working_tree(world, tmp_path):
    repo = make_repo(world, tmp_path)
    first = git(repo, "rev-parse", "HEAD").decode().strip()
    (repo / "notes.txt").write_text("n\n")
    git(repo, "add", "notes.txt")
    git(repo, "commit", "-q", "-S", "-m", "notes", key=world["key"])
    with open(repo / ".sops-enclave.yaml", "a") as f:
        f.write("# edit\n")
    p = exec_(world, repo, "--dry-run", "--commit", first)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"commit {first}".encode())


# ---------------------------------------------------------------- recipients and KMS

def test_bad_age_recipient_fails_dry_run(world, tmp_path):
    repo = make_repo(world, tmp_path)
    bad = "age1" + "q" * 58
    text = (repo / ".sops-enclave.yaml").read_text().replace(
        "encryption_context: {service: \"{service}\"}", f'age: ["{bad}"]')
    (repo / ".sops-enclave.yaml").write_text(text)
    git(repo, "commit", "-q", "-S", "-am", "age", key=world["key"])
    p = exec_(world, repo, "--dry-run", policy=False)
    assert p.returncode == 1
    line = one_line(p)
    assert line.startswith(".sops-enclave.yaml: target api/prod: age recipient ")
    assert bad in line and "invalid checksum" in line


def test_dev_kms_not_configured(world, tmp_path):
    repo = make_repo(world, tmp_path)
    env = {k: v for k, v in world["env"].items() if not k.startswith("AWS_ENDPOINT_URL")}
    p = exec_(world, repo, env=env)
    assert p.returncode == 1
    line = one_line(p)
    assert "AWS_ENDPOINT_URL_KMS is not set" in line
    assert "start it with 'sops-enclave dev up'" in line


def test_dev_kms_unreachable(world, tmp_path):
    repo = make_repo(world, tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    p = exec_(world, repo, env=dict(world["env"], AWS_ENDPOINT_URL_KMS=dead))
    assert p.returncode == 1
    line = one_line(p)
    assert f"the dev KMS at {dead} is not reachable" in line
    assert "start it with 'sops-enclave dev up'" in line
    assert not (repo / "deploy").exists()


def test_no_credentials(world, tmp_path):
    repo = make_repo(world, tmp_path)
    env = {k: v for k, v in world["env"].items()
           if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true")
    before = dict(world["stack"].kms.stats)
    p = exec_(world, repo, env=env)
    assert p.returncode == 1
    line = one_line(p)
    assert line.startswith("no AWS credentials for the enclave's KMS calls")
    assert "sops-enclave dev up" in line
    assert world["stack"].kms.stats == before


# ---------------------------------------------------------------- inside the enclave

def test_missing_extract_path_names_target_and_input(world, tmp_path):
    repo = make_repo(world, tmp_path, services="api, billing")
    p = exec_(world, repo)
    assert p.returncode == 1
    line = one_line(p)
    assert line == ('the enclave refused the run: target billing/prod: input '
                    'secrets/prod.enc.yaml has no ["billing"] (the input\'s extract in the '
                    'manifest)')
    assert not (repo / "deploy").exists()


def test_success_is_quiet_on_stderr_and_verbose_names_the_enclave(world, tmp_path):
    repo = make_repo(world, tmp_path)
    p = exec_(world, repo)
    assert p.returncode == 0, p.stderr
    assert p.stderr == b""
    assert p.stdout.decode().splitlines() == [
        "api/prod: wrote deploy/api/prod.enc.json and deploy/api/prod.enc.json.receipt.json",
        "worker/prod: wrote deploy/worker/prod.enc.json and "
        "deploy/worker/prod.enc.json.receipt.json"]
    v = exec_(world, repo, "--verbose", "api/prod")
    assert v.returncode == 0, v.stderr
    assert b"dev enclave (software NSM)" in v.stderr
    # The outputs verify (the whole path works, not only its error messages).
    out = repo / "deploy" / "api" / "prod.enc.json"
    r = run(TOOL + ["verify", str(out), "--allow-dev", f"--pcr=0={world['pcr0']}", "--repo",
                    str(repo), "--enclave-policy", str(world["policy"])], world["env"])
    assert r.returncode == 0, r.stdout + r.stderr


def test_uncommitted_fix_of_a_broken_manifest_says_uncommitted(world, tmp_path):
    repo = make_repo(world, tmp_path)
    good = (repo / ".sops-enclave.yaml").read_text()
    (repo / ".sops-enclave.yaml").write_text(good.replace("    inputs:", "    inptus:"))
    git(repo, "commit", "-q", "-S", "-am", "a typo", key=world["key"])
    p = exec_(world, repo, "--dry-run")
    assert p.returncode == 1 and "unknown key 'inptus'" in p.stderr.decode()
    (repo / ".sops-enclave.yaml").write_text(good)     # fixed, not committed
    p = exec_(world, repo, "--dry-run")
    assert p.returncode == 1
    assert ".sops-enclave.yaml (modified) differs from commit" in one_line(p)
