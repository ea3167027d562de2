"""`sipfilter consent add|revoke|show|import` and `sipfilter consent contract add|end|show`.

Records, per professional account, the consumer's consent (with its proof) and contracts in progress; thin
over the store's write side, on either backend. Never decides whether a call passes (the policy engine does).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from sipfilter.commands._store_common import (
    CliError,
    account,
    add_config_arg,
    as_dict,
    e164,
    iso,
    normaliser,
    parse_time,
    region,
    run_with_store,
)
from sipfilter.config import Config
from sipfilter.policy.hours import zone_named
from sipfilter.stores import ContractRecord, WritableStore
from sipfilter.stores.base import ConsentRecord
from sipfilter.stores.importer import NUMBER_COLUMNS
from sipfilter.stores.writable import parse_scope

BAD_LINES_SHOWN = 20


def _common(p: argparse.ArgumentParser, number: bool = True) -> None:
    add_config_arg(p)
    p.add_argument("--account", help="professional account (default: the config's only account)")
    if number:
        p.add_argument("number", help="consumer's number, any usual form (normalised to E.164)")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("consent", help="record consents (opt-in) and contracts in progress",
                              description="Consent and contract records per professional account.")
    sub = p.add_subparsers(dest="consent_command", metavar="ACTION", required=True)

    q = sub.add_parser("add", help="record a consent")
    _common(q)
    q.add_argument("--proof", required=True, help="reference of the proof (recording id, form id, …)")
    q.add_argument("--at", help="when it was given (ISO-8601 with offset or epoch; default: now)")
    q.add_argument("--hours", help="hours the consumer agreed to, e.g. 'mon-sat 09:00-21:00'")
    q.add_argument("--time-zone", help="the consumer's own IANA time zone when known, e.g. Indian/Reunion "
                                       "(the hours rules then also apply there)")
    q.set_defaults(func=_add)

    q = sub.add_parser("revoke", help="record that the consumer withdrew consent")
    _common(q)
    q.add_argument("--at", help="when (default: now)")
    q.set_defaults(func=_revoke)

    q = sub.add_parser("show", help="consent and contract history of one number")
    _common(q)
    q.add_argument("--json", action="store_true", help="JSON output")
    q.set_defaults(func=_show)

    q = sub.add_parser("import", help="record consents from a file (one number per line, or CSV with a "
                                      "number column and optional granted_at, proof, hours, time_zone "
                                      "columns)")
    _common(q, number=False)
    q.add_argument("file")
    q.add_argument("--proof", help="proof reference for rows without one (default: import:FILE:LINE)")
    q.add_argument("--at", help="grant time for rows without granted_at (default: now)")
    q.add_argument("--max-bad-share", type=float, default=0.0,
                   help="refuse the whole import above this share of bad lines (default: %(default)s)")
    q.set_defaults(func=_import)

    c = sub.add_parser("contract", help="contracts in progress (exempt from the consent rule for the trunks "
                                        "whose purpose their scope names)")
    csub = c.add_subparsers(dest="contract_command", metavar="ACTION", required=True)
    q = csub.add_parser("add", help="record a contract in progress")
    _common(q)
    q.add_argument("--start", help="start (default: now)")
    q.add_argument("--end", help="end, if already known")
    q.add_argument("--reference", default="", help="contract reference")
    q.add_argument("--scope", default="",
                   help="what the contract is about: the purposes of the trunks it exempts, comma-separated "
                        "(e.g. energy-supply,energy-services); without it, only trunks declaring no purpose")
    q.set_defaults(func=_contract_add)
    q = csub.add_parser("end", help="end the contracts in progress")
    _common(q)
    q.add_argument("--at", help="when (default: now)")
    q.set_defaults(func=_contract_end)


def _time_zone(text: str | None) -> str | None:
    if text is None:
        return None
    if zone_named(text) is None:
        raise CliError(f"--time-zone: {text!r} is not an IANA time zone name (e.g. Europe/Paris)")
    return text


def _add(args: argparse.Namespace) -> int:
    async def body(config: Config, store: WritableStore) -> int:
        rec = ConsentRecord(account(config, args.account), e164(config, args.number), parse_time(args.at),
                            args.proof, None, args.hours, _time_zone(args.time_zone))
        await store.add_consent(rec)
        print(f"consent recorded: {rec.account} {rec.number} at {iso(rec.granted_at)} (proof {rec.proof})")
        return 0

    return run_with_store(args, body)


def _revoke(args: argparse.Namespace) -> int:
    async def body(config: Config, store: WritableStore) -> int:
        acct, number, at = account(config, args.account), e164(config, args.number), parse_time(args.at)
        n = await store.revoke_consent(acct, number, at)
        print(f"{n} consent(s) revoked for {acct} {number} at {iso(at)}")
        return 0 if n else 3

    return run_with_store(args, body)


def _show(args: argparse.Namespace) -> int:
    async def body(config: Config, store: WritableStore) -> int:
        acct, number = account(config, args.account), e164(config, args.number)
        consents = await store.consents(acct, number)
        contracts = await store.contracts(acct, number)
        if args.json:
            print(json.dumps({"account": acct, "number": number, "consents": [as_dict(c) for c in consents],
                              "contracts": [as_dict(c) for c in contracts]}, indent=2))
            return 0
        print(f"{acct} {number}")
        for c in consents:
            print(f"  consent  granted {iso(c.granted_at)} proof {c.proof!r} revoked {iso(c.revoked_at)}"
                  + (f" hours {c.hours!r}" if c.hours else "")
                  + (f" zone {c.time_zone}" if c.time_zone else ""))
        for k in contracts:
            print(f"  contract started {iso(k.started_at)} ended {iso(k.ended_at)} ref {k.reference!r}"
                  + (f" scope {','.join(k.scope)}" if k.scope else " (no scope)"))
        if not consents and not contracts:
            print("  no consent, no contract")
        return 0

    return run_with_store(args, body)


def _import(args: argparse.Namespace) -> int:
    async def body(config: Config, store: WritableStore) -> int:
        acct = account(config, args.account)
        default_at = parse_time(args.at)
        norm, reg = normaliser(config), region(config, None)
        path = Path(args.file)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise CliError(f"{path}: {exc.strerror or exc}") from exc
        lines = text.splitlines()
        first = lines[0] if lines else ""
        delim = ";" if first.count(";") > first.count(",") else ","
        header = [h.strip().lower() for h in next(csv.reader([first], delimiter=delim))] if first else []
        has_header = any(h in NUMBER_COLUMNS for h in header)
        col = {name: header.index(name) for name in header} if has_header else {}
        num_i = next((col[n] for n in NUMBER_COLUMNS if n in col), 0)
        records: list[ConsentRecord] = []
        bad: list[tuple[int, str, str]] = []
        rows = csv.reader(io.StringIO(text), delimiter=delim)
        for lineno, row in enumerate(rows, 1):
            if (lineno == 1 and has_header) or not row or not "".join(row).strip() or row[0].startswith("#"):
                continue

            def cell(name: str, row: list[str] = row) -> str | None:
                i = col.get(name)
                return row[i].strip() if i is not None and i < len(row) and row[i].strip() else None

            n = norm.number(row[num_i].strip() if num_i < len(row) else "", reg)
            if not n.ok:
                bad.append((lineno, delim.join(row), n.error or "not a telephone number"))
                continue
            try:
                at = parse_time(cell("granted_at")) if cell("granted_at") else default_at
            except CliError as exc:
                bad.append((lineno, delim.join(row), str(exc)))
                continue
            zone = cell("time_zone")
            if zone is not None and zone_named(zone) is None:
                bad.append((lineno, delim.join(row), f"time_zone {zone!r} is not an IANA time zone name"))
                continue
            proof = cell("proof") or args.proof or f"import:{path.name}:{lineno}"
            records.append(ConsentRecord(acct, n.e164, at, proof, None, cell("hours"), zone))
        total = len(records) + len(bad)
        for lineno, line, reason in bad[:BAD_LINES_SHOWN]:
            print(f"  line {lineno}: {line!r}: {reason}", file=sys.stderr)
        if total and len(bad) / total > args.max_bad_share:
            raise CliError(f"{len(bad)} of {total} lines are bad: nothing recorded (--max-bad-share "
                           f"{args.max_bad_share})")
        await store.add_consents(records)
        print(f"{len(records)} consents recorded for {acct} from {path.name} ({len(bad)} bad lines skipped)")
        return 0

    return run_with_store(args, body)


def _contract_add(args: argparse.Namespace) -> int:
    async def body(config: Config, store: WritableStore) -> int:
        rec = ContractRecord(account(config, args.account), e164(config, args.number), parse_time(args.start),
                             parse_time(args.end) if args.end else None, args.reference,
                             parse_scope(args.scope))
        await store.add_contract(rec)
        print(f"contract recorded: {rec.account} {rec.number} from {iso(rec.started_at)}"
              f" to {iso(rec.ended_at)}" + (f", scope {','.join(rec.scope)}" if rec.scope else ", no scope"))
        return 0

    return run_with_store(args, body)


def _contract_end(args: argparse.Namespace) -> int:
    async def body(config: Config, store: WritableStore) -> int:
        acct, number, at = account(config, args.account), e164(config, args.number), parse_time(args.at)
        n = await store.end_contract(acct, number, at)
        print(f"{n} contract(s) ended for {acct} {number} at {iso(at)}")
        return 0 if n else 3

    return run_with_store(args, body)
