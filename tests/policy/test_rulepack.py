"""Rule-pack compilation: answers per rule, overrides merged key by key, the shared normaliser."""

from __future__ import annotations

from pathlib import Path

from policy_helpers import write_config

from sipfilter.config import Config
from sipfilter.configure import load_config
from sipfilter.policy.rulepack import normaliser_for


def test_answers(config: Config) -> None:
    rs = config.rules["dialer"]
    assert rs.answer("caller-id.mobile").status == 403
    assert rs.answer("callee.dnc.bloctel").status == 603  # from the generic callee.dnc entry
    assert rs.answer("callee.dnc.bloctel").text == "callee is on a do-not-call list"
    assert rs.answer("time.window").status == 603


def test_overrides_merge_and_leave_the_pack_alone(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        {
            "overrides": {
                "answers": {"callee.dnc": {"status": 608}},
                "hours": {"weekly": {"sat": ["10:00-12:00"]}},
            }
        },
    )
    c = load_config(path)
    rs = c.rules["dialer"]
    assert rs.answer("callee.dnc.optouts").status == 608
    assert rs.answer("callee.dnc.optouts").text == "callee is on a do-not-call list"  # kept from the pack
    assert rs.hours.weekly[5] == ((36000, 43200),)
    assert rs.hours.weekly[0] == ((36000, 46800), (50400, 72000))  # untouched days stay
    assert c.rule_packs["fr"].data["hours"]["weekly"]["sat"] == []  # the pack itself is not modified


def test_normaliser_for_importers(config: Config) -> None:
    n = normaliser_for(config)
    assert n is config.rules["dialer"].normaliser
    assert n.e164("0692123456") == "+262692123456"
    assert n.e164("0709212345") == "+262709212345"
    assert n.e164("0712345678") is None
