"""The write side shared by both backends (imports, consents, contracts, refusals) and small shared helpers.

Used by the CLI and the admin API, never by the policy engine (which only reads, through `base.Store`).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from typing import Protocol

from sipfilter.stores.base import ConsentRecord, ContractRecord, ListInfo, Store, StoreUnavailable
from sipfilter.stores.history import History, Objection
from sipfilter.stores.importer import SourceInfo
from sipfilter.stores.numberset import NumberSet

log = logging.getLogger("sipfilter.stores")

_LIST_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class StoreError(ValueError):
    """A request the store refuses (bad list name, unknown list): a caller's mistake, not an outage."""


def check_list_name(name: str) -> str:
    if not _LIST_NAME_RE.match(name):
        raise StoreError(f"bad list name {name!r}: letters, digits, '_', '.', '-' (max 64), not starting with"
                         " a punctuation mark")
    return name


_SCOPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


def parse_scope(value: object) -> tuple[str, ...]:
    """A contract scope from a list of purposes or a comma/space-separated text; raises StoreError."""
    items = value if isinstance(value, list | tuple) else str(value or "").replace(",", " ").split()
    out = []
    for item in items:
        if not isinstance(item, str) or not _SCOPE_RE.match(item):
            raise StoreError(f"bad contract scope item {item!r}: letters, digits, '_', '.', ':', '-' "
                             "(max 64)")
        out.append(item)
    return tuple(dict.fromkeys(out))


def scope_text(scope: tuple[str, ...]) -> str | None:
    """How a scope is stored (SQLite column, Redis event): purposes separated by spaces, None when empty."""
    return " ".join(scope) or None


def consent_in_force(records: tuple[ConsentRecord, ...], at: float) -> ConsentRecord | None:
    """The latest grant at or before `at` not revoked at `at`."""
    best: ConsentRecord | None = None
    for r in records:
        if r.granted_at <= at and (r.revoked_at is None or r.revoked_at > at) and (
                best is None or r.granted_at > best.granted_at):
            best = r
    return best


class WritableStore(Store, Protocol):
    """What `open_store` returns: the read interface plus the writes of the CLI and the admin API."""

    async def put_list(self, name: str, numbers: NumberSet, source: SourceInfo,
                       imported_at: float | None = None) -> ListInfo:
        """Store `numbers` as the new version of `name` and switch to it atomically."""
        ...

    async def delete_list(self, name: str) -> bool: ...

    def list_numbers(self, name: str) -> NumberSet:
        """The current version (KeyError when none); for export and --add/--remove."""
        ...

    async def refresh(self) -> None:
        """Pick up changes made by other processes or instances now (the watcher does it periodically)."""
        ...

    async def add_consent(self, record: ConsentRecord) -> None: ...

    async def add_consents(self, records: Sequence[ConsentRecord]) -> None:
        """Bulk add (imports): one transaction / pipeline."""
        ...

    async def revoke_consent(self, account: str, number: str, at: float) -> int:
        """Revoke the consents in force; returns how many were revoked."""
        ...

    async def consents(self, account: str, number: str) -> tuple[ConsentRecord, ...]:
        """Full history, oldest first (compliance proof)."""
        ...

    async def add_contract(self, record: ContractRecord) -> None: ...

    async def end_contract(self, account: str, number: str, at: float) -> int: ...

    async def contracts(self, account: str, number: str) -> tuple[ContractRecord, ...]: ...

    # --- objections: refusals and oppositions, and undoing mistaken records ---
    async def record_refusal(self, account: str, number: str, at: float, source: str = "") -> None:
        """The consumer refused during a call: the cooldown starts, and every consent given at or before
        `at` stops counting (a new consent is needed)."""
        ...

    async def undo_refusal(self, account: str, number: str, at: float | None, reason: str,
                           undone_at: float) -> tuple[Objection, ...]:
        """Undo a mistaken refusal (the one at `at`, to the second, or the latest): it stops counting, its
        record stays with the undo. Returns the refusals undone (none: nothing matched)."""
        ...

    async def add_opposition(self, account: str, number: str, at: float, source: str = "") -> None:
        """The consumer opposed every call from `account`, forever ("never call me again")."""
        ...

    async def undo_opposition(self, account: str, number: str, reason: str,
                              undone_at: float) -> tuple[Objection, ...]:
        """Undo the oppositions in force (a mistaken record). Returns those undone."""
        ...

    async def undo_consent(self, account: str, number: str, proof: str | None, granted_at: float | None,
                           reason: str, undone_at: float) -> tuple[ConsentRecord, ...]:
        """Undo consents recorded by mistake (see history.consent_undo_targets): they never count again,
        unlike a revocation, which ends a consent that was real. Returns those undone."""
        ...

    async def history(self, account: str, number: str) -> History:
        """Everything recorded for (account, number), undone records included (compliance proof)."""
        ...

    async def list_history(self, name: str) -> tuple[ListInfo, ...]:
        """Every version of list `name` ever imported (deleted lists included), oldest first."""
        ...


# The `operation` label of sipfilter_store_errors_total: what was being done when the store failed.
OPERATIONS = (
    "attempt",  # the call path's check-and-record of a frequency attempt
    "attempt_write",  # writing recorded attempts behind (embedded)
    "sync",  # catching up with lists and records other processes changed (watcher, refresh, Redis sync)
    "list_write",  # importing or deleting a list
    "record_write",  # consents, contracts, refusals written through the CLI or the admin API
    "read",  # counts and histories read for the CLI and the admin API
    "other",
)


class Health:
    """Logs an outage once when it starts and once when it ends, and counts errors (not once per call) by
    operation (OPERATIONS), so the NOC sees whether the call path, the write-behind or a sync is failing."""

    __slots__ = ("by_operation", "down_since", "errors", "incidents", "what")

    def __init__(self, what: str):
        self.what = what
        self.down_since: float | None = None
        self.errors = 0
        self.by_operation: dict[str, int] = dict.fromkeys(OPERATIONS, 0)
        self.incidents = 0

    def failed(self, exc: BaseException, operation: str = "other") -> StoreUnavailable:
        self.errors += 1
        self.by_operation[operation] = self.by_operation.get(operation, 0) + 1
        if self.down_since is None:
            self.down_since = time.time()
            self.incidents += 1
            log.error("%s unavailable (%s): %s (further errors are not logged until it recovers)",
                      self.what, operation, exc)
        return StoreUnavailable(f"{self.what} unavailable: {exc}")

    def ok(self) -> None:
        if self.down_since is not None:
            log.warning("%s available again after %.1f s (%d store errors since start)",
                        self.what, time.time() - self.down_since, self.errors)
            self.down_since = None

    @property
    def up(self) -> bool:
        return self.down_since is None
