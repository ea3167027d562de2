"""Admin HTTP API route handlers (aiohttp): refusals, oppositions, consents, contracts (and their undos),
lists and the proof-on-demand report, on the running store.

Only handlers: the HTTP server, its bind address and /metrics live in sipfilter/http.py. JSON in, JSON out;
every record goes through sipfilter.records (one store write and its audit line), so a dialer can record a
refusal the moment the consumer says no.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import tempfile
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from sipfilter import audit_report, records
from sipfilter.policy.hours import zone_named
from sipfilter.policy.numbers import Normaliser
from sipfilter.stores import ContractRecord, StoreError, StoreUnavailable, WritableStore
from sipfilter.stores.base import ConsentRecord, ListInfo
from sipfilter.stores.importer import FORMATS, ListFileError, SourceInfo, read_list
from sipfilter.stores.numberset import NumberSet
from sipfilter.stores.writable import parse_scope
from sipfilter.times import iso_utc, parse_instant

GetStore = Callable[[], WritableStore]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class RecordsContext:
    """What the record routes need besides the store (read per request: a reload may change them)."""

    accounts: Callable[[], Collection[str]]  # the accounts the running config's trunks use
    audit_log: Callable[[], Any]  # the running AuditLog (its `.path` and `.write`), or None

MAX_LIST_UPLOAD = 2 << 30  # bytes: a 20 M-number Bloctel file is ~250 MB
DEFAULT_WINDOW_S = 30 * 86400.0


class BadRequest(Exception):
    """The request is malformed: answered 400 with the message."""


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _info(info: ListInfo) -> dict[str, Any]:
    return _with_iso({name: getattr(info, name) for name in info.__slots__})


# Times in answers: epoch seconds under their own name, and ISO-8601 (UTC) beside them under NAME_iso.
_TIME_FIELDS = frozenset({"at", "imported_at", "granted_at", "revoked_at", "started_at", "ended_at",
                          "last_refusal", "opposed_since", "undone_at"})


def _with_iso(data: dict[str, Any]) -> dict[str, Any]:
    for name in _TIME_FIELDS.intersection(data):
        data[f"{name}_iso"] = iso_utc(data[name])
    return data


def _time(value: Any, field: str) -> float:
    """Epoch seconds or ISO-8601 with a UTC offset (as the CLI's --at); absent: now."""
    if value is None:
        return time.time()
    try:
        return parse_instant(value)
    except ValueError as exc:
        raise BadRequest(f"{field}: {exc}") from None


def _number(value: Any, field: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{field}: expected a number, got {value!r}") from None
    if not math.isfinite(out) or out <= 0:
        raise BadRequest(f"{field}: expected a positive number, got {value!r}")
    return out


class _Api:
    def __init__(self, get_store: GetStore, normaliser: Normaliser, region: str, token: str | None,
                 context: RecordsContext | None):
        self.get_store = get_store
        self.normaliser = normaliser
        self.region = region
        self.token = token
        self.context = context

    def normalise(self, number: str) -> str | None:
        n = self.normaliser.number(number, self.region)
        return n.e164 if n.ok else None

    def wrap(self, handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            if self.token is not None:
                auth = request.headers.get("Authorization", "")
                if not hmac.compare_digest(auth.encode(), f"Bearer {self.token}".encode()):
                    return _json_error(401, "missing or wrong bearer token")
            try:
                return await handler(request)
            except (BadRequest, StoreError, ListFileError) as exc:
                return _json_error(400, str(exc))
            except StoreUnavailable as exc:
                return _json_error(503, str(exc))

        return wrapped

    async def _body(self, request: web.Request) -> dict[str, Any]:
        data: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                raise BadRequest("the body is not JSON") from None
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object")
            data.update(body)
        return data

    def _who(self, data: dict[str, Any], *, write: bool = True) -> tuple[str, str]:
        """(account, E.164 number) of a request. An account no trunk uses is refused for writes (the record
        would block nothing); reads answer (past accounts) with a `warning`, see _warning."""
        account, number = data.get("account"), data.get("number")
        if not isinstance(account, str) or not account:
            raise BadRequest("account: required (the professional account, as in the trunk config)")
        if not isinstance(number, str) or not number:
            raise BadRequest("number: required")
        if write and self.context is not None:
            records.check_account(account, self.context.accounts())
        e164 = self.normalise(number)
        if e164 is None:
            raise BadRequest(f"number: {number!r} is not a telephone number")
        return account, e164

    def _warning(self, account: str) -> dict[str, str]:
        if self.context is None or account in (known := self.context.accounts()):
            return {}
        return {"warning": f"no trunk uses account {account!r} (accounts: {', '.join(sorted(known))})"}

    def _log(self, event: records.Event | None) -> dict[str, bool]:
        """Append a record's audit line to the running audit log: `audit_logged` in the answer."""
        if event is None:
            return {}
        audit = self.context.audit_log() if self.context is not None else None
        return {"audit_logged": bool(audit is not None and audit.write(event))}

    # --- refusals ---
    async def post_refusal(self, request: web.Request) -> web.Response:
        data = await self._body(request)
        account, number = self._who(data)
        at = _time(data.get("at"), "at")
        event = await records.refuse(self.get_store(), account, number, at, "api")
        answer = {"account": account, "number": number, "at": at, **self._log(event)}
        return web.json_response(_with_iso(answer), status=201)

    async def get_refusal(self, request: web.Request) -> web.Response:
        data = await self._body(request)
        account, number = self._who(data, write=False)
        store = self.get_store()
        window = _number(data.get("window_s", DEFAULT_WINDOW_S), "window_s")
        history = await store.history(account, number)
        return web.json_response(_with_iso({"account": account, "number": number,
                                  "last_refusal": await store.last_refusal(account, number),
                                  "attempts": await store.attempts(account, number, time.time(), window),
                                  "window_s": window,
                                  "refusals": records.objection_dicts(history.refusals),
                                  "oppositions": records.objection_dicts(history.oppositions),
                                  **self._warning(account)}))

    async def undo_refusal(self, request: web.Request) -> web.Response:
        data = await self._body(request)
        account, number = self._who(data)
        at = None if data.get("at") is None else _time(data["at"], "at")
        undone, event = await records.undo_refusal(self.get_store(), account, number, at, data.get("reason"),
                                                   "api")
        return web.json_response({"account": account, "number": number,
                                  "undone": records.objection_dicts(undone), **self._log(event)},
                                 status=200 if undone else 404)

    # --- oppositions ("never call me again") ---
    async def post_opposition(self, request: web.Request) -> web.Response:
        data = await self._body(request)
        account, number = self._who(data)
        at = _time(data.get("at"), "at")
        event = await records.oppose(self.get_store(), account, number, at, "api")
        answer = {"account": account, "number": number, "at": at, **self._log(event)}
        return web.json_response(_with_iso(answer), status=201)

    async def get_oppositions(self, request: web.Request) -> web.Response:
        data = await self._body(request)
        account, number = self._who(data, write=False)
        store = self.get_store()
        history = await store.history(account, number)
        return web.json_response(_with_iso({"account": account, "number": number,
                                  "opposed_since": store.opposition_for(account, number, time.time()),
                                  "oppositions": records.objection_dicts(history.oppositions),
                                  **self._warning(account)}))

    async def undo_opposition(self, request: web.Request) -> web.Response:
        data = await self._body(request)
        account, number = self._who(data)
        undone, event = await records.undo_opposition(self.get_store(), account, number, data.get("reason"),
                                                      "api")
        return web.json_response({"account": account, "number": number,
                                  "undone": records.objection_dicts(undone), **self._log(event)},
                                 status=200 if undone else 404)

    # --- consents ---
    async def post_consent(self, request: web.Request) -> web.Response:
        data = await self._body(request)
        account, number = self._who(data)
        proof = data.get("proof")
        if not isinstance(proof, str) or not proof:
            raise BadRequest("proof: required (recording id, form id, …)")
        hours = data.get("hours")
        if hours is not None and not isinstance(hours, str):
            raise BadRequest("hours: expected text such as 'mon-sat 09:00-21:00'")
        zone = data.get("time_zone")
        if zone is not None and (not isinstance(zone, str) or zone_named(zone) is None):
            raise BadRequest(f"time_zone: {zone!r} is not an IANA time zone name (e.g. Indian/Reunion)")
        granted_at = _time(data.get("granted_at", data.get("at")), "granted_at")
        rec = ConsentRecord(account, number, granted_at, proof, None, hours, zone)
        event = await records.add_consent(self.get_store(), rec, "api")
        return web.json_response({**_record(rec), **self._log(event)}, status=201)

    async def delete_consent(self, request: web.Request) -> web.Response:
        data = await self._body(request)
        account, number = self._who(data)
        at = _time(data.get("at"), "at")
        n, event = await records.revoke_consent(self.get_store(), account, number, at, "api")
        return web.json_response(_with_iso({"account": account, "number": number, "at": at, "revoked": n,
                                             **self._log(event)}), status=200 if n else 404)

    async def undo_consent(self, request: web.Request) -> web.Response:
        data = await self._body(request)
        account, number = self._who(data)
        proof = data.get("proof")
        if proof is not None and not isinstance(proof, str):
            raise BadRequest("proof: expected the consent's proof reference")
        granted = data.get("granted_at")
        granted_at = None if granted is None else _time(granted, "granted_at")
        undone, event = await records.undo_consent(self.get_store(), account, number, proof, granted_at,
                                                   data.get("reason"), "api")
        return web.json_response({"account": account, "number": number,
                                  "undone": [_record(c) for c in undone], **self._log(event)},
                                 status=200 if undone else 404)

    async def get_consents(self, request: web.Request) -> web.Response:
        data = await self._body(request)
        account, number = self._who(data, write=False)
        history = await self.get_store().history(account, number)
        consents = []
        for c in history.consents:
            ended_at, ended_by = history.consent_end(c) or (None, None)
            consents.append({**_record(c), "ended_at": ended_at, "ended_by": ended_by})
        return web.json_response({"account": account, "number": number, "consents": consents,
                                  "undone_consents": [{**_record(u.consent), "undone_at": u.undone_at,
                                                       "undo_reason": u.reason}
                                                      for u in history.undone_consents],
                                  "contracts": [_record(r) for r in history.contracts],
                                  **self._warning(account)})

    # --- contracts ---
    async def post_contract(self, request: web.Request) -> web.Response:
        data = await self._body(request)
        account, number = self._who(data)
        end = data.get("ended_at", data.get("end"))
        rec = ContractRecord(account, number, _time(data.get("started_at", data.get("start")), "started_at"),
                             None if end is None else _time(end, "ended_at"), str(data.get("reference", "")),
                             parse_scope(data.get("scope")))
        event = await records.add_contract(self.get_store(), rec, "api")
        return web.json_response({**_record(rec), **self._log(event)}, status=201)

    async def delete_contract(self, request: web.Request) -> web.Response:
        data = await self._body(request)
        account, number = self._who(data)
        at = _time(data.get("at"), "at")
        n, event = await records.end_contract(self.get_store(), account, number, at, "api")
        return web.json_response(_with_iso({"account": account, "number": number, "at": at, "ended": n,
                                             **self._log(event)}), status=200 if n else 404)

    # --- proof on demand ---
    async def get_audit(self, request: web.Request) -> web.Response:
        """Query: account, number, from, to (epoch or ISO-8601), format (json | csv)."""
        data = dict(request.query)
        account, number = self._who(data, write=False)
        fmt = data.get("format", "json")
        if fmt not in ("json", "csv"):
            raise BadRequest("format: json or csv")
        start = _time(data["from"], "from") if data.get("from") else 0.0
        end = _time(data.get("to"), "to")
        if end < start:
            raise BadRequest("to: before from")
        audit = self.context.audit_log() if self.context is not None else None
        if audit is None:
            return _json_error(503, "no audit log configured in this process")
        report = await audit_report.build(self.get_store(), audit.path, account, number, start, end)
        report.update(self._warning(account))
        if fmt == "csv":
            return web.Response(text=audit_report.to_csv(report), content_type="text/csv", charset="utf-8")
        return web.json_response(report)

    # --- lists ---
    async def get_lists(self, request: web.Request) -> web.Response:
        store = self.get_store()
        infos = [store.list_info(n) for n in store.list_names()]
        return web.json_response([_info(i) for i in infos if i is not None])

    async def get_list(self, request: web.Request) -> web.Response:
        store = self.get_store()
        name = request.match_info["name"]
        info = store.list_info(name)
        if info is None:
            return _json_error(404, f"no list named {name!r}")
        out = _info(info)
        number = request.query.get("number")
        if number is not None:
            e164 = self.normalise(number)
            if e164 is None:
                raise BadRequest(f"number: {number!r} is not a telephone number")
            out["number"] = e164
            out["contains"] = store.list_contains(name, e164)
        return web.json_response(out)

    async def get_list_numbers(self, request: web.Request) -> web.StreamResponse:
        store = self.get_store()
        name = request.match_info["name"]
        try:
            numbers = store.list_numbers(name)
        except KeyError:
            return _json_error(404, f"no list named {name!r}")
        resp = web.StreamResponse(headers={"Content-Type": "text/plain; charset=ascii"})
        await resp.prepare(request)
        batch: list[str] = []
        for n in numbers:
            batch.append(n)
            if len(batch) >= 65536:
                await resp.write(("\n".join(batch) + "\n").encode())
                batch.clear()
        if batch:
            await resp.write(("\n".join(batch) + "\n").encode())
        await resp.write_eof()
        return resp

    async def put_list(self, request: web.Request) -> web.Response:
        """Body: the list file. Query: format, column, mode (replace|add|remove), max_bad_share (0.01),
        max_shrink (0.5), source_name (recorded as the list's source file name)."""
        name = request.match_info["name"]
        q = request.query
        fmt, mode = q.get("format", "auto"), q.get("mode", "replace")
        if fmt not in FORMATS or mode not in ("replace", "add", "remove"):
            raise BadRequest(f"format: one of {FORMATS}; mode: replace, add or remove")
        try:
            max_bad = float(q.get("max_bad_share", "0.01"))
            max_shrink = float(q.get("max_shrink", "0.5"))
        except ValueError:
            raise BadRequest("max_bad_share, max_shrink: expected numbers") from None
        with tempfile.TemporaryDirectory(prefix="sipfilter-upload-") as tmp:
            path = Path(tmp) / Path(q.get("source_name", f"{name}.upload")).name
            size = 0
            with open(path, "wb") as f:
                async for chunk in request.content.iter_chunked(1 << 20):
                    size += len(chunk)
                    if size > MAX_LIST_UPLOAD:
                        return _json_error(413, f"list files are limited to {MAX_LIST_UPLOAD} bytes")
                    f.write(chunk)
            # Parsing 20 M lines takes a while: off the event loop, calls keep flowing meanwhile.
            result = await asyncio.get_running_loop().run_in_executor(
                None, lambda: read_list(path, self.normaliser, fmt=fmt, column=q.get("column"),
                                        region=self.region))
        bad = [{"line": b.line, "text": b.text, "reason": b.reason} for b in result.bad_lines]
        if result.bad_share > max_bad:
            error = f"{result.bad} of {result.lines} lines are bad: list unchanged"
            return web.json_response({"error": error, "bad_lines": bad}, status=422)
        store = self.get_store()
        numbers = result.numbers
        try:
            current = store.list_numbers(name)
        except KeyError:
            current = NumberSet()
        if mode != "replace":
            numbers = current.union(numbers) if mode == "add" else current.difference(numbers)
        elif len(current) and len(numbers) < (1 - max_shrink) * len(current):
            # A truncated download must not silently empty a do-not-call list.
            return _json_error(422, f"list {name!r} would shrink from {len(current)} to {len(numbers)}"
                                    f" numbers (more than max_shrink={max_shrink}): unchanged")
        info = await store.put_list(name, numbers, SourceInfo(path.name, result.source.size,
                                                              result.source.sha256))
        return web.json_response({"list": _info(info), "lines": result.lines, "bad": result.bad,
                                  "duplicates": result.duplicates, "bad_lines": bad}, status=201)

    async def delete_list(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if not await self.get_store().delete_list(name):
            return _json_error(404, f"no list named {name!r}")
        return web.json_response({"deleted": name})


def _record(rec: ConsentRecord | ContractRecord) -> dict[str, Any]:
    return _with_iso({name: getattr(rec, name) for name in rec.__slots__})


def add_admin_routes(
    app: web.Application, get_store: GetStore, *, normaliser: Normaliser | None = None, region: str = "FR",
    token: str | None = None, context: RecordsContext | None = None,
) -> None:
    """Add the /api/… routes to `app`.

    `get_store` returns the running store (called per request, so a reload can swap it).
    `normaliser` and `region`: pass the call path's (`rulepack.normaliser_for(config)`, the trunk's region)
    so that records match what the policy engine looks up. `token`: when set, every route requires
    `Authorization: Bearer <token>` (http.py may instead check it in a middleware and pass None).
    `context`: the accounts records may name and the audit log their lines go to (the running process's;
    without it any account is taken and nothing is logged: library and test use only)."""
    api = _Api(get_store, normaliser or Normaliser(), region, token, context)
    w = api.wrap
    app.router.add_post("/api/refusals", w(api.post_refusal))
    app.router.add_get("/api/refusals", w(api.get_refusal))
    app.router.add_post("/api/refusals/undo", w(api.undo_refusal))
    app.router.add_post("/api/oppositions", w(api.post_opposition))
    app.router.add_get("/api/oppositions", w(api.get_oppositions))
    app.router.add_post("/api/oppositions/undo", w(api.undo_opposition))
    app.router.add_post("/api/consents", w(api.post_consent))
    app.router.add_delete("/api/consents", w(api.delete_consent))
    app.router.add_get("/api/consents", w(api.get_consents))
    app.router.add_post("/api/consents/undo", w(api.undo_consent))
    app.router.add_get("/api/audit", w(api.get_audit))
    app.router.add_post("/api/contracts", w(api.post_contract))
    app.router.add_delete("/api/contracts", w(api.delete_contract))
    app.router.add_get("/api/lists", w(api.get_lists))
    app.router.add_get("/api/lists/{name}", w(api.get_list))
    app.router.add_get("/api/lists/{name}/numbers", w(api.get_list_numbers))
    app.router.add_put("/api/lists/{name}", w(api.put_list))
    app.router.add_delete("/api/lists/{name}", w(api.delete_list))
