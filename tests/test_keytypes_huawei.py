"""HuaweiCloud KMS keys against the local stand-in (sops_enclave/devtools/huawei_kms_server.py:
KMS encrypt-data/decrypt-data and the IAM project lookup over HTTPS, AK/SK signatures checked),
cross-checked with the sops 3.11 binary through ``sops-enclave keyservice`` and directly (the
Go SDK reaches the stand-in through its region override ``HUAWEICLOUD_SDK_REGION_KMS_*``)."""

from __future__ import annotations

import pytest

from keytypes_support import (ENCLAVE, PLAIN, clean_env, enclave_keyservice, formats, masked,
                              metadata_of, ok, run, sops_keyservice)

REGION = "tr-west-1"


@pytest.fixture(scope="module")
def hw(tmp_path_factory):
    from sops_enclave.devtools.huawei_kms_server import HuaweiKMSStandIn
    from sops_enclave.devtools.local_ca import LocalCA

    ca = LocalCA(tmp_path_factory.mktemp("hw-ca"))
    srv = HuaweiKMSStandIn(ca.server_context("hw", ["127.0.0.1", "localhost"])).start()
    ak, sk, project = srv.add_account(REGION)
    k1, k2 = srv.create_key(ak), srv.create_key(ak)
    try:
        yield {"srv": srv, "ca": str(ca.cert_path), "ak": ak, "sk": sk, "project": project,
               "k1": f"{REGION}:{k1}", "k2": f"{REGION}:{k2}"}
    finally:
        srv.stop()


def _env(hw, home, project=True, **extra):
    env = clean_env(home, HUAWEICLOUD_SDK_AK=hw["ak"], HUAWEICLOUD_SDK_SK=hw["sk"],
                    HUAWEICLOUD_SDK_REGION_KMS_TR_WEST_1=hw["srv"].endpoint,
                    HUAWEICLOUD_SDK_IAM_ENDPOINT=hw["srv"].endpoint, SSL_CERT_FILE=hw["ca"],
                    **extra)
    if project:
        env["HUAWEICLOUD_SDK_PROJECT_ID"] = hw["project"]
    return env


def _plain(tmp_path, fmt, ext):
    p = tmp_path / f"plain.{ext}"
    p.write_bytes(PLAIN[fmt])
    return p


def test_sops_through_our_keyservice_and_back_in_every_format(hw, tmp_path, sops_bin):
    env = _env(hw, tmp_path / "h")
    bare = clean_env(tmp_path / "bare")
    srv = enclave_keyservice(env, tmp_path / "ks.sock", tmp_path)
    try:
        for fmt, ext in formats():
            plain = _plain(tmp_path, fmt, ext)
            via = ok(run([sops_bin, "encrypt", *srv.via(), "--hckms", hw["k1"], plain.name],
                         bare, tmp_path))
            (tmp_path / f"via.{ext}").write_bytes(via)
            assert ok(run([*ENCLAVE, "decrypt", f"via.{ext}"], env, tmp_path)) == PLAIN[fmt]
            direct = ok(run([*ENCLAVE, "encrypt", "--hckms", hw["k1"], plain.name], env,
                            tmp_path))
            (tmp_path / f"direct.{ext}").write_bytes(direct)
            assert ok(run([sops_bin, "decrypt", *srv.via(), f"direct.{ext}"], bare,
                          tmp_path)) == PLAIN[fmt]
            assert masked(metadata_of(fmt, direct)) == masked(metadata_of(fmt, via)), fmt
    finally:
        srv.stop()
    assert any("HuaweiCloud KMS key with ID " + hw["k1"] in ln for ln in srv.log)


def test_sops_binary_talks_to_the_stand_in(hw, tmp_path, sops_bin):
    plain = _plain(tmp_path, "yaml", "yaml")
    for project in (True, False):  # without a project ID both SDKs ask IAM for it
        env = _env(hw, tmp_path / "h", project=project)
        before = len(hw["srv"].calls)
        ids = f"{hw['k1']}, {hw['k2']}"
        theirs = ok(run([sops_bin, "encrypt", "--hckms", ids, plain.name], env, tmp_path))
        ours = ok(run([*ENCLAVE, "encrypt", "--hckms", ids, plain.name], env, tmp_path))
        assert [c[0] for c in hw["srv"].calls[before:]].count("encrypt-data") == 4
        assert masked(metadata_of("yaml", ours)) == masked(metadata_of("yaml", theirs))
        (tmp_path / "s.yaml").write_bytes(theirs)
        (tmp_path / "o.yaml").write_bytes(ours)
        assert ok(run([*ENCLAVE, "decrypt", "s.yaml"], env, tmp_path)) == PLAIN["yaml"]
        assert ok(run([sops_bin, "decrypt", "o.yaml"], env, tmp_path)) == PLAIN["yaml"]
    text = ours.decode()
    block = text[text.index("    hckms:\n"):text.index("    lastmodified:")]
    keys = [ln.strip().lstrip("- ").split(":", 1)[0] for ln in block.splitlines()[1:]]
    assert keys == ["key_id", "created_at", "enc"] * 2


def test_refusals_give_the_same_report_as_sops(hw, tmp_path, sops_bin):
    env = _env(hw, tmp_path / "h")
    plain = _plain(tmp_path, "yaml", "yaml")
    text = ok(run([*ENCLAVE, "encrypt", "--hckms", hw["k1"], plain.name], env,
                  tmp_path)).decode()
    (tmp_path / "e.yaml").write_text(text)
    enc = text.split("enc: ", 1)[1].split("\n", 1)[0]
    (tmp_path / "tampered.yaml").write_text(text.replace(enc, enc[:-8] + "AAAAAAA="))
    (tmp_path / "swapped.yaml").write_text(text.replace(hw["k1"], hw["k2"]))
    ak2, sk2, _ = hw["srv"].add_account(REGION)
    cases = [("tampered.yaml", env), ("swapped.yaml", env),
             ("e.yaml", dict(env, HUAWEICLOUD_SDK_SK="wrong-secret")),
             ("e.yaml", dict(env, HUAWEICLOUD_SDK_AK=ak2, HUAWEICLOUD_SDK_SK=sk2))]
    for name, e in cases:
        s = run([sops_bin, "decrypt", name], e, tmp_path)
        o = run([*ENCLAVE, "decrypt", name], e, tmp_path)
        assert (s.returncode, o.returncode) == (128, 128), (name, s.stderr)
        assert b"failed to decrypt sops data key with HuaweiCloud KMS" in o.stderr
        # request IDs differ between the two runs; everything else is sops' text
        strip = lambda b: __import__("re").sub(rb'"request_id":"[0-9a-f]*"', b"", b)  # noqa: E731
        assert strip(o.stderr) == strip(s.stderr), (name, o.stderr.decode(), s.stderr.decode())
    for bad in ("tr-west-1", ":uuid", "tr-west-1: "):
        s = run([sops_bin, "encrypt", "--hckms", bad, plain.name], env, tmp_path)
        o = run([*ENCLAVE, "encrypt", "--hckms", bad, plain.name], env, tmp_path)
        assert s.returncode == o.returncode != 0 and o.stderr == s.stderr, (bad, o.stderr,
                                                                           s.stderr)


def test_env_config_rotate_groups_and_reverse_keyservice(hw, tmp_path, sops_bin):
    env = _env(hw, tmp_path / "h")
    plain = _plain(tmp_path, "yaml", "yaml")
    e = dict(env, SOPS_HUAWEICLOUD_KMS_IDS=hw["k2"])
    ours = ok(run([*ENCLAVE, "encrypt", plain.name], e, tmp_path))
    theirs = ok(run([sops_bin, "encrypt", plain.name], e, tmp_path))
    assert masked(metadata_of("yaml", ours)) == masked(metadata_of("yaml", theirs))
    (tmp_path / ".sops.yaml").write_text(
        "creation_rules:\n  - path_regex: flat\n"
        f"    hckms: ['{hw['k1']}', '{hw['k2']}']\n"
        "  - path_regex: groups\n    key_groups:\n"
        f"      - hckms: [{{key_id: '{hw['k1']}'}}]\n"
        f"      - hckms: [{{key_id: '{hw['k2']}'}}]\n")
    for name in ("flat.yaml", "groups.yaml"):
        (tmp_path / name).write_bytes(PLAIN["yaml"])
        ours = ok(run([*ENCLAVE, "encrypt", name], env, tmp_path))
        theirs = ok(run([sops_bin, "encrypt", name], env, tmp_path))
        assert masked(metadata_of("yaml", ours)) == masked(metadata_of("yaml", theirs)), name
        (tmp_path / f"e-{name}").write_bytes(ours)
        assert ok(run([sops_bin, "decrypt", f"e-{name}"], env, tmp_path)) == PLAIN["yaml"]
    assert b"key_groups:" in ours and b"hckms:" in ours
    (tmp_path / "r.yaml").write_bytes(ok(run([*ENCLAVE, "encrypt", "--hckms", hw["k1"],
                                              plain.name], env, tmp_path)))
    (tmp_path / "r2.yaml").write_bytes((tmp_path / "r.yaml").read_bytes())
    args = ["rotate", "--add-hckms", hw["k2"], "--rm-hckms", hw["k1"]]
    ours = ok(run([*ENCLAVE, *args, "r.yaml"], env, tmp_path))
    theirs = ok(run([sops_bin, *args, "r2.yaml"], env, tmp_path))
    assert masked(metadata_of("yaml", ours)) == masked(metadata_of("yaml", theirs))
    assert hw["k2"].encode() in ours and hw["k1"].encode() not in ours
    # sops-enclave without credentials through a real `sops keyservice`
    bare = clean_env(tmp_path / "bare")
    srv = sops_keyservice(sops_bin, env, tmp_path / "s.sock", tmp_path)
    try:
        out = ok(run([*ENCLAVE, "encrypt", *srv.via(), "--hckms", hw["k1"], plain.name], bare,
                     tmp_path))
        (tmp_path / "k.yaml").write_bytes(out)
        assert ok(run([*ENCLAVE, "decrypt", *srv.via(), "k.yaml"], bare,
                      tmp_path)) == PLAIN["yaml"]
    finally:
        srv.stop()
    assert ok(run([*ENCLAVE, "decrypt", "k.yaml"], env, tmp_path)) == PLAIN["yaml"]
