"""Vault transit keys against a real OpenBao server (started here, on 127.0.0.1, and stopped
after), cross-checked with the sops 3.11 binary both ways: every format, the stored metadata,
the failure report, credentials, flags, .sops.yaml, rotate/updatekeys/groups and key services
in both directions."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from keytypes_support import (ENCLAVE, PLAIN, clean_env, enclave_keyservice, formats, masked,
                              free_port, metadata_of, ok, openbao, run, sops_keyservice)

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def bao(tmp_path_factory):
    """An OpenBao dev server with transit engines at ``transit`` and ``team/transit``."""
    with openbao(tmp_path_factory.mktemp("bao-home")) as server:
        yield server


def _uri(bao, key: str = "k1", engine: str = "transit") -> str:
    return f"{bao['addr']}/v1/{engine}/keys/{key}"


@pytest.fixture
def env(bao, tmp_path):
    return clean_env(tmp_path / "home", VAULT_TOKEN=bao["token"])


def _files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for fmt, ext in formats():
        p = tmp_path / f"plain.{ext}"
        p.write_bytes(PLAIN[fmt])
        out[fmt] = p
    return out


def test_sops_encrypts_enclave_decrypts_and_back_in_every_format(bao, env, tmp_path, sops_bin):
    files = _files(tmp_path)
    for fmt, plain in files.items():
        ext = plain.suffix
        by_sops = ok(run([sops_bin, "encrypt", "--hc-vault-transit", _uri(bao), str(plain)],
                         env, tmp_path))
        (tmp_path / f"s{ext}").write_bytes(by_sops)
        want = ok(run([sops_bin, "decrypt", f"s{ext}"], env, tmp_path))
        assert want == PLAIN[fmt], fmt
        assert ok(run([*ENCLAVE, "decrypt", f"s{ext}"], env, tmp_path)) == want, fmt

        by_us = ok(run([*ENCLAVE, "encrypt", "--hc-vault-transit", _uri(bao), str(plain)],
                       env, tmp_path))
        (tmp_path / f"e{ext}").write_bytes(by_us)
        assert ok(run([sops_bin, "decrypt", f"e{ext}"], env, tmp_path)) == want, fmt
        # the stored metadata: same fields, same order, same values but ciphertexts and times
        assert masked(metadata_of(fmt, by_us)) == masked(metadata_of(fmt, by_sops)), fmt
        meta = dict(metadata_of(fmt, by_us))
        enc = [v for k, v in meta.items() if k.endswith("enc")]
        assert enc and all(v.startswith("vault:v1:") for v in enc), meta


def test_metadata_fields_in_sops_order(bao, env, tmp_path, sops_bin):
    plain = tmp_path / "p.yaml"
    plain.write_bytes(PLAIN["yaml"])
    uris = f"{_uri(bao)},{_uri(bao, 'shared', 'team/transit')}"
    ours = ok(run([*ENCLAVE, "encrypt", "--hc-vault-transit", uris, str(plain)], env, tmp_path))
    text = ours.decode()
    block = text[text.index("    hc_vault:\n"):text.index("    lastmodified:")]
    lines = [ln.strip().lstrip("- ").split(":", 1)[0] for ln in block.splitlines()[1:]]
    assert lines == ["vault_address", "engine_path", "key_name", "created_at", "enc"] * 2
    assert "engine_path: team/transit\n          key_name: shared" in text
    theirs = ok(run([sops_bin, "encrypt", "--hc-vault-transit", uris, str(plain)], env, tmp_path))
    assert masked(metadata_of("yaml", ours)) == masked(metadata_of("yaml", theirs))


def test_failure_reports_match_sops(bao, env, tmp_path, sops_bin):
    plain = tmp_path / "p.yaml"
    plain.write_bytes(PLAIN["yaml"])
    (tmp_path / "e.yaml").write_bytes(ok(run([sops_bin, "encrypt", "--hc-vault-transit",
                                              _uri(bao), str(plain)], env, tmp_path)))
    closed = free_port()
    text = (tmp_path / "e.yaml").read_text()
    (tmp_path / "down.yaml").write_text(text.replace(bao["addr"], f"http://127.0.0.1:{closed}"))
    (tmp_path / "nokey.yaml").write_text(text.replace("key_name: k1", "key_name: nokey"))
    cases = [("e.yaml", dict(env, VAULT_TOKEN="not-a-token")),          # 403 permission denied
             ("e.yaml", dict(env, VAULT_TOKEN="")),                     # no token at all
             ("down.yaml", dict(env, VAULT_MAX_RETRIES="0")),           # connection refused
             ("nokey.yaml", env)]                                       # 400 key not found
    for name, e in cases:
        s = run([sops_bin, "decrypt", name], e, tmp_path)
        o = run([*ENCLAVE, "decrypt", name], e, tmp_path)
        assert (s.returncode, o.returncode) == (128, 128), (name, s.stderr, o.stderr)
        assert o.stderr == s.stderr, (name, o.stderr.decode(), s.stderr.decode())
    # encrypting to unreachable keys: every key's error, space-separated, exit 1
    down = f"http://127.0.0.1:{closed}/v1/transit/keys/a,http://127.0.0.1:{closed}/v1/x/keys/b"
    e = dict(env, VAULT_MAX_RETRIES="0")
    s = run([sops_bin, "encrypt", "--hc-vault-transit", down, str(plain)], e, tmp_path)
    o = run([*ENCLAVE, "encrypt", "--hc-vault-transit", down, str(plain)], e, tmp_path)
    assert s.returncode == o.returncode == 1
    assert o.stderr == s.stderr, (o.stderr.decode(), s.stderr.decode())
    assert o.stderr.count(b"failed to encrypt new data key with master key") == 2


def test_permission_denied_report_text(bao, env, tmp_path):
    plain = tmp_path / "p.yaml"
    plain.write_bytes(PLAIN["yaml"])
    (tmp_path / "e.yaml").write_bytes(ok(run([*ENCLAVE, "encrypt", "--hc-vault-transit",
                                              _uri(bao), str(plain)], env, tmp_path)))
    o = run([*ENCLAVE, "decrypt", "e.yaml"], dict(env, VAULT_TOKEN="nope"), tmp_path)
    assert o.returncode == 128
    assert (f"  {_uri(bao)}: FAILED\n    - | failed to decrypt sops data key from Vault "
            f"transit backend\n      | 'transit/decrypt/k1': Error making API request.\n"
            f"      | \n      | URL: PUT {bao['addr']}/v1/transit/decrypt/k1\n"
            f"      | Code: 403. Errors:\n      | \n      | * permission denied\n"
            ).encode() in o.stderr


def test_token_from_home_file_and_invalid_uris(bao, tmp_path, sops_bin):
    home = tmp_path / "home"
    env = clean_env(home)
    (home / ".vault-token").write_text(bao["token"] + "\n")
    plain = tmp_path / "p.yaml"
    plain.write_bytes(PLAIN["yaml"])
    (tmp_path / "e.yaml").write_bytes(ok(run([*ENCLAVE, "encrypt", "--hc-vault-transit",
                                              _uri(bao), str(plain)], env, tmp_path)))
    assert ok(run([sops_bin, "decrypt", "e.yaml"], env, tmp_path)) == PLAIN["yaml"]
    (home / ".vault-token").write_text("wrong\n")
    assert run([*ENCLAVE, "decrypt", "e.yaml"], env, tmp_path).returncode == 128
    for bad in ("127.0.0.1:8200/v1/transit/keys/k", f"{bao['addr']}/transit/keys/k",
                f"{bao['addr']}/prefix/v1/transit/keys/k"):
        s = run([sops_bin, "encrypt", "--hc-vault-transit", bad, str(plain)], env, tmp_path)
        o = run([*ENCLAVE, "encrypt", "--hc-vault-transit", bad, str(plain)], env, tmp_path)
        assert s.returncode == o.returncode != 0, bad
        assert o.stderr == s.stderr, (bad, o.stderr, s.stderr)


def test_env_variable_and_sops_yaml(bao, env, tmp_path, sops_bin, age_key):
    plain = tmp_path / "p.yaml"
    plain.write_bytes(PLAIN["yaml"])
    e = dict(env, SOPS_VAULT_URIS=_uri(bao, "k2"))
    ours = ok(run([*ENCLAVE, "encrypt", str(plain)], e, tmp_path))
    assert b"key_name: k2" in ours
    assert masked(metadata_of("yaml", ours)) == masked(metadata_of(
        "yaml", ok(run([sops_bin, "encrypt", str(plain)], e, tmp_path))))
    (tmp_path / ".sops.yaml").write_text(
        "creation_rules:\n"
        "  - path_regex: one\\.yaml$\n"
        f"    hc_vault_transit_uri: {_uri(bao)},{_uri(bao, 'k2')}\n"
        "  - path_regex: groups\\.yaml$\n"
        "    key_groups:\n"
        f"      - hc_vault: ['{_uri(bao, 'shared', 'team/transit')}']\n"
        f"        age: ['{age_key[1]}']\n"
        f"      - hc_vault: ['{_uri(bao)}']\n")
    for name in ("one.yaml", "groups.yaml"):
        (tmp_path / name).write_bytes(PLAIN["yaml"])
        ours = ok(run([*ENCLAVE, "encrypt", name], env, tmp_path))
        theirs = ok(run([sops_bin, "encrypt", name], env, tmp_path))
        assert masked(metadata_of("yaml", ours)) == masked(metadata_of("yaml", theirs)), name
        (tmp_path / f"enc-{name}").write_bytes(ours)
        assert ok(run([sops_bin, "decrypt", f"enc-{name}"], env, tmp_path)) == PLAIN["yaml"]
    assert b"key_groups:" in ours and b"engine_path: team/transit" in ours


def test_rotate_add_rm_updatekeys_and_groups(bao, env, tmp_path, sops_bin, age_key):
    plain = tmp_path / "p.yaml"
    plain.write_bytes(PLAIN["yaml"])
    start = ok(run([sops_bin, "encrypt", "--hc-vault-transit", _uri(bao), str(plain)], env,
                   tmp_path))
    (tmp_path / "a.yaml").write_bytes(start)
    (tmp_path / "b.yaml").write_bytes(start)
    args = ["rotate", "--add-hc-vault-transit", _uri(bao, "k2"), "--rm-hc-vault-transit",
            _uri(bao)]
    ours = ok(run([*ENCLAVE, *args, "a.yaml"], env, tmp_path))
    theirs = ok(run([sops_bin, *args, "b.yaml"], env, tmp_path))
    assert masked(metadata_of("yaml", ours)) == masked(metadata_of("yaml", theirs))
    assert b"key_name: k2" in ours and b"key_name: k1" not in ours
    (tmp_path / "r.yaml").write_bytes(ours)
    assert ok(run([sops_bin, "decrypt", "r.yaml"], env, tmp_path)) == PLAIN["yaml"]
    # a plain rotate keeps each key's created_at, as sops does
    old = start.replace(b'created_at: "', b'created_at: "2001-02-03T04:05:06Z" #')
    old = b"\n".join(ln.split(b" #")[0] if b"created_at" in ln else ln for ln in old.split(b"\n"))
    (tmp_path / "old.yaml").write_bytes(old)
    (tmp_path / "old2.yaml").write_bytes(old)
    ours = ok(run([*ENCLAVE, "rotate", "old.yaml"], env, tmp_path))
    theirs = ok(run([sops_bin, "rotate", "old2.yaml"], env, tmp_path))
    assert b'created_at: "2001-02-03T04:05:06Z"' in theirs
    assert b'created_at: "2001-02-03T04:05:06Z"' in ours

    # updatekeys: an age-only file gets the Vault key of its rule; then Vault alone opens it
    e_age = dict(env, SOPS_AGE_KEY=age_key[0])
    (tmp_path / "u.yaml").write_bytes(ok(run([sops_bin, "encrypt", "--age", age_key[1],
                                              str(plain)], e_age, tmp_path)))
    (tmp_path / ".sops.yaml").write_text("creation_rules:\n"
                                         f"  - hc_vault_transit_uri: {_uri(bao, 'k2')}\n")
    p = run([*ENCLAVE, "updatekeys", "-y", "u.yaml"], e_age, tmp_path)
    assert p.returncode == 0, p.stderr.decode()
    text = (tmp_path / "u.yaml").read_text()
    assert "hc_vault:" in text and "age:" not in text
    assert ok(run([sops_bin, "decrypt", "u.yaml"], env, tmp_path)) == PLAIN["yaml"]

    # groups add: a second group with a Vault key (two groups: Shamir threshold 2)
    p = run([*ENCLAVE, "groups", "add", "--file", "r.yaml", "--hc-vault-transit",
             _uri(bao, "shared", "team/transit"), "-i"], env, tmp_path)
    assert p.returncode == 0, p.stderr.decode()
    text = (tmp_path / "r.yaml").read_text()
    assert "key_groups:" in text and "engine_path: team/transit" in text
    assert ok(run([sops_bin, "decrypt", "r.yaml"], env, tmp_path)) == PLAIN["yaml"]


def test_key_services_both_directions(bao, env, tmp_path, sops_bin):
    plain = tmp_path / "p.yaml"
    plain.write_bytes(PLAIN["yaml"])
    no_token = clean_env(tmp_path / "nohome")
    # real sops (no token) -> sops-enclave keyservice (has the token)
    srv = enclave_keyservice(env, tmp_path / "ours.sock", tmp_path)
    try:
        via = ok(run([sops_bin, "encrypt", *srv.via(), "--hc-vault-transit", _uri(bao),
                      str(plain)], no_token, tmp_path))
        direct = ok(run([sops_bin, "encrypt", "--hc-vault-transit", _uri(bao), str(plain)], env,
                        tmp_path))
        assert masked(metadata_of("yaml", via)) == masked(metadata_of("yaml", direct))
        (tmp_path / "via.yaml").write_bytes(via)
        assert ok(run([*ENCLAVE, "decrypt", "via.yaml"], env, tmp_path)) == PLAIN["yaml"]
        assert run([sops_bin, "decrypt", "via.yaml"], no_token, tmp_path).returncode == 128
        assert ok(run([sops_bin, "decrypt", *srv.via(), "via.yaml"], no_token,
                      tmp_path)) == PLAIN["yaml"]
    finally:
        srv.stop()
    assert any("HashiCorp Vault key with URI" in ln for ln in srv.log)
    # sops-enclave (no token) -> real `sops keyservice` (has the token)
    theirs = sops_keyservice(sops_bin, env, tmp_path / "theirs.sock", tmp_path)
    try:
        out = ok(run([*ENCLAVE, "encrypt", *theirs.via(), "--hc-vault-transit", _uri(bao),
                      str(plain)], no_token, tmp_path))
        (tmp_path / "ours.yaml").write_bytes(out)
        assert ok(run([sops_bin, "decrypt", "ours.yaml"], env, tmp_path)) == PLAIN["yaml"]
        assert ok(run([*ENCLAVE, "decrypt", *theirs.via(), "ours.yaml"], no_token,
                      tmp_path)) == PLAIN["yaml"]
    finally:
        theirs.stop()


def test_json_group_layout(bao, env, tmp_path, sops_bin, age_key):
    """Two groups in JSON: ``hc_vault`` and ``age`` are always present in a group (null when
    empty), as sops 3.11 writes them."""
    plain = tmp_path / "p.json"
    plain.write_bytes(PLAIN["json"])
    (tmp_path / ".sops.yaml").write_text(
        "creation_rules:\n  - key_groups:\n"
        f"      - hc_vault: ['{_uri(bao)}']\n      - age: ['{age_key[1]}']\n")
    ours = ok(run([*ENCLAVE, "encrypt", "p.json"], env, tmp_path))
    theirs = ok(run([sops_bin, "encrypt", "p.json"], env, tmp_path))
    assert masked(metadata_of("json", ours)) == masked(metadata_of("json", theirs))
    groups = json.loads(ours)["sops"]["key_groups"]
    assert groups[0]["age"] is None and groups[1]["hc_vault"] is None
