"""Unit tests of the e2e harness's parsers: SIPp OUTCOME lines, rule matching, /metrics sums, percentiles.

Fast and process-free: the e2e verdicts are only as good as these parsers.
"""

from __future__ import annotations

from pathlib import Path

from sipp_harness import (
    CallCase,
    Outcome,
    metric_sum,
    parse_outcomes,
    percentile,
    read_calls_csv,
    write_calls_csv,
)

LOG = (
    'OUTCOME|2|+33612345678|+33612000004|403 caller-id.mobile|403|SIP;cause=403;text="caller-id.mobile"'
    '|399 sipfilter.test "mobile numbers are reserved"|match\n'
    "EARLY|1|application/sdp|m=audio 6000 RTP/AVP\n"
    "OUTCOME|1|+33162000001|+33612000001|relay|200|||match\n"
    'OUTCOME|3|+33162000001|+33612000100|603 callee.dnc|603|SIP;cause=603;text="callee.dnc.bloctel"||match\n'
)


def test_outcome_lines_are_parsed_in_call_order() -> None:
    outcomes = parse_outcomes(LOG)
    assert [o.call_number for o in outcomes] == [1, 2, 3]
    first, second, third = outcomes
    assert (first.code, first.reason, first.warning, first.rule) == (200, "", "", None)
    assert second.rule == "caller-id.mobile" and second.warning.startswith("399 ")
    assert third.rule == "callee.dnc.bloctel"
    assert all(o.problem() is None for o in outcomes)


def outcome(expected: str, code: int, reason: str = "", warning: str = "") -> Outcome:
    return Outcome(1, "+33162000001", "+33612000001", expected, code, reason, warning, "match")


def test_problem_names_a_wrong_code_or_rule() -> None:
    reason = 'SIP;cause=603;text="callee.consent"'
    assert outcome("relay", 603, reason).problem() is not None
    assert outcome("403 callee.consent", 603, reason).problem() is not None
    assert outcome("603 callee.dnc", 603, reason).problem() is not None
    assert outcome("603 callee.consent", 603, reason).problem() is None
    assert outcome("603 callee", 603, reason).problem() is None  # a family prefix matches
    assert outcome("603 callee.con", 603, reason).problem() is not None  # but not half a word
    assert outcome("603", 603).problem() is None
    assert outcome("603 callee.*", 603, reason).problem() is None
    # the rule may be named by the Warning alone
    assert outcome("403 caller-id", 403, "", '399 h "caller-id.not-npv: From +33140000000"').problem() is None


def test_csv_round_trip(tmp_path: Path) -> None:
    cases = [CallCase("+33162000001", "+33612000001", "relay"),
             CallCase("anonymous", "0612", "403 caller-id")]
    path = write_calls_csv(tmp_path / "c.csv", cases)
    assert path.read_text().splitlines()[0] == "SEQUENTIAL"
    assert read_calls_csv(path) == cases


def test_metric_sum_adds_matching_samples_only() -> None:
    text = (
        "# HELP sipfilter_active_dialogs Dialogs in progress\n"
        "# TYPE sipfilter_active_dialogs gauge\n"
        'sipfilter_active_dialogs{trunk="dialer"} 2.0\n'
        'sipfilter_active_dialogs{trunk="other"} 1.0\n'
        "sipfilter_active_dialogs_total 7\n"
    )
    assert metric_sum(text, "sipfilter_active_dialogs") == 3.0
    assert metric_sum(text, "sipfilter_active_dialogs", trunk="other") == 1.0
    assert metric_sum(text, "sipfilter_missing") is None


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([], 50) is None and percentile([7.0], 99) == 7.0
