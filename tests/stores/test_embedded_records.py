"""The embedded store's in-memory copy of its records: what the CLI (another connection) writes reaches a
running proxy through the change log, the proxy's own writes answer at once, counts survive restarts, and
the copy answers exactly what SQLite answers (rolling-window boundaries included).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipfilter.stores import call_path, embedded
from sipfilter.stores.base import ConsentRecord, StoreUnavailable
from sipfilter.stores.embedded import EmbeddedStore
from sipfilter.stores.writable import ContractRecord

A, N1, N2 = "acme", "+33612345678", "+33612345679"
T0 = 1_790_000_000.0
DAY = 86400.0


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[EmbeddedStore]:
    """A store opened as `sipfilter run` opens it (records preloaded, watcher polling), fast poll."""
    s = await EmbeddedStore.open(tmp_path / "data", poll_interval=0.02)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def cli(tmp_path: Path) -> AsyncIterator[EmbeddedStore]:
    """Another connection to the same file, as the CLI opens it."""
    (tmp_path / "data").mkdir(exist_ok=True)
    s = await EmbeddedStore.open(tmp_path / "data", watch=False)
    try:
        yield s
    finally:
        await s.close()


async def eventually(check: Callable[[], bool]) -> bool:
    for _ in range(500):  # up to 10 s on a loaded machine; usually one or two polls
        if check():
            return True
        await asyncio.sleep(0.02)
    return False


async def test_the_proxy_copy_is_complete_and_the_cli_reads_on_demand(
    proxy: EmbeddedStore, cli: EmbeddedStore
) -> None:
    assert proxy._records.complete and not cli._records.complete
    assert cli.consent_for(A, N1, T0) is None and (A, N1) in cli._records.consents  # read once, then kept


async def test_cli_consent_grant_and_revoke_reach_the_running_proxy(
    proxy: EmbeddedStore, cli: EmbeddedStore
) -> None:
    await cli.add_consent(ConsentRecord(A, N1, T0, "form-1"))
    assert await eventually(lambda: proxy.consent_for(A, N1, T0 + 1) is not None)
    assert await cli.revoke_consent(A, N1, T0 + DAY) == 1
    assert await eventually(lambda: proxy.consent_for(A, N1, T0 + 2 * DAY) is None)
    assert proxy.consent_for(A, N1, T0 + 1) is not None  # still in force before the revocation
    assert proxy.consent_for(A, N2, T0 + 1) is None


async def test_cli_contracts_and_refusals_reach_the_running_proxy(
    proxy: EmbeddedStore, cli: EmbeddedStore
) -> None:
    await cli.add_contract(ContractRecord(A, N1, T0, None, "C-1"))
    await cli.record_refusal(A, N2, T0)
    assert await eventually(lambda: proxy.has_contract(A, N1, T0 + 1))
    d = await proxy.check_and_record_attempt(A, N2, T0 + DAY, 4, 30 * DAY, 60 * DAY)
    assert (d.allowed, d.refused_at) == (False, T0)
    await cli.end_contract(A, N1, T0 + DAY)
    assert await eventually(lambda: not proxy.has_contract(A, N1, T0 + 2 * DAY))


async def test_the_proxys_own_writes_answer_at_once(proxy: EmbeddedStore, cli: EmbeddedStore) -> None:
    proxy.poll_interval = 3600.0  # no help from the watcher (it is already sleeping its first 20 ms)
    await asyncio.sleep(0.05)
    await proxy.add_consent(ConsentRecord(A, N1, T0, "api"))
    assert proxy.consent_for(A, N1, T0 + 1) is not None
    await proxy.revoke_consent(A, N1, T0 + 1)
    assert proxy.consent_for(A, N1, T0 + 2) is None
    await proxy.add_contract(ContractRecord(A, N2, T0))
    assert proxy.has_contract(A, N2, T0 + 1)
    await proxy.record_refusal(A, N2, T0)
    assert (await proxy.check_and_record_attempt(A, N2, T0 + 1, 4, 30 * DAY, 60 * DAY)).allowed is False
    # The CLI's copy, read before the change, catches up on refresh (a consent given after the refusal).
    await cli.add_consents([ConsentRecord(A, N2, T0 + 1, "bulk")])
    assert cli.consent_for(A, N1, T0 + 2) is None and cli.consent_for(A, N2, T0 + 2) is not None


async def test_a_bulk_import_is_applied_in_chunks(
    proxy: EmbeddedStore, cli: EmbeddedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded, "CATCH_UP_CHUNK", 7)
    numbers = [f"+3361234{i:04d}" for i in range(50)]
    await cli.add_consents([ConsentRecord(A, n, T0, f"p{i}") for i, n in enumerate(numbers)])
    await proxy.refresh()
    assert all(proxy.consent_for(A, n, T0 + 1) is not None for n in numbers)
    assert proxy._seen == cli._seen


async def test_a_handle_behind_a_pruned_change_log_reads_the_tables_again(tmp_path: Path) -> None:
    data = tmp_path / "data"
    idle = await EmbeddedStore.open(data, watch=False)  # an incomplete copy
    idle_full = await EmbeddedStore.open(data, watch=False, preload=True, flush_interval=3600.0)  # complete
    writer = await EmbeddedStore.open(data, watch=False, preload=True)
    try:
        assert idle.consent_for(A, N1, T0 + 1) is None  # cached: "no consent"
        assert (await idle_full.check_and_record_attempt(A, N1, T0, 4, 30 * DAY, 0.0)).allowed  # not written
        await writer.add_consent(ConsentRecord(A, N1, T0, "p"))
        await writer.add_contract(ContractRecord(A, N2, T0))
        # As a proxy does: the log is gone before the idle handles read it.
        writer._prune_changes(writer._db, writer._seen)
        assert writer._db.execute("SELECT count(*) FROM changes").fetchone()[0] == 0
        await idle.refresh()
        await idle_full.refresh()
        for s in (idle, idle_full):
            assert s.consent_for(A, N1, T0 + 1) is not None and s.has_contract(A, N2, T0 + 1)
        assert idle_full._records.attempts[(A, N1)] == [T0]  # the re-read keeps what is not written yet
    finally:
        for s in (idle, idle_full, writer):
            await s.close()


async def test_counts_survive_restart_including_unwritten_attempts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    s = await EmbeddedStore.open(data, flush_interval=3600.0)
    for i in range(3):
        assert (await s.check_and_record_attempt(A, N1, T0 + i, 4, 30 * DAY, 0.0)).allowed
    assert len(s._pending) == 3
    await s.close()  # writes what was pending
    s = await EmbeddedStore.open(data)
    try:
        assert s._records.attempts[(A, N1)] == [T0, T0 + 1, T0 + 2]
        d = await s.check_and_record_attempt(A, N1, T0 + 10, 4, 30 * DAY, 0.0)
        assert (d.allowed, d.attempts_in_window) == (True, 4)
        assert not (await s.check_and_record_attempt(A, N1, T0 + 11, 4, 30 * DAY, 0.0)).allowed
    finally:
        await s.close()


async def test_rolling_window_boundary_is_strict_as_in_sql(proxy: EmbeddedStore) -> None:
    w = 30 * DAY
    assert (await proxy.check_and_record_attempt(A, N1, T0, 1, w, 0.0)).allowed
    assert not (await proxy.check_and_record_attempt(A, N1, T0 + w - 0.5, 1, w, 0.0)).allowed
    d = await proxy.check_and_record_attempt(A, N1, T0 + w, 1, w, 0.0)  # `at > now - window`: T0 is out
    assert (d.allowed, d.attempts_in_window) == (True, 1)
    assert await proxy.attempts(A, N1, T0 + w, w) == 1  # the SQL count agrees
    # A clock that went back is still counted in order.
    assert (await proxy.check_and_record_attempt(A, N2, T0 + 10, 9, w, 0.0)).allowed
    assert (await proxy.check_and_record_attempt(A, N2, T0 + 5, 9, w, 0.0)).allowed
    assert proxy._records.attempts[(A, N2)] == [T0 + 5, T0 + 10]


@settings(max_examples=25, deadline=None)
@given(
    times=st.lists(st.integers(0, 90), min_size=1, max_size=25),
    cap=st.integers(1, 6),
    window_days=st.integers(1, 40),
)
def test_memory_counts_equal_sql_counts(tmp_path_factory: pytest.TempPathFactory, times: list[int], cap: int,
                                        window_days: int) -> None:
    async def scenario() -> None:
        s = await EmbeddedStore.open(tmp_path_factory.mktemp("d"), watch=False, preload=True)
        try:
            w = window_days * DAY
            for day in times:
                now = T0 + day * DAY
                before = await s.attempts(A, N1, now, w)  # SQL, after writing what is pending
                d = await s.check_and_record_attempt(A, N1, now, cap, w, 0.0)
                assert d.allowed == (before < cap)
                assert d.attempts_in_window == (before + 1 if d.allowed else before)
        finally:
            await s.close()

    asyncio.run(scenario())


async def test_prune_drops_old_attempts_from_memory_and_sqlite(proxy: EmbeddedStore) -> None:
    w = 30 * DAY
    await proxy.check_and_record_attempt(A, N1, T0, 9, w, 0.0)
    await proxy.check_and_record_attempt(A, N2, T0 + 20 * DAY, 9, w, 0.0)
    await proxy.check_and_record_attempt(A, N2, T0 + 40 * DAY, 9, w, 0.0)
    # The wall clock is far from these times: the cut is relative to the latest attempt, not to time.time().
    await proxy._prune(now=T0 + 1000 * DAY)
    assert (A, N1) not in proxy._records.attempts
    assert proxy._records.attempts[(A, N2)] == [T0 + 20 * DAY, T0 + 40 * DAY]
    assert await proxy.attempts(A, N1, T0 + 40 * DAY, 1000 * DAY) == 0
    assert await proxy.attempts(A, N2, T0 + 40 * DAY, 1000 * DAY) == 2


async def test_attempts_stay_counted_while_sqlite_is_locked(tmp_path: Path) -> None:
    data = tmp_path / "data"
    s = await EmbeddedStore.open(data, watch=False, preload=True, busy_timeout_ms=1, flush_interval=0.0)
    locker = sqlite3.connect(data / embedded.DB_NAME, isolation_level=None)
    try:
        locker.execute("BEGIN IMMEDIATE")  # the CLI holding the write lock
        for i in range(3):
            assert (await s.check_and_record_attempt(A, N1, T0 + i, 3, 30 * DAY, 0.0)).allowed
        assert await eventually(lambda: not s.health.up)  # the writer thread tried, and failed
        assert await eventually(lambda: s._write_done is None)
        assert len(s._pending) == 3  # kept, oldest first
        assert not (await s.check_and_record_attempt(A, N1, T0 + 5, 3, 30 * DAY, 0.0)).allowed
        locker.execute("COMMIT")
        s._hand_off()  # what the watcher does at its next poll
        assert await eventually(lambda: s._unwritten() == 0 and s.health.up)
        assert await s.attempts(A, N1, T0 + 10, 30 * DAY) == 3
    finally:
        locker.close()
        await s.close()


async def test_calls_get_store_errors_once_too_many_attempts_are_unwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(call_path, "MAX_PENDING", 2)
    data = tmp_path / "data"
    s = await EmbeddedStore.open(data, watch=False, preload=True, busy_timeout_ms=1, flush_interval=0.0)
    locker = sqlite3.connect(data / embedded.DB_NAME, isolation_level=None)
    try:
        locker.execute("BEGIN IMMEDIATE")
        for i in range(2):
            await s.check_and_record_attempt(A, N1, T0 + i, 9, 30 * DAY, 0.0)
        assert await eventually(lambda: len(s._pending) == 2 and s._write_done is None)
        with pytest.raises(StoreUnavailable):
            await s.check_and_record_attempt(A, N1, T0 + 3, 9, 30 * DAY, 0.0)
        locker.execute("COMMIT")
    finally:
        locker.close()
        await s.close()
    s = await EmbeddedStore.open(data, watch=False)
    try:
        assert await s.attempts(A, N1, T0 + 10, 30 * DAY) == 2  # the refused call recorded nothing
    finally:
        await s.close()


async def test_a_reopened_proxy_answers_every_consent_history(tmp_path: Path) -> None:
    """The load keeps one record per number, a tuple for several: re-grants after a revocation, two grants."""
    data = tmp_path / "data"
    s = await EmbeddedStore.open(data, watch=False)
    await s.add_consents([ConsentRecord(A, N1, T0, "crm"),
                          ConsentRecord(A, N2, T0, "crm", hours="sat 10:00-12:00")])
    await s.revoke_consent(A, N1, T0 + DAY)
    await s.add_consent(ConsentRecord(A, N1, T0 + 3 * DAY, "form-2"))
    await s.close()
    proxy = await EmbeddedStore.open(data)
    try:
        def proof(at: float) -> str | None:
            record = proxy.consent_for(A, N1, at)
            return None if record is None else record.proof

        assert [proof(T0 + 0.5 * DAY), proof(T0 + 2 * DAY), proof(T0 + 4 * DAY)] == ["crm", None, "form-2"]
        two = proxy.consent_for(A, N2, T0 + 1)
        assert two is not None and two.hours == "sat 10:00-12:00" and proxy.consent_for(A, N2, T0 - 1) is None
        assert proxy.consent_for("other", N2, T0 + 1) is None
        # The texts SQLite returns once per row are shared between rows.
        one = proxy.consent_for(A, N1, T0 + 0.5 * DAY)
        assert one is not None and one.account is two.account and one.proof is two.proof
    finally:
        await proxy.close()
