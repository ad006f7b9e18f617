"""One exception tree; every class carries the exit code sops 3.11 uses for it.

``cli.main`` is the only place that turns these into a process exit status.
Messages never contain plaintext values or key material.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = [
    "SopsError", "CouldNotReadInputFile", "CouldNotWriteOutputFile", "ErrorDumpingTree",
    "InvalidEncryptionContext", "InvalidSetFormat", "ConflictingParameters",
    "ErrorEncryptingTree", "ErrorDecryptingTree", "MacMismatch", "InvalidTreePathFormat",
    "NeedAtLeastOneDocument", "NoFileSpecified", "DuplicateDecryptionKeyType",
    "CouldNotRetrieveKey", "FileHasNotBeenModified", "NoEditorFound", "FileAlreadyEncrypted",
    "MetadataNotFound", "ConfigError", "KeyMismatch", "LoggedFatal", "go_wordwrap",
    "logrus_line", "go_errno_text",
]


if TYPE_CHECKING:  # for the type checker only: building a TypedDict costs ~1 ms at start-up
    from typing import TypedDict, Unpack

    class _ErrorOptions(TypedDict, total=False):
        """The keyword options of :class:`SopsError` (for subclasses passing them through)."""

        exit_code: int | None
        hint: str | None


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

    def __init__(self, message: str = "sops metadata not found",
                 **kw: Unpack[_ErrorOptions]) -> None:
        super().__init__(message, **kw)


class ConfigError(SopsError):
    """A bad ``.sops.yaml`` or no matching creation rule (exit 1, as sops)."""


class KeyMismatch(Exception):
    """A master key does not apply to this stanza ("not mine", not "broken").

    Raised by ``unwrap``; the group loop records it and moves on to the next key.
    """


# ---------------------------------------------------------------- sops' message formatting

# Go's unicode.IsSpace for the Latin-1 range (Python's str.isspace also counts \x1c-\x1f).
_GO_LATIN1_SPACE = frozenset("\t\n\v\f\r \x85\xa0")


def _go_is_space(ch: str) -> bool:
    if ch < "\u0100":
        return ch in _GO_LATIN1_SPACE
    return ch.isspace()


def go_wordwrap(s: str, lim: int) -> str:
    """``wordwrap.WrapString`` (github.com/mitchellh/go-wordwrap v1.0.1), which sops uses for
    its user errors: lines break only at white space, a word longer than ``lim`` stays whole,
    existing newlines are kept, and the spaces at a break are dropped."""
    out: list[str] = []
    current = 0
    word: list[str] = []
    space: list[str] = []
    for ch in s:
        if ch == "\n":
            if not word:
                if current + len(space) <= lim:
                    out.extend(space)
            else:
                out.extend(space)
                out.extend(word)
                word = []
            space = []
            out.append(ch)
            current = 0
        elif _go_is_space(ch) and ch != "\xa0":
            if not space or word:
                current += len(space) + len(word)
                out.extend(space)
                out.extend(word)
                space, word = [], []
            space.append(ch)
        else:
            word.append(ch)
            if current + len(word) + len(space) > lim and len(word) < lim:
                out.append("\n")
                current = 0
                space = []
    if not word:
        if current + len(space) <= lim:
            out.extend(space)
    else:
        out.extend(space)
        out.extend(word)
    return "".join(out)


def go_errno_text(e: OSError) -> str:
    """Go's text for a syscall error (``no such file or directory``): strerror, lower case."""
    import os

    text = os.strerror(e.errno) if e.errno else (e.strerror or str(e))
    return text[:1].lower() + text[1:]


def _logrus_value(v: str) -> str:
    """logrus' TextFormatter: a value is quoted (Go ``%q``) unless it is a plain word."""
    import re

    if v and re.fullmatch(r"[A-Za-z0-9\-._/@^+]+", v):
        return v
    from sops_enclave.goformat import go_quote as _go_quote

    return _go_quote(v)


def logrus_line(logger: str, level: str, msg: str, **fields: str) -> str:
    """One line of sops' logger on a non-terminal stderr, without the newline:
    ``[NAME]\t time="..." level=... msg="..." key=value`` (fields sorted, local time)."""
    import datetime as _dt

    now = _dt.datetime.now().astimezone().replace(microsecond=0)
    t = now.isoformat()
    if t.endswith("+00:00") and now.utcoffset() == _dt.timedelta(0):
        t = t[:-6] + "Z"
    parts = [f"time={_logrus_value(t)}", f"level={level}", f"msg={_logrus_value(msg)}"]
    parts += [f"{k}={_logrus_value(v)}" for k, v in sorted(fields.items())]
    return f"[{logger}]\t " + " ".join(parts)


class LoggedFatal(SopsError):
    """An error sops reports through its ``CMD`` logger (``log.Fatal``, exit 1), e.g. the
    errors of ``filestatus``: the CLI prints it as a logrus line with the current time."""

    def diagnostics(self) -> str:
        return logrus_line("CMD", "fatal", self.message)
