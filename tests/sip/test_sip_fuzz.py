"""Bounded, seeded fuzzing of parse() and the stream framer: only ParseError may escape, never a crash.

Random bytes and mutations of the RFC 4475 torture messages; fixed seed, so a failure reproduces.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from sipfilter.sip import Limits, ParseError, Request, parse, parse_uri
from sipfilter.sip.framing import FramerClosed, StreamFramer

DATA = Path(__file__).resolve().parents[1] / "data" / "rfc4475"
SEEDS = [p.read_bytes() for p in sorted(DATA.glob("*.dat"))]
TOKENS = [b"\r\n", b"\r\n\r\n", b" ", b"\t", b":", b";", b",", b"<", b">", b'"', b"\\", b"%", b"@", b"\x00",
          b"\r", b"\n", b"\xff", b"\xc3", b"Content-Length: ", b"l: -1", b"SIP/2.0", b"sip:", b"=", b"9" * 30,
          b"\r\n ", b"Via: SIP/2.0/UDP ", b";branch=", b"[::1]", b"?", b"&"]  # fmt: skip
ACCESSORS = (
    "vias", "from_", "to", "call_id", "cseq", "contacts", "contact_star", "routes", "record_routes",
    "max_forwards", "expires", "content_length", "content_type", "p_asserted_identities",
    "p_preferred_identities", "privacy", "reasons", "warnings", "identity", "retry_after", "require",
    "proxy_require", "supported",
)  # fmt: skip


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(5)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            del buf[pos : pos + rng.randint(1, 20)]
        elif op == 1:
            buf[pos:pos] = rng.choice(TOKENS)
        elif op == 2 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 3:
            other = rng.choice(SEEDS)
            start = rng.randrange(len(other))
            buf[pos:pos] = other[start : start + rng.randint(1, 80)]
        else:
            end = min(len(buf), pos + rng.randint(1, 40))
            buf[pos:pos] = buf[pos:end]  # duplicate a slice (repeated headers, params)
    return bytes(buf)


def cases(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    out: list[bytes] = []
    for i in range(count):
        if i % 8 == 0:
            out.append(rng.randbytes(rng.randint(0, 300)))
        else:
            out.append(mutate(rng, rng.choice(SEEDS)))
    return out


def exercise(data: bytes, limits: Limits) -> None:
    try:
        msg = parse(data, limits, validate=False)
    except ParseError as exc:
        assert exc.reason and "\r" not in exc.reason and "\n" not in exc.reason
        return
    for name in ACCESSORS:
        try:
            getattr(msg, name)
        except ParseError:
            pass
    if isinstance(msg, Request):
        try:
            _ = msg.request_uri
            msg.validate()
        except ParseError:
            pass
    # Whatever was accepted serializes and parses back to the same message.
    assert parse(msg.serialize(), limits, validate=False) == msg


def test_parse_raises_only_parse_error() -> None:
    limits = Limits(max_message_bytes=4096, max_headers=64, max_line_bytes=2048)
    for data in cases(4475, 2500):
        exercise(data, limits)


def test_framer_raises_only_parse_error_events() -> None:
    rng = random.Random(5626)
    limits = Limits(max_message_bytes=4096)
    for data in cases(3261, 400):
        framer = StreamFramer(limits)
        stream = data + rng.choice(SEEDS)
        pos = 0
        while pos < len(stream):
            step = rng.randint(1, 64)
            try:
                events = framer.feed(stream[pos : pos + step])
            except FramerClosed:
                assert framer.failed
                break
            for i, event in enumerate(events):
                if isinstance(event, ParseError) and event.fatal:
                    assert i == len(events) - 1 and framer.failed
            pos += step
        assert framer.buffered <= limits.max_message_bytes + 64


# Inputs shaped to trigger regex backtracking (ReDoS). The timeout only guards against a hang.
PATHOLOGICAL_URIS = [
    "tel:+" + "1" * 8000 + "x",
    "tel:" + "1-" * 4000 + "x",
    "sip:" + "a" * 8000 + "@",
    "sip:" + "a" * 4000 + ":" + "b" * 4000,
    "sip:" + "a." * 4000 + "-;",
]
PATHOLOGICAL_LINES = [
    b'From: "' + b"a " * 3000,
    b"From: " + b"a " * 3000,
    b"X: a" + b" " * 7000 + b"\rz",
    b"From: <sip:a@b>" + b";a" * 3000 + b";",
    b"Via: SIP/2.0/UDP h" + b";a=b" * 1500 + b",",
    b"Contact: " + b"<sip:a@b>," * 700,
    b"Warning: 399 " + b"a" * 7000,
]


@pytest.mark.timeout(30)
def test_pathological_inputs_stay_linear() -> None:
    for text in PATHOLOGICAL_URIS:
        with pytest.raises(ParseError):
            parse_uri(text)
    base = b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nTo: <sip:a@b>\r\n"
    for line in PATHOLOGICAL_LINES:
        for _ in range(20):
            exercise(base + line + b"\r\n\r\n", Limits())
