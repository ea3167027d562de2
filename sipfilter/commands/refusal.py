"""`sipfilter refusal add|show|undo`: record that a consumer refused during a call (the cooldown starts and
the consents given before end), see the history, undo a mistaken record (the undo is in the audit log).

Thin over sipfilter.records, on either backend; the policy engine applies the cooldown, not this command.
"""

from __future__ import annotations

import argparse
import json
import time
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

WINDOW_S = 30 * 86400.0  # shown by `refusal show`; the rule pack's own window applies on the call path


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("refusal", help="record a consumer's refusal (cooldown; earlier consents end)")
    sub = p.add_subparsers(dest="refusal_command", metavar="ACTION", required=True)
    for name, func, text in (("add", _add, "record a refusal"),
                             ("show", _show, "refusals, and attempts in the last 30 days"),
                             ("undo", _undo, "undo a refusal recorded by mistake (the latest, or --at)")):
        q = sub.add_parser(name, help=text)
        add_config_arg(q)
        q.add_argument("--account", help="professional account (default: the config's only account)")
        q.add_argument("number", help="consumer's number, any usual form")
        if name == "add":
            q.add_argument("--at", help="when (ISO-8601 with offset or epoch; default: now)")
        elif name == "undo":
            q.add_argument("--at", help="the refusal's time, to the second (default: the latest refusal)")
            q.add_argument("--reason", required=True, help="why the refusal was a mistake (audit log)")
        else:
            q.add_argument("--json", action="store_true", help="JSON output")
        q.set_defaults(func=func)


def _add(args: argparse.Namespace) -> int:
    async def body(config: Config, store: WritableStore) -> int:
        acct, number, at = account(config, args.account), e164(config, args.number), parse_time(args.at)
        event = await records.refuse(store, acct, number, at, "cli")
        print(f"refusal recorded: {acct} {number} at {iso(at)} (consents given before it no longer count)")
        return log_event(config, event)

    return run_with_store(args, body)


def _undo(args: argparse.Namespace) -> int:
    async def body(config: Config, store: WritableStore) -> int:
        acct, number = account(config, args.account), e164(config, args.number)
        at = parse_time(args.at) if args.at else None
        undone, event = await records.undo_refusal(store, acct, number, at, args.reason, "cli")
        if not undone:
            print(f"no refusal to undo for {acct} {number}" + (f" at {iso(at)}" if at is not None else ""))
            return 3
        for r in undone:
            print(f"refusal undone: {acct} {number} at {iso(r.at)}")
        return log_event(config, event)

    return run_with_store(args, body)


def _show(args: argparse.Namespace) -> int:
    async def body(config: Config, store: WritableStore) -> int:
        acct, number = account(config, args.account, known_only=False), e164(config, args.number)
        last = await store.last_refusal(acct, number)
        n = await store.attempts(acct, number, time.time(), WINDOW_S)
        history = await store.history(acct, number)
        if args.json:
            print(json.dumps({"account": acct, "number": number, "last_refusal": last, "attempts_30d": n,
                              "refusals": records.objection_dicts(history.refusals),
                              "oppositions": records.objection_dicts(history.oppositions)}, indent=2))
            return 0
        print(f"{acct} {number}: last refusal {iso(last)}, {n} attempt(s) in the last 30 days")
        for r in history.refusals:
            undone = f", undone {iso(r.undone_at)} ({r.undo_reason})" if r.undone_at is not None else ""
            print(f"  refusal    {iso(r.at)} by {r.source or '-'}{undone}")
        for o in history.oppositions:
            undone = f", undone {iso(o.undone_at)} ({o.undo_reason})" if o.undone_at is not None else ""
            print(f"  opposition {iso(o.at)} by {o.source or '-'}{undone}")
        return 0

    return run_with_store(args, body)
