"""Verdict, per-rule Outcome and Decision: what the engine answers and how it renders as SIP headers.

Pure data and formatting; rule logic lives in the rule modules, not here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from sipfilter.stores.base import ConsentRecord, ContractRecord

ALLOW = "allow"
REJECT = "reject"
PASS = "pass"
FAIL = "fail"
SKIP = "skip"

_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def _quoted(text: str) -> str:
    """A quoted-string body: no CR/LF or controls (header injection), quotes and backslashes escaped."""
    text = _UNSAFE.sub(" ", text)
    return text.replace("\\", "\\\\").replace('"', '\\"')


@dataclass(frozen=True, slots=True, init=False)
class Verdict:
    action: str  # "allow" | "reject"
    status: int  # SIP status when rejecting (403/603/608); 0 when allowing
    rule: str  # rule id that decided ("" when allowed; the would-be rule in monitor mode)
    reason: str  # human reason

    def __init__(self, action: str, status: int, rule: str, reason: str) -> None:
        # Written out so that mypyc compiles it (see sipfilter/compiled.py).
        object.__setattr__(self, "action", action)
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "rule", rule)
        object.__setattr__(self, "reason", reason)

    @property
    def allowed(self) -> bool:
        return self.action == ALLOW

    def reason_header(self) -> str:
        """RFC 3326 Reason value naming the rule, e.g. SIP;cause=603;text="callee.dnc.bloctel"."""
        return f'SIP;cause={self.status};text="{_quoted(self.rule)}"'

    def warning_header(self, host: str) -> str:
        """RFC 3261 §20.43 Warning value: 399 <host> "<human reason>"."""
        host = _UNSAFE.sub("", host).replace(" ", "") or "sipfilter"
        return f'399 {host} "{_quoted(self.reason)}"'


@dataclass(frozen=True, slots=True, init=False)
class Outcome:
    result: str  # pass | fail | skip
    reason: str

    def __init__(self, result: str, reason: str) -> None:
        # Written out so that mypyc compiles it (see sipfilter/compiled.py).
        object.__setattr__(self, "result", result)
        object.__setattr__(self, "reason", reason)


# Not frozen: policy/proof.py fills in what the decision rested on after the rules ran.
@dataclass(slots=True, init=False)
class Decision:
    verdict: Verdict
    outcomes: Mapping[str, Outcome]  # rule id → outcome, in evaluation order
    monitored: bool  # monitor mode relayed a call it would have rejected (verdict.rule names why)
    attempt_recorded: bool  # the frequency counter recorded this call attempt
    rule_pack_version: str
    alerts: tuple[str, ...]  # non-blocking problems (stale list with allow-and-alert, …)
    # What the decision rested on (policy/proof.py): list versions in force, the consent or contract used.
    lists: Mapping[str, int] | None
    consent: ConsentRecord | None
    contract: ContractRecord | None

    def __init__(
        self,
        verdict: Verdict,
        outcomes: Mapping[str, Outcome],
        monitored: bool,
        attempt_recorded: bool,
        rule_pack_version: str = "",
        alerts: tuple[str, ...] = (),
        lists: Mapping[str, int] | None = None,
        consent: ConsentRecord | None = None,
        contract: ContractRecord | None = None,
    ) -> None:
        # Written out so that mypyc compiles it (see sipfilter/compiled.py).
        self.verdict = verdict
        self.outcomes = outcomes
        self.monitored = monitored
        self.attempt_recorded = attempt_recorded
        self.rule_pack_version = rule_pack_version
        self.alerts = alerts
        self.lists = lists
        self.consent = consent
        self.contract = contract

    @property
    def failed(self) -> list[str]:
        return [rule for rule, o in self.outcomes.items() if o.result == FAIL]
