"""`hcd` command line: one entry point, subcommands registered by small modules.

Each module is imported only when needed, so `hcd status` does not pay for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module that defines `register(subparsers)`; the module's parser sets `func`.
_COMMANDS: dict[str, str] = {
    "train": "hcd_cli.engine_cmds",  # local training from a spec file
    "eval": "hcd_cli.engine_cmds",  # evaluate an exported student
    "up": "hcd_cli.server_cmds",  # everything on one machine
    "api": "hcd_cli.server_cmds",
    "worker": "hcd_cli.server_cmds",
    "migrate": "hcd_cli.admin_cmds",
    "keys": "hcd_cli.admin_cmds",
    "submit": "hcd_cli.client_cmds",
    "status": "hcd_cli.client_cmds",
    "watch": "hcd_cli.client_cmds",
    "cancel": "hcd_cli.client_cmds",
    "download": "hcd_cli.client_cmds",
    "sweep": "hcd_cli.sweep_cmds",  # a grid x seeds: locally (hcd train subprocesses) or on the service
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hcd", description="HCD distillation engine and service")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = sorted(set(_COMMANDS.values())) if only is None else [_COMMANDS[only]]
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    first = argv[0] if argv else None
    # Import only the module of the chosen subcommand; `hcd --help` imports them all.
    parser = build_parser(first if first in _COMMANDS else None)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
