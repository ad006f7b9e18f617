"""`sops-enclave audit` (issue #15) on a demo-like repository: four outputs packed by the dev
enclave under an enclave policy from an SSH-signed commit, then one output tampered with.
Also: the receipts read by independent libraries (securesystemslib's DSSE, the in-toto
attestation bindings), not by this project's code.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import shutil
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import run
from pack_world import git, policy_world

TOOL = [sys.executable, "-m", "sops_enclave"]
# A principal full of Markdown and HTML: every report must show it as text.
PRINCIPAL = "re|`l`*<b>ease</b>@example.com"
ORIGIN = "https://git.example.com/<img src=x onerror=alert(1)>|[x](javascript:alert(1))"

MANIFEST = """version: 1
matrix: {{service: [api, worker], env: [staging, prod]}}
outputs:
  - target: "{{service}}/{{env}}"
    path: "deploy/{{service}}/{{env}}.enc.json"
    inputs:
      - secrets/common.enc.yaml
      - {{file: "secrets/{{env}}.enc.yaml", extract: '["{{service}}"]'}}
    encrypt:
      kms: ["{runtime}"]
      encryption_context: {{service: "{{service}}", env: "{{env}}"}}
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory, base_env):
    tmp = tmp_path_factory.mktemp("audit")
    with policy_world(tmp, base_env, principal=PRINCIPAL) as w:
        env, gated, runtime, key = w["env"], w["gated"], w["runtime"], w["key"]
        policy, pcr0 = w["policy"], w["pcr0"]
        repo = tmp / "repo"
        (repo / "secrets").mkdir(parents=True)
        for name, text in (("common", b"db:\n    host: db.internal\n"),
                           ("staging", b"api:\n    token: s-1\nworker:\n    queue: s-q\n"),
                           ("prod", b"api:\n    token: p-1\nworker:\n    queue: p-q\n")):
            src = tmp / f"{name}.yaml"
            src.write_bytes(text)
            p = run(TOOL + ["encrypt", "--kms", gated, "--output",
                            str(repo / "secrets" / f"{name}.enc.yaml"), str(src)], env)
            assert p.returncode == 0, p.stderr
        (repo / ".sops-enclave.yaml").write_text(MANIFEST.format(runtime=runtime))
        git(repo, "init", "-q", "-b", "main")
        git(repo, "remote", "add", "origin", ORIGIN)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-S", "-m", "secrets", key=key)
        p = run(TOOL + ["exec", "--repo", str(repo), "--enclave-policy", str(policy)], env)
        assert p.returncode == 0, p.stderr
        yield {"env": env, "repo": repo, "pcr0": pcr0, "policy": policy, "gated": gated,
               "runtime": runtime, "commit": git(repo, "rev-parse", "HEAD").decode().strip()}


OUTPUTS = ["deploy/api/prod.enc.json", "deploy/api/staging.enc.json",
           "deploy/worker/prod.enc.json", "deploy/worker/staging.enc.json"]


@pytest.fixture
def repo(world, tmp_path):
    """A copy of the packed repository each test may tamper with."""
    dest = tmp_path / "repo"
    shutil.copytree(world["repo"], dest, symlinks=True)
    return dest


def audit(world, repo: Path, *args: str, cwd: Path | None = None):
    return run(TOOL + ["audit", "--allow-dev", f"--pcr=0={world['pcr0']}", "--repo", str(repo),
                       "--enclave-policy", str(world["policy"]), *args], world["env"],
               cwd=cwd or repo)


_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def _md_rows(text: str) -> list[list[str]]:
    rows = [l for l in text.splitlines() if l.startswith("| ") and "---" not in l]
    return [[c.strip() for c in _CELL_SPLIT.split(r)[1:-1]] for r in rows[1:]]


def test_every_output_verified_markdown(world, repo):
    p = audit(world, repo, "deploy")
    assert p.returncode == 0, p.stderr
    md = p.stdout.decode()
    assert md.startswith("# sops-enclave audit report\n")
    assert "**4 of 4 output(s) verified.**" in md
    rows = _md_rows(md)
    assert [r[0] for r in rows] == [f"`{o}`" for o in OUTPUTS]
    for r in rows:
        assert len(r) == 8 and r[2] == "verified (dev)"
        assert r[3] == f"`{world['commit'][:12]}`"
        assert r[6] == f"`{world['gated']}`"
    # The principal's | is escaped (the row still has 8 cells) and its HTML and Markdown
    # characters only ever appear inside code spans.
    outside = _CODE_SPAN.sub("", md)
    assert "<b>" not in outside and "onerror" not in outside and "*<" not in outside
    assert "None: every receipt verified." in md


def _tags(text: str) -> set[str]:
    class P(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tags: set[str] = set()

        def handle_starttag(self, tag, attrs):
            self.tags.add(tag)
            for name, _ in attrs:
                assert not name.startswith("on"), name

    p = P()
    p.feed(text)
    return p.tags


def test_tampered_output_html_report_with_graph(world, repo):
    victim = repo / "deploy/api/prod.enc.json"
    victim.write_bytes(victim.read_bytes().replace(b'"sops"', b'"sops" ', 1))
    p = audit(world, repo, "-o", "report.html")
    assert p.returncode == 1
    assert p.stdout.decode() == ("audit: 3 of 4 output(s) verified, 1 FAILED; html report "
                                 "written to report.html\n")
    page = (repo / "report.html").read_text()
    # Only the tags of the report itself: no script, no image, no link a receipt smuggled in.
    assert _tags(page) <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3",
                           "p", "strong", "code", "ul", "li", "table", "thead", "tbody", "tr",
                           "th", "td", "svg", "defs", "marker", "path", "text", "g", "rect"}
    assert "&lt;b&gt;ease&lt;/b&gt;" in page and "<b>ease" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    # The summary row of the tampered output, and its failure with the check that failed.
    assert re.search(r"<td class=\"mono\">deploy/api/prod.enc.json</td><td>api/prod</td>"
                     r"<td class=\"failed\">FAILED \[6\] subject</td>", page)
    assert page.count('<td class="ok">verified (dev)</td>') == 3
    assert ("<li><code>deploy/api/prod.enc.json</code> (check [6] subject): output sha256 "
            "is ") in page
    # The provenance graph: commit -> 4 files -> the run -> 4 outputs.
    svg = ET.fromstring(re.search(r"<svg.*?</svg>", page, re.S).group(0))
    ns = "{http://www.w3.org/2000/svg}"
    groups = svg.findall(f"{ns}g")
    assert len(groups) == 1 + 4 + 1 + 4
    assert len(svg.findall(f"{ns}path")) == 4 + 4 + 4
    by_label = {g.find(f"{ns}text").text: g for g in groups}
    assert set(OUTPUTS) <= set(by_label)
    assert {".sops-enclave.yaml", "secrets/common.enc.yaml", "secrets/staging.enc.yaml",
            "secrets/prod.enc.yaml", f"commit {world['commit'][:12]}",
            "enclave run (dev)"} <= set(by_label)
    bad = by_label["deploy/api/prod.enc.json"]
    assert bad.find(f"{ns}rect").get("stroke") == "#c62828"
    assert [t.text for t in bad.findall(f"{ns}text")][1] == "FAILED [6] subject"
    good = by_label["deploy/worker/prod.enc.json"]
    assert good.find(f"{ns}rect").get("stroke") == "#2e7d32"
    # Every edge starts and ends at a box.
    boxes = [(float(r.get("x")), float(r.get("y")), float(r.get("width")),
              float(r.get("height"))) for r in svg.iter(f"{ns}rect")]
    for path in svg.findall(f"{ns}path"):
        nums = [float(n) for n in re.findall(r"-?\d+\.?\d*", path.get("d"))]
        (x1, y1), (x2, y2) = nums[:2], nums[-2:]
        assert any(abs(x + w - x1) < 0.2 and y <= y1 <= y + h for x, y, w, h in boxes)
        assert any(abs(x - x2) < 0.2 and y <= y2 <= y + h for x, y, w, h in boxes)


def test_json_report(world, repo):
    victim = repo / "deploy/worker/staging.enc.json"
    victim.write_bytes(victim.read_bytes() + b"\n")
    p = audit(world, repo, "deploy", "--format", "json")
    assert p.returncode == 1
    report = json.loads(p.stdout)
    assert report["ok"] is False and report["summary"] == "3 of 4 output(s) verified, 1 FAILED"
    by_out = {o["output"]: o for o in report["outputs"]}
    assert set(by_out) == set(OUTPUTS)
    bad = by_out["deploy/worker/staging.enc.json"]
    assert bad["failure"]["step"] == 6 and bad["failure"]["check"] == "subject"
    assert bad["target"] == "worker/staging"      # signature verified: its claims are shown
    good = by_out["deploy/api/prod.enc.json"]
    assert good["ok"] and good["verdict"] == "verified (dev)"
    assert good["signer"]["principal"] == PRINCIPAL and good["repository"] == ORIGIN
    assert good["input_kms_keys"] == [world["gated"]]
    assert good["output_recipients"] == [world["runtime"]]
    assert good["pcr0"] == world["pcr0"] and good["commit"] == world["commit"]
    assert [i["path"] for i in good["inputs"]] == ["secrets/common.enc.yaml",
                                                  "secrets/prod.enc.yaml"]
    assert len(report["provenance"]["edges"]) == 12


def test_receipt_failing_its_signature_contributes_no_claims(world, repo):
    rpath = repo / "deploy/api/staging.enc.json.receipt.json"
    r = json.loads(rpath.read_bytes())
    st = json.loads(base64.b64decode(r["envelope"]["payload"]))
    st["predicate"]["buildDefinition"]["externalParameters"]["target"] = "EVIL-TARGET"
    r["envelope"]["payload"] = base64.b64encode(json.dumps(st).encode()).decode()
    rpath.write_text(json.dumps(r))
    for fmt in ("md", "html", "json"):
        p = audit(world, repo, "deploy", "--format", fmt)
        assert p.returncode == 1, p.stderr
        out = p.stdout.decode()
        assert "EVIL-TARGET" not in out
        assert "[4]" in out or '"step": 4' in out   # binding: user_data is not sha256(PAE)
    p = audit(world, repo, "deploy", "--format", "json")
    bad = {o["output"]: o for o in json.loads(p.stdout)["outputs"]}["deploy/api/staging.enc.json"]
    assert bad["failure"]["step"] == 4 and "target" not in bad


def test_missing_output_missing_receipt_and_nothing_found(world, repo, tmp_path):
    (repo / "deploy/worker/prod.enc.json").unlink()
    (repo / "notes.json").write_text("{}\n")
    p = audit(world, repo, "deploy", "notes.json", "--format", "json")
    assert p.returncode == 1
    by_out = {o["output"]: o for o in json.loads(p.stdout)["outputs"]}
    assert by_out["deploy/worker/prod.enc.json"]["failure"]["reason"].startswith(
        "the output is missing or unreadable")
    assert by_out["notes.json"]["failure"]["reason"].startswith("no readable receipt")
    assert sum(o["ok"] for o in by_out.values()) == 3
    empty = tmp_path / "empty"
    empty.mkdir()
    p = audit(world, repo, str(empty))
    assert p.returncode == 1 and b"no receipt found under" in p.stdout


def test_policy_flags_reach_every_receipt(world, repo):
    p = run(TOOL + ["audit", "deploy", "--allow-dev", f"--pcr=0={world['pcr0']}", "--repo",
                    str(repo), "--signer", "someone-else@example.com", "--format", "json"],
            world["env"], cwd=repo)
    assert p.returncode == 1
    outs = json.loads(p.stdout)["outputs"]
    assert {(o["failure"]["step"], o["failure"]["check"]) for o in outs} == {(10, "signer")}
    # Without --allow-dev the dev receipts fail at the attestation step.
    p = run(TOOL + ["audit", "deploy", f"--pcr=0={world['pcr0']}", "--repo", str(repo),
                    "--format", "json"], world["env"], cwd=repo)
    assert p.returncode == 1
    assert {o["failure"]["step"] for o in json.loads(p.stdout)["outputs"]} == {2}
    # A bad flag is a one-line error, not a report.
    p = run(TOOL + ["audit", "deploy", "--pcr=1=" + "ab" * 48], world["env"], cwd=repo)
    assert p.returncode != 0 and p.stdout == b"" and b"no image pinned" in p.stderr


def test_outputs_found_relative_to_their_work_tree_without_repo(world, repo):
    p = run(TOOL + ["audit", str(repo / "deploy" / "api"), "--allow-dev",
                    f"--pcr=0={world['pcr0']}", "--format", "json"], world["env"])
    assert p.returncode == 0, p.stdout + p.stderr
    outs = json.loads(p.stdout)["outputs"]
    assert [o["subject"] for o in outs] == ["deploy/api/prod.enc.json",
                                           "deploy/api/staging.enc.json"]


# ---------------------------------------------------------------- independent readers

def test_receipt_envelope_and_statement_read_by_independent_libraries(world):
    """securesystemslib verifies the DSSE signature with the key the attestation carries
    (read with cbor2), the in-toto attestation bindings parse the Statement and its SLSA
    Provenance v1 predicate: none of this project's code is used."""
    sslib_dsse = pytest.importorskip("securesystemslib.dsse")
    signer_mod = pytest.importorskip("securesystemslib.signer")
    pytest.importorskip("in_toto_attestation")
    import cbor2
    from cryptography.hazmat.primitives.serialization import load_der_public_key
    from google.protobuf import json_format
    from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
    from in_toto_attestation.v1 import statement_pb2
    from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
    from in_toto_attestation.v1.statement import Statement

    out = world["repo"] / "deploy/api/prod.enc.json"
    receipt = json.loads((world["repo"] / "deploy/api/prod.enc.json.receipt.json").read_text())
    # from_dict rewrites the dict it is given: each call gets its own copy.
    env = sslib_dsse.Envelope.from_dict(copy.deepcopy(receipt["envelope"]))
    assert env.payload_type == "application/vnd.in-toto+json"
    cose = cbor2.loads(base64.b64decode(receipt["attestation"]))
    cose = cose.value if isinstance(cose, cbor2.CBORTag) else cose
    doc = cbor2.loads(cose[2])
    key = signer_mod.SSlibKey.from_crypto(load_der_public_key(doc["public_key"]),
                                          keyid=next(iter(env.signatures)),
                                          scheme="ecdsa-sha2-nistp256")
    assert list(env.verify([key], 1)) == [key.keyid]
    assert doc["user_data"] == hashlib.sha256(env.pae()).digest()
    assert doc["pcrs"][0].hex() == world["pcr0"]
    # One changed payload byte: securesystemslib refuses it.
    forged = sslib_dsse.Envelope.from_dict(copy.deepcopy(receipt["envelope"]))
    forged.payload = forged.payload.replace(b"api/prod", b"api/prxd")
    with pytest.raises(Exception, match="(?i)verif|threshold"):
        forged.verify([key], 1)

    pb = json_format.Parse(env.payload, statement_pb2.Statement())
    Statement.copy_from_pb(pb).validate()
    assert pb.type == "https://in-toto.io/Statement/v1"
    assert pb.predicate_type == "https://slsa.dev/provenance/v1"
    assert pb.subject[0].name == "deploy/api/prod.enc.json"
    assert pb.subject[0].digest["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    # The predicate fits SLSA Provenance v1's schema (unknown fields would be refused).
    prov = json_format.ParseDict(json.loads(env.payload)["predicate"],
                                 provenance_pb2.Provenance())
    deps = prov.build_definition.resolved_dependencies
    for d in deps:
        ResourceDescriptor.copy_from_pb(d).validate()
    assert [d.name for d in deps if d.name] == [".sops-enclave.yaml",
                                               "secrets/common.enc.yaml",
                                               "secrets/prod.enc.yaml"]
    assert [d.digest["gitCommit"] for d in deps if d.uri] == [world["commit"]]
    assert prov.run_details.builder.id == "urn:sops-enclave:builder:dev-enclave:v1"
