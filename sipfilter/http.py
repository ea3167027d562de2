"""The admin HTTP server (aiohttp): /metrics, /healthz, /readyz, the bearer-token guard, and the /api routes.

Serves and guards only: /api handlers live in sipfilter/admin_api.py, metric objects in sipfilter/metrics/.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from sipfilter import metrics
from sipfilter.admin_api import RecordsContext, add_admin_routes
from sipfilter.admin_guard import OPEN_PATHS, AdminGuard, is_loopback
from sipfilter.config import AdminConfig, read_token_file

log = logging.getLogger("sipfilter.http")

Check = Callable[[], bool]
__all__ = ["OPEN_PATHS", "AdminConfigError", "AdminServer", "ReadinessState", "is_loopback", "make_admin_app"]


class AdminConfigError(ValueError):
    """The admin server cannot start as configured (e.g. a non-loopback bind without a token)."""


def admin_token(cfg: AdminConfig) -> str | None:
    """The admin token of `cfg`: inline, from `token_file`, or, when that file does not exist, a new random
    one written there (mode 0600, its directory 0700 if created). Raises ValueError (a token file that
    cannot be read or holds no usable token) or OSError (the file cannot be created)."""
    path = cfg.token_file
    if cfg.token is not None or path is None:
        return cfg.token
    token = read_token_file(path)  # again: the file may have appeared or changed since the config was read
    if token is not None:
        return token
    token = secrets.token_urlsafe(32)  # 256 random bits, 43 characters
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:  # written meanwhile by someone else: theirs wins
        return read_token_file(path)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(token + "\n")
    log.warning("admin token: %s did not exist, a new random token was written there (mode 0600)", path)
    return token


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


def make_admin_app(
    state: ReadinessState,
    *,
    token: str | None = None,
    guard: AdminGuard | None = None,
    registry: CollectorRegistry = metrics.REGISTRY,
    get_store: Callable[[], Any] | None = None,
    normaliser: Any = None,
    region: str = "FR",
    records: RecordsContext | None = None,
) -> web.Application:
    """/metrics, /healthz, /readyz (+ /api/… from admin_api when `get_store` is given), behind `guard` (by
    default one for `token` on a loopback bind: the API needs the token, /metrics and the probes do not)."""
    guard = guard if guard is not None else AdminGuard(token, "127.0.0.1")
    app = web.Application(middlewares=[guard.middleware])

    async def metrics_handler(_req: web.Request) -> web.Response:
        # In-memory reads only, so it stays on the loop. 0.0.4: what Prometheus 2.x parses, as generated.
        gather = getattr(registry, "gather", None)
        if gather is not None:  # several workers: theirs are fetched first (sipfilter/workers/metrics_merge)
            await gather()
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
        add_admin_routes(app, get_store, normaliser=normaliser, region=region, context=records)
    return app


class AdminServer:
    """Runs the admin app on host:port (port 0 picks a free one, see `.port`) and the loop-lag monitor.
    `reconfigure()` applies a reloaded `admin:` section: new token and Host names at once, a new address by
    binding it before the old one is closed (a bind that fails leaves everything as it was)."""

    def __init__(
        self,
        state: ReadinessState | None = None,
        *,
        token: str | None = None,
        allowed_hosts: Iterable[str] = (),
        get_store: Callable[[], Any] | None = None,
        normaliser: Any = None,
        region: str = "FR",
        registry: CollectorRegistry = metrics.REGISTRY,
        lag_monitor: bool = True,
        records: RecordsContext | None = None,
    ) -> None:
        self.state = state if state is not None else ReadinessState()
        self.token = token or None
        self.allowed_hosts = tuple(allowed_hosts)
        self.guard = AdminGuard(self.token, "127.0.0.1", self.allowed_hosts)
        self._app_args: dict[str, Any] = dict(
            guard=self.guard, registry=registry, get_store=get_store, normaliser=normaliser, region=region,
            records=records,
        )
        self._lag_monitor = lag_monitor
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._lag_task: asyncio.Task[None] | None = None
        self.host = ""
        self.port = 0
        self._asked_port = 0

    @staticmethod
    def _check(host: str, token: str | None) -> None:
        if not is_loopback(host) and not token:
            raise AdminConfigError(f"admin HTTP bound to {host} (not loopback) requires a token")

    async def start(self, host: str, port: int) -> None:
        self._check(host, self.token)
        self.guard.configure(self.token, host, self.allowed_hosts)
        app = make_admin_app(self.state, **self._app_args)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            self._site = await self._bind(runner, host, port)
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.host, self._asked_port = host, port
        self.port = self._bound_port(port)
        if self._lag_monitor:
            self._lag_task = asyncio.get_running_loop().create_task(metrics.loop_lag_monitor())
        log.info("admin HTTP on %s:%d%s", host, self.port, " (token required)" if self.token else "")

    @staticmethod
    async def _bind(runner: web.AppRunner, host: str, port: int) -> web.TCPSite:
        site = web.TCPSite(runner, host, port)
        await site.start()
        return site

    def _bound_port(self, asked: int) -> int:
        addresses = self._runner.addresses if self._runner is not None else []
        return int(addresses[0][1]) if addresses else asked  # port 0 asked for a free one

    async def reconfigure(self, host: str, port: int, token: str | None,
                          allowed_hosts: Iterable[str] = ()) -> None:  # fmt: skip
        """Apply a reloaded `admin:` section. Raises (AdminConfigError, OSError) with nothing changed when the
        new address cannot be bound."""
        token = token or None
        self._check(host, token)
        allowed = tuple(allowed_hosts)
        if self._runner is not None and (host, port) != (self.host, self._asked_port):
            new_site = await self._bind(self._runner, host, port)  # raises: the old site still serves
            old, self._site = self._site, new_site
            if old is not None:
                await old.stop()
            self.host, self._asked_port = host, port
            self.port = self._bound_port(port)
            log.info("admin HTTP moved to %s:%d", host, self.port)
        if token != self.token:
            log.info("admin token replaced: the previous one no longer opens the API")
        self.token, self.allowed_hosts = token, allowed
        self.guard.configure(token, self.host or host, allowed)

    async def stop(self) -> None:
        if self._lag_task is not None:
            self._lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lag_task
            self._lag_task = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
