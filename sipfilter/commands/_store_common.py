"""Shared plumbing of the store commands (`lists`, `consent`, `refusal`, `opposition`, `audit`): config,
store, accounts, times, audit lines, progress.

Thin: opens the configured store, runs one coroutine, prints errors as one line; no store logic here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TextIO

from sipfilter import stores
from sipfilter.audit_files import append_line
from sipfilter.config import Config, ConfigError
from sipfilter.configure import load_config
from sipfilter.policy.numbers import Normaliser
from sipfilter.policy.rulepack import normaliser_for
from sipfilter.records import accounts_of, check_account
from sipfilter.stores import StoreError, StoreUnavailable, WritableStore
from sipfilter.stores.importer import ListFileError
from sipfilter.times import parse_instant

DEFAULT_CONFIG = os.environ.get("SIPFILTER_CONFIG", "config/sipfilter.yaml")


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, help="configuration file (default: %(default)s)")


def load(args: argparse.Namespace) -> Config:
    try:
        return load_config(args.config)
    except ConfigError as exc:
        raise CliError(str(exc)) from exc


def normaliser(config: Config, trunk: str | None = None) -> Normaliser:
    """The call path's normaliser, so stored numbers match what the policy engine looks up."""
    if trunk is not None and trunk not in config.trunks:
        raise CliError(f"no trunk named {trunk!r} (trunks: {', '.join(config.trunks)})")
    try:
        return normaliser_for(config, trunk)
    except (StopIteration, KeyError):
        return Normaliser()


def region(config: Config, trunk: str | None) -> str:
    t = config.trunks.get(trunk) if trunk else next(iter(config.trunks.values()), None)
    return t.region if t is not None else "FR"


def e164(config: Config, text: str, trunk: str | None = None) -> str:
    n = normaliser(config, trunk).number(text, region(config, trunk))
    if not n.ok:
        raise CliError(f"{text!r} is not a telephone number ({n.error})")
    return n.e164


def account(config: Config, given: str | None, *, known_only: bool = True) -> str:
    """The professional account: `--account`, or the config's only one. An account no trunk uses is refused
    (a record for it would block nothing), unless `known_only` is False (reading past records): a warning."""
    accounts = accounts_of(config)
    if given:
        if given not in accounts:
            if known_only:
                check_account(given, accounts)
            print(f"sipfilter: warning: no trunk uses account {given!r} (accounts: {', '.join(accounts)})",
                  file=sys.stderr)
        return given
    if len(accounts) == 1:
        return accounts[0]
    raise CliError(f"--account is required (accounts in the config: {', '.join(accounts) or 'none'})")


AUDIT_NOT_WRITTEN = 4  # exit status: recorded in the store, but its audit line could not be written


def log_event(config: Config, event: dict[str, Any] | None) -> int:
    """Append a record's audit line to the configured audit log; 0, or AUDIT_NOT_WRITTEN (said on stderr)."""
    if event is None:
        return 0
    try:
        append_line(config.audit.path, (json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n")
                    .encode("utf-8", "backslashreplace"))
    except OSError as exc:
        print(f"sipfilter: error: recorded, but the audit log {config.audit.path} could not be written: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return AUDIT_NOT_WRITTEN
    return 0


def parse_time(text: str | None) -> float:
    """ISO-8601 with an offset (2026-09-01T10:00:00+02:00), epoch seconds, or now when absent."""
    if text is None:
        return time.time()
    try:
        return parse_instant(text)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def iso(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def run_with_store(args: argparse.Namespace,
                   body: Callable[[Config, WritableStore], Awaitable[int]]) -> int:
    """Load the config, open its store (no watcher), run `body`, close; errors become one stderr line."""

    async def main() -> int:
        config = load(args)
        try:
            store = await stores.open_store(config, watch=False)
        except (StoreUnavailable, OSError) as exc:
            raise CliError(f"cannot open the {config.store.backend} store: {exc}") from exc
        try:
            return await body(config, store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except (CliError, StoreError, StoreUnavailable, ListFileError) as exc:
        print(f"sipfilter: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `lists export | head`
        stdout_closed()
        return 0


def stdout_closed() -> None:
    """The reader of our standard output went away (`… | head -1`): not an error. Point stdout at /dev/null
    so that nothing else (the interpreter's flush at exit included) fails on it."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def print_out(text: str) -> None:
    """Print `text` to standard output; a reader that stopped reading is not an error (stdout_closed)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        stdout_closed()


class ProgressPrinter:
    """A progress bar on a terminal, a plain line every 10 % otherwise (logs, CI)."""

    def __init__(self, label: str, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.label = label
        self.tty = self.stream.isatty()
        self.start = time.monotonic()
        self._last_decile = -1

    def __call__(self, done: int, total: int) -> None:
        frac = done / total if total else 1.0
        elapsed = time.monotonic() - self.start
        if self.tty:
            width = 30
            bar = "#" * int(frac * width)
            self.stream.write(f"\r{self.label} [{bar:<{width}}] {frac:6.1%} {elapsed:6.1f}s")
            if done >= total:
                self.stream.write("\n")
            self.stream.flush()
            return
        decile = int(frac * 10)
        if decile != self._last_decile:
            self._last_decile = decile
            print(f"{self.label}: {frac:.0%} ({done} of {total} bytes, {elapsed:.1f}s)", file=self.stream,
                  flush=True)


def as_dict(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}
