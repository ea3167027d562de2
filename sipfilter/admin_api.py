"""Admin HTTP API route handlers (aiohttp): refusals, oppositions, consents, contracts (and their undos),
lists and the proof-on-demand report, on the running store.

Only handlers: the HTTP server, its bind address and /metrics live in sipfilter/http.py. JSON in, JSON out;
every record goes through sipfilter.records (one store write and its audit line), so a dialer can record a
refusal the moment the consumer says no.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import tempfile
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from sipfilter import audit_report, records
from sipfilter.admin_guard import AdminGuard, accepts
from sipfilter.policy.hours import zone_named
from sipfilter.policy.numbers import Normaliser
from sipfilter.stores import ContractRecord, StoreError, StoreUnavailable, WritableStore
from sipfilter.stores.base import ConsentRecord, ListInfo
from sipfilter.stores.importer import FORMATS, ListFileError, SourceInfo, read_list
from sipfilter.stores.numberset import NumberSet
from sipfilter.stores.writable import check_list_name, parse_scope
from sipfilter.times import iso_utc, parse_instant

GetStore = Callable[[], WritableStore]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class RecordsContext:
    """What the record routes need besides the store (read per request: a reload may change them)."""

    accounts: Callable[[], Collection[str]]  # the accounts the running config's trunks use
    audit_log: Callable[[], Any]  # the running AuditLog (its `.path` and `.write`), or None

MAX_LIST_UPLOAD = 2 << 30  # bytes: a 20 M-number Bloctel file is ~250 MB
MAX_JSON_BODY = 64 << 10  # bytes: a record is a few hundred
DEFAULT_WINDOW_S = 30 * 86400.0
MAX_WINDOW_S = 3660 * 86400.0  # ten years: beyond, a typo
LATEST_TIME = 4102444800.0  # 2100-01-01T00:00:00Z: a later date is a typo (or milliseconds)
# Body types of a list upload: the file as it is (CSV, Bloctel extract, one number a line).
LIST_TYPES = ("text/csv", "application/octet-stream")
_ACCOUNT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")  # as trunks' `account` in config.py
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_FILE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,199}$")


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
    """Epoch seconds (a JSON number, or a numeric query string) or ISO-8601 with an offset, as the CLI's --at;
    now when absent. Finite and between 1970 and 2100: NaN or a date in milliseconds never reaches a store."""
    if value is None:
        return time.time()
    if isinstance(value, str) and len(value) > 64:
        raise BadRequest(f"{field}: expected epoch seconds or ISO-8601, got {_shown(value)}")
    try:
        at = parse_instant(value)
    except OverflowError:  # an integer beyond any float, a year beyond datetime's
        at = math.inf
    except ValueError as exc:
        raise BadRequest(f"{field}: {exc}") from None
    if not (math.isfinite(at) and 0 <= at < LATEST_TIME):
        raise BadRequest(f"{field}: {_shown(value)} is not a time between 1970 and 2100 (epoch seconds)")
    return at


def _number(value: Any, field: str, default: float, lo: float, hi: float) -> float:
    """A finite number in [lo, hi] (a JSON number or a query string); `default` when absent."""
    if value is None:
        return default
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
    elif isinstance(value, str) and len(value) <= 64:
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not (math.isfinite(number) and lo <= number <= hi):
        raise BadRequest(f"{field}: expected a number from {lo:g} to {hi:g}, got {_shown(value)}")
    return number


def _text(data: dict[str, Any], field: str, *, required: str = "", max_len: int = 1024) -> str | None:
    """An optional (or, with `required` saying what it is, mandatory) one-line text field."""
    value = data.get(field)
    if value is None or value == "":
        if required:
            raise BadRequest(f"{field}: required ({required})")
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{field}: expected text, got {_shown(value)}")
    if len(value) > max_len or _CONTROL_RE.search(value):
        raise BadRequest(f"{field}: at most {max_len} characters, no control characters")
    return value


def _shown(value: Any) -> str:
    """A value for an error message: short, whatever was sent."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _list_name(request: web.Request) -> str:
    return check_list_name(request.match_info["name"])


class _Api:
    def __init__(self, get_store: GetStore, normaliser: Normaliser, region: str,
                 context: RecordsContext | None) -> None:
        self.get_store = get_store
        self.normaliser = normaliser
        self.region = region
        self.context = context

    def normalise(self, number: str) -> str | None:
        n = self.normaliser.number(number, self.region)
        return n.e164 if n.ok else None

    def wrap(self, handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except (BadRequest, StoreError, ListFileError) as exc:
                return _json_error(400, str(exc))
            except StoreUnavailable as exc:
                return _json_error(503, str(exc))

        return wrapped

    async def _body(self, request: web.Request) -> dict[str, Any]:
        """Query parameters, then the JSON object of the body (its fields win)."""
        data: dict[str, Any] = dict(request.query)
        if request.body_exists:
            raw = await request.read()  # aiohttp answers 413 beyond its client_max_size (1 MiB)
            if len(raw) > MAX_JSON_BODY:
                raise BadRequest(f"the body is over {MAX_JSON_BODY} bytes")
            try:
                body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
            except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
                why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
                raise BadRequest(f"the body is not JSON: {why}") from None
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
        if not _ACCOUNT_RE.match(account):
            raise BadRequest(f"account: letters, digits, _ . : - (max 128), got {_shown(account)}")
        if not isinstance(number, str) or not number:
            raise BadRequest("number: required")
        if write and self.context is not None:
            records.check_account(account, self.context.accounts())
        e164 = self.normalise(number) if len(number) <= 64 else None
        if e164 is None:
            raise BadRequest(f"number: {_shown(number)} is not a telephone number")
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
        window = _number(data.get("window_s"), "window_s", DEFAULT_WINDOW_S, 1.0, MAX_WINDOW_S)
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
        proof = _text(data, "proof", required="recording id, form id, …")
        assert proof is not None
        hours = _text(data, "hours", max_len=200)  # free text, as from the CLI (unreadable: D223-9 hours)
        zone = _text(data, "time_zone", max_len=64)
        if zone is not None and zone_named(zone) is None:
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
                             None if end is None else _time(end, "ended_at"),
                             _text(data, "reference", max_len=200) or "", parse_scope(data.get("scope")))
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
        name = _list_name(request)
        store = self.get_store()
        info = store.list_info(name)
        if info is None:
            return _json_error(404, f"no list named {name!r}")
        out = _info(info)
        number = request.query.get("number")
        if number is not None:
            e164 = self.normalise(number) if len(number) <= 64 else None
            if e164 is None:
                raise BadRequest(f"number: {_shown(number)} is not a telephone number")
            out["number"] = e164
            out["contains"] = store.list_contains(name, e164)
        return web.json_response(out)

    async def get_list_numbers(self, request: web.Request) -> web.StreamResponse:
        name = _list_name(request)
        store = self.get_store()
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
        name = _list_name(request)
        q = request.query
        fmt, mode = q.get("format", "auto"), q.get("mode", "replace")
        if fmt not in FORMATS or mode not in ("replace", "add", "remove"):
            raise BadRequest(f"format: one of {FORMATS}; mode: replace, add or remove")
        # A NaN share would pass every comparison: a truncated file would then empty a do-not-call list.
        max_bad = _number(q.get("max_bad_share"), "max_bad_share", 0.01, 0.0, 1.0)
        max_shrink = _number(q.get("max_shrink"), "max_shrink", 0.5, 0.0, 1.0)
        column = _text(dict(q), "column", max_len=100)
        source_name = q.get("source_name", f"{name}.upload")
        if not _FILE_NAME_RE.match(source_name):
            raise BadRequest("source_name: a file name (letters, digits, _ . + -, at most 200)")
        with tempfile.TemporaryDirectory(prefix="sipfilter-upload-") as tmp:
            path = Path(tmp) / source_name
            size = 0
            with open(path, "wb") as f:
                async for chunk in request.content.iter_chunked(1 << 20):
                    size += len(chunk)
                    if size > MAX_LIST_UPLOAD:
                        return _json_error(413, f"list files are limited to {MAX_LIST_UPLOAD} bytes")
                    f.write(chunk)
            # Parsing 20 M lines takes a while: off the event loop, calls keep flowing meanwhile.
            result = await asyncio.get_running_loop().run_in_executor(
                None, lambda: read_list(path, self.normaliser, fmt=fmt, column=column, region=self.region))
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
        name = _list_name(request)
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
    so that records match what the policy engine looks up. Access is checked by the app's AdminGuard
    middleware (sipfilter/http.py adds it to every admin app); `token`, for an app built without one, adds
    that guard for this token on a loopback bind. A route's body is JSON unless `accepts()` says otherwise.
    `context`: the accounts records may name and the audit log their lines go to (the running process's;
    without it any account is taken and nothing is logged: library and test use only)."""
    if token is not None:
        app.middlewares.append(AdminGuard(token, "127.0.0.1").middleware)
    api = _Api(get_store, normaliser or Normaliser(), region, context)
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
    app.router.add_put("/api/lists/{name}", accepts(*LIST_TYPES)(w(api.put_list)))
    app.router.add_delete("/api/lists/{name}", w(api.delete_list))
