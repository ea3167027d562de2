"""Benchmark of the §17 transaction machines: full call-shaped transaction lifecycles per second.

Messages are parsed once up front: this measures the state machines, keys and table, not the parser.
Prints figures; asserts nothing (run: .venv/bin/python bench/transaction.py [seconds]).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from sipfilter.sip import Request, parse
from sipfilter.sip.transaction import (
    InviteClientTransaction,
    InviteServerTransaction,
    MessageReceived,
    NonInviteServerTransaction,
    SendResponse,
    TimerFired,
    TransactionTable,
    ack_for_non2xx,
    response_for,
    server_key,
)


def _request(method: str) -> Request:
    msg = parse(
        f"{method} sip:+33612345678@carrier.example.net;user=phone SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-524287-1---a6f1c3e2b8d94f70;rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:+33188776655@dialer.example.com;user=phone>;tag=8f3a2c1d\r\n"
        "To: <sip:+33612345678@carrier.example.net;user=phone>\r\n"
        "Call-ID: 5e2f9a7c4b1d4e3f8a6b0c9d2e1f3a4b@192.0.2.10\r\n"
        f"CSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n".encode()
    )
    assert isinstance(msg, Request)
    return msg


INVITE = _request("INVITE")
BYE = _request("BYE")
RINGING = response_for(INVITE, 180, to_tag="x1")
OK = response_for(INVITE, 200, to_tag="x1")
FORBIDDEN = response_for(INVITE, 403, to_tag="x1")
BYE_OK = response_for(BYE, 200, to_tag="x1")
ACK = ack_for_non2xx(INVITE, FORBIDDEN)


def refused_call() -> None:
    """A-leg INVITE refused by policy: 100 now, 403, ACK, Timer I — what most telemarketing calls do."""
    tx = InviteServerTransaction(INVITE)
    tx.start()
    tx.handle(SendResponse(FORBIDDEN))
    tx.handle(MessageReceived(ACK))
    tx.handle(TimerFired("I"))


def relayed_call() -> None:
    """B-leg INVITE client: 180 then 200 (Accepted), Timer M; plus the A-leg server side and a BYE."""
    c = InviteClientTransaction(INVITE)
    c.start()
    c.handle(MessageReceived(RINGING))
    c.handle(MessageReceived(OK))
    c.handle(TimerFired("M"))
    s = InviteServerTransaction(INVITE)
    s.start()
    s.handle(SendResponse(RINGING))
    s.handle(SendResponse(OK))
    s.handle(TimerFired("L"))
    b = NonInviteServerTransaction(BYE)
    b.start()
    b.handle(SendResponse(BYE_OK))
    b.handle(TimerFired("J"))


def table_round_trip() -> None:
    table = TransactionTable()
    tx = InviteServerTransaction(INVITE)
    table.add(tx)
    table.match_request(ACK)
    table.remove(tx)


def keys_only() -> None:
    server_key(INVITE)


def _rate(fn: Callable[[], None], seconds: float) -> float:
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(200):
            fn()
        n += 200
    return n / seconds


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    for name, fn in (
        ("refused call (IST: start, 403, ACK, I)", refused_call),
        ("relayed call (ICT + IST + BYE NIST)", relayed_call),
        ("table add/match/remove", table_round_trip),
        ("server_key (cached Via)", keys_only),
    ):
        rate = _rate(fn, seconds)
        print(f"{name:42s} {rate:12,.0f} /s  {1e6 / rate:8.2f} µs")


if __name__ == "__main__":
    main()
