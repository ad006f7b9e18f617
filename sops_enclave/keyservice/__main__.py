"""``python -m sops_enclave.keyservice [--network tcp|unix] [--address ADDR] [--prompt] [--verbose]``."""

from __future__ import annotations

import argparse
import sys

from sops_enclave.errors import SopsError
from sops_enclave.keyservice.cli import add_arguments


def main(argv: list[str] | None = None) -> int:
    p = add_arguments(argparse.ArgumentParser(prog="python -m sops_enclave.keyservice",
                                              description="Start a SOPS key service server."))
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except SopsError as e:
        print(e.diagnostics(), file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
