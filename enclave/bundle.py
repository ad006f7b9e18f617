"""Build the enclave bundle: the files that go into the image, as a normalised tar archive.

The bundle holds what :mod:`sops_enclave.image.measure` says goes into the image: the modules
of the enclave program's import closure (``sops_enclave/...`` and ``sops_enclave/enclave/...``:
the CLI, the dev stand-ins, docs and tests are not in it), the image build files
(``Dockerfile``, ``requirements.lock``) and, for an image, the enclave policy
(``enclave-policy.yaml``). From a checkout, an editable install or an installed wheel that is
the same set, so the dev measurement printed here is what the dev enclave's software NSM
reports as PCR0-2. The image's Dockerfile unpacks this archive and installs the dependencies
pinned in its ``requirements.lock``; nothing else from the checkout enters the image.

The archive is the same bytes for the same file contents, whatever the file modes, owners,
mtimes, umask, directory order, machine or Python version:

* POSIX ustar (written here, not by :mod:`tarfile`, so its output cannot drift between
  Python versions); no pax or GNU extension headers; paths longer than 100 bytes use the
  ustar prefix field, and a path that does not fit is an error;
* entries sorted by UTF-8 path (a directory sorts by its name without the trailing '/',
  so it comes before its contents), directories listed explicitly;
* mode 0755 for directories and 0644 for files (nothing in the bundle is run directly);
  uid and gid 0, empty user and group names, device numbers 0;
* every mtime = ``--mtime``, else ``$SOURCE_DATE_EPOCH``, else 0;
* ended by two zero blocks, no padding to a 10 KiB record.

Usage (from the repository root)::

    python -m sops_enclave.enclave.bundle                 # -> build/sops-enclave-bundle.tar
    python -m sops_enclave.enclave.bundle --root /tmp/checkout --output /tmp/b.tar --json

It prints the archive's SHA-256 and the dev measurement (``measure_bundle`` over the same
files). ``--expect-sha256 HEX`` makes it exit 1 when the archive differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = ["BundleError", "BundleInfo", "bundle_files", "tar_bytes", "build", "main",
           "default_root", "source_date_epoch", "BUNDLE_NAME"]

BUNDLE_NAME = "sops-enclave-bundle.tar"
_BLOCK = 512
_MAX_MTIME = 8 ** 11 - 1


class BundleError(Exception):
    """The bundle cannot be built as asked."""


# --- which files ----------------------------------------------------------------------------

def default_root() -> Path | None:
    """The source checkout this module runs from, or None for an installed (wheel) copy."""
    here = Path(__file__).resolve().parent          # .../enclave
    root = here.parent
    if here.name == "enclave" and (root / "sops_enclave" / "__init__.py").is_file() \
            and not (root / "sops_enclave" / "enclave").exists():
        return root
    return None


def bundle_files(root: str | Path | None = None) -> dict[str, bytes]:
    """``{bundle path: content}`` from the checkout at ``root`` (default: this one).

    Without a checkout (an installed wheel) this is ``image.measure.default_bundle()``:
    the same files, found the same way (the enclave program's import closure).
    """
    from sops_enclave.image.measure import bundle_from, default_bundle

    if root is None:
        root = default_root()
        if root is None:
            return default_bundle()
    root = Path(root)
    pkg, prog = root / "sops_enclave", root / "enclave"
    for d in (pkg, prog):
        if not d.is_dir():
            raise BundleError(f"{d} is not a directory: --root must be a sops-enclave checkout")
    if (pkg / "enclave").exists():
        raise BundleError(f"{pkg / 'enclave'} exists: the enclave program lives in {prog}")
    try:
        return bundle_from(pkg, prog)
    except (OSError, SyntaxError) as e:
        raise BundleError(str(e)) from None


# --- the archive ----------------------------------------------------------------------------

def _octal(value: int, width: int) -> bytes:
    digits = b"%0*o" % (width - 1, value)
    if value < 0 or len(digits) > width - 1:
        raise BundleError(f"value {value} does not fit a {width}-byte ustar field")
    return digits + b"\0"


def _split_name(path: str) -> tuple[bytes, bytes]:
    """ustar (prefix, name): name <= 100 bytes, prefix <= 155, split at a '/' (the longest
    prefix that fits); a directory keeps its trailing '/' in the name part."""
    raw = path.encode("utf-8")
    if len(raw) <= 100:
        return b"", raw
    trail = b"/" if raw.endswith(b"/") else b""
    body = raw[:-1] if trail else raw
    cut = body.rfind(b"/", 0, 156)
    name = body[cut + 1:] + trail
    if cut <= 0 or not name.strip(b"/") or len(name) > 100:
        raise BundleError(f"path too long for a ustar archive: {path}")
    return body[:cut], name


def _header(path: str, *, size: int, mode: int, mtime: int, typeflag: bytes) -> bytes:
    prefix, name = _split_name(path)
    h = bytearray(_BLOCK)

    def put(offset: int, width: int, value: bytes) -> None:
        assert len(value) <= width
        h[offset:offset + len(value)] = value

    put(0, 100, name)
    put(100, 8, _octal(mode, 8))
    put(108, 8, _octal(0, 8))          # uid
    put(116, 8, _octal(0, 8))          # gid
    put(124, 12, _octal(size, 12))
    put(136, 12, _octal(mtime, 12))
    put(148, 8, b" " * 8)              # checksum is computed with this field as spaces
    put(156, 1, typeflag)
    put(257, 6, b"ustar\0")
    put(263, 2, b"00")
    put(329, 8, _octal(0, 8))          # devmajor
    put(337, 8, _octal(0, 8))          # devminor
    put(345, 155, prefix)
    put(148, 8, b"%06o\0 " % sum(h))
    return bytes(h)


def _check_path(path: str) -> str:
    p = PurePosixPath(path)
    if (not path or p.is_absolute() or ".." in p.parts or "\0" in path or str(p) != path
            or path.endswith("/")):
        raise BundleError(f"bundle path must be a normalised relative POSIX path: {path!r}")
    return path


def tar_bytes(files: Mapping[str, bytes], mtime: int = 0) -> bytes:
    """The normalised ustar archive of ``files`` (format in the module docstring)."""
    if not 0 <= mtime <= _MAX_MTIME:
        raise BundleError(f"mtime {mtime} is outside 0..{_MAX_MTIME}")
    entries: dict[str, bytes | None] = {}
    content: bytes | None  # a file's bytes, None for a directory (both loops)
    for path, content in files.items():
        parts = PurePosixPath(_check_path(path)).parts
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if entries.get(d, None) is not None:
                raise BundleError(f"{d} is both a file and a directory")
            entries[d] = None
        if path in entries and entries[path] is None:
            raise BundleError(f"{path} is both a file and a directory")
        entries[path] = bytes(content)
    out = bytearray()
    for path in sorted(entries, key=lambda p: p.encode("utf-8")):
        content = entries[path]
        if content is None:
            out += _header(path + "/", size=0, mode=0o755, mtime=mtime, typeflag=b"5")
        else:
            out += _header(path, size=len(content), mode=0o644, mtime=mtime, typeflag=b"0")
            out += content
            out += bytes(-len(content) % _BLOCK)
    out += bytes(2 * _BLOCK)
    return bytes(out)


# --- building -------------------------------------------------------------------------------

def source_date_epoch(environ: Mapping[str, str] = os.environ) -> int:
    """``$SOURCE_DATE_EPOCH`` as an integer, 0 when unset."""
    raw = environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return 0
    if not raw.isdigit():
        raise BundleError(f"SOURCE_DATE_EPOCH must be a non-negative integer, not {raw!r}")
    return int(raw)


@dataclass(frozen=True)
class BundleInfo:
    """What :func:`build` made."""

    path: str
    files: int
    size: int
    sha256: str
    mtime: int
    dev_pcrs: dict[int, str]
    enclave_policy_sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "files": self.files, "size": self.size,
                "sha256": self.sha256, "mtime": self.mtime,
                "dev_pcrs": {str(k): v for k, v in sorted(self.dev_pcrs.items())},
                "enclave_policy_sha256": self.enclave_policy_sha256}


def _write_atomic(path: Path, data: bytes) -> None:
    from sops_enclave.fileio import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(str(path), data)


def build(root: str | Path | None = None, output: str | Path | None = None,
          mtime: int | None = None, enclave_policy: bytes | None = None) -> BundleInfo:
    """Write the bundle archive; return its digest and the dev measurement.

    ``enclave_policy``: the enclave policy file's bytes, stored at ``enclave-policy.yaml``
    (checked first: a policy that does not load is an error). A bundle for a Nitro image must
    have one (``enclave/build.sh`` refuses to build without); without it the bundle is the
    code alone (``make reproduce``)."""
    from sops_enclave.image.measure import measure_bundle
    from sops_enclave.pack.enclave_policy import BUNDLE_PATH, load_enclave_policy

    if root is None:
        root = default_root()
    files = bundle_files(root)
    policy_sha = None
    if enclave_policy is not None:
        try:
            policy_sha = load_enclave_policy(enclave_policy).sha256
        except Exception as e:
            raise BundleError(f"enclave policy: {getattr(e, 'message', e)}") from None
        files[BUNDLE_PATH] = enclave_policy
    if not files:
        raise BundleError("the bundle is empty")
    if mtime is None:
        mtime = source_date_epoch()
    if output is None:
        output = (Path(root) / "build" if root is not None else Path.cwd()) / BUNDLE_NAME
    output = Path(output).resolve()
    if root is not None:
        for d in (Path(root) / "sops_enclave", Path(root) / "enclave"):
            if output.is_relative_to(d.resolve()):
                raise BundleError(f"the output {output} would be inside the bundle ({d})")
    data = tar_bytes(files, mtime)
    _write_atomic(output, data)
    pcrs = measure_bundle(files)
    return BundleInfo(str(output), len(files), len(data), hashlib.sha256(data).hexdigest(),
                      mtime, {i: v.hex() for i, v in pcrs.items()}, policy_sha)


def _dirty(root: Path) -> list[str]:
    """Uncommitted or untracked paths under the bundle roots (empty outside git)."""
    try:
        r = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--",
                            "sops_enclave", "enclave"], capture_output=True, text=True,
                           timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return r.stdout.splitlines() if r.returncode == 0 else []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sops_enclave.enclave.bundle",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", help="the sops-enclave checkout (default: the one this runs from)")
    ap.add_argument("--output", help=f"archive path (default: ROOT/build/{BUNDLE_NAME})")
    ap.add_argument("--mtime", type=int,
                    help="mtime of every entry (default: $SOURCE_DATE_EPOCH, else 0)")
    ap.add_argument("--enclave-policy", metavar="FILE",
                    help="the enclave policy to measure into the bundle (required for an image)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--expect-sha256", metavar="HEX", help="exit 1 unless the archive has it")
    args = ap.parse_args(argv)
    try:
        policy = None
        if args.enclave_policy:
            with open(args.enclave_policy, "rb") as f:
                policy = f.read()
        info = build(args.root, args.output, args.mtime, enclave_policy=policy)
    except (BundleError, ValueError, OSError) as e:
        print(f"bundle: {e}", file=sys.stderr)
        return 2
    root = Path(args.root) if args.root else default_root()
    if root is not None:
        dirty = _dirty(root)
        if dirty:
            print(f"bundle: warning: {len(dirty)} uncommitted or untracked path(s) under "
                  "sops_enclave/ or enclave/ are in the bundle (git status --porcelain); "
                  "build from a clean checkout to reproduce a published measurement",
                  file=sys.stderr)
    if args.json:
        print(json.dumps(info.to_json(), indent=2, sort_keys=True))
    else:
        print(f"bundle    {info.path}")
        print(f"files     {info.files}")
        print(f"bytes     {info.size}")
        print(f"mtime     {info.mtime}")
        print(f"sha256    {info.sha256}")
        print(f"policy    {info.enclave_policy_sha256 or 'none (not for an image)'}")
        for i, v in sorted(info.dev_pcrs.items()):
            print(f"dev PCR{i}  {v}")
    if args.expect_sha256 and args.expect_sha256.lower() != info.sha256:
        print(f"bundle: sha256 {info.sha256} != expected {args.expect_sha256}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
