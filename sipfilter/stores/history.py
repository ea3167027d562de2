"""The records behind objections (refusals, oppositions) and the full history of one (account, number), with
the pure rules both backends share: which refusal ends which consent, which records an undo names.

No I/O, no clock: the backends store and replicate; the CLI, the admin API and `sipfilter audit` read this.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sipfilter.stores.base import ConsentRecord, ContractRecord

# An undo names a record by its time to the second: what `show` prints and what a person types back.
UNDO_MATCH_S = 1.0


@dataclass(frozen=True, slots=True)
class Objection:
    """A refusal ("not now": the cooldown, and the end of the consents given before it) or an opposition
    ("never call me again") by the consumer `number` to the professional `account`."""

    account: str
    number: str  # E.164
    at: float  # when the consumer said it
    source: str = ""  # who recorded it: cli, api, dialer:<trunk>, migrated
    recorded_at: float | None = None  # when it was recorded (None: before sipfilter kept it)
    undone_at: float | None = None  # a mistaken record undone (it never counted)
    undo_reason: str = ""

    @property
    def active(self) -> bool:
        return self.undone_at is None


@dataclass(frozen=True, slots=True)
class UndoneConsent:
    """A consent recorded by mistake and undone: it never counted, and is kept as proof of the undo."""

    consent: ConsentRecord
    undone_at: float
    reason: str


@dataclass(frozen=True, slots=True)
class History:
    """Everything recorded for one consumer and one professional, oldest first in each table."""

    account: str
    number: str
    consents: tuple[ConsentRecord, ...]  # in effect (not undone); `revoked_at` is the consumer's withdrawal
    undone_consents: tuple[UndoneConsent, ...]
    contracts: tuple[ContractRecord, ...]
    refusals: tuple[Objection, ...]  # undone ones included
    oppositions: tuple[Objection, ...]  # undone ones included

    def refusal_times(self) -> tuple[float, ...]:
        return tuple(sorted(r.at for r in self.refusals if r.active))

    def opposed_since(self) -> float | None:
        return min((o.at for o in self.oppositions if o.active), default=None)

    def consent_in_force(self, at: float) -> ConsentRecord | None:
        """What `Store.consent_for` answers, from the history (the latest grant wins)."""
        best: ConsentRecord | None = None
        for r in self.consents:
            if r.granted_at <= at and (r.revoked_at is None or r.revoked_at > at) and (
                    best is None or r.granted_at >= best.granted_at):
                best = r
        return None if best is None else usable(best, self.refusal_times(), self.opposed_since(), at)

    def contract_in_force(self, at: float) -> ContractRecord | None:
        return latest_contract(self.contracts, at)

    def consent_end(self, consent: ConsentRecord) -> tuple[float, str] | None:
        """When and why `consent` stopped counting: the consumer's withdrawal (`revoked`), a refusal recorded
        at or after its grant (`refusal`), or an opposition (`opposition`); None while it still counts."""
        ends: list[tuple[float, str]] = []
        if consent.revoked_at is not None:
            ends.append((consent.revoked_at, "revoked"))
        refused = first_at_or_after(self.refusal_times(), consent.granted_at)
        if refused is not None:
            ends.append((refused, "refusal"))
        opposed = self.opposed_since()
        if opposed is not None:
            ends.append((max(opposed, consent.granted_at), "opposition"))
        return min(ends) if ends else None


def first_at_or_after(times: Sequence[float], start: float) -> float | None:
    """The first of the ascending `times` at or after `start`."""
    i = bisect_left(times, start)
    return times[i] if i < len(times) else None


def usable(consent: ConsentRecord, refusals: Sequence[float] | float | None, opposed: float | None,
           at: float) -> ConsentRecord | None:
    """`consent` (in force at `at` by its own dates) unless a refusal or an opposition ended it: a refusal at
    or after its grant and at or before `at` revokes it (a new consent, given after the refusal, is needed);
    an opposition at or before `at` ends every consent. Ascending refusal times, or one time."""
    if opposed is not None and opposed <= at:
        return None
    if refusals is None:
        return consent
    if isinstance(refusals, float | int):
        return None if consent.granted_at <= refusals <= at else consent
    refused = first_at_or_after(refusals, consent.granted_at)
    return None if refused is not None and refused <= at else consent


def latest_contract(contracts: Iterable[ContractRecord], at: float,
                    purpose: str | None = None) -> ContractRecord | None:  # fmt: skip
    best: ContractRecord | None = None
    for c in contracts:
        if c.in_force(at) and (purpose is None or purpose in c.scope) and (
                best is None or c.started_at >= best.started_at):  # fmt: skip
            best = c
    return best


def undo_targets(times: Sequence[float], at: float | None) -> list[float]:
    """The record times an undo names among `times` (of active records): those within UNDO_MATCH_S of
    `at`, or the latest when `at` is None."""
    if not times:
        return []
    if at is None:
        return [max(times)]
    return sorted({t for t in times if abs(t - at) < UNDO_MATCH_S})


def consent_undo_targets(consents: Iterable[ConsentRecord], proof: str | None,
                         granted_at: float | None) -> list[ConsentRecord]:
    """The consents (in effect) an undo names: those with `proof` and/or granted within UNDO_MATCH_S of
    `granted_at`; the latest granted when neither is given."""
    rows = list(consents)
    if proof is None and granted_at is None:
        latest = max((r.granted_at for r in rows), default=None)
        return [r for r in rows if r.granted_at == latest] if latest is not None else []
    return [r for r in rows if (proof is None or r.proof == proof)
            and (granted_at is None or abs(r.granted_at - granted_at) < UNDO_MATCH_S)]
