"""Helpers for B2BUA call-logic tests: fake endpoints that record what is sent, a manual clock/scheduler,
a policy stub, and a B2BUA wired to them (no sockets)."""

from __future__ import annotations

import heapq
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sipfilter.audit import AuditLog
from sipfilter.b2bua.core import B2BUA, compile_runtime
from sipfilter.configure import load_config
from sipfilter.policy.engine import PolicyEngine
from sipfilter.policy.facts import CallFacts
from sipfilter.policy.numbers import Normaliser, NumberReader
from sipfilter.policy.verdict import ALLOW, REJECT, Decision, Verdict
from sipfilter.sip import ParseError, Request, Response, parse
from sipfilter.transport.base import Addr, Endpoint

REPO = Path(__file__).resolve().parents[2]
DIALER: Addr = ("127.0.0.1", 5999)
CARRIER1: Addr = ("127.0.0.1", 5071)
CARRIER2: Addr = ("127.0.0.1", 5072)


class FakeEndpoint(Endpoint):
    def __init__(self, side: str, port: int, transport: str = "udp") -> None:
        super().__init__(side, "127.0.0.1", port, transport, reliable=transport != "udp")
        self.sent: list[tuple[bytes, Addr]] = []

    def send(self, data: bytes, addr: Addr) -> None:
        self.sent.append((data, addr))

    async def close(self) -> None:
        pass

    def take(self) -> list[Any]:
        out = [parse(d) for d, _ in self.sent]
        self.sent.clear()
        return out


class _Timer:
    __slots__ = ("args", "callback", "cancelled", "due")

    def __init__(self, due: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.due, self.callback, self.args, self.cancelled = due, callback, args, False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: _Timer) -> bool:
        return self.due < other.due


class ManualClock:
    """Time that only moves when a test says so; timers fire in due order inside `advance`."""

    def __init__(self) -> None:
        self.now = 1_780_000_000.0
        self.pending: list[_Timer] = []  # a heap

    def __call__(self) -> float:
        return self.now

    def later(self, delay: float, callback: Callable[..., Any], *args: Any) -> _Timer:
        timer = _Timer(self.now + delay, callback, args)
        heapq.heappush(self.pending, timer)
        return timer

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while self.pending and self.pending[0].due <= end:
            timer = heapq.heappop(self.pending)
            if timer.cancelled:
                continue
            self.now = max(self.now, timer.due)
            timer.callback(*timer.args)
        self.now = end


class StubPolicy:
    """Rejects callees (Request-URI users) listed in `reject` with 603 callee.dnc.bloctel; allows the rest."""

    def __init__(self) -> None:
        self.reject: set[str] = set()
        self.seen: list[str] = []
        self._reader = NumberReader(Normaliser())

    def reader(self, trunk: str) -> NumberReader:
        return self._reader

    async def decide(self, facts: CallFacts, store: Any) -> Decision:
        user = facts.callee.raw
        self.seen.append(user)
        if user in self.reject:
            v = Verdict(REJECT, 603, "callee.dnc.bloctel", "callee is on Bloctel")
        else:
            v = Verdict(ALLOW, 0, "", "")
        return Decision(v, {}, False, False)


@dataclass
class Rig:
    b2b: B2BUA
    inside: FakeEndpoint
    outside: FakeEndpoint
    clock: ManualClock
    policy: Any  # StubPolicy, or the real PolicyEngine (policy_rig)
    calls: list[str] = field(default_factory=list)
    audit: AuditLog | None = None

    def from_dialer(self, data: bytes, addr: Addr = DIALER) -> None:
        self.b2b.on_datagram(self.inside, data, addr)

    def from_carrier(self, data: bytes, addr: Addr = CARRIER1) -> None:
        self.b2b.on_datagram(self.outside, data, addr)


def write_config(tmp: Path, **trunk: Any) -> Path:
    rules = {p.stem: str(p) for p in sorted((REPO / "config" / "rules").glob("*.yaml"))}
    t: dict[str, Any] = {
        "match": {"sources": ["127.0.0.1/32"]}, "account": "acme", "rule_pack": "fr", "mode": "enforce",
        "automated": True, "prospecting": True, "sector": None, "region": "FR",
        "lists": {"dnc": [], "authorised_caller_ids": None}, "on_store_error": "reject",
        "on_stale_list": "reject", "overrides": {},
        "targets": [{"uri": f"sip:{CARRIER1[0]}:{CARRIER1[1]}", "transport": "udp", "priority": 1, "weight": 1},  # noqa: E501
                    {"uri": f"sip:{CARRIER2[0]}:{CARRIER2[1]}", "transport": "udp", "priority": 2, "weight": 1}],  # noqa: E501
        "headers": {"pass": ["P-Asserted-Identity", "Privacy", "User-Agent", "X-*"]},
    }  # fmt: skip
    t.update(trunk)
    cfg = {
        "sip": {"inside": [{"transport": "udp", "host": "127.0.0.1", "port": 5060}],
                "outside": [{"transport": "udp", "host": "127.0.0.1", "port": 5080}],
                "hostname": "sipfilter.test", "timers": {"t1_ms": 500, "t2_ms": 4000, "t4_ms": 5000},
                "ring_timeout_s": 60, "max_call_duration_s": 3600, "drain_timeout_s": 5},
        "store": {"backend": "embedded", "data_dir": str(tmp / "data")},
        "audit": {"path": str(tmp / "audit.jsonl"), "max_bytes": 1000000, "backups": 1,
                  "on_write_error": "keep-relaying"},
        "rule_packs": rules,
        "trunks": {"dialer": t},
    }  # fmt: skip
    path = tmp / "sipfilter.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def make_rig(tmp_path: Path, **trunk: Any) -> Rig:
    """A B2BUA on fake endpoints and a manual clock; `trunk` overrides keys of the dialer trunk's config."""
    return rig_for(write_config(tmp_path, **trunk))


def rig_for(config_path: Path) -> Rig:
    """The rig of make_rig on any config file (tests that write their own sections)."""
    config = load_config(config_path)
    clock = ManualClock()
    policy = StubPolicy()
    inside, outside = FakeEndpoint("inside", 5060), FakeEndpoint("outside", 5080)
    b2b = B2BUA(
        compile_runtime(config, policy, store=None),
        parse=parse, parse_error=ParseError,
        endpoints={"inside": [inside], "outside": [outside]},
        scheduler=clock.later, clock=clock,
    )  # fmt: skip
    return Rig(b2b, inside, outside, clock, policy)


def policy_rig(tmp_path: Path, store: Any, at: float, **trunk: Any) -> Rig:
    """The rig with the real policy engine deciding on `store` at time `at`, and the real audit log (its
    path: `rig.audit.path`): what `sipfilter run` wires, on fake endpoints and a manual clock."""
    config = load_config(write_config(tmp_path, **trunk))
    clock = ManualClock()
    clock.now = at
    engine = PolicyEngine(config)
    audit = AuditLog(config.audit)
    inside, outside = FakeEndpoint("inside", 5060), FakeEndpoint("outside", 5080)
    b2b = B2BUA(
        compile_runtime(config, engine, store, audit),
        parse=parse, parse_error=ParseError,
        endpoints={"inside": [inside], "outside": [outside]},
        scheduler=clock.later, clock=clock,
    )  # fmt: skip
    return Rig(b2b, inside, outside, clock, engine, audit=audit)


def audit_records(rig: Rig) -> dict[str, dict[str, Any]]:
    """The rig's audit lines by A-leg Call-ID (the last one for a Call-ID seen twice)."""
    assert rig.audit is not None
    if not rig.audit.path.exists():
        return {}
    lines = rig.audit.path.read_text(encoding="utf-8").splitlines()
    return {r["call_id"]: r for r in map(json.loads, lines)}


def invite(callee: str = "+33612000001", caller: str = "+33162000001", *, call_id: str | None = None,
           branch: str | None = None, extra: str = "", body: bytes = b"") -> bytes:  # fmt: skip
    call_id = call_id or uuid.uuid4().hex
    branch = branch or "z9hG4bK" + uuid.uuid4().hex[:10]
    head = (
        f"INVITE sip:{callee}@10.0.0.5:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 10.0.0.9:5999;branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f'From: "Agent" <sip:{caller}@10.0.0.9>;tag=dialertag\r\n'
        f"To: <sip:{callee}@10.0.0.5>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 10 INVITE\r\n"
        "Contact: <sip:agent@10.0.0.9:5999>\r\n"
        "Record-Route: <sip:10.0.0.2;lr>\r\n"
        f"P-Asserted-Identity: <sip:{caller}@10.0.0.9>\r\n"
        "X-Campaign: spring\r\n"
        "X-Internal-Secret-Not: passed-because-X-star\r\n"
        "Secret-Header: never\r\n"
        f"{extra}"
        + ("Content-Type: application/sdp\r\n" if body else "")
        + f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def answer(req: Any, status: int, *, to_tag: str = "carriertag", contact: str = "<sip:gw@127.0.0.1:5071>",
           body: bytes = b"", extra: str = "") -> bytes:  # fmt: skip
    """A carrier response to a parsed request (echoing its Via, From, To, Call-ID, CSeq)."""
    to = req.headers.get("To")
    if to_tag and ";tag=" not in to:
        to += f";tag={to_tag}"
    lines = [f"Via: {v}" for v in req.headers.get_all("Via")]
    lines += [f"From: {req.headers.get('From')}", f"To: {to}", f"Call-ID: {req.call_id}",
              f"CSeq: {req.headers.get('CSeq')}"]  # fmt: skip
    if contact and status < 300 and status > 100:
        lines.append(f"Contact: {contact}")
    lines.extend(line for line in extra.split("\r\n") if line)
    if body:
        lines.append("Content-Type: application/sdp")
    resp = Response(status, None, [tuple(x.split(": ", 1)) for x in lines], body)
    return bytes(resp)


def requests_named(msgs: list[Any], method: str) -> list[Request]:
    """The requests of `method` among parsed messages (what an endpoint sent)."""
    return [m for m in msgs if m.is_request and m.method == method]


def responses_only(msgs: list[Any]) -> list[Response]:
    return [m for m in msgs if not m.is_request]
