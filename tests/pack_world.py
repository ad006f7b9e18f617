"""Shared by the exec/audit tests: a dev stack (moto's KMS behind the attested layer) with a
gated input key, a runtime key, an SSH signing key and an enclave policy naming them, the
input key's policy pinned to the dev PCR0 with that enclave policy (as in `make demo`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

ROLE = "arn:aws:iam::123456789012:role/ci-host"
ADMIN = "arn:aws:iam::123456789012:role/kms-admin"


def git(repo: Path, *args: str, key: Path | None = None) -> bytes:
    """git in ``repo`` as the release engineer; ``key`` signs (gpg.format=ssh)."""
    env = dict(os.environ, GIT_AUTHOR_NAME="Release", GIT_AUTHOR_EMAIL="release@example.com",
               GIT_COMMITTER_NAME="Release", GIT_COMMITTER_EMAIL="release@example.com",
               GIT_CONFIG_NOSYSTEM="1", HOME=str(repo))
    cfg = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}"] if key else []
    return subprocess.run(["git", *cfg, "-C", str(repo), *args], check=True,
                          capture_output=True, env=env).stdout


@contextmanager
def policy_world(tmp: Path, base_env: dict[str, str],
                 principal: str = "release@example.com",
                 extra_outputs: str = "") -> Iterator[dict[str, Any]]:
    """Yields ``{stack, env, gated, runtime, policy, key, tmp, pcr0}``; stops the stack after.
    ``extra_outputs``: more lines of the policy's ``outputs`` section (indented by two)."""
    if not shutil.which("ssh-keygen"):
        pytest.skip("ssh-keygen is not installed (apt-get install openssh-client)")
    import boto3

    from sops_enclave.devtools.devstack import DevStack, dev_pcrs
    from sops_enclave.image.policy import key_policy

    key = tmp / "release-key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "release",
                    "-f", str(key)], check=True, capture_output=True)
    signer = " ".join(Path(f"{key}.pub").read_text().split()[:2])
    ca = tmp / "dev-ca"
    stack = DevStack(ca_dir=str(ca)).start()
    try:
        kms = boto3.client("kms", region_name="us-east-1", endpoint_url=stack.url,
                           aws_access_key_id="kms-admin", aws_secret_access_key="kms-admin")
        gated = kms.create_key(Description="inputs")["KeyMetadata"]["Arn"]
        runtime = kms.create_key(Description="runtime")["KeyMetadata"]["Arn"]
        policy = tmp / "enclave-policy.yaml"
        policy.write_text(f'version: 1\ncommit_signers:\n  - "{principal} {signer}"\n'
                          f'outputs:\n  kms: ["{runtime}"]\n{extra_outputs}'
                          f'inputs:\n  kms: ["{gated}"]\n')
        pcr0 = dev_pcrs(policy.read_bytes())[0].hex()
        kms.put_key_policy(KeyId=gated, PolicyName="default", Policy=json.dumps(
            key_policy(pcr0, role_arn=ROLE, admin_arns=[ADMIN])))
        env = dict(base_env, **stack.env(), SOPS_ENCLAVE_DEV_CA_DIR=str(ca))
        yield {"stack": stack, "env": env, "gated": gated, "runtime": runtime,
               "policy": policy, "key": key, "tmp": tmp, "pcr0": pcr0}
    finally:
        stack.stop()
