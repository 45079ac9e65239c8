"""`hcd` command line: one entry point, subcommands registered by small modules.

Each module is imported only when needed, so `hcd status` does not pay for importing torch. Ctrl-C
ends any command with exit code 130 and a closed output (`hcd list | head`) with 141, without a
traceback; the exit codes are in hcd_cli.exits (and `hcd --help`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from hcd_cli import exits

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
    "list": "hcd_cli.client_cmds",
    "watch": "hcd_cli.client_cmds",
    "events": "hcd_cli.client_cmds",
    "cancel": "hcd_cli.client_cmds",
    "delete": "hcd_cli.client_cmds",
    "download": "hcd_cli.client_cmds",
    "models": "hcd_cli.model_cmds",  # teachers uploaded to the service
    "datasets": "hcd_cli.dataset_cmds",  # image-folder datasets uploaded to the service
    "sweep": "hcd_cli.sweep_cmds",  # a grid x seeds: locally (hcd train subprocesses) or on the service
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hcd", description="HCD distillation engine and service",
                                     epilog=exits.HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = sorted(set(_COMMANDS.values())) if only is None else [_COMMANDS[only]]
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def _quiet_stdout() -> None:
    """After a broken pipe: send what is left to /dev/null, so that Python's flush at exit says nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    first = argv[0] if argv else None
    try:
        # Import only the module of the chosen subcommand; `hcd --help` imports them all.
        parser = build_parser(first if first in _COMMANDS else None)
        args = parser.parse_args(argv)
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, so that a closed pipe is seen now and not at exit
        return code
    except KeyboardInterrupt:
        print("\nhcd: interrupted", file=sys.stderr, flush=True)
        return exits.INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        return exits.BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
