"""`sipfilter consent add|revoke|undo|show|import` and `sipfilter consent contract add|end`.

Records, per professional account, the consumer's consent (with its proof) and contracts in progress; thin
over sipfilter.records, on either backend, each record with its audit line. Never decides whether a call
passes (the policy engine does).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from sipfilter import records
from sipfilter.commands._store_common import (
    CliError,
    account,
    add_config_arg,
    as_dict,
    e164,
    iso,
    log_event,
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

    q = sub.add_parser("undo", help="undo a consent recorded by mistake (it never counted; unlike revoke)")
    _common(q)
    q.add_argument("--proof", help="the consent's proof reference (default: the latest consent)")
    q.add_argument("--granted-at", help="the consent's grant time, to the second")
    q.add_argument("--reason", required=True, help="why the consent was a mistake (audit log)")
    q.set_defaults(func=_undo)

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
        event = await records.add_consent(store, rec, "cli")
        print(f"consent recorded: {rec.account} {rec.number} at {iso(rec.granted_at)} (proof {rec.proof})")
        last = await store.last_refusal(rec.account, rec.number)
        if last is not None and rec.granted_at <= last:
            print(f"note: a refusal recorded at {iso(last)} ends this consent (given before it)")
        return log_event(config, event)

    return run_with_store(args, body)


def _revoke(args: argparse.Namespace) -> int:
    async def body(config: Config, store: WritableStore) -> int:
        acct, number, at = account(config, args.account), e164(config, args.number), parse_time(args.at)
        n, event = await records.revoke_consent(store, acct, number, at, "cli")
        print(f"{n} consent(s) revoked for {acct} {number} at {iso(at)}")
        return log_event(config, event) if n else 3

    return run_with_store(args, body)


def _undo(args: argparse.Namespace) -> int:
    async def body(config: Config, store: WritableStore) -> int:
        acct, number = account(config, args.account), e164(config, args.number)
        granted_at = parse_time(args.granted_at) if args.granted_at else None
        undone, event = await records.undo_consent(store, acct, number, args.proof, granted_at, args.reason,
                                                   "cli")
        if not undone:
            print(f"no consent to undo for {acct} {number}")
            return 3
        for c in undone:
            print(f"consent undone: {acct} {number} granted {iso(c.granted_at)} (proof {c.proof!r})")
        return log_event(config, event)

    return run_with_store(args, body)


def _show(args: argparse.Namespace) -> int:
    async def body(config: Config, store: WritableStore) -> int:
        acct, number = account(config, args.account, known_only=False), e164(config, args.number)
        history = await store.history(acct, number)
        consents, contracts = history.consents, history.contracts
        if args.json:
            shown = []
            for c in consents:
                ended_at, ended_by = history.consent_end(c) or (None, None)
                shown.append({**as_dict(c), "ended_at": ended_at, "ended_by": ended_by})
            print(json.dumps({"account": acct, "number": number, "consents": shown,
                              "undone_consents": [{**as_dict(u.consent), "undone_at": u.undone_at,
                                                   "undo_reason": u.reason} for u in history.undone_consents],
                              "contracts": [as_dict(c) for c in contracts]}, indent=2))
            return 0
        print(f"{acct} {number}")
        for c in consents:
            end = history.consent_end(c)
            print(f"  consent  granted {iso(c.granted_at)} proof {c.proof!r}"
                  + (f" ended {iso(end[0])} ({end[1]})" if end else " in force")
                  + (f" hours {c.hours!r}" if c.hours else "")
                  + (f" zone {c.time_zone}" if c.time_zone else ""))
        for u in history.undone_consents:
            print(f"  consent  granted {iso(u.consent.granted_at)} proof {u.consent.proof!r} UNDONE"
                  f" {iso(u.undone_at)} ({u.reason})")
        for k in contracts:
            print(f"  contract started {iso(k.started_at)} ended {iso(k.ended_at)} ref {k.reference!r}"
                  + (f" scope {','.join(k.scope)}" if k.scope else " (no scope)"))
        if not consents and not contracts and not history.undone_consents:
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
        found: list[ConsentRecord] = []
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
            found.append(ConsentRecord(acct, n.e164, at, proof, None, cell("hours"), zone))
        total = len(found) + len(bad)
        for lineno, line, reason in bad[:BAD_LINES_SHOWN]:
            print(f"  line {lineno}: {line!r}: {reason}", file=sys.stderr)
        if total and len(bad) / total > args.max_bad_share:
            raise CliError(f"{len(bad)} of {total} lines are bad: nothing recorded (--max-bad-share "
                           f"{args.max_bad_share})")
        await store.add_consents(found)
        print(f"{len(found)} consents recorded for {acct} from {path.name} ({len(bad)} bad lines skipped)")
        return log_event(config, records.import_event(acct, "cli", path.name, len(found), len(bad)))

    return run_with_store(args, body)


def _contract_add(args: argparse.Namespace) -> int:
    async def body(config: Config, store: WritableStore) -> int:
        rec = ContractRecord(account(config, args.account), e164(config, args.number), parse_time(args.start),
                             parse_time(args.end) if args.end else None, args.reference,
                             parse_scope(args.scope))
        event = await records.add_contract(store, rec, "cli")
        print(f"contract recorded: {rec.account} {rec.number} from {iso(rec.started_at)}"
              f" to {iso(rec.ended_at)}" + (f", scope {','.join(rec.scope)}" if rec.scope else ", no scope"))
        return log_event(config, event)

    return run_with_store(args, body)


def _contract_end(args: argparse.Namespace) -> int:
    async def body(config: Config, store: WritableStore) -> int:
        acct, number, at = account(config, args.account), e164(config, args.number), parse_time(args.at)
        n, event = await records.end_contract(store, acct, number, at, "cli")
        print(f"{n} contract(s) ended for {acct} {number} at {iso(at)}")
        return log_event(config, event) if n else 3

    return run_with_store(args, body)
