"""What a decision rested on, for the audit line: the consent or contract the rules consulted and the version
of each list in force. Read after the rules ran, from the decision's own lookups; never changes the verdict.
"""

from __future__ import annotations

import logging

from sipfilter.policy.lists import Lookups
from sipfilter.policy.verdict import Decision
from sipfilter.stores.base import Store

log = logging.getLogger(__name__)


def attach(decision: Decision, look: Lookups, store: Store, list_names: tuple[str, ...]) -> Decision:
    """Fill `decision.lists`, `.consent` and `.contract` (in-memory reads); a store failure leaves them
    empty rather than failing the call."""
    try:
        decision.lists = store.list_versions(list_names)
        decision.consent = look.consent_seen()
        if look.contract_seen():
            decision.contract = store.contract_for(look.account, look.number, look.at, look.purpose)
    except Exception as exc:  # the verdict stands; the audit line then lacks the proof fields
        log.warning("proof fields of the decision not available: %s: %s", type(exc).__name__, exc)
    return decision
