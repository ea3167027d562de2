"""The shipped SIPp scenarios (sipp/*.xml) played against each other, dialer UAC straight to carrier UAS.

Proves each pair is valid SIPp 3.6 and a correct call flow before any of them goes through sipfilter.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from sipp_harness import CallCase, SippFactory, SippRun, free_ports, write_calls_csv

pytestmark = pytest.mark.e2e

CALLS = [
    CallCase("+33162000001", "+33612345678", "relay"),
    CallCase("0162000002", "0612345679", "relay"),
]


def play(sipp: SippFactory, tmp_path: Path, uac: str, uas: str, cases: list[CallCase], *,
         uac_pause_ms: int = 50, uas_pause_ms: int = 50, transport: str = "u1") -> tuple[SippRun, SippRun]:
    uac_port, uas_port = free_ports(2)
    csv_file = write_calls_csv(tmp_path / "calls.csv", cases)
    # Over TCP the side that finishes first closes the connection under the other's last call: the
    # carrier is given one call more than it will get and told to finish (SIGUSR1) after the dialer.
    tcp = transport.startswith("t")
    carrier = sipp(uas, local_port=uas_port, calls=len(cases) + tcp, pause_ms=uas_pause_ms, timeout_s=20,
                   transport=transport).start()
    carrier.wait_listening()
    dialer = sipp(uac, local_port=uac_port, remote=f"127.0.0.1:{uas_port}", calls=len(cases),
                  csv_file=csv_file, pause_ms=uac_pause_ms, timeout_s=20, transport=transport).start()
    dialer_run = dialer.wait()
    carrier_run = carrier.finish() if tcp else carrier.wait(timeout_s=10)
    return dialer_run, carrier_run


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_answer_then_bye_from_dialer(sipp: SippFactory, tmp_path: Path, transport: str) -> None:
    dialer, carrier = play(sipp, tmp_path, "dialer_uac.xml", "carrier_uas.xml", CALLS, transport=transport)
    assert dialer.returncode == 0 and dialer.successful == 2 and dialer.failed == 0, dialer.summary()
    assert carrier.successful == 2 and carrier.failed == 0, carrier.summary()
    assert [(o.code, o.verdict, o.problem()) for o in dialer.outcomes] == [(200, "match", None)] * 2
    assert [o.caller for o in dialer.outcomes] == ["+33162000001", "0162000002"]
    assert len(dialer.rtts_ms["invite"]) == 2


def test_outcome_differing_from_csv_fails_the_call(sipp: SippFactory, tmp_path: Path) -> None:
    # A busy carrier while the CSV expects "relay": SIPp itself must count the call as failed.
    cases = [CallCase("+33162000001", "+33612345678", "relay"),
             CallCase("+33162000001", "+33612345679", "486")]
    dialer, carrier = play(sipp, tmp_path, "dialer_uac.xml", "carrier_uas_busy.xml", cases)
    assert carrier.successful == 2, carrier.summary()
    assert dialer.successful == 1 and dialer.failed == 1, dialer.summary()
    first, second = dialer.outcomes
    assert (first.code, first.verdict) == (486, "MISMATCH") and first.problem() is not None
    assert (second.code, second.verdict, second.problem()) == (486, "match", None)


def test_answer_then_bye_from_carrier(sipp: SippFactory, tmp_path: Path) -> None:
    dialer, carrier = play(sipp, tmp_path, "dialer_uac_wait_bye.xml", "carrier_uas_bye.xml", CALLS)
    assert dialer.successful == 2 and dialer.failed == 0, dialer.summary()
    assert carrier.successful == 2 and carrier.failed == 0, carrier.summary()


def test_cancel_during_ringing(sipp: SippFactory, tmp_path: Path) -> None:
    dialer, carrier = play(sipp, tmp_path, "dialer_uac_cancel.xml", "carrier_uas_ringing.xml", CALLS,
                           uac_pause_ms=100)
    assert dialer.successful == 2 and dialer.failed == 0, dialer.summary()
    assert carrier.successful == 2 and carrier.failed == 0, carrier.summary()


@pytest.mark.parametrize(("uas", "code"),
                         [("carrier_uas_busy.xml", 486), ("carrier_uas_unavailable.xml", 503)])
def test_carrier_refusal_is_recorded(sipp: SippFactory, tmp_path: Path, uas: str, code: int) -> None:
    cases = [CallCase("+33162000001", "+33612345678", str(code))]
    dialer, carrier = play(sipp, tmp_path, "dialer_uac.xml", uas, cases)
    assert dialer.successful == 1 and dialer.failed == 0, dialer.summary()
    assert carrier.successful == 1, carrier.summary()
    assert [(o.code, o.problem()) for o in dialer.outcomes] == [(code, None)]


def test_reinvite_mid_call(sipp: SippFactory, tmp_path: Path) -> None:
    dialer, carrier = play(sipp, tmp_path, "dialer_uac_reinvite.xml", "carrier_uas.xml", CALLS)
    assert dialer.successful == 2 and dialer.failed == 0, dialer.summary()
    assert carrier.successful == 2 and carrier.failed == 0, carrier.summary()
    assert sum(line.startswith("REINVITE|") and "m=audio" in line for line in dialer.log_lines) == 2
    assert len(dialer.rtts_ms["reinvite"]) == 2


def test_early_media_183_with_sdp(sipp: SippFactory, tmp_path: Path) -> None:
    dialer, carrier = play(sipp, tmp_path, "dialer_uac_early_media.xml", "carrier_uas_early_media.xml", CALLS)
    assert dialer.successful == 2 and dialer.failed == 0, dialer.summary()
    assert carrier.successful == 2 and carrier.failed == 0, carrier.summary()
    early = [line for line in dialer.log_lines if line.startswith("EARLY|")]
    assert len(early) == 2 and all("application/sdp" in line and "m=audio" in line for line in early)


def test_dead_carrier_never_answers(sipp: SippFactory, tmp_path: Path) -> None:
    # Straight to a dead carrier the dialer gives up after its retransmissions: the failover scenario's
    # first target really is silent (through sipfilter, the second target answers instead).
    cases = [CallCase("+33162000001", "+33612345678", "relay")]
    uac_port, uas_port = free_ports(2)
    carrier = sipp("carrier_uas_noanswer.xml", local_port=uas_port, pause_ms=3000, timeout_s=10).start()
    carrier.wait_listening()
    dialer = sipp("dialer_uac.xml", local_port=uac_port, remote=f"127.0.0.1:{uas_port}",
                  csv_file=write_calls_csv(tmp_path / "c.csv", cases), timeout_s=10,
                  extra=["-max_retrans", "2"]).start()
    run = dialer.wait()
    assert run.failed == 1 and run.successful == 0 and run.outcomes == (), run.summary()
    assert run.retransmissions >= 2
    assert "retransmission timeout" in run.errors


@pytest.mark.parametrize("uas", ["carrier_uas.xml", "carrier_uas_busy.xml", "carrier_uas_bye.xml",
                                 "carrier_uas_early_media.xml", "carrier_uas_noanswer.xml",
                                 "carrier_uas_ringing.xml", "carrier_uas_unavailable.xml"])
def test_carriers_answer_options_health_probes(sipp: SippFactory, uas: str) -> None:
    # sipfilter probes its targets with OPTIONS outside any dialog; a carrier that ignored them would be
    # taken out of rotation. Each probe is answered 200 and counted apart from the INVITEs.
    (port,) = free_ports(1)
    carrier = sipp(uas, local_port=port, calls=1_000_000, timeout_s=10).start()
    carrier.wait_listening()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        probe.settimeout(3)
        me = probe.getsockname()[1]
        answers = []
        for n in range(3):
            probe.sendto((f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
                          f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bKprobe{n};rport\r\n"
                          f"Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1:{me}>;tag=p{n}\r\n"
                          f"To: <sip:127.0.0.1:{port}>\r\nCall-ID: probe-{n}@127.0.0.1\r\n"
                          "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode(), ("127.0.0.1", port))
            answers.append(probe.recv(65536).split(b"\r\n", 1)[0])
    run = carrier.finish()
    assert answers == [b"SIP/2.0 200 OK"] * 3
    assert run.probes == 3 and run.invites == 0 and run.failed == 0, run.summary()
