"""Property-based round trips of generated YAML documents, checked against the sops binary.

Documents mix unicode keys and values, empty strings, nulls, integers beyond 2^53, floats
such as 1.0 and 1e6, ``yes``/``no``, nested lists of maps and comments. For each one the
real sops encrypts it; sops-enclave must print exactly what ``sops -d`` prints, and a file
sops-enclave encrypts must decrypt with sops to those same bytes.
"""

from __future__ import annotations

import json
import os
import subprocess

from hypothesis import HealthCheck, given, settings, strategies as st

from sops_enclave import api

SCALAR_TEXT = st.sampled_from([
    "1.0", "1e6", "yes", "no", "on", "~", "null", "true", "False", "017", "0x1F",
    "9007199254740993", "-12", "3.25", "''", '""', '"a: b"', "'# not a comment'", "2024-01-01",
    "héllo wörld", '"tab\\there"', '"line1\\nline2"', '"trailing "', "plain text", "-.inf",
    '"\\u2028"', "'it''s'", "x #y",
])
KEYS = st.text(alphabet=st.characters(min_codepoint=0x61, max_codepoint=0x7a), min_size=1,
               max_size=6) | st.sampled_from(["clé", "ключ", "k_unencrypted", "1x", "a b"])
COMMENT = st.sampled_from(["# a comment", "#no space", "# ünïcode", "#"])


def _doc(draw, depth: int, indent: int) -> list[str]:
    lines: list[str] = []
    keys = draw(st.lists(KEYS, min_size=1, max_size=4, unique=True))
    for k in keys:
        if draw(st.booleans()) and draw(st.booleans()):
            lines.append(" " * indent + draw(COMMENT))
        kind = draw(st.sampled_from(["scalar", "scalar", "map", "list"]) if depth < 3
                    else st.just("scalar"))
        key = k if k.isascii() and k.replace("_", "").isalnum() else json.dumps(k, ensure_ascii=False)
        if kind == "scalar":
            v = draw(SCALAR_TEXT)
            tail = "  " + draw(COMMENT) if draw(st.booleans()) and not v.startswith("x #") else ""
            lines.append(" " * indent + f"{key}: {v}{tail}")
        elif kind == "map":
            lines.append(" " * indent + f"{key}:")
            lines += _doc(draw, depth + 1, indent + 2)
        else:
            lines.append(" " * indent + f"{key}:")
            for _ in range(draw(st.integers(1, 3))):
                if draw(st.booleans()):
                    lines.append(" " * (indent + 2) + f"- {draw(SCALAR_TEXT)}")
                else:
                    sub = _doc(draw, depth + 2, indent + 4)
                    while sub[0].lstrip().startswith("#"):
                        lines.append(" " * (indent + 2) + sub.pop(0).lstrip())
                    lines.append(" " * (indent + 2) + "- " + sub[0].lstrip())
                    lines += sub[1:]
    return lines


@st.composite
def documents(draw) -> bytes:
    lines = _doc(draw, 0, 0)
    if draw(st.booleans()):
        lines.append(draw(COMMENT))
    return ("\n".join(lines) + "\n").encode()


@settings(max_examples=int(os.environ.get("SOPS_ENCLAVE_PROPERTY_EXAMPLES", "40")),
          deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                HealthCheck.too_slow])
@given(doc=documents())
def test_yaml_documents_match_sops(tmp_path, sops_bin, base_env, age_key, doc):
    src = tmp_path / "doc.yaml"
    src.write_bytes(doc)
    enc = subprocess.run([sops_bin, "encrypt", "--age", age_key[1], str(src)], env=base_env,
                         capture_output=True)
    if enc.returncode != 0:
        # sops refuses the document: so must we, with the same exit code.
        from sops_enclave.metadata import AgeEntry

        try:
            api.encrypt_document(doc, "yaml", "yaml",
                                 api.EncryptOptions([[AgeEntry(age_key[1])]]))
        except Exception as e:  # noqa: BLE001 - compared through the exit code
            assert getattr(e, "exit_code", None) == enc.returncode, (e, enc.stderr)
        else:
            raise AssertionError(f"sops refused the document but sops-enclave accepted it: "
                                 f"{enc.stderr!r}")
        return
    theirs = subprocess.run([sops_bin, "decrypt", "--input-type", "yaml", "--output-type",
                             "yaml", "/dev/stdin"], input=enc.stdout, env=base_env,
                            capture_output=True)
    assert theirs.returncode == 0, theirs.stderr
    from sops_enclave.keys.groups import LocalKeyService

    svc = [LocalKeyService(base_env)]
    ours = api.decrypt_document(enc.stdout, "yaml", services=svc)
    assert api.emit_plain(ours.branches, "yaml") == theirs.stdout
    # And the other direction: our encryption decrypts with sops to the same bytes.
    from sops_enclave.metadata import AgeEntry

    mine = api.encrypt_document(doc, "yaml", "yaml", api.EncryptOptions([[AgeEntry(age_key[1])]]),
                                services=svc)
    back = subprocess.run([sops_bin, "decrypt", "--input-type", "yaml", "--output-type", "yaml",
                           "/dev/stdin"], input=mine, env=base_env, capture_output=True)
    assert back.returncode == 0, back.stderr
    assert back.stdout == theirs.stdout
