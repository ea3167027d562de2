"""Trunk matching (most specific network first, then source port and header narrowing) and the order in which
a trunk's carrier targets are tried."""

from __future__ import annotations

import ipaddress
import random
from dataclasses import replace

from sipfilter.b2bua.trunks import TargetPool, TrunkMatcher
from sipfilter.config import HeaderMatch, Target, TrunkConfig, TrunkMatch
from sipfilter.configure import load_config

EXAMPLE = load_config("config/sipfilter.yaml").trunks["dialer"]


def trunk(
    name: str, cidr: str, ports: tuple[int, ...] = (), header: HeaderMatch | None = None
) -> TrunkConfig:
    match = TrunkMatch((ipaddress.ip_network(cidr),), header, frozenset(ports))
    return replace(EXAMPLE, name=name, match=match)


def test_most_specific_network_wins() -> None:
    m = TrunkMatcher({"wide": trunk("wide", "10.0.0.0/8"), "narrow": trunk("narrow", "10.1.2.0/24")})
    assert m.match("10.1.2.3").name == "narrow"  # type: ignore[union-attr]
    assert m.match("10.9.9.9").name == "wide"  # type: ignore[union-attr]
    assert m.match("192.0.2.1") is None
    assert m.match("not-an-ip") is None


def test_source_port_narrows_trunks_sharing_an_address() -> None:
    m = TrunkMatcher(
        {
            "dialer-a": trunk("dialer-a", "10.0.0.5/32", ports=(5060,)),
            "dialer-b": trunk("dialer-b", "10.0.0.5/32", ports=(5062, 5064)),
        }
    )
    assert m.match("10.0.0.5", port=5060).name == "dialer-a"  # type: ignore[union-attr]
    assert m.match("10.0.0.5", port=5064).name == "dialer-b"  # type: ignore[union-attr]
    assert m.match("10.0.0.5", port=5070) is None  # a port no trunk lists: unknown source
    assert m.match("10.0.0.5") is None


def test_header_narrows_trunks_sharing_a_network() -> None:
    m = TrunkMatcher(
        {
            "a": trunk("a", "10.0.0.0/24", header=HeaderMatch("X-Trunk", "a")),
            "b": trunk("b", "10.0.0.0/24", header=HeaderMatch("X-Trunk", "b")),
        }
    )
    assert m.match("10.0.0.1", {"X-Trunk": "b"}.get).name == "b"  # type: ignore[union-attr]
    assert m.match("10.0.0.1", {"X-Trunk": "c"}.get) is None
    assert m.match("10.0.0.1") is None


def _pool() -> TargetPool:
    targets = [Target("sip:10.0.0.1:5060", "udp", 1, 1), Target("sip:10.0.0.2:5060", "udp", 1, 1),
               Target("sip:10.0.0.9:5060", "udp", 2, 1)]  # fmt: skip
    return TargetPool("dialer", targets, random.Random(7))


def test_targets_tried_by_priority_with_down_ones_last() -> None:
    pool = _pool()
    hosts = [d.host for d in pool.plan()]
    assert sorted(hosts[:2]) == ["10.0.0.1", "10.0.0.2"] and hosts[2] == "10.0.0.9"
    first = pool.states[0].dest
    pool.mark(first, ok=False, now=100.0)
    assert [d.host for d in pool.plan()][-1] == "10.0.0.1"  # down: tried last, never dropped
    assert "10.0.0.1" not in [d.host for d in pool.plan(include_down=False)]
    pool.mark(first, ok=True, now=110.0)
    assert "10.0.0.1" in [d.host for d in pool.plan(include_down=False)]


def test_every_target_down_leaves_nothing_to_try_without_include_down() -> None:
    pool = _pool()
    changes: list[tuple[str, str, bool]] = []
    pool.on_change = lambda trunk, dest, up: changes.append((trunk, dest.host, up))
    for s in pool.states:
        pool.mark(s.dest, ok=False, now=1.0)
    assert pool.plan(include_down=False) == []
    assert len(pool.plan()) == 3
    assert changes == [("dialer", h, False) for h in ("10.0.0.1", "10.0.0.2", "10.0.0.9")]
