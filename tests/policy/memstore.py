"""A small in-memory Store for policy tests and benchmarks (same semantics as the Store protocol).

Test helper only: no persistence, no locking beyond the event loop; `fail` makes every call raise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sipfilter.stores.base import AttemptDecision, ConsentRecord, ContractRecord, ListInfo, StoreUnavailable


@dataclass
class MemoryStore:
    lists: dict[str, set[str]] = field(default_factory=dict)
    infos: dict[str, ListInfo] = field(default_factory=dict)
    consents: list[ConsentRecord] = field(default_factory=list)
    contracts: set[tuple[str, str]] = field(default_factory=set)
    # (account, number) → the purposes its contract names (a contract without an entry has no scope).
    contract_scopes: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    attempt_log: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    refusals: dict[tuple[str, str], float] = field(default_factory=dict)
    oppositions: dict[tuple[str, str], float] = field(default_factory=dict)
    fail: bool = False  # simulate an unreachable store
    calls: int = 0  # check_and_record_attempt calls

    def _check(self) -> None:
        if self.fail:
            raise StoreUnavailable("simulated outage")

    def add_list(self, name: str, numbers: set[str] | list[str], imported_at: float | None = None) -> None:
        self.lists[name] = set(numbers)
        self.infos[name] = ListInfo(
            name,
            len(self.infos) + 1,
            len(self.lists[name]),
            time.time() if imported_at is None else imported_at,
            f"{name}.txt",
            0,
            "",
        )

    def list_contains(self, list_name: str, number: str) -> bool:
        self._check()
        if list_name not in self.lists:
            raise KeyError(list_name)
        return number in self.lists[list_name]

    def list_info(self, list_name: str) -> ListInfo | None:
        self._check()
        return self.infos.get(list_name)

    def list_names(self) -> list[str]:
        return sorted(self.lists)

    def list_versions(self, names: tuple[str, ...]) -> dict[str, int]:
        self._check()
        return {n: self.infos[n].version for n in names if n in self.infos}

    def consent_for(self, account: str, number: str, at: float) -> ConsentRecord | None:
        self._check()
        for c in self.consents:
            if (
                c.account == account
                and c.number == number
                and c.granted_at <= at
                and (c.revoked_at is None or c.revoked_at > at)
            ):
                return c
        return None

    def has_contract(self, account: str, number: str, at: float, purpose: str | None = None) -> bool:
        self._check()
        key = (account, number)
        return key in self.contracts and (purpose is None or purpose in self.contract_scopes.get(key, ()))

    def contract_for(self, account: str, number: str, at: float,
                     purpose: str | None = None) -> ContractRecord | None:  # fmt: skip
        self._check()
        if not self.has_contract(account, number, at, purpose):
            return None
        return ContractRecord(account, number, 0.0, None, "K-test")

    def opposition_for(self, account: str, number: str, at: float) -> float | None:
        self._check()
        since = self.oppositions.get((account, number))
        return since if since is not None and since <= at else None

    async def check_and_record_attempt(
        self, account: str, number: str, now: float, cap: int, window_s: float, refusal_cooldown_s: float
    ) -> AttemptDecision:
        self._check()
        self.calls += 1
        key = (account, number)
        refused = self.refusals.get(key)
        recent = [t for t in self.attempt_log.get(key, []) if now - t < window_s]
        if refused is not None and now - refused < refusal_cooldown_s:
            return AttemptDecision(False, len(recent), refused)
        if len(recent) >= cap:
            return AttemptDecision(False, len(recent), refused)
        recent.append(now)
        self.attempt_log[key] = recent
        return AttemptDecision(True, len(recent), refused)

    async def attempts(self, account: str, number: str, now: float, window_s: float) -> int:
        self._check()
        return len([t for t in self.attempt_log.get((account, number), []) if now - t < window_s])

    async def record_refusal(self, account: str, number: str, at: float) -> None:
        self._check()
        self.refusals[(account, number)] = at

    async def last_refusal(self, account: str, number: str) -> float | None:
        self._check()
        return self.refusals.get((account, number))

    async def close(self) -> None:
        return None
