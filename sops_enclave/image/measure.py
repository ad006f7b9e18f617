"""What goes into the enclave image, and how it is measured.

**The bundle** holds exactly the code the enclave program runs: the modules reachable by
``import`` statements (anywhere in a module, functions included) from the enclave's entry
modules, plus the image build inputs (``Dockerfile``, ``requirements.lock``) and, for an image,
the enclave policy. The CLI, the sops commands, the dev stand-ins (``sops_enclave.devtools``:
the software NSM is imported only by ``app --dev``), bench and docs are not in it, so editing a
``--help`` string changes no measurement. The closure is computed from the source files
themselves, so a checkout, an editable install and an installed wheel give the same bundle::

    files = default_bundle()                 # {"sops_enclave/cipher.py": b"...", ...}
    pcrs = measure_bundle(files)             # {0: ..., 1: ..., 2: ...}

**The dev measurement** (what the software NSM reports; ``ext(d) = SHA384(48 zero bytes ||
d)``, the Nitro extend of a fresh register):

* ``bundle archive`` = ``b"sops-enclave-bundle/v1\\n"`` then, for every file sorted by its
  UTF-8 path, ``u32be(len(path)) || path || u64be(len(content)) || content``. Paths are
  relative POSIX paths; modes and mtimes are not measured.
* ``PCR1 = ext(SHA384(BOOT))`` with ``BOOT = b"sops-enclave soft-nsm boot v1\\n"``: the stand-in
  for Nitro's kernel + bootstrap ramdisk; the same on every machine.
* ``PCR2 = ext(SHA384(archive))``: the application, as Nitro's PCR2.
* ``PCR0 = ext(SHA384(BOOT || archive))``: the whole image, as Nitro's PCR0 covers what PCR1
  and PCR2 cover.
"""

from __future__ import annotations

import ast
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path, PurePosixPath

__all__ = ["BOOT_MEASUREMENT", "ENTRY_MODULES", "IMAGE_FILES", "bundle_archive",
           "measure_bundle", "collect_bundle", "enclave_modules", "bundle_from",
           "default_bundle", "policy_bundle", "extend", "installed_roots"]

BOOT_MEASUREMENT = b"sops-enclave soft-nsm boot v1\n"
_ARCHIVE_MAGIC = b"sops-enclave-bundle/v1\n"
_ZERO = bytes(48)

#: The enclave program's entry modules (the image's CMD runs the forwarder and the app).
ENTRY_MODULES = ("sops_enclave.enclave.app", "sops_enclave.enclave.executor",
                 "sops_enclave.enclave.nsm", "sops_enclave.enclave.kms_forwarder")
#: Imports made by name at run time, which no ``import`` statement shows.
_DYNAMIC = {"sops_enclave.formats": ("yaml_store", "json_store", "dotenv", "ini",
                                      "binary_store")}
#: Never in the image: dev stand-ins are imported by ``app --dev`` only.
_EXCLUDED = ("sops_enclave.devtools",)
#: Files of the enclave program directory the image build needs.
IMAGE_FILES = ("Dockerfile", "requirements.lock")


def extend(value: bytes, data: bytes) -> bytes:
    """Nitro PCR extend: ``SHA384(value || data)``."""
    return hashlib.sha384(value + data).digest()


def _check_path(path: str) -> bytes:
    p = PurePosixPath(path)
    if not path or p.is_absolute() or ".." in p.parts or "\0" in path or str(p) != path:
        raise ValueError(f"bundle path must be a normalised relative POSIX path: {path!r}")
    return path.encode("utf-8")


def bundle_archive(files: Mapping[str, bytes]) -> bytes:
    """The deterministic archive that is measured (format in the module docstring)."""
    entries = sorted((_check_path(p), bytes(c)) for p, c in files.items())
    out = [_ARCHIVE_MAGIC]
    for path, content in entries:
        out += [len(path).to_bytes(4, "big"), path, len(content).to_bytes(8, "big"), content]
    return b"".join(out)


def measure_bundle(files: Mapping[str, bytes]) -> dict[int, bytes]:
    """PCR0, PCR1 and PCR2 for a bundle of ``{relative path: content}``."""
    archive = bundle_archive(files)
    return {0: extend(_ZERO, hashlib.sha384(BOOT_MEASUREMENT + archive).digest()),
            1: extend(_ZERO, hashlib.sha384(BOOT_MEASUREMENT).digest()),
            2: extend(_ZERO, hashlib.sha384(archive).digest())}


def collect_bundle(root: str | Path, *, prefix: str = "",
                   exclude: Callable[[PurePosixPath], bool] | None = None) -> dict[str, bytes]:
    """Read every regular file under ``root`` as ``{prefix + relative path: content}``
    (``__pycache__``, ``*.pyc`` and symlinks skipped)."""
    root = Path(root)
    out: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in filenames:
            full = Path(dirpath) / name
            rel = PurePosixPath(full.relative_to(root).as_posix())
            if name.endswith(".pyc") or full.is_symlink() or not full.is_file():
                continue
            if exclude is not None and exclude(rel):
                continue
            out[prefix + str(rel)] = full.read_bytes()
    return out


class _Locator:
    """Module name -> (source file, bundle path, is package), for a package directory and the
    enclave program directory (``enclave/`` in a checkout, ``sops_enclave/enclave`` in a
    wheel)."""

    def __init__(self, pkg_dir: Path, prog_dir: Path) -> None:
        self.pkg_dir, self.prog_dir = pkg_dir, prog_dir

    def find(self, name: str) -> tuple[Path, str, bool] | None:
        parts = name.split(".")
        if parts[0] != "sops_enclave":
            return None
        if parts[1:2] == ["enclave"]:
            base, rel, prefix = self.prog_dir, parts[2:], "sops_enclave/enclave"
        else:
            base, rel, prefix = self.pkg_dir, parts[1:], "sops_enclave"
        p = base.joinpath(*rel)
        bpath = "/".join([prefix, *rel])
        if (p / "__init__.py").is_file():
            return p / "__init__.py", bpath + "/__init__.py", True
        if p.with_suffix(".py").is_file():
            return p.with_suffix(".py"), bpath + ".py", False
        return None


#: What holds statements: an import is a statement, so it is only ever in one of these.
_STATEMENT_HOLDERS = (ast.stmt, ast.excepthandler, ast.match_case)


def _import_statements(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement of ``body`` and of the statements nested in it (function and
    class bodies, branches, handlers, match cases): what ``ast.walk`` finds, without visiting
    every expression node (this runs at each dev enclave start)."""
    todo: list[ast.AST] = list(body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        for field in node._fields:
            value = getattr(node, field, None)
            if isinstance(value, list):
                todo += [v for v in value if isinstance(v, _STATEMENT_HOLDERS)]


def _imports(source: bytes, name: str, is_pkg: bool) -> set[str]:
    """Every module an import statement in ``source`` may load (absolute names)."""
    tree = ast.parse(source)
    package = name if is_pkg else name.rpartition(".")[0]
    out: set[str] = set()
    for node in _import_statements(tree.body):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import module`
    for pkg, modules in _DYNAMIC.items():
        if name == pkg:
            out.update(f"{pkg}.{m}" for m in modules)
    return out


def enclave_modules(pkg_dir: Path, prog_dir: Path,
                    entries: Iterable[str] = ENTRY_MODULES) -> dict[str, tuple[Path, str]]:
    """``{module: (source file, bundle path)}`` for the import closure of ``entries``."""
    loc = _Locator(Path(pkg_dir), Path(prog_dir))
    found: dict[str, tuple[Path, str]] = {}
    todo = list(entries)
    while todo:
        name = todo.pop()
        if name in found or name.startswith(_EXCLUDED):
            continue
        hit = loc.find(name)
        if hit is None:
            continue  # a name imported from a module, or a module outside the package
        path, bpath, is_pkg = hit
        found[name] = (path, bpath)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages
        todo += [m for m in _imports(path.read_bytes(), name, is_pkg)
                 if m.startswith("sops_enclave")]
    return found


def bundle_from(pkg_dir: str | Path, prog_dir: str | Path) -> dict[str, bytes]:
    """The bundle (``{bundle path: content}``) from a package and enclave program directory."""
    mods = enclave_modules(Path(pkg_dir), Path(prog_dir))
    files = {bpath: path.read_bytes() for path, bpath in mods.values()}
    for name in IMAGE_FILES:
        p = Path(prog_dir) / name
        if not p.is_file():
            raise FileNotFoundError(f"{p}: the enclave program's image file is missing")
        files[f"sops_enclave/enclave/{name}"] = p.read_bytes()
    return files


def installed_roots() -> tuple[Path, Path]:
    """(package dir, enclave program dir) of the running ``sops_enclave``."""
    import importlib.util

    import sops_enclave

    pkg = Path(sops_enclave.__file__).resolve().parent
    spec = importlib.util.find_spec("sops_enclave.enclave")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("sops_enclave.enclave (the enclave program) is not installed")
    return pkg, Path(spec.origin).resolve().parent


def default_bundle() -> dict[str, bytes]:
    """The bundle of the installed code (checkout, editable install or wheel alike)."""
    return bundle_from(*installed_roots())


def policy_bundle(enclave_policy: bytes | None) -> dict[str, bytes]:
    """:func:`default_bundle` plus the enclave policy at its bundle path (when given): what
    the dev enclave started with ``--enclave-policy FILE`` measures, as a Nitro image built
    with that policy measures it."""
    from ..pack.enclave_policy import BUNDLE_PATH

    files = default_bundle()
    if enclave_policy is not None:
        files[BUNDLE_PATH] = bytes(enclave_policy)
    return files
