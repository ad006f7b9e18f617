"""Bad input: one line naming the problem, sops' exit code, nothing on stdout, no file changed.

Tests that compare with the real sops binary run both as child processes; the others run
sops-enclave in this process (the ``cli`` fixture)."""

from __future__ import annotations

import hashlib
import os

import pytest

from conftest import run


def _snapshot(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


@pytest.fixture
def enc_yaml(tmp_path, sops_bin, base_env, age_key):
    src = tmp_path / "plain.yaml"
    src.write_bytes(b"a: secret\nb_unencrypted: open\nc: 2\n")
    p = run([sops_bin, "encrypt", "--age", age_key[1], str(src)], base_env, cwd=tmp_path)
    assert p.returncode == 0
    f = tmp_path / "s.enc.yaml"
    f.write_bytes(p.stdout)
    return f


def _check(p, code, needle, sops_p=None):
    assert p.returncode == code, (p.returncode, p.stderr)
    assert p.stdout == b""
    assert b"Traceback" not in p.stderr
    assert needle.encode() in p.stderr, p.stderr
    if sops_p is not None:
        assert sops_p.returncode == code


CASES = [
    # (name, file content or None for missing, extra args, exit code, stderr needle)
    ("missing", None, [], 100, "cannot operate on non-existent file"),
    ("plain", b"a: 1\n", [], 1, "sops metadata not found"),
    ("malformed", b"a: [1,\n", [], 1, "Error unmarshalling input yaml"),
    ("badjson", b'{"a": ', ["--input-type", "json"], 1, "Error unmarshalling input json"),
]


@pytest.mark.parametrize("name,content,extra,code,needle", CASES, ids=[c[0] for c in CASES])
def test_decrypt_bad_input(tmp_path, sops_bin, enclave_bin, base_env, name, content, extra, code,
                           needle):
    f = tmp_path / "in.yaml"
    if content is not None:
        f.write_bytes(content)
    out = tmp_path / "out.txt"
    before = _snapshot(tmp_path)
    p = run(enclave_bin + ["decrypt", *extra, "--output", str(out), str(f)], base_env, cwd=tmp_path)
    s = run([sops_bin, "decrypt", *extra, str(f)], base_env, cwd=tmp_path)
    _check(p, code, needle, s)
    assert _snapshot(tmp_path) == before  # no output file created


def _tamper(path, old: bytes, new: bytes):
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, 1))


def test_tampered_value_exit_25(tmp_path, enc_yaml, sops_bin, enclave_bin, base_env):
    data = enc_yaml.read_bytes()
    i = data.index(b"data:") + 5
    flipped = data[:i] + (b"A" if data[i:i + 1] != b"A" else b"B") + data[i + 1:]
    enc_yaml.write_bytes(flipped)
    p = run(enclave_bin + ["-d", str(enc_yaml)], base_env)
    s = run([sops_bin, "-d", str(enc_yaml)], base_env)
    _check(p, 25, "Could not decrypt value", s)


def test_swapped_values_fail_aad(tmp_path, enc_yaml, sops_bin, enclave_bin, base_env):
    lines = enc_yaml.read_bytes().split(b"\n")
    a = next(i for i, l in enumerate(lines) if l.startswith(b"a: "))
    c = next(i for i, l in enumerate(lines) if l.startswith(b"c: "))
    va, vc = lines[a][3:], lines[c][3:]
    lines[a], lines[c] = b"a: " + vc, b"c: " + va
    enc_yaml.write_bytes(b"\n".join(lines))
    p = run(enclave_bin + ["-d", str(enc_yaml)], base_env)
    _check(p, 25, "message authentication failed", run([sops_bin, "-d", str(enc_yaml)], base_env))


def test_changed_unencrypted_value_is_mac_mismatch(tmp_path, enc_yaml, sops_bin, enclave_bin,
                                                   base_env):
    _tamper(enc_yaml, b"b_unencrypted: open", b"b_unencrypted: shut")
    p = run(enclave_bin + ["-d", str(enc_yaml)], base_env)
    _check(p, 51, "MAC mismatch", run([sops_bin, "-d", str(enc_yaml)], base_env))
    ok = run(enclave_bin + ["-d", "--ignore-mac", str(enc_yaml)], base_env)
    assert ok.returncode == 0 and b"b_unencrypted: shut" in ok.stdout


def test_missing_mac_is_mac_mismatch(tmp_path, enc_yaml, sops_bin, enclave_bin, base_env):
    lines = [l for l in enc_yaml.read_bytes().split(b"\n") if not l.strip().startswith(b"mac:")]
    enc_yaml.write_bytes(b"\n".join(lines))
    p = run(enclave_bin + ["-d", str(enc_yaml)], base_env)
    _check(p, 51, "File has no MAC", run([sops_bin, "-d", str(enc_yaml)], base_env))


def test_wrong_age_key_exit_128(tmp_path, enc_yaml, sops_bin, enclave_bin, base_env):
    import pyrage

    env = dict(base_env, SOPS_AGE_KEY=str(pyrage.x25519.Identity.generate()))
    p = run(enclave_bin + ["-d", str(enc_yaml)], env)
    s = run([sops_bin, "-d", str(enc_yaml)], env)
    _check(p, 128, "Failed to get the data key required to decrypt the SOPS file", s)
    assert b"Group 0: FAILED" in p.stderr and b"age1" in p.stderr


def test_no_key_at_all_exit_128(tmp_path, enc_yaml, cli, base_env):
    env = {k: v for k, v in base_env.items() if k != "SOPS_AGE_KEY"}
    p = cli(["-d", str(enc_yaml)], env)
    _check(p, 128, "Group 0: FAILED")


def test_in_place_failure_leaves_file(tmp_path, enc_yaml, cli, base_env):
    _tamper(enc_yaml, b"b_unencrypted: open", b"b_unencrypted: shut")
    before = enc_yaml.read_bytes()
    p = cli(["-d", "-i", str(enc_yaml)], base_env)
    assert p.returncode == 51
    assert enc_yaml.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["plain.yaml", "s.enc.yaml"]


def test_in_place_and_output_conflict(tmp_path, enc_yaml, enclave_bin, sops_bin, base_env):
    p = run(enclave_bin + ["decrypt", "-i", "--output", str(tmp_path / "x"), str(enc_yaml)],
            base_env)
    s = run([sops_bin, "decrypt", "-i", "--output", str(tmp_path / "x"), str(enc_yaml)], base_env)
    _check(p, 8, "cannot operate on both --output and --in-place", s)


def test_encrypt_already_encrypted_exit_203(tmp_path, enc_yaml, enclave_bin, sops_bin, base_env,
                                            age_key):
    p = run(enclave_bin + ["encrypt", "--age", age_key[1], str(enc_yaml)], base_env)
    s = run([sops_bin, "encrypt", "--age", age_key[1], str(enc_yaml)], base_env)
    _check(p, 203, "top-level entry called 'sops'", s)


def test_encrypt_malformed_yaml_exit_2(tmp_path, enclave_bin, sops_bin, base_env, age_key):
    f = tmp_path / "bad.yaml"
    f.write_bytes(b"a: b: c\n")
    p = run(enclave_bin + ["encrypt", "--age", age_key[1], str(f)], base_env)
    s = run([sops_bin, "encrypt", "--age", age_key[1], str(f)], base_env)
    _check(p, 2, "Error unmarshalling file", s)


def test_encrypt_empty_yaml_exit_92(tmp_path, enclave_bin, sops_bin, base_env, age_key):
    f = tmp_path / "empty.yaml"
    f.write_bytes(b"")
    p = run(enclave_bin + ["encrypt", "--age", age_key[1], str(f)], base_env)
    s = run([sops_bin, "encrypt", "--age", age_key[1], str(f)], base_env)
    _check(p, 92, "File cannot be completely empty", s)


def test_encrypt_without_keys(tmp_path, enclave_bin, sops_bin, base_env):
    f = tmp_path / "a.yaml"
    f.write_bytes(b"a: 1\n")
    p = run(enclave_bin + ["encrypt", str(f)], base_env, cwd=tmp_path)
    s = run([sops_bin, "encrypt", str(f)], base_env, cwd=tmp_path)
    _check(p, 1, "no keys provided through command line options", s)


def test_encrypt_stdin_needs_filename_override(enclave_bin, sops_bin, base_env, age_key):
    p = run(enclave_bin + ["encrypt", "--age", age_key[1]], base_env, input=b"a: 1\n")
    s = run([sops_bin, "encrypt", "--age", age_key[1]], base_env, input=b"a: 1\n")
    _check(p, 8, "must specify --filename-override", s)


def test_bad_extract_path_exit_91(enc_yaml, enclave_bin, sops_bin, base_env):
    p = run(enclave_bin + ["decrypt", "--extract", "foo", str(enc_yaml)], base_env)
    s = run([sops_bin, "decrypt", "--extract", "foo", str(enc_yaml)], base_env)
    _check(p, 91, "doesn't end with ]", s)


def test_unknown_flag_exit_1(enc_yaml, cli, base_env):
    p = cli(["decrypt", "--no-such-flag", str(enc_yaml)], base_env)
    _check(p, 1, "no-such-flag")


def test_unknown_input_type_falls_back_to_extension(enc_yaml, enclave_bin, sops_bin, base_env):
    p = run(enclave_bin + ["decrypt", "--input-type", "foo", str(enc_yaml)], base_env)
    s = run([sops_bin, "decrypt", "--input-type", "foo", str(enc_yaml)], base_env)
    assert p.returncode == s.returncode == 0
    assert p.stdout == s.stdout


def test_bad_encryption_context_exit_6(tmp_path, enclave_bin, sops_bin, base_env):
    f = tmp_path / "a.yaml"
    f.write_bytes(b"a: 1\n")
    args = ["encrypt", "--kms", "arn:aws:kms:us-east-1:111122223333:key/x",
            "--encryption-context", "bad", str(f)]
    p = run(enclave_bin + args, base_env)
    s = run([sops_bin] + args, base_env)
    _check(p, 6, "Invalid KMS encryption context format", s)


def test_extract_values(enc_yaml, enclave_bin, sops_bin, base_env):
    for path in ('["a"]', '["c"]', '["b_unencrypted"]'):
        p = run(enclave_bin + ["decrypt", "--extract", path, str(enc_yaml)], base_env)
        s = run([sops_bin, "decrypt", "--extract", path, str(enc_yaml)], base_env)
        assert p.returncode == s.returncode == 0
        assert p.stdout == s.stdout
    p = run(enclave_bin + ["decrypt", "--extract", '["zz"]', str(enc_yaml)], base_env)
    _check(p, 1, "component ['zz'] not found")


# ---------------------------------------------------------------- limits

def test_yaml_alias_bomb_is_refused(tmp_path, cli, base_env, age_key):
    levels = "".join(f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 10) + "]\n"
                     for i in range(9))
    f = tmp_path / "bomb.yaml"
    f.write_text("a: &a [x,x,x,x,x,x,x,x,x,x]\n" + levels)
    p = cli(["encrypt", "--age", age_key[1], str(f)], base_env)
    _check(p, 2, "alias expansion")


@pytest.mark.parametrize("fmt,content", [
    ("yaml", "".join("  " * i + "a:\n" for i in range(300)).encode() + b"  " * 300 + b"b: 1\n"),
    ("json", b'{"a":' * 300 + b"1" + b"}" * 300),
])
def test_deep_nesting_is_refused(tmp_path, cli, base_env, age_key, fmt, content):
    f = tmp_path / f"deep.{fmt}"
    f.write_bytes(content)
    p = cli(["encrypt", "--age", age_key[1], str(f)], base_env)
    _check(p, 2, "nesting deeper than")


def test_input_size_limit(tmp_path, cli, base_env, age_key):
    f = tmp_path / "a.yaml"
    f.write_bytes(b"a: " + b"x" * 100 + b"\n")
    p = cli(["encrypt", "--age", age_key[1], str(f)],
            dict(base_env, SOPS_ENCLAVE_MAX_INPUT_BYTES="50"))
    _check(p, 2, "larger than the 50-byte limit")
