"""``sops-enclave completion bash|zsh|fish``: a shell completion script on stdout.

The scripts are self-contained: the command names and each command's flags are read from
the argument parsers when the script is generated, so nothing runs at completion time
(sops' own scripts call ``sops ... --generate-bash-completion`` on every Tab). Load one with
``source <(sops-enclave completion bash)`` (or ``zsh``), or for fish
``sops-enclave completion fish | source``.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["parser", "handle", "script"]

PROG = "sops-enclave"


def parser(cls) -> argparse.ArgumentParser:
    p = cls(prog="sops-enclave completion", description="Print a completion script for "
            "bash, zsh or fish.")
    p.add_argument("shell", nargs="?", choices=["bash", "zsh", "fish"])
    p.add_argument("--verbose", action="store_true", help=argparse.SUPPRESS)
    return p


def _flags(p: argparse.ArgumentParser) -> list[str]:
    out = []
    for act in p._actions:
        if act.help == argparse.SUPPRESS:
            continue
        out += [o for o in act.option_strings if o.startswith("--")]
    return sorted(set(out))


def _commands() -> dict[str, list[str]]:
    """command name -> its long flags; ``""`` holds the global flags."""
    from sops_enclave.cmdline import COMMANDS, global_parser

    Quiet = argparse.ArgumentParser
    table = {"": _flags(global_parser())}
    for name, command in COMMANDS.items():
        if command.register:
            table[name] = ["--help"]
        else:
            table[name] = _flags(command.load()[0](Quiet))
    table["help"] = []
    return table


def _bash(table: dict[str, list[str]]) -> str:
    cases = "".join(f"        {name}) words=\"{' '.join(flags)}\" ;;\n"
                    for name, flags in sorted(table.items()) if name)
    names = " ".join(sorted(n for n in table if n))
    return f"""# bash completion for {PROG}: source <({PROG} completion bash)
_sops_enclave_complete() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" cmd="" words="" i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            -*) ;;
            *) cmd="${{COMP_WORDS[i]}}"; break ;;
        esac
    done
    case "$cmd" in
{cases}        *) cmd=""; words="{' '.join(table[''])}" ;;
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=( $(compgen -W "$words" -- "$cur") )
    elif [[ -z "$cmd" ]]; then
        COMPREPLY=( $(compgen -W "{names}" -- "$cur") )
    fi
    return 0
}}
complete -o bashdefault -o default -F _sops_enclave_complete {PROG}
"""


def _zsh(table: dict[str, list[str]]) -> str:
    cases = "".join(f"        {name}) flags=({' '.join(flags)}) ;;\n"
                    for name, flags in sorted(table.items()) if name)
    names = " ".join(sorted(n for n in table if n))
    return f"""#compdef {PROG}
# zsh completion for {PROG}: source <({PROG} completion zsh)
_sops_enclave_complete() {{
    local cmd="" w
    local -a flags
    for w in "${{(@)words[2,CURRENT-1]}}"; do
        if [[ "$w" != -* ]]; then cmd="$w"; break; fi
    done
    case "$cmd" in
{cases}        *) cmd=""; flags=({' '.join(table[''])}) ;;
    esac
    if [[ "$PREFIX" == -* ]]; then
        compadd -- $flags
    elif [[ -z "$cmd" ]]; then
        compadd -- {names}
        _files
    else
        _files
    fi
}}
compdef _sops_enclave_complete {PROG}
"""


def _fish(table: dict[str, list[str]]) -> str:
    names = " ".join(sorted(n for n in table if n))
    lines = [f"# fish completion for {PROG}: {PROG} completion fish | source",
             f"complete -c {PROG} -n __fish_use_subcommand -f -a '{names}'"]
    for flag in table[""]:
        lines.append(f"complete -c {PROG} -n __fish_use_subcommand -l {flag[2:]}")
    for name, flags in sorted(table.items()):
        if not name:
            continue
        for flag in flags:
            lines.append(f"complete -c {PROG} -n '__fish_seen_subcommand_from {name}' "
                         f"-l {flag[2:]}")
    return "\n".join(lines) + "\n"


def script(shell: str) -> str:
    table = _commands()
    return {"bash": _bash, "zsh": _zsh, "fish": _fish}[shell](table)


def handle(ctx) -> int:
    shell = ctx.get("shell")
    if shell is None:  # sops prints the command's help and exits 0
        parser(argparse.ArgumentParser).print_help()
        return 0
    sys.stdout.write(script(shell))
    return 0
