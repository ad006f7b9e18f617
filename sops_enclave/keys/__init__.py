"""Master keys: wrap and unwrap the data key (age, PGP through gpg, AWS KMS).

Each provider module has two functions, ``wrap(data_key, entry, ...) -> enc`` and
``unwrap(entry, ...) -> data_key``. :mod:`sops_enclave.keys.discovery` is the only reader of
``SOPS_*`` variables and default key paths; :mod:`sops_enclave.keys.groups` applies key
groups and Shamir.
"""
