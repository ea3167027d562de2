"""The state of calls: each leg as a dialog, the transactions in flight, and a call tying them together.

Plain state with the few accessors that read it; the B2BUA's rooms (b2bua/*.py) change it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sipfilter.b2bua import wire
from sipfilter.b2bua.auth import AuthGate
from sipfilter.b2bua.facts import CallIdentities
from sipfilter.b2bua.topology import PassList
from sipfilter.b2bua.trunks import Destination
from sipfilter.config import TrunkConfig
from sipfilter.sip.message import Message, Request
from sipfilter.sip.timers import DEFAULT_TIMERS, TIMER_A, TIMER_E, TimerConfig
from sipfilter.sip.transaction import ClientTransaction, ServerTransaction
from sipfilter.transport.base import Addr, Endpoint

INSIDE, OUTSIDE = "inside", "outside"


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
    # The transaction layer's timers (T1, T2, T4; Timer D is 64*T1 here, as long as the other guards).
    transactions: TimerConfig = DEFAULT_TIMERS


def transaction_timers(t1: float, t2: float, t4: float) -> TimerConfig:
    """The §17 timers for these base values (the shared default when they are the default ones)."""
    timers = TimerConfig(t1=t1, t2=max(t1, t2), t4=t4, timer_d=64 * t1)
    return DEFAULT_TIMERS if timers == DEFAULT_TIMERS else timers


# `msg` is typed so that the compiled call path reads its cached accessors directly, not through getattr.
def first_value(msg: Message, name: str) -> str:
    value = msg.headers.get(name)
    return "" if value is None else str(value)


def top_branch(msg: Message) -> str:
    vias = msg.vias
    return str(vias[0].branch or "") if vias else ""


def via_lines(msg: Message) -> tuple[str, ...]:
    # A tuple of str: the cyclic GC stops scanning it (transactions live 32 s, a list would be rescanned).
    return tuple([f"Via: {v}" for v in msg.headers.get_all("Via")])


def tag_of(name_addr: Any) -> str:
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
    """A request we received: the headers its responses echo, where they go, and its §17 server transaction
    (sipfilter.sip.transaction: the last response sent again to a retransmitted request, Timers G/H/I/J),
    whose timers run as `timers`; `guard` is a bound of the B2BUA's own on a relayed request's wait."""

    __slots__ = (
        "addr",
        "branch",
        "call",
        "call_id",
        "cseq",
        "ep",
        "from_",
        "guard",
        "machine",
        "method",
        "timers",
        "to",
        "vias",
    )  # fmt: skip

    def __init__(self, msg: Request, ep: Endpoint, addr: Addr, call: Call | None, to: str) -> None:
        self.method: str = msg.method
        self.branch = top_branch(msg)
        self.vias = via_lines(msg)
        self.from_ = first_value(msg, "From")
        self.to = to
        self.call_id = str(msg.call_id)
        self.cseq = first_value(msg, "CSeq")
        self.ep = ep
        self.addr = addr
        self.call = call
        self.machine: ServerTransaction | None = None  # set when filed (a stateless answer has none)
        self.timers: dict[str, Any] | None = None  # the machine's armed timers (created with the first)
        self.guard: Any = None

    @property
    def final(self) -> int:
        """Status of the final response sent to the request (0: none yet)."""
        machine = self.machine
        return 0 if machine is None else machine.final

    def lines(self, to_tag: str | None) -> list[str]:
        to = wire.with_tag(self.to, to_tag) if to_tag else self.to
        return [*self.vias, f"From: {self.from_}", f"To: {to}", f"Call-ID: {self.call_id}",
                f"CSeq: {self.cseq}"]  # fmt: skip


class ClientTx:
    """A request we sent, and its §17 client transaction (sipfilter.sip.transaction: retransmission on UDP,
    Timers A/B/D/E/F/K/M), whose timers run as `timers`; `timeout` is a guard of the B2BUA's own on top
    (Timer C, the wait after a CANCEL, a probe's deadline)."""

    __slots__ = ("addr", "branch", "call", "cancel", "cseq", "data", "dest", "ep", "final", "machine",
                 "method", "origin", "provisional", "sent_at", "side", "timeout", "timers")  # fmt: skip

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
        self.machine: ClientTransaction | None = None  # set when sent
        self.timers: dict[str, Any] = {}  # the machine's armed timers: name -> scheduled handle
        self.timeout: Any = None
        self.provisional = False
        self.final = 0  # first final status received (INVITE: the transaction is no longer pending)
        self.cancel: ClientTx | None = None  # the CANCEL we sent for it (INVITE)
        self.dest: Destination | None = None
        self.sent_at = 0.0  # B-leg INVITE: when it left for its carrier target (per-target latency)

    @property
    def retransmitting(self) -> bool:
        """Its request still goes out again (UDP, and no answer yet that stops that: Timer A or E armed)."""
        timers = self.timers
        return TIMER_A in timers or TIMER_E in timers


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
        "b_identity",
        "b_invite",
        "callee",
        "cancelled",
        "dest",
        "ended_by",
        "forks",
        "identity",
        "ids",
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
        self.forks: dict[str, bytes] | None = None  # To tag of another fork's 2xx -> our ACK for it
        self.passes: PassList | None = None
        self.reinvite: dict[str, int] = {}  # side the re-INVITE was sent on -> its CSeq (for the ACK)
        self.invite_msg: Request | None = None
        self.auth: AuthGate | None = None  # the dialer authenticated: its credentials are not relayed
        self.identity: Any = None  # the trunk's STIR/SHAKEN verifier and signer (TrunkIdentity), if any
        self.b_identity: tuple[str, ...] | None = None  # Identity lines of the B-leg (None: as passed)
        # The identities the policy decided on, which the B-leg presents (Request-URI user, From, PAI).
        self.ids: CallIdentities | None = None
        self.callee = ""  # E.164 of the callee the policy decided on ("" when it was not a valid number)


def local_tag(a: Leg) -> str:
    """Our tag on the A-leg (in a.local, the dialer's To with our tag)."""
    return a.local.rsplit(";tag=", 1)[1].split(";", 1)[0]


def cancel_of(ctx: ClientTx) -> ClientTx | None:
    # A call, not `ctx.cancel` in place: after `if ctx.cancel is None` the type checker (and the mypyc build
    # that trusts it) takes the attribute for None even once a method has set it.
    return ctx.cancel
