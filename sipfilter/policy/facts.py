"""CallFacts: the plain data the policy engine decides on (trunk, numbers, time, identity headers).

Built once per INVITE by `PolicyEngine.facts_from_request` (or by `sipfilter check`); no SIP parsing here.
"""

from __future__ import annotations

from dataclasses import dataclass

from sipfilter.policy.numbers import Number


@dataclass(frozen=True, slots=True)
class CallFacts:
    trunk: str
    at: float  # epoch seconds of the decision
    caller: Number  # From
    asserted: tuple[Number, ...]  # every P-Asserted-Identity value
    privacy: frozenset[str]  # Privacy header values, lower-case
    callee: Number  # Request-URI user (To when the Request-URI has no number)
    call_id: str = ""
