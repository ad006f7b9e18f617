"""Shamir's secret sharing over GF(2^8), share-compatible with sops (which forked Vault's).

* The field is GF(2^8) modulo the AES polynomial x^8+x^4+x^3+x+1 (0x11B); ``mult(3, 7) == 9``.
* Every byte of the secret is split on its own with a fresh random polynomial of degree
  ``threshold - 1`` whose constant term is that byte.
* A share is ``len(secret) + 1`` bytes: the y-values, then the x-coordinate as the **last**
  byte. Share ``i`` (0-based) has x = i + 1, as sops >= 3.10 writes them; older sops used a
  random permutation of 1..255. :func:`combine` reads x from the share, so both decode.
* :func:`combine` is Lagrange interpolation at x = 0.

Pure module: no I/O, randomness only through the ``rng`` argument of :func:`split`.
Errors are :class:`ValueError` with the texts sops' ``shamir`` package uses.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

__all__ = ["split", "combine", "add", "mult", "div", "inverse", "SHARE_OVERHEAD"]

SHARE_OVERHEAD = 1  # bytes a share has beyond the secret (the x-coordinate)

# log/exp tables for the multiplicative group of GF(2^8); 3 (x + 1) generates it.
_EXP = [0] * 510
_LOG = [0] * 256


def _init_tables() -> None:
    v = 1
    for i in range(255):
        _EXP[i] = v
        _LOG[v] = i
        # v * 3 = v * x + v, reduced modulo 0x11B
        v2 = (v << 1) ^ (0x11B if v & 0x80 else 0)
        v = v2 ^ v
    for i in range(255, 510):
        _EXP[i] = _EXP[i - 255]


_init_tables()


def add(a: int, b: int) -> int:
    """Addition (and subtraction) in GF(2^8): XOR."""
    return a ^ b


def mult(a: int, b: int) -> int:
    """Multiplication in GF(2^8) modulo 0x11B."""
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def inverse(a: int) -> int:
    """Multiplicative inverse in GF(2^8); like sops (a^254), the inverse of 0 is 0."""
    if a == 0:
        return 0
    return _EXP[255 - _LOG[a]]


def div(a: int, b: int) -> int:
    """a / b in GF(2^8). Dividing by zero raises :class:`ZeroDivisionError`."""
    if b == 0:
        raise ZeroDivisionError("divide by zero")
    if a == 0:
        return 0
    return _EXP[_LOG[a] + 255 - _LOG[b]]


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    """Horner's method; coefficients[0] is the constant term."""
    if x == 0:
        return coefficients[0]
    out = coefficients[-1]
    for c in reversed(coefficients[:-1]):
        out = mult(out, x) ^ c
    return out


def split(secret: bytes, parts: int, threshold: int, *,
          rng: Callable[[int], bytes] = os.urandom) -> list[bytes]:
    """``parts`` shares of ``secret``, any ``threshold`` of which rebuild it.

    ``rng(n)`` must return ``n`` random bytes; it is called once per secret byte for the
    ``threshold - 1`` non-constant coefficients (the order sops reads ``crypto/rand``).
    Validation follows sops: parts >= threshold, parts <= 255, 2 <= threshold <= 255,
    a non-empty secret.
    """
    if parts < threshold:
        raise ValueError("parts cannot be less than threshold")
    if parts > 255:
        raise ValueError("parts cannot exceed 255")
    if threshold < 2:
        raise ValueError("threshold must be at least 2")
    if threshold > 255:
        raise ValueError("threshold cannot exceed 255")
    secret = bytes(secret)
    if not secret:
        raise ValueError("cannot split an empty secret")
    n = len(secret)
    out = [bytearray(n + 1) for _ in range(parts)]
    for i in range(parts):
        out[i][n] = i + 1
    degree = threshold - 1
    for idx, val in enumerate(secret):
        coeffs = rng(degree)
        if len(coeffs) != degree:
            raise ValueError("failed to generate polynomial: short read from the random source")
        poly = [val, *coeffs]
        for i in range(parts):
            out[i][idx] = _evaluate(poly, i + 1)
    return [bytes(s) for s in out]


def combine(shares: Sequence[bytes]) -> bytes:
    """The secret rebuilt from ``shares`` (x-coordinate in each share's last byte).

    With fewer shares than the threshold used for :func:`split` the result is a wrong secret,
    not an error: Shamir shares carry no integrity check.
    """
    if len(shares) < 2:
        raise ValueError("less than two parts cannot be used to reconstruct the secret")
    shares = [bytes(s) for s in shares]
    first_len = len(shares[0])
    if first_len < 2:
        raise ValueError("parts must be at least two bytes")
    for s in shares[1:]:
        if len(s) != first_len:
            raise ValueError("all parts must be the same length")
    xs: list[int] = []
    seen: set[int] = set()
    for s in shares:
        x = s[first_len - 1]
        if x in seen:
            raise ValueError("duplicate part detected")
        seen.add(x)
        xs.append(x)
    # Lagrange basis polynomials evaluated at 0: l_i(0) = prod_{j != i} x_j / (x_i - x_j).
    basis: list[int] = []
    for i, xi in enumerate(xs):
        b = 1
        for j, xj in enumerate(xs):
            if i != j:
                b = mult(b, div(xj, xi ^ xj))
        basis.append(b)
    secret = bytearray(first_len - 1)
    for idx in range(first_len - 1):
        acc = 0
        for s, b in zip(shares, basis):
            acc ^= mult(s[idx], b)
        secret[idx] = acc
    return bytes(secret)
