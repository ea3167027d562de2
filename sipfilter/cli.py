"""`sipfilter` command line: a thin dispatcher to one module per sub-command in `sipfilter/commands/`.

Each command module exposes `register(subparsers)`, which adds its parser and sets `func(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from sipfilter import __version__
from sipfilter.commands._store_common import stdout_closed

# Sub-command modules, in the order `--help` lists them.
COMMAND_MODULES = ("run", "check", "lists", "consent", "refusal", "opposition", "audit", "config", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sipfilter",
        description="SIP B2BUA enforcing French telemarketing rules on contact-center trunks.",
    )
    parser.add_argument("--version", action="version", version=f"sipfilter {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"sipfilter.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"sipfilter.commands.{name}":
                raise
            continue  # not built yet
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `sipfilter … | head -1`: the reader has what it wanted
        stdout_closed()
        return 0
