"""Shamir secret sharing: the GF(2^8) field, split/combine, sops share layout, real-sops interop."""

from __future__ import annotations

import itertools
import os
import random
import re
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sops_enclave import shamir
from sops_enclave.shamir import add, combine, div, inverse, mult, split


def _slow_mult(a: int, b: int) -> int:
    """Schoolbook carry-less multiplication reduced modulo 0x11B (independent of the tables)."""
    r = 0
    while b:
        if b & 1:
            r ^= a
        a <<= 1
        if a & 0x100:
            a ^= 0x11B
        b >>= 1
    return r


# ---------------------------------------------------------------- field

def test_field_known_answers():
    assert mult(3, 7) == 9  # sops/vault's sanity check
    assert mult(7, 3) == 9
    assert mult(0x53, 0xCA) == 0x01  # FIPS-197 §4.2: {53} and {ca} are inverses
    assert mult(0x57, 0x83) == 0xC1  # FIPS-197 §4.2 example
    assert mult(0x57, 0x13) == 0xFE  # FIPS-197 §4.2.1 example
    assert inverse(0x53) == 0xCA
    assert inverse(0) == 0  # like sops' a^254
    assert add(0x57, 0x83) == 0xD4
    assert div(9, 7) == 3
    assert div(0, 5) == 0
    with pytest.raises(ZeroDivisionError):
        div(1, 0)


def test_field_tables_match_schoolbook_for_all_pairs():
    for a in range(256):
        for b in range(256):
            assert mult(a, b) == _slow_mult(a, b), (a, b)


def test_field_inverse_and_division_for_all_elements():
    for a in range(1, 256):
        assert mult(a, inverse(a)) == 1
        for b in (1, 2, 3, 0x53, 0xFF, a):
            assert mult(div(a, b), b) == a


# ---------------------------------------------------------------- split layout and validation

def test_share_layout_sequential_x_last():
    secret = bytes(range(32))
    shares = split(secret, 5, 3)
    assert len(shares) == 5
    for i, s in enumerate(shares):
        assert len(s) == 33
        assert s[-1] == i + 1


def test_split_is_a_polynomial_of_degree_threshold_minus_one():
    """With a fixed rng the shares are exactly p(x) = s + c1 x + c2 x^2 per byte."""
    coeffs = iter([0x11, 0x22, 0x33, 0x44])
    calls = []

    def rng(n):
        calls.append(n)
        return bytes(next(coeffs) for _ in range(n))

    shares = split(b"\x05\x06", 3, 3, rng=rng)
    assert calls == [2, 2]  # one read of threshold-1 bytes per secret byte, like sops
    for x, s in zip((1, 2, 3), shares):
        p0 = 0x05 ^ mult(0x11, x) ^ mult(0x22, mult(x, x))
        p1 = 0x06 ^ mult(0x33, x) ^ mult(0x44, mult(x, x))
        assert s == bytes([p0, p1, x])


@pytest.mark.parametrize("parts,threshold,msg", [
    (2, 3, "parts cannot be less than threshold"),
    (256, 2, "parts cannot exceed 255"),
    (3, 1, "threshold must be at least 2"),
    (1, 1, "threshold must be at least 2"),
    (5, 0, "threshold must be at least 2"),
])
def test_split_validation(parts, threshold, msg):
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        split(b"k" * 32, parts, threshold)


def test_split_limits_and_empty_secret():
    assert len(split(b"k", 255, 2)) == 255
    assert split(b"k", 255, 255)[254][-1] == 255
    with pytest.raises(ValueError, match="cannot split an empty secret"):
        split(b"", 3, 2)


def test_split_short_rng_is_an_error():
    with pytest.raises(ValueError, match="failed to generate polynomial"):
        split(b"k", 3, 3, rng=lambda n: b"\x00")


# ---------------------------------------------------------------- combine

@pytest.mark.parametrize("threshold", [2, 3, 4, 5])
def test_every_subset_of_at_least_threshold_shares_combines(threshold):
    secret = os.urandom(32)
    parts = threshold + 2
    shares = split(secret, parts, threshold)
    for k in range(threshold, parts + 1):
        for subset in itertools.combinations(shares, k):
            assert combine(list(subset)) == secret
            assert combine(list(reversed(subset))) == secret


@pytest.mark.parametrize("threshold", [3, 4, 5])
def test_fewer_than_threshold_shares_give_a_wrong_secret(threshold):
    secret = os.urandom(32)
    shares = split(secret, threshold + 1, threshold)
    for subset in itertools.combinations(shares, threshold - 1):
        if len(subset) >= 2:
            # 32 independent bytes all matching by chance: probability 2^-256
            assert combine(list(subset)) != secret


def _old_sops_split(secret: bytes, parts: int, threshold: int) -> list[bytes]:
    """Shares as sops < 3.10 made them: x from a random permutation of 1..255."""
    xs = random.sample(range(1, 256), parts)
    polys = [[b] + [random.randrange(256) for _ in range(threshold - 1)] for b in secret]
    out = []
    for x in xs:
        ys = []
        for p in polys:
            y = 0
            for c in reversed(p):  # Horner, using only the field operations
                y = add(mult(y, x), c)
            ys.append(y)
        out.append(bytes(ys + [x]))
    return out


@pytest.mark.parametrize("threshold", [2, 3, 5])
def test_shares_with_random_x_combine(threshold):
    for _ in range(20):
        secret = os.urandom(32)
        shares = _old_sops_split(secret, threshold + 1, threshold)
        for subset in itertools.combinations(shares, threshold):
            assert combine(list(subset)) == secret


@pytest.mark.parametrize("shares,msg", [
    ([], "less than two parts cannot be used to reconstruct the secret"),
    ([b"ab"], "less than two parts cannot be used to reconstruct the secret"),
    ([b"a", b"b"], "parts must be at least two bytes"),
    ([b"ab\x01", b"ab"], "all parts must be the same length"),
    ([b"ab\x01", b"cd\x01"], "duplicate part detected"),
])
def test_combine_errors(shares, msg):
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        combine(shares)


def test_combine_accepts_bytearrays_and_memoryviews():
    secret = os.urandom(32)
    a, b = split(secret, 2, 2)
    assert combine([bytearray(a), memoryview(b)]) == secret


def test_module_is_pure():
    src = open(shamir.__file__, encoding="utf-8").read()
    for forbidden in ("open(", "subprocess", "import sys", "print("):
        assert forbidden not in src


# ---------------------------------------------------------------- properties

@settings(max_examples=150, deadline=None)
@given(secret=st.binary(min_size=1, max_size=40), threshold=st.integers(2, 6),
       extra=st.integers(0, 4), data=st.data())
def test_property_any_threshold_subset_recovers(secret, threshold, extra, data):
    parts = threshold + extra
    shares = split(secret, parts, threshold)
    assert all(len(s) == len(secret) + 1 for s in shares)
    assert [s[-1] for s in shares] == list(range(1, parts + 1))
    idx = data.draw(st.lists(st.integers(0, parts - 1), min_size=threshold, max_size=parts,
                             unique=True))
    assert combine([shares[i] for i in idx]) == secret


@settings(max_examples=150, deadline=None)
@given(seed=st.binary(min_size=8, max_size=8), secret=st.binary(min_size=1, max_size=16),
       threshold=st.integers(2, 5))
def test_property_deterministic_rng_gives_deterministic_shares(seed, secret, threshold):
    def make_rng():
        r = random.Random(seed)
        return lambda n: bytes(r.randrange(256) for _ in range(n))

    assert split(secret, threshold, threshold, rng=make_rng()) == \
        split(secret, threshold, threshold, rng=make_rng())


@settings(max_examples=200, deadline=None)
@given(a=st.integers(0, 255), b=st.integers(0, 255), c=st.integers(0, 255))
def test_property_field_axioms(a, b, c):
    assert mult(a, b) == mult(b, a)
    assert mult(a, mult(b, c)) == mult(mult(a, b), c)
    assert mult(a, add(b, c)) == add(mult(a, b), mult(a, c))
    assert mult(a, 1) == a and mult(a, 0) == 0


@settings(max_examples=100, deadline=None)
@given(secret=st.binary(min_size=1, max_size=16), threshold=st.integers(2, 5))
def test_property_zero_coefficients_give_constant_polynomial(secret, threshold):
    """The constant term is the secret byte: with an all-zero rng every share is the secret."""
    shares = split(secret, threshold, threshold, rng=lambda n: bytes(n))
    assert all(s[:-1] == secret for s in shares)


# ---------------------------------------------------------------- interop with real sops

def _age_encs(text: str) -> list[str]:
    """The age ``enc`` values of a sops YAML file, in key-group order."""
    import yaml

    md = yaml.safe_load(text)["sops"]
    return [entry["enc"] for group in md["key_groups"] for entry in group["age"]]


def _unwrap(enc: str, idents) -> bytes:
    import pyrage

    return pyrage.decrypt(enc.encode(), idents)


def test_combine_shares_written_by_real_sops(sops_bin, base_env, tmp_path):
    """sops splits the data key across 3 groups (threshold 2); we unwrap and combine them."""
    import pyrage

    from sops_enclave.cipher import ValueCipher

    idents = [pyrage.x25519.Identity.generate() for _ in range(3)]
    (tmp_path / ".sops.yaml").write_text(
        "creation_rules:\n  - shamir_threshold: 2\n    key_groups:\n" +
        "".join(f"      - age: ['{i.to_public()}']\n" for i in idents))
    (tmp_path / "s.yaml").write_text("a: secret\n")
    env = dict(base_env, SOPS_AGE_KEY="\n".join(str(i) for i in idents))
    out = subprocess.run([sops_bin, "encrypt", "s.yaml"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    encs = _age_encs(out.stdout)
    assert len(encs) == 3
    shares = [_unwrap(enc, idents) for enc in encs]
    for i, share in enumerate(shares):
        assert len(share) == 33 and share[-1] == i + 1  # sops >= 3.10: x = group index + 1
    value = re.search(r"^a: (ENC\[.*\])$", out.stdout, re.M).group(1)
    keys = {combine(list(pair)) for pair in itertools.combinations(shares, 2)}
    assert len(keys) == 1
    key = keys.pop()
    assert len(key) == 32
    assert ValueCipher(key).decrypt(value, b"a:") == "secret"
    assert combine(shares) == key
    assert combine([shares[0], shares[1][:-1] + b"\x09"]) != key  # wrong x, wrong key


def test_real_sops_decrypts_when_we_split(sops_bin, base_env, tmp_path):
    """Replace sops' shares by ours (same data key) and sops still decrypts the file."""
    import pyrage

    idents = [pyrage.x25519.Identity.generate() for _ in range(2)]
    (tmp_path / ".sops.yaml").write_text(
        "creation_rules:\n  - key_groups:\n" +
        "".join(f"      - age: ['{i.to_public()}']\n" for i in idents))
    (tmp_path / "s.yaml").write_text("a: secret\n")
    env = dict(base_env, SOPS_AGE_KEY="\n".join(str(i) for i in idents))
    out = subprocess.run([sops_bin, "encrypt", "s.yaml"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    encs = _age_encs(text)
    key = combine([_unwrap(e, idents) for e in encs])
    ours = split(key, 2, 2)
    indent = " " * 16
    for enc, ident, share in zip(encs, idents, ours):
        new = pyrage.encrypt(share, [ident.to_public()], armored=True).decode()
        old_block = "\n".join(indent + ln for ln in enc.rstrip("\n").split("\n"))
        new_block = "\n".join(indent + ln for ln in new.rstrip("\n").split("\n"))
        assert text.count(old_block) == 1
        text = text.replace(old_block, new_block)
    (tmp_path / "s.enc.yaml").write_text(text)
    dec = subprocess.run([sops_bin, "decrypt", "s.enc.yaml"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert dec.returncode == 0, dec.stderr
    assert dec.stdout == "a: secret\n"
