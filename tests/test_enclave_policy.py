"""The enclave policy loader: what a policy may say, and the one-line refusal of everything
else (a policy means exactly what it says or it does not load)."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from sops_enclave.pack.enclave_policy import EnclavePolicyError, load_enclave_policy

KEY = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
    serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
SIGNER = f"release@example.com {KEY}"
ARN = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
VAULT = "https://vault.example.com:8200/v1/transit/keys/runtime"


def _ca_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vault CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(7)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


CA = _ca_pem()


def policy(outputs: str, extra: str = "") -> bytes:
    return (f'version: 1\ncommit_signers: ["{SIGNER}"]\noutputs:\n{outputs}'
            f'inputs:\n  kms: ["{ARN}"]\n{extra}').encode()


def indented(pem: str) -> str:
    return "".join(f"    {line}\n" for line in pem.splitlines())


def test_vault_outputs_and_their_ca():
    p = load_enclave_policy(policy(f'  hc_vault: ["{VAULT}"]\n  hc_vault_ca: |\n'
                                   + indented(CA)))
    assert p.output_hc_vault == (VAULT,) and p.hc_vault_ca == CA
    assert p.output_kms == () and p.output_age == ()
    p.check_output("t", [], [], [VAULT])
    with pytest.raises(EnclavePolicyError, match="outputs.hc_vault"):
        p.check_output("t", [], [], [VAULT.replace("runtime", "other")])
    # Exact URIs: another host, scheme or engine is another key.
    for other in (VAULT.replace("https", "http"), VAULT.replace("vault.", "evil."),
                  VAULT.replace("transit", "transit2")):
        with pytest.raises(EnclavePolicyError, match=r"target t: Vault transit key .* not"):
            p.check_output("t", [], [], [other])


def test_a_policy_without_vault_keeps_working_and_refuses_vault_outputs():
    p = load_enclave_policy(policy(f'  kms: ["{ARN}"]\n'))
    assert p.output_hc_vault == () and p.hc_vault_ca is None
    p.check_output("t", [ARN], [])
    with pytest.raises(EnclavePolicyError, match="not allowed by the enclave policy"):
        p.check_output("t", [ARN], [], [VAULT])


@pytest.mark.parametrize("outputs,expected", [
    ('  hc_vault: ["vault.example.com/v1/transit/keys/k"]\n', "is not a Vault transit key URI"),
    ('  hc_vault: ["https://v.example/v1/transit/keys/k?x=1"]\n', "is not a Vault transit key"),
    ('  hc_vault: ["https://v.example/v1//transit/keys/k"]\n', "is not a Vault transit key"),
    ('  hc_vault: ["https://v.example/x/v1/transit/keys/k"]\n', "is not a Vault transit key"),
    ('  hc_vault: ["ftp://v.example/v1/transit/keys/k"]\n', "is not a Vault transit key"),
    ("  hc_vault: https://v.example/v1/transit/keys/k\n", "outputs.hc_vault: must be a list"),
    (f'  kms: ["{ARN}"]\n  hc_vault_ca: |\n' + indented(CA),
     "outputs.hc_vault_ca: there is no outputs.hc_vault key"),
    (f'  hc_vault: ["{VAULT}"]\n  hc_vault_ca: not a certificate\n',
     "outputs.hc_vault_ca: must be PEM certificates"),
    (f'  hc_vault: ["{VAULT}"]\n  hc_vault_ca: |\n    -----BEGIN CERTIFICATE-----\n'
     "    AAAA\n    -----END CERTIFICATE-----\n", "the certificates cannot be read"),
    ("  hc_vault: []\n", "outputs must allow at least one KMS key, age recipient or Vault"),
    ('  gcp_kms: ["projects/p"]\n', "outputs: unknown key(s) gcp_kms"),
])
def test_refusals(outputs, expected):
    with pytest.raises(EnclavePolicyError) as e:
        load_enclave_policy(policy(outputs), "policy.yaml")
    assert e.value.message.startswith("policy.yaml: ")
    assert expected in e.value.message
    assert len(e.value.message.splitlines()) == 1


@pytest.mark.parametrize("text,expected", [
    ("version: 2\n", "version must be 1"),
    ("version: 1\ncommit_signers: []\noutputs: {age: [age1x]}\n",
     "commit_signers must list at least one allowed signer"),
    (f'version: 1\ncommit_signers: ["{SIGNER}"]\noutputs: {{kms: ["arn:aws:kms:*:1:key/x"]}}\n',
     "only a trailing '*' is allowed"),
    (f'version: 1\ncommit_signers: ["{SIGNER}"]\noutputs: {{age: [x]}}\nextra: 1\n',
     "unknown key(s) extra"),
    (f'version: 1\ncommit_signers: ["a cert-authority {KEY}"]\noutputs: {{age: [x]}}\n',
     "option 'cert-authority' is not supported"),
])
def test_general_refusals(text, expected):
    with pytest.raises(EnclavePolicyError, match=None) as e:
        load_enclave_policy(text.encode())
    assert expected in e.value.message
