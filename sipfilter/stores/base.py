"""The one small interface where the policy engine meets the stores (embedded or Redis).

Numbers cross this interface as E.164 strings ("+33612345678"). Nothing here does I/O itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


class StoreUnavailable(Exception):
    """The backing store (Redis, disk) cannot answer now; the trunk's `on_store_error` decides."""


@dataclass(frozen=True, slots=True)
class ListInfo:
    """What a loaded list is, for the `list.stale` rule, metrics and compliance proof."""

    name: str
    version: int  # increases at every switch
    count: int  # numbers in the list
    imported_at: float  # epoch seconds of the import that produced this version
    source_name: str  # file name the import read
    source_size: int  # bytes
    source_sha256: str


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    account: str
    number: str  # E.164
    granted_at: float
    proof: str  # reference to the proof (recording id, form id, …)
    revoked_at: float | None = None
    # Hours the consumer agreed to be called at, if they differ from the law's default; free text
    # such as "mon-sat 09:00-21:00", interpreted by the policy engine.
    hours: str | None = None
    # The consumer's own IANA time zone when known (e.g. "Indian/Reunion"): the hours rules then also apply
    # there, besides the zone(s) of the number.
    time_zone: str | None = None


@dataclass(frozen=True, slots=True)
class ContractRecord:
    account: str
    number: str  # E.164
    started_at: float
    ended_at: float | None = None
    reference: str = ""
    # The contract's object as purposes (e.g. ("energy-supply",)): it exempts calls from trunks whose
    # `purpose` it names. Empty: unknown object, which exempts only trunks that declare no purpose.
    scope: tuple[str, ...] = ()

    def in_force(self, at: float) -> bool:
        return self.started_at <= at and (self.ended_at is None or self.ended_at > at)


@dataclass(frozen=True, slots=True)
class AttemptDecision:
    """Outcome of an atomic check-and-record of one call attempt."""

    allowed: bool
    attempts_in_window: int  # attempts counted in the window, including this one when allowed
    refused_at: float | None  # last recorded refusal by the consumer, if any


class Store(Protocol):
    """Lists are answered from local memory (sync, hot path); counters may be remote (async)."""

    # --- lists (do-not-call, authorised caller IDs, …): in-memory, microseconds ---
    def list_contains(self, list_name: str, number: str) -> bool:
        """True when `number` (E.164) is in the current version of `list_name`.

        Raises KeyError when no such list has ever been imported (a configuration error)."""
        ...

    def list_info(self, list_name: str) -> ListInfo | None: ...

    def list_names(self) -> list[str]: ...

    def list_versions(self, names: tuple[str, ...]) -> Mapping[str, int]:
        """The current version of each imported list of `names` (for the audit line): a mapping to treat as
        read-only, the same object until a list changes."""
        ...

    # --- consent, contracts and objections (per professional account) ---
    def consent_for(self, account: str, number: str, at: float) -> ConsentRecord | None:
        """The consent in force at `at`: granted before, not revoked, undone, or ended by a refusal or an
        opposition recorded at or after its grant and before `at`; or None."""
        ...

    def has_contract(self, account: str, number: str, at: float, purpose: str | None = None) -> bool:
        """A contract in progress between `account` and the consumer `number` at `at`; with `purpose`, only
        one whose scope names it (a contract without a scope then does not count)."""
        ...

    def contract_for(self, account: str, number: str, at: float,
                     purpose: str | None = None) -> ContractRecord | None:  # fmt: skip
        """The contract in progress at `at` (the latest started; with `purpose`, among those whose scope names
        it), or None: the proof of a contract basis."""
        ...

    def opposition_for(self, account: str, number: str, at: float) -> float | None:
        """When the consumer opposed every call from `account` ("never call me again"), if that opposition
        is in force at `at` (recorded for a time at or before `at`, not undone); else None."""
        ...

    # --- counters (shared between instances in the Redis backend): atomic ---
    async def check_and_record_attempt(
        self, account: str, number: str, now: float, cap: int, window_s: float, refusal_cooldown_s: float
    ) -> AttemptDecision:
        """Atomically: if there is no refusal within `refusal_cooldown_s` and fewer than `cap` attempts in
        the rolling `window_s`, record one attempt at `now` and allow; else record nothing and refuse.

        Raises StoreUnavailable when the counters cannot be reached."""
        ...

    async def attempts(self, account: str, number: str, now: float, window_s: float) -> int: ...

    async def record_refusal(self, account: str, number: str, at: float) -> None: ...

    async def last_refusal(self, account: str, number: str) -> float | None: ...

    async def close(self) -> None: ...
