"""DEV STAND-IN: the dev enclave, i.e. the enclave program (:mod:`sops_enclave.enclave.app`)
run as a local process on a unix socket with the software NSM, whose PCR0-2 measure the
enclave bundle together with the enclave policy it was started with::

    python -m sops_enclave.devtools.dev_enclave --unix /tmp/enclave.sock --dev \\
        [--enclave-policy FILE] [--dev-ca-dir DIR]

``sops-enclave exec --enclave dev`` starts it. It lives here, not in the enclave program, so
that the image never contains (or imports) the software NSM.
"""

from __future__ import annotations

from sops_enclave.enclave import app

from .nsm_soft import SoftNSM, measure_bundle, policy_bundle

__all__ = ["main"]


def _soft_nsm(ca_dir: str | None, policy: bytes | None) -> SoftNSM:
    return SoftNSM(ca_dir=ca_dir, pcrs=measure_bundle(policy_bundle(policy)))


def main(argv: list[str] | None = None) -> int:
    return app.main(argv, dev_nsm=_soft_nsm)


if __name__ == "__main__":
    raise SystemExit(main())
