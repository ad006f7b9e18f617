"""The ``sops-enclave`` command: sops' command line, plus the enclave commands.

This is the only module that reads argv and turns errors into exit codes (one
``except SopsError`` in :func:`run`). It follows sops 3.11 (urfave/cli v1): global flags go
before a subcommand; a subcommand's flags may come before or after its file; in the legacy
form (``sops-enclave -d FILE``) anything after the file is ignored with a warning. The
subcommands are the table :data:`sops_enclave.cmdline.COMMANDS`; what they share with this
module is in :mod:`sops_enclave.cmdline` (no command imports this module).

:func:`main` is the console entry point; :func:`run` runs one command line in-process.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import IO, Mapping, Sequence

from sops_enclave import __version__
from sops_enclave.cmdline import (COMMANDS, Ctx, Parser, abs_path, do_decrypt_file,
                                  do_encrypt_file, encrypt_options, global_parser, warn)
from sops_enclave.errors import ConflictingParameters, SopsError

__all__ = ["main", "run"]

_BOOL_FLAGS = {"ignore-mac", "in-place", "enable-local-keyservice", "mac-only-encrypted",
               "verbose", "decrypt", "encrypt", "rotate", "disable-version-check",
               "check-for-updates", "version", "show-master-keys", "yes", "recursive",
               "omit-extensions", "idempotent", "value-file", "value-stdin", "pristine",
               "same-process", "no-fifo", "background"}

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

# ------------------------------------------------------------------ dispatch

def _run_registered(name: str, argv: list[str]) -> int:
    """A command that registers its own argparse parsers (``args.func(args)``)."""
    p = Parser(prog="sops-enclave")
    sub = p.add_subparsers(dest="cmd", parser_class=Parser)
    COMMANDS[name].load_register()(sub)
    args = p.parse_args(argv)
    return int(args.func(args))


def _subcommand_index(argv: list[str], parser: argparse.ArgumentParser,
                      names: Sequence[str]) -> int:
    """Index of the subcommand name in argv (after the global flags), or -1."""
    takes_value: set[str] = set()
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
    gp = global_parser()
    argv = _go_flags(argv, gp, stop_at_positional=True)
    idx = _subcommand_index(argv, gp, [*COMMANDS, "help"])
    sub_parser = handler = None
    if idx >= 0 and argv[idx] != "help" and not COMMANDS[argv[idx]].register:
        make_parser, handler = COMMANDS[argv[idx]].load()
        sub_parser = make_parser(Parser)
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
        if COMMANDS[name].register:
            return _run_registered(name, argv[idx:])
        assert sub_parser is not None and handler is not None
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
        return handler(Ctx(args, env, cwd))
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
        warn("More than one positional argument provided. Only the first one will be used!")
        flagish = [e for e in extra if e.startswith("-")]
        if flagish:
            warn(f"Note that one of the ignored positional argument is {go_quote(flagish[-1])}"
                  ", which looks like a flag. Flags must always be provided before the first "
                  "positional argument!")
    if args.in_place and args.output:
        raise ConflictingParameters("Error: cannot operate on both --output and --in-place")
    path = abs_path(args.file, cwd)
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
        warn("More than one command (--encrypt, --decrypt, --rotate, --set) has been specified. "
              "Only the changes made by the last one will be visible. Note that this behavior "
              "is deprecated and will cause an error eventually.")
    args.legacy_indent = args.indent
    args.global_args = args
    ctx = Ctx(args, env, cwd)
    mode = modes[-1] if modes else "edit"
    args.mode = mode
    if mode in ("encrypt", "rotate", "set", "edit"):
        # sops loads the creation rule first for these (a broken or unmatched config fails)
        name = abs_path(args.filename_override, cwd) if args.filename_override else path
        cfg, _ = ctx.config(name)
        if cfg is not None:
            from sops_enclave import config as cfgmod

            context = cfgmod.parse_encryption_context(args.encryption_context) \
                if args.encryption_context else None
            cfg.creation_rule_for(name, kms_context=context)
    if "encrypt" in modes and mode != "encrypt":  # sops still reads the encryption config
        from sops_enclave.formats import resolve_format

        name = abs_path(args.filename_override, cwd) if args.filename_override else path
        encrypt_options(ctx, name, binary=resolve_format(args.input_type, name) == "binary")
    if mode == "decrypt":
        return do_decrypt_file(ctx, args.file)
    if mode == "encrypt":
        return do_encrypt_file(ctx, args.file, legacy=True)
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
    """Entry point of ``sops-enclave``; returns the exit code.

    Called with no ``argv`` (the console script, ``python -m sops_enclave``) it owns the
    process: it reads ``sys.argv``, turns the cyclic garbage collector off and makes SIGTERM
    unwind like Ctrl+C. With ``argv`` it is :func:`run` and changes no process state.
    """
    if argv is not None:
        return run(argv)
    # One short-lived process building large acyclic trees: the cyclic GC only costs time
    # (its passes grow with the heap), reference counting frees everything.
    import gc
    import signal

    gc.disable()
    # SIGTERM unwinds like Ctrl+C, so temporary files are removed, children are stopped and
    # no output is left half-written.
    signal.signal(signal.SIGTERM, _on_sigterm)
    return run(sys.argv[1:])


def run(argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | None = None, *,
        stdin: IO[str] | None = None, stdout: IO[str] | None = None,
        stderr: IO[str] | None = None) -> int:
    """Run one ``sops-enclave`` command line in this process; returns the exit code.

    ``env`` (default: a copy of ``os.environ``) is what the command reads its settings and
    keys from, ``cwd`` (default: the working directory) what relative paths are resolved
    against. ``stdin``/``stdout``/``stderr``, when given, stand in for ``sys.stdin``/
    ``sys.stdout``/``sys.stderr`` while the command runs: text streams with a ``buffer``
    (e.g. ``io.TextIOWrapper(io.BytesIO())``), as commands write bytes there. Errors become
    sops' message on stderr and its exit code, as in the console command.
    """
    saved = sys.stdin, sys.stdout, sys.stderr
    if stdin is not None:
        sys.stdin = stdin
    if stdout is not None:
        sys.stdout = stdout
    if stderr is not None:
        sys.stderr = stderr
    try:
        return _run_reporting(list(argv), dict(os.environ if env is None else env),
                              os.getcwd() if cwd is None else cwd)
    finally:
        for given, stream in ((stdout, sys.stdout), (stderr, sys.stderr)):
            if given is not None:
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
        sys.stdin, sys.stdout, sys.stderr = saved


def _run_reporting(argv: list[str], env: dict[str, str], cwd: str) -> int:
    """:func:`_run`, with every error turned into a message and an exit code."""
    verbose = "--verbose" in argv
    try:
        return _run(argv, env, cwd)
    except SopsError as e:
        if verbose:
            import traceback

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
        import traceback

        if verbose:
            traceback.print_exc()
        tb = traceback.extract_tb(e.__traceback__)
        where = f" in {tb[-1].name} ({os.path.basename(tb[-1].filename)}:{tb[-1].lineno})" if tb else ""
        print(f"sops-enclave: internal error: {type(e).__name__}{where}; run with --verbose "
              "for the traceback, and please report it", file=sys.stderr)
        return 1
