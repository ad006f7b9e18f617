"""End to end: `sops-enclave exec --enclave dev` against a KMS with attestation over HTTP.

A git repository holds KMS-encrypted inputs and a manifest; the dev enclave (the real
enclave program as a local process with the software NSM) gets the data keys with KMS
`Decrypt` + `Recipient`, merges, re-encrypts, and writes receipts that `verify` accepts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import run

PCR0_KEY = "kms:RecipientAttestation:ImageSha384"


def _policy(pcr0_hex: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": "*"},
         "Action": ["kms:Encrypt", "kms:DescribeKey", "kms:GetKeyPolicy", "kms:PutKeyPolicy",
                    "kms:CreateAlias"], "Resource": "*"},
        {"Sid": "EnclaveOnly", "Effect": "Allow", "Principal": {"AWS": "*"},
         "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*",
         "Condition": {"StringEqualsIgnoreCase": {PCR0_KEY: pcr0_hex}}},
        {"Sid": "DenyWithoutAttestation", "Effect": "Deny", "Principal": {"AWS": "*"},
         "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*",
         "Condition": {"Null": {PCR0_KEY: "true"}}},
    ]})


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    ca = tmp_path_factory.mktemp("dev-ca")
    os.environ["SOPS_ENCLAVE_DEV_CA_DIR"] = str(ca)
    from sops_enclave.devtools.devstack import DevStack, dev_pcrs

    stack = DevStack(ca_dir=str(ca)).start()
    yield stack, dev_pcrs(), str(ca)
    stack.stop()
    os.environ.pop("SOPS_ENCLAVE_DEV_CA_DIR", None)


@pytest.fixture(scope="module")
def kms(dev):
    import boto3

    stack, pcrs, _ = dev
    c = boto3.client("kms", region_name="us-east-1", endpoint_url=stack.url,
                     aws_access_key_id="dev", aws_secret_access_key="dev")
    gated = c.create_key(Description="inputs, enclave only")["KeyMetadata"]["Arn"]
    c.put_key_policy(KeyId=gated, PolicyName="default", Policy=_policy(pcrs[0].hex()))
    wrong = c.create_key(Description="pinned to another image")["KeyMetadata"]["Arn"]
    c.put_key_policy(KeyId=wrong, PolicyName="default", Policy=_policy("00" * 48))
    runtime = c.create_key(Description="outputs, for the runtime")["KeyMetadata"]["Arn"]
    return c, gated, wrong, runtime


def _git(repo, *args):
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.invalid",
               GIT_CONFIG_NOSYSTEM="1", HOME=str(repo))
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          env=env).stdout


def _make_repo(tmp_path, base_env, dev, kms, age_key, input_key):
    stack, pcrs, ca = dev
    _, gated, wrong, runtime = kms
    key = {"gated": gated, "wrong": wrong}[input_key]
    repo = tmp_path / "repo"
    (repo / "secrets").mkdir(parents=True)
    env = dict(base_env, **stack.env(), SOPS_ENCLAVE_DEV_CA_DIR=ca)
    docs = {"secrets/common.yaml": b"db:\n    host: db.internal\n    password: common-pw\n"
                                   b"log_level: info\n",
            "secrets/prod.yaml": b"api:\n    db:\n        password: prod-pw\n"
                                 b"    token: t0k3n\nworker:\n    queue: q\n"}
    for path, content in docs.items():
        src = tmp_path / os.path.basename(path)
        src.write_bytes(content)
        out = repo / path.replace(".yaml", ".enc.yaml")
        p = run([sys.executable, "-m", "sops_enclave", "encrypt", "--kms", key, "--output",
                 str(out), str(src)], env)
        assert p.returncode == 0, p.stderr
    (repo / ".sops-enclave.yaml").write_text(f"""version: 1
matrix: {{service: [api]}}
outputs:
  - target: "{{service}}/prod"
    path: "deploy/{{service}}/prod.enc.json"
    inputs:
      - secrets/common.enc.yaml
      - {{file: "secrets/prod.enc.yaml", extract: '["{{service}}"]'}}
      - {{file: "secrets/{{service}}/extra.enc.yaml", optional: true}}
    encrypt:
      kms: ["{runtime}"]
      encryption_context: {{service: "{{service}}", env: prod}}
      age: ["{age_key[1]}"]
""")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "secrets")
    return repo, env


def test_exec_dev_end_to_end(tmp_path, base_env, dev, kms, age_key, sops_bin, enclave_bin):
    stack, pcrs, ca = dev
    repo, env = _make_repo(tmp_path, base_env, dev, kms, age_key, "gated")
    before = dict(stack.kms.stats)
    dry = run(enclave_bin + ["exec", "--dry-run", "--repo", str(repo)], env)
    assert dry.returncode == 0, dry.stderr
    assert b"deploy/api/prod.enc.json" in dry.stdout and b"prod-pw" not in dry.stdout
    p = run(enclave_bin + ["exec", "--repo", str(repo)], env)
    assert p.returncode == 0, p.stderr
    out = repo / "deploy" / "api" / "prod.enc.json"
    receipt = repo / "deploy" / "api" / "prod.enc.json.receipt.json"
    assert out.exists() and receipt.exists()
    for f in (out, receipt):
        data = f.read_bytes()
        for secret in (b"common-pw", b"prod-pw", b"t0k3n"):
            assert secret not in data
    # Exactly one attested KMS Decrypt per distinct data key (two inputs, two data keys).
    after = stack.kms.stats
    assert after.get("Decrypt", 0) - before.get("Decrypt", 0) == 2
    # The runtime opens the output with plain sops and its age key.
    d = run([sops_bin, "decrypt", str(out)], dict(base_env))
    assert d.returncode == 0, d.stderr
    merged = json.loads(d.stdout)
    assert merged == {"db": {"host": "db.internal", "password": "prod-pw"}, "log_level": "info",
                      "token": "t0k3n"}
    # The receipt verifies with the dev root and the dev PCRs, and checks against the repo.
    pcr_args = [f"--pcr={i}={pcrs[i].hex()}" for i in (0, 1, 2)]
    v = run(enclave_bin + ["verify", str(out), "--allow-dev", *pcr_args, "--repo", str(repo)],
            env)
    assert v.returncode == 0, v.stdout + v.stderr
    nodev = run(enclave_bin + ["verify", str(out), *pcr_args], env)
    assert nodev.returncode != 0
    # Changing the output breaks the receipt.
    out.write_bytes(out.read_bytes().replace(b'"sops"', b'"sops" '))
    bad = run(enclave_bin + ["verify", str(out), "--allow-dev", *pcr_args], env)
    assert bad.returncode != 0


def test_exec_refused_when_policy_pins_another_image(tmp_path, base_env, dev, kms, age_key,
                                                     enclave_bin):
    repo, env = _make_repo(tmp_path, base_env, dev, kms, age_key, "wrong")
    p = run(enclave_bin + ["exec", "--repo", str(repo)], env)
    assert p.returncode != 0
    assert b"AccessDenied" in p.stderr or b"denied" in p.stderr.lower()
    assert b"Traceback" not in p.stderr
    assert not (repo / "deploy").exists(), "no output may be written when the run fails"


def test_plain_decrypt_of_gated_input_is_denied(tmp_path, base_env, dev, kms, age_key,
                                                enclave_bin):
    repo, env = _make_repo(tmp_path, base_env, dev, kms, age_key, "gated")
    p = run(enclave_bin + ["decrypt", str(repo / "secrets" / "prod.enc.yaml")], env)
    assert p.returncode == 128  # the host cannot decrypt: only the attested enclave can
