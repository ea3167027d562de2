"""Stream framer: partial reads, several messages per read, CRLF keep-alives, fatal framing errors."""

from __future__ import annotations

import random

import pytest

from sipfilter.sip import Limits, ParseError, Request, Response
from sipfilter.sip.framing import FramerClosed, KeepAlive, StreamEvent, StreamFramer

OPTIONS = (
    b"OPTIONS sip:carrier.example.net SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK1\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:probe@192.0.2.1>;tag=a\r\n"
    b"To: <sip:carrier.example.net>\r\n"
    b"Call-ID: opt1@192.0.2.1\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)
MESSAGE = (
    b"MESSAGE sip:bob@example.net SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK2\r\n"
    b"From: <sip:alice@example.net>;tag=b\r\n"
    b"To: <sip:bob@example.net>\r\n"
    b"Call-ID: msg1@192.0.2.1\r\n"
    b"CSeq: 2 MESSAGE\r\n"
    b"Content-Type: text/plain\r\n"
    b"l: 12\r\n"
    b"\r\n"
    b"hello\r\n\r\nbob"
)
OK = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK1\r\n"
    b"From: <sip:probe@192.0.2.1>;tag=a\r\n"
    b"To: <sip:carrier.example.net>;tag=z\r\n"
    b"Call-ID: opt1@192.0.2.1\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)
STREAM = OPTIONS + b"\r\n\r\n" + MESSAGE + OK + b"\r\n"


def summary(events: list[StreamEvent]) -> list[object]:
    out: list[object] = []
    for e in events:
        if isinstance(e, Request):
            out.append((e.method, e.body))
        elif isinstance(e, Response):
            out.append(e.status)
        elif isinstance(e, KeepAlive):
            out.append("ping" if e.ping else "pong")
        else:
            out.append(("error", e.status, e.fatal))
    return out


EXPECTED = [("OPTIONS", b""), "ping", ("MESSAGE", b"hello\r\n\r\nbob"), 200]


def test_whole_stream_in_one_read() -> None:
    framer = StreamFramer()
    assert summary(framer.feed(STREAM)) == EXPECTED
    assert framer.buffered == 2  # a trailing CRLF might still become a ping


def test_lone_crlf_is_a_pong_once_the_next_byte_shows_it() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n") == []
    assert summary(framer.feed(OPTIONS)) == ["pong", ("OPTIONS", b"")]


def test_byte_by_byte() -> None:
    framer = StreamFramer()
    events: list[StreamEvent] = []
    for i in range(len(STREAM)):
        events += framer.feed(STREAM[i : i + 1])
    assert summary(events) == EXPECTED


def test_random_read_boundaries_give_the_same_events() -> None:
    rng = random.Random(4475)
    for _ in range(50):
        framer = StreamFramer()
        events: list[StreamEvent] = []
        pos = 0
        while pos < len(STREAM):
            step = rng.randint(1, 200)
            events += framer.feed(STREAM[pos : pos + step])
            pos += step
        assert summary(events) == EXPECTED


def test_bad_message_that_is_well_framed_does_not_close() -> None:
    bad = OPTIONS.replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE")
    framer = StreamFramer()
    events = framer.feed(bad + OK)
    assert summary(events) == [("error", 400, False), 200]
    assert isinstance(events[0], ParseError) and events[0].is_request
    assert not framer.failed


@pytest.mark.parametrize(
    ("mutation", "reason"),
    [
        (b"Content-Length: -5", "Invalid Content-Length"),
        (b"Content-Length: 0\r\nl: 0", "Multiple Content-Length headers"),
        (b"Content-Length: zero", "Invalid Content-Length"),
        (b"X-No-Length: 0", "Missing Content-Length on stream"),
        (b"Content-Length: 99999999999", "Invalid Content-Length"),
    ],
)
def test_fatal_framing_errors_close(mutation: bytes, reason: str) -> None:
    data = OPTIONS.replace(b"Content-Length: 0", mutation)
    framer = StreamFramer()
    events = framer.feed(data + OK)
    assert len(events) == 1
    err = events[0]
    assert isinstance(err, ParseError) and err.fatal and err.reason == reason
    assert framer.failed and framer.buffered == 0
    with pytest.raises(FramerClosed):
        framer.feed(OK)


def test_messages_before_a_fatal_error_are_delivered_and_the_error_is_last() -> None:
    framer = StreamFramer()
    events = framer.feed(OK + OPTIONS.replace(b"Content-Length: 0", b"Content-Length: -1") + OK)
    assert summary(events) == [200, ("error", 400, True)]


def test_oversize_header_block_is_fatal_without_waiting_forever() -> None:
    framer = StreamFramer(Limits(max_message_bytes=1024))
    events: list[StreamEvent] = []
    chunk = b"X-Filler: " + b"a" * 100 + b"\r\n"
    events += framer.feed(b"OPTIONS sip:x SIP/2.0\r\n")
    for _ in range(20):
        if framer.failed:
            break
        events += framer.feed(chunk)
    assert framer.failed
    (err,) = events
    assert isinstance(err, ParseError) and err.fatal and err.status == 513


def test_oversize_content_length_is_fatal() -> None:
    framer = StreamFramer(Limits(max_message_bytes=2048))
    (err,) = framer.feed(OPTIONS.replace(b"Content-Length: 0", b"Content-Length: 5000"))
    assert isinstance(err, ParseError) and err.fatal and err.status == 513


def test_body_waits_for_all_bytes() -> None:
    framer = StreamFramer()
    assert framer.feed(MESSAGE[:-3]) == []
    assert not framer.failed
    assert summary(framer.feed(MESSAGE[-3:])) == [("MESSAGE", b"hello\r\n\r\nbob")]
    assert framer.buffered == 0


def test_folded_content_length_still_frames() -> None:
    framer = StreamFramer()
    folded = MESSAGE.replace(b"l: 12", b"Content-Length:\r\n   12")
    assert summary(framer.feed(folded + OK)) == [("MESSAGE", b"hello\r\n\r\nbob"), 200]
