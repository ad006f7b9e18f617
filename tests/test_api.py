"""The Python API: dicts and bytes in and out, sops' errors as exceptions with exit codes."""

from __future__ import annotations

import pytest

from conftest import run
from sops_enclave import api
from sops_enclave.errors import CouldNotRetrieveKey, MacMismatch, SopsError


def test_encrypt_dict_then_decrypt_file(tmp_path, age_key, base_env, sops_bin):
    env = dict(base_env)
    blob = api.encrypt_dict({"db": {"password": "s3cr3t", "port": 5432}, "n": None}, "yaml",
                            age=[age_key[1]], env=env)
    assert b"s3cr3t" not in blob
    f = tmp_path / "x.enc.yaml"
    f.write_bytes(blob)
    assert api.decrypt_file(str(f), env=env) == {"db": {"password": "s3cr3t", "port": 5432},
                                                 "n": None}
    # The real sops reads it too.
    p = run([sops_bin, "decrypt", str(f)], env)
    assert p.returncode == 0 and p.stdout == b"db:\n    password: s3cr3t\n    port: 5432\n\"n\": null\n"


def test_decrypt_bytes_matches_sops(tmp_path, age_key, base_env, sops_bin):
    src = tmp_path / "a.json"
    src.write_bytes(b'{"k": "<v>", "n": 1.0}')
    enc = run([sops_bin, "encrypt", "--age", age_key[1], str(src)], base_env).stdout
    assert api.decrypt_bytes(enc, "json", env=base_env) == \
        run([sops_bin, "decrypt", "--input-type", "json", "--output-type", "json", "/dev/stdin"],
            base_env, input=enc).stdout


def test_encrypt_bytes_dotenv(age_key, base_env):
    blob = api.encrypt_bytes(b"A=1\nB=two\n", "dotenv", age=[age_key[1]], env=base_env)
    assert api.decrypt_data(blob, "dotenv", env=base_env) == {"A": "1", "B": "two"}


def test_errors_carry_sops_exit_codes(age_key, base_env):
    import pyrage

    blob = api.encrypt_dict({"a": "b"}, "json", age=[age_key[1]], env=base_env)
    other = dict(base_env, SOPS_AGE_KEY=str(pyrage.x25519.Identity.generate()))
    with pytest.raises(CouldNotRetrieveKey) as ei:
        api.decrypt_data(blob, "json", env=other)
    assert ei.value.exit_code == 128 and isinstance(ei.value, SopsError)
    tampered = blob.replace(b'"mac": "ENC[AES256_GCM,data:', b'"mac": "ENC[AES256_GCM,data:A')
    with pytest.raises(MacMismatch) as ei:
        api.decrypt_data(tampered, "json", env=base_env)
    assert ei.value.exit_code == 51


def test_missing_file_is_exit_100(tmp_path, base_env):
    with pytest.raises(SopsError) as ei:
        api.decrypt_file(str(tmp_path / "nope.yaml"), env=base_env)
    assert ei.value.exit_code == 100
