"""sops-enclave: a drop-in for the ``sops`` command, plus enclave-backed packing with receipts.

The stable library surface is :mod:`sops_enclave.api`.
"""

__version__ = "0.1.0"

#: The sops format version written into the metadata of files this tool creates.
SOPS_FORMAT_VERSION = "3.11.0"
