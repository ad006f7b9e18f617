"""The one interface every master key type implements.

A key type is an object with

* ``type``: its list name in the ``sops`` metadata (``age``, ``pgp``, ``kms``, ``gcp_kms``,
  ``azure_kv``, ``hc_vault``, ``hckms``), the registry key;
* ``wrap(entry, data_key, ctx) -> enc``: protect ``data_key`` (a data key or a Shamir share)
  for the key named by ``entry``; returns the text stored as ``enc``;
* ``unwrap(entry, ctx) -> data_key``: the inverse, from ``entry.enc``;
* ``from_arg(value, ctx) -> [entry, ...]``: the entries for a comma-separated command-line
  value (``--hc-vault-transit URIS``, ``SOPS_VAULT_URIS``, ...), as sops parses it.

``ctx`` is a :class:`KeyContext`: the environment the key reads its credentials from (never
``os.environ`` behind the caller's back, except where a vendor SDK's own default chain is the
documented fallback). Errors say which of two things happened:

* :class:`~sops_enclave.errors.KeyMismatch`: "not my key" -- no identity, secret key or
  permission here fits this entry; the next key service or key may;
* :class:`KeyUnavailable`: the key is meant for us but cannot be used now -- the service is
  unreachable, throttling or failing, credentials are missing or expired, the stored
  ciphertext is corrupt.

Both carry sops' error text, which the failure report prints as it is.

Vendor SDKs are imported inside ``wrap``/``unwrap``/``from_arg`` only, so a process that
never meets such a key never imports them. :mod:`sops_enclave.keys.registry` maps type names
to key types; a new key type is one module plus one line there.
"""

from __future__ import annotations

from sops_enclave.record import record
from typing import Any, Mapping, Protocol, runtime_checkable

from sops_enclave.errors import KeyMismatch, SopsError

__all__ = ["KeyUnavailable", "KeyMismatch", "KeyContext", "MasterKeyType", "require_sdk"]


class KeyUnavailable(SopsError):
    """The key applies, but it cannot be used now (network, service, credentials, corrupt
    ciphertext). The group loop records it and moves on, as for :class:`KeyMismatch`."""


@record
class KeyContext:
    """What a key type may read: the environment of the process (or of the caller's choice)."""

    env: Mapping[str, str]

    def get(self, name: str, default: str = "") -> str:
        return self.env.get(name, default)

    def age_identities(self, recipient: str = ""):
        """Identity discovery for one age key, as sops does it: afresh for every key (so
        ``SOPS_AGE_KEY_CMD`` sees that key's ``SOPS_AGE_RECIPIENT``)."""
        from sops_enclave.keys.discovery import load_age_identities

        return load_age_identities(self.env, recipient)

    def gpg(self) -> str:
        from sops_enclave.keys.discovery import gpg_exec

        return gpg_exec(self.env)


@runtime_checkable
class MasterKeyType(Protocol):
    type: str

    def wrap(self, entry: Any, data_key: bytes, ctx: KeyContext) -> str: ...

    def unwrap(self, entry: Any, ctx: KeyContext) -> bytes: ...

    def from_arg(self, value: str, ctx: KeyContext) -> list: ...


def require_sdk(import_name: str, package: str, extra: str) -> None:
    """Import ``import_name`` (a vendor SDK) or fail as an unusable key, naming what to
    install."""
    import importlib

    try:
        importlib.import_module(import_name)
    except ImportError:
        raise KeyUnavailable(f"this key type needs the {package} package, which is not "
                             f"installed (pip install 'sops-enclave[{extra}]')") from None
