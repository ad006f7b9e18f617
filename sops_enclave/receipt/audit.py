"""``sops-enclave audit``: verify every output that has a receipt under some paths and write
one report an auditor can hand on.

Each ``<output>.receipt.json`` found under the paths (directories are searched, ``.git`` is
skipped; a file argument is an output or a receipt) is checked with
:func:`~.verifier.verify_receipt` under one :class:`~.policy.ReceiptPolicy`, built exactly as
``verify`` builds it (``--policy FILE`` or ``--pcr``, plus ``--signer``,
``--enclave-policy``, ``--ref``, ``--not-before``, ``--allow-dev``,
``--allow-unrestricted``). The output's path compared with the receipt's subject is its path
relative to ``--repo DIR`` (or to its git work tree).

The report has a summary table (output, target, verdict, commit, signer, image PCR0, KMS
keys, when), every failure with its failed check and reason, and the provenance (commit
and inputs -> enclave run -> outputs): drawn as an SVG in the HTML report (no script),
listed in the Markdown one, as nodes and edges in the JSON one. Receipt strings appear only
once the receipt's signature has verified (a receipt that fails before its signature check
contributes its path and the failure, nothing it claims), and every one is escaped for the
format it lands in (control and bidi characters as ``\\x..``, then HTML or Markdown). Exit
status 0 only when at least one receipt was found and every one verified::

    sops-enclave audit deploy --repo . --policy audit-policy.yaml --format html -o audit.html
"""

from __future__ import annotations

import argparse
import html
import json
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence, TextIO

from .. import __version__
from ..errors import CouldNotWriteOutputFile, SopsError
from .attestation import AttestationDocument, AttestationError, parse_attestation
from .builder import receipt_path
from .cli import _arg_pcr, _arg_ref, _arg_time, _policy_for
from .errors import ReceiptError
from .git_check import SubjectPathError, repo_toplevel, subject_name
from .nitro_root import fingerprint
from .policy import ReceiptPolicy
from .safe_text import escape
from .statement import Statement
from .verifier import MAX_RECEIPT_SIZE, RECEIPT_STEPS, parse_receipt, verify_receipt

__all__ = ["register", "cmd_audit", "AuditItem", "AuditReport", "find_receipts", "audit",
           "render_markdown", "render_html", "render_json", "provenance_svg"]

RECEIPT_SUFFIX = ".receipt.json"
FORMATS = ("md", "html", "json")


@dataclass
class AuditItem:
    """One output: where it is, the verdict, and (when the signature verified) what its
    receipt says. ``statement`` is None when the receipt failed before its signature check."""

    output: str
    receipt: str
    subject: str | None = None
    ok: bool = False
    dev: bool = False
    failed_step: int | None = None
    failed_check: str = ""
    reason: str = ""
    checks: list[tuple[int, str, str, str]] = field(default_factory=list)
    statement: Statement | None = None
    attestation: AttestationDocument | None = None

    @property
    def verdict(self) -> str:
        if self.ok:
            return "verified (dev)" if self.dev else "verified"
        if self.failed_step is None:
            return "FAILED"
        return f"FAILED [{self.failed_step}] {self.failed_check}"

    def _ip(self) -> Mapping[str, Any]:
        if self.statement is None:
            return {}
        bd = self.statement.data.get("predicate", {}).get("buildDefinition", {})
        ip = bd.get("internalParameters", {}) if isinstance(bd, dict) else {}
        return ip if isinstance(ip, dict) else {}

    @property
    def input_kms(self) -> list[str]:
        """KMS keys that unwrapped input data keys (in the receipt's order, distinct)."""
        out: list[str] = []
        for k in self._ip().get("kms") or []:
            arn = k.get("arn") if isinstance(k, dict) else None
            if isinstance(arn, str) and arn not in out:
                out.append(arn)
        return out

    @property
    def output_recipients(self) -> list[str]:
        r = self._ip().get("recipients") or {}
        if not isinstance(r, dict):
            return []
        kms = [k.get("arn") for k in r.get("kms") or [] if isinstance(k, dict)]
        return [str(x) for x in kms + list(r.get("age") or []) + list(r.get("pgp") or [])
                + list(r.get("hcVault") or []) if isinstance(x, str)]

    @property
    def when(self) -> str:
        if self.statement is None:
            return ""
        meta = self.statement.data.get("predicate", {}).get("runDetails", {})
        meta = meta.get("metadata", {}) if isinstance(meta, dict) else {}
        value = meta.get("finishedOn") or meta.get("startedOn") if isinstance(meta, dict) else ""
        return value if isinstance(value, str) else ""

    @property
    def pcr0(self) -> str:
        if self.attestation is None or 0 not in self.attestation.pcrs:
            return ""
        return self.attestation.pcrs[0].hex()

    @property
    def run_id(self) -> str:
        """One enclave run: its request nonce (bound into the attestation), else the
        fingerprint of the run's signing key."""
        if self.statement is not None and self.statement.request_nonce:
            return self.statement.request_nonce
        if self.attestation is not None and self.attestation.public_key:
            return fingerprint(self.attestation.public_key)
        return ""

    @property
    def signer(self) -> str:
        st = self.statement
        if st is None:
            return ""
        if st.signer is None:
            return "none (unrestricted run)" if st.unrestricted else "none"
        return f"{st.signer.principal} ({st.signer.fingerprint})"

    def to_json(self) -> dict[str, Any]:
        st = self.statement
        obj: dict[str, Any] = {
            "output": self.output, "receipt": self.receipt, "subject": self.subject,
            "ok": self.ok, "dev": self.dev, "verdict": self.verdict,
            "failure": None if self.ok else {"step": self.failed_step,
                                             "check": self.failed_check,
                                             "reason": self.reason},
            "checks": [{"step": n, "name": name, "status": status, "detail": detail}
                       for n, name, status, detail in self.checks]}
        if st is not None:
            obj.update({
                "target": st.target, "commit": st.commit, "repository": st.repository,
                "manifest": {"path": st.manifest_path, "blob": st.manifest_blob},
                "inputs": [{"path": i.path, "blob": i.git_blob, "sha256": i.sha256,
                            "key_source": i.key_source} for i in st.inputs],
                "signer": None if st.signer is None else {
                    "principal": st.signer.principal, "key_type": st.signer.key_type,
                    "fingerprint": st.signer.fingerprint},
                "unrestricted": st.unrestricted,
                "enclave_policy_sha256": st.enclave_policy_sha256,
                "input_kms_keys": self.input_kms, "output_recipients": self.output_recipients,
                "pcr0": self.pcr0, "module_id": self.attestation.module_id
                if self.attestation else None,
                "run": self.run_id, "finished": self.when})
        return obj


@dataclass
class AuditReport:
    items: list[AuditItem]
    policy: ReceiptPolicy
    allow_dev: bool
    repo: str | None
    paths: list[str]
    generated: str = field(default_factory=lambda: datetime.now(timezone.utc)
                           .replace(microsecond=0).isoformat())

    @property
    def ok(self) -> bool:
        return bool(self.items) and all(i.ok for i in self.items)

    @property
    def verified(self) -> int:
        return sum(i.ok for i in self.items)

    def summary(self) -> str:
        if not self.items:
            return "no receipt found under " + ", ".join(self.paths)
        failed = len(self.items) - self.verified
        return (f"{self.verified} of {len(self.items)} output(s) verified"
                + (f", {failed} FAILED" if failed else ""))


# ------------------------------------------------------------------ finding and checking

def find_receipts(paths: Sequence[str]) -> list[tuple[str, str]]:
    """``[(output, receipt)]`` for the paths: a directory is searched for
    ``*.receipt.json`` (``.git`` skipped), a file is an output or a receipt. Sorted, distinct."""
    found: dict[str, str] = {}
    for p in paths:
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if d != ".git")
                for name in files:
                    if name.endswith(RECEIPT_SUFFIX) and len(name) > len(RECEIPT_SUFFIX):
                        r = os.path.join(root, name)
                        found.setdefault(os.path.normpath(r[:-len(RECEIPT_SUFFIX)]),
                                         os.path.normpath(r))
        elif p.endswith(RECEIPT_SUFFIX):
            found.setdefault(os.path.normpath(p[:-len(RECEIPT_SUFFIX)]), os.path.normpath(p))
        else:
            found.setdefault(os.path.normpath(p), os.path.normpath(receipt_path(p)))
    return sorted(found.items())


def _expected_subject(output: str, repo: str | None) -> str:
    root = repo
    if root is None:
        top = repo_toplevel(os.path.dirname(os.path.abspath(output)))
        if top is None:
            raise SubjectPathError(f"{output} is not inside a git work tree: pass --repo DIR "
                                   "(the repository it belongs to)")
        root = str(top)
    return subject_name(output, root)


def _check(output: str, receipt: str, policy: ReceiptPolicy, allow_dev: bool,
           repo: str | None) -> AuditItem:
    item = AuditItem(output=output, receipt=receipt)

    def fail(reason: str, step: int | None = None, check: str = "") -> AuditItem:
        item.failed_step, item.failed_check, item.reason = step, check, reason
        return item

    try:
        raw = _read_bytes(receipt, MAX_RECEIPT_SIZE + 1)
    except OSError as e:
        return fail(f"no readable receipt ({e.strerror or e})")
    try:
        data = _read_bytes(output)
    except OSError as e:
        return fail(f"the output is missing or unreadable ({e.strerror or e})")
    try:
        item.subject = _expected_subject(output, repo)
    except SubjectPathError as e:
        return fail(str(e))
    try:
        result = verify_receipt(raw, data, policy, allow_dev=allow_dev, repo=repo,
                                expected_subject=item.subject)
    except ReceiptError as e:
        item.dev = e.dev
        item.checks = _checks({**e.completed, e.step: ("FAILED", e.reason)})
        if e.step > 5:
            # Steps 1-5 passed: the attestation chains to the pinned root and the
            # statement is signed by the attested key, so what it says is the enclave's.
            parsed = parse_receipt(raw)
            item.statement = parsed.statement
            try:
                item.attestation = parse_attestation(parsed.attestation)
            except AttestationError:
                item.attestation = None
        return fail(e.reason, e.step, e.check)
    item.ok, item.dev = True, result.dev
    item.statement, item.attestation = result.statement, result.attestation
    item.checks = _checks(dict(result.details))
    return item


def _read_bytes(path: str, limit: int | None = None) -> bytes:
    with open(path, "rb") as f:
        return f.read() if limit is None else f.read(limit)


def _checks(results: Mapping[int, tuple[str, str]]) -> list[tuple[int, str, str, str]]:
    return [(n, name, *results.get(n, ("not run", ""))) for n, name in RECEIPT_STEPS]


def audit(paths: Sequence[str], policy: ReceiptPolicy, *, allow_dev: bool = False,
          repo: str | None = None) -> AuditReport:
    """Check every output with a receipt under ``paths``."""
    items = [_check(o, r, policy, allow_dev, repo) for o, r in find_receipts(paths)]
    return AuditReport(items, policy, allow_dev, repo, list(paths))


# ------------------------------------------------------------------ escaping

def _h(text: Any) -> str:
    """For HTML and SVG: controls escaped visibly, then HTML-escaped."""
    return html.escape(escape(str(text)), quote=True)


def _md(text: Any) -> str:
    """For Markdown (table cells included): a code span, so nothing in it is a link, an
    emphasis or HTML; controls escaped visibly, ``|`` escaped (GFM splits table cells on it
    even inside code spans). Empty text stays empty."""
    s = escape(str(text)).replace("|", "\\|")
    if not s:
        return ""
    run = longest = 0
    for c in s:
        run = run + 1 if c == "`" else 0
        longest = max(longest, run)
    fence = "`" * (longest + 1)
    pad = " " if s.startswith("`") or s.endswith("`") or s.startswith(" ") else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def _short(value: str, n: int = 16) -> str:
    return value if len(value) <= n else value[:n] + "..."


# ------------------------------------------------------------------ the provenance graph

@dataclass
class _Node:
    key: tuple[str, ...]
    column: int
    lines: list[str]
    title: str
    kind: str


def provenance(items: Sequence[AuditItem]) -> tuple[list[_Node], list[tuple[tuple[str, ...],
                                                                           tuple[str, ...]]]]:
    """Nodes (commits, manifests and inputs, enclave runs, outputs) and edges
    (commit -> file -> run -> output). An output whose statement is unverified stands alone."""
    nodes: dict[tuple[str, ...], _Node] = {}
    edges: list[tuple[tuple[str, ...], tuple[str, ...]]] = []

    def node(key: tuple[str, ...], column: int, lines: list[str], title: str,
             kind: str) -> tuple[str, ...]:
        nodes.setdefault(key, _Node(key, column, lines, title, kind))
        return key

    def edge(a: tuple[str, ...], b: tuple[str, ...]) -> None:
        if (a, b) not in edges:
            edges.append((a, b))

    for it in items:
        out = node(("output", it.output), 3, [it.output, it.verdict],
                   f"{it.output}: {it.verdict}" + (f": {it.reason}" if it.reason else ""),
                   "ok" if it.ok else "failed")
        st = it.statement
        if st is None:
            nodes[out].lines.append("(receipt not verified)")
            continue
        signer = st.signer.principal if st.signer else ("unrestricted" if st.unrestricted
                                                         else "unsigned")
        commit = node(("commit", st.commit), 0, [f"commit {st.commit[:12]}",
                                                 f"signed: {_short(signer, 28)}"],
                      f"commit {st.commit} of {st.repository} (host-asserted); signer "
                      f"{it.signer}", "commit")
        run = node(("run", it.run_id), 2,
                   ["enclave run" + (" (dev)" if it.dev else ""),
                    f"PCR0 {_short(it.pcr0)}", _short(it.when, 19)],
                   f"enclave run {it.run_id}; PCR0 {it.pcr0}; module "
                   f"{it.attestation.module_id if it.attestation else '?'}; {it.when}", "run")
        files = [("manifest", st.manifest_path, st.manifest_blob)] + \
            [("input", i.path, i.git_blob) for i in st.inputs]
        for role, path, blob in files:
            f = node(("file", st.commit, path, blob), 1,
                     [path, f"{role} blob {blob[:10]}"],
                     f"{role} {path} at {st.commit[:12]}, blob {blob}", role)
            edge(commit, f)
            edge(f, run)
        edge(run, out)
    return list(nodes.values()), edges


_CHAR_W, _LINE_H, _PAD, _GAP_Y, _GAP_X = 7.2, 15, 8, 14, 56
_FILL = {"commit": "#eef2fb", "manifest": "#f5f5f5", "input": "#f5f5f5", "run": "#fff6e0",
         "ok": "#e6f4ea", "failed": "#fde8e8"}
_STROKE = {"ok": "#2e7d32", "failed": "#c62828"}


def provenance_svg(items: Sequence[AuditItem]) -> str:
    """The provenance graph as standalone SVG (left to right: commits, files, enclave runs,
    outputs). Every label is escaped; hovering a node shows its full text (``<title>``)."""
    nodes, edges = provenance(items)
    cols: dict[int, list[_Node]] = {c: [] for c in range(4)}
    for n in nodes:
        cols[n.column].append(n)
    widths = {c: max([len(line) for n in ns for line in n.lines] + [8]) * _CHAR_W + 2 * _PAD
              for c, ns in cols.items()}
    xs, x = {}, 10.0
    for c in range(4):
        xs[c] = x
        x += widths[c] + _GAP_X
    pos: dict[tuple[str, ...], tuple[float, float, float, float]] = {}
    height = 0.0
    for c, ns in cols.items():
        y = 34.0
        for n in ns:
            h = float(len(n.lines) * _LINE_H + 2 * _PAD)
            pos[n.key] = (xs[c], y, widths[c], h)
            y += h + _GAP_Y
        height = max(height, y)
    width = x - _GAP_X + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
           f'height="{height + 10:.0f}" viewBox="0 0 {width:.0f} {height + 10:.0f}" '
           'font-family="monospace" font-size="12" role="img" '
           'aria-label="provenance: commits and inputs, enclave runs, outputs">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
           'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
           'fill="#555"/></marker></defs>']
    for c, label in enumerate(("commit", "manifest and inputs", "enclave run", "outputs")):
        out.append(f'<text x="{xs[c]:.0f}" y="20" font-weight="bold">{_h(label)}</text>')
    for a, b in edges:
        ax, ay, aw, ah = pos[a]
        bx, by, _, bh = pos[b]
        x1, y1, x2, y2 = ax + aw, ay + ah / 2, bx, by + bh / 2
        mid = (x1 + x2) / 2
        out.append(f'<path d="M{x1:.1f},{y1:.1f} C{mid:.1f},{y1:.1f} {mid:.1f},{y2:.1f} '
                   f'{x2:.1f},{y2:.1f}" fill="none" stroke="#777" stroke-width="1.2" '
                   'marker-end="url(#arrow)"/>')
    for n in nodes:
        x0, y0, w, h = pos[n.key]
        stroke = _STROKE.get(n.kind, "#667")
        out.append(f'<g><title>{_h(n.title)}</title>'
                   f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{w:.1f}" height="{h:.1f}" rx="6" '
                   f'fill="{_FILL.get(n.kind, "#fff")}" stroke="{stroke}"/>')
        for k, line in enumerate(n.lines):
            weight = ' font-weight="bold"' if k == 0 else ""
            out.append(f'<text x="{x0 + _PAD:.1f}" y="{y0 + _PAD + (k + 1) * _LINE_H - 3:.1f}"'
                       f'{weight}>{_h(line)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)


# ------------------------------------------------------------------ the reports

_COLUMNS = ("output", "target", "verdict", "commit", "signer", "image PCR0", "KMS keys", "when")


def _row(it: AuditItem) -> list[str]:
    st = it.statement
    return [it.output, st.target if st else "", it.verdict, st.commit[:12] if st else "",
            it.signer, _short(it.pcr0, 24), ", ".join(it.input_kms), it.when]


def _policy_lines(report: AuditReport) -> list[str]:
    p = report.policy
    lines = []
    if p.pcrs is not None:
        for n, s in enumerate(p.pcrs.allowed, 1):
            lines.append(f"allowed PCR set {n}: " + ", ".join(f"PCR{i}={v.hex()}"
                                                              for i, v in sorted(s.items())))
    lines.append(f"root: {p.root_fingerprint}" + (f"; dev receipts accepted (dev root "
                                                   f"{p.dev_root_fingerprint})"
                                                   if report.allow_dev else ""))
    if p.signers:
        lines.append("commit signers: " + ", ".join(p.signers))
    if p.enclave_policy_sha256:
        lines.append("enclave policies (sha256): " + ", ".join(p.enclave_policy_sha256))
    if p.allow_unrestricted:
        lines.append("unrestricted dev runs accepted")
    if report.repo:
        lines.append(f"repository: {report.repo}" + (f"; commits reachable from {p.ref}"
                                                      if p.ref else "")
                     + (f"; committed at or after {p.not_before.isoformat()}"
                        if p.not_before else ""))
    return lines


def render_markdown(report: AuditReport) -> str:
    out = ["# sops-enclave audit report", "",
           f"**{report.summary()}.** Generated {report.generated} by sops-enclave "
           f"{__version__} over {', '.join(_md(p) for p in report.paths)}.", "",
           "## Policy", ""]
    out += [f"- {_md(line)}" for line in _policy_lines(report)]
    out += ["", "## Outputs", "", "| " + " | ".join(_COLUMNS) + " |",
            "|" + "---|" * len(_COLUMNS)]
    for it in report.items:
        cells = [_md(c) for c in _row(it)]
        cells[2] = ("**FAILED**" + (f" [{it.failed_step}] {it.failed_check}"
                                   if it.failed_step is not None else "")
                    if not it.ok else it.verdict)
        out.append("| " + " | ".join(cells) + " |")
    failed = [i for i in report.items if not i.ok]
    out += ["", "## Failures", ""]
    if not failed:
        out.append("None: every receipt verified.")
    for it in failed:
        where = f"check [{it.failed_step}] {it.failed_check}" \
            if it.failed_step is not None else "before verification"
        out.append(f"- {_md(it.output)} ({where}): {_md(it.reason)}")
    out += ["", "## Provenance", "", "Commit and inputs -> enclave run -> outputs:", ""]
    runs: dict[str, list[AuditItem]] = {}
    for it in report.items:
        if it.statement is not None:
            runs.setdefault(it.run_id, []).append(it)
    for run_id, its in runs.items():
        out.append(f"- enclave run {_md(_short(run_id))} at {_md(its[0].when)}, image PCR0 "
                   f"{_md(_short(its[0].pcr0, 24))}")
        commits: list[tuple[str, str]] = []
        files: list[str] = []
        for i in its:
            assert i.statement is not None
            if (i.statement.commit, i.signer) not in commits:
                commits.append((i.statement.commit, i.signer))
            for f in [i.statement.manifest_path] + [x.path for x in i.statement.inputs]:
                if f not in files:
                    files.append(f)
        for commit, signer in commits:
            out.append(f"  - from commit {_md(commit)}, signed by {_md(signer)}")
        out.append("  - read " + ", ".join(_md(f) for f in files))
        out.append("  - wrote " + ", ".join(f"{_md(i.output)} ({i.verdict})" for i in its))
    alone = [i for i in report.items if i.statement is None]
    if alone:
        out.append("- not verified far enough to say where they come from: "
                   + ", ".join(_md(i.output) for i in alone))
    return "\n".join(out) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f3f3f3}td.ok{color:#2e7d32;font-weight:bold}
td.failed{color:#c62828;font-weight:bold}code,.mono{font-family:monospace}
.summary.ok{color:#2e7d32}.summary.failed{color:#c62828}svg{max-width:100%;height:auto}"""


def render_html(report: AuditReport) -> str:
    cls = "ok" if report.ok else "failed"
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           "<title>sops-enclave audit report</title>", f"<style>{_CSS}</style></head><body>",
           "<h1>sops-enclave audit report</h1>",
           f'<p class="summary {cls}"><strong>{_h(report.summary())}</strong></p>',
           f"<p>Generated {_h(report.generated)} by sops-enclave {_h(__version__)} over "
           f"<code>{_h(', '.join(report.paths))}</code>.</p>",
           "<h2>Policy</h2><ul>"]
    out += [f"<li class=\"mono\">{_h(line)}</li>" for line in _policy_lines(report)]
    out += ["</ul>", "<h2>Outputs</h2>", "<table><thead><tr>"
            + "".join(f"<th>{_h(c)}</th>" for c in _COLUMNS) + "</tr></thead><tbody>"]
    for it in report.items:
        cells = _row(it)
        row = []
        for k, c in enumerate(cells):
            kind = (' class="ok"' if it.ok else ' class="failed"') if k == 2 else \
                ' class="mono"' if k in (0, 3, 5, 6) else ""
            row.append(f"<td{kind}>{_h(c)}</td>")
        out.append("<tr>" + "".join(row) + "</tr>")
    out.append("</tbody></table>")
    failed = [i for i in report.items if not i.ok]
    out.append("<h2>Failures</h2>")
    if not failed:
        out.append("<p>None: every receipt verified.</p>")
    else:
        out.append("<ul>")
        for it in failed:
            where = (f"check [{it.failed_step}] {it.failed_check}"
                     if it.failed_step is not None else "before verification")
            out.append(f'<li><code>{_h(it.output)}</code> ({_h(where)}): {_h(it.reason)}</li>')
        out.append("</ul>")
    out += ["<h2>Provenance</h2>",
            "<p>Commit and inputs, the enclave run that read them, the outputs it wrote "
            "(green: verified, red: failed). Hover a box for its full text.</p>",
            provenance_svg(report.items),
            "<h2>Checks per output</h2>"]
    for it in report.items:
        out.append(f"<h3><code>{_h(it.output)}</code>: {_h(it.verdict)}</h3>")
        if not it.checks:
            out.append(f"<p>{_h(it.reason)}</p>")
            continue
        out.append("<table><tbody>")
        for n, name, status, detail in it.checks:
            out.append(f"<tr><td>[{n}] {_h(name)}</td><td>{_h(status)}</td>"
                       f"<td class=\"mono\">{_h(detail)}</td></tr>")
        out.append("</tbody></table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def render_json(report: AuditReport) -> str:
    nodes, edges = provenance(report.items)
    obj = {"ok": report.ok, "summary": report.summary(), "generated": report.generated,
           "tool_version": __version__, "paths": report.paths,
           "policy": _policy_lines(report), "outputs": [i.to_json() for i in report.items],
           "provenance": {"nodes": [{"id": "/".join(n.key), "kind": n.kind,
                                     "label": n.lines, "title": n.title} for n in nodes],
                          "edges": [["/".join(a), "/".join(b)] for a, b in edges]}}
    return json.dumps(obj, indent=2) + "\n"


# ------------------------------------------------------------------ the command

def register(subparsers: Any) -> None:
    """Add the ``audit`` subcommand to an argparse subparsers object."""
    a = subparsers.add_parser(
        "audit", help="verify every output with a receipt under PATHs and write one report",
        description="Verify every output that has a receipt (OUTPUT.receipt.json) under the "
                    "PATHs (default .) with the same checks and flags as verify, and write a "
                    "report: a summary table, each failure with its failed check, and the "
                    "provenance (commit and inputs -> enclave run -> outputs; an SVG graph "
                    "in --format html). Exit status 0 only when every receipt verified.")
    a.add_argument("paths", nargs="*", metavar="PATH", help="directories to search, outputs "
                   "or receipts (default: the current directory)")
    g = a.add_mutually_exclusive_group()
    g.add_argument("--policy", metavar="FILE", help="YAML policy file, as for verify")
    g.add_argument("--pcr", action="append", default=[], type=_arg_pcr, metavar="N=HEX",
                   help="require PCR N to equal HEX (repeatable)")
    a.add_argument("--repo", metavar="DIR", help="the git repository: check commits and input "
                   "blobs; output paths are taken relative to it")
    a.add_argument("--ref", type=_arg_ref, metavar="REF", help="with --repo: each commit must "
                   "be an ancestor of REF")
    a.add_argument("--not-before", type=_arg_time, metavar="ISO-8601",
                   help="with --repo: each commit must be committed at or after this")
    a.add_argument("--signer", action="append", default=[], metavar="PRINCIPAL|SHA256:FP",
                   help="the commit signer must be one of these (repeatable)")
    a.add_argument("--enclave-policy", action="append", default=[], metavar="FILE",
                   help="the runs must have enforced one of these enclave policy files")
    a.add_argument("--allow-dev", action="store_true",
                   help="accept receipts from the software NSM (dev root)")
    a.add_argument("--allow-unrestricted", action="store_true",
                   help="accept dev receipts of runs without an enclave policy")
    a.add_argument("--format", choices=FORMATS, default=None,
                   help="md, html or json (default: from -o's extension, else md)")
    a.add_argument("-o", "--output", metavar="FILE", help="write the report here (default: "
                   "standard output)")
    a.set_defaults(func=cmd_audit)


def _format(args: argparse.Namespace) -> str:
    if args.format:
        return str(args.format)
    ext = os.path.splitext(args.output or "")[1].lower()
    return {".html": "html", ".htm": "html", ".json": "json"}.get(ext, "md")


def cmd_audit(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Handler of ``audit``: check, write the report, print a one-line summary when the
    report goes to a file. 0 when every receipt verified, 1 otherwise."""
    out = out or sys.stdout
    if args.repo is not None and not os.path.isdir(args.repo):
        raise SopsError(f"--repo {args.repo}: no such directory")
    paths = list(args.paths) or ["."]
    for p in paths:
        if not os.path.exists(p):
            raise SopsError(f"{escape(p)}: no such file or directory")
    policy = _policy_for(args)
    report = audit(paths, policy, allow_dev=args.allow_dev, repo=args.repo)
    fmt = _format(args)
    text = {"md": render_markdown, "html": render_html, "json": render_json}[fmt](report)
    if args.output:
        try:
            tmp = f"{args.output}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, args.output)
        except OSError as e:
            raise CouldNotWriteOutputFile(f"{args.output}: {e.strerror or e}") from None
        out.write(f"audit: {escape(report.summary())}; {fmt} report written to "
                  f"{escape(args.output)}\n")
    else:
        out.write(text)
    return 0 if report.ok else 1
