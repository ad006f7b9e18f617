"""The enclave's KMS ``Recipient`` keys: the next request's RSA key is made while the enclave
waits, and every request gets its own (never one already handed to another request)."""

from __future__ import annotations

import socket
import threading
from contextlib import contextmanager
from itertools import count

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sops_enclave.enclave import app, executor
from sops_enclave.rpc import recv_frame, send_frame


def _spki(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def test_each_key_is_handed_out_once():
    made = count()
    keys = app.RecipientKeys(make=lambda: next(made))
    keys.prepare()
    keys.prepare()  # one under way already: no second one
    assert keys.take() == 0
    assert keys.take() == 1  # nothing prepared: a new one, never the one handed out
    keys.prepare()
    assert keys.take() == 2
    assert next(made) == 3  # nothing was made that was not handed out


def test_a_failed_background_key_is_made_again():
    calls = []

    def make():
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            raise MemoryError("no key")
        return "fresh"

    keys = app.RecipientKeys(make=make)
    keys.prepare()
    assert keys.take() == "fresh"
    assert calls == ["recipient-key", threading.current_thread().name]


def test_the_default_key_is_a_fresh_rsa_2048_key():
    keys = app.RecipientKeys()
    keys.prepare()
    a, b = keys.take(), keys.take()
    assert isinstance(a, rsa.RSAPrivateKey) and a.key_size == 2048
    assert _spki(a) != _spki(b)


class _NSM:
    def __init__(self):
        self.public_keys = []

    def attest(self, public_key=None, user_data=None, nonce=None):
        self.public_keys.append(public_key)
        return b"doc"

    def get_random(self, n):
        return bytes(n)


def test_enclave_keys_attest_the_key_they_are_given():
    key = executor.new_recipient_key()
    nsm = _NSM()
    keys = executor.EnclaveKeys(lambda arn: None, nsm, recipient_key=key)
    assert nsm.public_keys == [_spki(key)] and keys.kms_attestation == b"doc"
    executor.EnclaveKeys(lambda arn: None, nsm)  # none given: a new one
    assert len(nsm.public_keys) == 2 and nsm.public_keys[1] != _spki(key)


@contextmanager
def _serving(tmp_path):
    """The serve loop on a unix socket in a thread; yields ``ask(request) -> answer``."""
    path = str(tmp_path / "e.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)

    def serve() -> None:
        try:
            app.serve(srv, _NSM(), True)
        except OSError:  # the listening socket was closed below
            pass

    def ask(req):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(path)
            send_frame(c, req)
            return recv_frame(c)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield ask
    finally:
        srv.shutdown(socket.SHUT_RDWR)
        srv.close()
        t.join(10)


def test_two_requests_get_two_recipient_keys(monkeypatch, tmp_path):
    """Through the serve loop: each request's run_pack gets its own key."""
    got = []

    def fake_run_pack(req, nsm, factory, *, dev, age_identities=(), policy=None,
                      recipient_key=None):
        got.append(recipient_key)
        return {"ok": True, "outputs": []}

    monkeypatch.setattr(executor, "run_pack", fake_run_pack)
    with _serving(tmp_path) as ask:
        for _ in range(3):
            assert ask({"type": "pack", "version": 1})["ok"] is True
    assert len(got) == 3 and all(isinstance(k, rsa.RSAPrivateKey) for k in got)
    assert len({_spki(k) for k in got}) == 3


def test_a_refused_request_leaves_the_prepared_key_unused(monkeypatch, tmp_path):
    """A request refused before run_pack never sees a key: the next request gets the prepared
    one, and the request after that another."""
    made = count()
    monkeypatch.setattr(app, "_new_recipient_key", lambda: next(made))
    got = []
    monkeypatch.setattr(executor, "run_pack",
                        lambda req, nsm, factory, **kw: got.append(kw["recipient_key"])
                        or {"ok": True, "outputs": []})
    with _serving(tmp_path) as ask:
        answers = [ask(req)["ok"] for req in ({"type": "nonsense"}, {"type": "pack", "version": 1},
                                               {"type": "pack", "version": 1})]
    assert answers == [False, True, True]
    assert got == [0, 1]


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
