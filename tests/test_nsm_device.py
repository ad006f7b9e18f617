"""The Nitro NSM client (``enclave/nsm.py``) against a fake ``/dev/nsm``, and the in-enclave
KMS forwarder (``enclave/kms_forwarder.py``) against TCP and unix-socket stand-ins for vsock.

The fake device does what the kernel driver does with ``NSM_IOCTL_RAW``: it reads the 32-byte
``struct nsm_raw`` from the buffer it is given (two ``{u64 addr, u64 len}`` iovecs), reads the
CBOR request at ``request.addr``, writes a CBOR answer at ``response.addr`` truncated to
``response.len``, and stores the written length back into ``response.len``. No Nitro hardware
is involved: these tests check the encoding against the documented format (the uapi header
and the Rust nsm-api types), not a real device.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import inspect
import json
import os
import socket
import struct
import sys
import threading
import time

import cbor2
import pytest

from sops_enclave.devtools.nsm_soft import SoftNSM, measure_bundle
from sops_enclave.devtools.nsm_soft import PCRDescription as SoftPCRDescription
from sops_enclave.enclave import kms_forwarder as kf
from sops_enclave.enclave import nsm as nsm_mod
from sops_enclave.enclave.nsm import (NSM_IOCTL_RAW, NitroNSM, NSMError, NsmRaw,
                                      PCRDescription, decode_response, encode_request)
from sops_enclave.errors import SopsError
from sops_enclave.receipt.attestation import verify_attestation

# ---------------------------------------------------------------------------------------------
# the fake device


class FakeNSMDevice:
    """``ioctl(fd, request, buffer)`` with the NSM driver's semantics.

    ``handler(request_obj, raw_request) -> bytes`` makes the raw CBOR answer; the default
    one implements the NSM operations over a small PCR bank.
    """

    def __init__(self, handler=None, *, random_block: int = 256):
        self.handler = handler or self.default_handler
        self.raw_requests: list[bytes] = []
        self.requests: list[object] = []
        self.fds: list[int] = []
        self.random_block = random_block
        self.random_counter = 0
        self.pcrs = {i: bytes(48) for i in range(32)}
        self.pcrs[0] = hashlib.sha384(b"image").digest()
        self.locked = set(range(16))
        self.lock = threading.Lock()

    def __call__(self, fd, request, buf):
        assert request == 0xC0200A00
        mv = memoryview(buf).cast("B")
        assert mv.nbytes == 32                      # struct nsm_raw
        req_addr, req_len, resp_addr, resp_cap = struct.unpack_from("=QQQQ", mv)
        if req_len > 0x1000:                        # the driver's EMSGSIZE check
            raise OSError(errno.EMSGSIZE, "Message too long")
        raw = ctypes.string_at(req_addr, req_len)
        with self.lock:
            self.fds.append(fd)
            self.raw_requests.append(raw)
            obj = cbor2.loads(raw)
            self.requests.append(obj)
            answer = self.handler(obj, raw)
        n = min(resp_cap, len(answer))               # the driver truncates silently
        ctypes.memmove(resp_addr, answer, n)
        struct.pack_into("=Q", mv, 24, n)
        return 0

    def next_random(self) -> bytes:
        block = bytes((self.random_counter + i) % 256 for i in range(self.random_block))
        self.random_counter += self.random_block
        return block

    def default_handler(self, obj, raw) -> bytes:
        if obj == "GetRandom":
            return cbor2.dumps({"GetRandom": {"random": self.next_random()}})
        if obj == "DescribeNSM":
            return cbor2.dumps({"DescribeNSM": {
                "version_major": 1, "version_minor": 0, "version_patch": 0,
                "module_id": "i-0123456789abcdef0-enc0123456789abcdef", "max_pcrs": 32,
                "locked_pcrs": sorted(self.locked), "digest": "SHA384"}})
        (name, body), = obj.items()
        if name == "Attestation":
            return cbor2.dumps({"Attestation": {"document": b"DOC" + cbor2.dumps(body)}})
        if name in ("DescribePCR", "ExtendPCR", "LockPCR") and body["index"] >= 32:
            return cbor2.dumps({"Error": "InvalidIndex"})
        if name == "DescribePCR":
            i = body["index"]
            return cbor2.dumps({"DescribePCR": {"lock": i in self.locked,
                                                "data": self.pcrs[i]}})
        if name == "ExtendPCR":
            i = body["index"]
            if i in self.locked:
                return cbor2.dumps({"Error": "ReadOnlyIndex"})
            self.pcrs[i] = hashlib.sha384(self.pcrs[i] + body["data"]).digest()
            return cbor2.dumps({"ExtendPCR": {"data": self.pcrs[i]}})
        if name == "LockPCR":
            self.locked.add(body["index"])
            return cbor2.dumps("LockPCR")
        if name == "LockPCRs":
            self.locked.update(range(body["range"]))
            return cbor2.dumps("LockPCRs")
        return cbor2.dumps({"Error": "InvalidOperation"})


@pytest.fixture
def devnode(tmp_path):
    p = tmp_path / "nsm"
    p.write_bytes(b"")
    return str(p)


@pytest.fixture
def device():
    return FakeNSMDevice()


@pytest.fixture
def nsm(devnode, device):
    n = NitroNSM(devnode, ioctl=device)
    yield n
    n.close()


def answering(answer: bytes):
    return FakeNSMDevice(lambda obj, raw: answer)


# ---------------------------------------------------------------------------------------------
# the ioctl ABI


def test_ioctl_number_is_iowr_0x0a_0_of_two_iovecs():
    # _IOWR(0x0A, 0, struct nsm_raw): dir READ|WRITE (3) << 30 | size << 16 | type << 8 | nr
    assert ctypes.sizeof(NsmRaw) == 32
    assert NSM_IOCTL_RAW == (3 << 30) | (32 << 16) | (0x0A << 8) | 0 == 0xC0200A00
    assert nsm_mod.iowr(0x0A, 0, 32) == 0xC0200A00
    assert [NsmRaw.request.offset, NsmRaw.response.offset] == [0, 16]
    assert nsm_mod.NSM_REQUEST_MAX_SIZE == 0x1000 and nsm_mod.NSM_RESPONSE_MAX_SIZE == 0x3000
    assert nsm_mod.RESPONSE_BUFFER_SIZE == 16 * 1024 > nsm_mod.NSM_RESPONSE_MAX_SIZE


def test_the_real_ioctl_reaches_the_kernel_and_a_wrong_device_is_a_clear_error():
    # fcntl.ioctl accepts the request number and the 32-byte struct; /dev/null answers ENOTTY.
    with NitroNSM("/dev/null") as n:
        with pytest.raises(NSMError, match="rejected NSM_IOCTL_RAW.*ENOTTY"):
            n.get_random(8)


def test_missing_device_says_this_is_not_an_enclave(tmp_path):
    with pytest.raises(NSMError, match="does not exist: this is not a Nitro Enclave") as e:
        NitroNSM(str(tmp_path / "nsm"))
    assert isinstance(e.value, SopsError) and "--enclave dev" in e.value.hint


# ---------------------------------------------------------------------------------------------
# request encoding, byte for byte


def test_unit_requests_are_bare_text_as_the_kernel_driver_sends_them():
    # drivers/misc/nsm.c fill_req_get_random: 0x69 "GetRandom"
    assert encode_request("GetRandom") == bytes([0x60 + 9]) + b"GetRandom"
    assert encode_request("DescribeNSM") == bytes([0x60 + 11]) + b"DescribeNSM"


def test_attestation_request_has_three_keys_in_serde_order_and_null_for_absent(nsm, device):
    nsm.attest()
    assert device.raw_requests[-1] == (
        b"\xa1" + b"\x6bAttestation" + b"\xa3"
        + b"\x69user_data" + b"\xf6" + b"\x65nonce" + b"\xf6" + b"\x6apublic_key" + b"\xf6")


def test_describe_pcr_request_bytes(nsm, device):
    nsm.describe_pcr(0)
    assert device.raw_requests[-1] == b"\xa1\x6bDescribePCR\xa1\x65index\x00"
    with pytest.raises(NSMError):               # the device refuses it (InvalidIndex),
        nsm.describe_pcr(300)                  # but it is sent as the Rust u16 it is
    assert device.raw_requests[-1] == b"\xa1\x6bDescribePCR\xa1\x65index\x19\x01\x2c"


@pytest.mark.parametrize("fields", [
    dict(public_key=b"\x30\x82" + bytes(range(256)) * 3, user_data=bytes(32), nonce=b"n" * 40),
    dict(user_data=b"\x00\xff" * 512),
    dict(nonce=b""),                           # present but empty: a 0-byte bstr, not null
    dict(public_key=bytearray(b"pk"), user_data=memoryview(b"ud")),
])
def test_attest_passes_user_data_nonce_public_key_exactly(nsm, device, fields):
    doc = nsm.attest(**fields)
    body = device.requests[-1]["Attestation"]
    assert list(body) == ["user_data", "nonce", "public_key"]
    for k in ("user_data", "nonce", "public_key"):
        expect = fields.get(k)
        assert body[k] == (None if expect is None else bytes(expect))
        assert body[k] is None or type(body[k]) is bytes   # CBOR byte strings, not text/arrays
    assert doc == b"DOC" + cbor2.dumps(body)              # the document, exactly as answered


def test_attest_refuses_oversized_or_mistyped_fields_before_the_device(nsm, device):
    with pytest.raises(ValueError, match="at most 1024"):
        nsm.attest(user_data=bytes(1025))
    with pytest.raises(TypeError):
        nsm.attest(nonce="text")  # type: ignore[arg-type]
    assert device.requests == []


def test_request_over_4_kib_is_input_too_large_without_an_ioctl(nsm, device):
    with pytest.raises(NSMError) as e:
        nsm.extend_pcr(16, bytes(5000))
    assert e.value.code == "InputTooLarge" and device.requests == []


# ---------------------------------------------------------------------------------------------
# responses


def test_describe_pcr_has_the_soft_nsm_shape(nsm, device):
    d = nsm.describe_pcr(0)
    assert isinstance(d, PCRDescription) and d == (True, device.pcrs[0])
    assert d._fields == SoftPCRDescription._fields == ("lock", "data")
    assert nsm.describe_pcr(16) == PCRDescription(False, bytes(48))


def test_extend_lock_and_describe_nsm(nsm, device):
    new = nsm.extend_pcr(16, b"receipt")
    assert new == hashlib.sha384(bytes(48) + b"receipt").digest() == device.pcrs[16]
    nsm.lock_pcr(16)
    assert nsm.describe_pcr(16).lock
    with pytest.raises(NSMError, match="ReadOnlyIndex") as e:
        nsm.extend_pcr(16, b"again")
    assert e.value.code == "ReadOnlyIndex"
    nsm.lock_pcrs(20)
    assert device.requests[-1] == {"LockPCRs": {"range": 20}}
    info = nsm.describe_nsm()
    assert info["max_pcrs"] == 32 and info["digest"] == "SHA384"


@pytest.mark.parametrize("code", nsm_mod.ERROR_CODES)
def test_error_responses_raise_nsm_error_with_the_code(devnode, code):
    with NitroNSM(devnode, ioctl=answering(cbor2.dumps({"Error": code}))) as n:
        with pytest.raises(NSMError, match=code) as e:
            n.attest(user_data=b"x")
    assert e.value.code == code and isinstance(e.value, SopsError)


def test_index_out_of_range_is_the_device_s_invalid_index(nsm):
    with pytest.raises(NSMError) as e:
        nsm.describe_pcr(40)
    assert e.value.code == "InvalidIndex"
    with pytest.raises(ValueError):
        nsm.describe_pcr(70000)                   # not even a u16: refused locally


GOOD = cbor2.dumps({"Attestation": {"document": b"D" * 4500}})


@pytest.mark.parametrize("answer,code", [
    (GOOD[: len(GOOD) // 2], "InvalidResponse"),                        # truncated
    (GOOD + b"\x00", "InvalidResponse"),                                # trailing bytes
    (b"", "InvalidResponse"),                                           # nothing
    (b"\xff\xfe", "InvalidResponse"),                                   # not CBOR
    (cbor2.dumps({"Error": "NoSuchCode"}), "InvalidResponse"),
    (cbor2.dumps(["Attestation", {}]), "InvalidResponse"),              # not a map
    (cbor2.dumps({"Attestation": {}, "x": 1}), "InvalidResponse"),      # two variants
    (cbor2.dumps({"GetRandom": {"random": b"r"}}), "InvalidResponse"),  # wrong variant
    (cbor2.dumps({"Attestation": {"document": "text"}}), "InvalidResponse"),
    (cbor2.dumps({"Attestation": {"document": b""}}), "InvalidResponse"),
    (cbor2.dumps({"Attestation": {"document": b"D" * 20000}}), "BufferTooSmall"),  # cut at 16 KiB
])
def test_malformed_truncated_and_oversized_responses(devnode, answer, code):
    with NitroNSM(devnode, ioctl=answering(answer)) as n:
        with pytest.raises(NSMError) as e:
            n.attest(nonce=b"n")
    assert e.value.code == code


def test_a_driver_that_reports_more_than_the_buffer_is_refused(devnode):
    def lying(fd, request, buf):
        mv = memoryview(buf).cast("B")
        struct.pack_into("=Q", mv, 24, nsm_mod.RESPONSE_BUFFER_SIZE + 1)
    with NitroNSM(devnode, ioctl=lying) as n:
        with pytest.raises(NSMError, match="reported a 16385-byte response"):
            n.get_random(1)


def test_bad_pcr_value_size_is_refused(devnode):
    answer = cbor2.dumps({"DescribePCR": {"lock": True, "data": b"short"}})
    with NitroNSM(devnode, ioctl=answering(answer)) as n:
        with pytest.raises(NSMError, match="5-byte PCR"):
            n.describe_pcr(0)


def test_decode_response_of_unit_variants():
    assert decode_response(cbor2.dumps("LockPCR")) == ("LockPCR", None)


@pytest.mark.parametrize("err,code,text", [
    (errno.EMSGSIZE, "InputTooLarge", "EMSGSIZE"),
    (errno.EPERM, "InternalError", "not permitted"),
    (errno.ETIMEDOUT, "InternalError", "ETIMEDOUT"),
])
def test_ioctl_errors_become_nsm_errors(devnode, err, code, text):
    def failing(fd, request, buf):
        raise OSError(err, os.strerror(err))
    with NitroNSM(devnode, ioctl=failing) as n:
        with pytest.raises(NSMError, match=text) as e:
            n.attest()
    assert e.value.code == code
    if err == errno.EPERM:
        assert "CAP_SYS_ADMIN" in e.value.hint


# ---------------------------------------------------------------------------------------------
# GetRandom


def test_get_random_loops_until_n_and_never_hands_out_a_byte_twice(devnode):
    dev = FakeNSMDevice(random_block=7)
    with NitroNSM(devnode, ioctl=dev) as n:
        a = n.get_random(50)                     # ceil(50/7) = 8 requests
        assert len(dev.requests) == 8
        b = n.get_random(5)                      # 6 bytes were left over: no request
        assert len(dev.requests) == 8
        c = n.get_random(3)                      # 1 left + a new block
        assert len(dev.requests) == 9
        assert a + b + c == bytes(i % 256 for i in range(58))
        assert n.get_random(0) == b"" and len(dev.requests) == 9
        with pytest.raises(ValueError):
            n.get_random(-1)


def test_get_random_from_many_threads_gets_disjoint_bytes(devnode):
    dev = FakeNSMDevice(random_block=256)
    dev.next_random = lambda: os.urandom(256)  # type: ignore[method-assign]
    with NitroNSM(devnode, ioctl=dev) as n:
        out: list[bytes] = []
        lock = threading.Lock()

        def work():
            for _ in range(50):
                r = n.get_random(12)
                with lock:
                    out.append(r)
        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(out) == 400 and all(len(r) == 12 for r in out)
    assert len(set(out)) == 400                  # no 12-byte value was given out twice
    assert len(dev.requests) <= 400 * 12 // 256 + 8


def test_empty_get_random_answer_is_an_error_not_a_loop(devnode):
    with NitroNSM(devnode, ioctl=answering(cbor2.dumps({"GetRandom": {"random": b""}}))) as n:
        with pytest.raises(NSMError, match="no random bytes"):
            n.get_random(4)


def test_closed_device(devnode, device):
    n = NitroNSM(devnode, ioctl=device)
    fd = n._fd
    n.close()
    n.close()
    with pytest.raises(OSError):
        os.fstat(fd)
    with pytest.raises(NSMError, match="closed"):
        n.describe_pcr(0)


# ---------------------------------------------------------------------------------------------
# a drop-in for the software NSM


def test_same_interface_as_the_software_nsm():
    for name in ("attest", "get_random", "describe_pcr", "extend_pcr", "lock_pcr"):
        soft = inspect.signature(getattr(SoftNSM, name))
        nitro = inspect.signature(getattr(NitroNSM, name))
        assert list(soft.parameters) == list(nitro.parameters), name
    assert NitroNSM.is_dev is False and SoftNSM.is_dev is True


def test_documents_from_a_device_backed_by_the_software_nsm_verify(devnode, tmp_path):
    """NitroNSM over a fake device whose attestations come from SoftNSM: the bytes the device
    returns reach the verifier unchanged, with the fields NitroNSM asked for."""
    soft = SoftNSM(tmp_path / "ca", pcrs=measure_bundle({"app.py": b"x"}))

    def handler(obj, raw):
        (name, body), = obj.items()
        assert name == "Attestation"
        return cbor2.dumps({"Attestation": {"document": soft.attest(**body)}})

    with NitroNSM(devnode, ioctl=FakeNSMDevice(handler)) as n:
        doc = n.attest(public_key=b"spki", user_data=hashlib.sha256(b"pae").digest(),
                       nonce=b"nonce")
    parsed = verify_attestation(doc, root_fingerprint=soft.root_fingerprint)
    assert (parsed.public_key, parsed.user_data, parsed.nonce) == (
        b"spki", hashlib.sha256(b"pae").digest(), b"nonce")


# ---------------------------------------------------------------------------------------------
# the in-enclave KMS forwarder, with TCP and unix-socket stand-ins for vsock


def _serve(listener: socket.socket, handle) -> threading.Thread:
    def loop():
        while True:
            try:
                c, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(c,), daemon=True).start()
    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


def _echo(c: socket.socket) -> None:
    with c:
        while True:
            d = c.recv(65536)
            if not d:
                c.shutdown(socket.SHUT_WR)
                return
            c.sendall(d)


def _digest_after_eof(c: socket.socket) -> None:
    """Read until the client half-closes, then answer with the SHA-256 and close."""
    with c:
        h = hashlib.sha256()
        while True:
            d = c.recv(65536)
            if not d:
                break
            h.update(d)
        c.sendall(h.digest())


def _recv_all(s: socket.socket) -> bytes:
    out = bytearray()
    while True:
        d = s.recv(65536)
        if not d:
            return bytes(out)
        out += d


@pytest.fixture
def tcp_upstream():
    servers = []

    def make(handle):
        srv = socket.create_server(("127.0.0.1", 0))
        servers.append(srv)
        _serve(srv, handle)
        return srv.getsockname()[1]
    yield make
    for s in servers:
        s.close()


def test_forwarder_copies_a_large_stream_both_ways_over_tcp(tcp_upstream):
    port = tcp_upstream(_echo)
    fw = kf.Forwarder(("127.0.0.1", 0), kf.tcp_connector("127.0.0.1", port))
    host, fport = fw.start()
    try:
        payload = os.urandom(3 * 1024 * 1024 + 17)
        with socket.create_connection((host, fport), timeout=10) as c:
            sender = threading.Thread(target=lambda: (c.sendall(payload),
                                                      c.shutdown(socket.SHUT_WR)))
            sender.start()
            got = _recv_all(c)
            sender.join()
        assert got == payload
    finally:
        fw.close()


def test_forwarder_passes_half_close_over_a_unix_socket(tmp_path):
    path = str(tmp_path / "proxy.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(8)
    _serve(srv, _digest_after_eof)
    fw = kf.Forwarder(("127.0.0.1", 0), kf.unix_connector(path), max_connections=4)
    host, port = fw.start()
    try:
        def one(i: int) -> bool:
            data = os.urandom(1000 + i * 997)
            with socket.create_connection((host, port), timeout=10) as c:
                c.sendall(data)
                c.shutdown(socket.SHUT_WR)          # the upstream answers only after EOF
                return _recv_all(c) == hashlib.sha256(data).digest()
        results: list[bool] = []
        threads = [threading.Thread(target=lambda i=i: results.append(one(i)))
                   for i in range(20)]               # more clients than max_connections
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results == [True] * 20
    finally:
        fw.close()
        srv.close()


def test_unreachable_upstream_closes_the_client_connection(capsys):
    dead = socket.create_server(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()                                       # nothing listens there any more
    fw = kf.Forwarder(("127.0.0.1", 0), kf.tcp_connector("127.0.0.1", port, timeout=2))
    host, fport = fw.start()
    try:
        with socket.create_connection((host, fport), timeout=10) as c:
            t0 = time.monotonic()
            assert _recv_all(c) == b""
            assert time.monotonic() - t0 < 5
    finally:
        fw.close()
    assert "upstream connect failed" in capsys.readouterr().err


def test_routes_hostnames_and_hosts_file(tmp_path):
    routes = kf.routes_for(["eu-west-1", "us-east-1", "cn-north-1"])
    assert [(r.hostname, r.listen, r.vsock_port) for r in routes] == [
        ("kms.eu-west-1.amazonaws.com", ("127.0.0.1", 443), 8000),
        ("kms.us-east-1.amazonaws.com", ("127.0.0.2", 443), 8001),
        ("kms.cn-north-1.amazonaws.com.cn", ("127.0.0.3", 443), 8002)]
    for bad in (["eu-west-1", "eu-west-1"], [], ["evil.example.com"], ["eu-west-1/../x"]):
        with pytest.raises(ValueError):
            kf.routes_for(bad)

    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1\tlocalhost\n10.0.0.9 kms.eu-west-1.amazonaws.com # stale\n")
    entries = {r.hostname: r.listen[0] for r in routes[:2]}
    assert kf.ensure_hosts_entries(entries, str(hosts)) is True
    assert hosts.read_text() == ("127.0.0.1\tlocalhost\n"
                                 "127.0.0.1\tkms.eu-west-1.amazonaws.com\n"
                                 "127.0.0.2\tkms.us-east-1.amazonaws.com\n")
    assert kf.ensure_hosts_entries(entries, str(hosts)) is False        # idempotent
    fresh = tmp_path / "none"
    assert kf.ensure_hosts_entries(entries, str(fresh)) is True
    assert fresh.read_text().count("amazonaws.com") == 2


def _vault_policy(tmp_path, uris: list[str]):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    p = tmp_path / "enclave-policy.yaml"
    p.write_text(f'version: 1\ncommit_signers: ["r@example.com {key}"]\n'
                 f"outputs:\n  hc_vault: {json.dumps(uris)}\n")
    return p


def test_vault_routes_come_from_the_policys_https_hosts(tmp_path):
    uris = ["https://vault.example.com:8200/v1/transit/keys/a",
            "https://vault.example.com:8200/v1/team/transit/keys/b",   # same host: one route
            "http://plain.example.com:8200/v1/transit/keys/c",          # refused by the enclave
            "https://Vault2.example.com/v1/transit/keys/d"]
    routes = kf.vault_routes(uris)
    assert [(r.hostname, r.listen, r.vsock_port) for r in routes] == [
        ("vault.example.com", ("127.0.1.1", 8200), 8100),
        ("vault2.example.com", ("127.0.1.2", 443), 8101)]
    with pytest.raises(ValueError, match="IP address"):
        kf.vault_routes(["https://10.0.0.5:8200/v1/transit/keys/a"])
    # main reads them from the enclave policy (the image's by default) and maps the names.
    hosts = tmp_path / "hosts"
    policy = _vault_policy(tmp_path, ["https://vault.example.com:18443/v1/transit/keys/a"])
    rc = kf.main(["--region", "eu-west-1", "--no-loopback", "--hosts-file", str(hosts),
                  "--listen-port", "0", "--enclave-policy", str(policy), "--",
                  sys.executable, "-c", "pass"])
    assert rc == 0
    assert "127.0.1.1\tvault.example.com" in hosts.read_text()
    bad = _vault_policy(tmp_path, ["https://10.1.2.3:8200/v1/transit/keys/a"])
    assert kf.main(["--region", "eu-west-1", "--no-loopback", "--no-hosts", "--listen-port",
                    "0", "--enclave-policy", str(bad), "--", sys.executable, "-c", "pass"]) == 2


def test_bring_up_loopback_is_a_no_op_when_lo_is_up():
    try:
        assert kf.bring_up_loopback("lo") is False      # lo is up on any test machine
    except OSError as e:                                # no lo in a minimal sandbox
        pytest.skip(f"no loopback interface to query: {e}")


def test_main_sets_up_forwards_and_returns_the_child_status(tmp_path, monkeypatch):
    hosts = tmp_path / "hosts"
    rc = kf.main(["--region", "eu-west-1,us-east-2", "--no-loopback", "--hosts-file",
                  str(hosts), "--listen-port", "0", "--",
                  sys.executable, "-c", "raise SystemExit(3)"])
    assert rc == 3
    assert "127.0.0.2\tkms.us-east-2.amazonaws.com" in hosts.read_text()
    monkeypatch.delenv(kf.REGIONS_ENV, raising=False)
    assert kf.main(["--no-loopback", "--no-hosts", "--", sys.executable, "-c", "pass"]) == 2
    monkeypatch.setenv(kf.REGIONS_ENV, "ap-south-1")
    assert kf.main(["--no-loopback", "--no-hosts", "--listen-port", "0", "--",
                    sys.executable, "-c", "pass"]) == 0
