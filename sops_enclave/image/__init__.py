"""The enclave image: EIF parsing and measurement, and the KMS key policy that pins it.

* :mod:`.eif` parses an Enclave Image File and computes PCR0/1/2/8 exactly as Nitro does
  (``SHA-384(48 zero bytes || SHA-384(content))``), pure, bytes in.
* :mod:`.policy` builds the KMS key policy that releases data keys only to an attested
  enclave with that measurement.
* :mod:`.cli` adds the ``measure`` and ``policy`` subcommands (``register(subparsers)``).
"""

from __future__ import annotations

from .eif import EIFError, EIFMeasurement, EIFSection, describe_eif, parse_eif
from .policy import PolicyError, key_policy, policy_for_dev

__all__ = ["EIFError", "EIFMeasurement", "EIFSection", "describe_eif", "parse_eif",
           "PolicyError", "key_policy", "policy_for_dev"]
