"""The typed accessors of sip/typed_headers.py are the ones its ACCESSORS table generates."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path
from types import ModuleType

from sipfilter.sip import typed_headers
from sipfilter.sip.message import Message

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


def test_every_table_row_is_a_message_property_with_its_parser() -> None:
    for name, _key, parser, _type, _doc in typed_headers.ACCESSORS:
        assert isinstance(getattr(Message, name), property), name
        assert callable(getattr(typed_headers, parser)), parser
