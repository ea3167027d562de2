"""wire.safe: header values cleaned of control characters, with a fast path for the usual printable ASCII."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from sipfilter.b2bua import wire

_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=0x2FFF), max_size=40))
def test_safe_replaces_every_control_character_and_nothing_else(value: str) -> None:
    assert wire.safe(value) == _CONTROLS.sub(" ", value)


def test_safe_examples() -> None:
    assert wire.safe("<sip:+33612345678@10.0.0.1>;tag=a b") == "<sip:+33612345678@10.0.0.1>;tag=a b"
    assert wire.safe("x\r\nVia: evil\t\x7f") == "x  Via: evil  "
    assert wire.safe("café\u2028") == "café\u2028"  # not a control character: kept (the slow path)


def test_with_tag_reads_only_header_parameters() -> None:
    assert wire.with_tag("<sip:a@b>", "t1") == "<sip:a@b>;tag=t1"
    assert wire.with_tag("<sip:a@b>;tag=x", "t1") == "<sip:a@b>;tag=x"
    assert wire.with_tag("<sip:a@b> ; TAG = x", "t1") == "<sip:a@b> ; TAG = x"
    assert wire.with_tag("sip:a@b;tag=x", "t1") == "sip:a@b;tag=x"  # no brackets: the params are the header's
    # `;tag=` inside the brackets is a URI parameter, in a display name text: neither is a tag.
    assert wire.with_tag("<sip:a@b;tag=x>", "t1") == "<sip:a@b;tag=x>;tag=t1"
    assert wire.with_tag('"a;tag=x" <sip:a@b>', "t1") == '"a;tag=x" <sip:a@b>;tag=t1'
    assert wire.with_tag('<sip:a@b>;x=">";tag=y', "t1") == '<sip:a@b>;x=">";tag=y'
