"""Dev stand-ins for running without Nitro hardware (DESIGN.md section 8).

Nothing in production code imports this package. Its attestation documents are signed
by a per-user dev CA that verification never trusts unless told to (``--allow-dev``)::

    from sops_enclave.devtools.nsm_soft import SoftNSM
    nsm = SoftNSM()
    doc = nsm.attest(user_data=b"...")
"""

from __future__ import annotations
