"""The B2BUA's foundation: the state every room shares (calls, transactions, endpoints, runtime) and its
plumbing (timers, endpoints, config reload, connection questions from the transports).

The B2BUA is one object built in layers, one module per room, each class extending the one before it:
plumbing, gate, transactions, lifecycle, b_leg, relay, health, drain, and core (dispatch). A room calls
what the rooms before it define, and the two hooks below that a later room implements.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from sipfilter.b2bua.calls import (
    INSIDE,
    OUTSIDE,
    Call,
    ClientTx,
    ServerTx,
)
from sipfilter.b2bua.limits import Admission
from sipfilter.b2bua.objections import DialerObjections
from sipfilter.b2bua.observe import Observer
from sipfilter.b2bua.runtime import Runtime, admission_config
from sipfilter.b2bua.trunks import (
    Destination,
    tls_client_at,
)
from sipfilter.b2bua.wheel import TimerWheel
from sipfilter.transport.base import Addr, Endpoint

log = logging.getLogger("sipfilter.b2bua.core")  # one logger for the B2BUA, whichever room writes


class Scheduler(Protocol):
    def __call__(self, delay: float, callback: Callable[..., Any], *args: Any) -> Any: ...


class Plumbing:
    """Owns every call and transaction, and the means to send and to schedule."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        parse: Callable[..., Any],
        parse_error: type[Exception],
        endpoints: Mapping[str, list[Endpoint]] | None = None,
        scheduler: Scheduler | None = None,
        clock: Callable[[], float] = time.time,
        observer: Observer | None = None,
        admission: Admission | None = None,
        spawn: Callable[[Awaitable[Any]], Any] | None = None,
    ) -> None:
        self.rt = runtime
        self._parse = parse
        self._parse_error = parse_error
        self.endpoints: dict[str, list[Endpoint]] = {INSIDE: [], OUTSIDE: []}
        for side, eps in (endpoints or {}).items():
            self.endpoints[side] = list(eps)
        self.timer_wheel: TimerWheel | None = None  # created on the running loop unless `scheduler` is given
        self._later: Scheduler = scheduler or self._loop_later
        self._clock = clock
        self.obs = observer or Observer()
        self.admission = admission or Admission(admission_config(runtime.config))
        self._spawn = spawn
        self.calls_a: dict[str, Call] = {}  # dialer Call-ID -> call
        self.calls_b: dict[str, Call] = {}  # our B-leg Call-ID -> call
        self.server_tx: dict[str, ServerTx] = {}  # branch of a received request
        self.client_tx: dict[str, ClientTx] = {}  # branch of a request we sent
        self.draining = False
        self.retry_after_s = 5
        self.hostname = runtime.config.sip.hostname
        self._tasks: set[asyncio.Task[Any]] = set()
        self.objections = DialerObjections()
        # One of several workers (sipfilter/workers): hands a parsed message that another worker owns to it
        # (True when it did). The kernel and the raw bytes route nearly every datagram to its owner already.
        self.route_parsed: Callable[[Endpoint, bytes, Addr, Any], bool] | None = None
        self._wire_pools()

    def _loop_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Any:
        # First timer on the running loop: every timer from now on goes through one timer wheel (a dozen
        # per call; a loop TimerHandle each cost more to create and cancel than a wheel bucket entry).
        self.timer_wheel = TimerWheel(asyncio.get_running_loop())
        self._later = self.timer_wheel.call_later
        return self._later(delay, callback, *args)

    def _wire_pools(self) -> None:
        for pool in self.rt.pools.values():
            pool.on_change = self._target_changed
        for trunk_identity in self.rt.identity.values():
            trunk_identity.observe(self.obs)

    def _target_changed(self, trunk: str, dest: Destination, up: bool) -> None:
        self.obs.target_up(trunk, dest.name, up)
        if up:  # back in rotation (or first seen answering): news, not a problem
            log.info("carrier target %s of trunk %s is up", dest.name, trunk)
        else:
            log.warning("carrier target %s of trunk %s is DOWN", dest.name, trunk)

    def swap_runtime(self, runtime: Runtime, parse: Callable[..., Any] | None = None) -> None:
        """Use a reloaded config for new calls (and `parse`, the SIP parser with its reloaded size limits,
        for new messages); calls in progress keep the trunk they started with."""
        self.rt = runtime
        if parse is not None:
            self._parse = parse
        self.hostname = runtime.config.sip.hostname
        self.admission.reconfigure(admission_config(runtime.config))
        self._wire_pools()

    def add_endpoint(self, ep: Endpoint) -> None:
        self.endpoints.setdefault(ep.side, []).append(ep)

    def endpoint_for(self, side: str, transport: str) -> Endpoint | None:
        for ep in self.endpoints.get(side) or ():
            if ep.transport == transport:
                return ep
        return None  # never another transport than the one configured: the call gets a 503

    def tls_client(self, ep: Endpoint, addr: Addr) -> Any:
        """Asked by a TLS endpoint opening a connection: the target's prebuilt context and name to verify."""
        return tls_client_at(self.rt.pools, addr)

    def accept_connection(self, ep: Endpoint, addr: Addr) -> bool:
        """Asked by a stream endpoint before it reads from an inbound connection: a source address of some
        trunk (inside) or a carrier target (outside). Anyone else gets no connection, as no answer on UDP."""
        ok = bool(self.rt.matcher.candidates(addr[0])) if ep.side == INSIDE else self._known_carrier(addr)
        if not ok:
            self.obs.unknown_source(ep.transport)
        return ok

    def connection_refused(self, ep: Endpoint, addr: Addr, reason: str) -> None:
        """A stream endpoint refused (ACL, caps) or closed (idle) an inbound connection."""
        self.obs.connection_closed(ep.transport, reason)

    def peers_in_use(self, ep: Endpoint) -> set[Addr]:
        """Peers of `ep` that calls in progress send to: their connections are in use, however quiet."""
        peers = {call.a.addr for call in self.calls_a.values() if call.a.ep is ep}
        peers.update(call.b.addr for call in self.calls_b.values() if call.b is not None and call.b.ep is ep)
        return peers

    @property
    def active_calls(self) -> int:
        return len(self.calls_a)

    def _known_carrier(self, addr: Addr) -> bool:
        for pool in self.rt.pools.values():
            for s in pool.states:
                if s.dest.host == addr[0]:
                    return True
        return False

    # -- implemented by later rooms ------------------------------------------------------------------------

    def _client_timeout(self, ctx: ClientTx) -> None:
        """A client transaction ended with no final answer (Timer B/F): core.py dispatches it."""
        raise NotImplementedError

    def _cancel_b(self, call: Call, reason: str = "") -> None:
        """CANCEL the carrier's pending INVITE of `call` (b_leg.py)."""
        raise NotImplementedError
