"""atheris target: the TCP stream framer gives the same messages however the stream is cut into reads.

Feeds the same bytes whole and in fuzzer-chosen chunks; both must yield the same events, raise nothing
(ParseError only as an event), stop at a fatal error, and never buffer more than the message limit.
Run: .venv/bin/python tests/fuzz/fuzz_framer.py -max_total_time=60 [corpus_dir]
"""

from __future__ import annotations

import sys

import atheris
from _fuzzlib import run

with atheris.instrument_imports():
    from sipfilter import sip
    from sipfilter.sip.framing import FramerClosed, KeepAlive, StreamFramer

LIMITS = sip.Limits(max_message_bytes=8192, max_headers=64, max_line_bytes=2048)


def summary(event: object) -> tuple[str, object]:
    if isinstance(event, sip.ParseError):
        assert "\r" not in event.reason and "\n" not in event.reason
        return ("error", (event.reason, event.status, event.fatal))
    if isinstance(event, KeepAlive):
        return ("keepalive", event.ping)
    assert isinstance(event, sip.Request | sip.Response), type(event)
    return ("message", event.serialize())


def drive(chunks: list[bytes]) -> list[tuple[str, object]]:
    framer = StreamFramer(LIMITS)
    events: list[tuple[str, object]] = []
    for chunk in chunks:
        if framer.failed:
            try:
                framer.feed(chunk)
            except FramerClosed:
                break
            raise AssertionError("feed() after a fatal error must raise FramerClosed")
        out = framer.feed(chunk)
        for i, event in enumerate(out):
            if isinstance(event, sip.ParseError) and event.fatal:
                assert i == len(out) - 1, "a fatal error must be the last event"
        events.extend(summary(e) for e in out)
        # An incomplete message is never held beyond the size limit (plus the read that overflowed it).
        assert framer.buffered <= LIMITS.max_message_bytes + len(chunk), framer.buffered
    return events


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    cuts = sorted(set(fdp.ConsumeIntListInRange(fdp.ConsumeIntInRange(0, 12), 0, 4096)))
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    # Two copies back to back: framing must resynchronise on the message boundary.
    stream = stream + stream
    whole = drive([stream])
    pieces, last = [], 0
    for cut in cuts:
        cut = min(cut, len(stream))
        pieces.append(stream[last:cut])
        last = cut
    pieces.append(stream[last:])
    chunked = drive([p for p in pieces if p])
    # Byte-by-byte arrival of a short stream is the worst case for a framer.
    if len(stream) <= 600:
        assert drive([stream[i : i + 1] for i in range(len(stream))]) == whole
    assert chunked == whole, (cuts, whole[:3], chunked[:3])


SEEDS = {
    "two-requests.bin": (
        b"\x00\x00OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\n"
        b"To: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 4\r\n\r\nabcd"
        b"\r\n\r\n\r\n"
    ),
}


if __name__ == "__main__":
    run(test_one_input, SEEDS)
    sys.exit(0)
