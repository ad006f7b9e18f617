"""What the ``sops-enclave`` command line and its commands share, and the table of commands.

:mod:`sops_enclave.cli` parses argv and dispatches through :data:`COMMANDS`; the commands
(here, :mod:`sops_enclave.commands`, :mod:`sops_enclave.publish`, ...) import what they need
from this module, never from :mod:`~sops_enclave.cli`. Here: the argument parser class and the
flag groups, the global parser, the per-run context :class:`Ctx` (flags, environment, working
directory), reading input and writing results, encryption options from flags and
``.sops.yaml``, and the two commands every other one builds on, decrypt and encrypt.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any, Callable

from sops_enclave.errors import ConflictingParameters, SopsError
from sops_enclave.record import record

__all__ = ["Command", "COMMANDS", "Parser", "UsageError", "Ctx", "warn", "add_key_flags",
           "add_rule_flags", "add_io_flags", "global_parser", "decrypt_parser",
           "encrypt_parser", "has_config_file", "abs_path", "write_result", "check_io_flags",
           "read_input_of", "do_decrypt", "do_encrypt", "do_decrypt_file", "do_encrypt_file",
           "encrypt_options", "entry_from_spec"]


# ------------------------------------------------------------------ the command table

@record(frozen=True)
class Command:
    """Where a subcommand lives, imported only when it runs.

    Either ``parser`` and ``handler``, names in ``module`` of a parser factory
    ``(parser class) -> ArgumentParser`` and a handler ``(Ctx) -> exit code``; or ``register``,
    the name of an argparse hook ``register(subparsers)`` whose parsers set ``args.func``
    (``(Namespace) -> exit code``).
    """

    module: str
    parser: str = ""
    handler: str = ""
    register: str = ""

    def load(self) -> tuple[Callable[..., argparse.ArgumentParser], Callable[[Ctx], int]]:
        """(parser factory, handler) of a ``parser``/``handler`` command."""
        mod = importlib.import_module(self.module)
        return getattr(mod, self.parser), getattr(mod, self.handler)

    def load_register(self) -> Callable[[Any], Any]:
        return getattr(importlib.import_module(self.module), self.register)  # type: ignore[no-any-return]


_CMDS = "sops_enclave.commands"
_RECEIPT = "sops_enclave.receipt.cli"
_IMAGE = "sops_enclave.image.cli"

#: Every subcommand, in the order ``--help`` lists them (``help`` is the global parser's).
COMMANDS: dict[str, Command] = {
    "decrypt": Command(__name__, "decrypt_parser", "do_decrypt"),
    "encrypt": Command(__name__, "encrypt_parser", "do_encrypt"),
    "rotate": Command(_CMDS, "rotate_parser", "do_rotate"),
    "edit": Command(_CMDS, "edit_parser", "do_edit"),
    "set": Command(_CMDS, "set_parser", "do_set"),
    "unset": Command(_CMDS, "unset_parser", "do_unset"),
    "filestatus": Command(_CMDS, "filestatus_parser", "do_filestatus"),
    "groups": Command(_CMDS, "groups_parser", "do_groups"),
    "updatekeys": Command(_CMDS, "updatekeys_parser", "do_updatekeys"),
    "exec-env": Command(_CMDS, "exec_env_parser", "do_exec_env"),
    "exec-file": Command(_CMDS, "exec_file_parser", "do_exec_file"),
    "keyservice": Command("sops_enclave.keyservice.cli", register="register"),
    "publish": Command("sops_enclave.publish", "parser", "handle"),
    "completion": Command("sops_enclave.completion", "parser", "handle"),
    "exec": Command(_CMDS, "exec_parser", "do_exec"),
    "dev": Command(_CMDS, "dev_parser", "do_dev"),
    "attestation": Command(_RECEIPT, register="register"),
    "verify": Command(_RECEIPT, register="register"),
    "audit": Command("sops_enclave.receipt.audit", register="register"),
    "measure": Command(_IMAGE, register="register"),
    "policy": Command(_IMAGE, register="register"),
}


# ------------------------------------------------------------------ parsers and flags

class UsageError(SopsError):
    exit_code = 1


class Parser(argparse.ArgumentParser):
    def __init__(self, *a: Any, **kw: Any):
        kw.setdefault("allow_abbrev", False)
        super().__init__(*a, **kw)

    def error(self, message: str) -> None:  # type: ignore[override]
        if message.startswith("unrecognized arguments: -"):
            # urfave/cli's parse error, reported through sops' logger (exit 1)
            from sops_enclave.errors import LoggedFatal

            name = message.split()[2].lstrip("-").partition("=")[0]
            raise LoggedFatal(f"flag provided but not defined: -{name}")
        raise UsageError(f"Incorrect Usage: {message}\n(see '{self.prog} --help')")


def warn(msg: str) -> None:
    """A warning on sops' ``CMD`` logger line."""
    from sops_enclave.errors import logrus_line

    print(logrus_line("CMD", "warning", msg), file=sys.stderr)

def add_key_flags(p: argparse.ArgumentParser) -> None:
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


def add_rule_flags(p: argparse.ArgumentParser, comments: bool) -> None:
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


def add_io_flags(p: argparse.ArgumentParser, decrypt: bool) -> None:
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


def global_parser() -> Parser:
    p = Parser(prog="sops-enclave", add_help=True,
                description="A drop-in for sops (decrypt, encrypt, ...) with enclave-backed "
                "packing and verifiable receipts. Legacy form: sops-enclave [-d|-e] FILE.",
                epilog=f"Commands: {', '.join(COMMANDS)}. "
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
    add_io_flags(p, decrypt=True)
    add_key_flags(p)
    add_rule_flags(p, comments=True)
    p.add_argument("--config", help="path to .sops.yaml [$SOPS_CONFIG]")
    p.add_argument("--indent", type=int, help="indentation of YAML/JSON output (legacy form)")
    p.add_argument("--verbose", action="store_true", help="show tracebacks")
    p.add_argument("-v", "--version", action="store_true", help="print the version (first "
                   "line as sops': 'sops 3.11.0 ...')")
    p.add_argument("--disable-version-check", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--check-for-updates", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("file", nargs="?", help="the file to work on")
    return p


def decrypt_parser(cls: Callable[..., argparse.ArgumentParser] = Parser
                   ) -> argparse.ArgumentParser:
    p = cls(prog="sops-enclave decrypt", description="Decrypt a SOPS file (stdin when no "
                "FILE) and print the plaintext.")
    add_io_flags(p, decrypt=True)
    p.add_argument("--verbose", action="store_true", help="show tracebacks")
    p.add_argument("file", nargs="?")
    return p


def encrypt_parser(cls: Callable[..., argparse.ArgumentParser] = Parser
                   ) -> argparse.ArgumentParser:
    p = cls(prog="sops-enclave encrypt", description="Encrypt a plaintext file (stdin with "
                "--filename-override) with the keys from flags or .sops.yaml.")
    add_io_flags(p, decrypt=False)
    add_key_flags(p)
    add_rule_flags(p, comments=False)
    p.add_argument("--verbose", action="store_true", help="show tracebacks")
    p.add_argument("file", nargs="?")
    return p
# ------------------------------------------------------------------ shared option handling

class Ctx:
    """What a command needs from flags and the environment, resolved once."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str], cwd: str):
        self.args = args
        self.env = env
        self.cwd = cwd

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self.args, name, default)

    def abs(self, path: str) -> str:
        return abs_path(path, self.cwd)

    def write_result(self, data: bytes, in_path: str | None) -> None:
        write_result(self, data, in_path)

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
        if not explicit and not has_config_file(self.cwd):
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


def has_config_file(start: str) -> bool:
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


def config_and_files(ctx: Ctx) -> tuple[str, list[str]]:
    """What ``updatekeys`` and ``publish`` both start with, as sops: the config file
    (``--config``, ``$SOPS_CONFIG``, else looked up from the cwd) and at least one file."""
    from sops_enclave import config as cfgmod
    from sops_enclave.errors import NoFileSpecified

    config_path = ctx.get("config") or ctx.env.get("SOPS_CONFIG")
    if not config_path:
        config_path = cfgmod.find_config(ctx.cwd)
        if not config_path:
            raise SopsError("config file not found")
    files = ctx.get("files") or []
    if not files:
        raise NoFileSpecified("Error: no file specified")
    return config_path, files


def abs_path(path: str, cwd: str) -> str:
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(cwd, path))


def write_result(ctx: Ctx, data: bytes, in_path: str | None) -> None:
    from sops_enclave.fileio import write_atomic

    if ctx.get("in_place"):
        assert in_path is not None
        write_atomic(in_path, data)
        return
    out = ctx.get("output")
    if out:
        write_atomic(abs_path(out, ctx.cwd), data)
        return
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def check_io_flags(ctx: Ctx, file: str | None) -> None:
    if ctx.get("in_place") and ctx.get("output"):
        raise ConflictingParameters("Error: cannot operate on both --output and --in-place")
    if file is None and ctx.get("in_place"):
        raise ConflictingParameters("Error: cannot use --in-place when reading from stdin")


def read_input_of(ctx: Ctx, file: str | None) -> tuple[bytes, str | None, str]:
    """(content, absolute input path or None for stdin, path used to pick formats/rules)."""
    from sops_enclave.fileio import read_input

    override = ctx.get("filename_override")
    if file is None:
        from sops_enclave.fileio import read_stream

        data = read_stream(sys.stdin.buffer)
        name = abs_path(override, ctx.cwd) if override else ""
        return data, None, name
    path = abs_path(file, ctx.cwd)
    data = read_input(path)
    return data, path, abs_path(override, ctx.cwd) if override else path


# ------------------------------------------------------------------ decrypt / encrypt

def do_decrypt(ctx: Ctx) -> int:
    """``sops-enclave decrypt [FILE]``."""
    return do_decrypt_file(ctx, ctx.args.file)


def do_encrypt(ctx: Ctx) -> int:
    """``sops-enclave encrypt [FILE]``."""
    return do_encrypt_file(ctx, ctx.args.file)


def do_decrypt_file(ctx: Ctx, file: str | None) -> int:
    from sops_enclave import api
    from sops_enclave.formats import resolve_format

    check_io_flags(ctx, file)
    data, in_path, name = read_input_of(ctx, file)
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
    write_result(ctx, out, in_path)
    return 0


def _safe_config(ctx: Ctx, name: str):
    """The config for its ``stores`` settings; a broken file fails decrypt too, as in sops."""
    return ctx.config(name)


def encrypt_options(ctx: Ctx, name: str, binary: bool):
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
        groups = [[entry_from_spec(s, env) for s in g] for g in rule.key_groups]
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
                warn(f"Using {what} does not make sense with the input store (the binary "
                      "store produces one key that should always be encrypted) and will be "
                      "ignored.")
        if "encrypted_comment_regex" in given:
            warn("Using an encrypted comment regex does not make sense with the input store "
                  "(the binary store never produces comments) and will be ignored.")
        crypt = CryptRule("unencrypted_suffix", "_unencrypted")
    threshold = ctx.get("shamir_secret_sharing_threshold") or (rule.shamir_threshold if rule else 0)
    mac_only = ctx.get("mac_only_encrypted")
    if mac_only is None:
        mac_only = bool(rule.mac_only_encrypted) if rule else False
    return EncryptOptions(groups, shamir_threshold=threshold, crypt_rule=crypt,
                          mac_only_encrypted=mac_only), cfg


def entry_from_spec(spec: Any, env: Any = None):
    from sops_enclave.keys.registry import entry_from_spec

    return entry_from_spec(spec, os.environ if env is None else env)


def do_encrypt_file(ctx: Ctx, file: str | None, *, legacy: bool = False) -> int:
    from sops_enclave import api
    from sops_enclave.formats import resolve_format

    check_io_flags(ctx, file)
    if file is None and not ctx.get("filename_override"):
        raise ConflictingParameters("Error: must specify --filename-override when reading from "
                                    "stdin")
    data, in_path, name = read_input_of(ctx, file)
    in_fmt = resolve_format(ctx.get("input_type"), name)
    out_fmt = resolve_format(ctx.get("output_type"), name)
    opts, cfg = encrypt_options(ctx, name, binary=(in_fmt == "binary"))
    out = api.encrypt_document(data, in_fmt, out_fmt, opts, services=ctx.services(),
                               cfg=ctx.store_config(cfg))
    write_result(ctx, out, in_path)
    return 0


