"""The pack manifest (``.sops-enclave.yaml``, DESIGN section 5): targets, outputs, inputs, keys.

Pure: bytes in, objects out. The only I/O is the ``exists(path) -> bool`` callback that
:meth:`Manifest.plan` calls for input paths, so the same code runs on the host (asking git)
and in the enclave (asking the verified git objects)::

    manifest = load_manifest(data, ".sops-enclave.yaml")
    plans = manifest.plan(["api/prod"], exists=lambda path: path in blobs)
    print(manifest.describe(plans))          # the --dry-run text

:func:`load_manifest` checks everything that can be checked without the repository: schema,
types, placeholders, paths, ARNs, extract paths and duplicates after matrix expansion.
:meth:`Manifest.plan` adds target selection and input existence. Every problem raises
:class:`ManifestError` with a one-line message naming the manifest and the offending key, e.g.
``.sops-enclave.yaml: outputs[1].inputs[0]: unknown key 'fiel'``.

Matrix expansion: an output expands over the matrix variables that its strings mention
(``{name}`` in ``target``, ``path``, input ``file`` and ``extract``, and the ``encrypt``
values), in the order the matrix declares them (the first varies slowest), each over its values
in the order listed. An output that mentions no variable is produced once. ``{{`` and ``}}``
are literal braces. Matrix values are substituted as they are, never expanded again.

Paths (inputs and outputs) are repository-relative with ``/`` separators; they are normalised
(``a/./b`` and ``a/x/../b`` become ``a/b``) and refused when absolute, when they leave the
repository, or when they point into ``.git``. An output may not be written over an input, the
manifest, another output or another output's receipt (compared case-insensitively, so the
plan is safe on case-insensitive file systems too).
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import itertools
import json
import posixpath
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import yaml

from sops_enclave.errors import SopsError
from sops_enclave.formats import FORMATS, format_for_path

__all__ = ["ManifestError", "Manifest", "OutputPlan", "InputRef", "EncryptSpec", "load_manifest",
           "DEFAULT_MANIFEST", "MANIFEST_VERSION", "RECEIPT_SUFFIX", "MAX_MANIFEST_BYTES",
           "MAX_OUTPUTS", "MAX_INPUTS_PER_OUTPUT"]

DEFAULT_MANIFEST = ".sops-enclave.yaml"
MANIFEST_VERSION = 1
#: The receipt written next to each output (``receipt.builder.RECEIPT_SUFFIX``; kept equal by a
#: test, not imported, so that this module stays free of the receipt stack).
RECEIPT_SUFFIX = ".receipt.json"

MAX_MANIFEST_BYTES = 1 << 20
#: Outputs after matrix expansion, summed over the manifest.
MAX_OUTPUTS = 4096
#: Inputs one output may merge.
MAX_INPUTS_PER_OUTPUT = 256
_MAX_YAML_ALIASES = 100
_MAX_YAML_DEPTH = 32


class ManifestError(SopsError):
    """The pack manifest is malformed or does not fit the repository (exit 1)."""


# ----------------------------------------------------------------------------- the plan objects

@dataclass(frozen=True)
class InputRef:
    """One input of an output: a repository path, optionally a subtree of it."""

    file: str
    #: The ``extract`` path as components (``'["a"][0]'`` -> ``["a", 0]``), or None.
    extract: list[str | int] | None = None
    optional: bool = False


@dataclass(frozen=True)
class EncryptSpec:
    """The keys an output is encrypted for. ``encryption_context`` goes with every KMS key."""

    kms: list[str] = field(default_factory=list)
    encryption_context: dict[str, str] = field(default_factory=dict)
    age: list[str] = field(default_factory=list)
    #: HashiCorp Vault / OpenBao transit key URIs (``https://HOST:8200/v1/ENGINE/keys/NAME``).
    hc_vault: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class OutputPlan:
    """One output after matrix expansion: where it goes, what it is made of, whom it is for."""

    target: str
    path: str
    format: str
    inputs: list[InputRef]
    encrypt: EncryptSpec
    #: The matrix values this output was expanded with (only the variables it mentions).
    matrix: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------- the manifest

@dataclass(frozen=True)
class Manifest:
    """A parsed, fully checked manifest. ``outputs`` holds every output after expansion, with
    all of its inputs (optional ones included); :meth:`plan` selects and filters."""

    path: str
    version: int
    matrix: dict[str, list[str]]
    outputs: list[OutputPlan]
    #: ``outputs[i]`` of the manifest text that each expanded output comes from.
    sources: list[int] = field(default_factory=list, repr=False, compare=False)

    @property
    def targets(self) -> list[str]:
        """Every target name, in manifest order."""
        return [o.target for o in self.outputs]

    def plan(self, targets: Sequence[str] | None = None, *,
             exists: Callable[[str], bool] | None = None) -> list[OutputPlan]:
        """The outputs to build, in manifest order.

        ``targets``: names to build; ``None`` or empty means all. An unknown name is an error.
        ``exists``: called once per distinct input path (repository-relative, normalised).
        A missing input is an error unless it is ``optional``, in which case it is left out of
        the plan. With ``exists=None`` nothing is checked and every input is kept.
        """
        if isinstance(targets, str):
            raise ManifestError(f"{self.path}: targets must be a list of names, not a string")
        index = {o.target: i for i, o in enumerate(self.outputs)}
        if targets:
            unknown: list[str] = []
            for t in targets:
                if t not in index and t not in unknown:
                    unknown.append(t)
            if unknown:
                names = ", ".join(repr(t) for t in unknown)
                known = ", ".join(self.targets[:20]) + (", ..." if len(self.targets) > 20 else "")
                raise ManifestError(
                    f"{self.path}: unknown target{'s' if len(unknown) > 1 else ''} {names}",
                    hint=f"targets in {self.path}: {known}")
            wanted = set(targets)
            chosen = [i for i, o in enumerate(self.outputs) if o.target in wanted]
        else:
            chosen = list(range(len(self.outputs)))

        seen: dict[str, bool] = {}
        plans = []
        for i in chosen:
            out = self.outputs[i]
            kept = []
            for j, ref in enumerate(out.inputs):
                if exists is not None:
                    if ref.file not in seen:
                        seen[ref.file] = bool(exists(ref.file))
                    if not seen[ref.file]:
                        if ref.optional:
                            continue
                        raise ManifestError(
                            f"{self.path}: outputs[{self._source(i)}].inputs[{j}]: input "
                            f"{ref.file!r} does not exist (target {out.target!r})")
                kept.append(ref)
            if not kept:
                raise ManifestError(
                    f"{self.path}: outputs[{self._source(i)}]: none of the optional inputs "
                    f"exists, so target {out.target!r} has no inputs")
            plans.append(dataclasses.replace(out, inputs=kept))
        return plans

    def describe(self, plans: Iterable[OutputPlan]) -> str:
        """The ``--dry-run`` text: each target's output, inputs and keys.

        Built only from the plan (that is, from the manifest text and the matrix), so it holds
        no secret value by construction. Optional inputs that :meth:`plan` left out are listed
        as skipped.
        """
        plans = list(plans)
        full = {o.target: o for o in self.outputs}
        lines = [f"manifest {self.path}: {len(plans)} of {len(self.outputs)} "
                 f"target{'s' if len(self.outputs) != 1 else ''}"]
        for p in plans:
            lines.append(f"target {p.target}")
            if p.matrix:
                lines.append("  matrix   " + " ".join(f"{k}={v}" for k, v in p.matrix.items()))
            lines.append(f"  output   {p.path} ({p.format})")
            lines.append(f"  receipt  {p.path}{RECEIPT_SUFFIX}")
            for ref in p.inputs:
                lines.append("  input    " + _describe_input(ref))
            for ref in _skipped(full.get(p.target), p):
                lines.append("  skipped  " + _describe_input(ref) + " not found")
            for arn in p.encrypt.kms:
                lines.append(f"  kms      {arn}")
            if p.encrypt.kms and p.encrypt.encryption_context:
                lines.append("  context  " + json.dumps(p.encrypt.encryption_context,
                                                        ensure_ascii=False))
            for r in p.encrypt.age:
                lines.append(f"  age      {r}")
            for u in p.encrypt.hc_vault:
                lines.append(f"  hc_vault {u}")
        return "\n".join(lines)

    def _source(self, i: int) -> int:
        return self.sources[i] if i < len(self.sources) else i


def _vault_uri_problem(uri: str) -> str:
    """Why ``uri`` is not a Vault transit key URI as sops reads it (``""``: it is one)."""
    from ..keys.hcvault import canonical_uri

    try:
        if canonical_uri(uri) != uri:
            return "write it as http(s)://HOST[:PORT]/v1/ENGINE/keys/NAME"
    except SopsError as e:
        return e.message
    return ""


def _describe_input(ref: InputRef) -> str:
    s = ref.file
    if ref.extract is not None:
        s += " extract " + _format_extract(ref.extract)
    if ref.optional:
        s += " (optional)"
    return s


def _skipped(full: OutputPlan | None, planned: OutputPlan) -> list[InputRef]:
    """Optional inputs of ``full`` that ``planned`` (a filtered copy) left out."""
    if full is None:
        return []
    out, k = [], 0
    for ref in full.inputs:
        if k < len(planned.inputs) and planned.inputs[k] == ref:
            k += 1
        elif ref.optional:
            out.append(ref)
    return out


def _format_extract(path: Sequence[str | int]) -> str:
    parts = []
    for c in path:
        if isinstance(c, int):
            parts.append(f"[{c}]")
        elif '"' in c:
            parts.append(f"['{c}']")
        else:
            parts.append(f'["{c}"]')
    return "".join(parts)


# ----------------------------------------------------------------------------- YAML

# PyYAML has no type stubs here (SafeLoader is Any): subclassing it is intended.
class _Loader(yaml.SafeLoader):  # type: ignore[misc]
    """SafeLoader that refuses duplicate keys, and bounds aliases and nesting."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > _MAX_YAML_ALIASES:
                raise yaml.composer.ComposerError(
                    None, None, f"more than {_MAX_YAML_ALIASES} aliases",
                    self.peek_event().start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > _MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {_MAX_YAML_DEPTH} levels",
                    self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<` merges fill in keys; explicit keys may override them
                key = self.construct_object(key_node, deep=True)
                try:
                    dup = key in seen
                except TypeError:
                    raise yaml.constructor.ConstructorError(
                        None, None, "a map key is not a string", key_node.start_mark) from None
                if dup:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(data: bytes | str, path: str) -> Any:
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path}: the manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not UTF-8 text (byte {e.start})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = "; ".join(x.strip() for x in (e.context, e.problem) if x) or "invalid YAML"
        raise ManifestError(f"{path}: {where}{problem}") from None
    except (yaml.YAMLError, RecursionError, ValueError) as e:
        raise ManifestError(f"{path}: invalid YAML: {(str(e).splitlines() or ['?'])[0]}") from None
    except (AttributeError, KeyError, IndexError, TypeError):
        # PyYAML's constructors fail this way on explicit tags they cannot build (!!bool x).
        raise ManifestError(f"{path}: invalid YAML: a tagged value cannot be read") from None


# ----------------------------------------------------------------------------- checks

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
# arn:PARTITION:kms:REGION:ACCOUNT:(key|alias)/NAME, e.g. arn:aws-us-gov:kms:us-gov-west-1:...
_ARN = re.compile(r"arn:aws[A-Za-z0-9_-]*:kms:[a-z]{2,}(?:-[a-z]+)+-[0-9]+:[0-9]{12}:"
                  r"(?:key|alias)/[A-Za-z0-9/_.-]+", re.ASCII)
_AGE = re.compile(r"age1[0-9a-z]{10,}|ssh-(?:ed25519|rsa) [A-Za-z0-9+/=]+(?: [^\s].*)?",
                  re.ASCII)
# One component of a sops --extract path: ["key"], ['key'] or [index].
_EXTRACT = re.compile(r"""\[(?:"([^"\[]*)"|'([^'\[]*)'|([0-9]+))\]""")
# Characters that could hide text in a terminal or a log (controls, bidi overrides, ...).
_HIDDEN = frozenset(("Cc", "Cf", "Cs", "Co", "Zl", "Zp"))

_TOP_KEYS = ("version", "matrix", "outputs")
_OUTPUT_KEYS = ("target", "path", "format", "inputs", "encrypt")
_INPUT_KEYS = ("file", "extract", "optional")
_ENCRYPT_KEYS = ("kms", "encryption_context", "age", "hc_vault")

# A template: literal text and variable names, in order.
_Template = tuple[tuple[bool, str], ...]


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    for t, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"),
                    (str, "a string"), (list, "a list"), (dict, "a map"),
                    (bytes, "binary data"), (datetime.date, "a date")):
        if isinstance(v, t):
            return name
    return f"a {type(v).__name__}"


#: A rendered target, path or value longer than this is refused (placeholders multiply text).
MAX_RENDERED = 4096


def _render(t: _Template, binding: dict[str, str]) -> str:
    size = sum(len(binding[s]) if is_var else len(s) for is_var, s in t)
    if size > MAX_RENDERED:
        raise ManifestError(f"a value renders to {size} characters; at most {MAX_RENDERED}")
    return "".join(binding[s] if is_var else s for is_var, s in t)


def _parse_extract(s: str) -> list[str | int] | None:
    """The components of a sops ``--extract`` path, or None when it is not one.

    A strict subset of ``api.parse_tree_path`` (same results where both accept): quotes must
    match, an index is digits only, and at least one component is required.
    """
    out: list[str | int] = []
    pos = 0
    while pos < len(s):
        m = _EXTRACT.match(s, pos)
        if not m:
            return None
        if m.group(3) is not None:
            out.append(int(m.group(3)))
        else:
            out.append(m.group(1) if m.group(1) is not None else m.group(2))
        pos = m.end()
    return out or None


@dataclass
class _RawInput:
    file: _Template
    extract: _Template | None
    optional: bool


@dataclass
class _RawOutput:
    index: int
    target: _Template
    path: _Template
    format: str | None
    inputs: list[_RawInput]
    kms: list[_Template]
    context: list[tuple[str, _Template]]
    age: list[_Template]
    hc_vault: list[_Template]
    variables: list[str]


class _Checker:
    def __init__(self, path: str) -> None:
        self.path = path
        self.matrix: dict[str, list[str]] = {}

    def fail(self, where: str, msg: str, hint: str | None = None) -> ManifestError:
        return ManifestError(f"{self.path}: {where}: {msg}" if where else f"{self.path}: {msg}",
                             hint=hint)

    # -- shapes

    def mapping(self, v: Any, where: str, allowed: Sequence[str], required: Sequence[str] = ()
            ) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise self.fail(where, f"expected a map, got {_type_name(v)}")
        for k in v:
            if not isinstance(k, str) or k not in allowed:
                close = difflib.get_close_matches(k, allowed, n=1) if isinstance(k, str) else []
                hint = (f"did you mean {close[0]!r}? " if close else "") + \
                    f"{where or 'the manifest'} takes: {', '.join(allowed)}"
                raise self.fail(where, f"unknown key {k!r}", hint=hint)
        for k in required:
            if k not in v:
                raise self.fail(where, f"missing key {k!r}")
        return v

    def seq(self, v: Any, where: str, *, non_empty: bool = False) -> list[Any]:
        if not isinstance(v, list):
            raise self.fail(where, f"expected a list, got {_type_name(v)}")
        if non_empty and not v:
            raise self.fail(where, "must not be empty")
        return v

    def string(self, v: Any, where: str) -> str:
        if not isinstance(v, str):
            hint = "quote it to make it a string" if isinstance(v, (bool, int, float)) else None
            raise self.fail(where, f"expected a string, got {_type_name(v)}", hint=hint)
        if not v:
            raise self.fail(where, "must not be empty")
        bad = next((c for c in v if unicodedata.category(c) in _HIDDEN), None)
        if bad is not None:
            raise self.fail(where, f"contains the control or format character U+{ord(bad):04X}")
        return v

    def template(self, v: Any, where: str) -> _Template:
        s = self.string(v, where)
        parts: list[tuple[bool, str]] = []
        pos = 0
        for m in _TOKEN.finditer(s):
            if m.start() > pos:
                parts.append((False, s[pos:m.start()]))
            tok = m.group(0)
            if tok in ("{{", "}}"):
                parts.append((False, tok[0]))
            elif tok in ("{", "}"):
                raise self.fail(where, f"unbalanced {tok!r} in {s!r}",
                                hint="write {{ or }} for a literal brace")
            else:
                name = m.group(1)
                if not _NAME.fullmatch(name):
                    raise self.fail(where, f"placeholder {tok} is not a variable name")
                if name not in self.matrix:
                    known = ", ".join(self.matrix) or "none: the manifest has no matrix"
                    raise self.fail(where, f"placeholder {tok} names no matrix variable",
                                    hint=f"matrix variables: {known}")
                parts.append((True, name))
            pos = m.end()
        if pos < len(s):
            parts.append((False, s[pos:]))
        return tuple(parts)

    def repo_path(self, s: str, where: str, what: str, about: str = "") -> str:
        """A normalised repository-relative path, or an error naming ``where``."""
        problem = None
        norm = posixpath.normpath(s)
        if "\\" in s:
            problem = "contains a backslash; separate with /"
        elif s.startswith("/"):
            problem = "is absolute; paths are relative to the repository root"
        elif s.endswith("/"):
            problem = "names a directory, not a file"
        elif norm == ".":
            problem = "names the repository root, not a file"
        elif norm == ".." or norm.startswith("../"):
            problem = "leaves the repository"
        elif any(part.casefold() == ".git" for part in norm.split("/")):
            problem = "is inside .git"
        if problem:
            raise self.fail(where, f"{what} {s!r} {problem}{about}")
        return norm

    # -- the schema

    def top(self, doc: Any) -> tuple[int, list[_RawOutput]]:
        if not isinstance(doc, dict):
            raise self.fail("", f"the manifest must be a map with 'version' and 'outputs', got "
                                f"{_type_name(doc)}")
        self.mapping(doc, "", _TOP_KEYS, required=("version", "outputs"))
        version = doc["version"]
        if not isinstance(version, int) or isinstance(version, bool):
            raise self.fail("version", f"expected an integer, got {_type_name(version)}")
        if version != MANIFEST_VERSION:
            raise self.fail("version", f"unsupported version {version} (this sops-enclave "
                                       f"reads version {MANIFEST_VERSION})")
        if doc.get("matrix") is not None:
            self.parse_matrix(doc["matrix"])
        outputs = self.seq(doc["outputs"], "outputs", non_empty=True)
        return version, [self.parse_output(i, o) for i, o in enumerate(outputs)]

    def parse_matrix(self, m: Any) -> None:
        if not isinstance(m, dict):
            raise self.fail("matrix", f"expected a map of name -> list of values, got "
                                      f"{_type_name(m)}")
        for name, values in m.items():
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise self.fail("matrix", f"variable name {name!r} is not a name "
                                          "(letters, digits, _)")
            where = f"matrix.{name}"
            values = self.seq(values, where, non_empty=True)
            out: list[str] = []
            for k, v in enumerate(values):
                s = self.string(v, f"{where}[{k}]")
                if s in out:
                    raise self.fail(f"{where}[{k}]", f"duplicate value {s!r}")
                out.append(s)
            self.matrix[name] = out

    def parse_output(self, i: int, o: Any) -> _RawOutput:
        where = f"outputs[{i}]"
        self.mapping(o, where, _OUTPUT_KEYS, required=("target", "path", "inputs", "encrypt"))
        target = self.template(o["target"], f"{where}.target")
        path = self.template(o["path"], f"{where}.path")
        fmt = None
        if "format" in o:
            fmt = self.string(o["format"], f"{where}.format")
            if fmt not in FORMATS:
                raise self.fail(f"{where}.format", f"unknown format {fmt!r}",
                                hint=f"formats: {', '.join(FORMATS)}")
        raw_inputs = self.seq(o["inputs"], f"{where}.inputs", non_empty=True)
        if len(raw_inputs) > MAX_INPUTS_PER_OUTPUT:
            raise self.fail(f"{where}.inputs", f"{len(raw_inputs)} inputs; at most "
                            f"{MAX_INPUTS_PER_OUTPUT} per output")
        inputs = [self.parse_input(f"{where}.inputs[{j}]", v) for j, v in enumerate(raw_inputs)]
        ew = f"{where}.encrypt"
        enc = self.mapping(o["encrypt"], ew, _ENCRYPT_KEYS)
        kms = [self.template(v, f"{ew}.kms[{k}]")
               for k, v in enumerate(self.seq(enc.get("kms", []), f"{ew}.kms"))]
        age = [self.template(v, f"{ew}.age[{k}]")
               for k, v in enumerate(self.seq(enc.get("age", []), f"{ew}.age"))]
        vault = [self.template(v, f"{ew}.hc_vault[{k}]")
                 for k, v in enumerate(self.seq(enc.get("hc_vault", []), f"{ew}.hc_vault"))]
        context: list[tuple[str, _Template]] = []
        ctx = enc.get("encryption_context", {})
        if not isinstance(ctx, dict):
            raise self.fail(f"{ew}.encryption_context",
                            f"expected a map of string -> string, got {_type_name(ctx)}")
        for k, v in ctx.items():
            key = self.string(k, f"{ew}.encryption_context")
            if "{" in key or "}" in key:
                raise self.fail(f"{ew}.encryption_context",
                                f"key {key!r}: placeholders are allowed in values only")
            context.append((key, self.template(v, f"{ew}.encryption_context.{key}")))
        if not kms and not age and not vault:
            raise self.fail(ew, "no keys: give KMS key ARNs (kms), age recipients (age) or "
                                "Vault transit key URIs (hc_vault)")
        if context and not kms:
            raise self.fail(f"{ew}.encryption_context", "is only used with kms keys, and "
                                                        "there are none")
        used = {name for t in [target, path, *kms, *age, *vault, *(t for _, t in context),
                               *(r.file for r in inputs),
                               *(r.extract for r in inputs if r.extract is not None)]
                for is_var, name in t if is_var}
        variables = [n for n in self.matrix if n in used]
        return _RawOutput(i, target, path, fmt, inputs, kms, context, age, vault, variables)

    def parse_input(self, where: str, v: Any) -> _RawInput:
        if isinstance(v, str):
            return _RawInput(self.template(v, where), None, False)
        if not isinstance(v, dict):
            raise self.fail(where, f"expected a path or a map with 'file', got {_type_name(v)}")
        self.mapping(v, where, _INPUT_KEYS, required=("file",))
        file = self.template(v["file"], f"{where}.file")
        extract = self.template(v["extract"], f"{where}.extract") if "extract" in v else None
        optional = v.get("optional", False)
        if not isinstance(optional, bool):
            raise self.fail(f"{where}.optional", f"expected true or false, got "
                                                 f"{_type_name(optional)}")
        return _RawInput(file, extract, optional)

    # -- expansion

    def expand(self, raw: list[_RawOutput]) -> tuple[list[OutputPlan], list[int]]:
        total = 0
        for r in raw:
            n = 1
            for name in r.variables:
                n *= len(self.matrix[name])
            total += n
            if total > MAX_OUTPUTS:
                raise self.fail(f"outputs[{r.index}]", f"the matrix expands to more than "
                                                       f"{MAX_OUTPUTS} outputs")
        plans: list[OutputPlan] = []
        sources: list[int] = []
        for r in raw:
            for values in itertools.product(*(self.matrix[n] for n in r.variables)):
                binding = dict(zip(r.variables, values))
                plans.append(self.concrete(r, binding))
                sources.append(r.index)
        self.check_collisions(plans, sources)
        return plans, sources

    def concrete(self, r: _RawOutput, binding: dict[str, str]) -> OutputPlan:
        w = f"outputs[{r.index}]"
        target = _render(r.target, binding)
        about = f" (target {target!r})"
        if any(c.isspace() for c in target) or target.startswith("-"):
            raise self.fail(f"{w}.target", f"target {target!r} must not contain white space "
                                           "or start with '-'")

        def fail(where: str, msg: str) -> ManifestError:
            return self.fail(where, msg + about)

        path = self.repo_path(_render(r.path, binding), f"{w}.path", "output path", about)
        if path.endswith(RECEIPT_SUFFIX):
            raise fail(f"{w}.path", f"output path {path!r} ends with {RECEIPT_SUFFIX}, "
                                    "which is reserved for receipts")
        inputs = []
        for j, ri in enumerate(r.inputs):
            iw = f"{w}.inputs[{j}]"
            file = self.repo_path(_render(ri.file, binding), iw, "input", about)
            extract = None
            if ri.extract is not None:
                text = _render(ri.extract, binding)
                extract = _parse_extract(text)
                if extract is None:
                    raise fail(f"{iw}.extract", f"{text!r} is not an extract path like "
                                                "[\"key\"][0]")
            inputs.append(InputRef(file, extract, ri.optional))
        kms: list[str] = []
        for k, t in enumerate(r.kms):
            arn = _render(t, binding)
            if not _ARN.fullmatch(arn):
                raise fail(f"{w}.encrypt.kms[{k}]", f"{arn!r} is not a KMS key ARN "
                                                    "(arn:aws:kms:REGION:ACCOUNT:key/ID or "
                                                    "alias/NAME)")
            if arn in kms:
                raise fail(f"{w}.encrypt.kms[{k}]", f"{arn!r} is listed twice")
            kms.append(arn)
        age: list[str] = []
        for k, t in enumerate(r.age):
            rec = _render(t, binding)
            if not _AGE.fullmatch(rec):
                raise fail(f"{w}.encrypt.age[{k}]", f"{rec!r} is not an age recipient "
                                                    "(age1... or ssh-ed25519/ssh-rsa)")
            if rec in age:
                raise fail(f"{w}.encrypt.age[{k}]", f"{rec!r} is listed twice")
            age.append(rec)
        vault: list[str] = []
        for k, t in enumerate(r.hc_vault):
            uri = _render(t, binding)
            why = _vault_uri_problem(uri)
            if why:
                raise fail(f"{w}.encrypt.hc_vault[{k}]", f"{uri!r} is not a Vault transit key "
                                                         f"URI ({why})")
            if uri in vault:
                raise fail(f"{w}.encrypt.hc_vault[{k}]", f"{uri!r} is listed twice")
            vault.append(uri)
        context = {k: _render(t, binding) for k, t in r.context}
        fmt = r.format or format_for_path(path)
        return OutputPlan(target, path, fmt, inputs, EncryptSpec(kms, context, age, vault),
                          dict(binding))

    def check_collisions(self, plans: list[OutputPlan], sources: list[int]) -> None:
        targets: dict[str, int] = {}
        written: dict[str, tuple[str, int]] = {}
        for n, p in enumerate(plans):
            w = f"outputs[{sources[n]}]"
            if p.target in targets:
                raise self.fail(f"{w}.target", f"target {p.target!r} is also made by "
                                               f"outputs[{sources[targets[p.target]]}]")
            targets[p.target] = n
            for what, path in (("output path", p.path),
                               ("receipt", p.path + RECEIPT_SUFFIX)):
                key = path.casefold()
                if key in written:
                    other_what, m = written[key]
                    raise self.fail(f"{w}.path",
                                    f"{what} {path!r} (target {p.target!r}) is also the "
                                    f"{other_what} of target {plans[m].target!r}")
                written[key] = (what, n)
        manifest = posixpath.normpath(self.path).casefold()
        if manifest in written:
            what, m = written[manifest]
            raise self.fail(f"outputs[{sources[m]}].path",
                            f"the {what} of target {plans[m].target!r} would overwrite "
                            "the manifest")
        for n, p in enumerate(plans):
            for j, ref in enumerate(p.inputs):
                hit = written.get(ref.file.casefold())
                if hit:
                    what, m = hit
                    raise self.fail(f"outputs[{sources[n]}].inputs[{j}]",
                                    f"input {ref.file!r} (target {p.target!r}) would be "
                                    f"overwritten: it is the {what} of target "
                                    f"{plans[m].target!r}")


def load_manifest(data: bytes, path: str = DEFAULT_MANIFEST) -> Manifest:
    """Parse and check a manifest; ``path`` names it in error messages (and is the path that
    outputs may not overwrite). Raises :class:`ManifestError`."""
    checker = _Checker(path)
    doc = _parse_yaml(data, path)
    version, raw = checker.top(doc)
    plans, sources = checker.expand(raw)
    return Manifest(path, version, {k: list(v) for k, v in checker.matrix.items()}, plans,
                    sources)
