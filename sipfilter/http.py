"""The admin HTTP server (aiohttp): /metrics, /healthz, /readyz, the bearer-token guard, and the /api routes.

Serves and guards only: /api handlers live in sipfilter/admin_api.py, metric objects in sipfilter/metrics.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from sipfilter import metrics
from sipfilter.admin_api import RecordsContext, add_admin_routes

log = logging.getLogger("sipfilter.http")

Check = Callable[[], bool]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Probes carry no secret and reveal only "up/ready": orchestrators and Docker HEALTHCHECK call them bare.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})


class AdminConfigError(ValueError):
    """The admin server cannot start as configured (e.g. a non-loopback bind without a token)."""


def _false() -> bool:
    return False


def _true() -> bool:
    return True


@dataclass(slots=True)
class ReadinessState:
    """What /readyz checks; the app wiring replaces each callable with a look at the running process."""

    listening: Check = _false  # SIP listeners are bound
    config_loaded: Check = _false
    lists_loaded: Check = _false  # every list a trunk checks has been imported
    store_ok: Check = _true  # store reachable, or every trunk has on_store_error: allow
    audit_ok: Check = _true  # the audit log is writable, or its on_write_error policy keeps relaying
    draining: Check = _false  # SIGTERM received: stop sending new calls here
    extra: dict[str, Check] = field(default_factory=dict)
    # What a failing check is about, by name (e.g. {"missing_lists": ["bloctel"]}): added to the /readyz body.
    details: Callable[[], dict[str, Any]] = dict

    def checks(self) -> dict[str, bool]:
        out: dict[str, bool] = {}
        for name, check in (("listening", self.listening), ("config_loaded", self.config_loaded),
                            ("lists_loaded", self.lists_loaded), ("store_ok", self.store_ok),
                            ("audit_ok", self.audit_ok), *self.extra.items()):  # fmt: skip
            try:
                out[name] = bool(check())
            except Exception:  # a failing check means not ready, never a 500
                log.exception("readiness check %s failed", name)
                out[name] = False
        try:
            out["not_draining"] = not self.draining()
        except Exception:
            out["not_draining"] = False
        return out

    def ready(self) -> bool:
        return all(self.checks().values())


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name we cannot vouch for: treat as exposed


def token_middleware(token: str) -> Any:
    """Require `Authorization: Bearer <token>` on every path but the probes (constant-time compare)."""
    # Digests of equal length: the comparison time says nothing about the token, not even its length.
    expected = hashlib.sha256(f"Bearer {token}".encode()).digest()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS:
            header = request.headers.get("Authorization", "")
            given = hashlib.sha256(header.encode("utf-8", "replace")).digest()
            if not hmac.compare_digest(given, expected):
                return web.json_response(
                    {"error": "missing or wrong bearer token"}, status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="sipfilter-admin"'},
                )  # fmt: skip
        return await handler(request)

    return guard


def make_admin_app(
    state: ReadinessState,
    *,
    token: str | None = None,
    registry: CollectorRegistry = metrics.REGISTRY,
    get_store: Callable[[], Any] | None = None,
    normaliser: Any = None,
    region: str = "FR",
    records: RecordsContext | None = None,
) -> web.Application:
    """/metrics, /healthz, /readyz (+ /api/… from admin_api when `get_store` is given); token-guarded."""
    app = web.Application(middlewares=[token_middleware(token)] if token else [])

    async def metrics_handler(_req: web.Request) -> web.Response:
        # In-memory reads only, so it stays on the loop. 0.0.4: what Prometheus 2.x parses, as generated.
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    async def healthz(_req: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_req: web.Request) -> web.Response:
        checks = state.checks()
        ok = all(checks.values())
        body: dict[str, Any] = {"ready": ok, "checks": checks}
        try:
            body.update(state.details())
        except Exception:  # the details only explain: never a 500 for them
            log.exception("readiness details failed")
        return web.json_response(body, status=200 if ok else 503)

    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if get_store is not None:
        # The middleware already checks the token: the API need not check it twice.
        add_admin_routes(app, get_store, normaliser=normaliser, region=region, token=None, context=records)
    return app


class AdminServer:
    """Runs the admin app on host:port (port 0 picks a free one, see `.port`) and the loop-lag monitor."""

    def __init__(
        self,
        state: ReadinessState | None = None,
        *,
        token: str | None = None,
        get_store: Callable[[], Any] | None = None,
        normaliser: Any = None,
        region: str = "FR",
        registry: CollectorRegistry = metrics.REGISTRY,
        lag_monitor: bool = True,
        records: RecordsContext | None = None,
    ) -> None:
        self.state = state if state is not None else ReadinessState()
        self.token = token or None
        self._app_args: dict[str, Any] = dict(
            token=self.token, registry=registry, get_store=get_store, normaliser=normaliser, region=region,
            records=records,
        )
        self._lag_monitor = lag_monitor
        self._runner: web.AppRunner | None = None
        self._lag_task: asyncio.Task[None] | None = None
        self.host = ""
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        if not is_loopback(host) and not self.token:
            raise AdminConfigError(f"admin HTTP bound to {host} (not loopback) requires a token")
        app = make_admin_app(self.state, **self._app_args)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.host = host
        addresses = runner.addresses  # the bound (host, port, …): port 0 asked for a free one
        self.port = int(addresses[0][1]) if addresses else port
        if self._lag_monitor:
            self._lag_task = asyncio.get_running_loop().create_task(metrics.loop_lag_monitor())
        log.info("admin HTTP on %s:%d%s", host, self.port, " (token required)" if self.token else "")

    async def stop(self) -> None:
        if self._lag_task is not None:
            self._lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lag_task
            self._lag_task = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
