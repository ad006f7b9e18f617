"""The five stores. Each module turns bytes into documents and back, with no file access."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["FORMATS", "format_for_path", "resolve_format", "get_store"]

FORMATS = ("yaml", "json", "dotenv", "ini", "binary")
_MODULES = {"yaml": "yaml_store", "json": "json_store", "dotenv": "dotenv", "ini": "ini",
            "binary": "binary_store"}


def format_for_path(path: str) -> str:
    """sops' rule: .yaml/.yml, .json, .env, .ini, anything else is binary."""
    ext = os.path.splitext(path)[1]
    return {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".env": "dotenv",
            ".ini": "ini"}.get(ext, "binary")


def resolve_format(flag: str | None, path: str) -> str:
    """An explicit, known ``--input-type``/``--output-type`` wins; anything else (as in sops,
    including unknown names) falls back to the file extension."""
    if flag in FORMATS:
        return flag
    return format_for_path(path)


def get_store(fmt: str) -> ModuleType:
    return importlib.import_module(f"sops_enclave.formats.{_MODULES[fmt]}")
