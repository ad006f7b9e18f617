"""Step (7) of receipt verification: the recorded blobs are in the recorded commit.

Runs ``git`` (no shell) against a repository directory the caller names::

    check_repo("/src/repo", commit, [("secrets/a.enc.yaml", blob_id, sha256_hex), ...])
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

__all__ = ["RepoMismatch", "check_repo"]

_OID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_TIMEOUT = 60


class RepoMismatch(ValueError):
    """The repository does not contain what the receipt records."""


def _git(repo: Path, git: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    # GIT_DIR and friends in the caller's environment must not redirect us elsewhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    try:
        return subprocess.run([git, "-C", str(repo), *args], env=env, capture_output=True,
                              timeout=_TIMEOUT, check=False)
    except FileNotFoundError:
        raise RepoMismatch(f"cannot run {git!r}") from None
    except subprocess.TimeoutExpired:
        raise RepoMismatch(f"git {args[0]} timed out") from None


def check_repo(repo: str | Path, commit: str,
               entries: Iterable[tuple[str, str, str | None]], *, git: str = "git") -> None:
    """Require ``commit`` in ``repo`` and, for each ``(path, blob id, sha256 or None)``,
    the blob at ``commit:path`` to have that id and (when given) that sha256.

    Raises :class:`RepoMismatch` naming the first difference.
    """
    repo = Path(repo)
    if not repo.is_dir():
        raise RepoMismatch(f"{repo} is not a directory")
    if not _OID.fullmatch(commit):
        raise RepoMismatch(f"commit {commit!r} is not a git object id")
    r = _git(repo, git, "cat-file", "-t", commit)
    if r.returncode != 0 or r.stdout.strip() != b"commit":
        msg = r.stderr.decode(errors="replace").strip().splitlines()
        raise RepoMismatch(f"commit {commit} is not in {repo}"
                           + (f" ({msg[-1]})" if msg else ""))
    for path, blob, sha256 in entries:
        r = _git(repo, git, "rev-parse", "--verify", "--quiet", f"{commit}:{path}")
        found = r.stdout.decode(errors="replace").strip()
        if r.returncode != 0 or not found:
            raise RepoMismatch(f"{path} does not exist in commit {commit[:12]}")
        if found != blob:
            raise RepoMismatch(f"{path} in commit {commit[:12]} is blob {found[:12]}, "
                               f"the receipt records {blob[:12]}")
        t = _git(repo, git, "cat-file", "-t", blob)
        if t.stdout.strip() != b"blob":
            raise RepoMismatch(f"{path} in commit {commit[:12]} is not a file")
        if sha256 is not None:
            content = _git(repo, git, "cat-file", "blob", blob)
            if content.returncode != 0:
                raise RepoMismatch(f"cannot read blob {blob[:12]} ({path})")
            digest = hashlib.sha256(content.stdout).hexdigest()
            if not hmac.compare_digest(digest, sha256):
                raise RepoMismatch(f"{path}: blob sha256 is {digest[:16]}..., the receipt "
                                   f"records {sha256[:16]}...")
