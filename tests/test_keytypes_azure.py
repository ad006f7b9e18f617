"""Azure Key Vault keys against the local stand-in (sops_enclave/devtools/azure_kv_server.py:
Key Vault REST encrypt/decrypt over HTTPS with a test CA, reached as
``https://NAME.vault.azure.net`` through ``HTTPS_PROXY``, tokens from the App Service
managed-identity endpoint), cross-checked with the sops 3.11 binary through
``sops-enclave keyservice`` and directly (the Go SDK accepts the stand-in as it is)."""

from __future__ import annotations

import pytest

from keytypes_support import (ENCLAVE, PLAIN, clean_env, enclave_keyservice, formats, masked,
                              metadata_of, ok, run, sops_keyservice)


@pytest.fixture(scope="module")
def az(tmp_path_factory):
    from sops_enclave.devtools.azure_kv_server import AzureKeyVaultStandIn
    from sops_enclave.devtools.local_ca import LocalCA

    ca = LocalCA(tmp_path_factory.mktemp("az-ca"))
    srv = AzureKeyVaultStandIn(ca).start()
    vault = srv.create_vault("sops-enclave-test")
    v1 = srv.create_key(vault, "sops-key", principals=["mi-app"])
    other = srv.create_key(vault, "other-key", principals=["mi-other"])
    try:
        yield {"srv": srv, "vault": vault, "v1": v1, "other": other, "ca": str(ca.cert_path),
               "secret": srv.add_identity("mi-app"), "secret_other": srv.add_identity("mi-x")}
    finally:
        srv.stop()


def _env(az, home, secret=None):
    """Both sops and sops-enclave reach the stand-in the same way Azure is reached."""
    return clean_env(home, HTTPS_PROXY=az["srv"].proxy, NO_PROXY="127.0.0.1,localhost",
                     REQUESTS_CA_BUNDLE=az["ca"], SSL_CERT_FILE=az["ca"],
                     IDENTITY_ENDPOINT=az["srv"].identity_endpoint,
                     IDENTITY_HEADER=secret or az["secret"])


def _url(az, version=None):
    return f"{az['vault']}/keys/sops-key/{az['v1'] if version is None else version}"


def _plain(tmp_path, fmt, ext):
    p = tmp_path / f"plain.{ext}"
    p.write_bytes(PLAIN[fmt])
    return p


def test_sops_through_our_keyservice_and_back_in_every_format(az, tmp_path, sops_bin):
    env = _env(az, tmp_path / "h")
    bare = clean_env(tmp_path / "bare")
    srv = enclave_keyservice(env, tmp_path / "ks.sock", tmp_path)
    try:
        for fmt, ext in formats():
            plain = _plain(tmp_path, fmt, ext)
            # a versioned URL: sops itself would otherwise ask Azure for the version
            via = ok(run([sops_bin, "encrypt", *srv.via(), "--azure-kv", _url(az), plain.name],
                         bare, tmp_path))
            (tmp_path / f"via.{ext}").write_bytes(via)
            assert ok(run([*ENCLAVE, "decrypt", f"via.{ext}"], env, tmp_path)) == PLAIN[fmt]
            direct = ok(run([*ENCLAVE, "encrypt", "--azure-kv", _url(az), plain.name], env,
                            tmp_path))
            (tmp_path / f"direct.{ext}").write_bytes(direct)
            assert ok(run([sops_bin, "decrypt", *srv.via(), f"direct.{ext}"], bare,
                          tmp_path)) == PLAIN[fmt]
            assert masked(metadata_of(fmt, direct)) == masked(metadata_of(fmt, via)), fmt
    finally:
        srv.stop()
    assert any("Azure Key Vault key with URL" in ln for ln in srv.log)


def test_sops_binary_talks_to_the_stand_in(az, tmp_path, sops_bin):
    env = _env(az, tmp_path / "h")
    plain = _plain(tmp_path, "yaml", "yaml")
    before = len(az["srv"].calls)
    # no version: both ask the vault for the current one (GET /keys/sops-key)
    theirs = ok(run([sops_bin, "encrypt", "--azure-kv", _url(az, ""), plain.name], env, tmp_path))
    ours = ok(run([*ENCLAVE, "encrypt", "--azure-kv", _url(az, ""), plain.name], env, tmp_path))
    ops = [c[0] for c in az["srv"].calls[before:] if c[3] == 200]
    assert ops.count("get") == 2 and ops.count("encrypt") == 2, ops
    assert masked(metadata_of("yaml", ours)) == masked(metadata_of("yaml", theirs))
    assert f"version: {az['v1']}".encode() in ours
    text = ours.decode()
    block = text[text.index("    azure_kv:\n"):text.index("    lastmodified:")]
    keys = [ln.strip().lstrip("- ").split(":", 1)[0] for ln in block.splitlines()[1:]]
    assert keys == ["vault_url", "name", "version", "created_at", "enc"]
    enc = text.split("enc: ", 1)[1].split("\n", 1)[0]
    assert "=" not in enc and "+" not in enc and "/" not in enc  # URL-safe, unpadded
    (tmp_path / "s.yaml").write_bytes(theirs)
    (tmp_path / "o.yaml").write_bytes(ours)
    assert ok(run([*ENCLAVE, "decrypt", "s.yaml"], env, tmp_path)) == PLAIN["yaml"]
    assert ok(run([sops_bin, "decrypt", "o.yaml"], env, tmp_path)) == PLAIN["yaml"]


def test_refusals(az, tmp_path, sops_bin):
    env = _env(az, tmp_path / "h")
    plain = _plain(tmp_path, "yaml", "yaml")
    text = ok(run([*ENCLAVE, "encrypt", "--azure-kv", _url(az), plain.name], env,
                  tmp_path)).decode()
    (tmp_path / "e.yaml").write_text(text)
    enc = text.split("enc: ", 1)[1].split("\n", 1)[0]
    (tmp_path / "tampered.yaml").write_text(text.replace(enc, enc[:-6] + "AAAAAA"))
    (tmp_path / "other.yaml").write_text(text.replace("name: sops-key", "name: other-key")
                                         .replace(az["v1"], az["other"]))
    cases = [("tampered.yaml", env, "Decryption failed"),
             ("other.yaml", env, "does not have keys permissions"),
             ("e.yaml", _env(az, tmp_path / "x", az["secret_other"]),
              "does not have keys permissions")]
    for name, e, why in cases:
        s = run([sops_bin, "decrypt", name], e, tmp_path)
        o = run([*ENCLAVE, "decrypt", name], e, tmp_path)
        assert (s.returncode, o.returncode) == (128, 128), (name, s.stderr)
        flat = b" ".join(o.stderr.replace(b"|", b"").split())
        assert why.encode() in flat, (name, o.stderr.decode())
        assert b"failed to decrypt sops data key with Azure Key Vault key" in flat
        assert o.stderr == s.stderr, (name, o.stderr.decode(), s.stderr.decode())
    # a URL sops cannot parse: the same message
    for bad in ("http://sops-enclave-test.vault.azure.net/keys/k", f"{az['vault']}/secrets/x"):
        s = run([sops_bin, "encrypt", "--azure-kv", bad, plain.name], env, tmp_path)
        o = run([*ENCLAVE, "encrypt", "--azure-kv", bad, plain.name], env, tmp_path)
        assert s.returncode == o.returncode == 1 and o.stderr == s.stderr, (o.stderr, s.stderr)


def test_env_config_rotate_and_reverse_keyservice(az, tmp_path, sops_bin):
    env = _env(az, tmp_path / "h")
    plain = _plain(tmp_path, "yaml", "yaml")
    ours = ok(run([*ENCLAVE, "encrypt", plain.name],
                  dict(env, SOPS_AZURE_KEYVAULT_URLS=_url(az)), tmp_path))
    theirs = ok(run([sops_bin, "encrypt", plain.name],
                    dict(env, SOPS_AZURE_KEYVAULT_URLS=_url(az)), tmp_path))
    assert masked(metadata_of("yaml", ours)) == masked(metadata_of("yaml", theirs))
    (tmp_path / ".sops.yaml").write_text(
        "creation_rules:\n  - path_regex: flat\n"
        f"    azure_keyvault: {_url(az, '')}\n"
        "  - path_regex: groups\n    key_groups:\n"
        f"      - azure_keyvault: [{{vaultUrl: '{az['vault']}', key: sops-key, version: ''}}]\n"
        f"      - azure_keyvault: [{{vaultUrl: '{az['vault']}', key: sops-key, "
        f"version: {az['v1']}}}]\n")
    for name in ("flat.yaml", "groups.yaml"):
        (tmp_path / name).write_bytes(PLAIN["yaml"])
        ours = ok(run([*ENCLAVE, "encrypt", name], env, tmp_path))
        theirs = ok(run([sops_bin, "encrypt", name], env, tmp_path))
        assert masked(metadata_of("yaml", ours)) == masked(metadata_of("yaml", theirs)), name
        assert ours.count(f"version: {az['v1']}".encode()) == (1 if name == "flat.yaml" else 2)
    v2 = az["srv"].create_key(az["vault"], "sops-key")  # a new current version
    (tmp_path / "r.yaml").write_bytes(ours)
    (tmp_path / "r2.yaml").write_bytes(ours)
    args = ["rotate", "--add-azure-kv", _url(az, "")]
    ours = ok(run([*ENCLAVE, *args, "r.yaml"], env, tmp_path))
    theirs = ok(run([sops_bin, *args, "r2.yaml"], env, tmp_path))
    assert masked(metadata_of("yaml", ours)) == masked(metadata_of("yaml", theirs))
    assert f"version: {v2}".encode() in ours
    (tmp_path / "r.yaml").write_bytes(ours)
    assert ok(run([sops_bin, "decrypt", "r.yaml"], env, tmp_path)) == PLAIN["yaml"]
    # sops-enclave (no Azure access) through a real `sops keyservice`
    bare = clean_env(tmp_path / "bare")
    srv = sops_keyservice(sops_bin, env, tmp_path / "s.sock", tmp_path)
    try:
        out = ok(run([*ENCLAVE, "encrypt", *srv.via(), "--azure-kv", _url(az, v2), plain.name],
                     bare, tmp_path))
        (tmp_path / "k.yaml").write_bytes(out)
        assert ok(run([*ENCLAVE, "decrypt", *srv.via(), "k.yaml"], bare,
                      tmp_path)) == PLAIN["yaml"]
    finally:
        srv.stop()
    assert ok(run([*ENCLAVE, "decrypt", "k.yaml"], env, tmp_path)) == PLAIN["yaml"]
