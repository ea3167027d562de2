"""The B2BUA: A-leg from the dialer, B-leg to the carrier, relaying between them with topology hiding.

Takes parsed messages and endpoints, sends bytes and schedules timers through what it is given; it never
opens sockets, never parses headers by hand, and asks the policy engine once per new INVITE.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sipfilter.b2bua import wire
from sipfilter.b2bua.auth import AuthGate, Passed, compile_gate
from sipfilter.b2bua.limits import Admission, Admit, LimitsConfig, Reject
from sipfilter.b2bua.observe import Observer
from sipfilter.b2bua.trunks import (
    Destination,
    TargetPool,
    TrunkMatcher,
    foreign_host,
    foreign_warning,
    targets_at,
    tls_client_at,
)
from sipfilter.b2bua.wheel import TimerWheel
from sipfilter.config import Config, TrunkConfig
from sipfilter.transport.base import Addr, Endpoint

log = logging.getLogger(__name__)

INSIDE, OUTSIDE = "inside", "outside"

# Headers the B2BUA always carries across with a body or a dialog-level meaning (besides the trunk's list).
_CONTENT = ("content-type", "content-disposition", "content-encoding", "content-language")
_IN_DIALOG = (
    "require", "supported", "rseq", "event", "subscription-state", "refer-to", "referred-by", "allow",
    "allow-events", "session-expires", "min-se", "reason", "retry-after", "unsupported", "warning",
    "accept", "info-package", "recv-info", "min-expires", "expires",
)
_COMPACT = {
    "c": "content-type", "e": "content-encoding", "k": "supported", "o": "event", "r": "refer-to",
    "b": "referred-by", "u": "allow-events", "x": "session-expires", "y": "identity",
}
_FINAL_FAILOVER = frozenset({408, 503})
# Option tags a dialer may Require: relayed end to end, so the carrier's support is what counts.
SUPPORTED_EXTENSIONS = frozenset({"100rel", "timer", "replaces", "precondition", "norefersub", "histinfo",
                                  "tdialog", "path", "outbound", "gruu", "from-change", "199"})  # fmt: skip
ACCEPTED_BODIES = ("application/sdp", "multipart/mixed", "multipart/alternative", "application/isup")


class Scheduler(Protocol):
    def __call__(self, delay: float, callback: Callable[..., Any], *args: Any) -> Any: ...


class PolicyPort(Protocol):
    """What the B2BUA needs from the policy side (sipfilter.policy.engine.PolicyEngine + store)."""

    def facts_from_request(self, trunk_name: str, request: Any, now: float) -> Any: ...

    def decide(self, facts: Any, store: Any) -> Coroutine[Any, Any, Any]: ...


@dataclass(frozen=True, slots=True)
class Timers:
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    ring_timeout: float = 120.0
    max_duration: float = 14400.0
    # Guard on a B-leg INVITE that got a provisional and nothing final (RFC 3261 §16.6 Timer C, > 3 min):
    # longer than the ring timeout, so on a live call the ring timeout is what ends it.
    timer_c: float = 212.0


class _NameFilter(dict[str, bool]):
    """Which header names (as received) cross, memoised: a hit is a C-level dict lookup, so a relay picking
    headers makes no Python call per line. Bounded: names come from the wire."""

    __slots__ = ("_decide",)

    def __init__(self, decide: Callable[[str], bool]) -> None:
        super().__init__()
        self._decide = decide

    def __missing__(self, name: str) -> bool:
        ok = self._decide(name)
        if len(self) < 1024:
            self[name] = ok
        return ok


def _lower_name(name: str) -> str:
    lname = name.lower()
    return _COMPACT.get(lname, lname)


class _PassList:
    """A trunk's header pass list ("X-*" style prefixes allowed), compiled into three memoised filters:
    what an initial INVITE carries, what in-dialog requests and responses carry, and bodies only."""

    __slots__ = ("dialog", "invite", "names", "prefixes")

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = frozenset(n.lower() for n in names if not n.endswith("*"))
        self.prefixes = tuple(n[:-1].lower() for n in names if n.endswith("*"))
        # Header `name` crosses on the initial INVITE (PAI is rebuilt, not copied) / inside the dialog.
        self.invite = _NameFilter(self._on_invite)
        self.dialog = _NameFilter(self._in_dialog)

    def allows(self, lname: str) -> bool:
        return lname in self.names or (bool(self.prefixes) and lname.startswith(self.prefixes))

    def _on_invite(self, name: str) -> bool:
        lname = _lower_name(name)
        return lname in _CONTENT or (self.allows(lname) and lname != "p-asserted-identity")

    def _in_dialog(self, name: str) -> bool:
        lname = _lower_name(name)
        return lname in _CONTENT or lname in _IN_DIALOG or self.allows(lname)


_NO_PASS = _PassList(())
_CONTENT_ONLY = _NameFilter(lambda name: _lower_name(name) in _CONTENT)


def _pick_headers(msg: Any, allow: Mapping[str, bool],
                  drop: Callable[[str, str], bool] | None = None) -> list[str]:  # fmt: skip
    safe = wire.safe
    picked = msg.headers.select(allow)  # only the values that cross are stripped
    if drop is None:
        return [f"{name}: {safe(value)}" for name, value in picked]
    return [f"{name}: {safe(value)}" for name, value in picked if not drop(name, value)]


def _first(msg: Any, name: str) -> str:
    value = msg.headers.get(name)
    return "" if value is None else str(value)


def _branch(msg: Any) -> str:
    vias = msg.vias
    return str(vias[0].branch or "") if vias else ""


def _via_lines(msg: Any) -> tuple[str, ...]:
    # A tuple of str: the cyclic GC stops scanning it (transactions live 32 s, a list would be rescanned).
    return tuple([f"Via: {v}" for v in msg.headers.get_all("Via")])


def _tag(name_addr: Any) -> str:
    return str(getattr(name_addr, "tag", None) or "")


class Leg:
    """One side of a call as a dialog: the headers we put on requests we send on it, and where to."""

    __slots__ = ("addr", "call_id", "cseq", "ep", "local", "remote", "remote_tag", "routes", "target")

    def __init__(self, ep: Endpoint, addr: Addr, call_id: str, local: str, remote: str, target: str,
                 cseq: int) -> None:  # fmt: skip
        self.ep = ep
        self.addr = addr
        self.call_id = call_id
        self.local = local  # our From (B-leg) / To with our tag (A-leg)
        self.remote = remote  # the peer's header with its tag (once known)
        self.remote_tag = ""
        self.target = target  # Request-URI of in-dialog requests (the peer's Contact)
        self.routes: Sequence[str] = ()  # Route set; empty as a shared tuple (no list per leg for the GC)
        self.cseq = cseq


class ServerTx:
    """A request we received: enough to answer it (and its retransmissions) on its leg."""

    __slots__ = (
        "addr",
        "answer",
        "branch",
        "call",
        "call_id",
        "cseq",
        "ep",
        "final",
        "from_",
        "method",
        "timers",
        "to",
        "vias",
    )  # fmt: skip

    def __init__(self, msg: Any, ep: Endpoint, addr: Addr, call: Call | None, to: str) -> None:
        self.method: str = msg.method
        self.branch = _branch(msg)
        self.vias = _via_lines(msg)
        self.from_ = _first(msg, "From")
        self.to = to
        self.call_id = str(msg.call_id)
        self.cseq = _first(msg, "CSeq")
        self.ep = ep
        self.addr = addr
        self.call = call
        self.answer: bytes = b""  # last response sent (for retransmissions)
        self.final = 0
        self.timers: Any = None  # the timer forgetting an in-dialog request (one object less for the GC)

    def lines(self, to_tag: str | None) -> list[str]:
        to = wire.with_tag(self.to, to_tag) if to_tag else self.to
        return [*self.vias, f"From: {self.from_}", f"To: {to}", f"Call-ID: {self.call_id}",
                f"CSeq: {self.cseq}"]  # fmt: skip


class ClientTx:
    """A request we sent: retransmitted on UDP until answered, timed out at 64*T1."""

    __slots__ = ("addr", "branch", "call", "cancel", "cseq", "data", "dest", "ep", "final", "interval",
                 "method", "origin", "provisional", "retrans", "side", "timeout")  # fmt: skip

    def __init__(self, call: Call | None, side: str, method: str, cseq: int, branch: str, data: bytes,
                 ep: Endpoint, addr: Addr, origin: ServerTx | None) -> None:  # fmt: skip
        self.call = call
        self.side = side  # the leg it was sent on
        self.method = method
        self.cseq = cseq
        self.branch = branch
        self.data = data
        self.ep = ep
        self.addr = addr
        self.origin = origin  # the request it relays (None: our own, e.g. BYE on cleanup, OPTIONS probe)
        self.interval = 0.0
        self.retrans: Any = None
        self.timeout: Any = None
        self.provisional = False
        self.final = 0  # first final status received (INVITE: the transaction is no longer pending)
        self.cancel: ClientTx | None = None  # the CANCEL we sent for it (INVITE)
        self.dest: Destination | None = None


# Call states
DECIDING, CALLING, EARLY, ANSWERED, CONFIRMED, ENDING, ENDED = range(7)


class Call:
    __slots__ = (
        "a",
        "a_2xx",
        "a_tx",
        "answered_at",
        "auth",
        "b",
        "b_ack",
        "b_invite",
        "cancelled",
        "dest",
        "ended_by",
        "invite_msg",
        "invite_ruri",
        "passes",
        "plan",
        "reinvite",
        "slot",
        "started",
        "state",
        "timers",
        "trunk",
    )  # fmt: skip

    def __init__(self, trunk: TrunkConfig, a: Leg, a_tx: ServerTx, slot: int | None, now: float) -> None:
        self.trunk = trunk
        self.a = a
        self.a_tx = a_tx
        self.b: Leg | None = None
        self.slot = slot
        self.started = now
        self.answered_at = 0.0
        self.state = DECIDING
        self.plan: list[Destination] = []
        self.dest: Destination | None = None
        self.b_invite: ClientTx | None = None
        self.b_ack: bytes = b""  # ACK sent to the carrier for its 2xx (resent on 2xx retransmission)
        self.a_2xx: bytes = b""  # 2xx sent to the dialer, retransmitted until its ACK
        self.cancelled = False
        self.ended_by = ""
        self.timers: dict[str, Any] = {}
        self.invite_ruri = ""
        self.passes: _PassList | None = None
        self.reinvite: dict[str, int] = {}  # side the re-INVITE was sent on -> its CSeq (for the ACK)
        self.invite_msg: Any = None
        self.auth: AuthGate | None = None  # the dialer authenticated: its credentials are not relayed


@dataclass
class Runtime:
    """What a config reload swaps atomically: the config and everything compiled from it."""

    config: Config
    policy: PolicyPort
    store: Any
    matcher: TrunkMatcher
    pools: dict[str, TargetPool]
    passes: dict[str, _PassList]
    timers: Timers
    audit: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    auth: AuthGate | None = None  # digest authentication of the dialer (`auth:`), None when off


def compile_runtime(config: Config, policy: PolicyPort, store: Any, audit: Any = None,
                    old: Runtime | None = None) -> Runtime:  # fmt: skip
    pools = {name: TargetPool(name, t.targets) for name, t in config.trunks.items()}
    if old is not None:
        for name, pool in pools.items():
            if name in old.pools:
                pool.adopt(old.pools[name])
    s = config.sip
    t1 = s.timers.t1_ms / 1000
    # Built once per runtime (a reload with the same section keeps the authenticator and its nonce state).
    auth = compile_gate(config.auth, old.auth if old is not None else None)
    return Runtime(
        config=config, policy=policy, store=store, audit=audit, matcher=TrunkMatcher(config.trunks),
        pools=pools, passes={n: _PassList(t.headers.pass_) for n, t in config.trunks.items()},
        timers=Timers(t1, s.timers.t2_ms / 1000, s.timers.t4_ms / 1000, s.ring_timeout_s,
                      s.max_call_duration_s, timer_c=max(180.0, s.ring_timeout_s) + 64 * t1),
        auth=auth,
    )  # fmt: skip


class B2BUA:
    """Owns every call and transaction. `on_datagram`/`on_message` are the transport's entry points."""

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
        self.admission = admission or Admission(_admission_config(runtime.config))
        self._spawn = spawn
        self.calls_a: dict[str, Call] = {}  # dialer Call-ID -> call
        self.calls_b: dict[str, Call] = {}  # our B-leg Call-ID -> call
        self.server_tx: dict[str, ServerTx] = {}  # branch of a received request
        self.client_tx: dict[str, ClientTx] = {}  # branch of a request we sent
        self.draining = False
        self.retry_after_s = 5
        self.hostname = runtime.config.sip.hostname
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wire_pools()

    # -- plumbing ------------------------------------------------------------------------------------

    def _loop_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Any:
        # First timer on the running loop: every timer from now on goes through one timer wheel (a dozen
        # per call; a loop TimerHandle each cost more to create and cancel than a wheel bucket entry).
        self.timer_wheel = TimerWheel(asyncio.get_running_loop())
        self._later = self.timer_wheel.call_later
        return self._later(delay, callback, *args)

    def _wire_pools(self) -> None:
        for pool in self.rt.pools.values():
            pool.on_change = self._target_changed

    def _target_changed(self, trunk: str, dest: Destination, up: bool) -> None:
        self.obs.target_up(trunk, dest.name, up)
        log.warning("carrier target %s of trunk %s is %s", dest.name, trunk, "up" if up else "DOWN")

    def swap_runtime(self, runtime: Runtime) -> None:
        """Use a reloaded config for new calls; calls in progress keep the trunk they started with."""
        self.rt = runtime
        self.hostname = runtime.config.sip.hostname
        self.admission.reconfigure(_admission_config(runtime.config))
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

    def on_connect_failed(self, ep: Endpoint, addr: Addr, failure: Any) -> None:
        """No connection to `addr` (refused, TLS handshake failed): what waited on it fails now as a transport
        error (§8.1.3.1: a 503 of our own, so the INVITE fails over), not at Timer B."""
        for trunk, dest in targets_at(self.rt.pools, addr):
            self.obs.connect_failed(trunk, dest.name, failure.transport, failure.reason)
        for ctx in [c for c in self.client_tx.values() if c.ep is ep and c.addr == addr and not c.final]:
            call = ctx.call
            if call is not None and ctx is call.b_invite and not ctx.provisional:
                self._stop_client(ctx)
                self._b_invite_failed(call, ctx, 503)
            else:
                self._client_timeout(ctx)

    @property
    def active_calls(self) -> int:
        return len(self.calls_a)

    # -- entry points ----------------------------------------------------------------------------------

    def on_datagram(self, ep: Endpoint, data: bytes, addr: Addr) -> None:
        if len(data) <= 4 and not data.strip():  # CRLF keep-alive
            return
        try:
            # Responses are only matched to our transactions (Via branch, CSeq): skip their validation.
            msg = self._parse(data, validate=data[:8] != b"SIP/2.0 ")
        except self._parse_error as exc:
            self._malformed(ep, addr, exc, data)
            return
        self.on_message(ep, msg, addr)

    def on_message(self, ep: Endpoint, msg: Any, addr: Addr) -> None:
        if isinstance(msg, self._parse_error):
            self._malformed(ep, addr, msg, b"")
            return
        try:
            if not msg.is_request:
                self._on_response(ep, msg, addr)
            else:
                self._on_request(ep, msg, addr)
        except self._parse_error as exc:  # a typed header that failed lazily
            self._malformed(ep, addr, exc, b"", msg)
        except Exception:
            log.exception("error handling a message from %s:%s", addr[0], addr[1])

    def _malformed(self, ep: Endpoint, addr: Addr, exc: Any, data: bytes, msg: Any = None) -> None:
        self.obs.malformed(ep.transport)
        if not getattr(exc, "is_request", False) and msg is None:
            return
        if msg is not None and not msg.is_request:
            return  # a response: drop
        if getattr(exc, "method", None) == "ACK" or (msg is not None and msg.method == "ACK"):
            return
        if ep.side == INSIDE and self.rt.matcher.match(addr[0], port=addr[1]) is None:
            return  # unknown source: never answered
        if ep.side == OUTSIDE and not self._known_carrier(addr):
            return
        status = int(getattr(exc, "status", 400) or 400)
        reason = str(getattr(exc, "reason", "") or wire.reason_phrase(status))
        raw = data or getattr(exc, "raw", b"") or (bytes(msg) if msg is not None else b"")
        out = wire.stateless_error(raw, status, reason, wire.new_tag()) if raw else None
        if out is not None:
            ep.send(out, addr)
            self.obs.response("", "sent", status)

    def _known_carrier(self, addr: Addr) -> bool:
        for pool in self.rt.pools.values():
            for s in pool.states:
                if s.dest.host == addr[0]:
                    return True
        return False

    # -- requests ----------------------------------------------------------------------------------------

    def _on_request(self, ep: Endpoint, msg: Any, addr: Addr) -> None:
        method: str = msg.method
        if method == "ACK":
            self._on_ack(ep, msg, addr)
            return
        branch = _branch(msg)
        stx = self.server_tx.get(branch) if branch else None
        if stx is not None and stx.addr == addr and (stx.method == method):
            self.obs.retransmission("received")
            if stx.answer:
                ep.send(stx.answer, addr)
            return
        if method == "CANCEL":
            self._on_cancel(ep, msg, addr, branch)
            return
        if _tag(msg.to):
            self._in_dialog(ep, msg, addr)
            return
        if ep.side == OUTSIDE:
            self._outside_new_request(ep, msg, addr)
            return
        if method == "INVITE":
            call = self.calls_a.get(str(msg.call_id))
            if call is not None:  # same Call-ID, new branch and no To tag: a second INVITE we refuse
                self._stateless(ep, addr, msg, 482, "Loop Detected")
                return
            self._new_invite(ep, msg, addr)
            return
        trunk = self.rt.matcher.match(addr[0], msg.headers.get, addr[1])
        if trunk is None:
            self._unknown_source(ep, msg, addr)
            return
        if self._refused_by_uas_checks(ep, msg, addr):
            return
        if not self._authenticated(ep, msg, addr, trunk, self._clock()):
            return
        # OPTIONS and the rest spend the source's budget: a known address cannot flood us either.
        admit = self.admission.admit_request(addr[0], trunk.name, self._clock())
        if not self._admitted(ep, msg, addr, admit):
            return
        if method == "OPTIONS":  # dialers probing us: we are up
            self._stateless(ep, addr, msg, 200 if not self.draining else 503, "")
            return
        self._stateless(ep, addr, msg, 405 if method not in ("BYE", "PRACK", "UPDATE", "INFO") else 481, "",
                        ["Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, PRACK, UPDATE, INFO, NOTIFY, REFER"])

    def _authenticated(self, ep: Endpoint, msg: Any, addr: Addr, trunk: TrunkConfig, now: float) -> bool:
        """Digest check of an out-of-dialog request on a trunk listed in `auth.trunks`; False when answered
        (407/401 challenge, 400 for malformed credentials) or dropped by the per-source rate limit."""
        gate = self.rt.auth
        if gate is None or not gate.applies(trunk.name):
            return True
        outcome = gate.check(msg, addr[0], now)
        self.obs.auth(trunk.name, outcome.result)
        if isinstance(outcome, Passed):
            return True
        # Refused attempts spend the source's rate budget (a flood guard), never the trunk's call budget.
        if not self._admitted(ep, msg, addr, self.admission.admit_request(addr[0], trunk.name, now)):
            return False
        if outcome.why not in ("missing", "stale"):
            log.info("digest authentication failed on trunk %s from %s: %s", trunk.name, addr[0], outcome.why)
        self._stateless(ep, addr, msg, outcome.status, outcome.reason, list(outcome.extra))
        self.obs.response(trunk.name, "sent", outcome.status)
        return False

    def _admitted(self, ep: Endpoint, msg: Any, addr: Addr, admit: Any) -> bool:
        """True for Admit; else counts the refusal and answers a Reject (503 + Retry-After) or drops."""
        if isinstance(admit, Admit):
            return True
        self.obs.overload(admit.reason)
        if isinstance(admit, Reject):
            extra = [f"Retry-After: {admit.retry_after}"] if admit.retry_after is not None else []
            self._stateless(ep, addr, msg, admit.status, "", extra)
        return False

    def _refused_by_uas_checks(self, ep: Endpoint, msg: Any, addr: Addr) -> bool:
        """RFC 3261 §8.2 checks a UAS makes before acting on a new request; True when answered."""
        tags = [t for t in (*msg.require, *msg.proxy_require) if t.lower() not in SUPPORTED_EXTENSIONS]
        if tags:
            self._stateless(ep, addr, msg, 420, "Bad Extension", [f"Unsupported: {', '.join(tags)}"])
            return True
        if msg.method != "INVITE":
            return False
        if msg.body:
            ctype = msg.content_type
            mime = ctype.mime if ctype is not None else ""
            if mime not in ACCEPTED_BODIES:
                self._stateless(ep, addr, msg, 415, "Unsupported Media Type",
                                [f"Accept: {', '.join(ACCEPTED_BODIES)}"])  # fmt: skip
                return True
        accept = msg.headers.get_all("Accept")
        if accept:
            kinds = {a.split(";", 1)[0].strip().lower() for a in accept}
            if not kinds & {"application/sdp", "application/*", "*/*", ""}:
                self._stateless(ep, addr, msg, 406, "Not Acceptable", ["Accept: application/sdp"])
                return True
        return False

    def _outside_new_request(self, ep: Endpoint, msg: Any, addr: Addr) -> None:
        # Carriers may only talk inside dialogs we created; an OPTIONS ping from a target gets 200.
        if not self._known_carrier(addr):
            self.obs.unknown_source(ep.transport)
            return
        if not self._admitted(ep, msg, addr, self.admission.admit_peer(addr[0], self._clock())):
            return  # a carrier's address is capped like a dialer's
        if msg.method == "OPTIONS":
            self._stateless(ep, addr, msg, 200, "")
        else:
            self._stateless(ep, addr, msg, 403, "Forbidden")

    def _unknown_source(self, ep: Endpoint, msg: Any, addr: Addr) -> None:
        self.obs.unknown_source(ep.transport)
        decision = self.admission.admit_request(addr[0], None, self._clock())
        if isinstance(decision, Reject):
            self._stateless(ep, addr, msg, 403, "Forbidden")

    def _stateless(self, ep: Endpoint, addr: Addr, msg: Any, status: int, reason: str,
                   extra: list[str] | None = None) -> None:  # fmt: skip
        if msg.method == "ACK":
            return
        stx = ServerTx(msg, ep, addr, None, _first(msg, "To"))
        lines = stx.lines(wire.new_tag() if status > 100 and not _tag(msg.to) else None)
        if extra:
            lines.extend(extra)
        ep.send(wire.build_response(status, reason or wire.reason_phrase(status), lines), addr)

    # -- new INVITE --------------------------------------------------------------------------------------

    def _new_invite(self, ep: Endpoint, msg: Any, addr: Addr) -> None:
        rt = self.rt
        trunk = rt.matcher.match(addr[0], msg.headers.get, addr[1])
        if trunk is None:
            self._unknown_source(ep, msg, addr)
            return
        self.obs.invite(trunk.name, ep.transport)
        now = self._clock()
        if self.draining:
            self.obs.overload("draining")
            self._stateless(ep, addr, msg, 503, "Service Unavailable", [f"Retry-After: {self.retry_after_s}"])
            return
        mf = msg.max_forwards
        if mf is not None and mf <= 0:
            self._stateless(ep, addr, msg, 483, "Too Many Hops")
            return
        if self._refused_by_uas_checks(ep, msg, addr):
            return
        if not self._authenticated(ep, msg, addr, trunk, now):
            return
        foreign = foreign_host(trunk, msg)  # request_uri.domains: a set lookup (None when unset or ours)
        if foreign is not None:
            if self._admitted(ep, msg, addr, self.admission.admit_request(addr[0], trunk.name, now)):
                self.obs.foreign_domain(trunk.name)
                warning = foreign_warning(self.hostname, trunk, foreign)
                self._stateless(ep, addr, msg, 403, "Forbidden", [warning])
            return
        admit = self.admission.admit_invite(addr[0], trunk.name, now)
        if not isinstance(admit, Admit):  # inline, not _admitted(): the slot below needs the narrowed type
            self._admitted(ep, msg, addr, admit)
            return
        stx = ServerTx(msg, ep, addr, None, _first(msg, "To"))
        a_tag = wire.new_tag()
        contact = msg.contacts
        a_target = str(contact[0].uri) if contact else str(msg.uri)
        a = Leg(ep, addr, stx.call_id, wire.with_tag(stx.to, a_tag), stx.from_, a_target, 1)
        a.remote_tag = _tag(msg.from_)
        rrs = msg.record_routes
        if rrs:
            a.routes = [f"<{rr.uri}>" if not str(rr).startswith("<") else str(rr) for rr in rrs]
        call = Call(trunk, a, stx, admit.slot, now)
        call.passes = rt.passes.get(trunk.name)
        if rt.auth is not None and rt.auth.applies(trunk.name):
            call.auth = rt.auth
        stx.call = call
        self.calls_a[stx.call_id] = call
        self.server_tx[stx.branch] = stx
        self.obs.dialogs(trunk.name, 1)
        # 100 Trying at once: the dialer stops retransmitting while the policy decides.
        stx.answer = wire.build_response(100, "Trying", stx.lines(None))
        ep.send(stx.answer, addr)
        self._decide(call, msg, now)

    def _decide(self, call: Call, msg: Any, now: float) -> None:
        rt = self.rt
        t0 = time.perf_counter()
        try:
            facts = rt.policy.facts_from_request(call.trunk.name, msg, now)
            coro = rt.policy.decide(facts, rt.store)
        except Exception:
            log.exception("policy facts failed on trunk %s", call.trunk.name)
            self._answer_a(call, 500, "Server Internal Error", [])
            return
        # Most decisions never suspend (in-process store): run the coroutine inline, no Task per call.
        try:
            awaited = coro.send(None)
        except StopIteration as stop:
            self._decided(call, msg, facts, stop.value, t0)
            return
        except Exception:
            log.exception("policy decision failed on trunk %s", call.trunk.name)
            self._answer_a(call, 500, "Server Internal Error", [])
            return
        task = asyncio.get_running_loop().create_task(_finish(coro, awaited))
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._decided_async(t, call, msg, facts, t0))

    def _decided_async(self, task: asyncio.Task[Any], call: Call, msg: Any, facts: Any, t0: float) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                log.error("policy decision failed: %r", task.exception())
            self._answer_a(call, 500, "Server Internal Error", [])
            return
        try:
            self._decided(call, msg, facts, task.result(), t0)
        except Exception:
            log.exception("error after the policy decision")

    def _decided(self, call: Call, msg: Any, facts: Any, decision: Any, t0: float) -> None:
        verdict = decision.verdict
        trunk = call.trunk.name
        kind = "allow" if verdict.allowed else "reject"
        if decision.monitored:
            kind = "monitor_reject"
        self.obs.decision(trunk, kind, verdict.rule, time.perf_counter() - t0)
        audit = self.rt.audit
        relay_ok = True
        if audit is not None:
            try:
                audit.log_decision(facts, decision, call.trunk.account, call.trunk.mode)
                relay_ok = bool(audit.should_relay)
            except Exception:
                log.exception("audit write failed")
        if call.state == ENDED or call.cancelled:
            return  # CANCEL arrived while deciding: already answered 487
        if not verdict.allowed:
            self._answer_a(call, verdict.status, "", wire.verdict_lines(verdict, self.hostname))
            return
        if not relay_ok:  # audit.on_write_error: stop-relaying and the audit log cannot be written
            warning = f'Warning: 399 {self.hostname} "audit log not writable (audit.on_write_error)"'
            self._answer_a(call, 503, "Service Unavailable", ["Retry-After: 60", warning])
            return
        # The ring timeout runs from the relay decision: a rejected call never needs the timer.
        call.timers["ring"] = self._later(self.rt.timers.ring_timeout, self._ring_timeout, call)
        pool = self.rt.pools.get(trunk)
        call.plan = pool.plan(call.trunk.on_targets_down == "try") if pool is not None else []
        if not call.plan:  # `on_targets_down: reject` and every target down: fail fast, not after Timer B
            retry = max(1, round(self.rt.config.sip.probe_interval_s))
            warning = f'Warning: 399 {self.hostname} "every carrier target of trunk {trunk} is down"'
            self._answer_a(call, 503, "Service Unavailable", [f"Retry-After: {retry}", warning])
            return
        self._start_b_leg(call, msg)
        self.obs.relayed(trunk)

    # -- B-leg ------------------------------------------------------------------------------------------

    def _start_b_leg(self, call: Call, msg: Any) -> None:
        ep = None
        while call.plan and ep is None:  # skip targets whose transport we do not listen on
            dest = call.plan.pop(0)
            ep = self.endpoint_for(OUTSIDE, dest.transport)
        if ep is None:
            self._answer_a(call, 503, "Service Unavailable", [])
            return
        call.dest = dest
        host = self.hostname
        if call.b is None:
            user = _callee_user(msg)
            display = getattr(msg.from_, "display_name", None)
            from_user = _user_part(getattr(msg.from_, "uri", None)) or "anonymous"
            from_name = f'"{wire.safe(str(display)).strip(chr(34))}" ' if display else ""
            b_call_id = wire.new_call_id(host)
            local = f"{from_name}<sip:{from_user}@{host}>;tag={wire.new_tag()}"
            call.invite_ruri = f"sip:{user}@{dest.uri_host}" if user else f"sip:{dest.uri_host}"
            to = f"<sip:{user}@{dest.uri_host}>" if user else f"<sip:{dest.uri_host}>"
            call.b = Leg(ep, dest.addr, b_call_id, local, to, call.invite_ruri, 1)
            self.calls_b[b_call_id] = call
            call.invite_msg = msg  # kept for failover to the next target; dropped when answered
        else:
            b = call.b
            b.ep, b.addr = ep, dest.addr
            user = call.invite_ruri.split(":", 1)[1].split("@", 1)[0] if "@" in call.invite_ruri else ""
            call.invite_ruri = f"sip:{user}@{dest.uri_host}" if user else f"sip:{dest.uri_host}"
            b.target = call.invite_ruri
            b.remote = f"<sip:{user}@{dest.uri_host}>" if user else f"<sip:{dest.uri_host}>"
            b.remote_tag = ""
            b.cseq += 1
            msg = call.invite_msg
        b = call.b
        mf = msg.max_forwards
        branch = wire.new_branch()
        transport = ep.transport.upper()
        lines = [
            f"Via: SIP/2.0/{transport} {ep.hostport};branch={branch};rport",
            f"Max-Forwards: {(mf if mf is not None else 70) - 1}",
            f"From: {b.local}",
            f"To: {b.remote}",
            f"Call-ID: {b.call_id}",
            f"CSeq: {b.cseq} INVITE",
            f"Contact: <sip:{host}@{ep.hostport};transport={ep.transport}>",
        ]
        passes = call.passes
        passes = passes or _NO_PASS
        pai = passes.allows("p-asserted-identity")
        lines.extend(_pick_headers(msg, passes.invite, call.auth.ours if call.auth is not None else None))
        if pai:
            lines.extend(f"P-Asserted-Identity: {v}" for v in _hidden_identities(msg, host))
        body = msg.body or b""
        data = wire.build_request("INVITE", call.invite_ruri, lines, body)
        ctx = ClientTx(call, OUTSIDE, "INVITE", b.cseq, branch, data, ep, dest.addr, call.a_tx)
        ctx.dest = dest
        call.b_invite = ctx
        call.state = CALLING
        self._send_client(ctx)

    def _send_client(self, ctx: ClientTx) -> None:
        self.client_tx[ctx.branch] = ctx
        ctx.ep.send(ctx.data, ctx.addr)
        t = self.rt.timers
        if not ctx.ep.reliable:
            ctx.interval = t.t1
            ctx.retrans = self._later(t.t1, self._retransmit, ctx)
        ctx.timeout = self._later(64 * t.t1, self._client_timeout, ctx)

    def _retransmit(self, ctx: ClientTx) -> None:
        if self.client_tx.get(ctx.branch) is not ctx:
            return
        self.obs.retransmission("sent")
        ctx.ep.send(ctx.data, ctx.addr)
        t = self.rt.timers
        ctx.interval = ctx.interval * 2 if ctx.method == "INVITE" else min(ctx.interval * 2, t.t2)
        ctx.retrans = self._later(ctx.interval, self._retransmit, ctx)

    def _stop_client(self, ctx: ClientTx, *, keep: float = 0.0) -> None:
        if ctx.retrans is not None:
            ctx.retrans.cancel()
            ctx.retrans = None
        if ctx.timeout is not None:
            ctx.timeout.cancel()
            ctx.timeout = None
        if keep > 0:  # keep absorbing retransmitted final responses (Timer D/K)
            ctx.timeout = self._later(keep, self._forget_client, ctx)
        else:
            self._forget_client(ctx)

    def _forget_client(self, ctx: ClientTx) -> None:
        if self.client_tx.get(ctx.branch) is ctx:
            del self.client_tx[ctx.branch]
            # Nothing reaches a forgotten transaction's call through it: break the call <-> transaction
            # cycle so that reference counting frees the call, not a (costly) cyclic GC pass.
            ctx.call = None

    def _client_timeout(self, ctx: ClientTx) -> None:
        if self.client_tx.get(ctx.branch) is not ctx:
            return
        ctx.timeout = None
        if ctx.retrans is not None:
            ctx.retrans.cancel()
            ctx.retrans = None
        del self.client_tx[ctx.branch]
        call = ctx.call
        if ctx.method == "OPTIONS" and call is None and ctx.dest is not None:
            self._probe_result(ctx, False)
            return
        if call is None:
            return
        if ctx is call.b_invite:
            if ctx.provisional or ctx.final:
                return  # ringing: Timer C and the ring timeout govern; answered: nothing to time out
            self._b_invite_failed(call, ctx, 408)
            return
        if ctx.origin is not None and ctx.method != "ACK":
            if ctx.method == "INVITE":
                call.reinvite.pop(ctx.side, None)  # else the next re-INVITE would get 491 forever
            self._relay_response_to(ctx.origin, 408, "Request Timeout", [], b"")
        if ctx.method == "BYE":
            self._end(call, "bye-timeout")
        elif ctx.method != "ACK" and call.state in (ANSWERED, CONFIRMED):
            # No answer inside the dialog: that leg is gone (§12.2.1.2), so is the call. BYE both legs.
            log.info("no answer to %s on call %s: hanging up", ctx.method, call.a.call_id)
            call.ended_by = "peer-timeout"
            self._cancel_timer(call, "max")
            self._send_bye(call, OUTSIDE)
            self._send_bye(call, INSIDE)
            self._end_soon(call)

    def _b_invite_failed(self, call: Call, ctx: ClientTx, status: int) -> None:
        trunk = call.trunk.name
        if ctx.dest is not None and status in (408, 503) and trunk in self.rt.pools:
            self.rt.pools[trunk].mark(ctx.dest, False, self._clock())
        if status in _FINAL_FAILOVER and call.plan and not call.cancelled and call.state in (CALLING, EARLY):
            self.obs.failover(trunk, ctx.dest.name if ctx.dest else "")
            self._start_b_leg(call, None)
            return
        self._answer_a(call, status, "", [])

    # -- responses ---------------------------------------------------------------------------------------

    def _on_response(self, ep: Endpoint, msg: Any, addr: Addr) -> None:
        branch = _branch(msg)
        cseq = msg.cseq
        if cseq.method == "CANCEL":
            branch += ".c"  # CANCEL shares its INVITE's branch; we index it apart
        ctx = self.client_tx.get(branch)
        if ctx is None or ctx.addr[0] != addr[0] or cseq.method != ctx.method:
            return  # not ours (or not from where we sent it): drop
        status: int = msg.status
        call = ctx.call
        if ctx.method == "OPTIONS" and call is None:
            if status >= 200:
                self._stop_client(ctx)
                self._probe_result(ctx, status != 503)
            return
        if call is None:
            if status >= 200:
                self._stop_client(ctx)
            return
        self.obs.response(call.trunk.name, "received", status)
        if ctx.method == "INVITE" and ctx is call.b_invite:
            self._b_invite_response(call, ctx, msg, status)
            return
        if ctx.method == "CANCEL":
            if status >= 200:
                self._stop_client(ctx)
            return
        if status < 200:
            if ctx.retrans is not None and ctx.method != "INVITE":
                pass  # non-INVITE keeps retransmitting at T2 (Timer E), as §17.1.2.2 says
            ctx.provisional = True
            if ctx.method == "INVITE" and ctx.retrans is not None:
                ctx.retrans.cancel()
                ctx.retrans = None
            if status > 100 and ctx.origin is not None:
                self._relay_response(call, ctx, msg)
            return
        if ctx.method == "INVITE" and status >= 300:
            self._ack_non2xx(ctx, msg)
        self._stop_client(ctx, keep=0 if ctx.ep.reliable else 64 * self.rt.timers.t1)
        if ctx.origin is not None:
            self._relay_response(call, ctx, msg)
        if ctx.method == "BYE":
            self._end(call, call.ended_by or "bye")

    def _b_invite_response(self, call: Call, ctx: ClientTx, msg: Any, status: int) -> None:
        b = call.b
        assert b is not None
        if status < 200:
            if ctx.final:
                return  # a provisional straggling behind the final answer
            ctx.provisional = True
            if ctx.retrans is not None:
                ctx.retrans.cancel()
                ctx.retrans = None
            if ctx.cancel is None:  # Proceeding: Timer C (re)starts; after a CANCEL its 64*T1 guard runs on
                if ctx.timeout is not None:
                    ctx.timeout.cancel()
                ctx.timeout = self._later(self.rt.timers.timer_c, self._timer_c, ctx)
            if call.cancelled or call.state == ENDED:
                call.cancelled = True
                self._cancel_b(call)
                return
            if status == 100:
                return
            self._learn_b_dialog(b, msg)
            if call.state in (CALLING, EARLY):
                call.state = EARLY
                self._relay_invite_response(call, msg, status)
            return
        # final
        if ctx.retrans is not None:
            ctx.retrans.cancel()
            ctx.retrans = None
        if status < 300:
            if not ctx.final:
                ctx.final = status
                if ctx.timeout is not None:
                    ctx.timeout.cancel()
                # Keep the transaction to recognise 2xx retransmissions for 64*T1 (RFC 6026 Accepted).
                ctx.timeout = self._later(64 * self.rt.timers.t1, self._forget_client, ctx)
            self._b_2xx(call, ctx, msg)
            return
        ctx.final = ctx.final or status
        self._ack_non2xx(ctx, msg)
        self._stop_client(ctx, keep=0 if ctx.ep.reliable else 64 * self.rt.timers.t1)
        if ctx.dest is not None and call.trunk.name in self.rt.pools:
            self.rt.pools[call.trunk.name].mark(ctx.dest, status != 503, self._clock())
        if call.state in (ENDED, ENDING) or call.cancelled:
            return
        if status in _FINAL_FAILOVER and call.plan:
            self._b_invite_failed(call, ctx, status)
            return
        self._relay_invite_response(call, msg, status)

    def _learn_b_dialog(self, b: Leg, msg: Any) -> None:
        tag = _tag(msg.to)
        if tag and tag != b.remote_tag:
            b.remote_tag = tag
            b.remote = wire.with_tag(b.remote.split(";tag=")[0], tag)
        contacts = msg.contacts
        if contacts:
            b.target = str(contacts[0].uri)
        rrs = msg.record_routes
        if rrs:
            b.routes = [str(r) for r in reversed(rrs)]

    def _b_2xx(self, call: Call, ctx: ClientTx, msg: Any) -> None:
        b = call.b
        assert b is not None
        if call.state in (ANSWERED, CONFIRMED, ENDING, ENDED) or call.cancelled:
            if call.b_ack:  # 2xx retransmission: our ACK was lost
                b.ep.send(call.b_ack, b.addr)
                return
            if call.state in (ANSWERED,):
                return
            # A 2xx after CANCEL (race) or after the call ended: acknowledge it and hang up.
            self._learn_b_dialog(b, msg)
            self._send_b_ack(call, b"", [])
            self._send_bye(call, OUTSIDE)
            self._end_soon(call)
            return
        self._learn_b_dialog(b, msg)
        call.state = ANSWERED
        call.answered_at = self._clock()
        call.invite_msg = None
        self._cancel_timer(call, "ring")
        if ctx.dest is not None and call.trunk.name in self.rt.pools:
            self.rt.pools[call.trunk.name].mark(ctx.dest, True, call.answered_at)
        self.obs.answered(call.trunk.name)
        self._relay_invite_response(call, msg, msg.status)
        call.timers["max"] = self._later(self.rt.timers.max_duration, self._max_duration, call)

    def _relay_invite_response(self, call: Call, msg: Any, status: int) -> None:
        a = call.a
        stx = call.a_tx
        lines = stx.lines(_local_tag(a))
        ep = a.ep
        if status < 300:
            lines.append(f"Contact: <sip:{self.hostname}@{ep.hostport};transport={ep.transport}>")
        lines.extend(self._response_headers(call, msg))
        data = wire.build_response(status, str(msg.reason), lines, msg.body or b"")
        if status >= 200:
            self.obs.invite_final(call.trunk.name, self._clock() - call.started)
            self._final_to_a(call, status, data)
            return
        stx.answer = data
        ep.send(data, a.addr)
        self.obs.response(call.trunk.name, "sent", status)

    def _response_headers(self, call: Call, msg: Any) -> list[str]:
        passes = call.passes
        return _pick_headers(msg, (passes or _NO_PASS).dialog)

    def _final_to_a(self, call: Call, status: int, data: bytes) -> None:
        """Send the INVITE's final answer to the dialer; UDP retransmits it until the ACK (Timer G / 2xx)."""
        stx = call.a_tx
        stx.answer = data
        stx.final = status
        a = call.a
        a.ep.send(data, a.addr)
        self.obs.response(call.trunk.name, "sent", status)
        t = self.rt.timers
        if status < 300:
            call.a_2xx = data
        else:
            call.state = ENDING
            self._cancel_timer(call, "ring")
        if not a.ep.reliable:
            call.timers["g"] = self._later(t.t1, self._retransmit_final, call, t.t1)
        call.timers["h"] = self._later(64 * t.t1, self._no_ack, call)

    def _retransmit_final(self, call: Call, interval: float) -> None:
        stx = call.a_tx
        if call.state == ENDED or not stx.answer:
            return
        self.obs.retransmission("sent")
        call.a.ep.send(stx.answer, call.a.addr)
        nxt = min(interval * 2, self.rt.timers.t2)
        call.timers["g"] = self._later(nxt, self._retransmit_final, call, nxt)

    def _no_ack(self, call: Call) -> None:
        call.timers.pop("h", None)
        self._cancel_timer(call, "g")
        if call.state == ANSWERED:  # 2xx never acknowledged: hang up both legs (§13.3.1.4)
            log.info("no ACK for 2xx on call %s: hanging up", call.a.call_id)
            self._send_b_ack(call, b"", [])
            self._send_bye(call, OUTSIDE)
            self._send_bye(call, INSIDE)
            call.ended_by = "no-ack"
            self._end_soon(call)
            return
        self._end(call, call.ended_by or "final")

    def _answer_a(self, call: Call, status: int, reason: str, extra: list[str]) -> None:
        """A final response of our own making to the dialer's INVITE (reject, 408, 487, 503…)."""
        if call.a_tx.final or call.state == ENDED:
            return
        lines = call.a_tx.lines(_local_tag(call.a))
        lines.extend(extra)
        data = wire.build_response(status, reason or wire.reason_phrase(status), lines)
        self.obs.invite_final(call.trunk.name, self._clock() - call.started)
        self._final_to_a(call, status, data)

    def _ack_non2xx(self, ctx: ClientTx, msg: Any) -> None:
        """ACK for a 3xx-6xx is hop-by-hop: same branch, Request-URI and CSeq number (§17.1.1.3)."""
        call = ctx.call
        if call is None or call.b is None:
            return
        b = call.b
        lines = [
            f"Via: SIP/2.0/{ctx.ep.transport.upper()} {ctx.ep.hostport};branch={ctx.branch};rport",
            "Max-Forwards: 70",
            f"From: {b.local}",
            f"To: {_first(msg, 'To')}",
            f"Call-ID: {b.call_id}",
            f"CSeq: {ctx.cseq} ACK",
        ]
        ctx.ep.send(wire.build_request("ACK", call.invite_ruri, lines), ctx.addr)

    # -- ACK, CANCEL ---------------------------------------------------------------------------------------

    def _on_ack(self, ep: Endpoint, msg: Any, addr: Addr) -> None:
        call_id = str(msg.call_id)
        if ep.side == INSIDE:
            call = self.calls_a.get(call_id)
            if call is None or call.a.addr[0] != addr[0]:
                return
            if call.state == ANSWERED and call.a_2xx:
                self._cancel_timer(call, "g")
                self._cancel_timer(call, "h")
                call.state = CONFIRMED
                call.a_2xx = b""
                self._send_b_ack(call, msg.body or b"", self._pick_content(msg))
                return
            if call.state == CONFIRMED and OUTSIDE in call.reinvite:
                self._relay_reinvite_ack(call, OUTSIDE, msg)
                return
            if call.state == ENDING and call.a_tx.final >= 300:
                self._cancel_timer(call, "g")
                self._cancel_timer(call, "h")
                # Absorb retransmitted ACKs for T4 (Timer I), then forget the call.
                t = self.rt.timers
                wait = 0 if ep.reliable else t.t4
                call.timers["i"] = self._later(wait, self._end, call, call.ended_by or "final")
            return
        call = self.calls_b.get(call_id)
        if call is None or call.b is None or call.b.addr[0] != addr[0]:
            return
        if INSIDE in call.reinvite:
            self._relay_reinvite_ack(call, INSIDE, msg)

    def _pick_content(self, msg: Any) -> list[str]:
        return _pick_headers(msg, _CONTENT_ONLY)

    def _send_b_ack(self, call: Call, body: bytes, extra: list[str]) -> None:
        b = call.b
        if b is None or not b.remote_tag:
            return
        ep = b.ep
        lines = [
            f"Via: SIP/2.0/{ep.transport.upper()} {ep.hostport};branch={wire.new_branch()};rport",
            "Max-Forwards: 70",
            *[f"Route: {r}" for r in b.routes],
            f"From: {b.local}",
            f"To: {b.remote}",
            f"Call-ID: {b.call_id}",
            f"CSeq: {call.b_invite.cseq if call.b_invite else b.cseq} ACK",
            *extra,
        ]
        call.b_ack = wire.build_request("ACK", b.target, lines, body)
        ep.send(call.b_ack, b.addr)

    def _relay_reinvite_ack(self, call: Call, to_side: str, msg: Any) -> None:
        cseq = call.reinvite.pop(to_side)
        leg = call.b if to_side == OUTSIDE else call.a
        if leg is None:
            return
        ep = leg.ep
        lines = [
            f"Via: SIP/2.0/{ep.transport.upper()} {ep.hostport};branch={wire.new_branch()};rport",
            "Max-Forwards: 70",
            *[f"Route: {r}" for r in leg.routes],
            f"From: {leg.local}",
            f"To: {leg.remote}",
            f"Call-ID: {leg.call_id}",
            f"CSeq: {cseq} ACK",
            *self._pick_content(msg),
        ]
        ep.send(wire.build_request("ACK", leg.target, lines, msg.body or b""), leg.addr)

    def _on_cancel(self, ep: Endpoint, msg: Any, addr: Addr, branch: str) -> None:
        stx = self.server_tx.get(branch)
        if stx is None or stx.method != "INVITE" or stx.addr[0] != addr[0] or stx.call is None:
            self._stateless(ep, addr, msg, 481, "")
            return
        self._stateless(ep, addr, msg, 200, "OK")
        call = stx.call
        if stx.final:
            return  # too late: the INVITE already has its final answer
        call.cancelled = True
        call.ended_by = "cancel"
        reason = _first(msg, "Reason")
        self._answer_a(call, 487, "Request Terminated", [])
        self._cancel_b(call, reason)

    def _cancel_b(self, call: Call, reason: str = "") -> None:
        ctx = call.b_invite
        if ctx is None or call.b is None or self.client_tx.get(ctx.branch) is not ctx:
            return
        if not ctx.provisional or ctx.final:
            return  # §9.1: CANCEL only after a provisional; sent when one arrives (cancelled flag)
        if ctx.cancel is not None:
            return
        b = call.b
        lines = [
            f"Via: SIP/2.0/{ctx.ep.transport.upper()} {ctx.ep.hostport};branch={ctx.branch};rport",
            "Max-Forwards: 70",
            f"From: {b.local}",
            f"To: {b.remote.split(';tag=')[0]}",
            f"Call-ID: {b.call_id}",
            f"CSeq: {ctx.cseq} CANCEL",
        ]
        if reason:
            lines.append(f"Reason: {wire.safe(reason)}")
        data = wire.build_request("CANCEL", call.invite_ruri, lines)
        cancel = ClientTx(call, OUTSIDE, "CANCEL", ctx.cseq, ctx.branch + ".c", data, ctx.ep, ctx.addr, None)
        ctx.cancel = cancel
        # CANCEL shares the INVITE's branch on the wire; index it apart so the INVITE stays matched.
        self.client_tx[cancel.branch] = cancel
        # §9.1: no final answer 64*T1 after the CANCEL and the INVITE transaction is given up.
        if ctx.timeout is not None:
            ctx.timeout.cancel()
        ctx.timeout = self._later(64 * self.rt.timers.t1, self._timer_c, ctx)
        ctx.ep.send(data, ctx.addr)
        if not ctx.ep.reliable:
            cancel.interval = self.rt.timers.t1
            cancel.retrans = self._later(cancel.interval, self._retransmit, cancel)
        cancel.timeout = self._later(64 * self.rt.timers.t1, self._cancel_gone, call, cancel)

    def _timer_c(self, ctx: ClientTx) -> None:
        """A B-leg INVITE with no final answer in time: CANCEL it if not done yet, else give it up."""
        if self.client_tx.get(ctx.branch) is not ctx:
            return
        ctx.timeout = None
        call = ctx.call
        if ctx.final or call is None:
            self._forget_client(ctx)
            return
        if ctx.cancel is None:
            if call.state in (CALLING, EARLY) and not call.cancelled and not call.a_tx.final:
                self._ring_timeout(call)  # 408 to the dialer and CANCEL to the carrier
            else:
                call.cancelled = True
                self._cancel_b(call, 'SIP;cause=408;text="no final answer"')
            if _cancel_of(ctx) is not None:  # (read again: _ring_timeout or _cancel_b may have sent one)
                return  # the CANCEL's own 64*T1 guard now runs on this transaction
        log.info("no final answer to the B-leg INVITE of call %s: transaction dropped", call.a.call_id)
        self._stop_client(ctx)
        if call.state != ENDED and not call.a_tx.final:
            call.cancelled = True
            self._answer_a(call, 408, "Request Timeout", [])

    def _cancel_gone(self, call: Call, cancel: ClientTx) -> None:
        if cancel.retrans is not None:
            cancel.retrans.cancel()
        self.client_tx.pop(cancel.branch, None)
        cancel.call = None  # the call -> INVITE -> CANCEL -> call cycle (see _forget_client)
        ctx = call.b_invite
        if ctx is not None:
            self._stop_client(ctx)
        self._end(call, call.ended_by or "cancel")

    # -- in-dialog requests ----------------------------------------------------------------------------

    def _in_dialog(self, ep: Endpoint, msg: Any, addr: Addr) -> None:
        call_id = str(msg.call_id)
        if ep.side == INSIDE:
            call = self.calls_a.get(call_id)
            ok = call is not None and call.a.addr[0] == addr[0]
            to_side = OUTSIDE
        else:
            call = self.calls_b.get(call_id)
            ok = call is not None and call.b is not None and call.b.addr[0] == addr[0]
            to_side = INSIDE
        if call is None or not ok:
            if ep.side == OUTSIDE and not self._known_carrier(addr):
                return
            if ep.side == INSIDE and self.rt.matcher.match(addr[0], port=addr[1]) is None:
                return
            self._stateless(ep, addr, msg, 481, "")
            return
        method: str = msg.method
        to = _first(msg, "To")
        stx = ServerTx(msg, ep, addr, call, to)
        leg = call.b if to_side == OUTSIDE else call.a
        if leg is None or (to_side == OUTSIDE and not leg.remote_tag) or call.state == ENDED:
            self._stateless(ep, addr, msg, 481 if method != "BYE" else 200, "")
            if method == "BYE":
                self._end(call, "bye")
            return
        self.server_tx[stx.branch] = stx
        stx.timers = self._later(64 * self.rt.timers.t1, self._forget_server, stx)
        if method == "BYE":
            call.ended_by = "bye-" + ep.side
            self._cancel_timer(call, "max")
            if call.state in (CALLING, EARLY):  # BYE on an early dialog: the INVITE will not complete
                # §15.1.2: requests pending in the dialog get 487; the carrier's INVITE is cancelled.
                call.cancelled = True
                self._answer_a(call, 487, "Request Terminated", [])
                self._cancel_b(call)
                call.state = ENDING
            if ep.side == INSIDE and call.state == ANSWERED:
                self._send_b_ack(call, b"", [])
        if method == "INVITE" and to_side in call.reinvite:
            self._respond(stx, 491, "Request Pending", [], b"")
            return
        mf = msg.max_forwards
        if mf is not None and mf <= 0:
            self._respond(stx, 483, "Too Many Hops", [], b"")
            return
        leg.cseq += 1
        cseq = leg.cseq
        lep = leg.ep
        branch = wire.new_branch()
        lines = [
            f"Via: SIP/2.0/{lep.transport.upper()} {lep.hostport};branch={branch};rport",
            f"Max-Forwards: {(mf if mf is not None else 70) - 1}",
            *[f"Route: {r}" for r in leg.routes],
            f"From: {leg.local}",
            f"To: {leg.remote}",
            f"Call-ID: {leg.call_id}",
            f"CSeq: {cseq} {method}",
        ]
        if method in ("INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"):
            lines.append(f"Contact: <sip:{self.hostname}@{lep.hostport};transport={lep.transport}>")
        if method == "PRACK":
            rack = _first(msg, "RAck").split()
            if len(rack) == 3 and call.b_invite is not None and to_side == OUTSIDE:
                lines.append(f"RAck: {rack[0]} {call.b_invite.cseq} {rack[2]}")
            elif len(rack) == 3:
                lines.append(f"RAck: {rack[0]} {call.a_tx.cseq.split()[0]} {rack[2]}")
        passes = call.passes
        drop = call.auth.ours if call.auth is not None and ep.side == INSIDE else None
        lines.extend(_pick_headers(msg, (passes or _NO_PASS).dialog, drop))
        data = wire.build_request(method, leg.target, lines, msg.body or b"")
        # A BYE cannot fail (§15.1.2): answer it at once, not when the other leg does. A dead carrier would
        # hold the dialer for 64*T1, just when its own Timer F gives up; the B-leg BYE is now our own.
        origin = None if method == "BYE" else stx
        ctx = ClientTx(call, to_side, method, cseq, branch, data, lep, leg.addr, origin)
        if method == "INVITE":
            call.reinvite[to_side] = cseq
            # 100 Trying at once (§17.2.1): the sender then waits for our final answer (408 after 64*T1 if
            # the other leg is dead) instead of its own Timer B firing just when we answer.
            stx.answer = wire.build_response(100, "Trying", stx.lines(None))
            ep.send(stx.answer, addr)
        self._send_client(ctx)
        if method == "BYE":
            self._respond(stx, 200, "OK", [], b"")

    def _forget_server(self, stx: ServerTx) -> None:
        if self.server_tx.get(stx.branch) is stx:
            del self.server_tx[stx.branch]
            call = stx.call
            if call is not None and call.a_tx is stx and call.state == ENDED:
                stx.call = None  # the call <-> INVITE transaction cycle (see _forget_client)

    def _respond(self, stx: ServerTx, status: int, reason: str, extra: list[str], body: bytes) -> None:
        call = stx.call
        lines = stx.lines(None)
        lines.extend(extra)
        data = wire.build_response(status, reason or wire.reason_phrase(status), lines, body)
        if status >= 200:
            stx.answer = data
            stx.final = status
        stx.ep.send(data, stx.addr)
        if call is not None:
            self.obs.response(call.trunk.name, "sent", status)

    def _relay_response(self, call: Call, ctx: ClientTx, msg: Any) -> None:
        stx = ctx.origin
        if stx is None:
            return
        status: int = msg.status
        extra = self._response_headers(call, msg)
        if ctx.method in ("INVITE", "UPDATE", "SUBSCRIBE") and 200 <= status < 300:
            sep = stx.ep
            extra.append(f"Contact: <sip:{self.hostname}@{sep.hostport};transport={sep.transport}>")
        if ctx.method == "INVITE" and status >= 300:
            call.reinvite.pop(ctx.side, None)
        if ctx.method == "INVITE" and 200 <= status < 300:
            # The ACK from the re-INVITE's originator is relayed to the other leg with this CSeq.
            pass
        self._relay_response_to(stx, status, str(msg.reason), extra, msg.body or b"")

    def _relay_response_to(self, stx: ServerTx, status: int, reason: str, extra: list[str],
                           body: bytes) -> None:  # fmt: skip
        self._respond(stx, status, reason, extra, body)

    # -- timers and cleanup ------------------------------------------------------------------------------

    def _ring_timeout(self, call: Call) -> None:
        call.timers.pop("ring", None)
        if call.state in (DECIDING, CALLING, EARLY) and not call.a_tx.final:
            log.info("ring timeout on call %s", call.a.call_id)
            call.cancelled = True
            call.ended_by = "ring-timeout"
            self._answer_a(call, 408, "Request Timeout", [])
            self._cancel_b(call, 'SIP;cause=408;text="ring timeout"')
            ctx = call.b_invite
            if ctx is not None and not ctx.provisional:
                self._stop_client(ctx)

    def _max_duration(self, call: Call) -> None:
        call.timers.pop("max", None)
        if call.state in (ANSWERED, CONFIRMED):
            log.info("maximum call duration reached on call %s", call.a.call_id)
            call.ended_by = "max-duration"
            self._send_bye(call, OUTSIDE)
            self._send_bye(call, INSIDE)
            self._end_soon(call)

    def _send_bye(self, call: Call, side: str) -> None:
        leg = call.b if side == OUTSIDE else call.a
        if leg is None or (side == OUTSIDE and not leg.remote_tag):
            return
        leg.cseq += 1
        ep = leg.ep
        branch = wire.new_branch()
        lines = [
            f"Via: SIP/2.0/{ep.transport.upper()} {ep.hostport};branch={branch};rport",
            "Max-Forwards: 70",
            *[f"Route: {r}" for r in leg.routes],
            f"From: {leg.local}",
            f"To: {leg.remote}",
            f"Call-ID: {leg.call_id}",
            f"CSeq: {leg.cseq} BYE",
            f'Reason: SIP;cause=200;text="{call.ended_by or "hangup"}"',
        ]
        ctx = ClientTx(None, side, "BYE", leg.cseq, branch, wire.build_request("BYE", leg.target, lines),
                       ep, leg.addr, None)  # fmt: skip
        self._send_client(ctx)

    def _end_soon(self, call: Call) -> None:
        if call.state == ENDED:
            return  # already forgotten: never revive it (its slot and gauge were released once)
        call.state = ENDING
        if "end" not in call.timers:
            call.timers["end"] = self._later(self.rt.timers.t4, self._end, call, call.ended_by or "ended")

    def _cancel_timer(self, call: Call, name: str) -> None:
        handle = call.timers.pop(name, None)
        if handle is not None and hasattr(handle, "cancel"):
            handle.cancel()

    def _end(self, call: Call, why: str) -> None:
        """Forget a call for good: indexes, timers, admission slot, gauge. Idempotent."""
        if call.state == ENDED:
            return
        call.state = ENDED
        for handle in call.timers.values():
            if hasattr(handle, "cancel"):
                handle.cancel()
        call.timers.clear()
        if self.calls_a.get(call.a.call_id) is call:
            del self.calls_a[call.a.call_id]
        if call.b is not None and self.calls_b.get(call.b.call_id) is call:
            del self.calls_b[call.b.call_id]
        stx = call.a_tx
        if self.server_tx.get(stx.branch) is stx:
            # Keep answering retransmissions of the INVITE briefly (its final answer is cached).
            self._later(self.rt.timers.t4, self._forget_server, stx)
        ctx = call.b_invite
        if ctx is not None and self.client_tx.get(ctx.branch) is ctx:
            if ctx.timeout is None:
                self._forget_client(ctx)
            elif not ctx.final:
                # Still pending at the carrier: CANCEL it now if it rang, else on its first provisional;
                # its Timer B/C guard drops the transaction if the carrier never answers.
                call.cancelled = True
                self._cancel_b(call)
        self.admission.release(call.slot)
        call.slot = None
        self.obs.dialogs(call.trunk.name, -1)
        log.debug("call %s ended: %s", call.a.call_id, why)

    # -- carrier health --------------------------------------------------------------------------------

    def probe_targets(self) -> None:
        """Send one OPTIONS to every target of every trunk; answers and timeouts update their health."""
        t1 = self.rt.timers.t1
        for pool in self.rt.pools.values():
            for state in pool.states:
                dest = state.dest
                ep = self.endpoint_for(OUTSIDE, dest.transport)
                if ep is None:
                    continue
                branch = wire.new_branch()
                lines = [
                    f"Via: SIP/2.0/{ep.transport.upper()} {ep.hostport};branch={branch};rport",
                    "Max-Forwards: 70",
                    f"From: <sip:{self.hostname}@{ep.hostport}>;tag={wire.new_tag()}",
                    f"To: <sip:{dest.uri_host}>",
                    f"Call-ID: {wire.new_call_id(self.hostname)}",
                    "CSeq: 1 OPTIONS",
                ]
                data = wire.build_request("OPTIONS", f"sip:{dest.uri_host}", lines)
                ctx = ClientTx(None, OUTSIDE, "OPTIONS", 1, branch, data, ep, dest.addr, None)
                ctx.dest = dest
                self.client_tx[branch] = ctx
                ep.send(data, dest.addr)
                if not ep.reliable:
                    ctx.interval = t1
                    ctx.retrans = self._later(t1, self._retransmit, ctx)
                ctx.timeout = self._later(min(64 * t1, 8.0), self._client_timeout, ctx)

    def _probe_result(self, ctx: ClientTx, ok: bool) -> None:
        if ctx.dest is None:
            return
        for pool in self.rt.pools.values():
            if any(s.dest == ctx.dest for s in pool.states):
                pool.mark(ctx.dest, ok, self._clock())

    # -- drain ---------------------------------------------------------------------------------------

    def start_draining(self, retry_after_s: int) -> None:
        self.draining = True
        self.retry_after_s = retry_after_s

    def hang_up_all(self) -> None:
        """End of the drain timeout: BYE every answered call, CANCEL the ringing ones, forget them all."""
        for call in list(self.calls_a.values()):
            call.ended_by = "shutdown"
            if call.state in (ANSWERED, CONFIRMED):
                self._send_bye(call, OUTSIDE)
                self._send_bye(call, INSIDE)
            elif call.state in (DECIDING, CALLING, EARLY):
                call.cancelled = True
                self._answer_a(call, 503, "Service Unavailable", [f"Retry-After: {self.retry_after_s}"])
                self._cancel_b(call)
            self._end(call, "shutdown")


_NOT_USER = re.compile(r"[^0-9A-Za-z+*#._\-]")


def _user_part(uri: Any) -> str:
    """The user (or tel number) of a URI, reduced to characters that cannot change the URI we build."""
    user = getattr(uri, "user", None) or getattr(uri, "number", None) or ""
    return _NOT_USER.sub("", str(user))


def _hidden_identities(msg: Any, host: str) -> list[str]:
    """P-Asserted-Identity values with the dialer's hosts replaced by ours (tel: URIs kept as they are)."""
    out: list[str] = []
    for na in msg.p_asserted_identities:
        uri = na.uri
        if getattr(uri, "scheme", "") == "tel":
            text = f"<{uri}>"
        else:
            user = _user_part(uri)
            text = f"<sip:{user}@{host}>" if user else f"<sip:{host}>"
        display = na.display_name
        if display:
            text = f'"{wire.safe(display).strip(chr(34))}" {text}'
        out.append(text)
    return out


def _callee_user(msg: Any) -> str:
    try:
        user = _user_part(msg.request_uri)
    except Exception:  # an unparsable Request-URI: fall back to To, never to its host
        user = ""
    return user or _user_part(getattr(msg.to, "uri", None))


def _local_tag(a: Leg) -> str:
    """Our tag on the A-leg (in a.local, the dialer's To with our tag)."""
    return a.local.rsplit(";tag=", 1)[1].split(";", 1)[0]


async def _finish(coro: Coroutine[Any, Any, Any], awaited: Any) -> Any:
    """Resume a coroutine that suspended on `awaited` after being stepped by hand (as a Task would: the
    coroutine reads the future's result or exception itself when sent None)."""
    while True:
        if awaited is None:
            await asyncio.sleep(0)
        else:
            # The coroutine's own `await` marked the future as awaited; a second await of a pending future
            # so marked fails ("await wasn't used with future"). Task.__step clears the mark the same way.
            awaited._asyncio_future_blocking = False
            try:
                await awaited
            except Exception:
                pass  # the coroutine re-raises it from the future's result()
        try:
            awaited = coro.send(None)
        except StopIteration as stop:
            return stop.value


def _admission_config(config: Config) -> LimitsConfig:
    limits = config.limits
    if isinstance(limits, LimitsConfig):
        return limits
    # No `limits:` section: no caps, and unknown sources answered 403 (issue 5), never relayed.
    return LimitsConfig(unknown_source="reject", source_rate=1e9, source_burst=1_000_000_000)


def _cancel_of(ctx: ClientTx) -> ClientTx | None:
    # A call, not `ctx.cancel` in place: after `if ctx.cancel is None` the type checker (and the mypyc build
    # that trusts it) takes the attribute for None even once a method has set it.
    return ctx.cancel
