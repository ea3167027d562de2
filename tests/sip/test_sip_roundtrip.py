"""Property tests: parse(serialize(m)) == m over generated requests and responses with odd header forms."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipfilter.sip import Headers, Request, Response, parse
from sipfilter.sip.headers import canonical_name

TOKEN_CHARS = "-!%*_+`'~.abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
tokens = st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=12)
# Header names: odd case, compact forms, and arbitrary tokens (never Content-Length: it is recomputed).
names = st.one_of(
    st.sampled_from(["Via", "v", "VIA", "fRoM", "t", "i", "Call-ID", "m", "CSeq", "X-Odd", "s", "Subject"]),
    tokens,
).filter(lambda n: canonical_name(n) != "content-length")
# Values: anything but CR/LF, with no leading/trailing SP/HTAB (those are LWS, not value).
_value_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n")
values = st.text(alphabet=_value_chars, max_size=40).map(lambda v: v.strip(" \t"))
headers = st.lists(st.tuples(names, values), max_size=12)
bodies = st.binary(max_size=300)
uris = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40).map(
    lambda u: "sip:" + u
)

requests = st.builds(Request, tokens, uris, headers.map(Headers), bodies)
reason_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n")
responses = st.builds(
    Response, st.integers(100, 699), st.text(alphabet=reason_chars, max_size=30), headers.map(Headers), bodies
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(requests, responses))
def test_parse_serialize_round_trip(msg: Request | Response) -> None:
    data = msg.serialize()
    back = parse(data, validate=False)
    assert back == msg
    assert back.serialize() == data
    assert back.content_length == len(msg.body)


@settings(max_examples=150, deadline=None)
@given(requests, st.data())
def test_folded_lines_parse_to_the_same_values(msg: Request, data: st.DataObject) -> None:
    wire = msg.serialize()
    head, sep, body = wire.partition(b"\r\n\r\n")
    first, _, block = head.partition(b"\r\n")
    lines = block.split(b"\r\n")
    folded: list[bytes] = []
    for line in lines:
        name, colon, value = line.partition(b":")
        spaces = [i for i, ch in enumerate(value) if ch == 0x20 and i > 1]
        if spaces and data.draw(st.booleans()):
            i = data.draw(st.sampled_from(spaces))
            value = value[:i] + b"\r\n" + value[i:]  # fold before an existing space: same value
        folded.append(name + b"  " + colon + value)  # and LWS before the colon
    refolded = first + b"\r\n" + b"\r\n".join(folded) + sep + body
    assert parse(refolded, validate=False) == msg


@given(st.lists(st.sampled_from(["a.example", "b.example", "192.0.2.7"]), min_size=1, max_size=6), st.data())
def test_comma_list_and_repeated_lines_are_equivalent(hosts: list[str], data: st.DataObject) -> None:
    vias = [f"SIP/2.0/UDP {h};branch=z9hG4bK{i}" for i, h in enumerate(hosts)]
    one_line = Request("OPTIONS", "sip:x@example.com", [("Via", ", ".join(vias))])
    split_at = data.draw(st.integers(0, len(vias)))
    groups = [g for g in (vias[:split_at], vias[split_at:]) if g]
    mixed = Request("OPTIONS", "sip:x@example.com", [("v", ",".join(g)) for g in groups])
    for m in (one_line, mixed):
        back = parse(m.serialize(), validate=False)
        assert [(v.host, v.branch) for v in back.vias] == [(h, f"z9hG4bK{i}") for i, h in enumerate(hosts)]
        assert back.headers.get_all("Via") == vias
