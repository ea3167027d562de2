"""Several workers on one embedded store: a record made through one reaches the others from the change log,
one worker's prune of that log never makes another re-read every table (seconds with millions of rows), and
each worker keeps in memory the rows of its own callees only, its answers on the others read from SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipfilter.stores.base import ConsentRecord, ContractRecord
from sipfilter.stores.embedded import EmbeddedStore
from sipfilter.workers.routing import number_owner

A, N1 = "acme", "+33612345678"
T0 = 1_790_000_000.0
DAY30, DAY60 = 30 * 86400.0, 60 * 86400.0


async def test_a_refusal_recorded_by_one_worker_reaches_another_after_a_prune(tmp_path: Path) -> None:
    first = await EmbeddedStore.open(tmp_path, watch=False, preload=True)
    second = await EmbeddedStore.open(tmp_path, watch=False, preload=True)
    reloads: list[int] = []
    full_load = second._load_all

    def counted_load() -> None:
        reloads.append(1)
        full_load()

    second._load_all = counted_load  # type: ignore[method-assign]
    try:
        await first.record_refusal(A, N1, T0)  # applied by `first` at once, not yet by `second`
        await first._prune(now=T0)  # `first`'s periodic prune runs before `second`'s next poll
        assert second._others_committed()
        await second._catch_up()
        assert second._records.refusals.get((A, N1)) is not None
        assert reloads == []  # caught up from the log, not by re-reading every table
        # The next prune drops what every worker has applied since.
        await first._prune(now=T0)
        await second.record_refusal(A, N1, T0 + 1)
        assert first._others_committed()
        await first._catch_up()
        assert first._records.refusals.get((A, N1)) is not None
    finally:
        await first.close()
        await second.close()


async def test_each_worker_keeps_the_attempts_of_its_own_callees(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # Four attempts to each of 40 callees, recorded and written; then two workers open the same store.
    callees = [f"+336123{n:05d}" for n in range(40)]
    writer = await EmbeddedStore.open(tmp_path, watch=False, preload=True)
    try:
        for number in callees:
            for i in range(4):
                assert (await writer.check_and_record_attempt(A, number, T0 + i, 4, DAY30, DAY60)).allowed
    finally:
        await writer.close()
    workers = [await EmbeddedStore.open(tmp_path, watch=False, preload=True, worker=(i, 2)) for i in range(2)]
    try:
        kept = [{number for _, number in w._records.attempts} for w in workers]
        assert kept[0] | kept[1] == set(callees) and not kept[0] & kept[1]
        assert all(number_owner(n, 2) == i for i in range(2) for n in kept[i])
        for i, w in enumerate(workers):
            for number in callees:  # its own callees from memory, the others from SQLite: all at the cap
                d = await w.check_and_record_attempt(A, number, T0 + 10, 4, DAY30, DAY60)
                assert (d.allowed, d.attempts_in_window) == (False, 4), (i, number)
        # A callee never called that a worker owns: none in memory, and nothing read from SQLite for it.
        read: list[tuple[str, str]] = []
        monkeypatch.setattr(EmbeddedStore, "_read_attempts", lambda self, key: read.append(key))
        for i, w in enumerate(workers):
            fresh = next(n for n in (f"+3361999{k:04d}" for k in range(100)) if number_owner(n, 2) == i)
            d = await w.check_and_record_attempt(A, fresh, T0 + 10, 4, DAY30, DAY60)
            assert (d.allowed, d.attempts_in_window) == (True, 1)
        assert read == []
    finally:
        for w in workers:
            await w.close()


async def test_a_worker_reads_a_callee_it_does_not_own_from_sqlite(tmp_path: Path) -> None:
    # A callee whose Request-URI spelling routes it to a worker other than its key's owner: that worker's
    # miss is read from SQLite, never taken for "no attempts".
    other = next(n for n in (f"+3361234{k:04d}" for k in range(100)) if number_owner(n, 2) == 1)
    writer = await EmbeddedStore.open(tmp_path, watch=False, preload=True)
    try:
        for i in range(4):
            await writer.check_and_record_attempt(A, other, T0 + i, 4, DAY30, DAY60)
    finally:
        await writer.close()
    worker0 = await EmbeddedStore.open(tmp_path, watch=False, preload=True, worker=(0, 2))
    try:
        assert (A, other) not in worker0._records.attempts and not worker0.owns(other)
        d = await worker0.check_and_record_attempt(A, other, T0 + 10, 4, DAY30, DAY60)
        assert (d.allowed, d.attempts_in_window) == (False, 4)
    finally:
        await worker0.close()


def _owned_by(worker: int, prefix: str = "+3361555") -> list[str]:
    return [n for n in (f"{prefix}{k:04d}" for k in range(200)) if number_owner(n, 2) == worker]


async def _record_everything(store: EmbeddedStore, number: str) -> None:
    """A consent, a contract, a refusal and an opposition for `number`, at T0."""
    await store.add_consent(ConsentRecord(A, number, T0, f"crm:{number}"))
    await store.add_contract(ContractRecord(A, number, T0, None, f"ref:{number}", ()))
    await store.record_refusal(A, number, T0)
    await store.add_opposition(A, number, T0)


async def test_each_worker_keeps_the_records_of_its_own_callees(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    numbers = _owned_by(0)[:5] + _owned_by(1)[:5]
    writer = await EmbeddedStore.open(tmp_path, watch=False, preload=True)
    try:
        for number in numbers:
            await _record_everything(writer, number)
    finally:
        await writer.close()
    workers = [await EmbeddedStore.open(tmp_path, watch=False, preload=True, worker=(i, 2)) for i in range(2)]
    try:
        for i, w in enumerate(workers):
            records = w._records
            for table in (records.consents, records.contracts, records.refusals, records.oppositions):
                assert {number for _, number in table} == set(_owned_by(i)[:5]), (i, table)
        # Every answer is the same from either worker: the owner's from memory, the other's from SQLite.
        for w in workers:
            for number in numbers:
                assert w.consent_for(A, number, T0 + 1) is None  # refused and opposed since T0
                assert w.has_contract(A, number, T0 + 1)
                assert w.opposition_for(A, number, T0 + 1) == T0
                d = await w.check_and_record_attempt(A, number, T0 + 1, 4, DAY30, DAY60)
                assert (d.allowed, d.refused_at) == (False, T0)
        # A callee a worker owns and that has no rows: answered from memory, nothing read from SQLite.
        read: list[str] = []
        for name in ("_read_consents", "_read_contracts", "_read_refusals", "_read_opposition"):
            monkeypatch.setattr(EmbeddedStore, name, lambda self, key, name=name: read.append(name))
        for i, w in enumerate(workers):
            fresh = _owned_by(i, "+3361666")[0]
            assert w.consent_for(A, fresh, T0) is None and not w.has_contract(A, fresh, T0)
            assert w.opposition_for(A, fresh, T0) is None
            assert w.contract_for(A, fresh, T0) is None
        assert read == []
    finally:
        for w in workers:
            await w.close()


async def test_another_workers_callee_read_from_sqlite_follows_the_change_log(tmp_path: Path) -> None:
    # Worker 0 answers for a callee of worker 1 (a Request-URI spelling that routes elsewhere than its key):
    # it reads the consent from SQLite and keeps it. A revocation made elsewhere must reach that copy, or
    # worker 0 would go on allowing calls the consumer refused.
    other = _owned_by(1)[0]
    cli = await EmbeddedStore.open(tmp_path, watch=False, preload=False)
    worker0 = await EmbeddedStore.open(tmp_path, watch=False, preload=True, worker=(0, 2))
    try:
        await cli.add_consent(ConsentRecord(A, other, T0, "crm:1"))
        assert worker0._others_committed()
        await worker0._catch_up()
        assert (A, other) not in worker0._records.consents  # not this worker's callee: not loaded
        found = worker0.consent_for(A, other, T0 + 1)
        assert found is not None and found.proof == "crm:1"
        assert (A, other) in worker0._records.consents  # read from SQLite, kept
        await cli.record_refusal(A, other, T0 + 2)
        await cli.revoke_consent(A, other, T0 + 3)
        assert worker0._others_committed()
        await worker0._catch_up()
        assert worker0.consent_for(A, other, T0 + 4) is None
        d = await worker0.check_and_record_attempt(A, other, T0 + 4, 4, DAY30, DAY60)
        assert (d.allowed, d.refused_at) == (False, T0 + 2)
        # The change log names other callees of worker 1: worker 0 does not start keeping them.
        more = _owned_by(1)[1]
        await cli.add_consent(ConsentRecord(A, more, T0, "crm:2"))
        await cli.add_opposition(A, more, T0)
        assert worker0._others_committed()
        await worker0._catch_up()
        assert (A, more) not in worker0._records.consents and (A, more) not in worker0._records.oppositions
        assert worker0.opposition_for(A, more, T0 + 1) == T0
    finally:
        await cli.close()
        await worker0.close()
