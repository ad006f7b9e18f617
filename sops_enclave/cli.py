"""The ``sops-enclave`` command: sops' command line, plus the enclave commands.

This is the only module that reads argv, prints, and turns errors into exit codes (one
``except SopsError`` in :func:`main`). It follows sops 3.11 (urfave/cli v1): global flags go
before a subcommand; a subcommand's flags may come before or after its file; in the legacy
form (``sops-enclave -d FILE``) anything after the file is ignored with a warning.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Any, Callable, Sequence

from sops_enclave import __version__
from sops_enclave.errors import ConflictingParameters, SopsError

__all__ = ["main"]

_BOOL_FLAGS = {"ignore-mac", "in-place", "enable-local-keyservice", "mac-only-encrypted",
               "verbose", "decrypt", "encrypt", "rotate", "disable-version-check",
               "check-for-updates", "version", "show-master-keys", "yes", "recursive",
               "omit-extensions", "idempotent", "value-file", "value-stdin", "pristine",
               "same-process", "no-fifo", "background"}


class _UsageError(SopsError):
    exit_code = 1


class _Parser(argparse.ArgumentParser):
    def __init__(self, *a: Any, **kw: Any):
        kw.setdefault("allow_abbrev", False)
        super().__init__(*a, **kw)

    def error(self, message: str) -> None:  # type: ignore[override]
        if message.startswith("unrecognized arguments: -"):
            # urfave/cli's parse error, reported through sops' logger (exit 1)
            from sops_enclave.errors import LoggedFatal

            name = message.split()[2].lstrip("-").partition("=")[0]
            raise LoggedFatal(f"flag provided but not defined: -{name}")
        raise _UsageError(f"Incorrect Usage: {message}\n(see '{self.prog} --help')")


def _warn(msg: str) -> None:
    """A warning on sops' ``CMD`` logger line."""
    from sops_enclave.errors import logrus_line

    print(logrus_line("CMD", "warning", msg), file=sys.stderr)


def _go_flags(argv: list[str], parser: argparse.ArgumentParser, *,
              stop_at_positional: bool) -> list[str]:
    """Go's flag syntax, as sops parses it: ``-name`` and ``--name`` alike for every name
    (``-decrypt``, ``--d``, ``-ignore-mac``), ``-name=value``, and the argument after a
    flag that takes a value is that value even when it starts with ``-``. Known names are
    rewritten to the parser's long option (values joined with ``=``); unknown ones are left
    for argparse to refuse. The global flags end at the first positional argument."""
    names: dict[str, tuple[str, bool]] = {}
    for act in parser._actions:
        if not act.option_strings:
            continue
        canon = next((o for o in act.option_strings if o.startswith("--")),
                     act.option_strings[0])
        for o in act.option_strings:
            names[o.lstrip("-")] = (canon, act.nargs != 0)
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            return out + argv[i:]
        if not a.startswith("-") or a == "-":
            if stop_at_positional:
                return out + argv[i:]
            out.append(a)
            i += 1
            continue
        name, eq, value = a.lstrip("-").partition("=")
        if name not in names or a.startswith("---"):
            out.append(a)
            i += 1
            continue
        canon, takes_value = names[name]
        if takes_value and not eq and i + 1 < len(argv):
            out.append(f"{canon}={argv[i + 1]}")
            i += 2
            continue
        out.append(f"{canon}={value}" if eq else canon)
        i += 1
    return out


def _add_key_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-k", "--kms", metavar="ARNS", help="comma-separated AWS KMS ARNs "
                   "(ARN+ROLE_ARN for a role) [$SOPS_KMS_ARN]")
    p.add_argument("--aws-profile", default="", help="the AWS profile for KMS keys")
    p.add_argument("-p", "--pgp", metavar="FPS", help="comma-separated PGP fingerprints "
                   "[$SOPS_PGP_FP]")
    p.add_argument("-a", "--age", metavar="RECIPIENTS", help="comma-separated age recipients "
                   "[$SOPS_AGE_RECIPIENTS]")
    p.add_argument("--gcp-kms", metavar="IDS", help="comma-separated GCP KMS resource IDs "
                   "[$SOPS_GCP_KMS_IDS]")
    p.add_argument("--hckms", metavar="IDS", help="comma-separated HuaweiCloud KMS key IDs, "
                   "region:key-uuid [$SOPS_HUAWEICLOUD_KMS_IDS]")
    p.add_argument("--azure-kv", metavar="URLS", help="comma-separated Azure Key Vault key "
                   "URLs, https://VAULT/keys/NAME[/VERSION] [$SOPS_AZURE_KEYVAULT_URLS]")
    p.add_argument("--hc-vault-transit", metavar="URIS", help="comma-separated Vault transit "
                   "key URIs, https://HOST:8200/v1/ENGINE/keys/NAME [$SOPS_VAULT_URIS]")
    p.add_argument("--encryption-context", default="", help="KMS encryption context, "
                   "k1:v1,k2:v2")
    p.add_argument("--shamir-secret-sharing-threshold", type=int, default=0, metavar="N",
                   help="number of key groups needed to decrypt")


def _add_rule_flags(p: argparse.ArgumentParser, comments: bool) -> None:
    p.add_argument("--unencrypted-suffix", help="keys ending with this stay in clear text "
                   "(default _unencrypted)")
    p.add_argument("--encrypted-suffix", help="only keys ending with this are encrypted")
    p.add_argument("--unencrypted-regex", help="keys matching this stay in clear text")
    p.add_argument("--encrypted-regex", help="only keys matching this are encrypted")
    if comments:
        p.add_argument("--unencrypted-comment-regex", help="values after a matching comment "
                       "stay in clear text")
        p.add_argument("--encrypted-comment-regex", help="only values after a matching comment "
                       "are encrypted")
        p.add_argument("--mac-only-encrypted", action="store_true", default=None,
                       help="compute the MAC over encrypted values only")


def _add_io_flags(p: argparse.ArgumentParser, decrypt: bool) -> None:
    p.add_argument("-i", "--in-place", action="store_true", help="write the result to the file")
    p.add_argument("--output", help="write the result to this file (atomically)")
    p.add_argument("--input-type", help="yaml, json, dotenv, ini or binary (default: from the "
                   "file extension)")
    p.add_argument("--output-type", help="yaml, json, dotenv, ini or binary (default: from the "
                   "file extension)")
    p.add_argument("--filename-override", help="use this name to pick the format and the "
                   ".sops.yaml rule (required for stdin with encrypt)")
    p.add_argument("--keyservice", action="append", default=[], help="also use this key "
                   "service: tcp://host:port or unix:///path.sock [$SOPS_KEYSERVICE]")
    p.add_argument("--enable-local-keyservice", action="store_true", default=None,
                   help="use keys held by this process (default true; "
                   "--enable-local-keyservice=false to use only --keyservice)")
    if decrypt:
        p.add_argument("--extract", help='print only this part, e.g. \'["db"]["password"]\'')
        p.add_argument("--ignore-mac", action="store_true", help="skip the MAC check (dangerous)")
        p.add_argument("--decryption-order", help="key types to try first, default age,pgp "
                       "[$SOPS_DECRYPTION_ORDER]")


def _global_parser() -> _Parser:
    p = _Parser(prog="sops-enclave", add_help=True,
                description="A drop-in for sops (decrypt, encrypt, ...) with enclave-backed "
                "packing and verifiable receipts. Legacy form: sops-enclave [-d|-e] FILE.",
                epilog="Commands: decrypt, encrypt, rotate, edit, set, unset, filestatus, groups, "
                "updatekeys, exec-env, exec-file, keyservice, publish, completion, exec, dev, "
                "attestation, verify, audit, "
                "measure, policy. "
                "Run 'sops-enclave COMMAND --help' for a command's flags.")
    p.add_argument("-d", "--decrypt", action="store_true", help="decrypt FILE to stdout")
    p.add_argument("-e", "--encrypt", action="store_true", help="encrypt FILE to stdout")
    p.add_argument("-r", "--rotate", action="store_true", help="rotate the data key of FILE")
    for kind in ("kms", "pgp", "gcp-kms", "hckms", "azure-kv", "hc-vault-transit", "age"):
        p.add_argument(f"--add-{kind}", help=argparse.SUPPRESS)
        p.add_argument(f"--rm-{kind}", help=argparse.SUPPRESS)
    p.add_argument("--set", metavar="'PATH VALUE'", help="legacy form of set: "
                   "--set '[\"key\"][0] JSON-VALUE' FILE (split at the first '] ')")
    p.add_argument("-s", "--show-master-keys", action="store_true",
                   help="edit: show the sops metadata in the editor")
    _add_io_flags(p, decrypt=True)
    _add_key_flags(p)
    _add_rule_flags(p, comments=True)
    p.add_argument("--config", help="path to .sops.yaml [$SOPS_CONFIG]")
    p.add_argument("--indent", type=int, help="indentation of YAML/JSON output (legacy form)")
    p.add_argument("--verbose", action="store_true", help="show tracebacks")
    p.add_argument("-v", "--version", action="store_true", help="print the version (first "
                   "line as sops': 'sops 3.11.0 ...')")
    p.add_argument("--disable-version-check", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--check-for-updates", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("file", nargs="?", help="the file to work on")
    return p


def _decrypt_parser() -> _Parser:
    p = _Parser(prog="sops-enclave decrypt", description="Decrypt a SOPS file (stdin when no "
                "FILE) and print the plaintext.")
    _add_io_flags(p, decrypt=True)
    p.add_argument("--verbose", action="store_true", help="show tracebacks")
    p.add_argument("file", nargs="?")
    return p


def _encrypt_parser() -> _Parser:
    p = _Parser(prog="sops-enclave encrypt", description="Encrypt a plaintext file (stdin with "
                "--filename-override) with the keys from flags or .sops.yaml.")
    _add_io_flags(p, decrypt=False)
    _add_key_flags(p)
    _add_rule_flags(p, comments=False)
    p.add_argument("--verbose", action="store_true", help="show tracebacks")
    p.add_argument("file", nargs="?")
    return p


def _preprocess_bools(argv: list[str]) -> tuple[list[str], dict[str, bool]]:
    """Go bool flags accept ``--flag=false``; argparse does not. Pull those out."""
    out, overrides = [], {}
    for a in argv:
        if a.startswith("-") and "=" in a:
            name, _, val = a.lstrip("-").partition("=")
            if name in _BOOL_FLAGS:
                v = val.lower() in ("1", "t", "true")
                overrides[name.replace("-", "_")] = v
                if v:
                    out.append("--" + name)
                continue
        out.append(a)
    return out, overrides


# ------------------------------------------------------------------ shared option handling

class _Ctx:
    """What a command needs from flags and the environment, resolved once."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str], cwd: str):
        self.args = args
        self.env = env
        self.cwd = cwd

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self.args, name, default)

    def abs(self, path: str) -> str:
        return _abs(path, self.cwd)

    def write_result(self, data: bytes, in_path: str | None) -> None:
        _write_result(self, data, in_path)

    def services(self) -> list:
        from sops_enclave.keys.groups import LocalKeyService

        enable = self.get("enable_local_keyservice")
        if enable is None:
            enable = self.env.get("SOPS_ENABLE_LOCAL_KEYSERVICE", "true").lower() not in ("false", "0", "f")
        uris = list(self.get("keyservice") or [])
        if not uris and self.env.get("SOPS_KEYSERVICE"):
            uris = [u for u in self.env["SOPS_KEYSERVICE"].split(",") if u]
        svcs: list = [LocalKeyService(self.env)] if enable else []
        if uris:
            from sops_enclave.keyservice.client import RemoteKeyService

            svcs += [RemoteKeyService(u) for u in uris]
        return svcs

    def decryption_order(self) -> list[str]:
        from sops_enclave.keys.groups import parse_decryption_order

        return parse_decryption_order(self.get("decryption_order")
                                      or self.env.get("SOPS_DECRYPTION_ORDER") or None)

    def config(self, path_for_rules: str):
        """The loaded .sops.yaml (or None) — search from the cwd, or --config/SOPS_CONFIG."""
        explicit = self.get("config") or self.env.get("SOPS_CONFIG")
        if not explicit and not _has_config_file(self.cwd):
            return None, None  # nothing to read: skip importing the config machinery
        from sops_enclave import config as cfgmod

        explicit = self.get("config") or self.env.get("SOPS_CONFIG")
        cfg_path = explicit or cfgmod.find_config(self.cwd)
        if not cfg_path:
            return None, None
        try:
            with open(cfg_path, "rb") as f:
                data = f.read()
        except OSError as e:  # Go's os.ReadFile error, as sops wraps it
            from sops_enclave.errors import go_errno_text

            op = "read" if isinstance(e, IsADirectoryError) else "open"
            raise SopsError(f"could not read config file: {op} {cfg_path}: "
                            f"{go_errno_text(e)}") from None
        return cfgmod.load_config(data, cfg_path), cfg_path

    def store_config(self, cfg) -> Any:
        from sops_enclave.api import StoreConfig

        sc = StoreConfig()
        if cfg is not None:
            st = getattr(cfg, "stores", None)
            if st is not None:
                sc = StoreConfig(yaml_indent=getattr(st, "yaml_indent", 0) or 0,
                                 json_indent=getattr(st, "json_indent", -1),
                                 json_binary_indent=getattr(st, "json_binary_indent", -1))
        indent = self.get("legacy_indent")
        if indent is not None:
            sc = StoreConfig(indent, indent, indent)
        return sc


def _has_config_file(start: str) -> bool:
    """Whether a .sops.yaml (or a .sops.yml to warn about) exists in start or its parents."""
    d = os.path.abspath(start)
    for _ in range(100):
        if os.path.exists(os.path.join(d, ".sops.yaml")) or \
                os.path.exists(os.path.join(d, ".sops.yml")):
            return True
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    return False


def _abs(path: str, cwd: str) -> str:
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(cwd, path))


def _write_result(ctx: _Ctx, data: bytes, in_path: str | None) -> None:
    from sops_enclave.fileio import write_atomic

    if ctx.get("in_place"):
        assert in_path is not None
        write_atomic(in_path, data)
        return
    out = ctx.get("output")
    if out:
        write_atomic(_abs(out, ctx.cwd), data)
        return
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _check_io_flags(ctx: _Ctx, file: str | None) -> None:
    if ctx.get("in_place") and ctx.get("output"):
        raise ConflictingParameters("Error: cannot operate on both --output and --in-place")
    if file is None and ctx.get("in_place"):
        raise ConflictingParameters("Error: cannot use --in-place when reading from stdin")


def _read(ctx: _Ctx, file: str | None) -> tuple[bytes, str | None, str]:
    """(content, absolute input path or None for stdin, path used to pick formats/rules)."""
    from sops_enclave.fileio import read_input

    override = ctx.get("filename_override")
    if file is None:
        from sops_enclave.fileio import read_stream

        data = read_stream(sys.stdin.buffer)
        name = _abs(override, ctx.cwd) if override else ""
        return data, None, name
    path = _abs(file, ctx.cwd)
    data = read_input(path)
    return data, path, _abs(override, ctx.cwd) if override else path


# ------------------------------------------------------------------ decrypt / encrypt

def _do_decrypt(ctx: _Ctx, file: str | None) -> int:
    from sops_enclave import api
    from sops_enclave.formats import resolve_format

    _check_io_flags(ctx, file)
    data, in_path, name = _read(ctx, file)
    in_fmt = resolve_format(ctx.get("input_type"), name)
    out_fmt = resolve_format(ctx.get("output_type"), name)
    cfg, _ = _safe_config(ctx, name)
    extract = None
    if ctx.get("extract"):
        extract = api.parse_tree_path(ctx.get("extract"))
    order = ctx.decryption_order()
    d = api.decrypt_document(data, in_fmt, services=ctx.services(),
                             ignore_mac=bool(ctx.get("ignore_mac")), decryption_order=order)
    sc = ctx.store_config(cfg)
    if extract is not None:
        value = api.extract(d.branches[0], extract)
        out = api.emit_extracted(value, out_fmt, sc)
    else:
        out = api.emit_plain(d.branches, out_fmt, sc)
    _write_result(ctx, out, in_path)
    return 0


def _safe_config(ctx: _Ctx, name: str):
    """The config for its ``stores`` settings; a broken file fails decrypt too, as in sops."""
    return ctx.config(name)


def _encrypt_options(ctx: _Ctx, name: str, binary: bool):
    from sops_enclave import config as cfgmod
    from sops_enclave.api import EncryptOptions
    from sops_enclave.keys import registry
    from sops_enclave.keys.base import KeyContext
    from sops_enclave.walk import CRYPT_RULE_NAMES, CryptRule

    env = ctx.env
    flags = {}
    for kind, flag, var in registry.CLI_FLAGS:
        v = ctx.get(flag.replace("-", "_"))
        flags[kind] = v if v is not None else env.get(var)
    any_keys = any(flags.values())
    cfg, _ = ctx.config(name)
    rule = None
    context = cfgmod.parse_encryption_context(ctx.get("encryption_context")) \
        if ctx.get("encryption_context") else {}
    if cfg is not None:
        try:
            rule = cfg.creation_rule_for(name, kms_context=context or None)
        except SopsError:
            if not any_keys:
                raise
    cli_rules = [(n, ctx.get(n)) for n in CRYPT_RULE_NAMES if ctx.get(n)]
    if len(cli_rules) > 1:
        raise ConflictingParameters("Error: cannot use more than one of encrypted_suffix, "
                                    "unencrypted_suffix, encrypted_regex, unencrypted_regex, "
                                    "encrypted_comment_regex, or unencrypted_comment_regex")
    if any_keys:
        for r in (flags.get("age") or "").split(",") if flags.get("age") else ():
            cfgmod.validate_age_recipient(r)  # sops parses them with the flags
        groups = [registry.entries_from_flags(flags, KeyContext(env), kms_context=context,
                                              aws_profile=ctx.get("aws_profile") or "")]
    elif rule is not None:
        groups = [[_entry_from_spec(s, env) for s in g] for g in rule.key_groups]
    else:
        raise SopsError("config file not found, or has no creation rules, and no keys provided "
                        "through command line options")
    if cli_rules:
        crypt = CryptRule(*cli_rules[0])
    elif rule is not None and rule.crypt_rule:
        crypt = CryptRule(*rule.crypt_rule)
    else:
        crypt = CryptRule("unencrypted_suffix", "_unencrypted")
    if binary and (cli_rules or (rule is not None and rule.crypt_rule)):
        given = {n for n, _ in cli_rules} | ({rule.crypt_rule[0]} if rule is not None and
                                             rule.crypt_rule else set())
        for n, what in (("unencrypted_suffix", "an unencrypted suffix"),
                        ("encrypted_suffix", "an encrypted suffix"),
                        ("encrypted_regex", "an encrypted regex"),
                        ("unencrypted_regex", "an unencrypted regex")):
            if n in given:
                _warn(f"Using {what} does not make sense with the input store (the binary "
                      "store produces one key that should always be encrypted) and will be "
                      "ignored.")
        if "encrypted_comment_regex" in given:
            _warn("Using an encrypted comment regex does not make sense with the input store "
                  "(the binary store never produces comments) and will be ignored.")
        crypt = CryptRule("unencrypted_suffix", "_unencrypted")
    threshold = ctx.get("shamir_secret_sharing_threshold") or (rule.shamir_threshold if rule else 0)
    mac_only = ctx.get("mac_only_encrypted")
    if mac_only is None:
        mac_only = bool(rule.mac_only_encrypted) if rule else False
    return EncryptOptions(groups, shamir_threshold=threshold, crypt_rule=crypt,
                          mac_only_encrypted=mac_only), cfg


def _entry_from_spec(spec: Any, env: Any = None):
    from sops_enclave.keys.registry import entry_from_spec

    return entry_from_spec(spec, os.environ if env is None else env)


def _do_encrypt(ctx: _Ctx, file: str | None, *, legacy: bool = False) -> int:
    from sops_enclave import api
    from sops_enclave.formats import resolve_format

    _check_io_flags(ctx, file)
    if file is None and not ctx.get("filename_override"):
        raise ConflictingParameters("Error: must specify --filename-override when reading from "
                                    "stdin")
    data, in_path, name = _read(ctx, file)
    in_fmt = resolve_format(ctx.get("input_type"), name)
    out_fmt = resolve_format(ctx.get("output_type"), name)
    opts, cfg = _encrypt_options(ctx, name, binary=(in_fmt == "binary"))
    out = api.encrypt_document(data, in_fmt, out_fmt, opts, services=ctx.services(),
                               cfg=ctx.store_config(cfg))
    _write_result(ctx, out, in_path)
    return 0


# ------------------------------------------------------------------ dispatch

#: Subcommands implemented in :mod:`sops_enclave.commands` (imported only when used).
_OTHER_COMMANDS = ("rotate", "set", "unset", "filestatus", "edit", "exec-env", "exec-file",
                   "groups", "updatekeys", "exec", "dev")


#: Subcommands in their own module (``parser(cls)`` and ``handle(ctx)``), imported when used.
_MODULE_COMMANDS = {"publish": "sops_enclave.publish", "completion": "sops_enclave.completion"}


def _extra_commands() -> dict[str, str]:
    """Commands that live in other modules: name -> "module:register" hook."""
    return {"attestation": "sops_enclave.receipt.cli:register",
            "verify": "sops_enclave.receipt.cli:register",
            "audit": "sops_enclave.receipt.audit:register",
            "keyservice": "sops_enclave.keyservice.cli:register",
            "measure": "sops_enclave.image.cli:register",
            "policy": "sops_enclave.image.cli:register"}


def _run_extra(name: str, argv: list[str]) -> int:
    import importlib

    mod, _, fn = _extra_commands()[name].partition(":")
    p = _Parser(prog="sops-enclave")
    sub = p.add_subparsers(dest="cmd", parser_class=_Parser)
    getattr(importlib.import_module(mod), fn)(sub)
    args = p.parse_args(argv)
    return int(args.func(args))


def _subcommand_index(argv: list[str], parser: argparse.ArgumentParser,
                      names: Sequence[str]) -> int:
    """Index of the subcommand name in argv (after the global flags), or -1."""
    takes_value = set()
    for act in parser._actions:
        if act.option_strings and act.nargs != 0:
            takes_value.update(act.option_strings)
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            return -1
        if a.startswith("-") and a != "-":
            if a in takes_value:
                i += 2
                continue
            i += 1
            continue
        return i if a in names else -1
    return -1


def _version_line() -> str:
    """``sops --version``'s first line (``sops 3.11.0``: tools parse it), then who we are.
    No update check is made: sops-enclave never contacts GitHub."""
    from sops_enclave import SOPS_FORMAT_VERSION

    return f"sops {SOPS_FORMAT_VERSION} (sops-enclave {__version__})"


def _run(argv: list[str], env: dict[str, str], cwd: str) -> int:
    gp = _global_parser()
    argv = _go_flags(argv, gp, stop_at_positional=True)
    names = ["decrypt", "encrypt", *_OTHER_COMMANDS, *_MODULE_COMMANDS]
    idx = _subcommand_index(argv, gp, names + list(_extra_commands()) + ["help"])
    parsers: dict[str, Callable] = {"decrypt": lambda cls: _decrypt_parser(),
                                    "encrypt": lambda cls: _encrypt_parser()}
    handlers: dict[str, Callable] = {"decrypt": lambda c: _do_decrypt(c, c.args.file),
                                     "encrypt": lambda c: _do_encrypt(c, c.args.file)}
    sub_parser = None
    if idx >= 0 and argv[idx] in names:
        if argv[idx] in _OTHER_COMMANDS:
            from sops_enclave import commands as cmds

            parsers.update(cmds.PARSERS)
            handlers.update(cmds.HANDLERS)
        elif argv[idx] in _MODULE_COMMANDS:
            import importlib

            mod = importlib.import_module(_MODULE_COMMANDS[argv[idx]])
            parsers[argv[idx]], handlers[argv[idx]] = mod.parser, mod.handle
        sub_parser = parsers[argv[idx]](_Parser)
        argv = argv[:idx + 1] + _go_flags(argv[idx + 1:], sub_parser, stop_at_positional=False)
    if idx >= 0:  # each part on its own: a dropped --flag=false must not move the command
        head, head_bools = _preprocess_bools(argv[:idx])
        tail, bool_overrides = _preprocess_bools(argv[idx + 1:])
        argv, idx = head + [argv[idx]] + tail, len(head)
    else:
        argv, bool_overrides = _preprocess_bools(argv)
    if idx >= 0:
        name = argv[idx]
        global_args = gp.parse_args(argv[:idx])
        for k, v in head_bools.items():
            setattr(global_args, k, v)
        if global_args.version:
            print(_version_line())
            return 0
        if name == "help":
            gp.print_help()
            return 0
        if name in _extra_commands():
            return _run_extra(name, argv[idx:])
        assert sub_parser is not None
        args = sub_parser.parse_args(argv[idx + 1:])
        for k, v in bool_overrides.items():
            setattr(args, k, v)
        args.config = global_args.config
        args.global_args = global_args  # what sops reads from the global flags (c.GlobalX)
        args.mode = name
        args.legacy_indent = None  # sops 3.11 ignores a global --indent before a subcommand
        for n in ("mac_only_encrypted", "unencrypted_comment_regex", "encrypted_comment_regex"):
            if not hasattr(args, n):
                setattr(args, n, None)
        return handlers[name](_Ctx(args, env, cwd))
    # Legacy form: flags, then one file; anything after the file is ignored (as sops does).
    first_pos = -1
    takes_value = {s for a in gp._actions if a.option_strings and a.nargs != 0
                   for s in a.option_strings}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("-") and a != "-":
            i += 2 if a in takes_value else 1
            continue
        first_pos = i
        break
    extra = argv[first_pos + 1:] if first_pos >= 0 else []
    args = gp.parse_args(argv[:first_pos + 1] if first_pos >= 0 else argv)
    for k, v in bool_overrides.items():
        setattr(args, k, v)
    if args.version:
        print(_version_line())
        return 0
    return _run_legacy(args, extra, env, cwd)


_ADD_RM_FLAGS = tuple(f"{op}_{kind}" for op in ("add", "rm")
                      for kind in ("kms", "pgp", "gcp_kms", "hckms", "azure_kv",
                                   "hc_vault_transit", "age"))


def _run_legacy(args: argparse.Namespace, extra: list[str], env: dict[str, str],
                cwd: str) -> int:
    """sops' main action (``sops [-d|-e|-r|--set ...] FILE``), in the order sops checks."""
    from sops_enclave.errors import NoFileSpecified
    from sops_enclave.goformat import go_quote

    if args.file is None:
        raise NoFileSpecified("Error: no file specified")
    if extra:
        _warn("More than one positional argument provided. Only the first one will be used!")
        flagish = [e for e in extra if e.startswith("-")]
        if flagish:
            _warn(f"Note that one of the ignored positional argument is {go_quote(flagish[-1])}"
                  ", which looks like a flag. Flags must always be provided before the first "
                  "positional argument!")
    if args.in_place and args.output:
        raise ConflictingParameters("Error: cannot operate on both --output and --in-place")
    path = _abs(args.file, cwd)
    modes = [m for m in ("encrypt", "decrypt", "rotate") if getattr(args, m)]
    if args.set:
        modes.append("set")
    if not os.path.exists(path):
        if any(getattr(args, f) for f in _ADD_RM_FLAGS):
            raise SopsError(f"Error: cannot add or remove keys on non-existent file "
                            f"{go_quote(path)}, use `--kms` and `--pgp` instead.", exit_code=49)
        if set(modes) & {"encrypt", "decrypt", "rotate"}:
            raise NoFileSpecified(f"Error: cannot operate on non-existent file {go_quote(path)}")
    if len(modes) > 1:
        _warn("More than one command (--encrypt, --decrypt, --rotate, --set) has been specified. "
              "Only the changes made by the last one will be visible. Note that this behavior "
              "is deprecated and will cause an error eventually.")
    args.legacy_indent = args.indent
    args.global_args = args
    ctx = _Ctx(args, env, cwd)
    mode = modes[-1] if modes else "edit"
    args.mode = mode
    if mode in ("encrypt", "rotate", "set", "edit"):
        # sops loads the creation rule first for these (a broken or unmatched config fails)
        name = _abs(args.filename_override, cwd) if args.filename_override else path
        cfg, _ = ctx.config(name)
        if cfg is not None:
            from sops_enclave import config as cfgmod

            context = cfgmod.parse_encryption_context(args.encryption_context) \
                if args.encryption_context else None
            cfg.creation_rule_for(name, kms_context=context)
    if "encrypt" in modes and mode != "encrypt":  # sops still reads the encryption config
        from sops_enclave.formats import resolve_format

        name = _abs(args.filename_override, cwd) if args.filename_override else path
        _encrypt_options(ctx, name, binary=resolve_format(args.input_type, name) == "binary")
    if mode == "decrypt":
        return _do_decrypt(ctx, args.file)
    if mode == "encrypt":
        return _do_encrypt(ctx, args.file, legacy=True)
    from sops_enclave import commands as cmds

    if mode == "rotate":
        return cmds.do_rotate(ctx)
    if mode == "set":
        return cmds.do_legacy_set(ctx, args.set)
    return cmds.do_edit(ctx)


class _Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives."""


def _on_sigterm(signum, frame) -> None:
    raise _Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sops-enclave``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    # One short-lived process building large acyclic trees: the cyclic GC only costs time
    # (its passes grow with the heap), reference counting frees everything.
    import gc
    import signal

    gc.disable()
    # SIGTERM unwinds like Ctrl+C, so temporary files are removed, children are stopped and
    # no output is left half-written.
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _run(argv, dict(os.environ), os.getcwd())
    except SopsError as e:
        if verbose:
            traceback.print_exc()
        print(e.diagnostics(), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("Interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("Terminated", file=sys.stderr)
        return 143
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug: say where, never the message (it could hold a value)
        if verbose:
            traceback.print_exc()
        tb = traceback.extract_tb(e.__traceback__)
        where = f" in {tb[-1].name} ({os.path.basename(tb[-1].filename)}:{tb[-1].lineno})" if tb else ""
        print(f"sops-enclave: internal error: {type(e).__name__}{where}; run with --verbose "
              "for the traceback, and please report it", file=sys.stderr)
        return 1
