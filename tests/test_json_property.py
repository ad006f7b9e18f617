"""Property-based JSON round trips against the sops binary: unicode keys and values, HTML
characters, empty strings, nulls, integers beyond 2^53, floats such as 1.0 and 1e6, nested
lists of maps. sops-enclave must print exactly what `sops -d` prints, both ways."""

from __future__ import annotations

import json
import os
import subprocess

from hypothesis import HealthCheck, given, settings, strategies as st

from sops_enclave import api
from sops_enclave.keys.groups import LocalKeyService
from sops_enclave.metadata import AgeEntry

SCALARS = (st.none() | st.booleans() | st.integers(-2**60, 2**60)
           | st.sampled_from([1.0, 1e6, 0.1, 1e-7, 1e21, 25.4, -0.0, 9007199254740993])
           | st.floats(allow_nan=False, allow_infinity=False, width=64)
           | st.text(max_size=12) | st.sampled_from(["", "<b>&amp;</b>", "\u2028", "yes", "é☺"]))
KEYS = st.text(min_size=1, max_size=8).filter(lambda k: k != "sops")
DOCS = st.dictionaries(KEYS, st.recursive(SCALARS, lambda c: st.lists(c, max_size=3)
                                          | st.dictionaries(KEYS, c, max_size=3), max_leaves=8),
                       min_size=1, max_size=5)


@settings(max_examples=int(os.environ.get("SOPS_ENCLAVE_PROPERTY_EXAMPLES", "30")),
          deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(doc=DOCS)
def test_json_documents_match_sops(tmp_path, sops_bin, base_env, age_key, doc):
    src = tmp_path / "doc.json"
    src.write_text(json.dumps(doc, ensure_ascii=False))
    enc = subprocess.run([sops_bin, "encrypt", "--age", age_key[1], str(src)], env=base_env,
                         capture_output=True)
    assert enc.returncode == 0, enc.stderr

    def sops_d(data: bytes) -> subprocess.CompletedProcess:
        return subprocess.run([sops_bin, "decrypt", "--input-type", "json", "--output-type",
                               "json", "/dev/stdin"], input=data, env=base_env,
                              capture_output=True)

    theirs = sops_d(enc.stdout)
    assert theirs.returncode == 0, theirs.stderr
    svc = [LocalKeyService(base_env)]
    ours = api.decrypt_document(enc.stdout, "json", services=svc)
    assert api.emit_plain(ours.branches, "json") == theirs.stdout
    mine = api.encrypt_document(src.read_bytes(), "json", "json",
                                api.EncryptOptions([[AgeEntry(age_key[1])]]), services=svc)
    back = sops_d(mine)
    assert back.returncode == 0, back.stderr
    assert back.stdout == theirs.stdout
