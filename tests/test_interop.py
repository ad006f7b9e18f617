"""Interop with the real sops 3.11.0 binary, for every format and every key type.

(a) sops encrypts, sops-enclave decrypts: bytes equal ``sops -d``.
(b) sops-enclave encrypts, sops decrypts: the same bytes sops prints for its own encryption.
"""

from __future__ import annotations

import pytest

from conftest import run

SAMPLES = {
    "yaml": ("a.yaml", b"# top comment\nname: app\nnested:\n    password: s3cr3t # inline\n"
                       b"    port: 5432\n    ratio: 1.5\n    on: yes\nlist:\n    - one\n    - 2\n"
                       b"multi: |\n    line1\n    line2\nempty: ''\nnothing: null\n"
                       b"when: 2024-01-01\nkey_unencrypted: visible\n"),
    "json": ("a.json", b'{\n\t"name": "app",\n\t"nested": {"password": "s3cr3t", "port": 5432,'
                       b' "big": 9007199254740993, "html": "<b>&</b>"},\n\t"list": [1, "two", '
                       b'true, null, {"k": "v"}],\n\t"empty": {}\n}\n'),
    "dotenv": ("a.env", b"# comment\nDB_PASSWORD=s3cr3t\nQUOTED=\"kept quotes\"\nEMPTY=\n"
                        b"MULTI=a\\nb\n"),
    "ini": ("a.ini", b"; top\n[database]\nuser = admin\npassword = s3cr3t\n\n[other]\n"
                     b"key = value # cut\n"),
    "binary": ("a.bin", b"line1\n\xff\x00binary\n"),
}


def _key_args(kind, age_key, gnupg_home, kms_key):
    if kind == "age":
        return ["--age", age_key[1]]
    if kind == "pgp":
        return ["--pgp", gnupg_home[1]]
    return ["--kms", kms_key]


@pytest.fixture(params=["age", "pgp", "kms"])
def keyed(request, base_env, age_key, gnupg_home):
    kind = request.param
    env = dict(base_env, GNUPGHOME=gnupg_home[0])
    kms_key = None
    if kind == "kms":
        kms_env = request.getfixturevalue("kms_env")
        kms_key = request.getfixturevalue("kms_key")
        env = dict(kms_env, GNUPGHOME=gnupg_home[0])
    return kind, env, _key_args(kind, age_key, gnupg_home, kms_key)


@pytest.mark.parametrize("fmt", list(SAMPLES))
def test_sops_encrypts_enclave_decrypts(tmp_path, sops_bin, enclave_bin, keyed, fmt):
    kind, env, keys = keyed
    name, content = SAMPLES[fmt]
    src = tmp_path / name
    src.write_bytes(content)
    enc = tmp_path / ("enc." + name)
    p = run([sops_bin, "encrypt", *keys, str(src)], env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    enc.write_bytes(p.stdout)
    theirs = run([sops_bin, "decrypt", str(enc)], env, cwd=tmp_path)
    ours = run(enclave_bin + ["decrypt", str(enc)], env, cwd=tmp_path)
    assert theirs.returncode == 0, theirs.stderr
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == theirs.stdout
    legacy = run(enclave_bin + ["-d", str(enc)], env, cwd=tmp_path)
    assert legacy.stdout == theirs.stdout


@pytest.mark.parametrize("fmt", list(SAMPLES))
def test_enclave_encrypts_sops_decrypts(tmp_path, sops_bin, enclave_bin, keyed, fmt):
    kind, env, keys = keyed
    name, content = SAMPLES[fmt]
    src = tmp_path / name
    src.write_bytes(content)
    ours = run(enclave_bin + ["encrypt", *keys, str(src)], env, cwd=tmp_path)
    assert ours.returncode == 0, ours.stderr
    assert content not in ours.stdout
    (tmp_path / ("ours." + name)).write_bytes(ours.stdout)
    theirs = run([sops_bin, "encrypt", *keys, str(src)], env, cwd=tmp_path)
    (tmp_path / ("theirs." + name)).write_bytes(theirs.stdout)
    d_ours = run([sops_bin, "decrypt", str(tmp_path / ("ours." + name))], env, cwd=tmp_path)
    d_theirs = run([sops_bin, "decrypt", str(tmp_path / ("theirs." + name))], env, cwd=tmp_path)
    assert d_ours.returncode == 0, d_ours.stderr
    assert d_ours.stdout == d_theirs.stdout
    # The encrypted layout (everything but ciphertexts, wrapped keys and times) matches too.
    if fmt in ("yaml", "json", "dotenv"):
        import re
        strip = re.compile(rb"ENC\[[^\]]*\]|-----BEGIN[^\n]*-----.*?-----END[^\n]*-----\\?n?|"
                           rb'"?20\d\d-\d\d-\d\dT[^"\n]*Z"?|enc"?[=:] ?[^\n]*', re.S)
        assert strip.sub(b"X", ours.stdout) == strip.sub(b"X", theirs.stdout)
