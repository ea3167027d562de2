"""Proof on demand: for one consumer number and one professional account over a period, every decision with
its rule outcomes and the consent or contract behind each relayed call, the records (consents, contracts,
refusals, oppositions, undos) and the versions of the lists in force, as JSON or CSV.

Read from the audit log (rotated and compressed files included) and the store. Reading files blocks: the
admin API runs `scan` in a thread. Never writes anything.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sipfilter.audit import is_decision, iso_ms
from sipfilter.audit_files import audit_files, read_lines
from sipfilter.stores.history import History
from sipfilter.stores.writable import WritableStore

CSV_COLUMNS = (
    "time", "kind", "call_id", "trunk", "mode", "action", "status", "rule", "failed", "consent_proof",
    "consent_granted_at", "contract_reference", "contract_started_at", "basis_from", "lists", "detail",
)  # fmt: skip


@dataclass
class Scan:
    decisions: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    unreadable_lines: int = 0


def scan(audit_path: Path, account: str, number: str, start: float, end: float) -> Scan:
    """The audit lines of (account, number) timed within [start, end]: decisions and record events."""
    out = Scan(files=[f.path.name for f in audit_files(audit_path)
                      if f.rotated_at is None or f.rotated_at >= start])
    needle = b'"to":' + json.dumps(number).encode()  # as the audit log writes it (compact separators)
    lo, hi = iso_ms(start), iso_ms(end)
    for line in read_lines(audit_path, since=start, contains=needle):
        try:
            rec = json.loads(line)
        except ValueError:
            out.unreadable_lines += 1  # a line torn by a crash: the report says how many
            continue
        if not isinstance(rec, dict) or rec.get("account") != account or rec.get("to") != number:
            continue
        when = rec.get("time")
        if not isinstance(when, str) or not lo <= when <= hi:
            continue
        (out.decisions if is_decision(rec) else out.events).append(rec)
    out.decisions.sort(key=lambda r: r["time"])
    out.events.sort(key=lambda r: r["time"])
    return out


async def build(store: WritableStore, audit_path: Path, account: str, number: str, start: float,
                end: float) -> dict[str, Any]:
    """The report as a JSON-ready dict (see docs/proving-consent.md for each field)."""
    found = await asyncio.to_thread(scan, audit_path, account, number, start, end)
    history = await store.history(account, number)
    decisions = [_decision(rec, history) for rec in found.decisions]
    relayed = [d for d in decisions if d["action"] == "allow"]
    names = sorted({name for d in decisions for name in d.get("lists") or {}})
    lists: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        seen = {d["lists"][name] for d in decisions if name in (d.get("lists") or {})}
        lists[name] = [{"version": i.version, "imported_at": iso_ms(i.imported_at), "count": i.count,
                        "source_name": i.source_name, "source_size": i.source_size,
                        "source_sha256": i.source_sha256} for i in await store.list_history(name)
                       if i.version in seen]
    return {
        "account": account,
        "number": number,
        "period": {"from": iso_ms(start), "to": iso_ms(end)},
        "generated_at": iso_ms(time.time()),
        "sources": {"audit_log": str(audit_path), "audit_files": found.files,
                    "unreadable_lines": found.unreadable_lines},
        "summary": {
            "decisions": len(decisions),
            "relayed": len(relayed),
            "refused": len(decisions) - len(relayed),
            "relayed_with_consent": sum(1 for d in relayed if d.get("consent")),
            "relayed_with_contract": sum(1 for d in relayed if d.get("contract") and not d.get("consent")),
            "relayed_without_consent_or_contract": sum(1 for d in relayed
                                                       if not d.get("consent") and not d.get("contract")),
        },
        "decisions": decisions,
        **_records(history),
        "events": found.events,
        "lists": lists,
    }


def _decision(rec: dict[str, Any], history: History) -> dict[str, Any]:
    out = {k: rec.get(k) for k in ("time", "call_id", "trunk", "mode", "from", "action", "status", "rule",
                                   "reason", "monitored", "failed", "alerts", "rule_pack_version", "lists")}
    consent, contract = rec.get("consent"), rec.get("contract")
    if consent:
        out["consent"] = {**consent, "from": "audit"}
    if contract:
        out["contract"] = {**contract, "from": "audit"}
    if "lists" not in rec and rec.get("action") == "allow":
        # A line written before the audit log carried its basis: what the store says was in force then.
        at = _epoch(rec["time"])
        c = history.consent_in_force(at)
        if c is not None:
            out["consent"] = {"proof": c.proof, "granted_at": iso_ms(c.granted_at), "from": "store"}
        k = history.contract_in_force(at)
        if k is not None:
            out["contract"] = {"reference": k.reference, "started_at": iso_ms(k.started_at), "from": "store"}
    return out


def _records(history: History) -> dict[str, Any]:
    def objections(items: Iterable[Any]) -> list[dict[str, Any]]:
        return [{"at": iso_ms(o.at), "source": o.source, "recorded_at": _iso(o.recorded_at),
                 "undone_at": _iso(o.undone_at), "undo_reason": o.undo_reason or None} for o in items]

    consents = []
    for c in history.consents:
        ended_at, ended_by = history.consent_end(c) or (None, None)
        consents.append({"proof": c.proof, "granted_at": iso_ms(c.granted_at), "hours": c.hours,
                         "revoked_at": _iso(c.revoked_at), "ended_at": _iso(ended_at), "ended_by": ended_by})
    return {
        "consents": consents,
        "undone_consents": [{"proof": u.consent.proof, "granted_at": iso_ms(u.consent.granted_at),
                             "undone_at": iso_ms(u.undone_at), "undo_reason": u.reason}
                            for u in history.undone_consents],
        "contracts": [{"reference": k.reference, "started_at": iso_ms(k.started_at),
                       "ended_at": _iso(k.ended_at)} for k in history.contracts],
        "refusals": objections(history.refusals),
        "oppositions": objections(history.oppositions),
    }


def to_csv(report: dict[str, Any]) -> str:
    """One row per decision, record and record event, by time (CSV_COLUMNS)."""
    rows: list[dict[str, Any]] = []
    for d in report["decisions"]:
        consent, contract = d.get("consent") or {}, d.get("contract") or {}
        rows.append({
            "time": d["time"], "kind": "decision", "call_id": d["call_id"], "trunk": d["trunk"],
            "mode": d["mode"], "action": d["action"], "status": d["status"], "rule": d["rule"],
            "failed": ";".join(d.get("failed") or {}), "consent_proof": consent.get("proof"),
            "consent_granted_at": consent.get("granted_at"), "contract_reference": contract.get("reference"),
            "contract_started_at": contract.get("started_at"),
            "basis_from": consent.get("from") or contract.get("from"),
            "lists": ";".join(f"{k}={v}" for k, v in (d.get("lists") or {}).items()),
            "detail": d.get("reason"),
        })  # fmt: skip
    for c in report["consents"]:
        rows.append({"time": c["granted_at"], "kind": "consent", "consent_proof": c["proof"],
                     "consent_granted_at": c["granted_at"],
                     "detail": f"hours {c['hours']}" if c["hours"] else ""})
        if c["ended_at"]:
            rows.append({"time": c["ended_at"], "kind": f"consent.ended ({c['ended_by']})",
                         "consent_proof": c["proof"], "consent_granted_at": c["granted_at"]})
    for u in report["undone_consents"]:
        rows.append({"time": u["undone_at"], "kind": "consent.undone", "consent_proof": u["proof"],
                     "consent_granted_at": u["granted_at"], "detail": u["undo_reason"]})
    for k in report["contracts"]:
        rows.append({"time": k["started_at"], "kind": "contract", "contract_reference": k["reference"],
                     "contract_started_at": k["started_at"],
                     "detail": f"ended {k['ended_at']}" if k["ended_at"] else ""})
    for kind in ("refusal", "opposition"):
        for o in report[kind + "s"]:
            rows.append({"time": o["at"], "kind": kind, "detail": f"recorded by {o['source'] or '-'}"})
            if o["undone_at"]:
                rows.append({"time": o["undone_at"], "kind": f"{kind}.undone", "detail": o["undo_reason"]})
    for e in report["events"]:
        detail = {k: v for k, v in e.items() if k not in ("time", "event", "account", "to")}
        rows.append({"time": e["time"], "kind": f"audit:{e['event']}",
                     "detail": json.dumps(detail, ensure_ascii=False)})
    rows.sort(key=lambda r: r["time"])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _iso(at: float | None) -> str | None:
    return None if at is None else iso_ms(at)


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()
