"""`sipfilter lists import|show|stats|export|delete`: manage do-not-call and caller-ID lists in the store.

Thin over sipfilter.stores (importer + put_list); works on either backend; never touches a running proxy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from sipfilter.commands._store_common import (
    CliError,
    ProgressPrinter,
    add_config_arg,
    as_dict,
    e164,
    iso,
    normaliser,
    region,
    run_with_store,
)
from sipfilter.config import Config
from sipfilter.stores import WritableStore
from sipfilter.stores.importer import FORMATS, ImportResult, read_list
from sipfilter.stores.numberset import NumberSet

DEFAULT_MAX_BAD_SHARE = 0.01
DEFAULT_MAX_SHRINK = 0.5
BAD_LINES_SHOWN = 20


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("lists", help="import, inspect, export and delete number lists",
                              description="Number lists (do-not-call, authorised caller IDs) in the store.")
    sub = p.add_subparsers(dest="lists_command", metavar="ACTION", required=True)

    q = sub.add_parser("import", help="import a file as a new version of a list (atomic switch)")
    add_config_arg(q)
    q.add_argument("--list", required=True, dest="name", help="list name, e.g. bloctel")
    q.add_argument("file", help="the file to import")
    q.add_argument("--format", choices=FORMATS, default="auto",
                   help="lines: one number per line; csv: header + --column; bloctel: ';'-separated, header "
                        "line, 10-digit national numbers (default: %(default)s: guessed)")
    q.add_argument("--column", help="CSV column holding the number (default: number/numero/telephone/…)")
    mode = q.add_mutually_exclusive_group()
    mode.add_argument("--replace", dest="mode", action="store_const", const="replace",
                      help="the file is the whole list (default)")
    mode.add_argument("--add", dest="mode", action="store_const", const="add", help="add the file's numbers")
    mode.add_argument("--remove", dest="mode", action="store_const", const="remove",
                      help="remove the file's numbers")
    q.add_argument("--max-bad-share", type=float, default=DEFAULT_MAX_BAD_SHARE,
                   help="refuse to switch when more than this share of lines is bad (default: %(default)s)")
    q.add_argument("--max-shrink", type=float, default=DEFAULT_MAX_SHRINK,
                   help="refuse a --replace that removes more than this share of the current list, e.g. a "
                        "truncated download (default: %(default)s; 1 disables)")
    q.add_argument("--trunk", help="normalise with this trunk's rules (default: the first trunk)")
    q.add_argument("--dry-run", action="store_true", help="read and report, do not switch")
    q.add_argument("--quiet", action="store_true",
                   help="print nothing but errors (a refused import still lists its bad lines)")
    q.set_defaults(func=_import, mode="replace")

    q = sub.add_parser("show", help="list the lists, or one list's metadata (and whether it has a number)")
    add_config_arg(q)
    q.add_argument("name", nargs="?", help="list name")
    q.add_argument("--number", help="also say whether this number is in the list")
    q.add_argument("--json", action="store_true", help="JSON output")
    q.set_defaults(func=_show)

    q = sub.add_parser("stats", help="size, age, version and source of every list")
    add_config_arg(q)
    q.add_argument("--json", action="store_true", help="JSON output")
    q.set_defaults(func=_stats)

    q = sub.add_parser("export", help="write a list, one E.164 number per line")
    add_config_arg(q)
    q.add_argument("name", help="list name")
    q.add_argument("-o", "--output", help="output file (default: standard output)")
    q.set_defaults(func=_export)

    q = sub.add_parser("delete", help="delete a list (trunks naming it then treat it as never imported)")
    add_config_arg(q)
    q.add_argument("name", help="list name")
    q.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    q.set_defaults(func=_delete)


def _report(result: ImportResult, out: Any) -> None:
    print(f"read {result.lines} lines ({result.format}): {len(result.numbers)} distinct numbers, "
          f"{result.duplicates} duplicates, {result.bad} bad ({result.bad_share:.3%})", file=out)
    for bad in result.bad_lines[:BAD_LINES_SHOWN]:
        print(f"  line {bad.line}: {bad.text!r}: {bad.reason}", file=out)
    if result.bad > BAD_LINES_SHOWN:
        print(f"  … and {result.bad - BAD_LINES_SHOWN} more bad lines", file=out)


def _import(args: argparse.Namespace) -> int:
    if not 0 <= args.max_bad_share <= 1:
        print("sipfilter: error: --max-bad-share must be between 0 and 1", file=sys.stderr)
        return 2

    async def body(config: Config, store: WritableStore) -> int:
        started = time.monotonic()
        progress = None if args.quiet else ProgressPrinter(f"reading {args.file}")
        result = read_list(args.file, normaliser(config, args.trunk), fmt=args.format, column=args.column,
                           region=region(config, args.trunk), progress=progress)
        if not args.quiet:
            _report(result, sys.stderr)
        if result.bad_share > args.max_bad_share:
            if args.quiet:
                _report(result, sys.stderr)
            raise CliError(f"{result.bad} of {result.lines} lines are bad ({result.bad_share:.2%} > "
                           f"--max-bad-share {args.max_bad_share:.2%}): list {args.name!r} left unchanged")
        numbers = result.numbers
        await store.refresh()
        try:
            current = store.list_numbers(args.name)
        except KeyError:
            current = NumberSet()
        if args.mode != "replace":
            numbers = current.union(numbers) if args.mode == "add" else current.difference(numbers)
        elif len(current) and len(numbers) < (1 - args.max_shrink) * len(current):
            raise CliError(f"list {args.name!r} would shrink from {len(current)} to {len(numbers)} numbers "
                           f"(more than --max-shrink {args.max_shrink:.0%}): left unchanged; check the file, "
                           "or pass --max-shrink 1")
        if args.dry_run:
            print(f"dry run: list {args.name!r} would hold {len(numbers)} numbers", file=sys.stderr)
            return 0
        info = await store.put_list(args.name, numbers, result.source)
        if args.quiet:
            return 0
        print(f"list {info.name}: version {info.version}, {info.count} numbers, from {info.source_name} "
              f"({info.source_size} bytes, sha256 {info.source_sha256[:16]}…) in "
              f"{time.monotonic() - started:.1f}s")
        return 0

    return run_with_store(args, body)


def _info_dict(store: WritableStore, name: str) -> dict[str, Any]:
    info = store.list_info(name)
    if info is None:
        raise CliError(f"no list named {name!r} (lists: {', '.join(store.list_names()) or 'none'})")
    d = as_dict(info)
    d["imported_at_iso"] = iso(info.imported_at)
    d["age_days"] = round((time.time() - info.imported_at) / 86400, 2)
    return d


def _show(args: argparse.Namespace) -> int:
    async def body(config: Config, store: WritableStore) -> int:
        if args.name is None:
            rows = [_info_dict(store, n) for n in store.list_names()]
            if args.json:
                print(json.dumps(rows, indent=2))
            elif not rows:
                print("no lists imported")
            for r in rows if not args.json else []:
                print(f"{r['name']:<20} v{r['version']:<6} {r['count']:>10} numbers  imported "
                      f"{r['imported_at_iso']} from {r['source_name']}")
            return 0
        d = _info_dict(store, args.name)
        status = 0
        if args.number:
            number = e164(config, args.number)
            d["number"] = number
            d["contains"] = store.list_contains(args.name, number)
            status = 0 if d["contains"] else 3  # scriptable: `lists show bloctel --number … && echo listed`
        if args.json:
            print(json.dumps(d, indent=2))
        else:
            for k, v in d.items():
                print(f"{k}: {v}")
        return status

    return run_with_store(args, body)


def _stats(args: argparse.Namespace) -> int:
    async def body(config: Config, store: WritableStore) -> int:
        rows = []
        for name in store.list_names():
            d = _info_dict(store, name)
            d["bytes_in_memory"] = len(store.list_numbers(name).serialize())
            rows.append(d)
        if args.json:
            print(json.dumps({"backend": config.store.backend, "lists": rows}, indent=2))
            return 0
        print(f"backend: {config.store.backend}")
        print(f"{'list':<20} {'version':>7} {'numbers':>11} {'bytes':>11} {'age days':>9}  source")
        for r in rows:
            print(f"{r['name']:<20} {r['version']:>7} {r['count']:>11} {r['bytes_in_memory']:>11} "
                  f"{r['age_days']:>9}  {r['source_name']} ({r['source_size']} bytes, "
                  f"sha256 {r['source_sha256'][:12]}…)")
        return 0

    return run_with_store(args, body)


def _export(args: argparse.Namespace) -> int:
    async def body(config: Config, store: WritableStore) -> int:
        try:
            numbers = store.list_numbers(args.name)
        except KeyError:
            raise CliError(f"no list named {args.name!r}") from None
        out = open(args.output, "w", encoding="ascii") if args.output else sys.stdout  # noqa: SIM115
        try:
            batch: list[str] = []
            for n in numbers:
                batch.append(n)
                if len(batch) >= 65536:
                    out.write("\n".join(batch) + "\n")
                    batch.clear()
            if batch:
                out.write("\n".join(batch) + "\n")
        finally:
            if out is not sys.stdout:
                out.close()
        return 0

    return run_with_store(args, body)


def _delete(args: argparse.Namespace) -> int:
    async def body(config: Config, store: WritableStore) -> int:
        if store.list_info(args.name) is None:
            raise CliError(f"no list named {args.name!r}")
        if not args.yes:
            if not sys.stdin.isatty():
                raise CliError("not a terminal: pass --yes to delete")
            if input(f"delete list {args.name!r}? [y/N] ").strip().lower() not in ("y", "yes"):
                return 1
        await store.delete_list(args.name)
        print(f"list {args.name} deleted")
        return 0

    return run_with_store(args, body)
