"""Atomic writes: a temporary file in the target directory, fsync, then rename."""

from __future__ import annotations

import os
import stat
import tempfile

from sops_enclave.errors import CouldNotWriteOutputFile

__all__ = ["write_atomic", "read_input"]


def write_atomic(path: str, data: bytes, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` all at once; on any failure ``path`` is untouched."""
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
    try:
        fd, tmp = tempfile.mkstemp(prefix=".sops-enclave-", suffix=".tmp", dir=directory)
    except OSError as e:
        raise CouldNotWriteOutputFile(f"Could not open output file for writing: open {path}: "
                                      f"{e.strerror.lower() if e.strerror else e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise CouldNotWriteOutputFile(f"Could not write output file {path}: {e.strerror}") from None
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_input(path: str) -> bytes:
    from sops_enclave.errors import CouldNotReadInputFile, NoFileSpecified

    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise NoFileSpecified(f'Error: cannot operate on non-existent file "{path}"') from None
    except IsADirectoryError:
        raise CouldNotReadInputFile(f"Error reading file: read {path}: is a directory") from None
    except OSError as e:
        raise CouldNotReadInputFile(f"Error reading file: open {path}: "
                                    f"{(e.strerror or str(e)).lower()}") from None
