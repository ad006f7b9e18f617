"""The sops subcommands beyond decrypt/encrypt: rotate, set, unset, filestatus, edit, exec-env,
exec-file, groups, updatekeys, and the enclave pack's exec and dev. Each has a parser factory
``(parser class) -> ArgumentParser`` and a handler ``(ctx) -> exit code``, listed in
:data:`sops_enclave.cmdline.COMMANDS`; :mod:`sops_enclave.cli` dispatches to them and maps
errors to exit codes (this module never imports it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Any

from sops_enclave.errors import (ConflictingParameters, FileHasNotBeenModified,
                                 InvalidSetFormat, NoEditorFound, SopsError)
from sops_enclave.tree import Branch, Comment

__all__ = ["rotate_parser", "set_parser", "unset_parser", "filestatus_parser", "edit_parser",
           "exec_env_parser", "exec_file_parser", "groups_parser", "updatekeys_parser",
           "exec_parser", "dev_parser", "do_rotate", "do_set", "do_unset", "do_filestatus",
           "do_edit", "do_legacy_set", "do_exec_env", "do_exec_file", "do_groups",
           "do_updatekeys", "do_exec", "do_dev", "print_group_diffs", "scanln", "go_log",
           "key_string", "example_branches"]


def _common(p: argparse.ArgumentParser, *, io: bool = True, types: bool = True,
            ignore_mac: bool = True) -> None:
    if io:
        p.add_argument("-i", "--in-place", action="store_true", help="write the result to the file")
        p.add_argument("--output", help="write the result to this file (atomically)")
    if types:
        p.add_argument("--input-type", help="yaml, json, dotenv, ini or binary")
        p.add_argument("--output-type", help="yaml, json, dotenv, ini or binary")
    if ignore_mac:  # sops' rotate, exec-env and exec-file refuse --ignore-mac
        p.add_argument("--ignore-mac", action="store_true", help="skip the MAC check "
                       "(dangerous)")
    p.add_argument("--decryption-order", help="key types to try first, default age,pgp")
    p.add_argument("--keyservice", action="append", default=[], help="also use this key "
                   "service (tcp://host:port or unix:///path)")
    p.add_argument("--enable-local-keyservice", action="store_true", default=None,
                   help="use local keys too (default true; --enable-local-keyservice=false)")
    p.add_argument("--verbose", action="store_true", help="show tracebacks")


def _parser(cls, name: str, desc: str) -> argparse.ArgumentParser:
    return cls(prog=f"sops-enclave {name}", description=desc)


#: the key flags of rotate (``--add-KIND``/``--rm-KIND``) and ``groups add``, in the order sops
#: 3.11 reads them (``getMasterKeys``)
_KEY_FLAG_KINDS = ("kms", "pgp", "gcp-kms", "hckms", "azure-kv", "hc-vault-transit", "age")


def rotate_parser(cls):
    p = _parser(cls, "rotate", "Re-encrypt FILE with a fresh data key (same master keys, plus "
                "--add-*, minus --rm-*). Prints the result unless -i/--output.")
    _common(p, ignore_mac=False)
    for kind in _KEY_FLAG_KINDS:
        p.add_argument(f"--add-{kind}", help=f"add these {kind} keys to key group 0 (comma-separated)")
        p.add_argument(f"--rm-{kind}", help=f"remove these {kind} keys from every group")
    p.add_argument("file", nargs="?")
    return p


def set_parser(cls):
    p = _parser(cls, "set", "Set the value at PATH (e.g. '[\"db\"][\"password\"]') to a JSON "
                "VALUE, in place.")
    _common(p, io=False)
    p.add_argument("--value-file", action="store_true", help="VALUE is a file holding the JSON")
    p.add_argument("--value-stdin", action="store_true", help="read the JSON value from stdin")
    p.add_argument("--idempotent", action="store_true", help="do not write when nothing changes")
    p.add_argument("file", nargs="?")
    p.add_argument("path", nargs="?")
    p.add_argument("value", nargs="?")
    p.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    return p


def unset_parser(cls):
    p = _parser(cls, "unset", "Remove the value at PATH, in place.")
    _common(p, io=False)
    p.add_argument("--idempotent", action="store_true", help="a missing key is not an error")
    p.add_argument("file", nargs="?")
    p.add_argument("path", nargs="?")
    p.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    return p


def filestatus_parser(cls):
    p = _parser(cls, "filestatus", 'Print {"encrypted":true|false} for FILE.')
    p.add_argument("--input-type", help="yaml, json, dotenv, ini or binary")
    p.add_argument("--verbose", action="store_true", help="show tracebacks")
    p.add_argument("file", nargs="?")
    return p


def edit_parser(cls):
    p = _parser(cls, "edit", "Decrypt FILE into a private temporary file, open $SOPS_EDITOR "
                "(or $EDITOR), and re-encrypt what was saved. Unchanged values keep their "
                "ciphertext. Exit 200 when nothing changed.")
    _common(p, io=False)
    p.add_argument("-s", "--show-master-keys", action="store_true", help=argparse.SUPPRESS)
    from sops_enclave.cmdline import add_key_flags, add_rule_flags

    add_key_flags(p)  # for a new file, as encrypt
    add_rule_flags(p, comments=False)
    p.add_argument("file", nargs="?")
    return p


def exec_env_parser(cls):
    p = _parser(cls, "exec-env", "Run COMMAND (through /bin/sh -c) with the top-level values "
                "of FILE in its environment; exits with the command's status.")
    _common(p, io=False, types=False, ignore_mac=False)
    p.add_argument("--input-type", help="yaml, json, dotenv, ini or binary (sops-enclave "
                   "extension; sops takes the format from the extension only)")
    p.add_argument("--pristine", action="store_true", help="only the secrets, not this "
                   "process's environment")
    p.add_argument("--user", help="run as this user (root only)")
    p.add_argument("--same-process", action="store_true", help="replace this process (execve)")
    p.add_argument("--background", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("inputs", nargs="+", metavar="FILE [FILE ...] COMMAND",
                   help="one or more SOPS files (merged in order, later values win), then the "
                   "command")
    return p


def exec_file_parser(cls):
    p = _parser(cls, "exec-file", "Run COMMAND with {} replaced by the path of a FIFO (or, with "
                "--no-fifo, a 0600 file) holding the decrypted FILE; the file is removed "
                "afterwards.")
    _common(p, io=False, ignore_mac=False)
    p.add_argument("--no-fifo", action="store_true", help="use a regular 0600 file")
    p.add_argument("--filename", help="name of the file inside the private temporary directory")
    p.add_argument("--user", help="run as this user (root only)")
    p.add_argument("--background", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("inputs", nargs="+", metavar="FILE [FILE ...] COMMAND",
                   help="one or more SOPS files (merged in order, later values win), then the "
                   "command")
    return p


# ------------------------------------------------------------------ handlers

def _fmt(ctx, name: str, which: str) -> str:
    from sops_enclave.formats import resolve_format

    return resolve_format(ctx.get(which), name)


def _input(ctx) -> tuple[bytes, str]:
    from sops_enclave.fileio import read_input

    path = ctx.abs(ctx.get("file"))
    return read_input(path), path


def _keys_from_flags(value: str | None, kind: str) -> list:
    """The entries of one ``--add-KIND``/``--rm-KIND``/``groups add --KIND`` value."""
    from sops_enclave import config as cfgmod
    from sops_enclave.keys import registry
    from sops_enclave.keys.base import KeyContext
    from sops_enclave.metadata import AgeEntry, KMSEntry, PGPEntry

    if not value:
        return []
    if kind == "kms":
        return [KMSEntry(s.arn, s.role, tuple(s.context), s.aws_profile)
                for s in cfgmod.parse_kms_arg(value, {}, "")]
    if kind in ("pgp", "age"):
        items = [x.strip() for x in value.split(",") if x.strip()]
        if kind == "age":  # sops parses them with the flags, before reading the file
            items = [cfgmod.validate_age_recipient(x) for x in items]
        return [PGPEntry(x) if kind == "pgp" else AgeEntry(x) for x in items]
    name = {f: n for n, f, _ in registry.CLI_FLAGS}[kind]
    return registry.key_type(name).from_arg(value, KeyContext(os.environ))


def _need_file(ctx) -> None:
    """sops' check at the start of each of these commands (exit 100)."""
    from sops_enclave.errors import NoFileSpecified

    if ctx.get("file") is None:
        raise NoFileSpecified("Error: no file specified")


def _count(ctx, *names: str) -> int:
    return sum(ctx.get(n) is not None for n in names) + len(ctx.get("rest") or [])


def do_rotate(ctx) -> int:
    from sops_enclave import api

    _need_file(ctx)

    if ctx.get("in_place") and ctx.get("output"):
        raise ConflictingParameters("Error: cannot operate on both --output and --in-place")
    data, path = _input(ctx)
    add = sum((_keys_from_flags(ctx.get("add_" + k.replace("-", "_")), k)
               for k in _KEY_FLAG_KINDS), [])
    rm = sum((_keys_from_flags(ctx.get("rm_" + k.replace("-", "_")), k)
              for k in _KEY_FLAG_KINDS), [])
    out = api.rotate_document(data, _fmt(ctx, path, "input_type"), add=add, remove=rm,
                              out_fmt=_fmt(ctx, path, "output_type"), services=ctx.services(),
                              ignore_mac=bool(ctx.get("ignore_mac")),
                              decryption_order=ctx.decryption_order(),
                              cfg=ctx.store_config(ctx.config(path)[0]))
    ctx.write_result(out, path)
    return 0


def _json_value(text: str) -> Any:
    from sops_enclave.formats import json_store

    def _float(s: str) -> float:
        return float(s)

    try:
        v = json.JSONDecoder(object_pairs_hook=Branch, parse_int=_float).decode(text)
    except (json.JSONDecodeError, ValueError):
        raise InvalidSetFormat("Value for --set is not valid JSON") from None
    if isinstance(v, list) and not isinstance(v, Branch):
        raise InvalidSetFormat("Invalid --set value format")
    del json_store
    return v


def _set_path(raw: str) -> list:
    from sops_enclave import api
    from sops_enclave.errors import InvalidTreePathFormat

    try:
        return api.parse_tree_path(raw)
    except InvalidTreePathFormat:
        raise InvalidSetFormat("Invalid set index format") from None


def _modify_in_place(ctx, data: bytes, path: str, change) -> int:
    """Decrypt, apply ``change``, re-encrypt with the same key, replace the file atomically."""
    from sops_enclave import api
    from sops_enclave.fileio import write_atomic

    out = api.modify_document(data, _fmt(ctx, path, "input_type"), change,
                              out_fmt=_fmt(ctx, path, "output_type"), services=ctx.services(),
                              ignore_mac=bool(ctx.get("ignore_mac")),
                              decryption_order=ctx.decryption_order(),
                              cfg=ctx.store_config(ctx.config(path)[0]))
    if out is not None:
        write_atomic(path, out)
    return 0


def do_set(ctx) -> int:
    from sops_enclave import api
    from sops_enclave.errors import NoFileSpecified

    n = _count(ctx, "file", "path", "value")
    if ctx.get("value_stdin") and n != 2:
        raise NoFileSpecified("Error: file specified, or index and value are missing. Need "
                              "precisely 2 positional arguments since --value-stdin is used.")
    if not ctx.get("value_stdin") and n != 3:
        raise NoFileSpecified("Error: no file specified, or index and value are missing. "
                              "Need precisely 3 positional arguments.")
    data, path = _input(ctx)
    tree_path = _set_path(ctx.get("path"))
    if ctx.get("value_stdin"):
        text = sys.stdin.read()
    elif ctx.get("value_file"):
        if ctx.get("value") is None:
            raise InvalidSetFormat("Error: no value file given")
        with open(ctx.abs(ctx.get("value")), encoding="utf-8") as f:
            text = f.read()
    else:
        if ctx.get("value") is None:
            raise InvalidSetFormat("Error: no value given")
        text = ctx.get("value")
    value = _json_value(text)
    idempotent = bool(ctx.get("idempotent"))

    def change(branches: list[Branch]) -> bool:
        changed = api.set_value(branches[0], tree_path, value)
        return changed or not idempotent

    return _modify_in_place(ctx, data, path, change)


def do_unset(ctx) -> int:
    from sops_enclave import api
    from sops_enclave.errors import NoFileSpecified

    if _count(ctx, "file", "path") != 2:
        raise NoFileSpecified("Error: no file specified, or index is missing")
    data, path = _input(ctx)
    tree_path = _set_path(ctx.get("path"))

    def change(branches: list[Branch]) -> bool:
        try:
            api.unset_value(branches[0], tree_path)
        except SopsError:
            if ctx.get("idempotent"):
                return False
            raise
        return True

    return _modify_in_place(ctx, data, path, change)


def do_filestatus(ctx) -> int:
    """sops' filestatus: its errors go through sops' logger (``[CMD] ... level=fatal``, exit
    1), the file named as given (sops reads it without the existence check of decrypt)."""
    from sops_enclave import api
    from sops_enclave.errors import LoggedFatal, MetadataNotFound, go_errno_text

    _need_file(ctx)
    given = ctx.get("file")
    path = ctx.abs(given)
    fail = "cannot check file status: cannot load encrypted file: "
    try:
        with open(path, "rb") as f:
            data = f.read()
    except IsADirectoryError:
        raise LoggedFatal(f"{fail}Error reading file: read {given}: is a directory") from None
    except OSError as e:
        raise LoggedFatal(f"{fail}Error reading file: open {given}: {go_errno_text(e)}") from None
    fmt = _fmt(ctx, path, "input_type")
    try:
        _, md = api.load_encrypted(data, fmt)
        encrypted = bool(md.version and md.mac)
    except MetadataNotFound:
        encrypted = False
    except SopsError as e:
        if "Version string empty" in e.message:
            encrypted = False
        else:
            raise LoggedFatal(fail + e.message) from None
    sys.stdout.write(json.dumps({"encrypted": encrypted}, separators=(",", ":")) + "\n")
    return 0


def _editor(env: dict) -> list[str]:
    for var in ("SOPS_EDITOR", "EDITOR"):
        if env.get(var):
            return shlex.split(env[var])
    for name in ("vim", "nano", "vi"):
        found = shutil.which(name, path=env.get("PATH"))
        if found:
            return [found]
    raise NoEditorFound("Could not run editor: no editor found (set SOPS_EDITOR or EDITOR)")


_WELCOME = "Welcome to SOPS! Edit this file as you please!"


def example_branches(fmt: str) -> list[Branch]:
    """The document sops opens for a file that does not exist yet (its ``EmitExample``): a
    nested one for INI, a flat one for dotenv, the raw welcome text for binary, else one with
    a comment, a list, a number and booleans."""
    if fmt == "binary":
        return [Branch([("data", _WELCOME)])]
    if fmt == "ini":
        return [Branch([("Welcome!", Branch([(Comment(" This is an example file."), None),
                                             ("hello", _WELCOME),
                                             ("example_key", "example_value")]))])]
    if fmt == "dotenv":
        return [Branch([(Comment(" This is an example file."), None), ("hello", _WELCOME),
                        ("example_key", "example_value"),
                        ("example_multiline", "foo\nbar\nbaz")])]
    return [Branch([("hello", _WELCOME), ("example_key", "example_value"),
                    (Comment(" Example comment"), None),
                    ("example_array", ["example_value1", "example_value2"]),
                    ("example_number", 1234.56789), ("example_booleans", [True, False])])]


def _edit_until_ok(ctx, path: str, plain: bytes, load_fmt: str) -> list[Branch]:
    """Write ``plain`` to a 0600 file in a private directory, run the editor until what was
    saved parses; the new branches. Exit 200 when nothing changed."""
    editor = _editor(ctx.env)
    tmpdir = tempfile.mkdtemp(prefix="sops-enclave-edit-")
    tmp = os.path.join(tmpdir, os.path.basename(path))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(plain)
        before = hashlib.sha256(plain).digest()
        while True:
            try:
                rc = subprocess.run(editor + [tmp], env=ctx.env).returncode
            except OSError as e:
                raise NoEditorFound(f"Could not run editor: {e.strerror}") from None
            if rc != 0:
                raise NoEditorFound(f"Could not run editor: exit status {rc}")
            with open(tmp, "rb") as f:
                edited = f.read()
            if hashlib.sha256(edited).digest() == before:
                raise FileHasNotBeenModified("File has not changed, exiting.")
            try:
                from sops_enclave.formats import get_store
                return get_store(load_fmt).load_plain(edited)
            except (ValueError, SopsError) as e:
                if not sys.stdin.isatty():
                    raise SopsError(f"Could not load tree, probably due to invalid syntax: "
                                    f"{e}") from None
                print(f"Could not load tree, probably due to invalid syntax: {e}\nPress "
                      "a key to return to the editor, or Ctrl+C to exit.", file=sys.stderr)
                sys.stdin.readline()
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _edit_new(ctx, path: str) -> int:
    """sops' ``editExample``: the keys come from the flags or the creation rule and wrap a new
    data key *before* the editor opens (a key error loses no typing); the example document
    is written in the output format; the file is created encrypted."""
    from sops_enclave import SOPS_FORMAT_VERSION, api
    from sops_enclave.cmdline import encrypt_options
    from sops_enclave.fileio import write_atomic
    from sops_enclave.formats import get_store
    from sops_enclave.keys.groups import protect_data_key
    from sops_enclave.metadata import Metadata

    name = ctx.abs(ctx.get("filename_override")) if ctx.get("filename_override") else path
    in_fmt = _fmt(ctx, name, "input_type")
    out_fmt = _fmt(ctx, name, "output_type")
    opts, cfg = encrypt_options(ctx, name, binary=(in_fmt == "binary"))
    sc = ctx.store_config(cfg)
    example = api.emit_plain(example_branches(in_fmt), in_fmt, sc)
    if in_fmt == "binary":
        example = _WELCOME.encode()
    branches = get_store(in_fmt).load_plain(example)
    md = Metadata(key_groups=[list(g) for g in opts.key_groups], version=SOPS_FORMAT_VERSION,
                  shamir_threshold=opts.shamir_threshold, crypt_rule=opts.crypt_rule,
                  mac_only_encrypted=opts.mac_only_encrypted and out_fmt != "binary")
    data_key = os.urandom(32)
    try:
        protect_data_key(md, data_key, ctx.services())
    except SopsError as e:
        msg = e.message.replace("Could not generate data key: ", "", 1)
        raise SopsError("Error encrypting the data key with one or more master keys: " + msg,
                        exit_code=128) from None
    plain = api.emit_plain(branches, out_fmt, sc)
    edited = _edit_until_ok(ctx, path, plain, in_fmt)
    enc = api.encrypt_branches(edited, md, data_key)
    write_atomic(path, api.emit_encrypted(enc, md, out_fmt, sc))
    return 0


def do_edit(ctx) -> int:
    from sops_enclave import api
    from sops_enclave.fileio import write_atomic

    _need_file(ctx)
    if ctx.get("in_place") and ctx.get("output"):
        raise ConflictingParameters("Error: cannot operate on both --output and --in-place")
    path = ctx.abs(ctx.get("file"))
    if not os.path.exists(path):
        return _edit_new(ctx, path)
    data, path = _input(ctx)
    in_fmt = _fmt(ctx, path, "input_type")
    out_fmt = _fmt(ctx, path, "output_type")
    sc = ctx.store_config(ctx.config(path)[0])
    _editor(ctx.env)  # no editor: fail before decrypting

    def change(branches: list[Branch]) -> bool:
        branches[:] = _edit_until_ok(ctx, path, api.emit_plain(branches, out_fmt, sc), out_fmt)
        return True

    out = api.modify_document(data, in_fmt, change, out_fmt=in_fmt, services=ctx.services(),
                              ignore_mac=bool(ctx.get("ignore_mac")),
                              decryption_order=ctx.decryption_order(), cfg=sc)
    if out is not None:
        write_atomic(path, out)
    return 0


def do_legacy_set(ctx, raw: str) -> int:
    """``sops --set 'PATH VALUE' FILE`` (the form before ``set``): split after the first
    ``"] "``; the value is read before the path; the file is always written in place."""
    from sops_enclave import api
    from sops_enclave.errors import CouldNotReadInputFile, InvalidTreePathFormat

    head, sep, text = raw.partition("] ")
    if not sep:
        raise InvalidSetFormat("Invalid --set format")
    value = _json_value(text)
    try:
        tree_path = api.parse_tree_path((head + "]").rstrip(" "))
    except InvalidTreePathFormat:
        raise InvalidSetFormat("Invalid --set format") from None
    path = ctx.abs(ctx.get("file"))
    if not os.path.exists(path):
        raise CouldNotReadInputFile(f"Error reading file: open {path}: no such file or "
                                    "directory")
    data, path = _input(ctx)

    def change(branches: list[Branch]) -> bool:
        api.set_value(branches[0], tree_path, value)
        return True

    return _modify_in_place(ctx, data, path, change)


_SIGNAL_TEXT: dict[int, str] = {
    signal.SIGKILL: "killed", signal.SIGTERM: "terminated", signal.SIGINT: "interrupt",
    signal.SIGHUP: "hangup", signal.SIGSEGV: "segmentation fault", signal.SIGABRT: "aborted",
    signal.SIGPIPE: "broken pipe", signal.SIGQUIT: "quit", signal.SIGUSR1: "user defined signal 1",
    signal.SIGUSR2: "user defined signal 2"}


def _child_status(rc: int) -> int:
    """sops returns the child's status; a signal makes Go's ExitCode() -1, so 255."""
    if rc == 0:
        return 0
    if rc < 0:
        sig = -rc
        print(f"signal: {_SIGNAL_TEXT.get(sig, f'signal {sig}')}", file=sys.stderr)
        return 255
    print(f"exit status {rc}", file=sys.stderr)
    return rc


def _user_preexec(user: str | None):
    if not user:
        return None, {}
    import pwd

    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise SopsError(f"user: unknown user {user}") from None
    if os.geteuid() != 0:
        raise SopsError("--user can only be used as root")

    def switch() -> None:
        os.initgroups(pw.pw_name, pw.pw_gid)
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)

    return switch, {"HOME": pw.pw_dir, "USER": pw.pw_name, "LOGNAME": pw.pw_name}


def _decrypt_for_exec(ctx):
    """Decrypt the exec inputs (MAC always checked); several files are deep-merged in order."""
    from sops_enclave import api
    from sops_enclave.fileio import read_input
    from sops_enclave.merge import deep_merge

    inputs = list(ctx.get("inputs"))
    if len(inputs) < 2:
        raise SopsError("error: missing file to decrypt")
    ctx.args.command = inputs.pop()
    docs = []
    for f in inputs:
        path = ctx.abs(f)
        d = api.decrypt_document(read_input(path), _fmt(ctx, path, "input_type"),
                                 services=ctx.services(),
                                 decryption_order=ctx.decryption_order())
        docs.append(d.branches)
    first_path = ctx.abs(inputs[0])
    if len(docs) == 1:
        return docs[0], first_path
    merged, _ = deep_merge([b[0] for b in docs])
    return [merged], first_path


def do_exec_env(ctx) -> int:
    from sops_enclave.goformat import val_to_string

    branches, _ = _decrypt_for_exec(ctx)
    secrets: dict[str, str] = {}
    for k, v in branches[0]:
        if isinstance(k, Comment):
            continue
        if isinstance(v, (Branch, list)):
            raise SopsError(f"cannot use complex value in environment; offending key {k}")
        if not isinstance(k, str):
            raise SopsError(f"cannot use non-string keys in environment, got {type(k).__name__}")
        if "=" in k:
            raise SopsError(f"cannot use keys with '=' in environment: {k}")
        secrets[k] = val_to_string(v)
    preexec, user_env = _user_preexec(ctx.get("user"))
    env = {} if ctx.get("pristine") else dict(ctx.env)
    env.update(user_env)
    env.update(secrets)
    env_b = {k.encode("utf-8", "surrogateescape"): v.encode("utf-8", "surrogateescape")
             for k, v in env.items()}
    if ctx.get("same_process"):
        os.execve("/bin/sh", ["/bin/sh", "-c", ctx.get("command")], env_b)
    rc = subprocess.run(["/bin/sh", "-c", ctx.get("command")], env=env_b,
                        preexec_fn=preexec).returncode
    return _child_status(rc)


def do_exec_file(ctx) -> int:
    from sops_enclave import api

    branches, path = _decrypt_for_exec(ctx)
    out_fmt = _fmt(ctx, path, "output_type")
    plain = api.emit_plain(branches, out_fmt, ctx.store_config(None))
    preexec, user_env = _user_preexec(ctx.get("user"))
    tmpdir = tempfile.mkdtemp(prefix=".sops")
    name = ctx.get("filename")
    try:
        if name is not None and (os.path.isabs(name) or os.path.normpath(name).startswith("..")
                                 or os.sep in os.path.normpath(name)):
            raise SopsError("The provided filename is not a local path.")
        if not ctx.get("no_fifo"):
            target = os.path.join(tmpdir, name or "tmp-file")
            os.mkfifo(target, 0o600)

            def feed() -> None:
                try:
                    with open(target, "wb") as f:
                        f.write(plain)
                except OSError:
                    pass

            threading.Thread(target=feed, daemon=True).start()
        else:
            if name:
                target = os.path.join(tmpdir, name)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            else:
                fd, target = tempfile.mkstemp(prefix="tmp-file", dir=tmpdir)
            with os.fdopen(fd, "wb") as f:
                f.write(plain)
        env = dict(ctx.env)
        env.update(user_env)
        cmd = ctx.get("command").replace("{}", target)
        rc = subprocess.run(["/bin/sh", "-c", cmd], env=env, preexec_fn=preexec).returncode
    finally:
        if not ctx.get("no_fifo"):
            # Unblock a writer whose reader never came, then clean up.
            try:
                fd = os.open(os.path.join(tmpdir, name or "tmp-file"), os.O_RDONLY | os.O_NONBLOCK)
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(tmpdir, ignore_errors=True)
    return _child_status(rc)


# ------------------------------------------------------------------ key groups

def groups_parser(cls):
    p = _parser(cls, "groups", "Add or delete key groups of FILE (the data key stays the same).")
    sub = p.add_subparsers(dest="groups_cmd", parser_class=cls)
    a = sub.add_parser("add", help="add a key group")
    d = sub.add_parser("delete", help="delete the key group at INDEX (0-based)")
    for q in (a, d):
        q.add_argument("--file", required=True, help="the SOPS file")
        q.add_argument("-i", "--in-place", action="store_true", help="write the result to the file")
        q.add_argument("--shamir-secret-sharing-threshold", type=int, help="the new threshold")
        q.add_argument("--keyservice", action="append", default=[], help=argparse.SUPPRESS)
        q.add_argument("--enable-local-keyservice", action="store_true", default=None,
                       help=argparse.SUPPRESS)
        q.add_argument("--decryption-order", help="key types to try first")
        q.add_argument("--verbose", action="store_true")
    a.add_argument("--pgp", action="append", default=[], help="a PGP fingerprint (repeatable)")
    a.add_argument("--kms", action="append", default=[], help="an AWS KMS ARN (repeatable)")
    a.add_argument("--age", action="append", default=[], help="an age recipient (repeatable)")
    a.add_argument("--gcp-kms", action="append", default=[], help="a GCP KMS resource ID "
                   "(repeatable)")
    a.add_argument("--hckms", action="append", default=[], help="a HuaweiCloud KMS key ID, "
                   "region:key-uuid (repeatable)")
    a.add_argument("--azure-kv", action="append", default=[], help="an Azure Key Vault key URL "
                   "(repeatable)")
    a.add_argument("--hc-vault-transit", action="append", default=[], help="a Vault transit "
                   "key URI (repeatable)")
    d.add_argument("index", type=int)
    return p


def do_groups(ctx) -> int:
    from sops_enclave import api
    from sops_enclave.fileio import read_input, write_atomic
    from sops_enclave.formats import format_for_path

    sub = ctx.get("groups_cmd")
    if sub is None:
        raise SopsError("groups: use 'groups add' or 'groups delete'")
    path = ctx.abs(ctx.get("file"))
    data = read_input(path)
    fmt = format_for_path(path)
    _, md = api.load_encrypted(data, fmt)
    groups = [list(g) for g in md.key_groups]
    threshold = ctx.get("shamir_secret_sharing_threshold")
    if sub == "add":
        new = sum((_keys_from_flags(",".join(ctx.get(k.replace("-", "_")) or []), k)
                   for k in _KEY_FLAG_KINDS), [])
        if not new:
            raise SopsError("groups add: give at least one key (--pgp, --kms, --age, "
                            "--gcp-kms, --hckms, --azure-kv or --hc-vault-transit)")
        groups.append(new)
    else:
        idx = ctx.get("index")
        if idx < 0 or idx >= len(groups):
            raise SopsError(f"groups delete: no key group {idx} (the file has {len(groups)})")
        del groups[idx]
        if not groups:  # sops 3.11 writes it, and no key can open the file any more
            raise SopsError("groups delete: cannot delete the last key group (no key could "
                            "open the file)")
        limit = threshold or md.shamir_threshold
        if len(groups) < max(limit, 1):
            raise SopsError(f"removing this key group would make the Shamir threshold ({limit}) "
                            f"larger than the number of groups ({len(groups)})")
    out = api.rekey_document(data, fmt, groups, shamir_threshold=threshold,
                             services=ctx.services(), decryption_order=ctx.decryption_order())
    if ctx.get("in_place"):
        write_atomic(path, out)
    else:
        sys.stdout.buffer.write(out)
    return 0


def updatekeys_parser(cls):
    p = _parser(cls, "updatekeys", "Re-wrap the data key of each FILE for the key groups of its "
                ".sops.yaml creation rule (values and MAC unchanged). The changes are listed "
                "on stdout as sops lists them; confirm with y (or pass -y).")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--input-type", help="yaml, json, dotenv, ini or binary")
    p.add_argument("--keyservice", action="append", default=[], help=argparse.SUPPRESS)
    p.add_argument("--enable-local-keyservice", action="store_true", default=None,
                   help=argparse.SUPPRESS)
    p.add_argument("--decryption-order", help="key types to try first")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("files", nargs="*")
    return p


def key_string(e) -> str:
    """sops' ``MasterKey.ToString()``, which its key-group diffs compare and print."""
    from sops_enclave.metadata import KMSEntry

    if isinstance(e, KMSEntry) and e.aws_profile:
        arn = e.arn + (f"+{e.role}" if e.role else "")
        ctx = ",".join(f"{k}:{v}" for k, v in sorted(e.context))
        return f"{arn}|{ctx}|{e.aws_profile}"
    return e.ident()


def _color(code: str, text: str) -> str:
    """fatih/color as sops uses it: escapes only on a terminal, and not with NO_COLOR."""
    if os.environ.get("NO_COLOR") is not None or os.environ.get("TERM") == "dumb" \
            or not sys.stdout.isatty():
        return text
    return f"\x1b[{code}m{text}\x1b[0m"


def print_group_diffs(ours: list, theirs: list) -> tuple[bool, str]:
    """``common.DiffKeyGroups`` + ``PrettyPrintDiffs`` on stdout (``Group 1``, four spaces
    for a kept key, ``+++``/``---``); whether any key is added or removed."""
    changed = False
    lines = []
    for i in range(max(len(ours), len(theirs))):
        a = ours[i] if i < len(ours) else []
        b = theirs[i] if i < len(theirs) else []
        mine = {key_string(k) for k in a}
        other = {key_string(k) for k in b}
        common = [k for k in b if key_string(k) in mine]
        added = [k for k in b if key_string(k) not in mine]
        removed = [k for k in a if key_string(k) not in other]
        changed = changed or bool(added or removed)
        lines.append(_color("4", f"Group {i + 1}") + "\n")
        lines += [f"    {key_string(k)}\n" for k in common]
        lines += [_color("32", f"+++ {key_string(k)}") + "\n" for k in added]
        lines += [_color("31", f"--- {key_string(k)}") + "\n" for k in removed]
    return changed, "".join(lines)


def go_log(msg: str) -> None:
    """Go's standard logger (``log.Printf``): local date and time, then the message."""
    import time

    sys.stdout.flush()
    sys.stderr.write(time.strftime("%Y/%m/%d %H:%M:%S ") + msg + "\n")
    sys.stderr.flush()


def scanln() -> str:
    """``fmt.Scanln(&response)``: one word on a line; its errors as Go words them."""
    line = sys.stdin.readline()
    if line == "":
        raise SopsError("EOF")
    words = line.split()
    if not words:
        raise SopsError("unexpected newline")
    if len(words) > 1:
        raise SopsError("expected newline")
    return words[0]


def _updatekeys_file(ctx, given: str, config_path: str, threshold_flag: int) -> None:
    from sops_enclave import api
    from sops_enclave import config as cfgmod
    from sops_enclave.cmdline import entry_from_spec
    from sops_enclave.errors import CouldNotRetrieveKey, go_errno_text
    from sops_enclave.fileio import read_input, write_atomic
    from sops_enclave.formats import resolve_format
    from sops_enclave.keys.groups import get_data_key

    path = ctx.abs(given)
    try:
        st = os.stat(path)
    except OSError as e:
        raise SopsError(f"stat {path}: {go_errno_text(e)}") from None
    if os.path.isdir(path) and st:
        raise SopsError("can't operate on a directory")
    try:
        with open(config_path, "rb") as f:
            cfg = cfgmod.load_config(f.read(), config_path)
    except OSError as e:
        raise SopsError(f"could not read config file: open {config_path}: "
                        f"{go_errno_text(e)}") from None
    fmt = resolve_format(ctx.get("input_type"), path)
    go_log(f"Syncing keys for file {path}")
    data = read_input(path)
    _, md = api.load_encrypted(data, fmt)
    rule = cfg.creation_rule_for(path)
    if rule is None:
        raise SopsError(f"The config file {config_path} does not contain any creation rule")
    groups = [[entry_from_spec(s, ctx.env) for s in g] for g in rule.key_groups]
    keys_change, listing = print_group_diffs(md.key_groups, groups)
    old_t = md.shamir_threshold
    new_t = min(threshold_flag or old_t, len(groups))
    if not keys_change and old_t == new_t:
        go_log(f"File {path} already up to date")
        return
    out = ["The following changes will be made to the file's groups:\n"]
    if old_t > 0 and old_t == new_t:
        out.append(f"shamir_threshold: {new_t}\n")
    else:
        if new_t > 0:
            out.append(_color("32", f"+++ shamir_threshold: {new_t}") + "\n")
        if old_t > 0:
            out.append(_color("31", f"--- shamir_threshold: {old_t}") + "\n")
    sys.stdout.write("".join(out) + listing)
    sys.stdout.flush()
    if not ctx.get("yes"):
        answer = ""
        while answer not in ("y", "n"):
            sys.stdout.write("Is this okay? (y/n):")
            sys.stdout.flush()
            answer = scanln()
        if answer == "n":
            go_log(f"File {path} left unchanged")
            return
    try:
        get_data_key(md, ctx.services(), ctx.decryption_order())
    except CouldNotRetrieveKey:
        raise
    except SopsError as e:
        raise CouldNotRetrieveKey(e.message) from None
    new = api.rekey_document(data, fmt, groups, shamir_threshold=new_t,
                             services=ctx.services(), decryption_order=ctx.decryption_order(),
                             cfg=ctx.store_config(cfg))
    write_atomic(path, new)
    go_log(f"File {path} synced with new keys")


def do_updatekeys(ctx) -> int:
    """sops' ``updatekeys``: one file's error is the command's; with several files each
    error is logged and the count reported at the end."""
    from sops_enclave.errors import logrus_line

    from sops_enclave.cmdline import config_and_files

    config_path, files = config_and_files(ctx)
    # sops reads c.Int("shamir-secret-sharing-threshold") in a command that defines no such
    # flag: always 0, so the file's own threshold is kept (capped at the number of groups)
    threshold = 0
    failed = 0
    for f in files:
        try:
            _updatekeys_file(ctx, f, config_path, threshold)
        except SopsError as e:
            if len(files) == 1:
                raise
            failed += 1
            print(logrus_line("CMD", "error", e.message), file=sys.stderr)
    if failed:
        raise SopsError(f"failed updating {failed} key(s)")
    return 0


# ------------------------------------------------------------------ exec (the enclave pack)

def exec_parser(cls):
    p = _parser(cls, "exec", "Run the decrypt-merge-reencrypt pack of .sops-enclave.yaml inside "
                "an enclave, for the named targets (all when none), at a git commit. Writes each "
                "output and <output>.receipt.json (all of them or none).")
    p.add_argument("targets", nargs="*", help="targets of the manifest (default: all)")
    p.add_argument("--manifest", default=None, help="manifest path in the repo (default: the "
                   "enclave policy's, else .sops-enclave.yaml; the enclave refuses any other)")
    p.add_argument("--commit", default="HEAD", help="the commit to read inputs from (HEAD)")
    p.add_argument("--repo", default=".", help="the git work tree (default: the current dir)")
    p.add_argument("--enclave", default="dev", help="dev (local process, software NSM) or "
                   "nitro[:CID[:PORT]] (default dev)")
    p.add_argument("--enclave-policy", metavar="FILE",
                   help="dev enclave only: start it with this enclave policy (covered by its "
                   "measurement, as the policy baked into a Nitro image). Without it the dev "
                   "run is unrestricted and verify refuses its receipts unless "
                   "--allow-unrestricted")
    p.add_argument("--dry-run", action="store_true", help="print the plan, decrypt nothing")
    p.add_argument("--allow-dirty", action="store_true", help="pack the commit even when the "
                   "manifest or an input differs in the working tree (a warning, not an error)")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    p.add_argument("--verbose", action="store_true", help="say which enclave runs; tracebacks")
    return p


def _check_dirty(ctx, host, opts, commit: str) -> None:
    """exec packs the commit: refuse (or with --allow-dirty, warn) when the manifest or an
    input of the plan is not the same in the working tree."""
    paths = [opts.manifest_path]
    try:
        paths += [i.file for p in host.plan_all_inputs(opts, commit) for i in p.inputs]
    except SopsError:
        pass  # the commit's manifest is broken or missing: compare the manifest alone
    changes = host.working_tree_changes(opts.repo, commit, paths)
    if not changes:
        return
    listed = ", ".join(f"{p} ({how})" for p, how in changes[:5])
    more = f" and {len(changes) - 5} more" if len(changes) > 5 else ""
    what = f"{listed}{more} differ{'s' if len(changes) == 1 else ''} from commit {commit[:12]}"
    if ctx.get("allow_dirty"):
        print(f"sops-enclave: warning: {what}; packing the commit (--allow-dirty)",
              file=sys.stderr)
        return
    raise SopsError(f"{what}: exec packs the commit, not the working tree; commit the "
                    "changes (or pass --allow-dirty to pack the commit as it is)")


def do_exec(ctx) -> int:
    from sops_enclave.pack import host

    policy_file = ctx.get("enclave_policy")
    manifest = ctx.get("manifest")
    if policy_file:
        if ctx.get("enclave") != "dev":
            raise ConflictingParameters("--enclave-policy is for the dev enclave; a Nitro "
                                        "enclave enforces the policy measured into its image")
        from sops_enclave.fileio import read_input
        from sops_enclave.pack.enclave_policy import load_enclave_policy

        policy_file = ctx.abs(policy_file)
        manifest = manifest or load_enclave_policy(read_input(policy_file),
                                                   policy_file).manifest_path
    opts = host.ExecOptions(repo=ctx.abs(ctx.get("repo")), commit=ctx.get("commit"),
                            manifest_path=manifest or ".sops-enclave.yaml",
                            targets=ctx.get("targets") or (), enclave=ctx.get("enclave"),
                            enclave_policy=policy_file)
    if ctx.get("dry_run"):
        commit, manifest, plans = host.plan_at_commit(
            opts, lambda commit: _check_dirty(ctx, host, opts, commit))
        host.check_recipients(opts.manifest_path, plans)
        if policy_file:  # the checks the enclave will make, made early
            from sops_enclave.fileio import read_input
            from sops_enclave.pack.enclave_policy import load_enclave_policy

            pol = load_enclave_policy(read_input(policy_file), policy_file)
            for plan in plans:
                pol.check_output(plan.target, plan.encrypt.kms, plan.encrypt.age,
                                 plan.encrypt.hc_vault)
        print(f"commit {commit}")
        print(manifest.describe(plans))
        return 0
    if opts.enclave == "dev" and ctx.get("verbose"):
        print("[sops-enclave] dev enclave (software NSM): receipts verify only with --allow-dev",
              file=sys.stderr)
    summary = host.run_exec(opts, ctx.env,
                            check_commit=lambda commit: _check_dirty(ctx, host, opts, commit))
    if opts.enclave == "dev" and not policy_file:
        # After the run, so that an error stays one line.
        print("sops-enclave: warning: no --enclave-policy: this dev run was UNRESTRICTED (any "
              "commit, any recipient); its receipts say so and verify refuses them unless "
              "--allow-unrestricted", file=sys.stderr)
    if ctx.get("json"):
        summary["enclave"] = opts.enclave
        print(json.dumps(summary, indent=2))
        return 0
    for out in summary["outputs"]:
        print(f"{out['target']}: wrote {out['path']} and {out['receipt']}")
    return 0


def dev_parser(cls):
    p = _parser(cls, "dev", "Dev stand-ins (no cloud): 'dev up' starts moto's KMS behind the "
                "KMS-with-attestation layer on 127.0.0.1 in the background, 'dev env' prints "
                "the environment for a shell, 'dev kms' makes keys, 'dev down' stops it. Keys "
                "and port are kept in the state directory across restarts.")
    sub = p.add_subparsers(dest="dev_cmd", parser_class=cls)

    def state(q):
        q.add_argument("--state", metavar="DIR", help="the state directory (default "
                       "$SOPS_ENCLAVE_DEV_STATE, else ~/.local/state/sops-enclave/dev)")
        q.add_argument("--verbose", action="store_true", help="show tracebacks")

    up = sub.add_parser("up", help="start the dev stack in the background (or say it runs)")
    state(up)
    up.add_argument("--port", type=int, default=0, help="port of the attested KMS (default: "
                    "the one kept in the state directory, else a free one)")
    up.add_argument("--enclave-policy", metavar="FILE", help="the enclave policy dev runs use: "
                    "printed PCR0 and the default of 'dev kms create-key --gated'")
    up.add_argument("--foreground", action="store_true", help="run in this terminal until "
                    "Ctrl+C")
    up.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    state(sub.add_parser("down", help="stop the dev stack (its keys stay in the state "
                                      "directory)"))
    state(sub.add_parser("env", help="print the exports for a shell: "
                                     "eval \"$(sops-enclave dev env)\""))
    kms = sub.add_parser("kms", help="keys of the dev KMS (no aws CLI needed)")
    ksub = kms.add_subparsers(dest="kms_cmd", parser_class=cls)
    ck = ksub.add_parser("create-key", help="create a symmetric key and print its ARN")
    state(ck)
    ck.add_argument("--alias", metavar="NAME", help="also create alias/NAME")
    ck.add_argument("--gated", action="store_true", help="apply the attestation-gated key "
                    "policy ('sops-enclave policy') pinned to the dev enclave's PCR0")
    ck.add_argument("--enclave-policy", metavar="FILE", help="with --gated: the enclave policy "
                    "the dev enclave runs with (default: the one 'dev up' was given)")
    pk = ksub.add_parser("put-key-policy", help="set a key's policy as the key admin (as "
                         "'aws kms put-key-policy' does)")
    state(pk)
    pk.add_argument("key", metavar="KEY", help="key ARN, key id or alias/NAME")
    pk.add_argument("policy", metavar="FILE", help="the policy JSON ('-': stdin)")
    ls = ksub.add_parser("list", help="the keys: ARN, aliases, the PCR0 a policy pins")
    state(ls)
    ls.add_argument("--json", action="store_true", help="print JSON")
    return p


def do_dev(ctx) -> int:
    from sops_enclave.devtools import devstack

    cmd = ctx.get("dev_cmd")
    state = ctx.abs(ctx.get("state")) if ctx.get("state") else None
    policy = ctx.abs(ctx.get("enclave_policy")) if ctx.get("enclave_policy") else None
    if cmd == "up":
        if ctx.get("foreground") or ctx.get("ready_fd") is not None:
            return devstack.serve(state, ctx.get("port") or 0, policy,
                                  ready_fd=ctx.get("ready_fd"), environ=ctx.env)
        return devstack.up(state, ctx.get("port") or 0, policy, environ=ctx.env)
    if cmd == "down":
        return devstack.down(state, environ=ctx.env)
    if cmd == "env":
        d = devstack.resolve_state(state, ctx.env)
        run = devstack.running(d)
        if run is None:
            raise devstack.not_running_error(d)
        print("\n".join(devstack.env_exports(run, d)))
        return 0
    if cmd == "kms" and ctx.get("kms_cmd") == "create-key":
        if policy and not ctx.get("gated"):
            raise ConflictingParameters("--enclave-policy goes with --gated")
        print(devstack.create_key(state, ctx.get("alias"), bool(ctx.get("gated")), policy,
                                  environ=ctx.env))
        return 0
    if cmd == "kms" and ctx.get("kms_cmd") == "put-key-policy":
        from sops_enclave.fileio import read_input

        src = ctx.get("policy")
        text = (sys.stdin.buffer.read() if src == "-" else read_input(ctx.abs(src)))
        arn, pcr0 = devstack.put_key_policy(state, ctx.get("key"),
                                            text.decode("utf-8", "replace"), environ=ctx.env)
        print(f"{arn}: key policy set" + (f"; Decrypt only with an attestation of PCR0 "
                                          f"{pcr0[:16]}..." if pcr0 else ""))
        return 0
    if cmd == "kms" and ctx.get("kms_cmd") == "list":
        keys = devstack.list_keys(state, environ=ctx.env)
        if ctx.get("json"):
            print(json.dumps(keys, indent=2))
            return 0
        for k in keys:
            gate = f"gated to PCR0 {k['GatedPCR0'][:16]}..." if k["GatedPCR0"] else "not gated"
            print(f"{k['Arn']}  {','.join(k['Aliases']) or '-'}  {k['KeyState']}, {gate}")
        return 0
    raise SopsError("usage: sops-enclave dev up|down|env|kms create-key|kms put-key-policy|"
                    "kms list (see 'sops-enclave dev --help')")
