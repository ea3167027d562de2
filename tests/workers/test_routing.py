"""The ownership peek on raw datagrams (sipfilter/workers/routing.py): which worker a message belongs to."""

from __future__ import annotations

import random

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sipfilter.b2bua import ids
from sipfilter.b2bua.facts import read_callee
from sipfilter.policy.numbers import Normaliser, NumberReader
from sipfilter.sip import ParseError, parse
from sipfilter.workers.routing import (
    CALLEE_DIGITS,
    callee_owner,
    message_owner,
    number_owner,
    owner,
    worker_mark,
)


def invite(uri: str, to: str = "<sip:+33612345678@example.com>", extra: str = "") -> bytes:
    return (f"INVITE {uri} SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-dialer-1\r\n"
            f"To: {to}\r\nFrom: <sip:+33162000001@dialer>;tag=abc\r\nCall-ID: 1@dialer\r\n"
            f"CSeq: 1 INVITE\r\n{extra}Content-Length: 0\r\n\r\n").encode()


def response(branch: str) -> bytes:
    return (f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch={branch};rport=5080, "
            "SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKsfw0.other\r\n"
            "To: <sip:x@y>;tag=carrier\r\nFrom: <sip:a@b>;tag=sfw1.aaaa\r\nCall-ID: c\r\n"
            "CSeq: 1 INVITE\r\n\r\n").encode()


@pytest.fixture
def marked() -> object:
    """wire's tags and branches made by worker 3, as in that worker; unmarked again afterwards."""
    ids.set_worker_mark(worker_mark(3))
    yield
    ids.set_worker_mark("")


def test_a_single_worker_owns_everything() -> None:
    assert owner(b"garbage", 1) == 0
    assert owner(invite("sip:1@x"), 1) == 0


def test_every_spelling_of_a_number_has_one_owner() -> None:
    spellings = ["sip:+33612345678@carrier", "sip:0612345678@carrier;user=phone", "tel:+33-6-12-34-56-78",
                 "sip:0033612345678@10.0.0.1:5060", "sip:+33612345678;npdi@carrier", "SIP:0612345678@X"]
    for workers in (2, 3, 8):
        owners = {owner(invite(uri), workers) for uri in spellings}
        assert len(owners) == 1, (workers, owners)


def test_callees_spread_over_workers() -> None:
    counts = [0] * 4
    for n in range(4000):
        counts[callee_owner(f"invite sip:+336{n:08d}@x sip/2.0".encode(), 4)] += 1
    assert min(counts) > 800, counts


@pytest.mark.parametrize("workers", [2, 7, 24, 64, 128, 200, 256])
def test_no_worker_owns_much_more_than_its_share_of_callees(workers: int) -> None:
    # Every ending of a number's last digits once: a worker's share of them is its share of the callees.
    counts = [0] * workers
    for ending in range(10**CALLEE_DIGITS):
        counts[callee_owner(f"invite sip:+336123{ending:0{CALLEE_DIGITS}d}@x sip/2.0".encode(), workers)] += 1
    even = 10**CALLEE_DIGITS / workers
    assert max(counts) <= even * 1.025, (max(counts), even)


@settings(max_examples=500, deadline=None)
@given(number=st.one_of(
    st.from_regex(r"\+?[0-9]{0,20}", fullmatch=True),
    st.text(alphabet="+0123456789٣²-. ;@aZ", max_size=24),
    st.text(max_size=300),
), workers=st.integers(2, 256))
def test_a_numbers_owner_is_the_owner_of_an_invite_to_it(number: str, workers: int) -> None:
    # The embedded store keeps a worker's callees by their key: the same worker the INVITE goes to.
    line = b"invite sip:" + number.lower().encode("utf-8", "surrogateescape") + b"@x sip/2.0"
    assert number_owner(number, workers) == callee_owner(line, workers)


@pytest.mark.parametrize("number", [prefix + "1234567" * 36 + tail for prefix in ("", "+")
                                    for tail in ("", "8", "89", "890", "8901")])  # 252 to 257 characters
def test_long_numbers_are_cut_where_a_request_uri_user_is(number: str) -> None:
    line = b"invite sip:" + number.encode() + b"@x sip/2.0"
    assert number_owner(number, 7) == callee_owner(line, 7)


@pytest.mark.parametrize("workers", [2, 3, 8, 256])
def test_an_e164_key_has_the_owner_of_every_spelling(workers: int) -> None:
    for key, spellings in (("+33612345678", ["sip:+33612345678@c", "sip:0612345678@c;user=phone",
                                             "sip:0033612345678@c", "tel:+33-6-12-34-56-78"]),
                           ("+262692123456", ["sip:0692123456@c", "sip:+262692123456@c"])):  # fmt: skip
        assert {owner(invite(uri), workers) for uri in spellings} == {number_owner(key, workers)}


def test_cancel_and_non_2xx_ack_follow_the_invite() -> None:
    uri = "sip:+33612345678@carrier"
    cancel = invite(uri).replace(b"INVITE sip", b"CANCEL sip").replace(b"1 INVITE", b"1 CANCEL")
    assert owner(cancel, 4) == owner(invite(uri), 4)


def test_in_dialog_requests_go_to_the_worker_of_our_to_tag(marked: object) -> None:
    tag = ids.new_tag()
    for workers, expected in ((4, 3), (5, 3), (2, 1)):
        for method in ("BYE", "ACK", "INVITE", "INFO"):
            msg = invite("sip:anyone@x", to=f"<sip:+33612345678@x>;tag={tag}")
            msg = msg.replace(b"INVITE sip", f"{method} sip".encode())
            assert owner(msg, workers) == expected
    compact = b"BYE sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bKx\r\nt: <sip:a@b> ; TAG = " + \
        tag.upper().encode() + b"\r\n\r\n"
    assert owner(compact, 4) == 3


def test_responses_go_to_the_worker_of_our_top_via_branch(marked: object) -> None:
    assert owner(response(ids.new_branch()), 4) == 3
    assert owner(response("z9hG4bK-someone-else"), 4) is None  # the second Via's mark is not ours to read
    assert owner(b"SIP/2.0 200 OK\r\nTo: <sip:a@b>;tag=sfw2.x\r\n\r\n", 4) is None  # no Via


def test_foreign_tags_fall_back_to_the_callee() -> None:
    msg = invite("sip:+33612345678@x", to="<sip:+33612345678@x>;tag=peer-made")
    assert owner(msg, 4) == owner(invite("sip:+33612345678@x"), 4)


@pytest.mark.parametrize("data", [
    b"", b"\x00\xff" * 100, b"\r\n\r\n", b"SIP/2.0", b"INVITE", b"INVITE  SIP/2.0\r\n\r\n",
    b"BYE sip:@ SIP/2.0\r\nTo: ;tag=sfw\r\n\r\n", b"BYE x SIP/2.0\r\nTo: <a>;tag=sfw99999999999.x\r\n\r\n",
    b"SIP/2.0 200 OK\r\nVia: x;branch=z9hG4bKsfw7\r\n\r\n", b"\n" * 70000, b"To:" * 30000,
    b"INVITE sip:" + b"9" * 100000 + b"@x SIP/2.0\r\n\r\n",
    b"BYE sip:a SIP/2.0\r\nTo: <sip:a>;tag=" + b"sfw1." + b"f" * 100000 + b"\r\n\r\n",
])
def test_hostile_input_never_raises_and_is_deterministic(data: bytes) -> None:
    for workers in (2, 3, 7):
        first = owner(data, workers)
        assert first is None or 0 <= first < workers
        assert owner(data, workers) == first


def test_random_bytes_never_raise() -> None:
    rng = random.Random(19)
    for _ in range(3000):
        data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300)))
        if rng.random() < 0.5:
            data = b"BYE sip:1@x SIP/2.0\r\nTo: <a>;tag=sfw" + data
        result = owner(data, 3)
        assert result is None or 0 <= result < 3


def test_the_mark_needs_the_dot() -> None:
    # A peer's tag that merely starts with the prefix (no index and dot) is not ours.
    msg = invite("sip:+33612345678@x", to="<sip:a@b>;tag=sfwabc")
    assert owner(msg, 4) == owner(invite("sip:+33612345678@x"), 4)


_READER = NumberReader(Normaliser())
_SEPARATORS = ("", "", "", "-", ".", "%20")


@st.composite
def callee_spellings(draw: st.DrawFn) -> str:
    """A French number as a dialer may write it in a Request-URI's user: 0…, +33…, 0033…, with visual
    separators, any of its characters %-escaped (in either hex case), and sometimes a phone-context."""
    national = draw(st.from_regex(r"6[0-9]{8}|7[3-9][0-9]{7}|[1-5][1-9][0-9]{7}", fullmatch=True))
    prefix = draw(st.sampled_from(("0", "+33", "0033", "+33(0)")))
    characters = list(prefix)
    for digit in national:
        characters += [draw(st.sampled_from(_SEPARATORS)), digit]
    escaped = ""
    for ch in characters:
        if len(ch) == 1 and draw(st.integers(0, 3)) == 0:
            escaped += draw(st.sampled_from(("%{:02X}", "%{:02x}"))).format(ord(ch))
        else:
            escaped += ch
    if prefix == "+33" and draw(st.booleans()):
        escaped += ";phone-context=+33"
    return escaped


@settings(max_examples=400, deadline=None)
@given(callee_spellings(), st.sampled_from((2, 3, 4, 7, 16, 100, 256)), st.booleans())
def test_the_owner_of_a_new_invite_is_the_owner_of_the_number_decided_on(user: str, workers: int,
                                                                         tel: bool) -> None:
    # The worker a new INVITE reaches counts the callee's attempts in its own memory: it must be the owner of
    # the very number the policy reads from that Request-URI, however the dialer spells it. Otherwise two
    # workers would each count part of one consumer's calls, and the cap would let calls too many through.
    uri = f"tel:{user.replace('%20', '')}" if tel and "%" not in user.replace("%20", "") else \
        f"sip:{user}@carrier.example;user=phone"
    data = invite(uri)
    try:
        msg = parse(data)
    except ParseError:  # answered 400: never decided, never counted
        assume(False)
    callee = read_callee(_READER, msg.request_uri).number
    assume(callee.e164)  # a range the numbering plan does not list is refused, never counted
    assert owner(data, workers) == number_owner(callee.e164, workers), (user, callee.e164)
    assert message_owner(msg, workers) == number_owner(callee.e164, workers), (user, callee.e164)


def test_escaped_digits_route_as_the_digits_they_stand_for() -> None:
    assert owner(invite("sip:061234567%37@x"), 10) == owner(invite("sip:0612345677@x"), 10) == 7
    assert owner(invite("sip:0612345677%20@x"), 2) == 1  # not the 0 of "%20"
    assert owner(invite("sip:%2B33612345678@x"), 10_000) == 5678
    assert owner(invite("sip:0612345678%3Brn=0612340000@x"), 10_000) == 5678  # an escaped ';' ends it
    assert owner(invite("sip:06%zz12345678@x"), 10_000) == 5678  # not an escape: left as it is


def _bye(to: str) -> bytes:
    return invite("sip:sfw1.contact@10.0.0.2", to=to).replace(b"INVITE sip", b"BYE sip").replace(
        b"1 INVITE", b"2 BYE")


def test_the_parsed_owner_agrees_with_the_raw_one_on_what_the_b2bua_writes(marked: object) -> None:
    # The raw reading is the fast path: for our own marks and every usual spelling, the parsed reading the
    # B2BUA acts on names the same worker, so nothing is parsed twice.
    tag = ids.new_tag()
    usual = [invite(uri) for uri in ("sip:+33612345678@carrier", "sip:0612345678@carrier;user=phone",
                                     "tel:+33-6-12-34-56-78", "sip:06.12.34.56.78@c", "sip:061234567%38@c",
                                     "sip:+33612345678;npdi@carrier", "sip:anonymous@c")]
    usual += [_bye(f"<sip:+33612345678@x>;tag={tag}"), _bye("<sip:a@b>;tag=peer-made"),
              invite("sip:+33612345678@x", to="<sip:a@b>;tag=sfwabc"), response(ids.new_branch()),
              response("z9hG4bK-someone-else")]
    for data in usual:
        for workers in (2, 3, 4, 7, 256):
            assert message_owner(parse(data), workers) == owner(data, workers), (data[:60], workers)


@pytest.mark.parametrize(("name", "data", "callee"), [
    # The parser skips CRLFs before the start line; the raw reading took an empty start line.
    ("leading CRLF", b"\r\n\r\n" + invite("sip:0612345677@c"), "+33612345677"),
    # `;tag=` inside the To URI, or in its display name, is no To tag: a new INVITE to its callee.
    ("tag in the To URI", invite("sip:0612345677@c", to="<sip:b@c;tag=sfw0.x>"), "+33612345677"),
    ("tag in the display name", invite("sip:0612345677@c", to='"a;tag=sfw0.1" <sip:b@c>'), "+33612345677"),
])
def test_the_parsed_owner_is_the_callees_where_the_raw_reading_is_fooled(name: str, data: bytes,
                                                                        callee: str) -> None:
    fooled = [w for w in (2, 3, 4, 16) if owner(data, w) != number_owner(callee, w)]
    assert fooled, name  # the case this guards against: the raw bytes name another worker
    for workers in (2, 3, 4, 16):
        assert message_owner(parse(data), workers) == number_owner(callee, workers), (name, workers)


def test_a_folded_to_tag_is_read_by_the_parser() -> None:
    data = _bye("<sip:+33612345677@x>\r\n ;tag=sfw3.abc")
    assert message_owner(parse(data), 4) == 3


def test_the_parsed_owner_of_a_mark_needs_ascii_digits_and_the_dot() -> None:
    cases = (("sfw2.x", 2), ("SFW2.x", 2), ("sfw2x", None), ("sfw.x", None), ("sfw1234.x", None))
    for tag, expected in cases:
        data = _bye(f"<sip:0612345677@x>;tag={tag}")
        # Not a mark: the worker of the Request-URI's user, as for any request without one of our tags.
        assert message_owner(parse(data), 4) == (expected if expected is not None else owner(data, 4)), tag
