"""Atomic writes: a temporary file in the target directory, fsync, then rename."""

from __future__ import annotations

import os
import stat

from sops_enclave.errors import CouldNotWriteOutputFile

__all__ = ["write_atomic", "read_input", "read_stream", "max_input_bytes"]

DEFAULT_MAX_INPUT = 128 * 1024 * 1024


def max_input_bytes() -> int:
    """The largest input accepted: ``SOPS_ENCLAVE_MAX_INPUT_BYTES`` or 128 MiB."""
    try:
        return int(os.environ.get("SOPS_ENCLAVE_MAX_INPUT_BYTES", DEFAULT_MAX_INPUT))
    except ValueError:
        return DEFAULT_MAX_INPUT


def _too_big(what: str, limit: int):
    from sops_enclave.errors import CouldNotReadInputFile

    return CouldNotReadInputFile(f"Error reading file: {what} is larger than the {limit}-byte "
                                 "limit (set SOPS_ENCLAVE_MAX_INPUT_BYTES to raise it)")


def read_stream(f, what: str = "standard input") -> bytes:
    limit = max_input_bytes()
    data = f.read(limit + 1)
    if len(data) > limit:
        raise _too_big(what, limit)
    return data


def write_atomic(path: str, data: bytes, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` all at once; on any failure ``path`` is untouched.

    The one single-file atomic writer (CLI outputs, the enclave bundle, the enclave's
    ``/etc/hosts``): a temporary in the same directory, fsync, chmod, rename. ``mode``
    defaults to the existing file's, else 0666 less the umask. (The pack's outputs and
    receipts, written all-or-none and without following links, use
    ``pack.host.write_all_atomically``.)"""
    directory = os.path.dirname(os.path.abspath(path))
    if mode is None:
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        except OSError as e:
            raise CouldNotWriteOutputFile(f"Could not open output file for writing: {path}: "
                                          f"{e.strerror}") from None
    # The temporary's name is chosen before it exists, so an interruption (SIGTERM is raised
    # as an exception) at any moment after the file appears still removes it.
    ours = ""   # the temporary this call created (or is creating), never someone else's
    opened = False
    try:
        for _ in range(16):
            ours = os.path.join(directory, f".sops-enclave-{os.urandom(6).hex()}.tmp")
            try:
                fd = os.open(ours, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                break
            except FileExistsError:
                ours = ""
        else:
            raise FileExistsError(17, "file exists")
        opened = True
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(ours, mode)
        os.replace(ours, path)
    except BaseException as e:  # interrupted too: never leave the temporary behind
        if ours:
            try:
                os.unlink(ours)
            except OSError:
                pass
        if isinstance(e, OSError):
            if not opened:
                raise CouldNotWriteOutputFile(
                    f"Could not open output file for writing: open {path}: "
                    f"{e.strerror.lower() if e.strerror else e}") from None
            raise CouldNotWriteOutputFile(
                f"Could not write output file {path}: {e.strerror}") from None
        raise


def read_input(path: str) -> bytes:
    from sops_enclave.errors import CouldNotReadInputFile, NoFileSpecified

    try:
        with open(path, "rb") as f:
            return read_stream(f, path)
    except FileNotFoundError:
        raise NoFileSpecified(f'Error: cannot operate on non-existent file "{path}"') from None
    except IsADirectoryError:
        raise CouldNotReadInputFile(f"Error reading file: read {path}: is a directory") from None
    except OSError as e:
        raise CouldNotReadInputFile(f"Error reading file: open {path}: "
                                    f"{(e.strerror or str(e)).lower()}") from None
