"""The `sipfilter run` process when `sip.workers` > 1: binds each worker's UDP sockets, forks the workers,
restarts a worker that dies (logged, and counted in sipfilter_worker_restarts_total), forwards SIGHUP and
SIGTERM/SIGINT to every worker (each reloads, or drains, on its own), and exits once they all have.

It runs no event loop and holds no store: forking from a process without threads or open databases is safe,
and whatever it holds (the sockets, the inboxes) stays valid for the worker it forks next."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import mmap
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from sipfilter.b2bua import ids
from sipfilter.config import Config, ConfigError, restart_required
from sipfilter.configure import load_config
from sipfilter.transport.base import install_uvloop
from sipfilter.transport.udp import bind_udp_socket
from sipfilter.workers.routing import worker_mark
from sipfilter.workers.worker import INBOX_BUFFER_BYTES, WorkerContext

# What a forked worker runs once its signals, logs and config are set: a full sipfilter event loop (App's),
# passed in by the layer above so that this module needs nothing of it.
Serve = Callable[[Config, WorkerContext], int]

log = logging.getLogger("sipfilter.workers")

# A worker that dies this soon after its start is restarted after a growing pause (a crash loop must not
# spin the CPU); one that exits 1 or 2 (cannot start, bad config) that soon on its first start stops them all.
QUICK_DEATH_S = 5.0
MAX_BACKOFF_S = 10.0
_PR_SET_PDEATHSIG = 1
_FORWARDED = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)


class Supervisor:
    def __init__(self, config: Config, serve: Serve) -> None:
        self.config = config
        self.serve = serve
        self.count = config.sip.workers
        self.children: dict[int, int] = {}  # pid -> worker index
        self.started_at: dict[int, float] = {}  # worker index -> monotonic start
        self.quick_deaths = [0] * self.count
        self.stopping = False
        self.exit_code = 0
        listens = (*config.sip.inside, *config.sip.outside)
        self.addresses = [_claim(x.host, x.port) for x in listens]
        # Each worker's own socket on every listening address, held here for as long as the supervisor runs: a
        # socket's place in its SO_REUSEPORT group is the worker index the steering program (steering.py)
        # returns, and a group only reorders when a socket leaves it. A restarted worker takes its
        # predecessor's sockets and what queued on them meanwhile.
        self.udp_sockets = [self._bind() for _ in range(self.count)]
        self.inbox_pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(self.count)]
        for pair in self.inbox_pairs:
            for end in pair:
                end.setblocking(False)
                for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                    with contextlib.suppress(OSError):
                        end.setsockopt(socket.SOL_SOCKET, option, INBOX_BUFFER_BYTES)
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="sipfilter-workers-"))
        self.restarts = mmap.mmap(-1, 8 * self.count)

    def _bind(self) -> list[socket.socket]:
        """One socket on every listening address, in the addresses' SO_REUSEPORT groups."""
        sockets: list[socket.socket] = []
        try:
            for host, port in self.addresses:
                sockets.append(bind_udp_socket(host, port, reuse_port=True))
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        return sockets

    def context(self, index: int, sockets: list[socket.socket]) -> WorkerContext:
        return WorkerContext(index, self.count, sockets, [pair[1] for pair in self.inbox_pairs],
                             self.inbox_pairs[index][0], self.runtime_dir, self.restarts)  # fmt: skip

    # -- lifecycle -----------------------------------------------------------------------------------

    def run(self) -> int:
        for sig in _FORWARDED:
            signal.signal(sig, self._on_signal)
        ports = ", ".join(str(port) for _host, port in self.addresses)
        log.info("supervisor: starting %d workers on udp port(s) %s", self.count, ports)
        try:
            for index in range(self.count):
                self._spawn(index)
            while self.children:
                try:
                    pid, status = os.waitpid(-1, 0)
                except ChildProcessError:
                    break
                if pid in self.children:
                    self._ended(self.children.pop(pid), pid, status)
        finally:
            for pid in self.children:  # only if the loop above raised: never leave workers behind
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
        log.info("supervisor: every worker has stopped")
        return self.exit_code

    def _ended(self, index: int, pid: int, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        how = f"exited {code}" if code >= 0 else f"killed by {signal.Signals(-code).name}"
        if self.stopping:
            log.info("worker %d (pid %d) %s", index, pid, how)
            if code > 0:
                self.exit_code = code
            return
        lived = time.monotonic() - self.started_at[index]
        first = self.restart_count(index) == 0
        if first and code in (1, 2) and lived < QUICK_DEATH_S:
            log.error("worker %d (pid %d) %s at start: stopping every worker", index, pid, how)
            self.exit_code = code
            self._stop(signal.SIGTERM)
            return
        self.quick_deaths[index] = self.quick_deaths[index] + 1 if lived < QUICK_DEATH_S else 0
        pause = min(MAX_BACKOFF_S, 0.5 * (2 ** self.quick_deaths[index] - 1))
        log.error("worker %d (pid %d) %s after %.1f s: restarting it%s", index, pid, how, lived,
                  f" in {pause:.1f} s" if pause else "")  # fmt: skip
        self._add_restart(index)
        if pause:
            time.sleep(pause)
        if not self.stopping:
            self._spawn(index)

    def restart_count(self, index: int) -> int:
        return int.from_bytes(self.restarts[8 * index : 8 * index + 8], "little")

    def _add_restart(self, index: int) -> None:
        self.restarts[8 * index : 8 * index + 8] = (self.restart_count(index) + 1).to_bytes(8, "little")

    def _on_signal(self, sig: int, _frame: FrameType | None) -> None:
        if sig == signal.SIGHUP:
            self._forward(signal.SIGHUP)
            return
        self._stop(signal.SIGTERM)  # each worker drains; a second signal hurries them, as for one process

    def _stop(self, sig: int) -> None:
        self.stopping = True
        self._forward(sig)

    def _forward(self, sig: int) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _spawn(self, index: int) -> None:
        sockets = self.udp_sockets[index]
        # Signals wait until the child has its own handlers and the parent knows the child's pid.
        signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
            raise
        if pid == 0:
            code = 1
            try:
                for other in self.udp_sockets:  # the other workers' (the supervisor keeps them in the group)
                    if other is not sockets:
                        for sock in other:
                            sock.close()
                code = _worker_main(self.config, self.context(index, sockets), self.serve)
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        self.children[pid] = index
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
        self.started_at[index] = time.monotonic()
        log.info("worker %d started (pid %d)", index, pid)


def _claim(host: str, port: int) -> tuple[str, int]:
    """`host:port` checked free, and the port chosen when it is 0. The workers' sockets share it through
    SO_REUSEPORT, which would also let a second sipfilter started on the same address join in and take a
    share of the traffic: binding first without it fails if anything listens there already."""
    probe = bind_udp_socket(host, port)
    try:
        return host, int(probe.getsockname()[1])
    finally:
        probe.close()


def _worker_main(started: Config, context: WorkerContext, serve: Serve) -> int:
    """In the forked worker: the config file as it is now (a restarted worker follows reloads; the
    listeners stay those the supervisor bound), then a full App until it stops."""
    for sig in _FORWARDED:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
    with contextlib.suppress(Exception):  # Linux: the worker stops with the supervisor, however it ends
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the supervisor only, which forwards it once
    _name_logs(context.index)
    config = started
    if context.restart_count(context.index) and started.path is not None:
        try:
            config = load_config(started.path)
        except ConfigError as exc:
            log.error("worker %d: %s (starting with the supervisor's config)", context.index, exc)
        if restart_required(started, config):  # the listeners are the supervisor's: keep what they were for
            config = started
    ids.set_worker_mark(worker_mark(context.index))
    install_uvloop()
    return serve(config, context)


def _name_logs(index: int) -> None:
    """Every log record of this worker names it: `sipfilter.app[1]`."""
    make = logging.getLogRecordFactory()

    def named(*args: object, **kwargs: object) -> logging.LogRecord:
        record = make(*args, **kwargs)
        record.name = f"{record.name}[{index}]"
        return record

    logging.setLogRecordFactory(named)


def run(config: Config, serve: Serve) -> int:
    try:
        supervisor = Supervisor(config, serve)
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return supervisor.run()
