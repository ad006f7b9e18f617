"""Git checks of receipt verification: blobs, reachability, commit time, output path.

Runs ``git`` (no shell, ``GIT_*`` variables dropped) against a repository directory the
caller names::

    check_repo("/src/repo", commit, [("secrets/a.enc.yaml", blob_id, sha256_hex), ...])
    check_reachable("/src/repo", commit, ref="refs/heads/main")   # or ref=None: any branch/tag
    commit_time("/src/repo", commit)                                # committer time, aware
    subject_name("deploy/api/prod.enc.json", repo_toplevel("deploy/api"))  # repository path
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import subprocess
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["RepoMismatch", "SubjectPathError", "check_repo", "check_reachable",
           "commit_time", "repo_toplevel", "subject_name"]

_OID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_TIMEOUT = 60


class RepoMismatch(ValueError):
    """The repository does not contain what the receipt records."""


class SubjectPathError(ValueError):
    """The output's path inside the repository cannot be told (or is reached through a
    symbolic link)."""


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


def _ref_commit(repo: Path, git: str, ref: str) -> str:
    if not ref or ref.startswith("-"):
        raise RepoMismatch("a ref may not be empty or start with '-'")
    r = _git(repo, git, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    found = r.stdout.decode(errors="replace").strip()
    if r.returncode != 0 or not _OID.fullmatch(found):
        raise RepoMismatch(f"ref {ref} does not name a commit in {repo}")
    return found


def check_reachable(repo: str | Path, commit: str, ref: str | None = None, *,
                    git: str = "git") -> str:
    """With ``ref``: require ``commit`` to be an ancestor of (or equal to) ``ref``.
    Without: require some branch (local or remote-tracking) or tag to contain it.

    Returns a short description ("ancestor of REF", "on refs/heads/main (+2 more)");
    raises :class:`RepoMismatch`. A commit reachable from no ref is one the host may have
    made up for the run (signed, perhaps, but never merged).
    """
    repo = Path(repo)
    if not _OID.fullmatch(commit):
        raise RepoMismatch(f"commit {commit!r} is not a git object id")
    if ref is not None:
        target = _ref_commit(repo, git, ref)
        r = _git(repo, git, "merge-base", "--is-ancestor", commit, target)
        if r.returncode == 1:
            raise RepoMismatch(f"commit {commit[:12]} is not an ancestor of {ref} "
                               f"({target[:12]})")
        if r.returncode != 0:
            msg = r.stderr.decode(errors="replace").strip().splitlines()
            raise RepoMismatch(f"cannot tell whether {commit[:12]} is an ancestor of {ref}"
                               + (f" ({msg[-1]})" if msg else ""))
        return f"ancestor of {ref} ({target[:12]})"
    r = _git(repo, git, "for-each-ref", "--contains", commit, "--format=%(refname)",
             "refs/heads", "refs/remotes", "refs/tags")
    if r.returncode != 0:
        msg = r.stderr.decode(errors="replace").strip().splitlines()
        raise RepoMismatch(f"cannot list the refs containing {commit[:12]}"
                           + (f" ({msg[-1]})" if msg else ""))
    refs = [x for x in r.stdout.decode(errors="replace").splitlines()
            if x and not x.endswith("/HEAD")]
    if not refs:
        raise RepoMismatch(f"commit {commit[:12]} is reachable from no branch or tag in "
                           f"{repo}; pass --ref REF to name the branch it must be on")
    heads = sorted(refs, key=lambda x: (not x.startswith("refs/heads/"), x))
    return f"on {heads[0]}" + (f" (+{len(heads) - 1} more)" if len(heads) > 1 else "")


def commit_time(repo: str | Path, commit: str, *, git: str = "git") -> datetime:
    """The committer time of ``commit``, read from the commit object itself."""
    repo = Path(repo)
    if not _OID.fullmatch(commit):
        raise RepoMismatch(f"commit {commit!r} is not a git object id")
    r = _git(repo, git, "cat-file", "commit", commit)
    if r.returncode != 0:
        raise RepoMismatch(f"cannot read commit {commit[:12]}")
    header = r.stdout.split(b"\n\n", 1)[0]
    for line in header.split(b"\n"):
        if line.startswith(b"committer "):
            parts = line.rsplit(b" ", 2)
            if len(parts) == 3 and parts[1].isdigit():
                return datetime.fromtimestamp(int(parts[1]), timezone.utc)
    raise RepoMismatch(f"commit {commit[:12]} has no readable committer time")


def repo_toplevel(directory: str | Path, *, git: str = "git") -> Path | None:
    """The work tree root that holds ``directory``, or ``None`` outside any."""
    try:
        r = _git(Path(directory), git, "rev-parse", "--show-toplevel")
    except RepoMismatch:
        return None
    top = r.stdout.decode(errors="replace").strip()
    return Path(top) if r.returncode == 0 and top else None


def subject_name(output: str | Path, root: str | Path) -> str:
    """The path of ``output`` relative to the repository ``root``, with ``/`` separators.

    The output is named as given (not where symbolic links lead): the path a deploy step
    reads is the one that must match the receipt. Raises :class:`SubjectPathError` when
    the output is outside ``root`` or a symbolic link inside the repository leads
    elsewhere (``deploy/staging -> prod`` would otherwise pass for the prod receipt).
    """
    root_real = os.path.realpath(root)
    out = os.path.abspath(output)
    parts: list[str] = []
    cur = out
    while os.path.realpath(cur) != root_real:
        parent = os.path.dirname(cur)
        if parent == cur:
            raise SubjectPathError(f"{output} is not inside the repository {root}")
        parts.append(os.path.basename(cur))
        cur = parent
    if not parts:
        raise SubjectPathError(f"{output} is the repository directory itself")
    parts.reverse()
    if os.path.realpath(out) != os.path.join(root_real, *parts):
        raise SubjectPathError(f"{output} is reached through a symbolic link inside the "
                               f"repository (it is really {os.path.realpath(out)})")
    return "/".join(parts)
