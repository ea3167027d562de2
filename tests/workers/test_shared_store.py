"""Several workers on one embedded store: a record made through one reaches the others from the change log,
and one worker's prune of that log never makes another re-read every table (seconds with millions of rows)."""

from __future__ import annotations

from pathlib import Path

from sipfilter.stores.embedded import EmbeddedStore

A, N1 = "acme", "+33612345678"
T0 = 1_790_000_000.0


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
