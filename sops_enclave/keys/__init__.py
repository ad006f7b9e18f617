"""Master keys: wrap and unwrap the data key.

Every key type implements one interface (:mod:`sops_enclave.keys.base`):
``wrap(entry, data_key, ctx) -> enc``, ``unwrap(entry, ctx) -> data_key`` and
``from_arg(value, ctx) -> entries``, with :class:`~sops_enclave.errors.KeyMismatch` for "not my
key" and :class:`~sops_enclave.keys.base.KeyUnavailable` for "mine, but unusable now".
:mod:`sops_enclave.keys.registry` finds the type by its metadata list name: ``age``
(:mod:`.age`), ``pgp`` (:mod:`.pgp`, the gpg binary), ``kms`` (:mod:`.kms`, AWS),
``gcp_kms`` (:mod:`.gcpkms`), ``azure_kv`` (:mod:`.azkv`), ``hc_vault`` (:mod:`.hcvault`,
Vault/OpenBao transit) and ``hckms`` (:mod:`.hckms`, HuaweiCloud). A new key type is one
module plus one registry line (and, as it is part of the sops format, its entry class in
:mod:`sops_enclave.metadata` and its message in ``keyservice.proto``).

:mod:`sops_enclave.keys.discovery` is the only reader of ``SOPS_*`` age/PGP variables and
default key paths; :mod:`sops_enclave.keys.groups` applies key groups and Shamir.
"""
