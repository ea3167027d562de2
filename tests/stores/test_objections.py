"""Refusals end consents, permanent oppositions, undoing mistaken records, the record history and list
versions: the store contract on both backends (embedded; Redis against a real redis-server)."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from sipfilter.stores.base import ConsentRecord, ContractRecord
from sipfilter.stores.importer import SourceInfo
from sipfilter.stores.numberset import NumberSet
from sipfilter.stores.writable import WritableStore

A, N1, N2 = "acme", "+33612345678", "+33612345679"
DAY = 86400.0
T0 = 1_780_000_000.0
COOL = 60 * DAY
OpenOther = Callable[[], Awaitable[WritableStore]]


async def test_a_refusal_ends_every_consent_given_before_it(
    store: WritableStore, open_other: OpenOther
) -> None:
    await store.add_consent(ConsentRecord(A, N1, T0, "form-1"))
    other = await open_other()
    await store.record_refusal(A, N1, T0 + DAY, source="cli")
    assert store.consent_for(A, N1, T0 + DAY / 2) is not None  # in force until the refusal
    assert store.consent_for(A, N1, T0 + DAY) is None
    assert store.consent_for(A, N1, T0 + COOL + 2 * DAY) is None  # not back after the cooldown
    # A consent recorded later but given before the refusal (a late CRM import) is ended all the same.
    await store.add_consent(ConsentRecord(A, N1, T0 + DAY / 2, "late-import"))
    assert store.consent_for(A, N1, T0 + 2 * DAY) is None
    await other.refresh()
    assert other.consent_for(A, N1, T0 + COOL + 2 * DAY) is None
    # A new consent, given after the refusal, counts.
    await store.add_consent(ConsentRecord(A, N1, T0 + COOL + DAY, "form-2"))
    got = store.consent_for(A, N1, T0 + COOL + 2 * DAY)
    assert got is not None and got.proof == "form-2"
    # Another account's consent is not ended by a refusal to this one.
    await store.add_consent(ConsentRecord("other", N1, T0, "theirs"))
    assert store.consent_for("other", N1, T0 + 2 * DAY) is not None
    history = await store.history(A, N1)
    first = next(c for c in history.consents if c.proof == "form-1")
    assert history.consent_end(first) == (T0 + DAY, "refusal")
    assert [(r.at, r.source) for r in history.refusals] == [(T0 + DAY, "cli")]
    assert history.refusals[0].recorded_at is not None


async def test_undo_a_mistaken_refusal(store: WritableStore, open_other: OpenOther) -> None:
    await store.add_consent(ConsentRecord(A, N1, T0, "form-1"))
    await store.record_refusal(A, N1, T0 + DAY)
    await store.record_refusal(A, N1, T0 + 3 * DAY)
    other = await open_other()
    undone = await store.undo_refusal(A, N1, None, "agent clicked the wrong number", T0 + 4 * DAY)
    assert [r.at for r in undone] == [T0 + 3 * DAY]  # the latest by default
    assert await store.last_refusal(A, N1) == T0 + DAY
    d = await store.check_and_record_attempt(A, N1, T0 + 5 * DAY, 4, 30 * DAY, COOL)
    assert (d.allowed, d.refused_at) == (False, T0 + DAY)  # the earlier refusal still counts
    # The one at a given second: the refusal shown as ...:40 is the one at T0 + DAY (+ a fraction).
    assert await store.undo_refusal(A, N1, T0 + 2 * DAY, "no such refusal", T0 + 5 * DAY) == ()
    undone = await store.undo_refusal(A, N1, T0 + DAY + 0.4, "wrong number too", T0 + 5 * DAY)
    assert [r.at for r in undone] == [T0 + DAY]
    assert await store.last_refusal(A, N1) is None
    assert await store.undo_refusal(A, N1, None, "again", T0 + 5 * DAY) == ()
    # The consent the refusals had ended counts again; calls are no longer held by a cooldown.
    assert store.consent_for(A, N1, T0 + 5 * DAY) is not None
    d = await store.check_and_record_attempt(A, N1, T0 + 5 * DAY, 4, 30 * DAY, COOL)
    assert (d.allowed, d.refused_at) == (True, None)
    await other.refresh()
    assert other.consent_for(A, N1, T0 + 5 * DAY) is not None
    assert (await other.check_and_record_attempt(A, N1, T0 + 6 * DAY, 4, 30 * DAY, COOL)).refused_at is None
    history = await store.history(A, N1)
    assert [(r.at, r.undone_at, r.undo_reason) for r in history.refusals] == [
        (T0 + DAY, T0 + 5 * DAY, "wrong number too"),
        (T0 + 3 * DAY, T0 + 4 * DAY, "agent clicked the wrong number")]


async def test_undo_an_older_refusal_keeps_the_cooldown_of_the_latest(store: WritableStore) -> None:
    await store.record_refusal(A, N1, T0)
    await store.record_refusal(A, N1, T0 + DAY)
    assert [r.at for r in await store.undo_refusal(A, N1, T0, "mistake", T0 + 2 * DAY)] == [T0]
    d = await store.check_and_record_attempt(A, N1, T0 + 2 * DAY, 4, 30 * DAY, COOL)
    assert (d.allowed, d.refused_at) == (False, T0 + DAY)


async def test_permanent_opposition(store: WritableStore, open_other: OpenOther) -> None:
    other = await open_other()
    await store.add_consent(ConsentRecord(A, N1, T0, "form-1"))
    await store.add_contract(ContractRecord(A, N1, T0, None, "K-1"))
    assert store.opposition_for(A, N1, T0 + DAY) is None
    await store.add_opposition(A, N1, T0 + DAY, source="api")
    assert store.opposition_for(A, N1, T0 + DAY) == T0 + DAY
    assert store.opposition_for(A, N1, T0 + 3650 * DAY) == T0 + DAY  # forever
    assert store.opposition_for(A, N1, T0) is None  # not before it was said
    assert store.opposition_for("other", N1, T0 + 2 * DAY) is None  # per professional
    assert store.consent_for(A, N1, T0 + 2 * DAY) is None  # no consent survives an opposition
    await store.add_consent(ConsentRecord(A, N1, T0 + 2 * DAY, "form-2"))
    assert store.consent_for(A, N1, T0 + 3 * DAY) is None
    await other.refresh()
    assert other.opposition_for(A, N1, T0 + 2 * DAY) == T0 + DAY
    undone = await store.undo_opposition(A, N1, "recorded on the wrong account", T0 + 4 * DAY)
    assert [(o.at, o.source) for o in undone] == [(T0 + DAY, "api")]
    assert store.opposition_for(A, N1, T0 + 5 * DAY) is None
    assert await store.undo_opposition(A, N1, "again", T0 + 5 * DAY) == ()
    await other.refresh()
    assert other.opposition_for(A, N1, T0 + 5 * DAY) is None
    history = await store.history(A, N1)
    assert [(o.at, o.undone_at, o.undo_reason) for o in history.oppositions] == [
        (T0 + DAY, T0 + 4 * DAY, "recorded on the wrong account")]


async def test_undo_a_mistaken_consent(store: WritableStore, open_other: OpenOther) -> None:
    await store.add_consent(ConsentRecord(A, N1, T0, "form-1"))
    await store.add_consent(ConsentRecord(A, N1, T0 + DAY, "typo-campaign"))
    other = await open_other()
    assert store.consent_for(A, N1, T0 + 2 * DAY).proof == "typo-campaign"  # type: ignore[union-attr]
    undone = await store.undo_consent(A, N1, "typo-campaign", None, "wrong list imported", T0 + 2 * DAY)
    assert [c.proof for c in undone] == ["typo-campaign"]
    assert store.consent_for(A, N1, T0 + 2 * DAY).proof == "form-1"  # type: ignore[union-attr]
    await other.refresh()
    assert other.consent_for(A, N1, T0 + 2 * DAY).proof == "form-1"  # type: ignore[union-attr]
    assert await store.undo_consent(A, N1, "nope", None, "x", T0 + 2 * DAY) == ()
    undone = await store.undo_consent(A, N1, None, None, "the latest", T0 + 3 * DAY)
    assert [c.proof for c in undone] == ["form-1"]
    assert store.consent_for(A, N1, T0 + 3 * DAY) is None
    assert await store.consents(A, N1) == ()  # undone records never count
    history = await store.history(A, N1)
    assert history.consents == ()
    assert [(u.consent.proof, u.undone_at, u.reason) for u in history.undone_consents] == [
        ("form-1", T0 + 3 * DAY, "the latest"), ("typo-campaign", T0 + 2 * DAY, "wrong list imported")]
    # By grant time, to the second.
    await store.add_consent(ConsentRecord(A, N2, T0 + 0.25, "f"))
    assert [c.proof for c in await store.undo_consent(A, N2, None, T0, "by time", T0 + DAY)] == ["f"]


async def test_contract_for_names_the_contract(store: WritableStore) -> None:
    assert store.contract_for(A, N1, T0) is None
    await store.add_contract(ContractRecord(A, N1, T0, None, "K-1"))
    await store.add_contract(ContractRecord(A, N1, T0 + DAY, T0 + 3 * DAY, "K-2"))
    assert store.contract_for(A, N1, T0 + 2 * DAY) == ContractRecord(A, N1, T0 + DAY, T0 + 3 * DAY, "K-2")
    assert store.contract_for(A, N1, T0 + 4 * DAY) == ContractRecord(A, N1, T0, None, "K-1")
    assert store.contract_for(A, N1, T0 - 1) is None


async def test_list_versions_and_their_history(store: WritableStore, open_other: OpenOther) -> None:
    assert store.list_versions(("bloctel", "optouts")) == {}
    v1 = await store.put_list("bloctel", NumberSet.from_numbers([N1]), SourceInfo("b1.csv", 10, "aa" * 32))
    v2 = await store.put_list("bloctel", NumberSet.from_numbers([N2]), SourceInfo("b2.csv", 20, "bb" * 32))
    o1 = await store.put_list("optouts", NumberSet.from_numbers([N2]), SourceInfo("o.txt", 5, "cc" * 32))
    versions = store.list_versions(("bloctel", "optouts", "never-imported"))
    assert dict(versions) == {"bloctel": v2.version, "optouts": o1.version}
    assert store.list_versions(("bloctel", "optouts", "never-imported")) is versions  # memoised
    assert await store.list_history("bloctel") == (v1, v2)
    await store.delete_list("bloctel")
    other = await open_other()
    assert await other.list_history("bloctel") == (v1, v2)  # kept after the list is gone: proof
    assert dict(store.list_versions(("bloctel", "optouts"))) == {"optouts": o1.version}


async def test_embedded_database_of_an_older_sipfilter_is_brought_forward(tmp_path: Path) -> None:
    from sipfilter.stores.embedded import DB_NAME, EmbeddedStore

    data = tmp_path / "data"
    data.mkdir()
    db = sqlite3.connect(data / DB_NAME)
    db.executescript("""
        CREATE TABLE meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        CREATE TABLE lists(name TEXT PRIMARY KEY, version INTEGER NOT NULL, count INTEGER NOT NULL,
            imported_at REAL NOT NULL, source_name TEXT NOT NULL, source_size INTEGER NOT NULL,
            source_sha256 TEXT NOT NULL, file TEXT NOT NULL);
        CREATE TABLE consents(id INTEGER PRIMARY KEY, account TEXT NOT NULL, number TEXT NOT NULL,
            granted_at REAL NOT NULL, proof TEXT NOT NULL, revoked_at REAL, hours TEXT);
        CREATE TABLE refusals(account TEXT NOT NULL, number TEXT NOT NULL, at REAL NOT NULL,
            PRIMARY KEY(account, number));
        INSERT INTO consents(account, number, granted_at, proof)
            VALUES('acme', '+33612345678', 1780000000, 'f');
        INSERT INTO refusals VALUES('acme', '+33612345678', 1780086400);
        INSERT INTO lists VALUES('dnc', 3, 1, 1780000000, 'dnc.txt', 12, 'ab', 'dnc.v3.roaring');
    """)
    db.commit()
    db.close()
    for _ in range(2):  # the second open must not migrate again
        s = await EmbeddedStore.open(data, watch=False)
        try:
            assert await s.last_refusal(A, N1) == T0 + DAY
            assert s.consent_for(A, N1, T0 + 2 * DAY) is None  # the migrated refusal ended it
            history = await s.history(A, N1)
            assert [(r.at, r.source) for r in history.refusals] == [(T0 + DAY, "migrated")]
            assert [i.version for i in await s.list_history("dnc")] == [3]
            assert [c.proof for c in await s.undo_consent(A, N1, "f", None, "test", T0)] == ["f"]
            await s.add_consent(ConsentRecord(A, N1, T0, "f"))
        finally:
            await s.close()


@pytest.mark.parametrize("backend", ["redis"])
async def test_redis_undo_never_loses_a_refusal_recorded_meanwhile(
    store: WritableStore, open_other: OpenOther, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another instance records a refusal while this one undoes another: the cooldown keeps the new one."""
    other = await open_other()
    await store.record_refusal(A, N1, T0 + DAY)
    script = store._undo_refusal  # type: ignore[attr-defined]

    async def meanwhile(**kw: object) -> object:
        await other.record_refusal(A, N1, T0 + DAY / 2)  # after this handle read the log, before its undo
        return await script(**kw)

    monkeypatch.setattr(store, "_undo_refusal", meanwhile)
    assert [r.at for r in await store.undo_refusal(A, N1, None, "mistake", T0 + 2 * DAY)] == [T0 + DAY]
    d = await store.check_and_record_attempt(A, N1, T0 + 2 * DAY, 4, 30 * DAY, COOL)
    assert (d.allowed, d.refused_at) == (False, T0 + DAY / 2)


@pytest.mark.parametrize("backend", ["redis"])
async def test_redis_refusals_from_before_the_history_are_brought_forward(
    store: WritableStore, request: pytest.FixtureRequest
) -> None:
    """A Redis written by an older sipfilter holds refusals only as cooldown counters: the first watching
    instance turns them into records, once, so they end the consents given before them."""
    import asyncio

    from sipfilter.stores.redis_store import RedisStore

    await store.add_consent(ConsentRecord(A, N1, T0, "form-1"))
    raw = store._redis  # type: ignore[attr-defined]
    await raw.set(store._ckey(A, N1, "ref"), repr(T0 + DAY))  # type: ignore[attr-defined]
    assert store.consent_for(A, N1, T0 + 100 * DAY) is not None  # what an older sipfilter believed
    url = request.getfixturevalue("redis_server").url
    for _ in range(2):  # the second start finds the work done and adds nothing
        proxy = await RedisStore.open(url, poll_interval=0.05)
        try:
            for _ in range(200):
                if proxy.consent_for(A, N1, T0 + 100 * DAY) is None:
                    break
                await asyncio.sleep(0.05)
            assert proxy.consent_for(A, N1, T0 + 100 * DAY) is None
            history = await proxy.history(A, N1)
            assert [(r.at, r.source) for r in history.refusals] == [(T0 + DAY, "migrated")]
        finally:
            await proxy.close()
