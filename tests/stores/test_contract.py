"""The store contract, run against both backends (embedded; Redis against a real redis-server)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from sipfilter.policy.frequency import FrequencyRules
from sipfilter.stores.base import ConsentRecord
from sipfilter.stores.importer import SourceInfo
from sipfilter.stores.numberset import NumberSet
from sipfilter.stores.writable import ContractRecord, StoreError, WritableStore

SRC = SourceInfo("bloctel.csv", 1234, "ab" * 32)
A, N1, N2 = "acme", "+33612345678", "+33612345679"
DAY = 86400.0
T0 = 1_780_000_000.0

OpenOther = Callable[[], Awaitable[WritableStore]]


async def test_unknown_list_raises_key_error(store: WritableStore) -> None:
    with pytest.raises(KeyError):
        store.list_contains("bloctel", N1)
    assert store.list_info("bloctel") is None
    assert store.list_names() == []


async def test_put_list_then_lookup_and_info(store: WritableStore) -> None:
    info = await store.put_list("bloctel", NumberSet.from_numbers([N1, "+262692123456", "3900"]), SRC,
                                imported_at=T0)
    assert store.list_contains("bloctel", N1)
    assert store.list_contains("bloctel", "+262692123456")
    assert store.list_contains("bloctel", "3900")
    assert not store.list_contains("bloctel", N2)
    assert not store.list_contains("bloctel", "garbage")
    assert (info.name, info.count, info.imported_at) == ("bloctel", 3, T0)
    assert (info.source_name, info.source_size, info.source_sha256) == (SRC.name, SRC.size, SRC.sha256)
    assert store.list_info("bloctel") == info
    assert store.list_names() == ["bloctel"]
    assert sorted(store.list_numbers("bloctel")) == sorted([N1, "+262692123456", "3900"])


async def test_replacing_a_list_switches_version_and_content(store: WritableStore) -> None:
    v1 = await store.put_list("dnc", NumberSet.from_numbers([N1]), SRC)
    v2 = await store.put_list("dnc", NumberSet.from_numbers([N2]), SRC)
    assert v2.version > v1.version
    assert not store.list_contains("dnc", N1)
    assert store.list_contains("dnc", N2)


async def test_other_handle_sees_import_only_after_refresh(
    store: WritableStore, open_other: OpenOther
) -> None:
    await store.put_list("dnc", NumberSet.from_numbers([N1]), SRC)
    other = await open_other()
    assert other.list_contains("dnc", N1)
    await store.put_list("dnc", NumberSet.from_numbers([N2]), SRC)
    assert other.list_contains("dnc", N1)  # the old version answers until the switch is picked up
    await other.refresh()
    assert other.list_contains("dnc", N2) and not other.list_contains("dnc", N1)
    assert other.list_info("dnc") == store.list_info("dnc")


async def test_delete_list(store: WritableStore, open_other: OpenOther) -> None:
    await store.put_list("dnc", NumberSet.from_numbers([N1]), SRC)
    other = await open_other()
    assert await store.delete_list("dnc")
    assert not await store.delete_list("dnc")
    assert store.list_names() == []
    await other.refresh()
    assert other.list_names() == []
    with pytest.raises(KeyError):
        other.list_contains("dnc", N1)
    again = await store.put_list("dnc", NumberSet.from_numbers([N2]), SRC)
    assert store.list_contains("dnc", N2) and again.count == 1


async def test_bad_list_name_is_refused(store: WritableStore) -> None:
    with pytest.raises(StoreError):
        await store.put_list("../etc/passwd", NumberSet.from_numbers([N1]), SRC)


async def test_consent_history(store: WritableStore, open_other: OpenOther) -> None:
    assert store.consent_for(A, N1, T0) is None
    await store.add_consent(ConsentRecord(A, N1, T0, "form-1", hours="mon-fri 10:00-18:00"))
    got = store.consent_for(A, N1, T0 + 1)
    assert got == ConsentRecord(A, N1, T0, "form-1", None, "mon-fri 10:00-18:00")
    assert store.consent_for(A, N1, T0 - 1) is None  # not yet granted
    assert store.consent_for("other-account", N1, T0 + 1) is None  # consent is per professional
    assert await store.revoke_consent(A, N1, T0 + DAY) == 1
    assert await store.revoke_consent(A, N1, T0 + DAY) == 0
    assert store.consent_for(A, N1, T0 + 2 * DAY) is None
    assert store.consent_for(A, N1, T0 + 1) is not None  # in force before the revocation
    await store.add_consent(ConsentRecord(A, N1, T0 + 3 * DAY, "call-42"))
    assert store.consent_for(A, N1, T0 + 4 * DAY).proof == "call-42"  # type: ignore[union-attr]
    history = await store.consents(A, N1)
    assert [(r.proof, r.revoked_at) for r in history] == [("form-1", T0 + DAY), ("call-42", None)]
    other = await open_other()
    assert other.consent_for(A, N1, T0 + 4 * DAY) is not None
    await store.revoke_consent(A, N1, T0 + 5 * DAY)
    await other.refresh()
    assert other.consent_for(A, N1, T0 + 6 * DAY) is None


async def test_contracts(store: WritableStore, open_other: OpenOther) -> None:
    other = await open_other()
    assert not store.has_contract(A, N1, T0)
    await store.add_contract(ContractRecord(A, N1, T0, None, "C-1"))
    assert store.has_contract(A, N1, T0 + 1) and not store.has_contract(A, N1, T0 - 1)
    await other.refresh()
    assert other.has_contract(A, N1, T0 + 1)
    assert await store.end_contract(A, N1, T0 + DAY) == 1
    assert not store.has_contract(A, N1, T0 + 2 * DAY) and store.has_contract(A, N1, T0 + 1)
    assert [(c.reference, c.ended_at) for c in await store.contracts(A, N1)] == [("C-1", T0 + DAY)]


async def test_contract_scope_names_the_purposes_it_exempts(
    store: WritableStore, open_other: OpenOther
) -> None:
    await store.add_contract(ContractRecord(A, N1, T0, None, "C-1", ("energy-supply", "energy-services")))
    await store.add_contract(ContractRecord(A, N2, T0, None, "C-2"))  # no scope: its object is unknown
    for s in (store, await open_other()):
        assert s.has_contract(A, N1, T0 + 1) and s.has_contract(A, N1, T0 + 1, None)
        assert s.has_contract(A, N1, T0 + 1, "energy-supply")
        assert s.has_contract(A, N1, T0 + 1, "energy-services")
        assert not s.has_contract(A, N1, T0 + 1, "insurance")
        assert not s.has_contract(A, N1, T0 - 1, "energy-supply")
        assert s.has_contract(A, N2, T0 + 1) and not s.has_contract(A, N2, T0 + 1, "energy-supply")
    [c1] = await store.contracts(A, N1)
    assert c1.scope == ("energy-supply", "energy-services")
    assert (await store.contracts(A, N2))[0].scope == ()
    assert await store.end_contract(A, N1, T0 + DAY) == 1
    assert not store.has_contract(A, N1, T0 + 2 * DAY, "energy-supply")
    assert (await store.contracts(A, N1))[0].scope == ("energy-supply", "energy-services")  # kept when ended


async def test_consent_time_zone(store: WritableStore, open_other: OpenOther) -> None:
    await store.add_consent(ConsentRecord(A, N1, T0, "crm-7", time_zone="Indian/Reunion"))
    await store.add_consents([ConsentRecord(A, N2, T0, "import-1", hours="mon-fri 10:00-18:00",
                                            time_zone="America/Cayenne")])
    for s in (store, await open_other()):
        assert s.consent_for(A, N1, T0 + 1) == ConsentRecord(A, N1, T0, "crm-7", time_zone="Indian/Reunion")
        assert s.consent_for(A, N2, T0 + 1).time_zone == "America/Cayenne"  # type: ignore[union-attr]
    await store.revoke_consent(A, N1, T0 + DAY)
    history = await store.consents(A, N1)
    assert [(r.time_zone, r.revoked_at) for r in history] == [("Indian/Reunion", T0 + DAY)]


@pytest.mark.parametrize("zone", ["Europe/Paris", "Indian/Reunion", "America/Martinique"])
async def test_calendar_cooldown_ends_exactly_at_local_midnight(store: WritableStore, zone: str) -> None:
    """The engine hands the store a cooldown that ends the refusal exactly at the cutoff the calendar rule
    gives (refusals at or after it block): a refusal at the very first instant of its day still blocks."""
    rules = FrequencyRules(4, 30 * DAY, 60)
    tz = ZoneInfo(zone)
    refused = datetime(2026, 3, 1, tzinfo=tz).timestamp()  # 00:00:00.000000, local
    await store.record_refusal(A, N1, refused)
    for call, allowed in ((datetime(2026, 4, 30, 23, 59, 59, 999999, tzinfo=tz).timestamp(), False),
                          (datetime(2026, 5, 1, tzinfo=tz).timestamp(), True)):  # fmt: skip
        cutoff = rules.cutoff(call, (tz,))
        cooldown_s = rules.store_cooldown_s(call, cutoff)
        d = await store.check_and_record_attempt(A, N1, call, 4, 30 * DAY, cooldown_s)
        assert d.allowed is allowed, datetime.fromtimestamp(call, tz)
        assert (d.refused_at is not None and d.refused_at >= cutoff) is (not allowed)


async def test_attempt_cap_in_rolling_window(store: WritableStore) -> None:
    results = [await store.check_and_record_attempt(A, N1, T0 + i, 4, 30 * DAY, 60 * DAY) for i in range(6)]
    assert [r.allowed for r in results] == [True, True, True, True, False, False]
    assert [r.attempts_in_window for r in results] == [1, 2, 3, 4, 4, 4]
    assert await store.attempts(A, N1, T0 + 10, 30 * DAY) == 4
    # Another callee, another account: separate counters.
    assert (await store.check_and_record_attempt(A, N2, T0, 4, 30 * DAY, 60 * DAY)).allowed
    assert (await store.check_and_record_attempt("b", N1, T0, 4, 30 * DAY, 60 * DAY)).allowed
    # The first attempt leaves the window 30 days later: one more is allowed, then the cap again.
    later = T0 + 30 * DAY + 0.5
    assert await store.attempts(A, N1, later, 30 * DAY) == 3
    assert (await store.check_and_record_attempt(A, N1, later, 4, 30 * DAY, 60 * DAY)).allowed
    assert not (await store.check_and_record_attempt(A, N1, later, 4, 30 * DAY, 60 * DAY)).allowed


async def test_refusal_cooldown(store: WritableStore) -> None:
    assert await store.last_refusal(A, N1) is None
    await store.record_refusal(A, N1, T0)
    await store.record_refusal(A, N1, T0 - DAY)  # an older report never moves the refusal back
    assert await store.last_refusal(A, N1) == T0
    d = await store.check_and_record_attempt(A, N1, T0 + 59 * DAY, 4, 30 * DAY, 60 * DAY)
    assert (d.allowed, d.attempts_in_window, d.refused_at) == (False, 0, T0)
    d = await store.check_and_record_attempt(A, N1, T0 + 61 * DAY, 4, 30 * DAY, 60 * DAY)
    assert (d.allowed, d.attempts_in_window, d.refused_at) == (True, 1, T0)


async def test_concurrent_attempts_on_one_handle_never_exceed_cap(store: WritableStore) -> None:
    results = await asyncio.gather(*[store.check_and_record_attempt(A, N1, T0, 4, 30 * DAY, 60 * DAY)
                                     for _ in range(20)])
    assert sum(r.allowed for r in results) == 4


async def test_counters_survive_reopen(store: WritableStore, open_other: OpenOther, tmp_path: Path) -> None:
    for i in range(3):
        await store.check_and_record_attempt(A, N1, T0 + i, 4, 30 * DAY, 60 * DAY)
    await store.record_refusal(A, N2, T0)
    other = await open_other()
    assert await other.attempts(A, N1, T0 + 10, 30 * DAY) == 3
    assert await other.last_refusal(A, N2) == T0


async def test_watcher_picks_up_imports_from_another_process(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, store: WritableStore
) -> None:
    from sipfilter.stores.embedded import EmbeddedStore
    from sipfilter.stores.redis_store import RedisStore

    watching: WritableStore
    if backend == "redis":
        watching = await RedisStore.open(request.getfixturevalue("redis_server").url, poll_interval=0.02)
    else:
        watching = await EmbeddedStore.open(tmp_path / "data", poll_interval=0.02)
    try:
        await store.put_list("dnc", NumberSet.from_numbers([N1]), SRC)
        await store.add_consent(ConsentRecord(A, N1, T0, "p"))
        for _ in range(500):  # up to 10 s on a loaded machine; usually a few polls
            if watching.list_names() == ["dnc"] and watching.consent_for(A, N1, T0) is not None:
                break
            await asyncio.sleep(0.02)
        assert watching.list_contains("dnc", N1)
        assert watching.consent_for(A, N1, T0) is not None
    finally:
        await watching.close()


async def test_embedded_removes_orphan_list_files_at_open(tmp_path: Path) -> None:
    import os

    from sipfilter.stores.embedded import EmbeddedStore

    s = await EmbeddedStore.open(tmp_path / "data", watch=False)
    info = await s.put_list("dnc", NumberSet.from_numbers([N1]), SRC)
    await s.close()
    lists = tmp_path / "data" / "lists"
    old, fresh = lists / "dnc.v999.roaring", lists / "dnc.v1000.roaring.tmp"
    old.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(old, (0, 0))
    s = await EmbeddedStore.open(tmp_path / "data", watch=False)
    try:
        assert not old.exists() and fresh.exists()  # a young file may be an import in progress
        assert s.list_contains("dnc", N1) and s.list_info("dnc") == info
    finally:
        await s.close()


async def test_embedded_database_of_an_older_release_gets_the_new_columns(tmp_path: Path) -> None:
    """A data directory written before consents had a time zone and contracts a scope opens as it was."""
    import sqlite3

    from sipfilter.stores.embedded import DB_NAME, EmbeddedStore

    (tmp_path / "data").mkdir()
    db = sqlite3.connect(tmp_path / "data" / DB_NAME)
    db.executescript("""
        CREATE TABLE consents(id INTEGER PRIMARY KEY, account TEXT NOT NULL, number TEXT NOT NULL,
            granted_at REAL NOT NULL, proof TEXT NOT NULL, revoked_at REAL, hours TEXT);
        CREATE TABLE contracts(id INTEGER PRIMARY KEY, account TEXT NOT NULL, number TEXT NOT NULL,
            started_at REAL NOT NULL, ended_at REAL, reference TEXT NOT NULL);
    """)
    db.execute("INSERT INTO consents(account, number, granted_at, proof) VALUES(?,?,?,?)", (A, N1, T0, "old"))
    db.execute("INSERT INTO contracts(account, number, started_at, reference) VALUES(?,?,?,?)",
               (A, N1, T0, "C"))
    db.commit()
    db.close()
    for watch in (False, True):  # the CLI's handle reads on demand; the proxy's loads everything at open
        s = await EmbeddedStore.open(tmp_path / "data", watch=watch)
        try:
            assert s.consent_for(A, N1, T0 + 1) == ConsentRecord(A, N1, T0, "old")
            assert s.has_contract(A, N1, T0 + 1) and not s.has_contract(A, N1, T0 + 1, "energy-supply")
            await s.add_contract(ContractRecord(A, N2, T0, None, "C-2", ("energy-supply",)))
            assert s.has_contract(A, N2, T0 + 1, "energy-supply")
        finally:
            await s.close()
