#!/usr/bin/env python3
"""Per-call costs of the observers on the call path: the decision audit line and the metrics events of one
relayed call. Prints µs per call (process CPU time, best of --repeat); asserts nothing.

    .venv/bin/python bench/hotpath.py [--calls 100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sipfilter import audit, metrics  # noqa: E402
from sipfilter.config import AuditConfig  # noqa: E402
from sipfilter.policy.facts import CallFacts  # noqa: E402
from sipfilter.policy.numbers import Number  # noqa: E402
from sipfilter.policy.verdict import Decision, Outcome, Verdict  # noqa: E402

FACTS = CallFacts(
    trunk="dialer", at=1789574400.123, caller=Number("0162123456", "+33162123456", "e164"),
    asserted=(Number("tel:+33163000000", "+33163000000", "e164"),), privacy=frozenset(),
    callee=Number("0699999999", "+33699999999", "e164"), call_id="a84b4c76e66710@dialer.example",
)  # fmt: skip
DECISION = Decision(
    Verdict("reject", 603, "callee.dnc.bloctel", "callee is on a do-not-call list"),
    {"caller_id.format": Outcome("pass", ""), "hours.window": Outcome("pass", ""),
     "callee.dnc.bloctel": Outcome("fail", "on bloctel")},
    False, True, "fr-2026.11-1",
)  # fmt: skip


def per_call(fn: Callable[[], object], calls: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, time.process_time() - t)
    return best / calls * 1e6


def relayed_call(obs: metrics.PrometheusObserver) -> Callable[[], None]:
    """The observer events of one relayed call (INVITE … 200, BYE … 200), as the B2BUA reports them."""

    def call() -> None:
        obs.invite("dialer", "udp")
        obs.dialogs("dialer", 1)
        obs.response("dialer", "sent", 100)
        obs.decision("dialer", "allow", "", 3e-5)
        obs.relayed("dialer")
        for status in (100, 180, 200):
            obs.response("dialer", "received", status)
        obs.response("dialer", "sent", 180)
        obs.response("dialer", "sent", 200)
        obs.answered("dialer")
        obs.invite_final("dialer", 0.01)
        obs.response("dialer", "received", 200)
        obs.response("dialer", "sent", 200)
        obs.dialogs("dialer", -1)

    return call


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--calls", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()
    generic = audit._ENCODER

    def generic_line() -> bytes:
        return (generic.encode(audit.decision_record(FACTS, DECISION, "acme", "enforce")) + "\n").encode()

    print(f"audit line, generic json encoder : {per_call(generic_line, a.calls, a.repeat):6.2f} µs")
    line = lambda: audit.encode_decision(FACTS, DECISION, "acme", "enforce")  # noqa: E731
    print(f"audit line, template             : {per_call(line, a.calls, a.repeat):6.2f} µs")
    with tempfile.TemporaryDirectory() as tmp:
        log = audit.AuditLog(AuditConfig(Path(tmp) / "a.jsonl", 1 << 40, 1, "keep-relaying", "never"))
        write = lambda: log.log_decision(FACTS, DECISION, "acme", "enforce")  # noqa: E731
        print(f"audit log_decision (line + write): {per_call(write, a.calls, a.repeat):6.2f} µs")
        log.close()
    obs = metrics.PrometheusObserver(metrics.CallCounters())
    print(f"metrics, one relayed call (15 ev): {per_call(relayed_call(obs), a.calls, a.repeat):6.2f} µs")


if __name__ == "__main__":
    main()
