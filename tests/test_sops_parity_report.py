"""Error and warning texts byte for byte against the real sops 3.11 binary: the per-key failure
report (exit 128) for age, PGP, KMS, GCP/Azure/Vault entries, key groups and Shamir; the
exit-203 text; filestatus errors; plain-comment warnings; invalid UTF-8 in JSON output; data
keys of unusual sizes."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess

import pyrage
import pytest

from conftest import run

PLAIN = b"a: 1\n# c\nb: two\n"
TIME = re.compile(rb'time="[^"]*"')


def _key():
    i = pyrage.x25519.Identity.generate()
    return str(i), str(i.to_public())


@pytest.fixture
def home_env(tmp_path, base_env):
    """No age key anywhere but what a test sets; HOME in this test's directory."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in base_env.items() if not k.startswith("SOPS_AGE")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    return env


def _both(sops_bin, enclave_bin, args, env, cwd, input=None):
    s = run([sops_bin, *args], env, cwd=cwd, input=input)
    e = run(enclave_bin + list(args), env, cwd=cwd, input=input)
    return s, e


def _same(s, e, mask_time=False):
    se, ee = s.stderr, e.stderr
    if mask_time:
        se, ee = TIME.sub(b"T", se), TIME.sub(b"T", ee)
    assert (e.returncode, ee) == (s.returncode, se), (s.stderr.decode(), e.stderr.decode())
    assert e.stdout == s.stdout


def _sops_encrypt(sops_bin, env, cwd, recipients, plain=PLAIN, name="p.yaml"):
    src = cwd / name
    src.write_bytes(plain)
    p = run([sops_bin, "encrypt", "--age", ",".join(recipients), str(src)], env, cwd=cwd)
    assert p.returncode == 0, p.stderr
    return p.stdout


# ------------------------------------------------------------------ the exit-128 report

def test_age_wrong_key_report(tmp_path, sops_bin, enclave_bin, home_env):
    (k1, p1), (k2, _) = _key(), _key()
    f = tmp_path / "e.yaml"
    f.write_bytes(_sops_encrypt(sops_bin, dict(home_env, SOPS_AGE_KEY=k1), tmp_path, [p1]))
    (tmp_path / "k2.txt").write_text(k2 + "\n")
    env = dict(home_env, SOPS_AGE_KEY_FILE=str(tmp_path / "k2.txt"))
    s, e = _both(sops_bin, enclave_bin, ["decrypt", str(f)], env, tmp_path)
    assert s.returncode == 128
    assert b"identity did not match any of the recipients" in s.stderr
    _same(s, e)
    # two identities: Go's other wording; a broken key source is listed as an error
    env = dict(env, SOPS_AGE_KEY=f"{_key()[0]}\n{_key()[0]}", SOPS_AGE_KEY_CMD="false")
    s, e = _both(sops_bin, enclave_bin, ["decrypt", str(f)], env, tmp_path)
    assert b"no identity matched any of the recipients" in s.stderr
    assert b"exit status 1" in s.stderr
    _same(s, e)


@pytest.mark.parametrize("case", ["nothing", "bad-line", "missing-file", "empty-key",
                                  "bad-checksum", "short-key"])
def test_age_discovery_errors_in_report(tmp_path, sops_bin, enclave_bin, home_env, case):
    k1, p1 = _key()
    f = tmp_path / "e.yaml"
    f.write_bytes(_sops_encrypt(sops_bin, dict(home_env, SOPS_AGE_KEY=k1), tmp_path, [p1]))
    env = dict(home_env)
    if case == "bad-line":
        env["SOPS_AGE_KEY"] = "not-a-key"
    elif case == "missing-file":
        env["SOPS_AGE_KEY_FILE"] = str(tmp_path / "nope.txt")
    elif case == "empty-key":
        env["SOPS_AGE_KEY"] = ""
    elif case == "bad-checksum":  # Go's bech32 wording
        env["SOPS_AGE_KEY"] = "AGE-SECRET-KEY-1QYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQS7TYZNW"
    elif case == "short-key":
        env["SOPS_AGE_KEY"] = "# comment\n\nAGE-SECRET-KEY-1QQQ"
    s, e = _both(sops_bin, enclave_bin, ["decrypt", str(f)], env, tmp_path)
    assert s.returncode == 128 and b"failed to load age identities" in s.stderr
    _same(s, e)


def test_pgp_missing_key_report(tmp_path, sops_bin, enclave_bin, home_env, gnupg_home):
    home, fpr = gnupg_home
    src = tmp_path / "p.yaml"
    src.write_bytes(PLAIN)
    p = run([sops_bin, "encrypt", "--pgp", fpr, str(src)], dict(home_env, GNUPGHOME=home),
            cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    f = tmp_path / "e.yaml"
    f.write_bytes(p.stdout)
    empty = tmp_path / "gnupg-empty"
    results = []
    for cmd in ([sops_bin], enclave_bin):  # each starts from the same empty GnuPG home
        shutil.rmtree(empty, ignore_errors=True)
        empty.mkdir(mode=0o700)
        results.append(run(cmd + ["decrypt", str(f)], dict(home_env, GNUPGHOME=str(empty)),
                           cwd=tmp_path))
        subprocess.run(["gpgconf", "--kill", "all"], env=dict(home_env, GNUPGHOME=str(empty)),
                       capture_output=True)
    s, e = results
    assert s.returncode == 128
    assert b"load secring: open" in s.stderr and b"No secret key" in s.stderr
    _same(s, e)


def _add_metadata(doc: bytes, block: str) -> bytes:
    text = doc.decode()
    assert "\nsops:\n" in text
    return text.replace("\nsops:\n", "\nsops:\n" + block, 1).encode()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_kms_unreachable_report(tmp_path, sops_bin, enclave_bin, home_env):
    (k1, p1), (k2, _) = _key(), _key()
    doc = _sops_encrypt(sops_bin, dict(home_env, SOPS_AGE_KEY=k1), tmp_path, [p1])
    arn = "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555"
    f = tmp_path / "e.yaml"
    f.write_bytes(_add_metadata(doc, f"""    kms:
        - arn: {arn}
          context:
            Env: prod
          created_at: "2024-01-01T00:00:00Z"
          enc: AQICAHhEbG9yZW0=
          aws_profile: ""
"""))
    env = dict(home_env, SOPS_AGE_KEY=k2, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y",
               AWS_ENDPOINT_URL_KMS=f"http://127.0.0.1:{_closed_port()}",
               AWS_EC2_METADATA_DISABLED="true", AWS_MAX_ATTEMPTS="1")
    s, e = _both(sops_bin, enclave_bin, ["decrypt", str(f)], env, tmp_path)
    assert (s.returncode, e.returncode) == (128, 128)
    # the SDKs word a refused connection differently (and sops' holds request ids): compare
    # everything but the KMS error's own lines
    def stable(err: bytes) -> list[bytes]:
        lines = err.split(b"\n")
        i = lines.index(f"  {arn}|Env:prod: FAILED".encode())
        assert lines[i + 1].startswith(b"    - | failed to decrypt sops data key with AWS KMS:")
        j = i + 1
        while lines[j].startswith(b"      | ") or lines[j].startswith(b"    - | "):
            j += 1
        return lines[:i + 1] + lines[j:]
    assert stable(e.stderr) == stable(s.stderr)
    assert b"\n  \n  arn:aws:kms" in s.stderr  # the blank line between two keys is indented


def test_gcp_azure_vault_key_names(tmp_path, sops_bin, enclave_bin, home_env):
    (k1, p1), (k2, _) = _key(), _key()
    doc = _sops_encrypt(sops_bin, dict(home_env, SOPS_AGE_KEY=k1), tmp_path, [p1])
    port = _closed_port()
    f = tmp_path / "e.yaml"
    f.write_bytes(_add_metadata(doc, f"""    gcp_kms:
        - resource_id: projects/p/locations/global/keyRings/r/cryptoKeys/k
          created_at: "2024-01-01T00:00:00Z"
          enc: CiQAbG9yZW0=
    azure_kv:
        - vault_url: https://sops-enclave-test.invalid
          name: sops-key
          version: 0123456789abcdef
          created_at: "2024-01-01T00:00:00Z"
          enc: bG9yZW0
    hc_vault:
        - vault_address: http://127.0.0.1:{port}
          engine_path: sops
          key_name: firstkey
          created_at: "2024-01-01T00:00:00Z"
          enc: vault:v1:bG9yZW0=
"""))
    env = dict(home_env, SOPS_AGE_KEY=k2, GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "none"),
               AZURE_CLIENT_ID="", VAULT_TOKEN="t")
    s, e = _both(sops_bin, enclave_bin, ["decrypt", str(f)], env, tmp_path)
    assert (s.returncode, e.returncode) == (128, 128)

    def names(err: bytes) -> list[bytes]:
        return [ln for ln in err.split(b"\n") if ln.startswith(b"  ") and ln.endswith(b": FAILED")
                and not ln.startswith(b"   ")]
    expected = [f"  {p1}: FAILED".encode(),
                b"  projects/p/locations/global/keyRings/r/cryptoKeys/k: FAILED",
                b"  https://sops-enclave-test.invalid/keys/sops-key/0123456789abcdef: FAILED",
                f"  http://127.0.0.1:{port}/v1/sops/keys/firstkey: FAILED".encode()]
    assert names(s.stderr) == expected
    assert names(e.stderr) == expected
    # the same frame around the entries: header, age part, trailer
    assert e.stderr.split(b"\n  projects/")[0] == s.stderr.split(b"\n  projects/")[0]
    assert e.stderr.split(b"\n\nRecovery")[1] == s.stderr.split(b"\n\nRecovery")[1]


def _groups_config(groups, threshold):
    lines = ["creation_rules:", f"  - shamir_threshold: {threshold}", "    key_groups:"]
    for g in groups:
        lines.append(f"      - age: [{', '.join(g)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("ngroups,threshold,have", [(2, 2, [0]), (2, 2, []), (3, 2, [1])],
                         ids=["two-groups-one-key", "two-groups-no-key", "shamir-3-of-2"])
def test_key_groups_report(tmp_path, sops_bin, enclave_bin, home_env, ngroups, threshold, have):
    keys = [_key() for _ in range(ngroups)]
    (tmp_path / ".sops.yaml").write_text(_groups_config([[k[1]] for k in keys], threshold))
    src = tmp_path / "p.yaml"
    src.write_bytes(PLAIN)
    p = run([sops_bin, "encrypt", str(src)], home_env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    f = tmp_path / "e.yaml"
    f.write_bytes(p.stdout)
    env = dict(home_env, SOPS_AGE_KEY="\n".join(keys[i][0] for i in have))
    s, e = _both(sops_bin, enclave_bin, ["decrypt", str(f)], env, tmp_path)
    assert s.returncode == 128
    assert b"Group 0: " in s.stderr and f"Group {ngroups - 1}: FAILED".encode() in s.stderr
    _same(s, e)


# ------------------------------------------------------------------ other texts

def test_already_encrypted_text(tmp_path, sops_bin, enclave_bin, home_env):
    k1, p1 = _key()
    f = tmp_path / "e.yaml"
    f.write_bytes(_sops_encrypt(sops_bin, dict(home_env, SOPS_AGE_KEY=k1), tmp_path, [p1]))
    s, e = _both(sops_bin, enclave_bin, ["encrypt", "--age", p1, str(f)], home_env, tmp_path)
    assert s.returncode == 203
    assert max(len(ln) for ln in s.stderr.split(b"\n")) <= 75
    _same(s, e)


@pytest.mark.parametrize("name,content", [("nope.yaml", None), ("bad.json", b"garbage{"),
                                          ("dir.yaml", "dir"), ("plain.yaml", b"a: 1\n")])
def test_filestatus_errors(tmp_path, sops_bin, enclave_bin, home_env, name, content):
    if content == "dir":
        (tmp_path / name).mkdir()
    elif content is not None:
        (tmp_path / name).write_bytes(content)
    s, e = _both(sops_bin, enclave_bin, ["filestatus", name], home_env, tmp_path)
    if content == b"a: 1\n":
        assert s.stdout == b'{"encrypted":false}\n'
    else:
        assert s.returncode == 1 and s.stderr.startswith(b"[CMD]\t time=")
        assert b'level=fatal msg="cannot check file status' in s.stderr
    _same(s, e, mask_time=True)


def test_filestatus_no_keys_is_an_error(tmp_path, sops_bin, enclave_bin, home_env):
    k1, p1 = _key()
    doc = _sops_encrypt(sops_bin, dict(home_env, SOPS_AGE_KEY=k1), tmp_path, [p1]).decode()
    doc = re.sub(r"    age:\n(?:        .*\n)+", "", doc)
    (tmp_path / "e.yaml").write_text(doc)
    s, e = _both(sops_bin, enclave_bin, ["filestatus", "e.yaml"], home_env, tmp_path)
    assert b"No keys found in file" in s.stderr
    _same(s, e, mask_time=True)


def test_plain_comment_warnings(tmp_path, sops_bin, enclave_bin, home_env):
    k1, p1 = _key()
    env = dict(home_env, SOPS_AGE_KEY=k1)
    doc = _sops_encrypt(sops_bin, env, tmp_path, [p1])
    f = tmp_path / "c.yaml"
    f.write_bytes(b"# hello world\n#plain\n" + doc)
    s, e = _both(sops_bin, enclave_bin, ["decrypt", str(f)], env, tmp_path)
    assert s.returncode == 0 and s.stderr.count(b"level=warning") == 2
    assert b'comment=" hello world"\n' in s.stderr and b"comment=plain\n" in s.stderr
    _same(s, e, mask_time=True)
    # the warnings before a value that fails: the comments before it, then the error
    bad = re.sub(rb"(b: ENC\[AES256_GCM,data:)(.)", lambda m: m.group(1) + (
        b"A" if m.group(2) != b"A" else b"B"), doc, count=1)
    f.write_bytes(b"# x\n" + bad)
    s, e = _both(sops_bin, enclave_bin, ["decrypt", str(f)], env, tmp_path)
    assert s.returncode == 25 and s.stderr.count(b"level=warning") == 1
    _same(s, e, mask_time=True)


@pytest.mark.parametrize("name,content,itype", [
    ("bin.dat", b"ab\xffc\xc3\n\xe2\x82", "binary"),
    ("d.env", b"K=a\xffb\nL=x\n", "dotenv"),
])
def test_invalid_utf8_to_json(tmp_path, sops_bin, enclave_bin, home_env, name, content, itype):
    k1, p1 = _key()
    env = dict(home_env, SOPS_AGE_KEY=k1)
    f = tmp_path / ("e." + name)
    f.write_bytes(_sops_encrypt(sops_bin, env, tmp_path, [p1], plain=content, name=name))
    s, e = _both(sops_bin, enclave_bin, ["decrypt", "--input-type", itype, "--output-type",
                                         "json", str(f)], env, tmp_path)
    assert s.returncode == 0 and b"\\ufffd" in s.stdout and "\ufffd".encode() not in s.stdout
    _same(s, e)


def _craft(tmp_path, recipient: str, key_len: int, plain: bytes) -> bytes:
    """A YAML file whose age entry unwraps to a ``key_len``-byte data key. For 16/24/32
    bytes the values are encrypted with that key (AES-128/192/256-GCM, as Go does with such
    a key); for other sizes they are encrypted with some 32-byte key (no AES takes the key)."""
    from sops_enclave import api
    from sops_enclave.metadata import AgeEntry

    key = os.urandom(key_len)
    valid = key_len in (16, 24, 32)
    opts = api.EncryptOptions([[AgeEntry(recipient)]])
    out = api.encrypt_document(plain, "yaml", "yaml", opts, data_key=key if valid else os.urandom(32),
                               services=[_FixedKeyService(key)])
    return out


class _FixedKeyService:
    """Wraps whatever key it is given as ``key`` (so the file holds a data key of any size)."""

    def __init__(self, key: bytes):
        self.key = key

    def encrypt(self, entry, plaintext: bytes) -> str:
        r = pyrage.x25519.Recipient.from_str(entry.recipient)
        return pyrage.encrypt(self.key, [r], armored=True).decode()


@pytest.mark.parametrize("key_len,plain", [(16, PLAIN), (24, PLAIN), (31, PLAIN), (0, PLAIN),
                                           (31, b"a_unencrypted: 1\n")],
                         ids=["16", "24", "31", "0", "31-mac-only"])
def test_data_key_sizes(tmp_path, sops_bin, enclave_bin, home_env, key_len, plain):
    k1, p1 = _key()
    env = dict(home_env, SOPS_AGE_KEY=k1)
    f = tmp_path / "k.yaml"
    f.write_bytes(_craft(tmp_path, p1, key_len, plain))
    s, e = _both(sops_bin, enclave_bin, ["decrypt", str(f)], env, tmp_path)
    if key_len in (16, 24):
        assert s.returncode == 0 and s.stdout == plain
    elif plain == PLAIN:
        assert s.returncode == 25
        assert s.stderr == (b"Error decrypting tree: Error walking tree: Could not decrypt value: "
                            b"crypto/aes: invalid key size %d\n" % key_len)
    else:
        assert s.returncode == 51 and b"Cannot decrypt MAC: crypto/aes: invalid key size 31" in s.stderr
    _same(s, e)


def test_sixteen_byte_key_set_round_trip(tmp_path, sops_bin, enclave_bin, home_env):
    """A value set with sops-enclave in a 16-byte-key file decrypts with sops (AES-128-GCM)."""
    k1, p1 = _key()
    env = dict(home_env, SOPS_AGE_KEY=k1)
    f = tmp_path / "k.yaml"
    f.write_bytes(_craft(tmp_path, p1, 16, PLAIN))
    p = run(enclave_bin + ["set", str(f), '["b"]', '"four"'], env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    s = run([sops_bin, "decrypt", str(f)], env, cwd=tmp_path)
    assert s.returncode == 0 and s.stdout == b"a: 1\n# c\nb: four\n"


def test_env_sops_already_encrypted_is_refused(tmp_path, sops_bin, enclave_bin, home_env):
    """A deliberate difference: sops picks the output store from the name (`.env.sops` is
    binary), finds no `sops` key there and encrypts the encrypted file again; sops-enclave
    checks the input format and refuses with 203."""
    k1, p1 = _key()
    env = dict(home_env, SOPS_AGE_KEY=k1)
    enc = _sops_encrypt(sops_bin, env, tmp_path, [p1], plain=b"K=v\n", name="x.env")
    (tmp_path / ".env.sops").write_bytes(enc)
    args = ["encrypt", "--input-type", "dotenv", "--age", p1, ".env.sops"]
    s, e = _both(sops_bin, enclave_bin, args, env, tmp_path)
    assert s.returncode == 0 and b'"sops_mac": "ENC[' in s.stdout  # sops wraps it again
    assert e.returncode == 203 and e.stdout == b""
    assert e.stderr.startswith(b"The file you have provided contains a top-level entry")


# ------------------------------------------------------------------ units

def test_go_wordwrap_rules():
    from sops_enclave.errors import go_wordwrap

    assert go_wordwrap("aaa bbb ccc", 7) == "aaa bbb\nccc"
    assert go_wordwrap("a " + "x" * 20 + " b", 5) == "a\n" + "x" * 20 + "\nb"  # long word kept
    assert go_wordwrap("one\n\ntwo three", 4) == "one\n\ntwo\nthree"
    assert go_wordwrap("keep  two spaces", 40) == "keep  two spaces"


def test_report_layout_without_binary():
    from sops_enclave.errors import KeyMismatch
    from sops_enclave.keys.groups import get_data_key
    from sops_enclave.metadata import AgeEntry, Metadata, OtherEntry
    from sops_enclave.tree import Branch

    class Fails:
        def decrypt(self, entry):
            raise KeyMismatch("x " * 40)

    vault = OtherEntry("hc_vault", Branch([("vault_address", "https://v:8200"),
                                           ("engine_path", "transit"), ("key_name", "k")]))
    md = Metadata(key_groups=[[AgeEntry("age1x"), vault]], version="3.11.0")
    with pytest.raises(Exception) as ei:
        get_data_key(md, [Fails()])
    text = str(ei.value)
    assert ei.value.exit_code == 128
    assert "\n  \n  https://v:8200/v1/transit/keys/k: FAILED\n" in text
    assert "    - | " + ("x " * 30).rstrip() + "\n      | x" in text
