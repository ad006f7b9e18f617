"""rotate, set, unset, filestatus, edit, exec-env and exec-file against the real sops 3.11.

Comparisons with the sops binary and runs that start a child (exec-env, exec-file, edit's
editor) use child processes; the other checks run sops-enclave in this process (``cli``)."""

from __future__ import annotations

import os
import re
import sys

import pytest

from conftest import run

PLAIN = (b"# config\napp:\n    user: admin\n    password: s3cr3t\n    port: 8080\n"
         b"list:\n    - a\n    - b\nflag: true\n")


@pytest.fixture
def pair(tmp_path, sops_bin, base_env, age_key):
    """The same sops-encrypted file twice: one for sops-enclave, one for sops."""
    src = tmp_path / "plain.yaml"
    src.write_bytes(PLAIN)
    p = run([sops_bin, "encrypt", "--age", age_key[1], str(src)], base_env)
    assert p.returncode == 0, p.stderr
    ours, theirs = tmp_path / "ours.yaml", tmp_path / "theirs.yaml"
    ours.write_bytes(p.stdout)
    theirs.write_bytes(p.stdout)
    return ours, theirs


def _dec(sops_bin, env, path):
    p = run([sops_bin, "decrypt", str(path)], env)
    assert p.returncode == 0, p.stderr
    return p.stdout


def _enc_lines(path):
    return {l for l in path.read_bytes().split(b"\n") if b"ENC[" in l and b"mac:" not in l}


SET_CASES = [('["app"]["password"]', '"n3w"'), ('["app"]["port"]', "9090"),
             ('["new"]["deep"][0]["k"]', '"v"'), ('["list"][5]', '"c"'),
             ('["obj"]', '{"k": 5, "l": [1, "x"]}'), ('["flag"]', "false")]


@pytest.mark.parametrize("path,value", SET_CASES)
def test_set_matches_sops(pair, sops_bin, enclave_bin, base_env, path, value):
    ours, theirs = pair
    before = _enc_lines(ours)
    p = run(enclave_bin + ["set", str(ours), path, value], base_env)
    s = run([sops_bin, "set", str(theirs), path, value], base_env)
    assert p.returncode == s.returncode == 0, p.stderr
    assert _dec(sops_bin, base_env, ours) == _dec(sops_bin, base_env, theirs)
    # Values that did not change keep their exact ciphertext (same IV), as sops does.
    kept = _enc_lines(ours) & before
    assert len(kept) >= len(before) - 1


def test_set_errors(pair, sops_bin, enclave_bin, base_env):
    ours, theirs = pair
    before = ours.read_bytes()
    for args, code in ((["notjson"], 7), (["[1, 2]"], 7)):
        p = run(enclave_bin + ["set", str(ours), '["a"]', *args], base_env)
        s = run([sops_bin, "set", str(theirs), '["a"]', *args], base_env)
        assert p.returncode == s.returncode == code
        assert b"Traceback" not in p.stderr
    p = run(enclave_bin + ["set", str(ours), 'bad', '"x"'], base_env)
    assert p.returncode == 7
    assert ours.read_bytes() == before


def test_set_idempotent_does_not_write(pair, cli, base_env):
    ours, _ = pair
    before = ours.read_bytes()
    p = cli(["set", "--idempotent", str(ours), '["app"]["user"]', '"admin"'], base_env)
    assert p.returncode == 0
    assert ours.read_bytes() == before


@pytest.mark.parametrize("path", ['["app"]["password"]', '["list"][0]', '["flag"]'])
def test_unset_matches_sops(pair, sops_bin, enclave_bin, base_env, path):
    ours, theirs = pair
    p = run(enclave_bin + ["unset", str(ours), path], base_env)
    s = run([sops_bin, "unset", str(theirs), path], base_env)
    assert p.returncode == s.returncode == 0, p.stderr
    assert _dec(sops_bin, base_env, ours) == _dec(sops_bin, base_env, theirs)


def test_unset_missing(pair, sops_bin, enclave_bin, base_env):
    ours, theirs = pair
    before = ours.read_bytes()
    p = run(enclave_bin + ["unset", str(ours), '["zz"]'], base_env)
    s = run([sops_bin, "unset", str(theirs), '["zz"]'], base_env)
    assert p.returncode == s.returncode == 1
    assert b"Key not found: zz" in p.stderr
    assert ours.read_bytes() == before
    p = run(enclave_bin + ["unset", "--idempotent", str(ours), '["zz"]'], base_env)
    assert p.returncode == 0 and ours.read_bytes() == before


def test_rotate_matches_sops(pair, sops_bin, enclave_bin, base_env, age_key):
    import pyrage

    ours, theirs = pair
    extra = pyrage.x25519.Identity.generate()
    before = _enc_lines(ours)
    p = run(enclave_bin + ["rotate", "-i", "--add-age", str(extra.to_public()), str(ours)],
            base_env)
    s = run([sops_bin, "rotate", "-i", "--add-age", str(extra.to_public()), str(theirs)],
            base_env)
    assert p.returncode == s.returncode == 0, p.stderr
    assert _dec(sops_bin, base_env, ours) == _dec(sops_bin, base_env, theirs)
    assert not (_enc_lines(ours) & before), "rotate must re-encrypt every value"
    # The added key alone opens the rotated file.
    env2 = dict(base_env, SOPS_AGE_KEY=str(extra))
    assert _dec(sops_bin, env2, ours) == _dec(sops_bin, base_env, theirs)
    # And removing the original key leaves only the new one.
    p = run(enclave_bin + ["rotate", "-i", "--rm-age", age_key[1], str(ours)], env2)
    assert p.returncode == 0, p.stderr
    assert run([sops_bin, "decrypt", str(ours)], base_env).returncode == 128


def test_legacy_rotate_flag(pair, cli, base_env):
    ours, _ = pair
    p = cli(["-r", str(ours)], base_env)
    assert p.returncode == 0, p.stderr
    assert b"sops:" in p.stdout and p.stdout != ours.read_bytes()


def test_filestatus(pair, tmp_path, sops_bin, enclave_bin, base_env):
    ours, _ = pair
    plain = tmp_path / "plain.yaml"
    for f in (ours, plain):
        p = run(enclave_bin + ["filestatus", str(f)], base_env)
        s = run([sops_bin, "filestatus", str(f)], base_env)
        assert p.returncode == s.returncode == 0
        assert p.stdout == s.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"a: [\n")
    p = run(enclave_bin + ["filestatus", str(bad)], base_env)
    assert p.returncode == 1 and b"cannot check file status" in p.stderr


EDITOR = """import sys, re
p = sys.argv[1]
t = open(p).read()
open(p, "w").write(t.replace("s3cr3t", "changed").replace("port: 8080", "port: 8081"))
"""


def test_edit_with_scripted_editor(pair, tmp_path, sops_bin, enclave_bin, base_env):
    ours, theirs = pair
    ed = tmp_path / "editor.py"
    ed.write_text(EDITOR)
    env = dict(base_env, SOPS_EDITOR=f"{sys.executable} {ed}")
    before = _enc_lines(ours)
    p = run(enclave_bin + ["edit", str(ours)], env)
    s = run([sops_bin, "edit", str(theirs)], env)
    assert p.returncode == s.returncode == 0, p.stderr
    assert _dec(sops_bin, base_env, ours) == _dec(sops_bin, base_env, theirs)
    assert b"changed" in _dec(sops_bin, base_env, ours)
    assert len(_enc_lines(ours) & before) == len(before) - 2  # only the 2 edited values change
    left = [f for f in os.listdir(tmp_path) if f.startswith("sops-enclave-edit")]
    assert not left


def test_edit_unchanged_exit_200(pair, tmp_path, sops_bin, enclave_bin, base_env):
    ours, theirs = pair
    env = dict(base_env, SOPS_EDITOR="true")
    before = ours.read_bytes()
    p = run(enclave_bin + ["edit", str(ours)], env)
    s = run([sops_bin, "edit", str(theirs)], env)
    assert p.returncode == s.returncode == 200
    assert b"File has not changed" in p.stderr
    assert ours.read_bytes() == before
    p = run(enclave_bin + ["edit", str(ours)], dict(base_env, SOPS_EDITOR="false"))
    assert p.returncode == 201 and ours.read_bytes() == before


@pytest.fixture
def flat(tmp_path, sops_bin, base_env, age_key):
    src = tmp_path / "env.yaml"
    src.write_bytes(b"A: plain\nB: 1.5\nC: null\nD: 'multi\n\n  line'\nE: \"q'\\\"$HOME\"\n")
    p = run([sops_bin, "encrypt", "--age", age_key[1], str(src)], base_env)
    f = tmp_path / "env.enc.yaml"
    f.write_bytes(p.stdout)
    return f


@pytest.mark.parametrize("status", ["exit 0", "exit 1", "exit 42", "kill -9 $$", "kill -TERM $$"])
def test_exec_env_status_and_values(flat, sops_bin, enclave_bin, base_env, status):
    cmd = f'printf "%s|%s|%s|%s|%s" "$A" "$B" "$C" "$D" "$E"; {status}'
    p = run(enclave_bin + ["exec-env", str(flat), cmd], base_env)
    s = run([sops_bin, "exec-env", str(flat), cmd], base_env)
    assert p.returncode == s.returncode
    assert p.stdout == s.stdout
    assert p.stderr.strip().splitlines()[-1:] == s.stderr.strip().splitlines()[-1:]


def test_exec_env_pristine(flat, enclave_bin, base_env):
    p = run(enclave_bin + ["exec-env", "--pristine", str(flat), "env"], dict(base_env, ZZ="1"))
    assert p.returncode == 0
    assert b"ZZ=1" not in p.stdout and b"A=plain" in p.stdout


@pytest.mark.parametrize("fifo", [True, False])
@pytest.mark.parametrize("status", ["exit 0", "exit 9", "kill -9 $$"])
def test_exec_file(flat, sops_bin, enclave_bin, base_env, fifo, status):
    flags = [] if fifo else ["--no-fifo"]
    cmd = f"stat -c '%A' {{}}; cat {{}}; {status}"
    p = run(enclave_bin + ["exec-file", *flags, str(flat), cmd], base_env)
    s = run([sops_bin, "exec-file", *flags, str(flat), cmd], base_env)
    assert p.returncode == s.returncode
    assert p.stdout == s.stdout
    assert p.stdout.startswith(b"prw-------" if fifo else b"-rw-------")


def test_exec_file_removes_temp_dir(flat, tmp_path, enclave_bin, base_env):
    env = dict(base_env, TMPDIR=str(tmp_path / "t"))
    os.mkdir(tmp_path / "t")
    p = run(enclave_bin + ["exec-file", "--no-fifo", str(flat), "echo {}"], env)
    assert p.returncode == 0
    assert os.listdir(tmp_path / "t") == []
    path = p.stdout.strip().decode()
    assert not os.path.exists(path)


def test_exec_bad_mac_exit_51(flat, cli, base_env):
    data = flat.read_bytes()
    flat.write_bytes(re.sub(rb"lastmodified: \"[^\"]+\"", b'lastmodified: "2001-01-01T00:00:00Z"',
                            data))
    p = cli(["exec-env", str(flat), "true"], base_env)  # refused before any child starts
    assert p.returncode == 51


def test_exec_env_merges_several_inputs(tmp_path, flat, sops_bin, enclave_bin, base_env, age_key):
    extra = tmp_path / "extra.json"
    extra.write_bytes(b'{"B": "override", "F": "new"}')
    p = run([sops_bin, "encrypt", "--age", age_key[1], str(extra)], base_env)
    enc = tmp_path / "extra.enc.json"
    enc.write_bytes(p.stdout)
    r = run(enclave_bin + ["exec-env", str(flat), str(enc), 'printf "%s %s %s" "$A" "$B" "$F"'],
            base_env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"plain override new"


def test_exec_env_input_type(tmp_path, sops_bin, enclave_bin, base_env, age_key):
    src = tmp_path / "vars.env"
    src.write_bytes(b"TOKEN=t0k\n")
    p = run([sops_bin, "encrypt", "--age", age_key[1], str(src)], base_env)
    odd = tmp_path / "vars.secret"  # no .env extension: sops would read it as binary
    odd.write_bytes(p.stdout)
    r = run(enclave_bin + ["exec-env", "--input-type", "dotenv", str(odd), 'printf "$TOKEN"'],
            base_env)
    assert r.returncode == 0 and r.stdout == b"t0k"


def test_merge_records_conflicts():
    from sops_enclave.merge import deep_merge
    from sops_enclave.tree import Branch

    a = Branch([("db", Branch([("host", "a"), ("port", 1)])), ("l", [1, 2])])
    b = Branch([("db", Branch([("port", 2), ("user", "u")])), ("l", [3])])
    merged, conflicts = deep_merge([a, b])
    assert merged == Branch([("db", Branch([("host", "a"), ("port", 2), ("user", "u")])),
                             ("l", [3])])
    assert [(c.path, c.previous, c.winner) for c in conflicts] == [(("db", "port"), 0, 1),
                                                                   (("l",), 0, 1)]
