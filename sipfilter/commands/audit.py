"""`sipfilter audit NUMBER`: proof on demand for one consumer and one professional account over a period
(every decision, the consent or contract behind each relayed call, the records, the list versions), as JSON
or CSV, from the audit log (rotated files included) and the store. Read-only; thin over audit_report.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sipfilter import audit_report
from sipfilter.commands._store_common import (
    CliError,
    account,
    add_config_arg,
    e164,
    parse_time,
    run_with_store,
)
from sipfilter.config import Config
from sipfilter.stores import WritableStore


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "audit", help="proof on demand: decisions, consents and records of one number, as JSON or CSV",
        description="Every decision about one consumer number for one professional account over a period, "
        "with the consent or contract behind each relayed call, the consent, contract, refusal and "
        "opposition records (undos included) and the versions of the lists in force. Read from the audit "
        "log (rotated and compressed files included) and the store.")
    add_config_arg(p)
    p.add_argument("--account", help="professional account (default: the config's only account)")
    p.add_argument("number", help="consumer's number, any usual form")
    p.add_argument("--from", dest="start", metavar="TIME",
                   help="start of the period (ISO-8601 with offset or epoch; default: the oldest line)")
    p.add_argument("--to", dest="end", metavar="TIME", help="end of the period (default: now)")
    p.add_argument("--format", choices=("json", "csv"), default="json", help="output format (default: json)")
    p.add_argument("--output", "-o", metavar="FILE", help="write the report to FILE (default: stdout)")
    p.set_defaults(func=_audit)


def _audit(args: argparse.Namespace) -> int:
    async def body(config: Config, store: WritableStore) -> int:
        # Past accounts are worth a report too: an account no trunk uses now is only warned about.
        acct, number = account(config, args.account, known_only=False), e164(config, args.number)
        start = parse_time(args.start) if args.start else 0.0
        end = parse_time(args.end)
        if end < start:
            raise CliError("--to is before --from")
        report = await audit_report.build(store, config.audit.path, acct, number, start, end)
        text = (audit_report.to_csv(report) if args.format == "csv"
                else json.dumps(report, ensure_ascii=False, indent=2) + "\n")
        if args.output:
            try:
                Path(args.output).write_text(text, encoding="utf-8")
            except OSError as exc:
                raise CliError(f"{args.output}: {exc.strerror or exc}") from exc
            s = report["summary"]
            print(f"{args.output}: {s['decisions']} decisions ({s['relayed']} relayed, "
                  f"{s['refused']} refused), "
                  f"{len(report['consents'])} consents, {len(report['refusals'])} refusals, "
                  f"{len(report['oppositions'])} oppositions", file=sys.stderr)
        else:
            sys.stdout.write(text)
        return 0

    return run_with_store(args, body)
