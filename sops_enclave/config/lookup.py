"""Finding ``.sops.yaml``: sops' ``LookupConfigFile`` (up from a directory, at most 100 levels;
a ``.sops.yml`` seen on the way is ignored with sops' warning)."""

from __future__ import annotations

import os
import warnings
from typing import Callable

from sops_enclave.goformat import go_quote
from sops_enclave.record import record

__all__ = ["CONFIG_FILE_NAME", "ALTERNATE_CONFIG_NAME", "MAX_DEPTH", "ConfigWarning",
           "ConfigLookup", "lookup_config", "find_config"]

CONFIG_FILE_NAME = ".sops.yaml"
ALTERNATE_CONFIG_NAME = ".sops.yml"
MAX_DEPTH = 100


class ConfigWarning(UserWarning):
    """Issued by :func:`find_config` when a ``.sops.yml`` was skipped."""



@record(frozen=True)
class ConfigLookup:
    path: str | None
    warning: str | None


def _shown(depth: int, name: str) -> str:
    """The path as sops prints it: it searches from ``.``, so ``../../.sops.yml``."""
    return "/".join([".."] * depth + [name])


def lookup_config(start_dir: str, *, exists: Callable[[str], bool] = os.path.exists
                  ) -> ConfigLookup:
    """sops' ``LookupConfigFile``: ``start_dir`` and up to 99 parents, lexically (``..``).

    ``path`` is joined onto ``start_dir``; the warning names files relative to ``start_dir``
    the way sops (which always starts at ``.``) prints them.
    """
    d = start_dir
    alternate = None
    for depth in range(MAX_DEPTH):
        candidate = os.path.join(d, CONFIG_FILE_NAME)
        if exists(candidate):
            warning = None
            if alternate:
                warning = (f"ignoring {go_quote(alternate)} when searching for config file; "
                           f"the config file must be called {go_quote(CONFIG_FILE_NAME)}; "
                           f"using {go_quote(_shown(depth, CONFIG_FILE_NAME))} instead")
            return ConfigLookup(candidate, warning)
        if alternate is None and exists(os.path.join(d, ALTERNATE_CONFIG_NAME)):
            alternate = _shown(depth, ALTERNATE_CONFIG_NAME)
        d = os.path.normpath(os.path.join(d, os.pardir))
    warning = None
    if alternate:
        warning = (f"ignoring {go_quote(alternate)} when searching for config file; the config "
                   f"file must be called {go_quote(CONFIG_FILE_NAME)}")
    return ConfigLookup(None, warning)


def find_config(start_dir: str) -> str | None:
    """Path of the ``.sops.yaml`` that applies to ``start_dir``, or None.

    A skipped ``.sops.yml`` is reported with :func:`warnings.warn` (:class:`ConfigWarning`);
    use :func:`lookup_config` to get the warning text instead.
    """
    res = lookup_config(start_dir)
    if res.warning:
        warnings.warn(res.warning, ConfigWarning, stacklevel=2)
    return res.path
