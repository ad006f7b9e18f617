"""The binary store: the whole file is one string ``data``, stored in a JSON envelope."""

from __future__ import annotations

from typing import Any

from sops_enclave.errors import ErrorDumpingTree
from sops_enclave.formats import json_store
from sops_enclave.tree import Branch

__all__ = ["load_plain", "load_encrypted", "emit_plain", "emit_encrypted", "emit_value"]

_NO_DATA_HINT = ("This is likely not an encrypted binary file? If not, use --output-type to "
                 "select the correct output type.")


def load_plain(data: bytes) -> list[Branch]:
    return [Branch([("data", data.decode("utf-8", "surrogateescape"))])]


def load_encrypted(data: bytes) -> tuple[list[Branch], Any]:
    return json_store.load_encrypted(data)


def emit_plain(branches: list[Branch], indent: int = -1) -> bytes:
    if len(branches) != 1:
        raise ErrorDumpingTree("Error dumping file: error emitting binary store: there must be "
                               "exactly one tree branch")
    for k, v in branches[0]:
        if k == "data":
            if isinstance(v, str):
                return v.encode("utf-8", "surrogateescape")
            if isinstance(v, bytes):
                return v
            raise ErrorDumpingTree("Error dumping file: error emitting binary store: 'data' key "
                                   "in tree does not have a string value", hint=_NO_DATA_HINT)
    raise ErrorDumpingTree("Error dumping file: error emitting binary store: no binary data "
                           "found in tree", hint="\n" + _NO_DATA_HINT)


def emit_encrypted(branches: list[Branch], metadata: Branch, indent: int = -1) -> bytes:
    return json_store.emit_encrypted(branches, metadata, indent)


def emit_value(value: Any, indent: int = -1) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, bytes):
        return value
    raise ErrorDumpingTree("Error dumping tree: Binary files are not structured")
