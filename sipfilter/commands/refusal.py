"""`sipfilter refusal add|show`: record that a consumer refused further calls (starts the cooldown).

Thin over the store's counters, on either backend; the policy engine applies the cooldown, not this command.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from sipfilter.commands._store_common import account, add_config_arg, e164, iso, parse_time, run_with_store
from sipfilter.config import Config
from sipfilter.stores import WritableStore

WINDOW_S = 30 * 86400.0  # shown by `refusal show`; the rule pack's own window applies on the call path


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("refusal", help="record a consumer's refusal (cooldown before any new call)")
    sub = p.add_subparsers(dest="refusal_command", metavar="ACTION", required=True)
    for name, func, text in (("add", _add, "record a refusal"),
                             ("show", _show, "last refusal and attempts in the last 30 days")):
        q = sub.add_parser(name, help=text)
        add_config_arg(q)
        q.add_argument("--account", help="professional account (default: the config's only account)")
        q.add_argument("number", help="consumer's number, any usual form")
        if name == "add":
            q.add_argument("--at", help="when (ISO-8601 with offset or epoch; default: now)")
        else:
            q.add_argument("--json", action="store_true", help="JSON output")
        q.set_defaults(func=func)


def _add(args: argparse.Namespace) -> int:
    async def body(config: Config, store: WritableStore) -> int:
        acct, number, at = account(config, args.account), e164(config, args.number), parse_time(args.at)
        await store.record_refusal(acct, number, at)
        print(f"refusal recorded: {acct} {number} at {iso(at)}")
        return 0

    return run_with_store(args, body)


def _show(args: argparse.Namespace) -> int:
    async def body(config: Config, store: WritableStore) -> int:
        import time

        acct, number = account(config, args.account), e164(config, args.number)
        last = await store.last_refusal(acct, number)
        n = await store.attempts(acct, number, time.time(), WINDOW_S)
        if args.json:
            print(json.dumps({"account": acct, "number": number, "last_refusal": last, "attempts_30d": n}))
        else:
            print(f"{acct} {number}: last refusal {iso(last)}, {n} attempt(s) in the last 30 days")
        return 0

    return run_with_store(args, body)
