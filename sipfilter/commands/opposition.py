"""`sipfilter opposition add|show|undo`: record that a consumer said "never call me again" (every call from
the account to that number is then refused, `callee.opposition`), see it, undo a mistaken record.

Thin over sipfilter.records, on either backend; the policy engine refuses the calls, not this command.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from sipfilter import records
from sipfilter.commands._store_common import (
    account,
    add_config_arg,
    e164,
    iso,
    log_event,
    parse_time,
    run_with_store,
)
from sipfilter.config import Config
from sipfilter.stores import WritableStore


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("opposition", help='record a permanent opposition ("never call me again")')
    sub = p.add_subparsers(dest="opposition_command", metavar="ACTION", required=True)
    for name, func, text in (("add", _add, "record a permanent opposition"),
                             ("show", _show, "oppositions of one number"),
                             ("undo", _undo, "undo an opposition recorded by mistake")):
        q = sub.add_parser(name, help=text)
        add_config_arg(q)
        q.add_argument("--account", help="professional account (default: the config's only account)")
        q.add_argument("number", help="consumer's number, any usual form")
        if name == "add":
            q.add_argument("--at", help="when it was said (ISO-8601 with offset or epoch; default: now)")
        elif name == "undo":
            q.add_argument("--reason", required=True, help="why the opposition was a mistake (audit log)")
        else:
            q.add_argument("--json", action="store_true", help="JSON output")
        q.set_defaults(func=func)


def _add(args: argparse.Namespace) -> int:
    async def body(config: Config, store: WritableStore) -> int:
        acct, number, at = account(config, args.account), e164(config, args.number), parse_time(args.at)
        event = await records.oppose(store, acct, number, at, "cli")
        print(f"opposition recorded: {acct} will never call {number} again (from {iso(at)})")
        return log_event(config, event)

    return run_with_store(args, body)


def _undo(args: argparse.Namespace) -> int:
    async def body(config: Config, store: WritableStore) -> int:
        acct, number = account(config, args.account), e164(config, args.number)
        undone, event = await records.undo_opposition(store, acct, number, args.reason, "cli")
        if not undone:
            print(f"no opposition to undo for {acct} {number}")
            return 3
        for o in undone:
            print(f"opposition undone: {acct} {number} (recorded for {iso(o.at)})")
        return log_event(config, event)

    return run_with_store(args, body)


def _show(args: argparse.Namespace) -> int:
    async def body(config: Config, store: WritableStore) -> int:
        acct, number = account(config, args.account, known_only=False), e164(config, args.number)
        history = await store.history(acct, number)
        if args.json:
            print(json.dumps({"account": acct, "number": number,
                              "oppositions": records.objection_dicts(history.oppositions)}, indent=2))
            return 0
        active = [o for o in history.oppositions if o.active]
        print(f"{acct} {number}: " + (f"opposed since {iso(min(o.at for o in active))}" if active
                                      else "no opposition in force"))
        for o in history.oppositions:
            undone = f", undone {iso(o.undone_at)} ({o.undo_reason})" if o.undone_at is not None else ""
            print(f"  opposition {iso(o.at)} by {o.source or '-'}{undone}")
        return 0

    return run_with_store(args, body)
