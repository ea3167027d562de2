"""CallFacts: the plain data the policy engine decides on (trunk, numbers, time, identity headers).

Built once per INVITE by `sipfilter.b2bua.facts` from the parsed request (and from its arguments by
`sipfilter check`, through the same code); no SIP parsing here.
"""

from __future__ import annotations

from dataclasses import dataclass

from sipfilter.policy.numbers import Number


@dataclass(frozen=True, slots=True, init=False)
class CallFacts:
    trunk: str
    at: float  # epoch seconds of the decision
    caller: Number  # From's URI (never its display name), as the B-leg presents it
    asserted: tuple[Number, ...]  # every P-Asserted-Identity value, as the B-leg presents them
    privacy: frozenset[str]  # Privacy header values, lower-case
    callee: Number  # the Request-URI's user part, exactly as the B-leg dials it (never another header)
    call_id: str
    # The callee's own IANA time zone when the dialer's CRM knows it (the trunk's `callee_zone_header`), as
    # given: the engine validates it. "" when not given.
    callee_zone: str

    def __init__(
        self,
        trunk: str,
        at: float,
        caller: Number,
        asserted: tuple[Number, ...],
        privacy: frozenset[str],
        callee: Number,
        call_id: str = "",
        callee_zone: str = "",
    ) -> None:
        # Written out so that mypyc compiles it (see sipfilter/compiled.py).
        object.__setattr__(self, "trunk", trunk)
        object.__setattr__(self, "at", at)
        object.__setattr__(self, "caller", caller)
        object.__setattr__(self, "asserted", asserted)
        object.__setattr__(self, "privacy", privacy)
        object.__setattr__(self, "callee", callee)
        object.__setattr__(self, "call_id", call_id)
        object.__setattr__(self, "callee_zone", callee_zone)
