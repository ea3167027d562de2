"""Every shipped dialer scenario meets a refusal the way sipfilter gives one (403/603 + Reason + Warning):
it ACKs it, reports code, Reason and Warning, and counts the call as failed when the CSV did not expect it.

Played against a one-purpose SIPp UAS that refuses every INVITE, so no sipfilter is involved.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sipp_harness import CallCase, SippFactory, SippRun, free_ports, write_calls_csv

pytestmark = pytest.mark.e2e

REASON = 'SIP;cause={code};text="callee.dnc.bloctel"'
WARNING = '399 sipfilter.test "callee is on a do-not-call list"'

REFUSER = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="refuses every INVITE as sipfilter does">
  <recv request="INVITE" />
  <send>
    <![CDATA[

      SIP/2.0 {code} Refused
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Reason: {reason}
      Warning: {warning}
      Content-Length: 0

    ]]>
  </send>
  <recv request="ACK" timeout="5000" />
</scenario>
"""


def refused(sipp: SippFactory, tmp_path: Path, scenario: str, code: int, expected: str,
            calls: int = 1) -> tuple[SippRun, SippRun]:
    uac_port, uas_port = free_ports(2)
    uas = tmp_path / f"refuser_{code}.xml"
    uas.write_text(REFUSER.format(code=code, reason=REASON.format(code=code), warning=WARNING))
    carrier = sipp(str(uas), local_port=uas_port, calls=calls, timeout_s=20).start()
    carrier.wait_listening()
    cases = [CallCase("+33162000001", f"+3361200010{n}", expected) for n in range(calls)]
    dialer = sipp(scenario, local_port=uac_port, remote=f"127.0.0.1:{uas_port}", calls=calls,
                  csv_file=write_calls_csv(tmp_path / "calls.csv", cases), pause_ms=100, timeout_s=20).start()
    return dialer.wait(), carrier.wait(timeout_s=10)


@pytest.mark.parametrize("code", [403, 603])
def test_a_mismatch_line_carries_code_reason_and_warning(sipp: SippFactory, tmp_path: Path,
                                                         code: int) -> None:
    dialer, carrier = refused(sipp, tmp_path, "dialer_uac.xml", code, "relay")
    assert dialer.failed == 1 and carrier.successful == 1, dialer.summary() + carrier.summary()
    (outcome,) = dialer.outcomes
    assert (outcome.code, outcome.verdict) == (code, "MISMATCH")
    assert (outcome.reason, outcome.warning) == (REASON.format(code=code), WARNING)
    assert outcome.rule == "callee.dnc.bloctel"


def test_an_expected_refusal_matches_with_its_headers(sipp: SippFactory, tmp_path: Path) -> None:
    dialer, _ = refused(sipp, tmp_path, "dialer_uac.xml", 603, "603 callee.dnc")
    assert dialer.failed == 0 and dialer.successful == 1, dialer.summary()
    (outcome,) = dialer.outcomes
    assert outcome.verdict == "match" and outcome.problem() is None and outcome.warning == WARNING


@pytest.mark.parametrize("scenario", ["dialer_uac_wait_bye.xml", "dialer_uac_cancel.xml",
                                      "dialer_uac_early_media.xml", "dialer_uac_reinvite.xml",
                                      "dialer_uac_reinvite_dead_carrier.xml"])
@pytest.mark.parametrize("code", [403, 603])
def test_call_path_scenarios_ack_and_report_a_refusal(sipp: SippFactory, tmp_path: Path, scenario: str,
                                                      code: int) -> None:
    dialer, carrier = refused(sipp, tmp_path, scenario, code, "relay", calls=2)
    # ACKed (the refusing side completes both calls), counted failed, and said with its headers.
    assert carrier.successful == 2 and carrier.failed == 0, carrier.summary()
    assert dialer.failed == 2 and dialer.successful == 0, dialer.summary()
    lines = [line for line in dialer.log_lines if line.startswith("REFUSED|")]
    assert lines == [f"REFUSED|{n}|{code}|{REASON.format(code=code)}|{WARNING}" for n in (1, 2)]
