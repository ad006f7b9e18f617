"""The one master key interface: the registry, "not mine" vs "unavailable", metadata entries
of every type in sops' order, key-service messages for every type, refreshing KMS role
credentials, and no cloud SDK loaded to decrypt an age file."""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import subprocess
import sys

import pytest

from sops_enclave.errors import KeyMismatch, SopsError
from sops_enclave.keys import registry
from sops_enclave.keys.base import KeyContext, KeyUnavailable, MasterKeyType
from sops_enclave.keys.groups import LocalKeyService, get_data_key, protect_data_key
from sops_enclave.metadata import (AgeEntry, AzureKVEntry, GCPKMSEntry, HCKMSEntry, KMSEntry,
                                   Metadata, OtherEntry, PGPEntry, VaultEntry, parse_metadata)
from sops_enclave.tree import Branch


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_metadata_type_has_a_key_type():
    assert set(registry.KEY_MODULES) == {"age", "pgp", "kms", "gcp_kms", "azure_kv",
                                         "hc_vault", "hckms"}
    for name in registry.KEY_MODULES:
        kt = registry.key_type(name)
        assert isinstance(kt, MasterKeyType), name
        assert kt.type == name
    assert [n for n, _, _ in registry.CLI_FLAGS] == ["kms", "gcp_kms", "hckms", "azure_kv",
                                                     "pgp", "hc_vault", "age"]


def test_decrypting_an_age_file_loads_no_cloud_sdk(tmp_path, age_key):
    env = dict(os.environ, SOPS_AGE_KEY=age_key[0])
    (tmp_path / "p.yaml").write_text("a: 1\n")
    p = subprocess.run([sys.executable, "-m", "sops_enclave", "encrypt", "--age", age_key[1],
                        str(tmp_path / "p.yaml")], env=env, capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    (tmp_path / "e.yaml").write_bytes(p.stdout)
    code = ("import sys, json\nfrom sops_enclave.cli import main\n"
            "rc = main(['decrypt', sys.argv[1]])\n"
            "sys.stderr.write(json.dumps([rc, sorted(sys.modules)]))\n")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "e.yaml")], env=env,
                       capture_output=True, timeout=60)
    rc, mods = json.loads(p.stderr)
    assert rc == 0 and p.stdout == b"a: 1\n"
    sdk = [m for m in mods if m.split(".")[0] in ("google", "azure", "huaweicloudsdkcore",
                                                  "huaweicloudsdkkms", "boto3", "botocore",
                                                  "grpc", "requests")]
    assert sdk == []
    keys = {m for m in mods if m.startswith("sops_enclave.keys.")}
    assert "sops_enclave.keys.age" in keys
    assert not keys & {"sops_enclave.keys.gcpkms", "sops_enclave.keys.azkv",
                       "sops_enclave.keys.hcvault", "sops_enclave.keys.hckms",
                       "sops_enclave.keys.kms", "sops_enclave.keys.pgp"}
    # Start-up (the performance issue): nothing that only costs import time on this path.
    assert not set(mods) & {"dataclasses", "inspect", "traceback", "tempfile"}


def test_metadata_entries_in_sops_order():
    group = [AgeEntry("age1x", "A"), PGPEntry("FP", "P", "2024-01-01T00:00:00Z"),
             KMSEntry("arn:aws:kms:us-east-1:1:key/k", enc="K", created_at="t"),
             GCPKMSEntry("projects/p/locations/l/keyRings/r/cryptoKeys/k", "G", "t"),
             AzureKVEntry("https://v.vault.azure.net", "n", "ver", "Z", "t"),
             VaultEntry("http://v:8200", "transit", "k", "V", "t"),
             HCKMSEntry("r:u", "H", "t")]
    md = Metadata(key_groups=[group], lastmodified="2024-01-01T00:00:00Z", version="3.11.0")
    top = md.to_branch()
    assert [k for k, _ in top] == ["kms", "gcp_kms", "hckms", "azure_kv", "hc_vault", "age",
                                   "lastmodified", "mac", "pgp", "version"]
    fields = {k: [f for f, _ in v[0]] for k, v in top if isinstance(v, list)}
    assert fields["gcp_kms"] == ["resource_id", "created_at", "enc"]
    assert fields["hckms"] == ["key_id", "created_at", "enc"]
    assert fields["azure_kv"] == ["vault_url", "name", "version", "created_at", "enc"]
    assert fields["hc_vault"] == ["vault_address", "engine_path", "key_name", "created_at", "enc"]
    md2 = Metadata(key_groups=[group, [HCKMSEntry("r:v", "H2", "t")]],
                   lastmodified="2024-01-01T00:00:00Z", version="3.11.0", shamir_threshold=2)
    groups = dict(md2.to_branch(json_nulls=True))["key_groups"]
    assert [k for k, _ in groups[0]] == ["pgp", "kms", "gcp_kms", "hckms", "azure_kv",
                                         "hc_vault", "age"]
    assert [(k, v if v is None else len(v)) for k, v in groups[1]] == [
        ("hckms", 1), ("hc_vault", None), ("age", None)]
    # and back: every field read, unknown ones dropped (sops' structs have no room for them)
    again = parse_metadata(md2.to_branch())
    assert again.key_groups[0] == [group[i] for i in (2, 3, 6, 4, 5, 1, 0)]  # sops' load order
    assert again.key_groups[1] == [HCKMSEntry("r:v", "H2", "t")]
    raw = md.to_branch()
    dict(raw)["hc_vault"][0].append(("extra", "dropped"))
    assert parse_metadata(raw).key_groups[0][4] == VaultEntry("http://v:8200", "transit", "k",
                                                              "V", "t")


def test_key_service_messages_for_every_type():
    from sops_enclave.keyservice import grpc_modules
    from sops_enclave.keyservice._convert import describe, entry_from_key, key_from_entry

    _, pb, _ = grpc_modules()
    for e in (GCPKMSEntry("projects/p/locations/l/keyRings/r/cryptoKeys/k"),
              AzureKVEntry("https://v.vault.azure.net", "n", "1"),
              VaultEntry("https://v:8200", "a/b", "k"), HCKMSEntry("r:u"),
              KMSEntry("arn:aws:kms:us-east-1:1:key/k", "arn:aws:iam::1:role/r",
                       (("a", "b"),), "prof"), PGPEntry("FP"), AgeEntry("age1x")):
        msg = key_from_entry(e, pb)
        wire = pb.Key.FromString(msg.SerializeToString())
        assert entry_from_key(wire, "ENC") == type(e)(**{**e.__dict__, "enc": "ENC"})
        assert describe(wire) != "unknown key type"
    other = OtherEntry("hckms", Branch([("key_id", "r:u"), ("enc", "x")]))
    assert key_from_entry(other, pb).hckms_key.key_id == "r:u"


def test_not_mine_and_unavailable_are_told_apart(age_key):
    import pyrage

    from sops_enclave.keys import kms

    svc = LocalKeyService({"SOPS_AGE_KEY": age_key[0]})
    other = pyrage.x25519.Identity.generate().to_public()
    foreign = pyrage.encrypt(b"k" * 32, [other], armored=True).decode()
    with pytest.raises(KeyMismatch):
        svc.decrypt(AgeEntry(age_key[1], foreign))
    import base64

    raw = pyrage.encrypt(b"k" * 32, [pyrage.x25519.Recipient.from_str(age_key[1])])
    at = raw.index(b"\n--- ") + 5  # the header MAC: change its first character
    raw = raw[:at] + (b"A" if raw[at:at + 1] != b"A" else b"B") + raw[at + 1:]
    b64 = base64.b64encode(raw).decode()
    armored = "\n".join(["-----BEGIN AGE ENCRYPTED FILE-----",
                         *[b64[i:i + 64] for i in range(0, len(b64), 64)],
                         "-----END AGE ENCRYPTED FILE-----"])
    with pytest.raises(KeyUnavailable, match="bad header MAC"):  # corrupt, not foreign
        svc.decrypt(AgeEntry(age_key[1], armored))
    # Vault: nobody listening is "unavailable", in the failure report as sops words it
    port = _closed_port()
    vault = VaultEntry(f"http://127.0.0.1:{port}", "transit", "k", "vault:v1:x")
    with pytest.raises(KeyUnavailable, match="connect: connection refused"):
        LocalKeyService({"VAULT_MAX_RETRIES": "0", "VAULT_TOKEN": "t"}).decrypt(vault)

    class Err(Exception):
        def __init__(self, code):
            self.response = {"Error": {"Code": code}}

    assert kms._classify(Err("AccessDeniedException")) is KeyMismatch
    assert kms._classify(Err("InvalidCiphertextException")) is KeyMismatch
    assert kms._classify(Err("ThrottlingException")) is KeyUnavailable
    assert kms._classify(Err("KMSInternalException")) is KeyUnavailable
    assert kms._classify(ValueError("no response")) is KeyUnavailable


def test_a_raw_entry_of_a_known_type_is_used_as_that_type():
    port = _closed_port()
    raw = OtherEntry("hc_vault", Branch([("vault_address", f"http://127.0.0.1:{port}"),
                                         ("engine_path", "transit"), ("key_name", "k"),
                                         ("enc", "vault:v1:x")]))
    with pytest.raises(KeyUnavailable, match="'transit/decrypt/k'"):
        LocalKeyService({"VAULT_MAX_RETRIES": "0", "VAULT_TOKEN": "t"}).decrypt(raw)
    with pytest.raises(KeyMismatch, match="does not support nonsense keys"):
        LocalKeyService({}).decrypt(OtherEntry("nonsense", Branch()))


def test_unavailable_reaches_a_remote_client_as_sops_server_sends_it(tmp_path):
    from sops_enclave.keyservice.client import KeyServiceError, RemoteKeyService
    from sops_enclave.keyservice.server import serve, shutdown

    srv = serve("unix", str(tmp_path / "k.sock"),
                LocalKeyService({"VAULT_MAX_RETRIES": "0", "VAULT_TOKEN": "t"}))
    try:
        port = _closed_port()
        remote = RemoteKeyService(srv.keyservice_uri)
        with pytest.raises(KeyServiceError, match=r"code = Unknown desc = failed to decrypt "
                           r"sops data key from Vault transit backend 'transit/decrypt/k'"):
            remote.decrypt(VaultEntry(f"http://127.0.0.1:{port}", "transit", "k", "vault:v1:x"))
        remote.close()
    finally:
        shutdown(srv)


def test_encryption_errors_name_every_key_and_service():
    class Down:
        def encrypt(self, entry, plaintext):
            raise KeyUnavailable(f"down for {entry.type}")

    class Refuses:
        def encrypt(self, entry, plaintext):
            raise KeyMismatch("not here")

    md = Metadata(key_groups=[[HCKMSEntry("r:u"), VaultEntry("http://v", "t", "k")]])
    with pytest.raises(SopsError) as ei:
        protect_data_key(md, b"k" * 32, [Down(), Refuses()])
    assert ei.value.message == (
        'Could not generate data key: [failed to encrypt new data key with master key "r:u": '
        'down for hckms failed to encrypt new data key with master key "r:u": not here '
        'failed to encrypt new data key with master key "http://v/v1/t/keys/k": down for '
        'hc_vault failed to encrypt new data key with master key "http://v/v1/t/keys/k": '
        'not here]')

    class Works:
        def encrypt(self, entry, plaintext):
            return f"enc-{entry.type}"

        def decrypt(self, entry):
            return b"k" * 32

    now = _dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=_dt.timezone.utc)
    protect_data_key(md, b"k" * 32, [Down(), Works()], now=now)
    assert [(e.enc, e.created_at) for e in md.key_groups[0]] == [
        ("enc-hckms", "2024-05-06T07:08:09Z"), ("enc-hc_vault", "2024-05-06T07:08:09Z")]
    assert get_data_key(md, [Works()]) == b"k" * 32


def test_kms_role_credentials_are_refreshed():
    """An assumed role's STS credentials are renewed when they near expiry, so a long-lived
    key service does not fail when the first ones expire."""
    from botocore.credentials import RefreshableCredentials

    from sops_enclave.keys import kms

    calls = []

    class FakeSTS:
        def assume_role(self, RoleArn, RoleSessionName):  # noqa: N803 (boto3 names)
            calls.append((RoleArn, RoleSessionName))
            n = len(calls)
            # the first set is 5 minutes from expiry: inside botocore's mandatory refresh window
            ttl = 300 if n == 1 else 3600
            return {"Credentials": {
                "AccessKeyId": f"ASIA{n}", "SecretAccessKey": f"secret{n}",
                "SessionToken": f"token{n}",
                "Expiration": _dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(seconds=ttl)}}

    creds = kms.role_credentials(FakeSTS(), "arn:aws:iam::123:role/sops")
    assert isinstance(creds, RefreshableCredentials)
    assert len(calls) == 1
    frozen = creds.get_frozen_credentials()
    assert frozen.access_key == "ASIA2" and frozen.token == "token2"  # renewed on use
    assert creds.get_frozen_credentials().access_key == "ASIA2"       # and kept while fresh
    assert len(calls) == 2
    assert calls[0][0] == "arn:aws:iam::123:role/sops" and calls[0][1].startswith("sops@")


def test_kms_client_with_a_role_holds_refreshable_credentials(kms_env, kms_key, monkeypatch):
    from botocore.credentials import RefreshableCredentials

    from sops_enclave.keys import kms

    for k, v in kms_env.items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", kms_env["AWS_ENDPOINT_URL_KMS"])
    monkeypatch.setattr(kms, "_clients", {})
    role = "arn:aws:iam::123456789012:role/sops-test"
    enc = kms.wrap(b"k" * 32, kms_key, role)
    client = kms._clients[(kms.region_of(kms_key), role, "")]
    creds = client._request_signer._credentials
    assert isinstance(creds, RefreshableCredentials)
    assert creds.get_frozen_credentials().access_key != "testing"  # the role's, not the base
    assert kms.unwrap(enc, kms_key, role) == b"k" * 32


def test_context_reads_only_its_environment(tmp_path):
    ctx = KeyContext({"SOPS_GPG_EXEC": "/opt/gpg2"})
    assert ctx.gpg() == "/opt/gpg2" and ctx.get("VAULT_TOKEN") == ""
    from sops_enclave.keys.hcvault import vault_token

    (tmp_path / ".vault-token").write_text("  from-file\n")
    assert vault_token({"HOME": str(tmp_path)}) == "from-file"
    assert vault_token({"HOME": str(tmp_path), "VAULT_TOKEN": "env"}) == "env"
    assert vault_token({"HOME": str(tmp_path / "none")}) == ""


def test_a_missing_sdk_is_an_unusable_key_with_an_install_hint(monkeypatch):
    """Without the vendor SDK the key fails like any unreachable key (exit 128 on decrypt),
    saying what to install."""
    import builtins

    real_import = builtins.__import__

    def no_gcp(name, *a, **kw):
        if name.startswith("google.cloud.kms"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_gcp)
    monkeypatch.delitem(sys.modules, "google.cloud.kms_v1", raising=False)
    e = GCPKMSEntry("projects/p/locations/l/keyRings/r/cryptoKeys/k", "Zm9v")
    with pytest.raises(KeyUnavailable, match=r"pip install 'sops-enclave\[gcp\]'"):
        LocalKeyService({}).decrypt(e)
