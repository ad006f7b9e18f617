"""GCP KMS keys against the local stand-in (sops_enclave/devtools/gcp_kms_server.py: the
KeyManagementService gRPC Encrypt/Decrypt with the SDK's own messages, over TLS), cross-checked
with the sops 3.11 binary:

* through ``sops-enclave keyservice`` (sops has no credentials and no endpoint setting), then
  sops-enclave directly, and the reverse;
* sops 3.11 talking to the stand-in itself (its gRPC client tunnels ``cloudkms.googleapis.com``
  through ``HTTPS_PROXY`` to the stand-in, which presents a test-CA certificate for that name),
  which also checks that the stand-in speaks the protocol the Go SDK expects.
"""

from __future__ import annotations

import json

import pytest

from keytypes_support import (ENCLAVE, PLAIN, clean_env, enclave_keyservice, formats, masked,
                              metadata_of, ok, run)

RID = "projects/sops-p/locations/global/keyRings/ring/cryptoKeys/main"
RID2 = "projects/sops-p/locations/europe-west1/keyRings/ring/cryptoKeys/second"
LOCKED = "projects/sops-p/locations/global/keyRings/ring/cryptoKeys/locked"


@pytest.fixture(scope="module")
def gcp(tmp_path_factory):
    from sops_enclave.devtools.gcp_kms_server import GCPKMSStandIn
    from sops_enclave.devtools.local_ca import LocalCA

    ca = LocalCA(tmp_path_factory.mktemp("gcp-ca"))
    cert, key = ca.issue("gcp", ["cloudkms.googleapis.com", "127.0.0.1", "localhost"])
    srv = GCPKMSStandIn(cert.read_bytes(), key.read_bytes()).start()
    srv.create_key(RID)
    srv.create_key(RID2)
    srv.create_key(LOCKED, principals=["robot@sops-p.iam.gserviceaccount.com"])
    try:
        yield {"srv": srv, "ca": str(ca.cert_path), "token": srv.issue_token("user:alice")}
    finally:
        srv.stop()


def _ours(gcp, home, **extra) -> dict[str, str]:
    """sops-enclave's environment: the stand-in through SOPS_GCP_KMS_ENDPOINT."""
    return clean_env(home, SOPS_GCP_KMS_ENDPOINT=gcp["srv"].endpoint,
                     GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=gcp["ca"],
                     GOOGLE_OAUTH_ACCESS_TOKEN=gcp["token"], **extra)


def _sops_direct(gcp, home, **extra) -> dict[str, str]:
    """sops 3.11's environment: cloudkms.googleapis.com tunnelled to the stand-in."""
    return clean_env(home, HTTPS_PROXY=gcp["srv"].proxy, SSL_CERT_FILE=gcp["ca"],
                     GOOGLE_OAUTH_ACCESS_TOKEN=gcp["token"], **extra)


def _plain(tmp_path, fmt, ext):
    p = tmp_path / f"plain.{ext}"
    p.write_bytes(PLAIN[fmt])
    return p


def test_sops_through_our_keyservice_and_back_in_every_format(gcp, tmp_path, sops_bin):
    ours = _ours(gcp, tmp_path / "h")
    bare = clean_env(tmp_path / "bare")  # no credentials, no endpoint
    srv = enclave_keyservice(ours, tmp_path / "ks.sock", tmp_path)
    try:
        for fmt, ext in formats():
            plain = _plain(tmp_path, fmt, ext)
            via = ok(run([sops_bin, "encrypt", *srv.via(), "--gcp-kms", RID, plain.name], bare,
                         tmp_path))
            (tmp_path / f"via.{ext}").write_bytes(via)
            assert ok(run([*ENCLAVE, "decrypt", f"via.{ext}"], ours, tmp_path)) == PLAIN[fmt]
            direct = ok(run([*ENCLAVE, "encrypt", "--gcp-kms", RID, plain.name], ours, tmp_path))
            (tmp_path / f"direct.{ext}").write_bytes(direct)
            assert ok(run([sops_bin, "decrypt", *srv.via(), f"direct.{ext}"], bare,
                          tmp_path)) == PLAIN[fmt]
            assert masked(metadata_of(fmt, direct)) == masked(metadata_of(fmt, via)), fmt
            # without the key service sops cannot open either file
            assert run([sops_bin, "decrypt", f"direct.{ext}"], bare, tmp_path).returncode == 128
    finally:
        srv.stop()
    assert any("GCP KMS key with resource ID " + RID in ln for ln in srv.log)
    assert {c.method for c in gcp["srv"].calls if c.code == "OK"} == {"Encrypt", "Decrypt"}


def test_sops_binary_talks_to_the_stand_in(gcp, tmp_path, sops_bin):
    s_env, o_env = _sops_direct(gcp, tmp_path / "s"), _ours(gcp, tmp_path / "o")
    plain = _plain(tmp_path, "yaml", "yaml")
    before = len(gcp["srv"].calls)
    theirs = ok(run([sops_bin, "encrypt", "--gcp-kms", f"{RID},{RID2}", plain.name], s_env,
                    tmp_path))
    assert len(gcp["srv"].calls) == before + 2  # really served here
    (tmp_path / "s.yaml").write_bytes(theirs)
    assert ok(run([*ENCLAVE, "decrypt", "s.yaml"], o_env, tmp_path)) == PLAIN["yaml"]
    ours = ok(run([*ENCLAVE, "encrypt", "--gcp-kms", f"{RID},{RID2}", plain.name], o_env,
                  tmp_path))
    (tmp_path / "o.yaml").write_bytes(ours)
    assert ok(run([sops_bin, "decrypt", "o.yaml"], s_env, tmp_path)) == PLAIN["yaml"]
    assert masked(metadata_of("yaml", ours)) == masked(metadata_of("yaml", theirs))
    text = ours.decode()
    block = text[text.index("    gcp_kms:\n"):text.index("    lastmodified:")]
    keys = [ln.strip().lstrip("- ").split(":", 1)[0] for ln in block.splitlines()[1:]]
    assert keys == ["resource_id", "created_at", "enc"] * 2


def test_refusals_give_the_same_report_as_sops(gcp, tmp_path, sops_bin):
    s_env, o_env = _sops_direct(gcp, tmp_path / "s"), _ours(gcp, tmp_path / "o")
    plain = _plain(tmp_path, "yaml", "yaml")
    text = ok(run([*ENCLAVE, "encrypt", "--gcp-kms", RID, plain.name], o_env, tmp_path)).decode()
    enc = text.split("enc: ", 1)[1].split("\n", 1)[0]
    tampered = enc[:12] + ("A" if enc[12] != "A" else "B") + enc[13:]
    (tmp_path / "tampered.yaml").write_text(text.replace(enc, tampered))
    (tmp_path / "locked.yaml").write_text(text.replace(RID, LOCKED))
    (tmp_path / "e.yaml").write_text(text)
    cases = [("tampered.yaml", {}, "code = InvalidArgument desc = Decryption failed"),
             ("locked.yaml", {}, "code = PermissionDenied desc = Permission 'cloudkms."),
             ("e.yaml", {"GOOGLE_OAUTH_ACCESS_TOKEN": "ya29.forged"},
              "code = Unauthenticated desc = Request had invalid authentication")]
    for name, extra, why in cases:
        s = run([sops_bin, "decrypt", name], dict(s_env, **extra), tmp_path)
        o = run([*ENCLAVE, "decrypt", name], dict(o_env, **extra), tmp_path)
        assert (s.returncode, o.returncode) == (128, 128), (name, s.stderr, o.stderr)
        flat = b" ".join(o.stderr.replace(b"|", b"").split())
        assert why.encode() in flat, (name, o.stderr.decode())
        assert o.stderr == s.stderr, (name, o.stderr.decode(), s.stderr.decode())
    bad = "projects/x/keyRings/r"
    s = run([sops_bin, "encrypt", "--gcp-kms", bad, plain.name], s_env, tmp_path)
    o = run([*ENCLAVE, "encrypt", "--gcp-kms", bad, plain.name], o_env, tmp_path)
    assert s.returncode == o.returncode == 1 and o.stderr == s.stderr, (o.stderr, s.stderr)
    assert b'no valid resource ID found in "projects/x/keyRings/r"]' in o.stderr


def test_service_account_credentials(gcp, tmp_path):
    sa = gcp["srv"].add_service_account("robot@sops-p.iam.gserviceaccount.com")
    keyfile = tmp_path / "sa.json"
    keyfile.write_text(json.dumps(sa))
    plain = _plain(tmp_path, "yaml", "yaml")
    base = _ours(gcp, tmp_path / "h")
    base.pop("GOOGLE_OAUTH_ACCESS_TOKEN")
    for creds in ({"GOOGLE_CREDENTIALS": str(keyfile)},              # a path
                  {"GOOGLE_CREDENTIALS": json.dumps(sa)},            # the JSON itself
                  {"GOOGLE_APPLICATION_CREDENTIALS": str(keyfile)}):  # ADC
        env = dict(base, **creds)
        out = ok(run([*ENCLAVE, "encrypt", "--gcp-kms", LOCKED, plain.name], env, tmp_path))
        (tmp_path / "sa.yaml").write_bytes(out)
        assert ok(run([*ENCLAVE, "decrypt", "sa.yaml"], env, tmp_path)) == PLAIN["yaml"]
        assert gcp["srv"].calls[-1].principal == sa["client_email"]
    # a key file whose private key the service does not know is refused
    forged = dict(sa, private_key=gcp["srv"].add_service_account("other@x.iam")["private_key"])
    env = dict(base, GOOGLE_CREDENTIALS=json.dumps(forged))
    p = run([*ENCLAVE, "decrypt", "sa.yaml"], env, tmp_path)
    assert p.returncode == 128 and b"GCP KMS" in p.stderr
    # with no credentials at all: sops' message for a missing ADC file
    env = dict(base, GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "none.json"))
    p = run([*ENCLAVE, "decrypt", "sa.yaml"], env, tmp_path)
    assert p.returncode == 128
    assert f"cannot create GCP KMS service: open {tmp_path}/none.json: no such".encode() in \
        b" ".join(p.stderr.replace(b"|", b"").split())


def test_flags_env_config_rotate(gcp, tmp_path, sops_bin):
    s_env, o_env = _sops_direct(gcp, tmp_path / "s"), _ours(gcp, tmp_path / "o")
    plain = _plain(tmp_path, "yaml", "yaml")
    # SOPS_GCP_KMS_IDS, spaces removed as sops does
    for env_var in (f"{RID}, {RID2}",):
        ours = ok(run([*ENCLAVE, "encrypt", plain.name], dict(o_env, SOPS_GCP_KMS_IDS=env_var),
                      tmp_path))
        theirs = ok(run([sops_bin, "encrypt", plain.name], dict(s_env, SOPS_GCP_KMS_IDS=env_var),
                        tmp_path))
        assert masked(metadata_of("yaml", ours)) == masked(metadata_of("yaml", theirs))
    (tmp_path / ".sops.yaml").write_text(
        "creation_rules:\n  - path_regex: flat\n"
        f"    gcp_kms: {RID}\n"
        "  - path_regex: groups\n    key_groups:\n"
        f"      - gcp_kms: [{{resource_id: {RID}}}]\n"
        f"      - gcp_kms: [{{resource_id: {RID2}}}]\n")
    for name in ("flat.yaml", "groups.yaml"):
        (tmp_path / name).write_bytes(PLAIN["yaml"])
        ours = ok(run([*ENCLAVE, "encrypt", name], o_env, tmp_path))
        theirs = ok(run([sops_bin, "encrypt", name], s_env, tmp_path))
        assert masked(metadata_of("yaml", ours)) == masked(metadata_of("yaml", theirs)), name
        (tmp_path / f"e-{name}").write_bytes(ours)
        assert ok(run([sops_bin, "decrypt", f"e-{name}"], s_env, tmp_path)) == PLAIN["yaml"]
    (tmp_path / "r.yaml").write_bytes(ok(run([*ENCLAVE, "encrypt", "--gcp-kms", RID, plain.name],
                                             o_env, tmp_path)))
    (tmp_path / "r2.yaml").write_bytes((tmp_path / "r.yaml").read_bytes())
    args = ["rotate", "--add-gcp-kms", RID2, "--rm-gcp-kms", RID]
    ours = ok(run([*ENCLAVE, *args, "r.yaml"], o_env, tmp_path))
    theirs = ok(run([sops_bin, *args, "r2.yaml"], s_env, tmp_path))
    assert masked(metadata_of("yaml", ours)) == masked(metadata_of("yaml", theirs))
    assert RID2.encode() in ours and f"resource_id: {RID}\n".encode() not in ours


def test_our_client_through_sops_keyservice(gcp, tmp_path, sops_bin):
    """sops-enclave with no credentials uses a real ``sops keyservice`` that reaches the
    stand-in itself; the result opens with sops-enclave's own credentials."""
    from keytypes_support import sops_keyservice

    bare = clean_env(tmp_path / "bare")
    theirs = sops_keyservice(sops_bin, _sops_direct(gcp, tmp_path / "s"), tmp_path / "s.sock",
                             tmp_path)
    plain = _plain(tmp_path, "json", "json")
    try:
        out = ok(run([*ENCLAVE, "encrypt", *theirs.via(), "--gcp-kms", RID, plain.name], bare,
                     tmp_path))
        (tmp_path / "k.json").write_bytes(out)
        assert ok(run([*ENCLAVE, "decrypt", *theirs.via(), "k.json"], bare,
                      tmp_path)) == PLAIN["json"]
        assert run([*ENCLAVE, "decrypt", "k.json"], bare, tmp_path).returncode == 128
    finally:
        theirs.stop()
    assert ok(run([*ENCLAVE, "decrypt", "k.json"], _ours(gcp, tmp_path / "o"),
                  tmp_path)) == PLAIN["json"]
