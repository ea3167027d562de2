"""The parser's str-method fast paths (status line, header lines, a From/To tag) decide exactly what the
grammar's patterns decide, for any input: same values, same errors."""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from sipfilter.sip import grammar as g
from sipfilter.sip import header_values as h
from sipfilter.sip.errors import ParseError
from sipfilter.sip.message import Response, parse

# Characters that matter to a start line or a header line, and a few that do not.
_TEXT = st.text(alphabet=st.sampled_from("SIP/2.0 13579OKokRing\t:\r\n;=-é٣²<>@"), max_size=24)


def _reference_status(first: str) -> tuple[int, str] | str:
    """What the status line's pattern gives: (status, reason), or the error's reason."""
    sm = g.STATUS_LINE_RE.fullmatch(first)
    if sm is None:
        return "Malformed status line"
    if sm.group("version") != "2.0":
        return "Version Not Supported"
    code = sm.group("status")
    if len(code) != 3 or not 100 <= int(code) <= 699:
        return "Invalid status code"
    return int(code), sm.group("reason") or ""


@settings(max_examples=3000, deadline=None)
@given(tail=_TEXT)
@example(tail="200 OK")
@example(tail="200")
@example(tail="200 ")
@example(tail="2000 OK")
@example(tail="٢٠٠ OK")
@example(tail="200\tOK")
@example(tail="200 O\rK")
@example(tail="099 Low")
def test_status_line(tail: str) -> None:
    for first in ("SIP/2.0 " + tail, "sip/2.0 " + tail, "SIP/3.0 " + tail, "SIP/" + tail):
        if "\r\n" in first:
            continue  # the start line ends at the first CRLF
        expected = _reference_status(first)
        try:
            msg = parse((first + "\r\nCall-ID: x\r\n\r\n").encode(), validate=False)
        except ParseError as exc:
            assert isinstance(expected, str) and exc.reason == expected, (first, expected, exc)
            continue
        assert isinstance(msg, Response) and (msg.status, msg.reason) == expected, (first, expected)


def _reference_lines(block: str) -> list[tuple[str, str]] | None:
    """Header lines as the header-line pattern reads them: (token name, raw value), or None."""
    out = []
    for line in block.split("\r\n"):
        if "\r" in line or "\n" in line:
            return None
        m = re.fullmatch(rf"({g.TOKEN})[ \t]*:(.*)", line, re.DOTALL)
        if m is None:
            return None
        out.append((m.group(1), m.group(2)))
    return out


_NAMES = st.sampled_from(
    ["Via", "via", "VIA", "v", "Call-ID", "X-Odd", "x-odd ", "Bad Name", "", "Tö", "To\t"]
)


@settings(max_examples=3000, deadline=None)
@given(lines=st.lists(st.tuples(_NAMES, st.sampled_from([":", ""]), _TEXT), min_size=1, max_size=5))
def test_header_lines(lines: list[tuple[str, str, str]]) -> None:
    block = "\r\n".join(name + colon + value for name, colon, value in lines)
    if "" in block.split("\r\n") or block[:1] in (" ", "\t") or "\r\n " in block or "\r\n\t" in block:
        return  # an empty line ends the header block, and folding is unfolded first: the framing's business
    expected = _reference_lines(block)
    data = f"OPTIONS sip:a@b SIP/2.0\r\n{block}\r\n\r\n".encode("utf-8", "surrogateescape")
    try:
        msg = parse(data, validate=False)
    except ParseError:
        assert expected is None, block
        return
    assert expected is not None, block
    got = [(name, msg.headers._value(i)) for i, name in enumerate(msg.headers.names())]
    assert got == [(name, raw.strip(" \t")) for name, raw in expected], block


@settings(max_examples=2000, deadline=None)
@given(tag=st.text(alphabet=st.sampled_from("aZ09-.!%*_+`'~é٣²; =\"<>"), max_size=8))
def test_tag_of_a_name_addr(tag: str) -> None:
    value = f'"Clients" <sip:+33188776655@dialer.example.com;user=phone>;tag={tag}'
    h._TAGLESS_MEMO.clear()
    try:
        full = h._parse_name_addr(value, "From header")
    except ParseError:
        full = None
    for _ in range(2):  # the memo's first fill, then its hit
        try:
            got = h.parse_name_addr(value, "From header")
        except ParseError:
            assert full is None, value
            continue
        assert full is not None and got == full, value
        assert list(got.params.items()) == list(full.params.items()) and got.raw == value
