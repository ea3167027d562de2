"""The embedded store's write-behind of attempts: counted in memory at once, handed to the writer thread at
the end of the event-loop iteration (flush_interval=0) or `flush_interval` later (the default), in one
transaction.

Counters stay exact before the write, other handles see the attempts once it is done, and any other use of
the connection (writes, reads for the CLI, close) writes the pending attempts first.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from sipfilter.stores.embedded import EmbeddedStore

A, N1, N2 = "acme", "+33612345678", "+33612345679"
T0 = 1_790_000_000.0
DAY = 86400.0


async def written(store: EmbeddedStore) -> int:
    """Wait (up to 10 s on a loaded machine; usually milliseconds) until nothing is left to write."""
    for _ in range(1000):
        if not store._unwritten() and store._write_done is None:
            break
        await asyncio.sleep(0.01)
    return store._unwritten()


async def test_attempts_of_one_iteration_share_a_commit_and_stay_exact(tmp_path: Path) -> None:
    store = await EmbeddedStore.open(tmp_path / "data", watch=False, flush_interval=0.0)
    other = await EmbeddedStore.open(tmp_path / "data", watch=False)
    try:
        # No await in between: all in one loop iteration, like decisions handled in one batch of datagrams.
        results = [store.check_and_record_attempt(A, N1, T0 + i, 3, 30 * DAY, 0.0) for i in range(5)]
        decisions = []
        for coro in results:
            try:
                coro.send(None)
            except StopIteration as stop:
                decisions.append(stop.value)
        assert [d.allowed for d in decisions] == [True, True, True, False, False]
        assert [d.attempts_in_window for d in decisions] == [1, 2, 3, 3, 3]
        assert store._pending  # not written yet: another handle still sees nothing
        assert await other.attempts(A, N1, T0 + 10, 30 * DAY) == 0
        await asyncio.sleep(0)  # the iteration ends: the batch goes to the writer thread
        assert not store._pending
        assert await written(store) == 0
        assert await other.attempts(A, N1, T0 + 10, 30 * DAY) == 3
    finally:
        await other.close()
        await store.close()


async def test_other_writes_and_close_commit_the_open_batch(tmp_path: Path) -> None:
    store = await EmbeddedStore.open(tmp_path / "data", watch=False)
    assert (await store.check_and_record_attempt(A, N1, T0, 3, 30 * DAY, 0.0)).allowed
    await store.record_refusal(A, N2, T0)  # a write of its own in the same iteration
    assert (await store.check_and_record_attempt(A, N2, T0 + 1, 3, 30 * DAY, DAY)).allowed is False
    await store.close()  # commits what the iteration recorded
    reopened = await EmbeddedStore.open(tmp_path / "data", watch=False)
    try:
        assert await reopened.attempts(A, N1, T0 + 1, 30 * DAY) == 1
        assert await reopened.last_refusal(A, N2) == T0
    finally:
        await reopened.close()


def test_without_an_event_loop_each_attempt_commits(tmp_path: Path) -> None:
    store = asyncio.run(EmbeddedStore.open(tmp_path / "data", watch=False))
    coro = store.check_and_record_attempt(A, N1, T0, 3, 30 * DAY, 0.0)
    try:
        coro.send(None)
    except StopIteration as stop:
        assert stop.value.allowed
    assert not store._pending
    asyncio.run(store.close())


async def test_default_flush_interval_writes_behind_then_persists(tmp_path: Path) -> None:
    store = await EmbeddedStore.open(tmp_path / "data", watch=False, flush_interval=0.01)
    other = await EmbeddedStore.open(tmp_path / "data", watch=False)
    try:
        for i in range(3):
            assert (await store.check_and_record_attempt(A, N1, T0 + i, 3, 30 * DAY, 0.0)).allowed
        await asyncio.sleep(0)
        assert store._pending  # one iteration later: still in memory, still counted
        assert not (await store.check_and_record_attempt(A, N1, T0 + 5, 3, 30 * DAY, 0.0)).allowed
        assert await written(store) == 0  # the timer fires, the thread writes
        assert await other.attempts(A, N1, T0 + 10, 30 * DAY) == 3
    finally:
        await other.close()
        await store.close()
