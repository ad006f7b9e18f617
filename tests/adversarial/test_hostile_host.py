"""The CI host is hostile (issue: a malicious CI host gets nothing).

Each test plays the attacker who controls everything outside the enclave (the commit it asks
for, the manifest path, the request frame, the repository string) against the genuine dev
enclave run with a measured enclave policy, a KMS that releases the input data keys only to
that measurement, and real SSH-signed git commits. Each asserts the refusal, that nothing was
written and that no secret reached the host (files, stdout, stderr, the response frame).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest



def run(cmd, env, cwd=None, input=None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, input=input, capture_output=True, timeout=120)


SECRETS = (b"common-pw-8c1f", b"prod-pw-77ad", b"t0k3n-e41b", b"clear-suffix-9d2c")
ROLE = "arn:aws:iam::123456789012:role/ci-host"
ADMIN = "arn:aws:iam::123456789012:role/kms-admin"


def _keygen(d: Path, name: str, kind: str = "ed25519") -> tuple[Path, str]:
    if not shutil.which("ssh-keygen"):
        pytest.skip("ssh-keygen is not installed (apt-get install openssh-client)")
    key = d / name
    args = ["-t", kind] + (["-b", "256"] if kind == "ecdsa" else [])
    subprocess.run(["ssh-keygen", "-q", *args, "-N", "", "-C", name, "-f", str(key)],
                   check=True, capture_output=True)
    return key, (d / f"{name}.pub").read_text().split(" ", 2)[0:2]


def _pub(key: Path) -> str:
    return " ".join(Path(f"{key}.pub").read_text().split()[:2])


def _git(repo, *args, key: Path | None = None, input: bytes | None = None) -> bytes:
    env = dict(os.environ, GIT_AUTHOR_NAME="Release", GIT_AUTHOR_EMAIL="release@example.com",
               GIT_COMMITTER_NAME="Release", GIT_COMMITTER_EMAIL="release@example.com",
               GIT_CONFIG_NOSYSTEM="1", HOME=str(repo))
    cfg = []
    if key is not None:
        cfg = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}"]
    return subprocess.run(["git", *cfg, "-C", str(repo), *args], check=True,
                          capture_output=True, env=env, input=input).stdout


@pytest.fixture(scope="module")
def world(tmp_path_factory, base_env, age_key):
    """Keys, a policy, the dev stack pinned to it, a repo of KMS-encrypted inputs."""
    tmp = tmp_path_factory.mktemp("hostile")
    keys = tmp / "keys"
    keys.mkdir()
    release, _ = _keygen(keys, "release")
    attacker, _ = _keygen(keys, "attacker")
    import pyrage

    runtime_age = str(pyrage.x25519.Identity.generate().to_public())
    attacker_age = str(pyrage.x25519.Identity.generate().to_public())
    ca = tmp / "dev-ca"
    os.environ["SOPS_ENCLAVE_DEV_CA_DIR"] = str(ca)
    from sops_enclave.devtools.devstack import DevStack, dev_pcrs
    from sops_enclave.image.policy import key_policy

    stack = DevStack(ca_dir=str(ca)).start()
    try:
        import boto3

        c = boto3.client("kms", region_name="us-east-1", endpoint_url=stack.url,
                         aws_access_key_id="dev", aws_secret_access_key="dev")
        gated = c.create_key(Description="inputs")["KeyMetadata"]["Arn"]
        unlisted = c.create_key(Description="inputs, not in the policy")["KeyMetadata"]["Arn"]
        runtime = c.create_key(Description="outputs")["KeyMetadata"]["Arn"]
        policy_text = (f"version: 1\ncommit_signers:\n  - \"release@example.com {_pub(release)}\"\n"
                       f"outputs:\n  kms: [\"{runtime}\"]\n  age: [\"{runtime_age}\", "
                       f"\"{age_key[1]}\"]\ninputs:\n  kms: [\"{gated}\"]\n")
        policy = tmp / "enclave-policy.yaml"
        policy.write_text(policy_text)
        other_policy = tmp / "other-policy.yaml"
        other_policy.write_text(policy_text + "# another policy\n")
        pcrs = dev_pcrs(policy.read_bytes())
        for arn in (gated, unlisted):
            c.put_key_policy(KeyId=arn, PolicyName="default", Policy=json.dumps(
                key_policy(pcrs[0].hex(), role_arn=ROLE, admin_arns=[ADMIN])))
        env = dict(base_env, **stack.env(), SOPS_ENCLAVE_DEV_CA_DIR=str(ca))
        yield {"tmp": tmp, "stack": stack, "env": env, "pcrs": pcrs, "policy": policy,
               "other_policy": other_policy, "release": release, "attacker": attacker,
               "gated": gated, "unlisted": unlisted, "runtime": runtime,
               "runtime_age": runtime_age, "attacker_age": attacker_age, "ca": str(ca)}
    finally:
        stack.stop()
        os.environ.pop("SOPS_ENCLAVE_DEV_CA_DIR", None)


def _encrypt(world, src: bytes, dest: Path, key: str, *extra: str) -> None:
    plain = dest.parent / ("." + dest.name + ".plain.yaml")
    plain.write_bytes(src)
    p = run([sys.executable, "-m", "sops_enclave", "encrypt", "--kms", key, *extra,
             "--output", str(dest), str(plain)], world["env"])
    plain.unlink()
    assert p.returncode == 0, p.stderr


def _manifest(recipient_kms: str, recipient_age: str) -> str:
    return f"""version: 1
matrix: {{service: [api]}}
outputs:
  - target: "{{service}}/prod"
    path: "deploy/{{service}}/prod.enc.json"
    inputs:
      - secrets/common.enc.yaml
      - {{file: "secrets/prod.enc.yaml", extract: '["{{service}}"]'}}
    encrypt:
      kms: ["{recipient_kms}"]
      encryption_context: {{service: "{{service}}", env: prod}}
      age: ["{recipient_age}"]
"""


@pytest.fixture
def repo(world, tmp_path):
    """A repository whose HEAD is signed by the release key, inputs under the gated key."""
    repo = tmp_path / "repo"
    (repo / "secrets").mkdir(parents=True)
    _encrypt(world, b"db:\n    host: db.internal\n    password: common-pw-8c1f\nlog: info\n",
             repo / "secrets" / "common.enc.yaml", world["gated"])
    _encrypt(world, b"api:\n    db:\n        password: prod-pw-77ad\n    token: t0k3n-e41b\n",
             repo / "secrets" / "prod.enc.yaml", world["gated"])
    (repo / ".sops-enclave.yaml").write_text(_manifest(world["runtime"], world["runtime_age"]))
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-S", "-m", "secrets", key=world["release"])
    return repo


def _exec(world, repo, *args: str, policy: Path | None | str = "default"):
    pol = world["policy"] if policy == "default" else policy
    extra = ["--enclave-policy", str(pol)] if pol else []
    return run([sys.executable, "-m", "sops_enclave", "exec", "--json", "--repo", str(repo),
                *extra, *args], world["env"])


def _snapshot(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for p in sorted(repo.rglob("*"))
            if p.is_file() and ".git" not in p.parts}


def _assert_refused(world, repo, p, before: dict[str, bytes], *, reason: str,
                    decrypts_before: int | None = None) -> None:
    assert p.returncode != 0, p.stdout
    assert reason.encode() in p.stderr, p.stderr
    assert _snapshot(repo) == before, "the refused run wrote something"
    for s in SECRETS:
        assert s not in p.stdout and s not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    if decrypts_before is not None:
        assert world["stack"].kms.stats.get("Decrypt", 0) == decrypts_before, \
            "a KMS Decrypt was made before the refusal"


def _decrypts(world) -> int:
    return world["stack"].kms.stats.get("Decrypt", 0)


def _verify(world, out: Path, *extra: str):
    pcr = f"--pcr=0={world['pcrs'][0].hex()}"
    return run([sys.executable, "-m", "sops_enclave", "verify", str(out), "--allow-dev", pcr,
                *extra], world["env"])


# ------------------------------------------------------------------------------ the good run

def test_signed_commit_packs_and_receipt_names_signer_policy_and_keys(world, repo, sops_bin,
                                                                      base_env):
    p = _exec(world, repo)
    assert p.returncode == 0, p.stderr
    assert b"warning" not in p.stderr
    out = repo / "deploy" / "api" / "prod.enc.json"
    receipt = json.loads((repo / "deploy/api/prod.enc.json.receipt.json").read_bytes())
    import base64

    st = json.loads(base64.b64decode(receipt["envelope"]["payload"]))
    params = st["predicate"]["buildDefinition"]["internalParameters"]
    fp = subprocess.run(["ssh-keygen", "-lf", f"{world['release']}.pub"], capture_output=True,
                        text=True, check=True).stdout.split()[1]
    assert params["commitSigner"] == {"principal": "release@example.com",
                                      "keyType": "ssh-ed25519", "fingerprint": fp}
    assert params["enclavePolicy"]["sha256"] == hashlib.sha256(
        world["policy"].read_bytes()).hexdigest()
    assert params["enclavePolicy"]["document"] == world["policy"].read_text()
    # The key that actually opened each input: the gated KMS key, with the request id.
    assert {k["arn"] for k in params["kms"]} == {world["gated"]}
    assert all(k["requestId"] and k["requestId"] != "unknown" for k in params["kms"])
    deps = st["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert [d["annotations"]["dataKeySource"] for d in deps
            if d["annotations"]["role"] == "input"] == ["kms-attested", "kms-attested"]
    src = [d for d in deps if d["annotations"]["role"] == "source"][0]
    assert src["annotations"].get("hostAsserted") == ["uri"]
    # The nonce: the statement's request nonce is the receipt attestation's nonce.
    from sops_enclave.receipt.attestation import parse_attestation

    doc = parse_attestation(base64.b64decode(receipt["attestation"]))
    assert doc.nonce is not None and doc.nonce.hex() == params["requestNonce"]
    # The output: every value encrypted, opens with plain sops to the merged document.
    d = run([sops_bin, "decrypt", str(out)], dict(base_env, SOPS_AGE_KEY=""),)
    assert d.returncode != 0  # the runtime's age key is not ours...
    d = run([sops_bin, "decrypt", str(out)], world["env"])  # ...but the runtime KMS key is
    assert d.returncode == 0, d.stderr
    assert json.loads(d.stdout) == {"db": {"host": "db.internal", "password": "prod-pw-77ad"},
                                    "log": "info", "token": "t0k3n-e41b"}
    # verify names the signer and the policy digest, and can require both.
    ok = _verify(world, out, "--signer", "release@example.com", "--enclave-policy",
                 str(world["policy"]))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert b"release@example.com" in ok.stdout and fp.encode() in ok.stdout
    assert hashlib.sha256(world["policy"].read_bytes()).hexdigest()[:16].encode() in ok.stdout
    assert _verify(world, out, "--signer", fp).returncode == 0
    assert _verify(world, out, "--signer", "mallory@example.com").returncode != 0
    assert _verify(world, out, "--enclave-policy", str(world["other_policy"])).returncode != 0


# ------------------------------------------------------------------------------ the attacks

def _forged_commit(world, repo, manifest: str, *, sign_with: Path | None = None) -> str:
    """Attack 1: the host writes its own manifest blob next to the real inputs and makes a
    commit on no branch (git mktree + git commit-tree)."""
    blob = _git(repo, "hash-object", "-w", "--stdin", input=manifest.encode()).decode().strip()
    head_tree = _git(repo, "ls-tree", "HEAD").decode()
    lines = [l for l in head_tree.splitlines() if not l.endswith("\t.sops-enclave.yaml")]
    lines.append(f"100644 blob {blob}\t.sops-enclave.yaml")
    tree = _git(repo, "mktree", input=("\n".join(lines) + "\n").encode()).decode().strip()
    args = ["commit-tree", tree, "-p", "HEAD", "-m", "innocent"]
    if sign_with is not None:
        args.insert(1, "-S")
    return _git(repo, *args, key=sign_with).decode().strip()


def test_unsigned_made_up_commit_is_refused(world, repo):
    evil = _forged_commit(world, repo, _manifest(world["runtime"], world["attacker_age"]))
    before, n = _snapshot(repo), _decrypts(world)
    p = _exec(world, repo, "--commit", evil)
    _assert_refused(world, repo, p, before, reason="the commit is not signed", decrypts_before=n)


def test_commit_signed_by_another_key_is_refused(world, repo):
    evil = _forged_commit(world, repo, _manifest(world["runtime"], world["attacker_age"]),
                          sign_with=world["attacker"])
    before, n = _snapshot(repo), _decrypts(world)
    p = _exec(world, repo, "--commit", evil)
    _assert_refused(world, repo, p, before, reason="not among the policy's commit_signers",
                    decrypts_before=n)


def _write_commit(repo, content: bytes) -> str:
    return _git(repo, "hash-object", "-t", "commit", "-w", "--stdin", "--literally",
                input=content).decode().strip()


def test_signature_over_other_bytes_is_refused(world, repo):
    """A genuine release signature moved onto a commit whose tree the host chose."""
    evil = _forged_commit(world, repo, _manifest(world["runtime"], world["attacker_age"]))
    genuine = _git(repo, "cat-file", "commit", "HEAD")
    sig_lines = [l for l in genuine.split(b"\n\n", 1)[0].split(b"\n")
                 if l.startswith((b"gpgsig ", b" "))]
    forged = _git(repo, "cat-file", "commit", evil)
    head, body = forged.split(b"\n\n", 1)
    moved = _write_commit(repo, head + b"\n" + b"\n".join(sig_lines) + b"\n\n" + body)
    before, n = _snapshot(repo), _decrypts(world)
    p = _exec(world, repo, "--commit", moved)
    _assert_refused(world, repo, p, before, reason="does not verify", decrypts_before=n)


def test_tampered_signature_block_is_refused(world, repo):
    genuine = _git(repo, "cat-file", "commit", "HEAD")
    head, body = genuine.split(b"\n\n", 1)
    lines = head.split(b"\n")
    i = next(k for k, l in enumerate(lines) if l.startswith(b" ") and len(l) > 40)
    flipped = bytearray(lines[i])
    flipped[20] = ord("A") if flipped[20] != ord("A") else ord("B")
    lines[i] = bytes(flipped)
    bad = _write_commit(repo, b"\n".join(lines) + b"\n\n" + body)
    before, n = _snapshot(repo), _decrypts(world)
    p = _exec(world, repo, "--commit", bad)
    assert p.returncode != 0 and _snapshot(repo) == before and _decrypts(world) == n
    assert b"signature" in p.stderr


def test_signed_manifest_naming_an_unlisted_recipient_is_refused(world, repo):
    """Even a release-signed commit cannot send outputs to a recipient the policy lacks."""
    (repo / ".sops-enclave.yaml").write_text(_manifest(world["runtime"], world["attacker_age"]))
    _git(repo, "commit", "-q", "-S", "-am", "oops", key=world["release"])
    before, n = _snapshot(repo), _decrypts(world)
    p = _exec(world, repo)
    _assert_refused(world, repo, p, before, reason="is not allowed by the enclave policy",
                    decrypts_before=n)
    assert world["attacker_age"].encode() in p.stderr


def test_unlisted_output_kms_key_is_refused(world, repo):
    (repo / ".sops-enclave.yaml").write_text(_manifest(world["unlisted"], world["runtime_age"]))
    _git(repo, "commit", "-q", "-S", "-am", "oops", key=world["release"])
    before, n = _snapshot(repo), _decrypts(world)
    p = _exec(world, repo)
    _assert_refused(world, repo, p, before, reason="outputs.kms", decrypts_before=n)


def test_manifest_path_is_the_policys_not_the_hosts(world, repo):
    (repo / "other.yaml").write_text(_manifest(world["runtime"], world["attacker_age"]))
    _git(repo, "add", "other.yaml")
    _git(repo, "commit", "-q", "-S", "-m", "other manifest", key=world["release"])
    before, n = _snapshot(repo), _decrypts(world)
    p = _exec(world, repo, "--manifest", "other.yaml")
    _assert_refused(world, repo, p, before, reason="fixes the manifest at .sops-enclave.yaml",
                    decrypts_before=n)


def test_input_under_an_unlisted_kms_key_is_refused_before_any_kms_call(world, repo):
    _encrypt(world, b"api:\n    token: t0k3n-e41b\n", repo / "secrets" / "prod.enc.yaml",
             world["unlisted"])
    _git(repo, "commit", "-q", "-S", "-am", "rekey", key=world["release"])
    before, n = _snapshot(repo), _decrypts(world)
    p = _exec(world, repo)
    _assert_refused(world, repo, p, before, reason="inputs.kms", decrypts_before=n)


def test_unencrypted_suffix_under_an_encrypted_regex_never_comes_out_in_clear(world, repo,
                                                                              sops_bin):
    """Attack 2: an input encrypted with --encrypted-regex '^api$' whose secret sits under a
    key ending in _unencrypted. The old output rule (unencrypted_suffix) wrote it in clear."""
    _encrypt(world, b"api:\n    password_unencrypted: clear-suffix-9d2c\n    token: t0k3n-e41b\n"
             b"note: public\n", repo / "secrets" / "prod.enc.yaml", world["gated"],
             "--encrypted-regex", "^api$")
    stored = (repo / "secrets" / "prod.enc.yaml").read_bytes()
    assert b"clear-suffix-9d2c" not in stored and b"note: public" in stored
    _git(repo, "commit", "-q", "-S", "-am", "regex", key=world["release"])
    p = _exec(world, repo)
    assert p.returncode == 0, p.stderr
    out = repo / "deploy" / "api" / "prod.enc.json"
    data = out.read_bytes()
    for s in SECRETS:
        assert s not in data and s not in p.stdout and s not in p.stderr
    doc = json.loads(data)
    assert doc["password_unencrypted"].startswith("ENC[")
    assert doc["sops"]["unencrypted_regex"] == r"[^\s\S]"
    d = run([sops_bin, "decrypt", str(out)], world["env"])
    assert d.returncode == 0, d.stderr
    assert json.loads(d.stdout)["password_unencrypted"] == "clear-suffix-9d2c"


def test_value_errors_do_not_depend_on_the_secret(world, tmp_path, age_key):
    """Attack 5 (unrestricted dev run, where a host may commit anything and open inputs with
    its own age key): an input's type:str turned into type:int. The answer must not say
    whether the secret parses as an integer."""
    repo = tmp_path / "r"
    (repo / "secrets").mkdir(parents=True)
    for name, secret in (("a", b"12345x"), ("b", b"not-a-number")):
        src = tmp_path / f"{name}.yaml"
        src.write_bytes(b"api:\n    pin: '" + secret + b"'\n")
        path = repo / "secrets" / f"{name}.enc.yaml"
        p = run([sys.executable, "-m", "sops_enclave", "encrypt", "--age", age_key[1],
                 "--output", str(path), str(src)], world["env"])
        assert p.returncode == 0, p.stderr
        path.write_bytes(path.read_bytes().replace(b",type:str]", b",type:int]"))
    answers = []
    for name in ("a", "b"):
        (repo / ".sops-enclave.yaml").write_text(
            _manifest(world["runtime"], age_key[1])
            .replace("secrets/common.enc.yaml", f"secrets/{name}.enc.yaml")
            .replace("      - {file: \"secrets/prod.enc.yaml\", extract: '[\"{service}\"]'}\n",
                     ""))
        if not (repo / ".git").exists():
            _git(repo, "init", "-q")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", name)
        p = _exec(world, repo, policy=None)
        assert p.returncode != 0
        answers.append(p.stderr.decode().splitlines()[-1].replace(f"secrets/{name}.", "X."))
    assert answers[0] == answers[1], answers
    assert "parse" not in answers[0] and "value at api.pin is invalid" in answers[0]


def test_unrestricted_dev_run_gets_nothing_from_a_policy_pinned_key(world, tmp_path):
    repo = tmp_path / "r"
    (repo / "secrets").mkdir(parents=True)
    _encrypt(world, b"db:\n    password: common-pw-8c1f\n", repo / "secrets/common.enc.yaml",
             world["gated"])
    _encrypt(world, b"api:\n    token: t0k3n-e41b\n", repo / "secrets/prod.enc.yaml",
             world["gated"])
    (repo / ".sops-enclave.yaml").write_text(_manifest(world["runtime"], world["runtime_age"]))
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "unsigned")
    # The gated key is pinned to the policy's measurement: an unrestricted enclave (another
    # PCR0) gets nothing from KMS...
    p = _exec(world, repo, policy=None)
    assert p.returncode != 0 and b"AccessDenied" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1      # the error alone, one line
    assert not (repo / "deploy").exists()


def test_unrestricted_receipt_needs_allow_unrestricted(world, tmp_path, age_key):
    """With a host age key (dev only), an unrestricted run works, is labelled, and verify
    refuses its receipt unless the auditor says --allow-unrestricted."""
    repo = tmp_path / "r"
    (repo / "secrets").mkdir(parents=True)
    env = world["env"]
    for name, text in (("common", b"db:\n    password: common-pw-8c1f\n"),
                       ("prod", b"api:\n    token: t0k3n-e41b\n")):
        src = tmp_path / f"{name}.yaml"
        src.write_bytes(text)
        p = run([sys.executable, "-m", "sops_enclave", "encrypt", "--age", age_key[1],
                 "--output", str(repo / "secrets" / f"{name}.enc.yaml"), str(src)], env)
        assert p.returncode == 0, p.stderr
    (repo / ".sops-enclave.yaml").write_text(_manifest(world["runtime"], age_key[1]))
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "unsigned")
    p = _exec(world, repo, policy=None)
    assert p.returncode == 0, p.stderr
    warnings = p.stderr.decode().splitlines()
    assert len(warnings) == 1 and "warning" in warnings[0] and "UNRESTRICTED" in warnings[0]
    out = repo / "deploy" / "api" / "prod.enc.json"
    st = json.loads(__import__("base64").b64decode(json.loads(
        (repo / "deploy/api/prod.enc.json.receipt.json").read_bytes())["envelope"]["payload"]))
    params = st["predicate"]["buildDefinition"]["internalParameters"]
    assert params["enclavePolicy"] == {"unrestricted": True}
    assert params["commitSigner"] is None
    deps = st["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert {d["annotations"]["dataKeySource"] for d in deps
            if d["annotations"]["role"] == "input"} == {"host-age"}
    assert params["kms"] == []
    from sops_enclave.devtools.devstack import dev_pcrs

    pcr = f"--pcr=0={dev_pcrs()[0].hex()}"
    base = [sys.executable, "-m", "sops_enclave", "verify", str(out), "--allow-dev", pcr]
    refused = run(base, env)
    assert refused.returncode != 0 and b"unrestricted" in refused.stdout.lower()
    accepted = run(base + ["--allow-unrestricted"], env)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr


def test_host_age_keys_need_the_policy_to_allow_them(world, repo, age_key):
    """In dev with a policy, a host age key opens nothing unless allow_host_age: true."""
    env = world["env"]
    src = repo / "p.yaml"
    src.write_bytes(b"api:\n    token: t0k3n-e41b\n")
    p = run([sys.executable, "-m", "sops_enclave", "encrypt", "--age", age_key[1], "--output",
             str(repo / "secrets" / "prod.enc.yaml"), str(src)], env)
    src.unlink()
    assert p.returncode == 0, p.stderr
    _git(repo, "commit", "-q", "-S", "-am", "age input", key=world["release"])
    before, n = _snapshot(repo), _decrypts(world)
    p = _exec(world, repo)
    _assert_refused(world, repo, p, before, reason="inputs.kms", decrypts_before=n)


# ------------------------------------------------------------------------------ the policy and the image

def test_two_policies_two_measurements_and_a_receipt_binds_its_own(world, repo):
    from sops_enclave.devtools.devstack import dev_pcrs

    a = dev_pcrs(world["policy"].read_bytes())[0]
    b = dev_pcrs(world["other_policy"].read_bytes())[0]
    none = dev_pcrs()[0]
    assert len({a, b, none}) == 3
    m = run([sys.executable, "-m", "sops_enclave", "measure", "--dev", "--enclave-policy",
             str(world["policy"]), "--json"], world["env"])
    assert m.returncode == 0, m.stderr
    doc = json.loads(m.stdout)
    assert doc["Measurements"]["PCR0"] == a.hex()
    assert doc["EnclavePolicySha256"] == hashlib.sha256(world["policy"].read_bytes()).hexdigest()
    p = _exec(world, repo)
    assert p.returncode == 0, p.stderr
    out = repo / "deploy" / "api" / "prod.enc.json"
    v = run([sys.executable, "-m", "sops_enclave", "verify", str(out), "--allow-dev",
             f"--pcr=0={b.hex()}"], world["env"])
    assert v.returncode != 0


def test_nitro_enclave_refuses_to_run_without_a_policy():
    from sops_enclave.enclave.executor import PackError, run_pack

    with pytest.raises(PackError, match="no enclave policy"):
        run_pack({"nonce": os.urandom(32)}, nsm=None, kms_client_factory=None, dev=False,
                 policy=None)


def test_nitro_app_will_not_start_without_its_measured_policy(tmp_path):
    from sops_enclave.enclave import app

    with pytest.raises(SystemExit, match="enclave policy"):
        app._load_policy(str(tmp_path / "missing.yaml"), dev=False)


def test_bundle_measures_the_policy(world, tmp_path):
    from sops_enclave.enclave.bundle import build
    from sops_enclave.pack.enclave_policy import BUNDLE_PATH

    root = Path(__file__).resolve().parents[2]
    a = build(root, tmp_path / "a.tar", 0, enclave_policy=world["policy"].read_bytes())
    b = build(root, tmp_path / "b.tar", 0, enclave_policy=world["other_policy"].read_bytes())
    assert a.dev_pcrs[0] != b.dev_pcrs[0] and a.dev_pcrs[1] == b.dev_pcrs[1]
    assert a.enclave_policy_sha256 == hashlib.sha256(world["policy"].read_bytes()).hexdigest()
    import tarfile

    with tarfile.open(tmp_path / "a.tar") as t:
        assert t.extractfile(BUNDLE_PATH).read() == world["policy"].read_bytes()


@pytest.mark.parametrize("change,reason", [
    ({"nonce": None}, "nonce"), ({"nonce": b"short"}, "nonce"),
    ({"repository": "https://x\x1b[8m/prod.git"}, "control characters"),
    ({"repository": ""}, "repository"), ({"repository": "r" * 2000}, "repository")])
def test_request_fields_the_host_asserts_are_checked(change, reason):
    """A request without a usable nonce (receipts would carry no freshness) or with a
    repository string that could hide text on a terminal is refused before anything else."""
    from sops_enclave.enclave.executor import PackError, run_pack

    req = {"nonce": os.urandom(32), "repository": "https://example.com/r.git",
           "commit": "0" * 40, "git": {}}
    req.update(change)
    with pytest.raises(PackError, match=reason):
        run_pack(req, nsm=None, kms_client_factory=None, dev=True, policy=None)
