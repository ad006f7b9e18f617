"""The layering of DESIGN section 3, enforced on every import statement (function-level
imports included), with no exceptions listed:

1. the core (tree, values, walk, metadata, stores, Shamir, Go formatting and regexps, merge,
   errors, record classes) imports nothing above it;
2. the enclave program imports only the core, keys, CMS, the frame codec, the atomic writer,
   receipt building and pack verification: never the CLI, the library surface (``api``),
   ``config``, the key service, image tooling or the dev stand-ins;
3. nothing imports ``sops_enclave.devtools`` but the dev stand-ins themselves and the ``dev``
   command (tests, fixtures and bench are outside the package);
4. no module imports a private name (or private module) of another subpackage;
5. the command line has no import cycles: nothing but ``__main__`` imports ``cli`` (the
   commands take what they share with it from ``cmdline``), and no cycle of imports passes
   through a command-line module (``cli``, ``cmdline``, ``commands``, ``publish``,
   ``completion``, ``config``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CORE = ("sops_enclave.tree", "sops_enclave.cipher", "sops_enclave.walk",
        "sops_enclave.metadata", "sops_enclave.formats", "sops_enclave.shamir",
        "sops_enclave.goformat", "sops_enclave.goregex", "sops_enclave.merge",
        "sops_enclave.errors", "sops_enclave.record")
ENCLAVE_MAY_IMPORT = CORE + (
    "sops_enclave.enclave", "sops_enclave.keys", "sops_enclave.cms", "sops_enclave.rpc",
    "sops_enclave.fileio",
    "sops_enclave.receipt.builder", "sops_enclave.receipt.statement", "sops_enclave.receipt.dsse",
    "sops_enclave.receipt.cose", "sops_enclave.pack.manifest", "sops_enclave.pack.gitobjects",
    "sops_enclave.pack.enclave_policy", "sops_enclave.pack.sshsig")
ENCLAVE_NEVER = ("sops_enclave.cli", "sops_enclave.cmdline", "sops_enclave.commands",
                 "sops_enclave.api",
                 "sops_enclave.config", "sops_enclave.keyservice",
                 "sops_enclave.image", "sops_enclave.devtools", "sops_enclave.pack.host",
                 "sops_enclave.receipt.cli", "sops_enclave.receipt.verifier")
DEVTOOLS_USERS = ("sops_enclave.devtools", "sops_enclave.commands")
#: The command line: parsing argv, the command table and the commands, and ``.sops.yaml``.
COMMAND_LINE = ("sops_enclave.cli", "sops_enclave.cmdline", "sops_enclave.commands",
                "sops_enclave.publish", "sops_enclave.completion", "sops_enclave.config")
#: The program in the image (``enclave/bundle.py`` beside it is a host-side build tool).
ENCLAVE_PROGRAM = ("sops_enclave.enclave", "sops_enclave.enclave.app",
                   "sops_enclave.enclave.executor", "sops_enclave.enclave.nsm",
                   "sops_enclave.enclave.kms_forwarder")


def _modules() -> dict[str, Path]:
    out = {}
    for f in (ROOT / "sops_enclave").rglob("*.py"):
        if f.name.endswith("_pb2.py") or f.name.endswith("_pb2_grpc.py"):
            continue  # generated gRPC stubs
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    for f in (ROOT / "enclave").glob("*.py"):
        name = "sops_enclave.enclave" if f.stem == "__init__" else f"sops_enclave.enclave.{f.stem}"
        out[name] = f
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, str | None, int]]:
    """(module, imported name or None, line) for every sops_enclave import in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                full = f"{mod}.{a.name}"
                out.append((full, None, node.lineno) if full in MODULES
                           else (mod, a.name, node.lineno))
    return [i for i in out if i[0].startswith("sops_enclave")]


def _under(mod: str, prefixes: tuple[str, ...]) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in prefixes)


def _subpackage(mod: str) -> str:
    parts = mod.split(".")
    target = ".".join(parts[:-1])
    return target if target in MODULES else mod


def test_the_program_is_what_the_image_measures():
    from sops_enclave.image.measure import ENTRY_MODULES

    assert set(ENTRY_MODULES) | {"sops_enclave.enclave"} == set(ENCLAVE_PROGRAM)


def test_the_scan_sees_the_package():
    assert "sops_enclave.enclave.executor" in MODULES and "sops_enclave.walk" in MODULES
    found = {m for m, _, _ in _imports("sops_enclave.enclave.executor",
                                       MODULES["sops_enclave.enclave.executor"])}
    assert "sops_enclave.walk" in found and "sops_enclave.pack.sshsig" in found


@pytest.mark.parametrize("rule", ["core", "enclave", "devtools", "private"])
def test_import_rules(rule):
    bad = []
    for name, path in sorted(MODULES.items()):
        for mod, attr, line in _imports(name, path):
            where = f"{path.relative_to(ROOT)}:{line} imports {mod}{'.' + attr if attr else ''}"
            if rule == "core" and _under(name, CORE) and not _under(mod, CORE):
                bad.append(where)
            elif rule == "enclave" and name in ENCLAVE_PROGRAM and (
                    _under(mod, ENCLAVE_NEVER) or not (
                        _under(mod, ENCLAVE_MAY_IMPORT) or mod == "sops_enclave")):
                bad.append(where)
            elif rule == "devtools" and _under(mod, ("sops_enclave.devtools",)) \
                    and not _under(name, DEVTOOLS_USERS):
                bad.append(where)
            elif rule == "private":
                private = (attr is not None and attr.startswith("_")
                           and not attr.startswith("__")) \
                    or any(p.startswith("_") and not p.startswith("__")
                           for p in mod.split(".")[1:])
                if private and _subpackage(mod) != _subpackage(name) \
                        and not mod.startswith(_subpackage(name) + "."):
                    bad.append(where)
    assert bad == [], "\n".join(bad)


def _graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (function-level imports included)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        deps = set()
        for mod, _, _ in _imports(name, path):
            while mod and mod not in MODULES:
                mod = mod.rpartition(".")[0]
            if mod and mod != name:
                deps.add(mod)
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_nothing_imports_the_cli():
    bad = [f"{path.relative_to(ROOT)}:{line} imports {mod}"
           for name, path in sorted(MODULES.items()) if name != "sops_enclave.__main__"
           for mod, _, line in _imports(name, path) if _under(mod, ("sops_enclave.cli",))]
    assert bad == [], "\n".join(bad)


def test_no_import_cycle_through_the_command_line():
    bad = [" -> ".join(c) for c in _cycles(_graph())
           if any(_under(m, COMMAND_LINE) for m in c)]
    assert bad == [], "\n".join(bad)
