"""atheris target: `sipfilter.sip.parse` over one datagram raises nothing but ParseError, never hangs.

Also: every typed accessor of an accepted message raises only ParseError, a ParseError's reason can go
into a reason phrase (no CR/LF), and an accepted message survives serialize -> parse unchanged.
Run: .venv/bin/python tests/fuzz/fuzz_parse.py -max_total_time=60 [corpus_dir]
"""

from __future__ import annotations

import sys

import atheris
from _fuzzlib import run

with atheris.instrument_imports():
    from sipfilter import sip

SMALL = sip.Limits(max_message_bytes=4096, max_headers=32, max_line_bytes=512)
ACCESSORS = (
    "vias", "from_", "to", "call_id", "cseq", "contacts", "contact_star", "routes", "record_routes",
    "max_forwards", "expires", "content_length", "content_type", "p_asserted_identities",
    "p_preferred_identities", "privacy", "reasons", "warnings", "identity", "retry_after", "require",
    "proxy_require", "supported",
)  # fmt: skip


def check_error(exc: sip.ParseError) -> None:
    assert "\r" not in exc.reason and "\n" not in exc.reason, repr(exc.reason)
    assert 400 <= exc.status <= 699, exc.status


def touch(msg: sip.Request | sip.Response) -> None:
    for name in ACCESSORS:
        try:
            getattr(msg, name)
        except sip.ParseError as exc:
            check_error(exc)
    if isinstance(msg, sip.Request):
        try:
            _ = msg.request_uri
        except sip.ParseError as exc:
            check_error(exc)


def test_one_input(data: bytes) -> None:
    for limits, validate in ((None, True), (SMALL, False)):
        try:
            msg = sip.parse(data, limits, validate=validate)
        except sip.ParseError as exc:
            check_error(exc)
            continue
        touch(msg)
        if validate:
            wire = msg.serialize()
            again = sip.parse(wire)
            assert again == msg, (wire[:300], again.serialize()[:300])


if __name__ == "__main__":
    run(test_one_input)
    sys.exit(0)
