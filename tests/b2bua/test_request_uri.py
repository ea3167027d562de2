"""`request_uri.domains` of a trunk: config validation and the per-INVITE host check (no sockets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from b2bua_rig import DIALER, Rig, make_rig, write_config

from sipfilter.b2bua.trunks import foreign_host
from sipfilter.config import ConfigError
from sipfilter.configure import load_config
from sipfilter.sip import Request, Response, parse


def _rig(tmp_path: Path, **trunk: Any) -> Rig:
    return make_rig(tmp_path, **trunk)


def _invite(ruri: str, call_id: str) -> bytes:
    return (
        f"INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5999;branch=z9hG4bK{call_id}\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:+33162000001@10.0.0.9>;tag=a\r\nTo: <sip:+33612000001@x>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def test_hosts_outside_the_list_get_403_before_policy_and_listed_ones_go_on(tmp_path: Path) -> None:
    rig = _rig(tmp_path, request_uri={"domains": ["Calls.Acme.example", "[2001:db8::1]", "192.0.2.10"]})
    cases = {
        "sip:+33612000001@calls.acme.example": 100, "sip:+33612000001@CALLS.ACME.EXAMPLE.:5070": 100,
        "sip:+33612000001@[2001:DB8::1]": 100, "sip:+33612000001@192.0.2.10;user=phone": 100,
        "sip:+33612000001@evil.example": 403, "sip:+33612000001@acme.example": 403,
        "sip:+33612000001@192.0.2.11": 403, "sips:+33612000001@calls.acme.example.evil.example": 403,
    }  # fmt: skip
    for n, (ruri, want) in enumerate(cases.items()):
        rig.from_dialer(_invite(ruri, f"ruri{n}"), DIALER)
        first = rig.inside.take()[0]
        assert isinstance(first, Response) and first.status == want, (ruri, first)
        if want == 403:
            (warning,) = first.headers.get_all("Warning")
            assert "request_uri.domains of trunk dialer" in warning and "Request-URI host" in warning
    assert len(rig.policy.seen) == 4  # only the listed hosts reached the policy
    relayed = [m for m in rig.outside.take() if isinstance(m, Request) and m.method == "INVITE"]
    assert len(relayed) == 4 and all("@127.0.0.1:5071" in m.uri for m in relayed)


def test_without_the_list_any_host_is_rewritten_to_the_carrier(tmp_path: Path) -> None:
    rig = _rig(tmp_path)
    rig.from_dialer(_invite("sip:+33612000001@evil.example", "free1"), DIALER)
    assert [r.status for r in rig.inside.take()] == [100]
    (b_inv,) = rig.outside.take()
    assert b_inv.uri == "sip:+33612000001@127.0.0.1:5071" and "evil.example" not in bytes(b_inv).decode()


def test_foreign_host_is_none_when_unset() -> None:
    trunk: Any = type("T", (), {"request_uri_domains": None})()
    assert foreign_host(trunk, parse(_invite("sip:+33612000001@evil.example", "unset1"))) is None


def test_a_tel_uri_names_no_host_to_refuse() -> None:
    trunk: Any = type("T", (), {"request_uri_domains": frozenset({"a.example"})})()
    assert foreign_host(trunk, parse(_invite("tel:+33612000001", "tel1"))) is None
    assert foreign_host(trunk, parse(_invite("sip:+33612000001@B.example", "sip1"))) == "B.example"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ({"domains": []}, "at least one domain"),
        ({"domains": ["bad host!"]}, "host name or IP"),
        ({"domain": ["a.example"]}, "unknown field"),
        ({"domains": "a.example"}, "expected a list"),
    ],
)
def test_config_errors_name_file_line_and_field(tmp_path: Path, value: Any, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write_config(tmp_path, request_uri=value))
    text = str(err.value)
    assert fragment in text and "trunks.dialer.request_uri" in text and "sipfilter.yaml:" in text


def test_config_normalises_domains(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, request_uri={"domains": ["A.Example.", "[::1]"]}))
    assert config.trunks["dialer"].request_uri_domains == frozenset({"a.example", "::1"})
    assert load_config(write_config(tmp_path)).trunks["dialer"].request_uri_domains is None
