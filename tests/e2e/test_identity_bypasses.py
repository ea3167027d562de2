"""The number checked is the number sent, over real UDP to a real `sipfilter run`: the two policy bypasses an
attack probe found are refused, and a REFER inside an answered call never reaches the carrier.

1. Do-not-call bypass: an escaped Request-URI user (`sip:<bloctel number>%3B@…`) that the policy used to
   find unreadable and replace by To's number, while the carrier dialled the Bloctel number.
2. Caller-ID bypass: an NPV URI in From's (or P-Asserted-Identity's) display name, which the policy used to
   check while the carrier received the mobile number of the real URI.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sipfilter_provision import CONSENTED, LISTS, provision
from sipp_harness import (
    Sipfilter,
    SipfilterPorts,
    free_ports,
    sipfilter_available,
    sipfilter_config,
    write_config,
)
from udp_peer import Listener

_MISSING = sipfilter_available()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")]

NPV = "+33162000001"
BLOCTEL = LISTS["bloctel"][0]  # on the do-not-call list: never to be dialled
CONSENTED_CALLEE = CONSENTED[0]  # a callee the policy allows
MOBILE = "+33612345678"  # a caller ID an automated trunk must not show
QUIET_S = 1.0


@dataclass
class Deployment:
    inside: tuple[str, int]
    carrier: Listener
    dialer: Listener
    audit: Path
    log_tail: Callable[[], str]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    carrier = Listener(answer=True, answer_status=200, answers_probes=True)
    dialer = Listener()
    proc = None
    try:
        workdir = tmp_path_factory.mktemp("identity")
        ports = SipfilterPorts(*free_ports(3))
        trunk = {"match": {"sources": ["127.0.0.1/32"]}}
        config = sipfilter_config(workdir, ports, [carrier.port], trunk=trunk)
        config_path = write_config(workdir / "sipfilter.yaml", config)
        provision(config_path, workdir)
        carrier.start()
        dialer.start()
        proc = Sipfilter(config_path, ports, workdir / "run").start()
        audit = Path(config["audit"]["path"])
        yield Deployment(("127.0.0.1", ports.inside), carrier, dialer, audit, proc.log_tail)
    finally:
        if proc is not None:
            proc.stop()
        carrier.close()
        dialer.close()


def invite(d: Deployment, ruri_user: str, from_: str, *, to: str, pai: str = "") -> tuple[bytes, str]:
    call_id = uuid.uuid4().hex
    host, port = d.dialer.sock.getsockname()
    lines = [
        f"INVITE sip:{ruri_user}@{d.inside[0]}:{d.inside[1]} SIP/2.0",
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{call_id[:12]};rport",
        "Max-Forwards: 70",
        f"From: {from_};tag={call_id[:8]}",
        f"To: <sip:{to}@{host}>",
        f"Call-ID: {call_id}",
        "CSeq: 1 INVITE",
        f"Contact: <sip:dialer@{host}:{port}>",
        *([f"P-Asserted-Identity: {pai}"] if pai else []),
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode(), call_id


def wait_for(predicate: Callable[[], object], timeout_s: float = 5.0) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.02)
    return predicate()


def final_answer(d: Deployment, call_id: str, method: str = "INVITE", status: str = "[2-6]") -> bytes | None:
    """The first final answer the dialer got to `method` on this call (status matching `status`)."""
    for data, _ in list(d.dialer.received):
        ours = call_id.encode() in data and re.search(rf"(?m)^CSeq: \d+ {method}\r$".encode(), data)
        if ours and re.match(rf"SIP/2.0 {status}\d\d ".encode(), data):
            return data
    return None


def audit_record(d: Deployment, call_id: str) -> dict[str, object] | None:
    if not d.audit.exists():
        return None
    for line in d.audit.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("call_id") == call_id:  # record lines (consent.import…) have none
            return dict(record)
    return None


def refused(d: Deployment, data: bytes, call_id: str, rule: str) -> None:
    carrier_before = len(d.carrier.requests("INVITE"))
    d.dialer.sock.sendto(data, d.inside)
    answer = wait_for(lambda: final_answer(d, call_id))
    assert isinstance(answer, bytes), d.log_tail()
    assert re.match(rb"SIP/2.0 (403|603|608) ", answer), answer[:200]
    assert rule.encode() in answer  # Reason / Warning name the rule
    time.sleep(QUIET_S)
    assert len(d.carrier.requests("INVITE")) == carrier_before, d.carrier.requests("INVITE")[-1][:300]
    record = audit_record(d, call_id)
    assert record is not None and record["action"] == "reject" and str(record["rule"]).startswith(rule)


def test_control_a_legal_call_reaches_the_carrier_with_its_numbers(deployed: Deployment) -> None:
    data, call_id = invite(deployed, CONSENTED_CALLEE, f"<sip:{NPV}@127.0.0.1>", to=CONSENTED_CALLEE)
    deployed.dialer.sock.sendto(data, deployed.inside)
    got = wait_for(lambda: [r for r in deployed.carrier.requests("INVITE") if CONSENTED_CALLEE.encode() in r])
    assert got, deployed.log_tail()
    record = audit_record(deployed, call_id)
    assert record is not None and (record["action"], record["to"], record["from"]) == (
        "allow", CONSENTED_CALLEE, NPV)


def test_an_escaped_request_uri_user_is_refused_not_read_from_to(deployed: Deployment) -> None:
    """Bypass 1: the carrier would have dialled the Bloctel number, the audit line named the To number."""
    data, call_id = invite(deployed, f"{BLOCTEL}%3B", f"<sip:{NPV}@127.0.0.1>", to=CONSENTED_CALLEE)
    refused(deployed, data, call_id, "number.invalid")
    assert not [r for r in deployed.carrier.received if BLOCTEL.encode() in r[0]]


def test_a_caller_id_in_the_from_display_name_is_not_the_one_checked(deployed: Deployment) -> None:
    """Bypass 2: the policy checked the NPV number of the display name, the carrier got the mobile one."""
    data, call_id = invite(deployed, CONSENTED_CALLEE, f'"<sip:{NPV}@x>" <sip:{MOBILE}@127.0.0.1>',
                           to=CONSENTED_CALLEE)  # fmt: skip
    refused(deployed, data, call_id, "caller-id.mobile")


def test_a_caller_id_in_a_pai_display_name_is_not_the_one_checked(deployed: Deployment) -> None:
    data, call_id = invite(deployed, CONSENTED_CALLEE, f"<sip:{NPV}@127.0.0.1>", to=CONSENTED_CALLEE,
                           pai=f'"<sip:{NPV}@x>" <sip:{MOBILE}@127.0.0.1>')  # fmt: skip
    refused(deployed, data, call_id, "caller-id.mobile")


def test_a_refer_inside_an_answered_call_never_reaches_the_carrier(deployed: Deployment) -> None:
    callee = CONSENTED[1]
    data, call_id = invite(deployed, callee, f"<sip:{NPV}@127.0.0.1>", to=callee)
    d = deployed
    d.dialer.sock.sendto(data, d.inside)
    ok = wait_for(lambda: final_answer(d, call_id, "INVITE", "2"))
    assert isinstance(ok, bytes), d.log_tail()
    to = re.search(rb"(?m)^To: (.*)\r$", ok)
    assert to is not None
    host, port = d.dialer.sock.getsockname()

    def request(method: str, cseq: int, extra: str = "") -> bytes:
        return (
            f"{method} sip:sipfilter@{d.inside[0]}:{d.inside[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{method.lower()}{call_id[:10]};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:{NPV}@127.0.0.1>;tag={call_id[:8]}\r\n"
            f"To: {to.group(1).decode()}\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n{extra}Content-Length: 0\r\n\r\n"
        ).encode()

    d.dialer.sock.sendto(request("ACK", 1), d.inside)
    refer = request("REFER", 2, f"Refer-To: <sip:{BLOCTEL}@evil.example>\r\nContact: <sip:d@{host}>\r\n")
    d.dialer.sock.sendto(refer, d.inside)
    answer = wait_for(lambda: final_answer(d, call_id, "REFER"))
    assert isinstance(answer, bytes) and answer.startswith(b"SIP/2.0 403 "), answer
    assert b"REFER is not relayed" in answer
    time.sleep(QUIET_S)
    assert d.carrier.requests("REFER") == []
    assert not [r for r, _ in d.carrier.received if b"evil.example" in r]
    d.dialer.sock.sendto(request("BYE", 3), d.inside)
    assert wait_for(lambda: d.carrier.requests("BYE")), d.log_tail()
