"""Key groups and Shamir across both tools, plus groups add/delete and updatekeys."""

from __future__ import annotations

import pyrage
import pytest

from conftest import run

PLAIN = b"db:\n    password: s3cr3t\n    port: 5432\ntoken: abc\n"


def _keys(n):
    ids = [pyrage.x25519.Identity.generate() for _ in range(n)]
    return [str(i) for i in ids], [str(i.to_public()) for i in ids]


def _config(recipients_per_group, threshold):
    lines = ["creation_rules:", "  - path_regex: .*", f"    shamir_threshold: {threshold}",
             "    key_groups:"]
    for group in recipients_per_group:
        lines.append("      - age:")
        lines += [f"          - {r}" for r in group]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("ngroups,threshold", [(2, 1), (2, 2), (3, 2), (3, 3)])
@pytest.mark.parametrize("writer", ["sops", "enclave"])
def test_shamir_files_open_with_the_other_tool(tmp_path, sops_bin, enclave_bin, base_env,
                                               ngroups, threshold, writer):
    idents, recips = _keys(ngroups)
    (tmp_path / ".sops.yaml").write_text(_config([[r] for r in recips], threshold))
    src = tmp_path / "s.yaml"
    src.write_bytes(PLAIN)
    tool = [sops_bin] if writer == "sops" else enclave_bin
    other = enclave_bin if writer == "sops" else [sops_bin]
    env_all = dict(base_env, SOPS_AGE_KEY="\n".join(idents))
    enc = run(tool + ["encrypt", str(src)], env_all, cwd=tmp_path)
    ref = run([sops_bin, "encrypt", str(src)], env_all, cwd=tmp_path)
    assert enc.returncode == ref.returncode, (enc.stderr, ref.stderr)
    if ref.returncode != 0:
        return
    f = tmp_path / "s.enc.yaml"
    f.write_bytes(enc.stdout)
    text = enc.stdout.decode()
    assert text.count("recipient:") == ngroups and "key_groups:" in text
    need = max(threshold, 2) if ngroups > 1 else 1
    assert f"shamir_threshold: {need}" in text
    # Exactly `need` groups' keys are enough, one fewer is not (exit 128).
    enough = dict(base_env, SOPS_AGE_KEY="\n".join(idents[-need:]))
    p = run(other + ["decrypt", str(f)], enough, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout == PLAIN
    too_few = dict(base_env, SOPS_AGE_KEY="\n".join(idents[:need - 1]) or idents[0][:0])
    p = run(other + ["decrypt", str(f)], too_few, cwd=tmp_path)
    assert p.returncode == 128, p.stderr
    assert b"Shamir threshold" in p.stderr or b"no master key" in p.stderr


def test_groups_add_and_delete(tmp_path, sops_bin, enclave_bin, base_env):
    idents, recips = _keys(3)
    src = tmp_path / "s.yaml"
    src.write_bytes(PLAIN)
    env0 = dict(base_env, SOPS_AGE_KEY=idents[0])
    p = run(enclave_bin + ["encrypt", "--age", recips[0], "--output", str(tmp_path / "f.yaml"),
                           str(src)], env0)
    assert p.returncode == 0, p.stderr
    f = tmp_path / "f.yaml"
    values_before = [l for l in f.read_bytes().split(b"\n") if b"ENC[" in l]
    p = run(enclave_bin + ["groups", "add", "--file", str(f), "--age", recips[1], "-i"], env0)
    assert p.returncode == 0, p.stderr
    env01 = dict(base_env, SOPS_AGE_KEY="\n".join(idents[:2]))
    assert run([sops_bin, "decrypt", str(f)], env0).returncode == 128  # now 2 of 2 groups
    p = run(enclave_bin + ["groups", "add", "--file", str(f), "--age", recips[2], "-i",
                           "--shamir-secret-sharing-threshold", "2"], env01)
    assert p.returncode == 0, p.stderr
    # Values and MAC untouched; now any two of the three groups decrypt, with sops too.
    assert [l for l in f.read_bytes().split(b"\n") if b"ENC[" in l] == values_before
    two = dict(base_env, SOPS_AGE_KEY="\n".join(idents[1:]))
    s = run([sops_bin, "decrypt", str(f)], two)
    assert s.returncode == 0 and s.stdout == PLAIN, s.stderr
    p = run(enclave_bin + ["groups", "delete", "--file", str(f), "-i", "0"], two)
    assert p.returncode == 0, p.stderr
    s = run([sops_bin, "decrypt", str(f)], two)
    assert s.returncode == 0 and s.stdout == PLAIN
    assert run([sops_bin, "decrypt", str(f)], env0).returncode == 128


def test_updatekeys_follows_config(tmp_path, sops_bin, enclave_bin, base_env):
    idents, recips = _keys(2)
    (tmp_path / ".sops.yaml").write_text(f"creation_rules:\n  - age: {recips[0]}\n")
    src = tmp_path / "s.yaml"
    src.write_bytes(PLAIN)
    env = dict(base_env, SOPS_AGE_KEY="\n".join(idents))
    p = run(enclave_bin + ["encrypt", "--output", str(tmp_path / "f.yaml"), str(src)], env,
            cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    f = tmp_path / "f.yaml"
    before = f.read_bytes()
    (tmp_path / ".sops.yaml").write_text(f"creation_rules:\n  - age: {recips[0]},{recips[1]}\n")
    p = run(enclave_bin + ["updatekeys", "-y", str(f)], env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    after = f.read_bytes()
    assert after.count(b"recipient:") == 2
    same = [l for l in before.split(b"\n") if b"ENC[" in l or b"lastmodified" in l]
    assert same == [l for l in after.split(b"\n") if b"ENC[" in l or b"lastmodified" in l]
    s = run([sops_bin, "decrypt", str(f)], dict(base_env, SOPS_AGE_KEY=idents[1]))
    assert s.returncode == 0 and s.stdout == PLAIN
