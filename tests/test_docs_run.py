"""Every shell and Python block of the README and the docs runs (issue #15).

The runner reads README.md, docs/*.md and examples/README.md. Blocks tagged ``sh``, ``bash``,
``shell``, ``console`` or ``python`` run; other blocks (``yaml``, ``json``, ``text``, untagged)
are file contents or output and are not run. A runnable block right after a line
``<!-- not run: REASON -->`` is skipped (those are counted, see ``NOT_RUN``).

Each session is one bash process in a fresh directory that holds copies of ``examples/``,
``fixtures/`` and ``docs/`` (what a clone has), with ``HOME`` inside it, no ``AWS_*`` or
``SOPS_*`` variables, the project's virtualenv first on ``PATH`` and a copy of the code taken
when the session starts first on ``PYTHONPATH``. ``docs/quickstart.md``,
``README.md`` and ``examples/README.md`` share one session, in that order: the README's auditor
and the example Makefile use what the quickstart made. Every other document is its own session.
Blocks run in document order; variables carry over, and each document starts in the
clone's directory (``$DOCS_CLONE``).

* ``sh``/``bash``/``shell``: the block runs with ``set -e``; it must succeed.
* ``console``: each ``$ COMMAND`` (continued by a trailing ``\\``) runs and must succeed (write
  ``... || echo "exit $?"`` for a command that is meant to fail), and its output (stdout and
  stderr) must match the lines after it: ``...`` stands for any text within a line, and a
  line that is only ``...`` for any number of lines.
* ``python``: runs with the virtualenv's Python.
* A ``text`` block right after a ``sh`` or ``python`` block, with ``<!-- output -->`` on the
  line before it, is that block's expected output (same ``...`` rules).

Dev stacks a session started are stopped at its end.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_LANGS = {"sh", "bash", "shell", "console", "python"}
_FENCE = re.compile(r"^(\s*)(`{3,})(\S*)\s*$")
_NOT_RUN = re.compile(r"^<!--\s*not run:\s*(\S.*?)\s*-->$")
_OUTPUT = re.compile(r"^<!--\s*output\s*-->$")

#: Documents whose runnable blocks share one session, in this order.
SHARED = ["docs/quickstart.md", "README.md", "examples/README.md"]

#: Blocks marked ``<!-- not run: ... -->`` per document: a new marker is a conscious change.
NOT_RUN = {"README.md": 2, "docs/quickstart.md": 1, "docs/manifest.md": 0,
           "examples/README.md": 0, "docs/enclave-policy.md": 2}

#: Blocks of documents that other people maintain and that cannot run here, until they carry
#: a ``<!-- not run: ... -->`` marker themselves: document -> {first line of block: reason};
#: ``"*"`` covers every block of the document.
ELSEWHERE = {
    "docs/deploy-nitro.md": {"*": "every step needs an AWS account and a Nitro-enabled EC2 "
                                  "instance"},
    "docs/receipt.md": {
        "$ cd receipt-demo/deploy/api && cp prod.enc.json staging.enc.json && cp "
        "prod.enc.json.receipt.json staging.enc.json.receipt.json && cd -":
            "its commands hold an abbreviated PCR value (f37bf8f9…bba5100)"},
}


@dataclass
class Block:
    doc: str
    line: int
    lang: str
    body: list[str]
    not_run: str | None = None
    #: a ``text`` block after ``<!-- output -->``: the output of the run block before it
    is_output: bool = False

    @property
    def first(self) -> str:
        return self.body[0] if self.body else ""

    def skip_reason(self) -> str | None:
        if self.not_run:
            return self.not_run
        other = ELSEWHERE.get(self.doc, {})
        return other.get("*") or other.get(self.first)


def documents() -> list[str]:
    docs = ["README.md"] + sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))
    return docs + ["examples/README.md"]


def blocks(doc: str) -> list[Block]:
    lines = (ROOT / doc).read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.groups()
        start = i
        body = []
        i += 1
        while i < len(lines) and not (lines[i].strip().startswith(fence)
                                      and lines[i].strip().strip("`") == ""):
            line = lines[i]
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            i += 1
        i += 1
        prev = next((lines[k].strip() for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        marker = _NOT_RUN.match(prev)
        out.append(Block(doc, start + 1, lang, body, marker.group(1) if marker else None,
                         bool(_OUTPUT.match(prev))))
    return out


# ------------------------------------------------------------------ console blocks

@dataclass
class Command:
    text: str
    expected: list[str] = field(default_factory=list)


def console_commands(block: Block) -> list[Command]:
    cmds: list[Command] = []
    lines = iter(block.body)
    for line in lines:
        if line.startswith("$ "):
            text = line[2:]
            while text.endswith("\\"):
                text = text + "\n" + next(lines, "")
            cmds.append(Command(text))
        elif cmds:
            cmds[-1].expected.append(line)
        elif line.strip():
            raise AssertionError(f"{block.doc}:{block.line}: output before the first '$ '")
    return cmds


def output_matches(expected: list[str], actual: str) -> bool:
    pattern = ""
    for line in expected:
        if line.strip() == "...":
            pattern += r"(?:[^\n]*\n)*?"
        else:
            pattern += "[^\n]*?".join(re.escape(p) for p in line.rstrip().split("...")) + r"\n"
    text = "".join(l.rstrip() + "\n" for l in actual.splitlines())
    return re.fullmatch(pattern, text) is not None if pattern else text == ""


# ------------------------------------------------------------------ sessions

def _workdir(tmp: Path) -> Path:
    work = tmp / "clone"
    for d in ("examples", "fixtures", "docs"):
        shutil.copytree(ROOT / d, work / d, ignore=shutil.ignore_patterns("__pycache__"))
    (work / "home").mkdir()
    # The code as it is now (package and enclave program, laid out as installed), first on
    # PYTHONPATH: the dev measurement cannot change under a session that pins it in a key
    # policy, even while the working tree is being edited.
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "sops_enclave", tmp / "code" / "sops_enclave", ignore=ignore)
    shutil.copytree(ROOT / "enclave", tmp / "code" / "sops_enclave" / "enclave", ignore=ignore,
                    dirs_exist_ok=True)
    return work


def _env(work: Path) -> dict[str, str]:
    # A reader's shell: nothing of ours, and not a sub-make of `make test` (make would print
    # "Entering directory" lines that the reader does not see).
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "SOPS_", "XDG_", "GIT_", "GNUPG", "PYTEST"))
           and k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES")}
    env.update(HOME=str(work / "home"), LANG="C.UTF-8", LC_ALL="C.UTF-8", TZ="UTC",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHON=sys.executable, GIT_CONFIG_NOSYSTEM="1", PAGER="cat",
               TMPDIR=str(work / "tmp"), DOCS_CLONE=str(work),
               PYTHONPATH=str(work.parent / "code"))
    (work / "tmp").mkdir(exist_ok=True)
    return env


@dataclass
class Step:
    block: Block
    command: Command | None
    out: Path


def _script(docs: list[str], out: Path) -> tuple[str, list[Step]]:
    parts = ['set -e -o pipefail\n']
    steps: list[Step] = []
    for doc in docs:
        parts.append('cd "$DOCS_CLONE"\n')   # each document starts in the clone
        bs = blocks(doc)
        for k, b in enumerate(bs):
            if b.lang not in RUN_LANGS or b.skip_reason():
                continue
            after = bs[k + 1] if k + 1 < len(bs) and bs[k + 1].is_output else None
            if b.lang == "console":
                assert after is None, f"{doc}:{b.line}: a console block shows its own output"
                items = [(c, c.text) for c in console_commands(b)]
            elif b.lang == "python":
                src = out / f"{len(steps)}.py"
                src.write_text("\n".join(b.body) + "\n")
                items = [(Command(b.first, after.body) if after else None, f'"$PYTHON" {src}')]
            else:
                items = [(Command(b.first, after.body) if after else None, "\n".join(b.body))]
            for cmd, text in items:
                n = len(steps)
                steps.append(Step(b, cmd, out / f"{n}.out"))
                parts.append(f"echo {n} > {out}/current\n{{\n{text}\n}} > {out}/{n}.out 2>&1\n")
    parts.append(f"echo done > {out}/current\n")
    return "".join(parts), steps


def _stop_stacks(work: Path) -> None:
    for run_json in work.rglob("run.json"):
        try:
            import json

            pid = json.loads(run_json.read_text())["pid"]
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue
        import select

        select.select([fd], [], [], 30)
        os.close(fd)


def run_session(docs: list[str], tmp: Path) -> tuple[list[Step], int, str]:
    work = _workdir(tmp)
    out = tmp / "out"
    out.mkdir()
    script, steps = _script(docs, out)
    (out / "session.sh").write_text(script)
    try:
        p = subprocess.run(["bash", str(out / "session.sh")], cwd=work, env=_env(work),
                           capture_output=True, timeout=900)
    finally:
        _stop_stacks(work)
    return steps, p.returncode, (out / "current").read_text().strip()


def _where(step: Step) -> str:
    what = step.command.text if step.command else step.block.first
    if step.block.lang != "console":
        what = step.block.first
    return f"{step.block.doc}:{step.block.line} ({what[:100]!r})"


def _runnable(docs: list[str]) -> list[Block]:
    return [b for d in docs for b in blocks(d) if b.lang in RUN_LANGS and not b.skip_reason()]


def _sessions() -> list[list[str]]:
    """The shared session, then one per other document that has a block to run."""
    return [SHARED] + [[d] for d in documents() if d not in SHARED and _runnable([d])]


@pytest.mark.slow
@pytest.mark.parametrize("docs", _sessions(), ids=lambda d: "+".join(d))
def test_blocks_run(docs, tmp_path):
    assert _runnable(docs), docs
    if not shutil.which("ssh-keygen") and "docs/quickstart.md" in docs:
        pytest.skip("ssh-keygen is not installed (apt-get install openssh-client)")
    steps, rc, current = run_session(docs, tmp_path)
    if current != "done":
        step = steps[int(current)]
        output = step.out.read_text(errors="replace") if step.out.exists() else ""
        pytest.fail(f"{_where(step)} failed (exit {rc}):\n{output[-3000:]}")
    bad = []
    for step in steps:
        if step.command is None:
            continue
        actual = step.out.read_text(errors="replace")
        if not output_matches(step.command.expected, actual):
            bad.append(f"{_where(step)}\n--- expected\n" + "\n".join(step.command.expected)
                       + f"\n--- actual\n{actual}")
    assert not bad, "\n\n".join(bad)


def test_every_block_is_run_or_marked():
    """Counts per document; every runnable block runs unless marked (with a reason)."""
    counts = {}
    for doc in documents():
        bs = blocks(doc)
        runnable = [b for b in bs if b.lang in RUN_LANGS]
        marked = [b for b in runnable if b.not_run]
        elsewhere = [b for b in runnable if not b.not_run and b.skip_reason()]
        counts[doc] = (len(runnable) - len(marked) - len(elsewhere), len(marked),
                       len(elsewhere), len(bs) - len(runnable))
        for k, b in enumerate(bs):
            assert not (b.not_run and b.lang not in RUN_LANGS), \
                f"{doc}:{b.line}: a not-run marker on a block that would not run anyway"
            if b.is_output:   # checked output of the sh/python block just before it
                assert b.lang == "text" and k > 0 and bs[k - 1].lang in RUN_LANGS - {"console"} \
                    and not bs[k - 1].skip_reason(), f"{doc}:{b.line}: output of what?"
        if doc in NOT_RUN:
            assert len(marked) == NOT_RUN[doc], (doc, [(b.line, b.not_run) for b in marked])
        else:
            assert not marked, f"{doc}: new not-run markers; count them in NOT_RUN"
    for doc, table in ELSEWHERE.items():
        firsts = {b.first for b in blocks(doc)}
        for first in table:
            assert first == "*" or first in firsts, f"{doc}: no block starts {first!r}"
    print("\n".join(f"{d}: {r} run, {m} marked not run, {e} maintained elsewhere and not "
                    f"run, {o} not shell/python" for d, (r, m, e, o) in counts.items()))
    assert counts["docs/quickstart.md"][0] >= 10


def test_no_reference_to_shared():
    """Nothing a user reads or runs names ../shared: no Markdown link or code block in any
    Markdown file, and no mention at all in the README, docs/ and examples/."""
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True,
                             text=True).stdout.split()
    found = []
    for name in tracked + [p for p in ("docs/quickstart.md", "docs/manifest.md")
                           if p not in tracked]:
        path = ROOT / name
        if not path.is_file():
            continue
        user_facing = name == "README.md" or name.startswith(("docs/", "examples/"))
        if name.endswith(".md"):
            text = path.read_text(errors="replace")
            if user_facing and "../shared" in text:
                found.append(name)
            if re.search(r"\]\(\s*\.\./shared", text):
                found.append(f"{name}: link")
            for b in blocks(name) if (ROOT / name).exists() else []:
                if any("../shared" in l for l in b.body):
                    found.append(f"{name}:{b.line}: code block")
        elif user_facing and "../shared" in path.read_text(errors="replace"):
            found.append(name)
    assert not found, found


def test_output_matching_rules():
    assert output_matches(["a ... c"], "a b c\n")
    assert not output_matches(["a ... c"], "a b d\n")
    assert output_matches(["x", "...", "z"], "x\n1\n2\nz\n")
    assert output_matches(["x", "...", "z"], "x\nz\n")
    assert not output_matches(["x", "z"], "x\ny\nz\n")
    assert output_matches([], "")
    assert not output_matches([], "unexpected\n")
    b = Block("d.md", 1, "console", ["$ echo a \\", "  b", "a b", "$ true"])
    cmds = console_commands(b)
    assert [c.text for c in cmds] == ["echo a \\\n  b", "true"]
    assert cmds[0].expected == ["a b"] and cmds[1].expected == []
