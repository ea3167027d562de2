"""`sipfilter check`: run the very same policy code on one hypothetical call and explain every rule's outcome.

A dry run by default (no attempt recorded); exit 0 allow, 1 reject, 2 error. No SIP traffic is sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import datetime
from typing import Any

from sipfilter import stores
from sipfilter.audit import decision_record
from sipfilter.b2bua.facts import identities_from_text
from sipfilter.commands._store_common import CliError, parse_time, print_out
from sipfilter.config import Config, ConfigError
from sipfilter.configure import load_config
from sipfilter.policy import hours
from sipfilter.policy.engine import PolicyEngine
from sipfilter.policy.facts import CallFacts
from sipfilter.policy.lists import DNC_PREFIX
from sipfilter.policy.rulepack import RuleSet
from sipfilter.policy.verdict import FAIL, PASS, SKIP, Decision
from sipfilter.sip.errors import ParseError
from sipfilter.sip.status import REASON_PHRASES
from sipfilter.stores.base import Store, StoreUnavailable

DEFAULT_CONFIG = os.environ.get("SIPFILTER_CONFIG", "config/sipfilter.yaml")


class CheckError(Exception):
    """A problem that makes `check` exit 2 (bad arguments, unusable config or store)."""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "check",
        help="explain the verdict sipfilter would give one call",
        description="Run the policy engine on one call and print the verdict and every rule's outcome. "
        "Exit status: 0 allow, 1 reject, 2 error.",
    )
    p.add_argument("--config", default=DEFAULT_CONFIG, help="configuration file (default: %(default)s)")
    p.add_argument("--trunk", help="trunk name from the configuration (optional when there is only one)")
    p.add_argument(
        "--from",
        dest="from_",
        required=True,
        metavar="URI_OR_NUMBER",
        help="From (presented caller ID): sip:/sips:/tel: URI, name-addr (its URI is read, never its "
        "display name) or number",
    )
    p.add_argument("--to", required=True, metavar="URI_OR_NUMBER",
                   help="callee: Request-URI (its user part is the number) or number")
    p.add_argument(
        "--pai",
        action="append",
        default=[],
        metavar="URI_OR_NUMBER",
        help="P-Asserted-Identity value (repeatable)",
    )
    p.add_argument(
        "--privacy",
        action="append",
        default=[],
        metavar="VALUES",
        help="Privacy header value, e.g. id or 'id;critical' (repeatable)",
    )
    p.add_argument(
        "--at",
        metavar="TIME",
        help="decision time: ISO-8601 with a UTC offset, e.g. 2026-09-14T10:30:00+02:00, or epoch seconds "
        "(default: now)",
    )
    p.add_argument(
        "--callee-zone",
        default="",
        metavar="IANA_ZONE",
        help="the callee's own time zone, as a dialer gives it in the trunk's callee_zone_header "
        "(e.g. Indian/Reunion)",
    )
    p.add_argument("--call-id", default="sipfilter-check", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run",
        dest="record",
        action="store_false",
        default=False,
        help="do not record a call attempt (default)",
    )
    mode.add_argument(
        "--record",
        dest="record",
        action="store_true",
        help="record the attempt in the frequency counters, as a relayed call would",
    )
    p.set_defaults(func=run)


def parse_at(text: str | None) -> float:
    """What `refusal add --at` and `consent add --at` accept: ISO-8601 with an offset, or epoch seconds."""
    try:
        return parse_time(text)
    except CliError as exc:
        raise CheckError(f"--at: {exc}") from None


async def open_configured_store(config: Config) -> Store:
    """The configured store, opened for a one-shot command (no background watching of list changes)."""
    try:  # `stores.open_store` looked up at call time, so tests can substitute the backend
        return await stores.open_store(config, watch=False)
    except (StoreUnavailable, OSError, ValueError) as exc:
        raise CheckError(f"cannot open the {config.store.backend} store: {exc}") from exc


def explain_passes(decision: Decision, facts: CallFacts, rules: RuleSet, store: Store) -> dict[str, str]:
    """Words for the rules that passed without a reason (the call path does not spend time on them)."""
    words: dict[str, str] = {}
    numbers = [("From", facts.caller), *(("PAI", p) for p in facts.asserted)]
    cats = ", ".join(
        f"{label} {n.e164} is {rules.caller_id.classify(n).name}" for label, n in numbers if n.ok
    )
    for rule, o in decision.outcomes.items():
        if o.result != PASS or o.reason:
            continue
        if rule == "caller-id.anonymous":
            words[rule] = "a caller ID is presented and not withheld by Privacy"
        elif rule == "caller-id.invalid":
            words[rule] = "every presented/asserted caller ID is a valid number"
        elif rule == "caller-id.unauthorised":
            cid = rules.caller_id
            auth = cid.authorised_list or (", ".join(cid.authorised_inline) if cid.authorised_inline else "")
            words[rule] = (
                f"in the trunk's authorised caller IDs ({auth})" if auth else "no allow-list on this trunk"
            )
        elif rule == "caller-id.pai-mismatch":
            words[rule] = (
                "P-Asserted-Identity matches From" if rules.caller_id.pai_must_match else "not required"
            )
        elif rule.startswith("caller-id."):
            words[rule] = cats
        elif rule == "number.invalid":
            words[rule] = f"callee {facts.callee.e164}"
        elif rule == "callee.opposition":
            words[rule] = "no permanent opposition recorded for this callee"
        elif rule.startswith(DNC_PREFIX):
            name = rule[len(DNC_PREFIX) :]
            try:
                info = store.list_info(name)
            except StoreUnavailable:
                info = None
            if info is not None:
                when = datetime.fromtimestamp(info.imported_at).astimezone().isoformat(timespec="seconds")
                words[rule] = (
                    f"not on {name!r} (version {info.version}, {info.count:,} numbers, "
                    f"imported {when} from {info.source_name})"
                )
        elif rule == "list.stale":
            words[rule] = "every do-not-call list is within its max age"
        elif rule == "time.holiday":
            words[rule] = "not a public holiday where the callee is"
        elif rule == "time.window":
            words[rule] = "within the allowed hours in the callee's time zone"
        elif rule == "frequency.refusal":
            words[rule] = "no refusal within the cooldown"
    return words


def render_text(
    decision: Decision, record: dict[str, Any], host: str, raw: dict[str, Any], words: dict[str, str]
) -> str:
    v = decision.verdict
    lines = []
    if v.action == "reject":
        lines.append(f"REJECT {v.status} {REASON_PHRASES.get(v.status, '')} — rule {v.rule}")
        lines.append(f"  {v.reason}")
    elif decision.monitored:
        lines.append(f"ALLOW (monitor mode: would reject with rule {v.rule})")
        lines.append(f"  {v.reason}")
    else:
        lines.append("ALLOW")
    lines.append(
        f"trunk {record['trunk']} (account {record['account']}, mode {record['mode']}, "
        f"rule pack {decision.rule_pack_version}) at {raw['at']}"
    )
    lines.append(f"  from   {raw['from']!s:<40} → {record['from']}")
    for given, norm in zip(raw["pai"], record["pai"], strict=False):
        lines.append(f"  pai    {given!s:<40} → {norm}")
    if record["privacy"]:
        lines.append(f"  privacy {', '.join(record['privacy'])}")
    lines.append(f"  to     {raw['to']!s:<40} → {record['to']}")
    if "callee_local_time" in raw:
        lines.append(f"  callee local time {raw['callee_local_time']}")
    lines.append("rules:")
    width = max((len(r) for r in decision.outcomes), default=10)
    for rule, o in decision.outcomes.items():
        mark = {FAIL: "FAIL", SKIP: "skip"}.get(o.result, "pass")
        lines.append(f"  {mark}  {rule:<{width}}  {o.reason or words.get(rule, '')}".rstrip())
    for alert in decision.alerts:
        lines.append(f"alert: {alert}")
    if v.action == "reject":
        lines.append("SIP answer:")
        lines.append(f"  SIP/2.0 {v.status} {REASON_PHRASES.get(v.status, '')}")
        lines.append(f"  Reason: {v.reason_header()}")
        lines.append(f"  Warning: {v.warning_header(host)}")
    lines.append("attempt recorded" if decision.attempt_recorded else "dry run: no attempt recorded")
    return "\n".join(lines)


async def _check(args: argparse.Namespace) -> tuple[int, str]:
    """The exit status (0 allow, 1 reject) and the text to print."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise CheckError(str(exc)) from exc
    if args.trunk is None:
        if len(config.trunks) != 1:
            raise CheckError(f"--trunk is required (trunks: {', '.join(config.trunks)})")
        args.trunk = next(iter(config.trunks))
    if args.trunk not in config.trunks:
        raise CheckError(f"no trunk named {args.trunk!r} (trunks: {', '.join(config.trunks)})")
    at = parse_at(args.at)
    engine = PolicyEngine(config)
    trunk = config.trunks[args.trunk]
    store = await open_configured_store(config)
    try:
        try:  # the B2BUA's own readers, on the arguments parsed as the SIP core parses a request
            ids = identities_from_text(
                engine.reader(args.trunk), args.trunk, args.from_, args.to,
                pai=args.pai, privacy=args.privacy, at=at, call_id=args.call_id, callee_zone=args.callee_zone,
            )  # fmt: skip
            facts = ids.facts
        except ParseError as exc:
            raise CheckError(str(exc)) from None
        decision = await engine.decide(facts, store, record=args.record)
        words = explain_passes(decision, facts, engine.rules_for(args.trunk), store)
    finally:
        await store.close()
    record = decision_record(facts, decision, trunk.account, trunk.mode)
    raw = {
        "from": args.from_,
        "pai": args.pai,
        "to": args.to,
        # as given, unless given as epoch seconds (or not at all): then as ISO-8601 with the local offset
        "at": args.at if args.at and not args.at.strip().replace(".", "", 1).isdigit()
        else datetime.fromtimestamp(at).astimezone().isoformat(timespec="seconds"),
    }
    if args.callee_zone:
        raw["callee_zone"] = args.callee_zone
    if facts.callee.kind == "e164":
        given = hours.zone_named(args.callee_zone) if args.callee_zone else None
        rules = engine.rules_for(args.trunk).hours
        placement = rules.places_for(facts.callee.e164, (given,) if given else ())
        raw["callee_local_time"] = hours.describe_places(placement.places, at)
    if args.json:
        out = {
            **record,
            "outcomes": {
                r: {"result": o.result, "reason": o.reason or words.get(r, "")}
                for r, o in decision.outcomes.items()
            },
            "given": raw,
        }
        if decision.verdict.action == "reject":
            out["sip"] = {
                "reason_header": decision.verdict.reason_header(),
                "warning_header": decision.verdict.warning_header(config.sip.hostname),
            }
        text = json.dumps(out, ensure_ascii=False, indent=2)
    else:
        text = render_text(decision, record, config.sip.hostname, raw, words)
    return (0 if decision.verdict.action == "allow" else 1), text


def run(args: argparse.Namespace) -> int:
    try:
        status, text = asyncio.run(_check(args))
    except CheckError as exc:
        print(f"sipfilter check: {exc}", file=sys.stderr)
        return 2
    print_out(text)  # `check … | head -1` keeps the verdict's exit status
    return status
