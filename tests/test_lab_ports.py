"""The lab's free ports (sipfilter/lab.py): outside the kernel's ephemeral range, free for UDP and TCP."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from sipfilter import lab


def test_free_ports_are_below_the_ephemeral_range_and_free_for_both_protocols() -> None:
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    where = lab.lab_port_range()
    assert where.stop == ephemeral_low or where.stop == 65536  # the fallback, for a range that starts low
    ports = lab.free_ports(20)
    assert len(set(ports)) == 20
    for port in ports:
        assert port in where
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind((lab.LOOPBACK, port))


def test_a_port_in_use_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((lab.LOOPBACK, 0))
        busy = int(taken.getsockname()[1])
        monkeypatch.setattr(lab, "lab_port_range", lambda: range(busy, busy + 1))
        with pytest.raises(lab.LabError, match="no free UDP\\+TCP port pair"):
            lab.free_port()


def test_the_range_falls_back_when_the_ephemeral_range_starts_low(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:  # fmt: skip
    fake = tmp_path / "ip_local_port_range"
    fake.write_text("1024\t65535\n")
    monkeypatch.setattr(lab, "_EPHEMERAL_RANGE", fake)
    assert lab.lab_port_range() == range(10_000, 65536)
    fake.write_text("40000\t60999\n")
    assert lab.lab_port_range() == range(10_000, 40000)
