"""Every RFC 4475 torture message, byte for byte, sent to a running sipfilter over UDP and over TCP.

Checks the RFC's answer (400, 505, 416, 420, …, or silence where it says discard) and that sipfilter
then still relays a normal SIPp call. Reads tests/data/rfc4475/ and never rewrites it.
"""

from __future__ import annotations

import csv
import hashlib
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sipfilter_provision import Deployment, deploy
from sipp_harness import CallCase, SippFactory, free_ports, sipfilter_available, write_calls_csv

pytestmark = pytest.mark.e2e

DATA = Path(__file__).resolve().parents[1] / "data" / "rfc4475"
with (DATA / "index.tsv").open(encoding="utf-8") as _index:
    INDEX = {row["file"]: row for row in csv.DictReader(_index, delimiter="\t")}

FINAL = frozenset(range(200, 700))
NOT_400 = FINAL - {400, 500}  # a well-formed message must not be called malformed (nor crash the element)
NOT_2XX = FINAL - set(range(200, 300)) - {500}
SILENT: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class Expect:
    """Acceptable final answers: `codes` (empty = must stay silent). `silence_ok`: the RFC also allows a
    silent discard. `tcp`: a different expectation on a stream transport (None = same)."""

    codes: frozenset[int]
    why: str
    silence_ok: bool = False
    tcp: Expect | None = None


def only(*codes: int) -> frozenset[int]:
    return frozenset(codes)


# What RFC 4475 says an element like sipfilter (a B2BUA: a UAS towards the dialer, never a registrar)
# must answer; the alternatives the RFC itself allows are listed with it.
EXPECT: dict[str, Expect] = {
    # 3.1.1 valid: must parse; never 400. What the element then does is its business.
    "wsinv.dat": Expect(NOT_400, "valid INVITE"),
    "intmeth.dat": Expect(NOT_400, "unknown method: 405/501, not 400"),
    "esc01.dat": Expect(NOT_400, "valid INVITE"),
    "escnull.dat": Expect(NOT_400, "valid REGISTER (%00 in URIs)"),
    "esc02.dat": Expect(NOT_400, "unknown method RE%47IST%45R"),
    "lwsdisp.dat": Expect(NOT_400, "valid OPTIONS"),
    "longreq.dat": Expect(NOT_400, "valid long INVITE"),
    "dblreq.dat": Expect(NOT_400, "REGISTER answered, trailing INVITE octets ignored"),
    "semiuri.dat": Expect(NOT_400, "valid OPTIONS"),
    "transports.dat": Expect(NOT_400, "valid OPTIONS"),
    "mpart01.dat": Expect(NOT_400, "valid MESSAGE with multipart body"),
    "unreason.dat": Expect(SILENT, "stray response: discarded"),
    "noreason.dat": Expect(SILENT, "stray response: discarded"),
    # 3.1.2 invalid
    "badinv01.dat": Expect(only(400), "extra separators"),
    "clerr.dat": Expect(only(400), "Content-Length larger than the datagram", silence_ok=True,
                        tcp=Expect(SILENT, "incomplete on a stream: wait for more data")),
    "ncl.dat": Expect(only(400), "negative Content-Length", silence_ok=True,
                      tcp=Expect(only(400), "framing error: 400 and/or close", silence_ok=True)),
    "scalar02.dat": Expect(only(400), "CSeq above 2**31"),
    "scalarlg.dat": Expect(SILENT, "response with overlarge values: discarded"),
    "quotbal.dat": Expect(only(400), "unterminated quoted string"),
    "ltgtruri.dat": Expect(only(400), "<> around the Request-URI"),
    "lwsruri.dat": Expect(only(400), "LWS in the Request-URI"),
    "lwsstart.dat": Expect(FINAL - {500}, "double SP: 400, or accepted by a liberal element"),
    "trws.dat": Expect(FINAL - {500}, "trailing SP: 400, or accepted by a liberal element"),
    "escruri.dat": Expect(only(400), "escaped headers in the Request-URI"),
    "baddate.dat": Expect(FINAL - {500}, "non-GMT Date: liberal elements ignore it"),
    "regbadct.dat": Expect(only(400), "Contact with ?Route= not in <>"),
    "badaspec.dat": Expect(FINAL - {500}, "spaces in addr-spec: 400 or liberal"),
    "baddn.dat": Expect(FINAL - {500}, "unquoted display name: 400 or liberal",
                        tcp=Expect(FINAL - {500}, "no blank line: incomplete on a stream", silence_ok=True)),
    "badvers.dat": Expect(only(505), "SIP/7.0"),
    "mismatch01.dat": Expect(only(400), "CSeq method differs from the request's"),
    "mismatch02.dat": Expect(only(501, 400), "unknown method and CSeq mismatch: 501 preferred"),
    "bigcode.dat": Expect(SILENT, "response code above 699: dropped"),
    # 3.2 – 3.4 valid syntax, defined semantics
    "badbranch.dat": Expect(FINAL - {500}, "bare magic cookie: 400 or RFC 2543 matching"),
    "insuf.dat": Expect(only(400), "no Call-ID, From, To"),
    "unkscm.dat": Expect(only(416), "unknown Request-URI scheme"),
    "novelsc.dat": Expect(only(416), "soap.beep Request-URI sipfilter cannot route"),
    "unksm2.dat": Expect(NOT_2XX, "non-SIP To in a REGISTER: not a registrar, never 2xx"),
    "bext01.dat": Expect(only(420), "unknown Require option tag"),
    "invut.dat": Expect(only(415), "unknown body Content-Type"),
    "regaut01.dat": Expect(NOT_2XX, "unknown Authorization scheme: never accepted"),
    "multi01.dat": Expect(only(400), "several Call-ID/To/From/Max-Forwards/CSeq values"),
    "mcl01.dat": Expect(only(400), "two Content-Length values",
                        tcp=Expect(only(400), "framing undefined: 400 and/or close", silence_ok=True)),
    "bcast.dat": Expect(SILENT, "response with a broadcast Via: dropped"),
    "zeromf.dat": Expect(NOT_400, "Max-Forwards 0: 483, or answered as an endpoint"),
    "cparam01.dat": Expect(NOT_400, "valid REGISTER"),
    "cparam02.dat": Expect(NOT_400, "valid REGISTER"),
    "regescrt.dat": Expect(NOT_400, "valid REGISTER"),
    "sdp01.dat": Expect(only(406), "Accept lists no type the offer could be answered in"),
    "inv2543.dat": Expect(NOT_400, "RFC 2543 INVITE: accepted for backward compatibility",
                          tcp=Expect(FINAL - {500}, "no Content-Length on a stream (§18.3): 400 or close",
                                     silence_ok=True)),
}

_STATUS = re.compile(rb"^SIP/2\.0 (\d{3}) ", re.MULTILINE)
_CSEQ = re.compile(rb"^(?:CSeq|cseq)\s*:\s*\d+\s+(\S+)", re.MULTILINE | re.IGNORECASE)
QUIET_S = 1.0  # how long silence must last to count as silence
FINAL_WAIT_S = 3.0  # how long a final answer may take (an INVITE relayed to a dead carrier times out)


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    cseq_method: str


def split_responses(data: bytes) -> list[Reply]:
    """Responses in a byte stream or in concatenated datagrams: status code and CSeq method of each."""
    replies: list[Reply] = []
    starts = [m.start() for m in _STATUS.finditer(data)]
    for i, start in enumerate(starts):
        chunk = data[start:starts[i + 1] if i + 1 < len(starts) else len(data)]
        cseq = _CSEQ.search(chunk)
        replies.append(Reply(int(chunk[8:11]), cseq.group(1).decode("ascii", "replace") if cseq else ""))
    return replies


def _done(data: bytes) -> bool:
    return any(r.code >= 200 for r in split_responses(data))


def send_udp(port: int, message: bytes, expect_answer: bool) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.sendto(message, ("127.0.0.1", port))
        return _collect(sock, expect_answer, recv=lambda: sock.recv(65536))


def send_tcp(port: int, message: bytes, expect_answer: bool) -> tuple[bytes, bool]:
    """Bytes received and whether sipfilter closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(message)
        closed: list[bool] = []

        def recv() -> bytes:
            chunk = sock.recv(65536)
            if not chunk:
                closed.append(True)
                raise ConnectionResetError("closed by sipfilter")
            return chunk

        data = _collect(sock, expect_answer, recv)
        return data, bool(closed)


def _collect(sock: socket.socket, expect_answer: bool, recv: Callable[[], bytes]) -> bytes:
    """Read until a final response (then a short grace for a duplicate), or until QUIET_S of silence
    when no answer is expected, or FINAL_WAIT_S when one is."""
    data = b""
    deadline = time.monotonic() + (FINAL_WAIT_S if expect_answer else QUIET_S)
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data += recv()
        except (TimeoutError, ConnectionResetError, OSError):
            break
        if _done(data):
            deadline = min(deadline, time.monotonic() + 0.2)
    return data


@pytest.fixture(scope="module", params=["udp", "tcp"])
def deployment(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A fresh sipfilter per transport: the same message sent twice to one instance would be a merged
    request (482), not a torture test."""
    missing = sipfilter_available()
    if missing:
        pytest.skip(missing)
    deployed = deploy(tmp_path_factory.mktemp(f"rfc4475-{request.param}"))
    deployed.transport = request.param
    try:
        yield deployed
    finally:
        deployed.sipfilter.stop()


def test_every_file_has_an_expectation_and_is_intact() -> None:
    assert set(EXPECT) == set(INDEX) and len(INDEX) == 49
    for name, row in INDEX.items():
        raw = (DATA / name).read_bytes()
        assert len(raw) == int(row["bytes"]) and hashlib.sha256(raw).hexdigest() == row["sha256"], name


def check(name: str, expect: Expect, replies: list[Reply], closed: bool = False) -> None:
    # Only answers to the file's first message count (matched on its CSeq method): over TCP, dblreq's
    # trailing INVITE is a message of its own.
    cseq = _CSEQ.search((DATA / name).read_bytes())
    method = cseq.group(1).decode("ascii", "replace") if cseq else ""
    finals = [r for r in replies if r.code >= 200 and (not method or r.cseq_method in (method, ""))]
    why = f"{name} ({INDEX[name]['section']} {INDEX[name]['title']}; {expect.why}): got {replies}"
    if not expect.codes:
        assert not replies, f"expected silence — {why}"
        return
    if not finals:
        assert expect.silence_ok, f"expected one of the RFC's answers (closed={closed}) — {why}"
        return
    assert finals[0].code in expect.codes, f"unexpected answer — {why}"
    assert len({r.code for r in finals}) == 1, f"conflicting final answers — {why}"


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_torture_message(deployment: Deployment, name: str) -> None:
    port = deployment.sipfilter.ports.inside
    message = (DATA / name).read_bytes()
    if deployment.transport == "udp":
        expect = EXPECT[name]
        replies = split_responses(send_udp(port, message, bool(expect.codes)))
        check(name, expect, replies)
        if name == "dblreq.dat":
            # Only the REGISTER is processed: the INVITE after Content-Length 0 is trailing junk.
            assert {r.cseq_method for r in replies} == {"REGISTER"}, replies
    else:
        expect = EXPECT[name].tcp or EXPECT[name]
        data, closed = send_tcp(port, message, bool(expect.codes))
        check(name, expect, split_responses(data), closed)
    assert deployment.sipfilter.alive(), deployment.sipfilter.log_tail()


def test_still_relays_calls_after_the_torture(sipp: SippFactory, tmp_path: Path,
                                              deployment: Deployment) -> None:
    # Runs after the torture messages (file order), on the same sipfilter process and transport.
    for name in sorted(EXPECT):  # once more over UDP, all at once, without waiting for answers
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto((DATA / name).read_bytes(), ("127.0.0.1", deployment.sipfilter.ports.inside))
    cases = [CallCase("+33162000001", "+33612000001", "relay"),
             CallCase("+33140000000", "+33612000002", "403 caller-id.not-npv")]
    carrier = sipp("carrier_uas.xml", local_port=deployment.carrier_ports[0], calls=1_000_000,
                   timeout_s=30).start()
    carrier.wait_listening()
    dialer = sipp("dialer_uac.xml", local_port=free_ports(1)[0], remote=deployment.inside, calls=len(cases),
                  csv_file=write_calls_csv(tmp_path / "calls.csv", cases), pause_ms=100, timeout_s=20,
                  transport="t1" if deployment.transport == "tcp" else "u1").start()
    run = dialer.wait()
    problems = [p for o in run.outcomes if (p := o.problem())]
    assert not problems and len(run.outcomes) == 2 and run.failed == 0, "\n".join(problems) + run.summary()
    carrier_run = carrier.finish(grace_s=10)
    assert carrier_run.invites == 1 and carrier_run.failed == 0, carrier_run.summary()
    assert deployment.sipfilter.alive(), deployment.sipfilter.log_tail()
