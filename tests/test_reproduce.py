"""Reproducibility of the enclave bundle (``enclave/bundle.py``) and the image build inputs.

The bundle is built from copies of the sources in different directories, with different file
mtimes, modes, creation order and umask, each copy running its own bundle.py in a separate
process: the archives must be the same bytes and give the same dev measurement, and a one-byte
change to any source must change both. The EIF itself needs docker and nitro-cli, which are
not here: build.sh is exercised with stub tools only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from sops_enclave.devtools import nsm_soft
from sops_enclave.enclave import bundle as bundle_mod
from sops_enclave.enclave.bundle import BundleError, bundle_files, tar_bytes

ROOT = Path(__file__).resolve().parents[1]
ENCLAVE = ROOT / "enclave"


def _copy_sources(dest: Path, *, umask: int = 0o022, reverse: bool = False,
                  mtime: float | None = None) -> Path:
    """Copy sops_enclave/ and enclave/ to ``dest`` in a child process with ``umask``,
    creating entries in sorted or reverse order, then set every mtime."""
    script = textwrap.dedent("""
        import os, shutil, sys
        src, dest, reverse = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
        for top in ("sops_enclave", "enclave"):
            entries = []
            for d, dirs, files in os.walk(os.path.join(src, top)):
                dirs[:] = [x for x in dirs if x != "__pycache__"]
                entries += [os.path.join(d, f) for f in files if not f.endswith(".pyc")]
            for path in sorted(entries, reverse=reverse):
                out = os.path.join(dest, os.path.relpath(path, src))
                os.makedirs(os.path.dirname(out), exist_ok=True)
                with open(path, "rb") as f, open(out, "wb") as g:
                    g.write(f.read())
    """)
    subprocess.run(["sh", "-c", f"umask {umask:03o}; exec \"$0\" \"$@\"", sys.executable,
                    "-c", script, str(ROOT), str(dest), "1" if reverse else "0"], check=True)
    if mtime is not None:
        for d, dirs, files in os.walk(dest):
            for name in files + dirs:
                os.utime(os.path.join(d, name), (mtime, mtime))
    return dest


def _build(root: Path, out: Path, *, umask: int = 0o022, env: dict | None = None,
           cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run the copy's own bundle.py, in its own process, with ``umask``."""
    e = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    e["PYTHONPATH"] = str(root)
    e.update(env or {})
    return subprocess.run(
        ["sh", "-c", f"umask {umask:03o}; exec \"$0\" \"$@\"", sys.executable,
         str(root / "enclave" / "bundle.py"), "--root", str(root), "--output", str(out),
         "--json"], env=e, cwd=str(cwd or root.parent), capture_output=True, text=True,
        check=check, timeout=120)


def _info(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout)


# ---------------------------------------------------------------------------------------------


def test_two_builds_in_different_dirs_times_and_umasks_are_identical(tmp_path):
    a = _copy_sources(tmp_path / "one" / "src", umask=0o022, mtime=1_000_000_000)
    b = _copy_sources(tmp_path / "two" / "deeper" / "src", umask=0o077, reverse=True,
                      mtime=time.time() + 54_321)
    os.chmod(b / "enclave" / "app.py", 0o700)          # modes do not matter either
    os.chmod(a / "sops_enclave" / "cipher.py", 0o666)
    ia = _info(_build(a, tmp_path / "a.tar", umask=0o022, cwd=tmp_path))
    ib = _info(_build(b, tmp_path / "b.tar", umask=0o077, cwd=b))
    da, db = (tmp_path / "a.tar").read_bytes(), (tmp_path / "b.tar").read_bytes()
    assert da == db
    assert ia["sha256"] == ib["sha256"] == hashlib.sha256(da).hexdigest()
    assert ia["dev_pcrs"] == ib["dev_pcrs"]
    # The dev measurement is measure_bundle over exactly the archived files.
    files = bundle_files(a)
    assert {k: v.hex() for k, v in nsm_soft.measure_bundle(files).items()} == {
        int(k): v for k, v in ia["dev_pcrs"].items()}
    with tarfile.open(tmp_path / "a.tar") as t:
        assert {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()} == files
    assert "sops_enclave/enclave/requirements.lock" in files
    assert "sops_enclave/enclave/nsm.py" in files and "sops_enclave/cipher.py" in files


@pytest.mark.parametrize("victim", ["sops_enclave/cipher.py", "enclave/app.py",
                                    "enclave/requirements.lock"])
def test_a_one_byte_change_changes_archive_and_measurement(tmp_path, victim):
    src = _copy_sources(tmp_path / "src", mtime=1_000_000_000)
    before = _info(_build(src, tmp_path / "before.tar"))
    path = src / victim
    data = bytearray(path.read_bytes())
    # One byte of the module docstring for Python files (the bundle parses them for their
    # imports, so the source must stay valid), the middle byte otherwise.
    i = data.index(b'"""') + 3 if victim.endswith(".py") else len(data) // 2
    data[i] = data[i] ^ 0x01
    path.write_bytes(bytes(data))
    os.utime(path, (1_000_000_000, 1_000_000_000))     # same mtime: only the content moved
    after = _info(_build(src, tmp_path / "after.tar"))
    assert after["sha256"] != before["sha256"]
    assert after["dev_pcrs"]["0"] != before["dev_pcrs"]["0"]
    assert after["dev_pcrs"]["2"] != before["dev_pcrs"]["2"]
    assert after["dev_pcrs"]["1"] == before["dev_pcrs"]["1"]   # the "kernel" did not change


def test_archive_is_normalised_ustar(tmp_path):
    files = {"b/z.py": b"z" * 700, "a.py": b"a", "b/c/d.txt": b"", "b/c.py": b"c",
             "\u00e9t\u00e9/x.py": b"utf-8 path"}
    data = tar_bytes(files, mtime=1_234_567)
    assert len(data) % 512 == 0 and data[-1024:] == bytes(1024)
    # Every header is plain ustar: typeflag '0' or '5', no pax ('x', 'g') or GNU ('L', 'K').
    flags, names, off = [], [], 0
    while data[off:off + 512] != bytes(512):
        h = data[off:off + 512]
        assert h[257:265] == b"ustar\x0000"
        assert h[265:297] == bytes(32) and h[297:329] == bytes(32)        # no user/group names
        flags.append(h[156:157])
        names.append((h[345:500].rstrip(b"\0") + b"/" if h[345] else b"")
                     + h[0:100].rstrip(b"\0"))
        size = int(h[124:135], 8)
        off += 512 + -(-size // 512) * 512
    assert set(flags) == {b"0", b"5"}
    assert names == sorted(names, key=lambda n: n.rstrip(b"/"))
    with tarfile.open(fileobj=__import__("io").BytesIO(data)) as t:
        members = t.getmembers()
        assert [m.name for m in members] == [
            "a.py", "b", "b/c", "b/c.py", "b/c/d.txt", "b/z.py", "\u00e9t\u00e9",
            "\u00e9t\u00e9/x.py"]
        for m in members:
            assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", 1_234_567)
            assert m.mode == (0o755 if m.isdir() else 0o644)
            assert not m.pax_headers
            if m.isfile():
                assert t.extractfile(m).read() == files[m.name]
    assert tar_bytes(dict(reversed(list(files.items()))), mtime=1_234_567) == data


def test_long_paths_use_the_ustar_prefix_and_impossible_ones_fail():
    long = "/".join(["d" * 40] * 3) + "/" + "f" * 90 + ".py"          # 215 bytes
    with tarfile.open(fileobj=__import__("io").BytesIO(tar_bytes({long: b"x"}))) as t:
        assert [m.name for m in t.getmembers() if m.isfile()] == [long]
    with pytest.raises(BundleError, match="too long"):
        tar_bytes({"d/" + "f" * 120: b"x"})                          # a 120-byte file name
    for bad in ("/abs.py", "a/../b.py", "a//b.py", "./a.py", ""):
        with pytest.raises(BundleError):
            tar_bytes({bad: b"x"})
    with pytest.raises(BundleError):
        tar_bytes({"a": b"x", "a/b": b"y"})                          # file and directory
    with pytest.raises(BundleError):
        tar_bytes({"a": b"x"}, mtime=-1)


def test_source_date_epoch_sets_the_mtimes_but_not_the_measurement(tmp_path):
    src = _copy_sources(tmp_path / "src")
    zero = _info(_build(src, tmp_path / "zero.tar"))
    sde = _info(_build(src, tmp_path / "sde.tar", env={"SOURCE_DATE_EPOCH": "1700000000"}))
    assert zero["mtime"] == 0 and sde["mtime"] == 1_700_000_000
    assert zero["sha256"] != sde["sha256"] and zero["dev_pcrs"] == sde["dev_pcrs"]
    with tarfile.open(tmp_path / "sde.tar") as t:
        assert {m.mtime for m in t.getmembers()} == {1_700_000_000}
    bad = _build(src, tmp_path / "bad.tar", env={"SOURCE_DATE_EPOCH": "yesterday"}, check=False)
    assert bad.returncode == 2 and "SOURCE_DATE_EPOCH" in bad.stderr


def test_bad_roots_and_outputs_are_refused(tmp_path):
    r = _build(tmp_path / "nothing", tmp_path / "x.tar", check=False)
    assert r.returncode != 0
    src = _copy_sources(tmp_path / "src")
    r = _build(src, src / "enclave" / "bundle.tar", check=False)
    assert r.returncode == 2 and "inside the bundle" in r.stderr
    with pytest.raises(BundleError, match="not a directory"):
        bundle_files(tmp_path)


def test_the_bundle_is_what_the_dev_enclave_measures():
    """From this checkout, the bundle is nsm_soft.default_bundle(): the PCRs printed by the
    bundle builder are the ones the dev enclave's software NSM reports."""
    import sops_enclave.enclave as prog

    if Path(prog.__file__).resolve().parent != ENCLAVE:
        pytest.skip("sops_enclave.enclave is not this checkout's enclave/ (not an editable install)")
    assert bundle_mod.default_root() == ROOT
    assert bundle_files() == bundle_files(ROOT) == nsm_soft.default_bundle()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_makefile_reproduce_target(tmp_path):
    r = subprocess.run(["make", "-s", "-f", str(ROOT / "Makefile.reproduce"), "reproduce",
                        f"REPRO_PY={sys.executable}"], cwd=str(tmp_path), capture_output=True,
                       text=True, timeout=300,
                       env={**os.environ, "TMPDIR": str(tmp_path), "SOURCE_DATE_EPOCH": "0"})
    assert r.returncode == 0, r.stderr
    assert "byte-identical" in r.stdout
    sha = re.search(r"^sha256\s+([0-9a-f]{64})$", r.stdout, re.M).group(1)
    pcr0 = re.search(r"^dev PCR0\s+([0-9a-f]{96})$", r.stdout, re.M).group(1)
    assert sha and pcr0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("sops-enclave-reproduce")]


# ---------------------------------------------------------------------------------------------
# build.sh, without docker or nitro-cli (stub tools)

STUB_DOCKER = """#!/bin/sh
echo "docker $*" >> "$STUB_LOG"
case "$1" in
  info) exit 0 ;;
  version) echo 25.0.0 ;;
  image) echo sha256:0123 ;;
  build) for a in "$@"; do ctx="$a"; done
         ls -A "$ctx" > "$STUB_DIR/context.txt"; cp "$ctx/Dockerfile" "$STUB_DIR/Dockerfile" ;;
esac
"""

STUB_NITRO = """#!/bin/sh
echo "nitro-cli $*" >> "$STUB_LOG"
case "$1" in
  --version) echo "Nitro CLI 1.4.2" ;;
  build-enclave)
    while [ $# -gt 0 ]; do [ "$1" = --output-file ] && out="$2"; shift; done
    echo "eif $(date +%s%N)" > "$out"
    echo '{"Measurements":{"HashAlgorithm":"Sha384 { ... }","PCR0":"AA","PCR1":"BB","PCR2":"CC"}}' ;;
  describe-eif)
    n=$(grep -c describe-eif "$STUB_LOG")
    pcr0=0A; [ -n "$STUB_DRIFT" ] && [ "$n" -gt 1 ] && pcr0=0D
    echo "{\\"EifVersion\\":4,\\"Measurements\\":{\\"HashAlgorithm\\":\\"Sha384 { ... }\\",\\"PCR0\\":\\"$pcr0\\",\\"PCR1\\":\\"0B\\",\\"PCR2\\":\\"0C\\"}}" ;;
esac
"""


@pytest.fixture
def stub_tools(tmp_path):
    d = tmp_path / "stubs"
    d.mkdir()
    for name, text in (("docker", STUB_DOCKER), ("nitro-cli", STUB_NITRO)):
        (d / name).write_text(text)
        (d / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{d}:{os.environ['PATH']}", "STUB_LOG": str(d / "log"),
           "STUB_DIR": str(d), "PYTHON": sys.executable}
    env.pop("SOURCE_DATE_EPOCH", None)
    env.pop("SOPS_ENCLAVE_KMS_REGIONS", None)
    return d, env


def _enclave_policy(tmp_path: Path) -> str:
    """A valid enclave policy file (build.sh refuses to build an image without one)."""
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    pub = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    p = tmp_path / "enclave-policy.yaml"
    p.write_text(f'version: 1\ncommit_signers: ["release@example.com {pub}"]\n'
                 'outputs: {kms: ["arn:aws:kms:eu-west-1:111122223333:key/*"]}\n'
                 'inputs: {kms: ["arn:aws:kms:eu-west-1:111122223333:key/in"]}\n')
    return str(p)


def test_build_sh_refuses_to_build_without_an_enclave_policy(tmp_path):
    r = subprocess.run(["bash", str(ENCLAVE / "build.sh"), "--region", "eu-west-1", "--out",
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--enclave-policy FILE is required" in r.stderr
    assert not (tmp_path / "out").exists()


def test_build_sh_without_nitro_cli_fails_clearly(tmp_path):
    path = "/usr/bin:/bin"
    if shutil.which("nitro-cli", path=path):
        pytest.skip("nitro-cli is installed here")
    pol = _enclave_policy(tmp_path)
    r = subprocess.run(["bash", str(ENCLAVE / "build.sh"), "--region", "eu-west-1", "--out",
                        str(tmp_path / "out"), "--enclave-policy", pol], capture_output=True,
                       text=True, timeout=60, env={**os.environ, "PATH": path})
    assert r.returncode == 127
    assert "nitro-cli not found" in r.stderr and "Nothing was built" in r.stderr
    assert not (tmp_path / "out").exists()
    r = subprocess.run(["bash", str(ENCLAVE / "build.sh"), "--enclave-policy", pol],
                       capture_output=True, text=True,
                       timeout=60, env={k: v for k, v in os.environ.items()
                                        if k != "SOPS_ENCLAVE_KMS_REGIONS"})
    assert r.returncode == 2 and "no KMS region" in r.stderr


def test_build_sh_with_stub_tools_writes_pcrs_json(tmp_path, stub_tools):
    stubs, env = stub_tools
    out = tmp_path / "out"
    r = subprocess.run(["bash", str(ENCLAVE / "build.sh"), "--region", "eu-west-1",
                        "--region", "us-east-1", "--source-date-epoch", "5", "--out", str(out),
                        "--enclave-policy", _enclave_policy(tmp_path)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    pcrs = json.loads((out / "pcrs.json").read_text())
    assert (pcrs["PCR0"], pcrs["PCR1"], pcrs["PCR2"]) == ("0a", "0b", "0c")
    bundle = (out / "sops-enclave-bundle.tar").read_bytes()
    assert pcrs["bundle_sha256"] == hashlib.sha256(bundle).hexdigest()
    assert pcrs["kms_regions"] == ["eu-west-1", "us-east-1"] and pcrs["source_date_epoch"] == 5
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", pcrs["base_image"])
    assert pcrs["nitro_cli_version"] == "Nitro CLI 1.4.2"
    # The image is built from the bundle alone, with the Dockerfile taken out of the bundle.
    assert (stubs / "context.txt").read_text().split() == ["Dockerfile",
                                                           "sops-enclave-bundle.tar"]
    assert (stubs / "Dockerfile").read_bytes() == (ENCLAVE / "Dockerfile").read_bytes()
    log = (stubs / "log").read_text()
    assert "--build-arg SOURCE_DATE_EPOCH=5 --build-arg KMS_REGIONS=eu-west-1,us-east-1" in log
    assert f"build-enclave --docker-uri sops-enclave:{pcrs['bundle_sha256'][:16]}" in log
    assert f"describe-eif --eif-path {out}/sops-enclave.eif" in log


def test_build_sh_check_reproducible_detects_drift(tmp_path, stub_tools):
    stubs, env = stub_tools
    cmd = ["bash", str(ENCLAVE / "build.sh"), "--region", "eu-west-1", "--out",
           str(tmp_path / "out"), "--check-reproducible", "--enclave-policy",
           _enclave_policy(tmp_path)]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "reproducible: two builds gave the same PCR0, PCR1 and PCR2" in ok.stdout
    (stubs / "log").unlink()
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env={**env, "STUB_DRIFT": "1"})
    assert bad.returncode == 1 and "NOT reproducible" in bad.stderr
    assert "PCR0 DIFFERS" in bad.stdout


# ---------------------------------------------------------------------------------------------
# the pinned inputs of the image


def _lock() -> dict[str, tuple[str, list[str]]]:
    text = (ENCLAVE / "requirements.lock").read_text().replace("\\\n", " ")
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *opts = line.split()
        name, version = spec.split("==")
        hashes = [o.split("=", 1)[1] for o in opts]
        assert all(o.startswith("--hash=sha256:") for o in opts), line
        out[name.lower().replace("_", "-")] = (version, hashes)
    return out


def test_requirements_lock_pins_every_runtime_dependency_by_hash():
    lock = _lock()
    wanted = {"cryptography", "cbor2", "asn1crypto", "boto3", "botocore", "s3transfer",
              "jmespath", "python-dateutil", "six", "urllib3", "pyyaml", "pyrage", "cffi",
              "pycparser"}
    assert set(lock) == wanted
    for name, (version, hashes) in lock.items():
        assert re.fullmatch(r"[0-9][0-9A-Za-z.]*", version), name
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name
    # The lock is closed: every runtime requirement of a locked package (as the installed
    # metadata states it, for Linux CPython 3.11, without extras) is locked too.
    packaging = pytest.importorskip("packaging.requirements")
    from importlib import metadata

    env = {"python_version": "3.11", "python_full_version": "3.11.7", "sys_platform": "linux",
           "platform_python_implementation": "CPython", "implementation_name": "cpython",
           "platform_system": "Linux", "os_name": "posix", "extra": ""}
    for name in lock:
        try:
            reqs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for raw in reqs:
            req = packaging.Requirement(raw)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            assert req.name.lower().replace("_", "-") in lock, f"{name} needs {req.name}"


def test_dockerfile_pins_its_inputs():
    text = (ENCLAVE / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(froms) == 1 and re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}",
                                            froms[0])
    assert "TO VERIFY" in text
    for needle in ("--require-hashes", "--no-deps", "--only-binary=:all:", "--no-compile",
                   "ARG SOURCE_DATE_EPOCH", "PYTHONDONTWRITEBYTECODE=1", "touch --no-dereference",
                   "requirements.lock"):
        assert needle in text, needle
    assert "apt-get" not in text.replace("There is no apt-get", "")
    cmd = json.loads(re.search(r"^CMD (\[.*?\])\s*$", text, re.M | re.S).group(1)
                     .replace("\\\n", " "))
    assert cmd[cmd.index("--") + 1:] == ["/usr/local/bin/python", "-m",
                                         "sops_enclave.enclave.app", "--vsock", "5000"]
    assert cmd[:3] == ["/usr/local/bin/python", "-m", "sops_enclave.enclave.kms_forwarder"]


def test_host_side_files_agree_with_the_host_defaults():
    allow = yaml.safe_load((ENCLAVE / "vsock-proxy-allowlist.yaml").read_text())["allowlist"]
    assert allow and all(re.fullmatch(r"kms\.[a-z0-9-]+\.amazonaws\.com(\.cn)?", e["address"])
                         and e["port"] == 443 for e in allow)
    unit = (ENCLAVE / "sops-enclave.service").read_text()
    # `sops-enclave exec --enclave nitro` connects to CID 16, port 5000 (pack/host.py).
    assert "SOPS_ENCLAVE_CID=16" in unit and "--enclave-cid ${SOPS_ENCLAVE_CID}" in unit
    assert "ExecStart=/usr/bin/vsock-proxy ${SOPS_ENCLAVE_VSOCK_PORT}" in unit
    assert "SOPS_ENCLAVE_VSOCK_PORT=8000" in unit and "--debug-mode\n" not in unit
    assert os.access(ENCLAVE / "build.sh", os.X_OK)        # commit it with mode 755
