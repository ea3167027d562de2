"""`sipfilter run` wiring: config → store → policy engine → B2BUA → transports → admin HTTP, plus signals.

Owns process lifecycle (start, SIGHUP reload keeping the old config on error, SIGTERM drain); no call logic.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from sipfilter import compiled, metrics
from sipfilter.admin_api import RecordsContext
from sipfilter.audit import AuditLog
from sipfilter.b2bua.core import B2BUA, INSIDE, OUTSIDE, compile_runtime
from sipfilter.b2bua.limits import LimitsConfig
from sipfilter.config import Config, ConfigError, Listen, SipLimits, restart_required
from sipfilter.configure import load_config
from sipfilter.http import AdminServer, ReadinessState, admin_token
from sipfilter.logging import setup_logging
from sipfilter.policy.engine import PolicyEngine
from sipfilter.policy.rulepack import normaliser_for  # API numbers normalised like the call path
from sipfilter.readiness import describe_missing, missing_lists
from sipfilter.records import accounts_of
from sipfilter.sip import Limits, ParseError, parse
from sipfilter.stores import WritableStore, open_store
from sipfilter.transport.base import Endpoint, install_uvloop
from sipfilter.transport.stream import (
    ConnectionLimits,
    ConnectionTable,
    StreamEndpoint,
    fd_headroom,
    open_stream_endpoint,
)
from sipfilter.transport.udp import POLL_INTERVAL_S, UdpEndpoint, UdpGroup, open_udp_endpoint
from sipfilter.workers import supervisor
from sipfilter.workers.metrics_merge import MergedRegistry
from sipfilter.workers.worker import Router, WorkerContext, serve_metrics

log = logging.getLogger("sipfilter.app")

DRAIN_POLL_S = 0.1
# After hanging up at shutdown: how long the BYEs and CANCELs may take to be answered (UDP retransmits them
# at T1, 2*T1…) before the process exits.
HANG_UP_WAIT_S = 2.0
# Cyclic GC: calls and transactions live for seconds (Timer J/K/M keep them ~32 s), so under load the default
# (700, 10, 10) rescans tens of thousands of live objects many times a second. A young collection's cost
# grows faster than its size (a small generation stays in the CPU caches), and its pauses set the INVITE p99
# under load: many small young collections. Ended calls are freed by reference counting (no call <->
# transaction cycle is left, see B2BUA._forget_client), so the middle generation holds live calls, not
# garbage: collecting it rescans every live call (a pause that was the p99 again, and datagrams dropped
# before the socket buffers grew), once per 1,000 young collections (minutes under load) instead of 20.
# The pauses measured are in docs/performance.md.
GC_THRESHOLDS = (2_000, 1_000, 50)


class App:
    """One running sipfilter process."""

    def __init__(self, config: Config, worker: WorkerContext | None = None) -> None:
        self.config = config
        self.worker = worker  # one of several worker processes (sipfilter/workers); None: the only one
        self._router: Router | None = None
        self._metrics_server: asyncio.AbstractServer | None = None
        self.b2b: B2BUA | None = None
        self.store: WritableStore | None = None
        self.audit: AuditLog | None = None
        self.endpoints: list[Endpoint] = []
        self.admin: AdminServer | None = None
        self.ready = False
        self.draining = False
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()  # a second SIGTERM/SIGINT while draining: hang up every call now
        self._tasks: list[asyncio.Task[Any]] = []
        self._reloading = False
        self.connections = ConnectionTable(_connection_limits(config))
        self._started_config = config  # what the listeners and the store were opened from
        self._listeners: list[tuple[Endpoint, str, Listen]] = []  # each endpoint, its side and its config
        self._gc_stats: _GcStats | None = None
        # Developers comparing UDP strategies (bench/e2e.py): SIPFILTER_UDP_TICK_MS=1 reads the sockets on a
        # 1 ms tick while traffic lasts (off by default: see sipfilter/transport/udp.py).
        tick_s = float(os.environ.get("SIPFILTER_UDP_TICK_MS", POLL_INTERVAL_S * 1000)) / 1000
        self._udp_group = UdpGroup(tick_s)  # every UDP listener: one tick, a pass's answers leave together

    # -- start ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        config = self.config
        worker = (0, 1) if self.worker is None else (self.worker.index, self.worker.count)
        self.store = await open_store(config, worker=worker)
        self.audit = AuditLog(config.audit)
        engine = PolicyEngine(config)
        runtime = compile_runtime(config, engine, self.store, self.audit)
        metrics.expect_series(metrics.known_labels(config, engine.rule_ids))
        limits = _parse_limits(config.sip.limits)
        self.b2b = B2BUA(
            runtime,
            parse=functools.partial(parse, limits=limits),
            parse_error=ParseError,
            observer=metrics.PrometheusObserver(metrics.CALLS),
        )
        self._size_connections(self.connections.limits)
        for side, listens in ((INSIDE, config.sip.inside), (OUTSIDE, config.sip.outside)):
            for listen in listens:
                ep = await self._listen(side, listen, limits)
                self.b2b.add_endpoint(ep)
                self.endpoints.append(ep)
                self._listeners.append((ep, side, listen))
                log.info("listening on %s %s", side, listen.describe(ep.port))
        if self.worker is not None:
            await self._join_workers()
        for trunk in config.trunks.values():
            for target in trunk.targets:
                if self.b2b.endpoint_for(OUTSIDE, target.transport) is None:
                    log.warning("trunk %s: target %s uses %s but sip.outside has no %s listener: "
                                "calls to it will be refused 503", trunk.name, target.uri, target.transport,
                                target.transport)  # fmt: skip
        if self.worker is None or self.worker.index == 0:
            await self._start_admin()
        metrics.record_reload(True)  # the first load counts: the timestamp says which config runs
        metrics.record_restart_required(())
        loop = asyncio.get_running_loop()
        for sig, handler in ((signal.SIGHUP, self._on_sighup), (signal.SIGTERM, self._on_sigterm),
                             (signal.SIGINT, self._on_sigterm)):  # fmt: skip
            loop.add_signal_handler(sig, handler)
        self._tasks.append(loop.create_task(self._probe_loop()))
        # What is loaded by now (config, rule packs, modules) lives until exit: full collections skip it.
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        if os.environ.get("SIPFILTER_GC_STATS"):  # developers: GC time while serving, logged at close
            self._gc_stats = _GcStats()
        self._warn_missing_lists()
        self.ready = True
        log.info("sipfilter ready: %d trunk(s), store %s, call path %s", len(config.trunks),
                 config.store.backend, compiled.status)  # fmt: skip

    async def _listen(self, side: str, listen: Listen, limits: Limits) -> Endpoint:
        assert self.b2b is not None
        if listen.transport == "udp":
            sock = None if self.worker is None else self.worker.udp_sockets[len(self.endpoints)]
            return await open_udp_endpoint(side, listen.host, listen.port, self.b2b, self._udp_group, sock)
        tls = None
        if listen.transport == "tls":
            if listen.context is None:
                raise ConfigError(f"sip.{side}: tls needs cert and key")
            tls = listen.context
        return await open_stream_endpoint(side, listen.host, listen.port, self.b2b, tls=tls, limits=limits,
                                          connections=self.connections)  # fmt: skip

    def _size_connections(self, limits: ConnectionLimits) -> None:
        """Use `limits` for inbound connections, within what the descriptor limit allows."""
        fits = fd_headroom(limits.max_total)
        if fits < limits.max_total:
            log.warning("limits.connections.max_total %d does not fit the open-file limit (ulimit -n): %d "
                        "inbound connections at most", limits.max_total, fits)  # fmt: skip
            limits = dataclasses.replace(limits, max_total=max(1, fits),
                                         max_per_source=min(limits.max_per_source, max(1, fits)))  # fmt: skip
        self.connections.limits = limits

    async def _join_workers(self) -> None:
        """Route datagrams to their owner worker; worker 0 serves the admin API and the merged /metrics and
        alone rotates the audit log (the others follow the path, checked before every line)."""
        assert self.worker is not None
        udp = [ep for ep in self.endpoints if isinstance(ep, UdpEndpoint)]
        self._router = Router(self.worker, udp)  # and the kernel's steering of each address
        assert self.b2b is not None
        self.b2b.route_parsed = self._router.parsed
        if self.worker.index > 0:
            self._metrics_server = await serve_metrics(self.worker)
        self._share_audit()

    def _share_audit(self) -> None:
        """Workers other than 0 never rotate the shared audit log: they follow the path before every line,
        so a rotation by worker 0 loses none of theirs (each line is one O_APPEND write: none interleaves)."""
        if self.worker is not None and self.worker.index > 0 and self.audit is not None:
            self.audit.max_bytes = sys.maxsize
            self.audit.path_check_s = 0.0

    async def _start_admin(self) -> None:
        cfg = self.config.admin
        state = ReadinessState(
            listening=lambda: bool(self.endpoints) and self.ready,
            config_loaded=lambda: self.config is not None,
            lists_loaded=self._lists_loaded,
            details=lambda: {"missing_lists": sorted(missing_lists(self.config, self.store))},
            store_ok=self._store_ok,
            # stop-relaying answers every allowed call 503 while the audit log fails: send them elsewhere.
            audit_ok=lambda: self.audit is None or not self.audit.refusing_calls(),
            draining=lambda: self.draining,
        )
        records = RecordsContext(accounts=lambda: accounts_of(self.config), audit_log=lambda: self.audit)
        registry: Any = metrics.REGISTRY
        if self.worker is not None:
            registry = MergedRegistry(metrics.REGISTRY, self.worker)
        self.admin = AdminServer(state, token=admin_token(cfg), allowed_hosts=cfg.allowed_hosts,
                                 get_store=lambda: self.store, normaliser=normaliser_for(self.config),
                                 records=records, registry=registry)  # fmt: skip
        metrics.STATE.bind(store=lambda: self.store, config=lambda: self.config,
                           audit=lambda: self.audit, ready=state.ready,
                           targets=lambda: metrics.pool_targets(self.b2b))  # fmt: skip
        await self.admin.start(cfg.host, cfg.port)

    def _lists_loaded(self) -> bool:
        return self.store is not None and not missing_lists(self.config, self.store)

    def _warn_missing_lists(self) -> None:
        for sentence in describe_missing(self.config, missing_lists(self.config, self.store)):
            log.warning("%s", sentence)

    def _store_ok(self) -> bool:
        health = getattr(self.store, "health", None)
        if self.store is None:
            return False
        if health is None or health.up:
            return True
        return all(t.on_store_error == "allow" for t in self.config.trunks.values())

    # -- periodic ----------------------------------------------------------------------------------------

    async def _probe_loop(self) -> None:
        while True:
            if self.b2b is not None and not self.draining:
                try:
                    self.b2b.probe_targets()
                except Exception:
                    log.exception("carrier probes failed")
            await asyncio.sleep(self.config.sip.probe_interval_s)  # read each time: SIGHUP may change it

    # -- reload ----------------------------------------------------------------------------------------

    def _on_sighup(self) -> None:
        if self._reloading:
            return
        self._reloading = True
        task = asyncio.get_running_loop().create_task(self.reload())
        task.add_done_callback(lambda _t: setattr(self, "_reloading", False))

    async def reload(self) -> bool:
        """Re-read the config file and apply all of it, or none of it: on any error (a bad file, a new admin
        address that cannot be bound) the running config stays. Calls are never dropped. Keys that only a
        restart applies (config.RESTART_KEYS) are named in the log and in a metric."""
        loop = asyncio.get_running_loop()
        old = self.config
        assert self.b2b is not None
        try:
            new, token = await loop.run_in_executor(None, _read_config, old.path)
            engine = PolicyEngine(new)
            runtime = compile_runtime(new, engine, self.store, self.audit, old=self.b2b.rt)
            if self.admin is not None:  # the only step with an effect that may fail: last, and all or nothing
                await self.admin.reconfigure(new.admin.host, new.admin.port, token, new.admin.allowed_hosts)
        except (ConfigError, OSError, ValueError) as exc:
            log.error("config reload refused, keeping the running config: %s", exc)
            metrics.record_reload(False)
            return False
        pending = restart_required(self._started_config, new)
        for key in restart_required(old, new):
            log.warning("%s changed: it takes effect at the next restart (the running value is kept)", key)
        metrics.record_restart_required(pending)
        old_audit = self.audit
        if new.audit != old.audit:
            self.audit = runtime.audit = AuditLog(new.audit)
            self._share_audit()
            log.info("audit log: now %s (on_write_error %s)", new.audit.path, new.audit.on_write_error)
        limits = _parse_limits(new.sip.limits)
        self.b2b.swap_runtime(runtime, parse=functools.partial(parse, limits=limits))
        self._apply_to_endpoints(new, limits)
        if new.logging != old.logging:
            setup_logging(new.logging.format, new.logging.level)
        self.config = new
        metrics.expect_series(metrics.known_labels(new, engine.rule_ids))
        if old_audit is not None and old_audit is not self.audit:
            with contextlib.suppress(Exception):
                old_audit.close()
        elif old_audit is not None:
            old_audit.reopen()  # SIGHUP after an external rotation: the path names a new file
        refresh = getattr(self.store, "refresh", None)
        if refresh is not None:  # lists imported since: picked up now rather than at the next poll
            try:
                await refresh()
            except Exception as exc:
                log.warning("list refresh on reload failed (the store keeps polling): %s", exc)
        metrics.record_reload(True)
        log.info("config reloaded from %s", new.path)
        self._warn_missing_lists()
        return True

    def _apply_to_endpoints(self, new: Config, limits: Limits) -> None:
        """Message size limits and connection caps for new connections, and the reloaded certificate (key,
        client_ca) of a TLS listener whose address did not change."""
        self._size_connections(_connection_limits(new))
        listens = {(side, x.transport, x.host, x.port): x
                   for side, group in ((INSIDE, new.sip.inside), (OUTSIDE, new.sip.outside)) for x in group}
        for ep, side, was in self._listeners:
            if not isinstance(ep, StreamEndpoint):
                continue
            ep.limits = limits
            now = listens.get((side, was.transport, was.host, was.port))
            if now is not None and now.context is not None and ep.tls_context is not None:
                ep.tls_context = now.context

    # -- stop --------------------------------------------------------------------------------------------

    def _on_sigterm(self) -> None:
        if self._hurry.is_set():
            self._stop.set()  # a third signal: exit now, whatever is still unanswered
            return
        if self.draining:
            self._hurry.set()  # a second signal: hang up every call now (never leave a carrier leg up)
            return
        self.draining = True
        self._tasks.append(asyncio.get_running_loop().create_task(self.drain()))

    async def drain(self) -> None:
        """Refuse new INVITEs (503 + Retry-After), let calls finish up to the drain timeout (or a second
        signal), hang up what is left on both legs, then stop."""
        assert self.b2b is not None
        timeout = self.config.sip.drain_timeout_s
        self.ready = False
        self.b2b.start_draining(max(1, round(timeout)))
        log.info("draining: %d call(s) in progress, up to %.0f s", self.b2b.active_calls, timeout)
        deadline = time.monotonic() + timeout
        while self.b2b.active_calls and time.monotonic() < deadline and not self._hurry.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hurry.wait(), DRAIN_POLL_S)
        if self.b2b.active_calls:
            why = "second signal" if self._hurry.is_set() else "drain timeout"
            log.warning("%s: hanging up %d call(s)", why, self.b2b.active_calls)
            self.b2b.hang_up_all()
            await self._hang_ups_answered()
        self._stop.set()

    async def _hang_ups_answered(self) -> None:
        """Wait (up to HANG_UP_WAIT_S) until the BYEs and CANCELs sent at shutdown are answered or given up:
        UDP retransmits them meanwhile, so one lost datagram does not leave a carrier leg up."""
        assert self.b2b is not None
        deadline = time.monotonic() + HANG_UP_WAIT_S
        await asyncio.sleep(0.05)  # what is sent now leaves, even on a reliable transport
        while time.monotonic() < deadline and not (self._stop.is_set() and self._hurry.is_set()):
            if not any(tx.method in ("BYE", "CANCEL") and tx.retransmitting
                       for tx in self.b2b.client_tx.values()):  # fmt: skip
                return
            await asyncio.sleep(DRAIN_POLL_S)

    async def run(self) -> int:
        await self.start()
        await self._stop.wait()
        await self.close()
        return 0

    async def close(self) -> None:
        if self._gc_stats is not None:
            self._gc_stats.report()
        for task in self._tasks:
            task.cancel()
        if self._router is not None:
            self._router.close()
        if self._metrics_server is not None:
            self._metrics_server.close()
        for ep in self.endpoints:
            with contextlib.suppress(Exception):
                await ep.close()
        if self.admin is not None:
            with contextlib.suppress(Exception):
                await self.admin.stop()
        if self.store is not None:
            with contextlib.suppress(Exception):
                await self.store.close()
        if self.audit is not None:
            with contextlib.suppress(Exception):
                self.audit.close()
        log.info("sipfilter stopped")


def _read_config(path: Path) -> tuple[Config, str | None]:
    """The config file and its admin token (its token file created if missing): file work, off the loop."""
    config = load_config(path)
    return config, admin_token(config.admin)


def _parse_limits(lim: SipLimits) -> Limits:
    return Limits(max_message_bytes=lim.max_message_bytes, max_headers=lim.max_headers,
                  max_line_bytes=lim.max_line_bytes)  # fmt: skip


def _connection_limits(config: Config) -> ConnectionLimits:
    limits = config.limits if isinstance(config.limits, LimitsConfig) else LimitsConfig()
    return limits.connections


def _serve_worker(config: Config, context: WorkerContext) -> int:
    """The body of one forked worker (sipfilter/workers/supervisor.py): a full App sharing the listeners."""
    return asyncio.run(App(config, worker=context).run())


def run(config_path: str) -> int:
    """Entry point of `sipfilter run`: load, start, serve until SIGTERM/SIGINT (then drain)."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        setup_logging()
        log.error("%s", exc)
        return 2
    setup_logging(config.logging.format, config.logging.level)
    if config.sip.workers > 1:
        return supervisor.run(config, _serve_worker)
    if install_uvloop():
        log.info("using uvloop")
    app = App(config)
    profile_to = os.environ.get("SIPFILTER_PROFILE")  # developers: cProfile the whole run into this file
    profiler = None
    if profile_to:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        return asyncio.run(app.run())
    except (OSError, ValueError) as exc:  # a port in use, an unreadable or unwritable admin token file…
        log.error("cannot start: %s", exc)
        return 1
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(str(profile_to))


class _GcStats:
    """Collections and their CPU time per generation (SIPFILTER_GC_STATS=1) from the end of start-up."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]
        self.collected = [0, 0, 0]  # unreachable cycles found: garbage reference counting could not free
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.thread_time()
            return
        spent = time.thread_time() - self._started
        gen = info["generation"]
        self.count[gen] += 1
        self.seconds[gen] += spent
        self.longest[gen] = max(self.longest[gen], spent)
        self.collected[gen] += info["collected"]

    def report(self) -> None:
        for gen in range(3):
            log.info("gc generation %d: %d collections, %.3f s CPU, longest %.1f ms, %d objects collected",
                     gen, self.count[gen], self.seconds[gen], 1000 * self.longest[gen],
                     self.collected[gen])  # fmt: skip
