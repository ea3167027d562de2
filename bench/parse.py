"""Benchmark of the SIP message core: parses/s of a ~1 KB INVITE (call-path headers read) and a 200 OK,
and serializations/s. Prints figures; it asserts nothing (run: .venv/bin/python bench/parse.py [seconds]).
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from collections.abc import Callable

from sipfilter.sip import Request, Response, parse

INVITE = (
    b"INVITE sip:+33612345678@carrier.example.net;user=phone SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-524287-1---a6f1c3e2b8d94f70;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Service Clients" <sip:+33188776655@dialer.example.com;user=phone>;tag=8f3a2c1d\r\n'
    b"To: <sip:+33612345678@carrier.example.net;user=phone>\r\n"
    b"Call-ID: 5e2f9a7c4b1d4e3f8a6b0c9d2e1f3a4b@192.0.2.10\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:dialer@192.0.2.10:5060;transport=udp>\r\n"
    b"P-Asserted-Identity: <sip:+33188776655@dialer.example.com;user=phone>\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, PRACK, UPDATE, INFO, REFER, NOTIFY\r\n"
    b"Supported: replaces, timer, 100rel\r\n"
    b"User-Agent: Dialer/7.4.2\r\n"
    b"X-Campaign-Id: 2026-11-spring-renewal\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 250\r\n"
    b"\r\n"
    b"v=0\r\no=dialer 8000 8000 IN IP4 192.0.2.10\r\ns=call\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    b"m=audio 16384 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
    b"a=rtcp:16385 IN IP4 192.0.2.10\r\n"
)
OK = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-524287-1---a6f1c3e2b8d94f70;rport=5060\r\n"
    b"From: <sip:+33188776655@dialer.example.com;user=phone>;tag=8f3a2c1d\r\n"
    b"To: <sip:+33612345678@carrier.example.net;user=phone>;tag=as5d8f7g\r\n"
    b"Call-ID: 5e2f9a7c4b1d4e3f8a6b0c9d2e1f3a4b@192.0.2.10\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:carrier@198.51.100.7:5060>\r\n"
    b"Record-Route: <sip:198.51.100.7;lr>\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


# Realistic variety: every INVITE has its own callee, Call-ID, branch and tag (so the URI memo misses
# on the Request-URI and To), while caller IDs come from a pool of 20 (as a dialer's do).
VARIANTS = [
    INVITE.replace(b"+33612345678", b"+336%08d" % (12345678 + i))
    .replace(b"5e2f9a7c4b1d4e3f8a6b0c9d2e1f3a4b", b"%032x" % (i * 7919))
    .replace(b"a6f1c3e2b8d94f70", b"%016x" % (i * 104729))
    .replace(b"tag=8f3a2c1d", b"tag=%08x" % i)
    .replace(b"+33188776655", b"+331887766%02d" % (i % 20))
    for i in range(10_000)
]
_next = iter(range(0))


def invite_call_path() -> None:
    global _next
    try:
        data = VARIANTS[next(_next)]
    except StopIteration:
        _next = iter(range(len(VARIANTS)))
        data = VARIANTS[next(_next)]
    msg = parse(data)
    assert isinstance(msg, Request)
    _ = msg.vias[0].branch
    f = msg.from_
    _ = (f.uri, f.tag, msg.to, msg.call_id, msg.cseq, msg.max_forwards)
    _ = (msg.p_asserted_identities, msg.contacts, msg.request_uri)


def ok_path() -> None:
    msg = parse(OK)
    assert isinstance(msg, Response)
    _ = (msg.vias[0].branch, msg.cseq, msg.to.tag)


def parse_only() -> None:
    parse(INVITE, validate=False)


_INV = parse(INVITE)


def serialize() -> None:
    _INV.serialize()


def rate(fn: Callable[[], None], seconds: float) -> tuple[float, float]:
    """(best, mean) rate over 0.1 s slices: the best slice is the least disturbed by other processes."""
    best = 0.0
    total_n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        t0 = time.perf_counter()
        for _ in range(200):
            fn()
        t1 = time.perf_counter()
        total_n += 200
        best = max(best, 200 / (t1 - t0))
        if t1 >= deadline:
            return best, total_n / (t1 - start)


def calibrate() -> float:
    """µs for sum(range(1000)): compares this machine with others (about 5 µs on a 2023 laptop)."""
    t0 = time.perf_counter()
    for _ in range(2000):
        sum(range(1000))
    return (time.perf_counter() - t0) / 2000 * 1e6


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] != "--profile" else 2.0
    if "--profile" in sys.argv:
        prof = cProfile.Profile()
        prof.runcall(lambda: [invite_call_path() for _ in range(20000)])
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
        return
    print(f"INVITE size: {len(INVITE)} bytes ({len(VARIANTS)} variants), 200 OK size: {len(OK)} bytes")
    print(f"calibration: sum(range(1000)) = {calibrate():.1f} us")
    for name, fn in (
        ("INVITE parse+validate+call-path accessors", invite_call_path),
        ("INVITE parse only (validate=False)", parse_only),
        ("200 OK parse+validate+via/cseq/to", ok_path),
        ("INVITE serialize", serialize),
    ):
        best, mean = rate(fn, seconds)
        print(f"{name:45s} best {best:>9,.0f}/s ({1e6 / best:5.1f} us)   mean {mean:>9,.0f}/s")


if __name__ == "__main__":
    main()
