"""The typed accessors of sip/typed_headers.py are the ones its ACCESSORS table generates."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path
from types import ModuleType

from sipfilter.sip import typed_headers
from sipfilter.sip.message import parse

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "generate_accessors"


def _generator() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("generate_accessors", str(SCRIPT))
    spec = importlib.util.spec_from_loader("generate_accessors", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_generated_accessors_are_up_to_date() -> None:
    gen = _generator()
    source = gen.SOURCE.read_text(encoding="utf-8")
    assert gen.render(source) == source, "stale accessors: run scripts/generate_accessors"


def test_a_table_change_shows_as_stale() -> None:
    gen = _generator()
    source = gen.SOURCE.read_text(encoding="utf-8")
    changed = source.replace('("vias", "via", "_vias"', '("vias", "via2", "_vias"', 1)
    assert changed != source
    assert gen.render(changed) != changed


def test_every_accessor_caches_what_its_parser_gives() -> None:
    msg = parse(
        b"INVITE sip:+33612345678@carrier.example.net SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-1\r\nMax-Forwards: 70\r\n"
        b"From: <sip:+33188776655@dialer.example.com>;tag=a\r\nTo: <sip:+33612345678@carrier.example.net>\r\n"
        b"Call-ID: c1@192.0.2.10\r\nCSeq: 1 INVITE\r\nContact: <sip:d@192.0.2.10>\r\n"
        b"P-Asserted-Identity: <sip:+33188776655@dialer.example.com>\r\nPrivacy: id\r\nExpires: 60\r\n"
        b"Supported: timer\r\nRetry-After: 5\r\nReason: Q.850;cause=16\r\nContent-Length: 0\r\n\r\n"
    )
    for name, key, parser, _type, _doc in typed_headers.ACCESSORS:
        value = getattr(msg, name)
        assert value == getattr(typed_headers, parser)(msg.headers), name
        assert key in msg.headers._cache and msg.headers._cache[key] == value, name
