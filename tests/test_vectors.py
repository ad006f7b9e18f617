"""Known-answer tests over the real sops files in ../shared/vectors/sops.

Each file is decrypted twice, with the data key from the vectors README (no gpg) and through
gpg with the functional-test key, and the bytes are compared with what the real sops 3.11
binary prints for the same file.
"""

from __future__ import annotations

import re

import pytest

from conftest import VECTORS, run
from sops_enclave import api
from sops_enclave.errors import MacMismatch
from sops_enclave.formats import format_for_path


def _rows():
    readme = VECTORS / "sops" / "README.md"
    if not readme.exists():
        return []
    text = readme.read_text()
    return [(m.group(1), m.group(2)) for m in
            re.finditer(r"^\| (\S+) \| [^|]+\| [\d.]+ \| ([0-9a-f]{64}) \|", text, re.M)]


ROWS = _rows()


class FixedKey:
    """A key service that knows one data key (the KAT's)."""

    def __init__(self, key: bytes):
        self.key = key
        self.calls = 0

    def decrypt(self, entry):
        self.calls += 1
        return self.key


@pytest.fixture(scope="module")
def sops_outputs(vectors, sops_bin, vectors_gnupg, base_env):
    env = dict(base_env, GNUPGHOME=vectors_gnupg)
    out = {}
    for name, _ in ROWS:
        p = run([sops_bin, "-d", str(vectors / "sops" / name)], env)
        out[name] = (p.returncode, p.stdout)
    return out


def test_vector_table_is_complete(vectors):
    assert len(ROWS) >= 15, "the vectors README table was not parsed"


@pytest.mark.parametrize("name,key", ROWS, ids=[r[0] for r in ROWS])
def test_kat_decrypt_with_data_key(vectors, sops_outputs, name, key):
    path = vectors / "sops" / name
    fmt = format_for_path(str(path))
    svc = FixedKey(bytes.fromhex(key))
    rc, expected = sops_outputs[name]
    if "no_mac" in name:
        assert rc == 51
        with pytest.raises(MacMismatch) as ei:
            api.decrypt_document(path.read_bytes(), fmt, services=[svc])
        assert ei.value.exit_code == 51 and "File has no MAC" in str(ei.value)
        d = api.decrypt_document(path.read_bytes(), fmt, services=[svc], ignore_mac=True)
        assert svc.calls == 2          # one data key per decryption, the refused one included
        assert d.branches
    else:
        assert rc == 0
        d = api.decrypt_document(path.read_bytes(), fmt, services=[svc])
        assert svc.calls == 1
    if rc == 0:
        assert api.emit_plain(d.branches, fmt) == expected


def test_wrong_data_key_is_refused(vectors):
    path = vectors / "sops" / "example.yaml"
    with pytest.raises(Exception) as ei:
        api.decrypt_document(path.read_bytes(), "yaml", services=[FixedKey(b"\0" * 32)])
    assert getattr(ei.value, "exit_code", None) == 25


@pytest.mark.parametrize("name,key", ROWS, ids=[r[0] for r in ROWS])
def test_cli_decrypt_through_gpg_matches_sops(vectors, sops_outputs, vectors_gnupg, base_env,
                                              enclave_bin, name, key):
    env = dict(base_env, GNUPGHOME=vectors_gnupg)
    p = run(enclave_bin + ["-d", str(vectors / "sops" / name)], env)
    rc, expected = sops_outputs[name]
    assert p.returncode == rc, p.stderr
    assert p.stdout == (expected if rc == 0 else b"")
