"""age SSH recipients and identities, SOPS_AGE_KEY_CMD's SOPS_AGE_RECIPIENT, passphrase-
protected identities without a terminal, and plugin recipients/identities, against sops 3.11."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

import pyrage
import pytest

from conftest import run

PLAIN = b"a: 1\nb: two\n"
needs_ssh_keygen = pytest.mark.skipif(shutil.which("ssh-keygen") is None,
                                      reason="ssh-keygen is not installed")


@pytest.fixture
def home_env(tmp_path, base_env):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in base_env.items() if not k.startswith("SOPS_AGE")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    return env


def _ssh_key(d, name, kind="ed25519", passphrase=""):
    path = d / name
    args = ["ssh-keygen", "-q", "-t", kind, "-N", passphrase, "-C", "test@host", "-f", str(path)]
    if kind == "rsa":
        args[4:4] = ["-b", "2048"]
    subprocess.run(args, check=True, capture_output=True)
    return path, (d / (name + ".pub")).read_text().strip()


def _encrypt(cmd, env, cwd, recipients):
    src = cwd / "p.yaml"
    src.write_bytes(PLAIN)
    p = run(cmd + ["encrypt", "--age", ",".join(recipients), str(src)], env, cwd=cwd)
    assert p.returncode == 0, p.stderr
    return p.stdout


def _recipients(doc: bytes) -> list[str]:
    return [ln.split("recipient: ", 1)[1] for ln in doc.decode().splitlines()
            if "recipient: " in ln]


@needs_ssh_keygen
@pytest.mark.parametrize("writer", ["sops", "enclave"])
def test_ssh_recipients_both_ways(tmp_path, sops_bin, enclave_bin, home_env, writer):
    ed, ed_pub = _ssh_key(tmp_path, "ed")
    rsa, rsa_pub = _ssh_key(tmp_path, "rsa", "rsa")
    w = [sops_bin] if writer == "sops" else enclave_bin
    doc = _encrypt(w, home_env, tmp_path, [ed_pub, rsa_pub])
    assert _recipients(doc) == [ed_pub, rsa_pub]  # the whole public key line, comment too
    f = tmp_path / "e.yaml"
    f.write_bytes(doc)
    for key in (ed, rsa):
        env = dict(home_env, SOPS_AGE_SSH_PRIVATE_KEY_FILE=str(key))
        for cmd in ([sops_bin], enclave_bin):
            p = run(cmd + ["decrypt", str(f)], env, cwd=tmp_path)
            assert (p.returncode, p.stdout) == (0, PLAIN), p.stderr


@needs_ssh_keygen
@pytest.mark.parametrize("name,kind", [("id_ed25519", "ed25519"), ("id_rsa", "rsa")])
def test_default_ssh_key_paths(tmp_path, sops_bin, enclave_bin, home_env, name, kind):
    ssh = tmp_path / "home" / ".ssh"
    ssh.mkdir()
    _, pub = _ssh_key(ssh, name, kind)
    f = tmp_path / "e.yaml"
    f.write_bytes(_encrypt([sops_bin], home_env, tmp_path, [pub]))
    p = run(enclave_bin + ["decrypt", str(f)], home_env, cwd=tmp_path)
    assert (p.returncode, p.stdout) == (0, PLAIN), p.stderr


def _same_failure(sops_bin, enclave_bin, f, env, cwd, new_session=False):
    out = []
    for cmd in ([sops_bin], enclave_bin):
        out.append(subprocess.run(cmd + ["decrypt", str(f)], env=env, cwd=cwd, capture_output=True,
                                  stdin=subprocess.DEVNULL, start_new_session=new_session,
                                  timeout=120))
    s, e = out
    assert s.returncode == 128
    assert (e.returncode, e.stderr) == (s.returncode, s.stderr), (s.stderr.decode(),
                                                                   e.stderr.decode())
    return s.stderr.decode()


@needs_ssh_keygen
@pytest.mark.parametrize("case", ["missing", "ecdsa", "garbage", "other-key", "with-x25519",
                                  "home-keys"])
def test_ssh_failure_reports(tmp_path, sops_bin, enclave_bin, home_env, case):
    _, pub = _ssh_key(tmp_path, "target")
    f = tmp_path / "e.yaml"
    f.write_bytes(_encrypt([sops_bin], home_env, tmp_path, [pub]))
    env = dict(home_env)
    if case == "missing":
        env["SOPS_AGE_SSH_PRIVATE_KEY_FILE"] = str(tmp_path / "nope")
        want = "failed to open file: open"
    elif case == "ecdsa":
        env["SOPS_AGE_SSH_PRIVATE_KEY_FILE"] = str(_ssh_key(tmp_path, "ec", "ecdsa")[0])
        want = "unsupported SSH identity type: *ecdsa.PrivateKey"
    elif case == "garbage":
        (tmp_path / "garbage").write_text("not a key\n")
        env["SOPS_AGE_SSH_PRIVATE_KEY_FILE"] = str(tmp_path / "garbage")
        want = "ssh: no key found"
    elif case == "other-key":
        env["SOPS_AGE_SSH_PRIVATE_KEY_FILE"] = str(_ssh_key(tmp_path, "other")[0])
        want = "identity did not match any of the recipients"
    elif case == "with-x25519":
        env["SOPS_AGE_SSH_PRIVATE_KEY_FILE"] = str(_ssh_key(tmp_path, "other", "rsa")[0])
        env["SOPS_AGE_KEY"] = str(pyrage.x25519.Identity.generate())
        want = "no identity matched any of the recipients"
    else:
        ssh = tmp_path / "home" / ".ssh"
        ssh.mkdir()
        _ssh_key(ssh, "id_ed25519")
        _ssh_key(ssh, "id_rsa", "rsa")
        want = "no identity matched any of the recipients"
    text = _same_failure(sops_bin, enclave_bin, f, env, tmp_path)
    assert want in text.replace("\n      | ", " ")


@needs_ssh_keygen
def test_passphrase_ssh_key_without_terminal(tmp_path, sops_bin, enclave_bin, home_env):
    """sops asks for the passphrase only when the file is for that key; with no terminal the
    report says so."""
    key, pub = _ssh_key(tmp_path, "pw", passphrase="secret")
    env = dict(home_env, SOPS_AGE_SSH_PRIVATE_KEY_FILE=str(key))
    f = tmp_path / "e.yaml"
    f.write_bytes(_encrypt([sops_bin], home_env, tmp_path, [pub]))
    text = _same_failure(sops_bin, enclave_bin, f, env, tmp_path, new_session=True)
    assert "failed to obtain passphrase" in text
    # a file for another key: no prompt, "did not match"
    _, other = _ssh_key(tmp_path, "other")
    f.write_bytes(_encrypt([sops_bin], home_env, tmp_path, [other]))
    text = _same_failure(sops_bin, enclave_bin, f, env, tmp_path, new_session=True)
    assert "identity did not match" in text


def test_passphrase_identity_file_without_terminal(tmp_path, sops_bin, enclave_bin, home_env):
    ident = pyrage.x25519.Identity.generate()
    keyfile = tmp_path / "keys.age"
    keyfile.write_bytes(pyrage.passphrase.encrypt(str(ident).encode() + b"\n", "pw"))
    f = tmp_path / "e.yaml"
    f.write_bytes(_encrypt([sops_bin], home_env, tmp_path, [str(ident.to_public())]))
    env = dict(home_env, SOPS_AGE_KEY_FILE=str(keyfile))
    text = _same_failure(sops_bin, enclave_bin, f, env, tmp_path, new_session=True)
    assert "failed to decrypt identity file: could not read" in text


def test_key_cmd_gets_the_recipient(tmp_path, sops_bin, enclave_bin, home_env):
    """SOPS_AGE_KEY_CMD runs once per age key with SOPS_AGE_RECIPIENT set to that key."""
    a, b = pyrage.x25519.Identity.generate(), pyrage.x25519.Identity.generate()
    script = tmp_path / "keycmd"
    script.write_text("#!/bin/sh\n"
                      f'[ "$SOPS_AGE_RECIPIENT" = "{b.to_public()}" ] && echo "{b}"\n'
                      "echo \"$SOPS_AGE_RECIPIENT\" >> \"$0.log\"\nexit 0\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    f = tmp_path / "e.yaml"
    f.write_bytes(_encrypt([sops_bin], home_env, tmp_path, [str(a.to_public()),
                                                          str(b.to_public())]))
    env = dict(home_env, SOPS_AGE_KEY_CMD=str(script))
    for cmd in ([sops_bin], enclave_bin):
        log = tmp_path / "keycmd.log"
        log.unlink(missing_ok=True)
        p = run(cmd + ["decrypt", str(f)], env, cwd=tmp_path)
        assert (p.returncode, p.stdout) == (0, PLAIN), p.stderr
        assert log.read_text().split() == [str(a.to_public()), str(b.to_public())]


# ------------------------------------------------------------------ plugins

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def _bech32(hrp: str, data: bytes) -> str:
    def polymod(values):
        gen = [0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3]
        chk = 1
        for v in values:
            b = chk >> 25
            chk = (chk & 0x1FFFFFF) << 5 ^ v
            for i in range(5):
                chk ^= gen[i] if (b >> i) & 1 else 0
        return chk

    acc, bits, five = 0, 0, []
    for byte in data:
        acc = (acc << 8) | byte
        bits += 8
        while bits >= 5:
            bits -= 5
            five.append((acc >> bits) & 31)
    if bits:
        five.append((acc << (5 - bits)) & 31)
    hrp_exp = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    pm = polymod(hrp_exp + five + [0] * 6) ^ 1
    check = [(pm >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[d] for d in five + check)


# A toy plugin speaking the age plugin protocol (recipient-v1 and identity-v1): it "wraps" the
# file key by XOR with a fixed mask, which is all a protocol test needs.
_PLUGIN = r'''#!PYTHON
import base64, sys

MASK = bytes(range(1, 33))


def b64d(s):
    return base64.b64decode(s + "=" * (-len(s) % 4))


def read():
    line = sys.stdin.readline()
    if not line:
        sys.exit(1)
    args = line[3:].rstrip("\n").split(" ")
    body = ""
    while True:
        part = sys.stdin.readline().rstrip("\n")
        body += part
        if len(part) < 64:
            return args, b64d(body)


def write(args, body=b""):
    enc = base64.b64encode(body).decode().rstrip("=")
    lines = [enc[i:i + 64] for i in range(0, len(enc), 64)]
    if not lines or len(lines[-1]) == 64:
        lines.append("")
    sys.stdout.write("-> " + " ".join(args) + "\n" + "\n".join(lines) + "\n")
    sys.stdout.flush()


def response():
    while read()[0][0] not in ("ok", "fail"):
        pass


def xor(b):
    return bytes(x ^ y for x, y in zip(b, MASK))


mode = sys.argv[1].split("=", 1)[1]
if mode == "recipient-v1":
    keys = []
    while True:
        args, body = read()
        if args[0] == "wrap-file-key":
            keys.append(body)
        elif args[0] == "done":
            break
    for i, k in enumerate(keys):
        write(["recipient-stanza", str(i), "fake", "v1"], xor(k))
        response()
    write(["done"])
else:
    stanzas = []
    while True:
        args, body = read()
        if args[0] == "recipient-stanza":
            stanzas.append((args, body))
        elif args[0] == "done":
            break
    done = set()
    for args, body in stanzas:
        if args[2] == "fake" and args[1] not in done:
            write(["file-key", args[1]], xor(body))
            response()
            done.add(args[1])
    write(["done"])
'''


@pytest.fixture
def fake_plugin(tmp_path, home_env):
    import sys

    bindir = tmp_path / "bin"
    bindir.mkdir()
    p = bindir / "age-plugin-fake"
    p.write_text(_PLUGIN.replace("PYTHON", sys.executable, 1))
    p.chmod(0o755)
    data = os.urandom(8)
    recipient = _bech32("age1fake", data)
    identity = _bech32("age-plugin-fake-", data).upper()
    env = dict(home_env, PATH=f"{bindir}{os.pathsep}{home_env.get('PATH', os.defpath)}")
    return env, recipient, identity


@pytest.mark.parametrize("writer", ["sops", "enclave"])
def test_plugin_recipient_and_identity(tmp_path, sops_bin, enclave_bin, fake_plugin, writer):
    env, recipient, identity = fake_plugin
    w = [sops_bin] if writer == "sops" else enclave_bin
    doc = _encrypt(w, env, tmp_path, [recipient])
    assert _recipients(doc) == [recipient]
    f = tmp_path / "e.yaml"
    f.write_bytes(doc)
    denv = dict(env, SOPS_AGE_KEY=identity)
    for cmd in ([sops_bin], enclave_bin):
        p = run(cmd + ["decrypt", str(f)], denv, cwd=tmp_path)
        assert (p.returncode, p.stdout) == (0, PLAIN), p.stderr


def test_plugin_binary_missing(tmp_path, sops_bin, enclave_bin, fake_plugin, base_env):
    env, recipient, identity = fake_plugin
    f = tmp_path / "e.yaml"
    f.write_bytes(_encrypt([sops_bin], env, tmp_path, [recipient]))
    denv = dict(env, SOPS_AGE_KEY=identity, PATH="/nonexistent")
    text = _same_failure(sops_bin, enclave_bin, f, denv, tmp_path)
    assert "plugin not found" in text.replace("\n      | ", " ")
