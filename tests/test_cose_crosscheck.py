"""An independent cross-check of the COSE_Sign1 handling: pycose (a maintained COSE library)
and this project's verifier must agree on every attestation document's ES384 signature, for
the genuine Nitro documents and for what the software NSM makes."""

from __future__ import annotations

import cbor2
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from sops_enclave.receipt.attestation import parse_attestation
from sops_enclave.receipt.cose import verify_es384

pycose = pytest.importorskip("pycose", reason="pycose is in the test extra")


def _pycose_verdict(raw: bytes) -> bool:
    from pycose.keys import EC2Key
    from pycose.keys.curves import P384
    from pycose.messages import Sign1Message

    obj = cbor2.loads(raw)
    arr = list(obj.value if isinstance(obj, cbor2.CBORTag) else obj)
    arr[1] = dict(arr[1])  # cbor2 may hand back an immutable map; pycose wants a dict
    msg = Sign1Message.from_cose_obj(arr, True)
    leaf = x509.load_der_x509_certificate(cbor2.loads(msg.payload)["certificate"])
    pub = leaf.public_key().public_numbers()
    msg.key = EC2Key(crv=P384, x=pub.x.to_bytes(48, "big"), y=pub.y.to_bytes(48, "big"))
    return bool(msg.verify_signature())


def _our_verdict(raw: bytes) -> bool:
    doc = parse_attestation(raw)
    leaf = x509.load_der_x509_certificate(doc.certificate)
    try:
        verify_es384(leaf.public_key(), doc.protected, doc.payload, doc.signature)
    except InvalidSignature:
        return False
    return True


def test_genuine_documents_agree_with_pycose(vectors):
    docs = sorted((vectors / "nitro").glob("*.cose"))
    assert len(docs) >= 11
    verdicts = {d.name: (_pycose_verdict(d.read_bytes()), _our_verdict(d.read_bytes()))
                for d in docs}
    assert all(a == b for a, b in verdicts.values()), verdicts
    bad = [n for n, (a, _) in verdicts.items() if not a]
    assert bad == ["eternis_2024-07-23_BAD_COSE_SIGNATURE.cose"]


def test_soft_nsm_documents_agree_with_pycose(tmp_path):
    from sops_enclave.devtools.nsm_soft import SoftNSM

    raw = SoftNSM(tmp_path / "ca").attest(public_key=b"\x01" * 91, user_data=b"\x02" * 32,
                                          nonce=b"\x03" * 32)
    assert _pycose_verdict(raw) and _our_verdict(raw)
    # One bit of the signature flipped: both refuse.
    obj = cbor2.loads(raw)
    arr = list(obj.value)
    sig = bytearray(arr[3])
    sig[10] ^= 1
    arr[3] = bytes(sig)
    forged = cbor2.dumps(cbor2.CBORTag(18, arr))
    assert not _pycose_verdict(forged) and not _our_verdict(forged)
