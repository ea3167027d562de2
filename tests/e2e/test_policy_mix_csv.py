"""The shipped dialer CSV (sipp/csv/policy_mix.csv) agrees with the policy engine, checked through
`sipfilter check` on a store provisioned like the SIPp runs: no B2BUA involved.

Catches a rule-pack or CLI change that would make the carrier-facing CSV lie before any SIPp run does.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from sipfilter_provision import provision
from sipp_harness import (
    REPO,
    Outcome,
    SipfilterPorts,
    read_calls_csv,
    sipfilter_config,
    write_config,
)

from sipfilter import cli

pytestmark = pytest.mark.e2e

POLICY_MIX = REPO / "sipp" / "csv" / "policy_mix.csv"


def test_policy_mix_expectations_match_sipfilter_check(tmp_path: Path) -> None:
    config = write_config(tmp_path / "sipfilter.yaml",
                          sipfilter_config(tmp_path, SipfilterPorts(1, 2, 3), [4]))  # ports unused: no `run`
    provision(config, tmp_path)
    cases = read_calls_csv(POLICY_MIX)
    assert {c.expected.split()[0] for c in cases} >= {"relay", "403", "603"}
    problems = []
    for n, case in enumerate(cases, 1):
        # the same From / P-Asserted-Identity / Request-URI shapes dialer_uac.xml sends
        uri_from = f"<sip:{case.caller}@127.0.0.1:5062>"
        args = ["check", "--config", str(config), "--trunk", "dialer", "--from", uri_from, "--json",
                "--pai", f"<sip:{case.caller}@127.0.0.1>", "--to", f"sip:{case.callee}@127.0.0.1:5060"]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):  # the CLI in-process: 11 interpreter starts cost ~20 s
            status = cli.main(args)
        assert status in (0, 1), f"sipfilter {' '.join(args)} exited {status}"
        decision = json.loads(out.getvalue())
        code = 200 if decision["action"] == "allow" else int(decision["status"])
        reason = f'SIP;cause={code};text="{decision["rule"]}"' if code != 200 else ""
        outcome = Outcome(n, case.caller, case.callee, case.expected, code, reason, "", "")
        if (problem := outcome.problem()) is not None:
            problems.append(problem)
    assert not problems, "\n".join(problems)
