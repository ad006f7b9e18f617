"""The measured bundle holds exactly the enclave program's code (issue: a house a maintainer
can change): its import closure, never the CLI or the dev stand-ins; the same from a checkout
and from the files a wheel installs; a `--help` edit changes no measurement."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sops_enclave.image.measure import (bundle_from, default_bundle, enclave_modules,
                                        installed_roots, measure_bundle)

ROOT = Path(__file__).resolve().parents[1]
NEVER_IN_IMAGE = ("sops_enclave/cli.py", "sops_enclave/cmdline.py", "sops_enclave/commands.py",
                  "sops_enclave/__main__.py",
                  "sops_enclave/receipt/cli.py", "sops_enclave/image/cli.py",
                  "sops_enclave/keyservice/", "sops_enclave/devtools/", "sops_enclave/api.py",
                  "sops_enclave/pack/host.py", "sops_enclave/enclave/bundle.py",
                  "sops_enclave/enclave/build.sh", "sops_enclave/enclave/README.md")


def _copy_checkout(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for d in ("sops_enclave", "enclave"):
        shutil.copytree(ROOT / d, dest / d, ignore=ignore)
    for f in ("setup.py", "setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, dest / f)
    return dest


def _checkout_bundle(root: Path) -> dict[str, bytes]:
    return bundle_from(root / "sops_enclave", root / "enclave")


def test_bundle_holds_the_enclave_program_and_not_the_cli_or_dev_tools():
    files = default_bundle()
    for must in ("sops_enclave/enclave/app.py", "sops_enclave/enclave/executor.py",
                 "sops_enclave/enclave/nsm.py", "sops_enclave/enclave/kms_forwarder.py",
                 "sops_enclave/enclave/Dockerfile", "sops_enclave/enclave/requirements.lock",
                 "sops_enclave/cipher.py", "sops_enclave/walk.py", "sops_enclave/cms.py",
                 "sops_enclave/pack/sshsig.py", "sops_enclave/pack/enclave_policy.py",
                 "sops_enclave/formats/yaml_store.py", "sops_enclave/receipt/builder.py"):
        assert must in files, must
    for never in NEVER_IN_IMAGE:
        assert not any(p.startswith(never) for p in files), never
    assert not any(p.endswith(".pyc") or "__pycache__" in p for p in files)


def test_every_module_the_bundle_holds_is_imported_by_the_enclave_program():
    """The closure follows import statements only from the entry modules: each bundled module
    is reachable, so nothing unrelated rides along (dropping an import shrinks the bundle)."""
    mods = enclave_modules(*installed_roots())
    assert "sops_enclave.enclave.executor" in mods and "sops_enclave.cli" not in mods
    only_app = enclave_modules(*installed_roots(), entries=["sops_enclave.enclave.nsm"])
    assert set(only_app) < set(mods)
    assert "sops_enclave.walk" not in only_app   # the NSM client needs no SOPS core


def test_runtime_imports_of_a_pack_are_all_in_the_bundle(tmp_path, age_key):
    """Run a real pack in a fresh interpreter (no devtools: a stub NSM) and compare the
    sops_enclave modules it loaded with the bundle."""
    from sops_enclave.pack import host

    repo = tmp_path / "repo"
    (repo / "s").mkdir(parents=True)
    env = dict(os.environ, SOPS_AGE_KEY=age_key[0])
    for fmt, text in (("yaml", b"a:\n    b: 1\n"), ("json", b'{"c": "d"}'),
                      ("env", b"E=f\n"), ("ini", b"[s]\nk = v\n")):
        src = tmp_path / f"in.{fmt}"
        src.write_bytes(text)
        p = subprocess.run([sys.executable, "-m", "sops_enclave", "encrypt", "--age",
                            age_key[1], "--output", str(repo / "s" / f"x.enc.{fmt}"), str(src)],
                           env=env, capture_output=True)
        assert p.returncode == 0, p.stderr
    (repo / ".sops-enclave.yaml").write_text(
        "version: 1\noutputs:\n  - target: t\n    path: out/t.enc.yaml\n    inputs:\n"
        "      - s/x.enc.yaml\n      - s/x.enc.json\n      - s/x.enc.env\n      - s/x.enc.ini\n"
        f"    encrypt:\n      age: [\"{age_key[1]}\"]\n")
    genv = dict(env, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@x", GIT_COMMITTER_NAME="t",
                GIT_COMMITTER_EMAIL="t@x", GIT_CONFIG_NOSYSTEM="1", HOME=str(tmp_path))
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "x"]):
        subprocess.run(["git", "-C", str(repo), *args], env=genv, check=True)
    opts = host.ExecOptions(repo=str(repo))
    commit, _, plans = host.plan_at_commit(opts)
    req = host.build_request(opts, commit, plans, {"SOPS_AGE_KEY": age_key[0]}, dev=True)
    import cbor2

    (tmp_path / "req.cbor").write_bytes(cbor2.dumps(req))
    script = r"""
import json, os, sys, cbor2
from sops_enclave.enclave import app, executor, nsm, kms_forwarder  # the image's entries
from sops_enclave.keys.age import parse_identities
class StubNSM:
    def attest(self, public_key=None, user_data=None, nonce=None): return b"stub-attestation"
    def get_random(self, n): return os.urandom(n)
req = cbor2.loads(open(sys.argv[1], "rb").read())
out = executor.run_pack(req, StubNSM(), lambda arn: None, dev=True,
                        age_identities=parse_identities(req["dev_age_identities"], "req"))
assert out["ok"] and len(out["outputs"]) == 1
print(json.dumps(sorted(m for m in sys.modules if m.startswith("sops_enclave"))))
"""
    p = subprocess.run([sys.executable, "-c", script, str(tmp_path / "req.cbor")],
                       capture_output=True, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr.decode()
    loaded = set(json.loads(p.stdout))
    bundled = set(enclave_modules(*installed_roots()))
    assert "sops_enclave.formats.ini" in loaded and "sops_enclave.keys.age" in loaded
    assert loaded <= bundled, sorted(loaded - bundled)


def test_wheel_files_measure_as_the_checkout(tmp_path):
    """setup.py build_py lays out exactly what a wheel installs (package_dir mapping and
    package_data): the bundle and its measurement from that layout equal the checkout's."""
    src = _copy_checkout(tmp_path / "src")
    out = tmp_path / "wheel-layout"
    p = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "-d", str(out)],
                       cwd=str(src), capture_output=True)
    assert p.returncode == 0, p.stderr.decode()
    wheel = bundle_from(out / "sops_enclave", out / "sops_enclave" / "enclave")
    checkout = _checkout_bundle(src)
    assert wheel == checkout
    assert measure_bundle(wheel) == measure_bundle(checkout)


def _measure_dev(root: Path) -> dict:
    p = subprocess.run([sys.executable, "-m", "sops_enclave", "measure", "--dev", "--json"],
                       env=dict(os.environ, PYTHONPATH=str(root)), capture_output=True,
                       cwd=str(root.parent))
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)["Measurements"]


def test_a_help_string_edit_leaves_measure_dev_unchanged(tmp_path):
    root = _copy_checkout(tmp_path / "a")
    # The copy runs as an installed package would: the enclave program next to the package.
    shutil.copytree(root / "enclave", root / "sops_enclave" / "enclave",
                    ignore=shutil.ignore_patterns("__pycache__"))
    before = _measure_dev(root)
    cli = root / "sops_enclave" / "cmdline.py"  # the CLI's flags and their help strings
    text = cli.read_text()
    assert "help=" in text
    cli.write_text(text.replace("help=\"", "help=\"(edited) ", 1))
    assert _measure_dev(root) == before
    ex = root / "sops_enclave" / "enclave" / "executor.py"
    ex.write_text(ex.read_text() + "\n# one changed line in the enclave program\n")
    after = _measure_dev(root)
    assert after["PCR0"] != before["PCR0"] and after["PCR1"] == before["PCR1"]


@pytest.mark.parametrize("path", ["sops_enclave/enclave/executor.py", "sops_enclave/walk.py"])
def test_bundle_files_of_a_checkout_follow_its_sources(tmp_path, path):
    from sops_enclave.enclave.bundle import bundle_files

    root = _copy_checkout(tmp_path / "c")
    before = measure_bundle(bundle_files(root))
    real = root / (path.replace("sops_enclave/enclave/", "enclave/"))
    real.write_text(real.read_text() + "\n# changed\n")
    assert measure_bundle(bundle_files(root))[0] != before[0]
