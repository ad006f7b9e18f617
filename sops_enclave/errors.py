"""One exception tree; every class carries the exit code sops 3.11 uses for it.

``cli.main`` is the only place that turns these into a process exit status.
Messages never contain plaintext values or key material.
"""

from __future__ import annotations

__all__ = [
    "SopsError", "CouldNotReadInputFile", "CouldNotWriteOutputFile", "ErrorDumpingTree",
    "InvalidEncryptionContext", "InvalidSetFormat", "ConflictingParameters",
    "ErrorEncryptingTree", "ErrorDecryptingTree", "MacMismatch", "InvalidTreePathFormat",
    "NeedAtLeastOneDocument", "NoFileSpecified", "DuplicateDecryptionKeyType",
    "CouldNotRetrieveKey", "FileHasNotBeenModified", "NoEditorFound", "FileAlreadyEncrypted",
    "MetadataNotFound", "ConfigError", "KeyMismatch",
]


class SopsError(Exception):
    """Base class. ``exit_code`` follows sops' cmd/sops/codes table."""

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None, hint: str | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
        self.hint = hint

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def diagnostics(self) -> str:
        """The text the CLI prints: the message, then a hint line when there is one."""
        if self.hint:
            return f"{self.message}\n{self.hint}"
        return self.message


class CouldNotReadInputFile(SopsError):
    exit_code = 2


class CouldNotWriteOutputFile(SopsError):
    exit_code = 3


class ErrorDumpingTree(SopsError):
    exit_code = 4


class InvalidEncryptionContext(SopsError):
    exit_code = 6


class InvalidSetFormat(SopsError):
    exit_code = 7


class ConflictingParameters(SopsError):
    exit_code = 8


class ErrorEncryptingTree(SopsError):
    exit_code = 23


class ErrorDecryptingTree(SopsError):
    exit_code = 25


class MacMismatch(SopsError):
    exit_code = 51


class InvalidTreePathFormat(SopsError):
    exit_code = 91


class NeedAtLeastOneDocument(SopsError):
    exit_code = 92


class NoFileSpecified(SopsError):
    exit_code = 100


class DuplicateDecryptionKeyType(SopsError):
    exit_code = 112


class CouldNotRetrieveKey(SopsError):
    exit_code = 128


class FileHasNotBeenModified(SopsError):
    exit_code = 200


class NoEditorFound(SopsError):
    exit_code = 201


class FileAlreadyEncrypted(SopsError):
    exit_code = 203


class MetadataNotFound(SopsError):
    """The document has no ``sops`` metadata (exit 1, as sops)."""

    def __init__(self, message: str = "sops metadata not found", **kw):
        super().__init__(message, **kw)


class ConfigError(SopsError):
    """A bad ``.sops.yaml`` or no matching creation rule (exit 1, as sops)."""


class KeyMismatch(Exception):
    """A master key does not apply to this stanza ("not mine", not "broken").

    Raised by ``unwrap``; the group loop records it and moves on to the next key.
    """
