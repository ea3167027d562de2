"""The permanent opposition rule: a consumer who told a professional "never call me again" is never called by
it again, whatever the trunk, contract or consent. Reads the store (in memory); never writes.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sipfilter.policy.verdict import FAIL, PASS, Outcome
from sipfilter.stores.base import Store

OPPOSITION_RULE = "callee.opposition"
_PASS = Outcome(PASS, "")


def check_opposition(store: Store, account: str, number: str, at: float, out: dict[str, Outcome]) -> str:
    since = store.opposition_for(account, number, at)
    if since is None:
        out[OPPOSITION_RULE] = _PASS
        return ""
    when = datetime.fromtimestamp(since, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    out[OPPOSITION_RULE] = Outcome(FAIL, f"{number} opposed every call from account {account!r} on {when}")
    return OPPOSITION_RULE
