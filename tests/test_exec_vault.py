"""`exec` outputs encrypted to a Vault transit key (issue #14, the enclave part).

A real OpenBao server serving TLS with a CA it generated (started here on 127.0.0.1, stopped
after), the dev stack with a gated input KMS key, and an enclave policy whose `outputs.hc_vault`
lists one transit key and whose `outputs.hc_vault_ca` is that CA. The genuine dev enclave packs
a signed commit into an output wrapped by that key; the sops 3.11 binary opens it with the
Vault token alone. The attacks: a manifest naming a transit key the policy does not list, a run
without a token, a Vault reached over plain http by a non-dev enclave (each refused, nothing
written, no KMS Decrypt made), and a server whose certificate the policy's CA did not sign.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import pytest

from conftest import run
from keytypes_support import openbao
from pack_world import git, policy_world

TOOL = [sys.executable, "-m", "sops_enclave"]
SECRETS = (b"vault-out-pw-3e9a", b"vault-tok-51c0")


#: Listed in the policy, served by nobody: only a non-dev enclave's refusal is tested with it.
HTTP_URI = "http://127.0.0.1:9/v1/transit/keys/k1"


@pytest.fixture(scope="module")
def bao(tmp_path_factory):
    with openbao(tmp_path_factory.mktemp("bao-home"), tls=True) as server:
        yield server


def _uri(bao, key: str) -> str:
    return f"{bao['addr']}/v1/transit/keys/{key}"


@pytest.fixture(scope="module")
def world(tmp_path_factory, base_env, bao):
    ca = "".join(f"    {line}\n" for line in bao["ca"].read_text().splitlines())
    extra = f'  hc_vault: ["{_uri(bao, "k1")}", "{HTTP_URI}"]\n  hc_vault_ca: |\n{ca}'
    with policy_world(tmp_path_factory.mktemp("exec-vault"), base_env,
                      extra_outputs=extra) as w:
        w["env"] = dict(w["env"], VAULT_TOKEN=bao["token"])
        yield w


MANIFEST = """version: 1
outputs:
  - target: api/prod
    path: deploy/api/prod.enc.yaml
    inputs: [secrets/common.enc.yaml, secrets/prod.enc.yaml]
    encrypt:
      hc_vault: ["{uri}"]
"""


def make_repo(world, tmp_path: Path, uri: str) -> Path:
    repo = tmp_path / "repo"
    (repo / "secrets").mkdir(parents=True)
    for name, text in (("common", b"db:\n    host: db.internal\n    password: vault-out-pw-3e9a\n"),
                       ("prod", b"token: vault-tok-51c0\nlog: info\n")):
        src = tmp_path / f"{name}.yaml"
        src.write_bytes(text)
        p = run(TOOL + ["encrypt", "--kms", world["gated"], "--output",
                        str(repo / "secrets" / f"{name}.enc.yaml"), str(src)], world["env"])
        assert p.returncode == 0, p.stderr
        src.unlink()
    (repo / ".sops-enclave.yaml").write_text(MANIFEST.format(uri=uri))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-S", "-m", "secrets", key=world["key"])
    return repo


def exec_(world, repo: Path, *args: str, env: dict | None = None):
    return run(TOOL + ["exec", "--repo", str(repo), "--enclave-policy", str(world["policy"]),
                       *args], env or world["env"])


def snapshot(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for p in sorted(repo.rglob("*"))
            if p.is_file() and ".git" not in p.parts}


def refused(world, repo: Path, p, before: dict[str, bytes], decrypts: int, reason: str) -> None:
    assert p.returncode != 0, p.stdout
    err = p.stderr.decode()
    assert reason in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert snapshot(repo) == before, "the refused run wrote something"
    assert world["stack"].kms.stats.get("Decrypt", 0) == decrypts, "a KMS Decrypt was made"
    for s in SECRETS:
        assert s not in p.stdout and s not in p.stderr


def test_output_to_a_listed_transit_key_opens_with_the_sops_binary(world, bao, tmp_path,
                                                                    sops_bin, base_env):
    repo = make_repo(world, tmp_path, _uri(bao, "k1"))
    p = exec_(world, repo)
    assert p.returncode == 0, p.stderr
    out = repo / "deploy" / "api" / "prod.enc.yaml"
    text = out.read_text()
    for s in SECRETS:
        assert s.decode() not in text
    import yaml

    doc = yaml.safe_load(text)
    (entry,) = doc["sops"]["hc_vault"]
    assert (entry["vault_address"], entry["engine_path"], entry["key_name"]) == \
        (bao["addr"], "transit", "k1")
    assert entry["enc"].startswith("vault:v1:") and entry["created_at"]
    assert "kms" not in doc["sops"] and "age" not in doc["sops"]
    # The sops binary opens it with the Vault token and nothing else (no KMS, no age key)...
    plain_env = {k: v for k, v in base_env.items() if not k.startswith(("SOPS_AGE", "AWS_"))}
    plain_env["VAULT_CACERT"] = str(bao["ca"])
    d = run([sops_bin, "decrypt", str(out)], dict(plain_env, VAULT_TOKEN=bao["token"]))
    assert d.returncode == 0, d.stderr
    assert yaml.safe_load(d.stdout) == {"db": {"host": "db.internal",
                                               "password": "vault-out-pw-3e9a"},
                                        "token": "vault-tok-51c0", "log": "info"}
    # ...and not without it: the data key really is wrapped by Vault.
    assert run([sops_bin, "decrypt", str(out)], plain_env).returncode == 128
    # The receipt names the transit key as the output's recipient, and verifies.
    receipt = json.loads((repo / "deploy/api/prod.enc.yaml.receipt.json").read_bytes())
    st = json.loads(base64.b64decode(receipt["envelope"]["payload"]))
    rec = st["predicate"]["buildDefinition"]["internalParameters"]["recipients"]
    assert rec["hcVault"] == [_uri(bao, "k1")] and rec["kms"] == [] and rec["age"] == []
    v = run(TOOL + ["verify", str(out), "--allow-dev", f"--pcr=0={world['pcr0']}",
                    "--enclave-policy", str(world["policy"])], world["env"])
    assert v.returncode == 0, v.stdout + v.stderr
    a = run(TOOL + ["audit", str(repo / "deploy"), "--allow-dev", f"--pcr=0={world['pcr0']}",
                    "--repo", str(repo), "--format", "json"], world["env"])
    assert a.returncode == 0, a.stdout + a.stderr
    (row,) = json.loads(a.stdout)["outputs"]
    assert row["output_recipients"] == [_uri(bao, "k1")]


def test_transit_key_the_policy_does_not_list_is_refused(world, bao, tmp_path):
    repo = make_repo(world, tmp_path, _uri(bao, "k2"))
    before, decrypts = snapshot(repo), world["stack"].kms.stats.get("Decrypt", 0)
    for args in ((), ("--dry-run",)):  # the enclave refuses it, and --dry-run says so first
        p = exec_(world, repo, *args)
        refused(world, repo, p, before, decrypts,
                f"Vault transit key {_uri(bao, 'k2')} is not allowed by the enclave policy "
                "(outputs.hc_vault)")


def test_no_vault_token_is_refused_before_anything_runs(world, bao, tmp_path):
    repo = make_repo(world, tmp_path, _uri(bao, "k1"))
    before, decrypts = snapshot(repo), world["stack"].kms.stats.get("Decrypt", 0)
    env = {k: v for k, v in world["env"].items() if k != "VAULT_TOKEN"}
    p = exec_(world, repo, env=env)
    refused(world, repo, p, before, decrypts, "no Vault token is set: export VAULT_TOKEN")


def _request(world, repo: Path, token: str | None) -> dict:
    """The request an honest host would build, then the host's changes."""
    from sops_enclave.pack.host import ExecOptions, build_request, plan_at_commit

    opts = ExecOptions(repo=str(repo), enclave="dev")
    commit, _, plans = plan_at_commit(opts, lambda *a: None)
    req = build_request(opts, commit, plans, dict(world["env"], VAULT_TOKEN="t"), dev=True)
    if token is None:
        req.pop("hc_vault")
    return req


def _policy(world):
    from sops_enclave.pack.enclave_policy import load_enclave_policy

    return load_enclave_policy(world["policy"].read_bytes())


def _no_kms(arn: str):
    raise AssertionError(f"KMS was called for {arn}")


def test_enclave_refuses_a_request_without_a_token(world, bao, tmp_path):
    """A host that strips the token: the enclave stops before its first KMS call."""
    from sops_enclave.enclave.executor import PackError, run_pack

    repo = make_repo(world, tmp_path, _uri(bao, "k1"))
    with pytest.raises(PackError, match="carries no Vault token"):
        run_pack(_request(world, repo, None), nsm=None, kms_client_factory=_no_kms, dev=True,
                 policy=_policy(world))


def test_nitro_enclave_sends_data_keys_to_vault_only_over_https(world, bao, tmp_path):
    """On Nitro the host carries every byte: an http Vault listed in the policy is still
    refused, before any KMS call."""
    from sops_enclave.enclave.executor import PackError, run_pack

    repo = make_repo(world, tmp_path, HTTP_URI)
    with pytest.raises(PackError, match="not reached over https"):
        run_pack(_request(world, repo, "t"), nsm=None, kms_client_factory=_no_kms, dev=False,
                 policy=_policy(world))


def test_the_policy_ca_is_the_only_trust_for_vault_tls(bao, tmp_path):
    """The enclave trusts only the policy's CAs: a server certificate from another CA fails
    even with VAULT_SKIP_VERIFY in the settings, and the same call with the right CA works."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from sops_enclave.keys import hcvault
    from sops_enclave.keys.base import KeyUnavailable

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    other = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
             .public_key(key.public_key()).serial_number(1)
             .not_valid_before(now - datetime.timedelta(days=1))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
             .sign(key, hashes.SHA256()))
    other_pem = other.public_bytes(serialization.Encoding.PEM).decode()
    env = {"VAULT_TOKEN": bao["token"], "VAULT_SKIP_VERIFY": "true",
           "VAULT_CACERT": str(bao["ca"])}
    with pytest.raises(KeyUnavailable, match="failed to verify certificate"):
        hcvault.wrap(b"k" * 32, bao["addr"], "transit", "k1", env, cadata=other_pem)
    enc = hcvault.wrap(b"k" * 32, bao["addr"], "transit", "k1", env,
                       cadata=bao["ca"].read_text())
    assert enc.startswith("vault:v1:")
    assert hcvault.unwrap(enc, bao["addr"], "transit", "k1",
                          {"VAULT_TOKEN": bao["token"], "VAULT_CACERT": str(bao["ca"])}) \
        == b"k" * 32
