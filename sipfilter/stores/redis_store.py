"""The Redis store: lists, records and counters shared by several sipfilter instances through one Redis.

Lists, consents and contracts are replicated into local memory (polled version keys) so the call path never
waits on the network; counters are atomic Lua scripts, streamed to Redis in one batch per event-loop pass
(redis_batch).
Never blocks long: short socket timeouts, one immediate retry on a broken connection only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import json
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from sipfilter.stores.base import AttemptDecision, ConsentRecord, ContractRecord, ListInfo, StoreUnavailable
from sipfilter.stores.call_path import LocalLists
from sipfilter.stores.history import (
    History,
    Objection,
    UndoneConsent,
    consent_undo_targets,
    latest_contract,
    undo_targets,
    usable,
)
from sipfilter.stores.importer import SourceInfo
from sipfilter.stores.numberset import NumberSet
from sipfilter.stores.redis_batch import AttemptBatcher, ClusterBatcher
from sipfilter.stores.redis_url import DEFAULT_TIMEOUT_S, redis_options
from sipfilter.stores.redis_url import split_url as _split_url
from sipfilter.stores.writable import Health, check_list_name, consent_in_force, log, scope_text

T = TypeVar("T")

BULK_TIMEOUT_S = 10.0  # replica loads and imports move megabytes: their own connections, a longer timeout
CHUNK = 4 << 20  # list payloads travel in 4 MiB pieces: no single command outlives the socket timeout
ORPHAN_TTL_S = 86400  # a list written but never switched to (crashed import) expires after this
OLD_VERSION_GRACE_S = 300  # a replaced list's data key lives on for instances still loading it
REFUSAL_TTL_S = 2 * 366 * 86400  # refusals outlive any cooldown a rule pack may set
LOG_MAXLEN = 1_000_000  # change-log entries kept; an instance further behind reloads everything
SEP = "\x1f"

# KEYS: attempts zset, refusal key.  ARGV: now, cap, window_s, cooldown_s, member (unique per attempt).
# A member already present is a resend of the same attempt (a pipeline retried on a broken connection after
# Redis ran it): answered as allowed, counted once.
_ATTEMPT_LUA = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
local r = redis.call('GET', KEYS[2])
if redis.call('ZSCORE', KEYS[1], ARGV[5]) then
  return {1, n, r}
end
if (r and tonumber(r) > now - tonumber(ARGV[4])) or n >= tonumber(ARGV[2]) then
  return {0, n, r}
end
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000))
return {1, n + 1, r}
"""

# KEYS: refusal key.  ARGV: at, ttl_s.  Keeps the latest refusal.
_REFUSAL_LUA = """
local cur = redis.call('GET', KEYS[1])
if (not cur) or tonumber(cur) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
return 1
"""

# KEYS: refusal key.  ARGV: the refusal time undone, the latest refusal left ('' for none), ttl_s. Moves the
# counter only when it holds the refusal undone: a newer refusal recorded meanwhile stays.
_UNDO_REFUSAL_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur and tonumber(cur) == tonumber(ARGV[1]) then
  if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) end
end
return 1
"""

# KEYS: records hash, change log.  ARGV: field, event JSON, maxlen.  Appends an event to the field's JSON
# array (string splice: no cjson number rounding) and announces the field on the change log, atomically.
_APPEND_LUA = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local new
if cur then new = string.sub(cur, 1, -2) .. ',' .. ARGV[2] .. ']' else new = '[' .. ARGV[2] .. ']' end
redis.call('HSET', KEYS[1], ARGV[1], new)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'h', KEYS[1], 'f', ARGV[1])
return 1
"""


# KEYS: records hash, change log.  ARGV: maxlen, then field/event pairs.  Bulk imports: one log entry with an
# empty field, which makes every instance reload the replicas instead of fetching fields one by one.
_APPEND_MANY_LUA = """
for i = 2, #ARGV, 2 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  local new = '[' .. ARGV[i + 1] .. ']'
  if cur then new = string.sub(cur, 1, -2) .. ',' .. ARGV[i + 1] .. ']' end
  redis.call('HSET', KEYS[1], ARGV[i], new)
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'h', KEYS[1], 'f', '')
return 1
"""


def _client(redis_url: str, ours: dict[str, str], timeout_s: float, *, socket_timeout: bool = True) -> Any:
    """A redis-py asyncio client for a plain URL, a Cluster (`cluster=1`) or a Sentinel service.
    `socket_timeout=False`: no timeout per socket operation, the caller bounds each exchange itself."""
    kwargs: dict[str, Any] = {"socket_timeout": timeout_s if socket_timeout else None,
                              "socket_connect_timeout": min(timeout_s, 1.0),
                              # One immediate retry on a broken connection (a pooled socket from before a
                              # Redis restart), none on a timeout: a dead Redis still fails within timeout_s.
                              "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                              "decode_responses": False}
    if ours.get("cluster", "") in ("1", "true", "yes"):
        from redis.asyncio.cluster import RedisCluster

        kwargs.pop("retry")
        return RedisCluster.from_url(redis_url, **kwargs)
    if "sentinel" in ours:
        return _sentinel_master(redis_url, ours["sentinel"], kwargs)
    return aioredis.from_url(redis_url, **kwargs)


def _describe(url: str) -> str:
    """The URL for logs: no password, no query."""
    parts = urlsplit(url.partition("?")[0])
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def _sentinel_master(url: str, service: str, kwargs: dict[str, Any]) -> Any:
    """A client that follows `service`'s master through the Sentinels listed in the URL's host part."""
    from redis.asyncio.sentinel import Sentinel

    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    sentinels = []
    for hp in hosts.split(","):
        host, _, port = hp.rpartition(":") if ":" in hp else (hp, "", "26379")
        sentinels.append((host or "127.0.0.1", int(port or 26379)))
    password = unquote(userinfo.partition(":")[2]) or None if userinfo else None
    db = int(parts.path.strip("/") or 0)
    conn = {k: v for k, v in kwargs.items() if k != "retry"}
    timeouts = {k: kwargs[k] for k in ("socket_timeout", "socket_connect_timeout")}
    sentinel = Sentinel(sentinels, sentinel_kwargs=timeouts, **conn)
    return sentinel.master_for(service, db=db, password=password, retry=kwargs["retry"])


def _fold_consents(account: str, number: str,
                   events: list[list[Any]]) -> tuple[tuple[ConsentRecord, ...], tuple[UndoneConsent, ...]]:
    """(the consents in effect, those undone) from a number's event log, in grant order."""
    recs: list[ConsentRecord] = []
    undone: list[UndoneConsent] = []
    for ev in events:
        if ev[0] == "grant":
            zone = ev[4] if len(ev) > 4 else None  # events written before consents had a zone have 4 fields
            recs.append(ConsentRecord(account, number, ev[1], ev[2], None, ev[3], zone))
        elif ev[0] == "revoke":
            at = ev[1]
            recs = [r if not (r.granted_at <= at and (r.revoked_at is None or r.revoked_at > at))
                    else dataclasses.replace(r, revoked_at=at) for r in recs]
        elif ev[0] == "undo":  # ["undo", granted_at, proof, undone_at, reason]
            named = [r for r in recs if r.granted_at == ev[1] and r.proof == ev[2]]
            recs = [r for r in recs if r not in named]
            undone += [UndoneConsent(r, ev[3], ev[4]) for r in named]
    return (tuple(sorted(recs, key=lambda r: r.granted_at)),
            tuple(sorted(undone, key=lambda u: u.consent.granted_at)))


def _fold_objections(account: str, number: str, events: list[list[Any]]) -> tuple[Objection, ...]:
    """A number's refusals or oppositions: ["at", at, source, recorded_at] events, then
    ["undo", at, undone_at, reason] marking those at that time undone. Ordered by time."""
    recs: list[Objection] = []
    for ev in events:
        if ev[0] == "at":
            recs.append(Objection(account, number, ev[1], ev[2], ev[3]))
        elif ev[0] == "undo":
            recs = [Objection(r.account, r.number, r.at, r.source, r.recorded_at, ev[2], ev[3])
                    if r.active and r.at == ev[1] else r for r in recs]
    return tuple(sorted(recs, key=lambda r: r.at))


def _fold_contracts(account: str, number: str, events: list[list[Any]]) -> tuple[ContractRecord, ...]:
    recs: list[ContractRecord] = []
    for ev in events:
        if ev[0] == "start":
            scope = tuple((ev[4] or "").split()) if len(ev) > 4 else ()
            recs.append(ContractRecord(account, number, ev[1], ev[2], ev[3], scope))
        elif ev[0] == "end":
            at = ev[1]
            recs = [dataclasses.replace(r, ended_at=at) if r.in_force(at) else r for r in recs]
    return tuple(recs)


def _stream_id(sid: str) -> tuple[int, int]:
    ms, _, seq = sid.partition("-")
    return int(ms), int(seq or 0)


class RedisStore(LocalLists):
    """See the module docstring. Open with `await RedisStore.open(url)`; `close()` when done.

    URL: redis://, rediss:// or unix:// as redis-py reads it, plus `socket_timeout=` (seconds, call-path
    commands; default 0.3), `prefix=` (key prefix, default "sipfilter:"), `cluster=1` (Redis Cluster: any
    node's URL) or `sentinel=SERVICE` (Sentinel: redis://[:password@]sentinel1:26379,sentinel2:26379/DB?sentinel=mymaster),
    `replicas=N` (each batch of attempts waits for N replicas: WAIT, see redis_batch). ValueError when one of
    them is malformed (the config loader checks them first)."""

    def __init__(self, url: str, *, poll_interval: float = 1.0, timeout_s: float = DEFAULT_TIMEOUT_S):
        options = redis_options(url)
        redis_url, ours = _split_url(url)
        self.prefix = options.prefix
        self.poll_interval = poll_interval
        self.health = Health(f"redis {_describe(url)}")
        if options.socket_timeout is not None:
            timeout_s = options.socket_timeout
        self._redis = _client(redis_url, ours, timeout_s)  # counters read and written off the call path
        self._bulk = _client(redis_url, ours, max(timeout_s, BULK_TIMEOUT_S))  # replicas, imports
        # The call path's own client: one deadline per pipeline (AttemptBatcher) rather than redis-py's
        # timeout on every socket operation, which costs a Task per command on Python 3.11.
        self._calls = _client(redis_url, ours, timeout_s, socket_timeout=False)
        p = self.prefix
        self.k_lists = p + "lists"
        self.k_list_seq = p + "list:seq"
        # One hash tag for records: the append script touches a hash and the log in one slot (Cluster).
        self.k_consents = p + "{rec}:consents"
        self.k_contracts = p + "{rec}:contracts"
        self.k_refusals = p + "{rec}:refusals"
        self.k_oppositions = p + "{rec}:oppositions"
        self.k_log = p + "{rec}:log"
        self.k_list_history = p + "lists:history"
        self._member_prefix = os.urandom(6).hex() + ":"
        self._member_seq = itertools.count()
        self._attempts: AttemptBatcher | ClusterBatcher = (
            ClusterBatcher(self._calls, _ATTEMPT_LUA, timeout_s) if options.cluster
            else AttemptBatcher(self._calls, _ATTEMPT_LUA, timeout_s, replicas=options.replicas))
        self._refusal = self._redis.register_script(_REFUSAL_LUA)
        self._undo_refusal = self._redis.register_script(_UNDO_REFUSAL_LUA)
        self._append = self._bulk.register_script(_APPEND_LUA)
        self._append_many = self._bulk.register_script(_APPEND_MANY_LUA)
        self._sets: dict[str, NumberSet] = {}
        self._infos: dict[str, ListInfo] = {}
        # Replicas keep the raw event logs (field "account\x1fnumber" → JSON bytes) and fold on lookup: ~200
        # bytes a record instead of ~500, and a full reload is a plain copy.
        self._consents: dict[bytes, bytes] = {}
        self._contracts: dict[bytes, bytes] = {}
        self._refusals: dict[bytes, bytes] = {}
        self._oppositions: dict[bytes, bytes] = {}
        self._log_id: str | None = None  # last change-log entry applied to the replicas
        self._watcher: asyncio.Task[None] | None = None
        self._migration: asyncio.Task[None] | None = None
        self._missing_warned: set[str] = set()
        # One sync at a time: a slower sync must never swap in a snapshot older than a faster one's.
        self._lists_lock = asyncio.Lock()
        self._records_lock = asyncio.Lock()

    @classmethod
    async def open(cls, url: str, *, watch: bool = True, poll_interval: float = 1.0,
                   timeout_s: float = DEFAULT_TIMEOUT_S) -> RedisStore:
        """Connects and loads the replicas; raises StoreUnavailable when Redis cannot be reached."""
        store = cls(url, poll_interval=poll_interval, timeout_s=timeout_s)
        try:
            await store.refresh()
            if watch:  # the proxy: its first calls find the script in Redis (every primary of a Cluster)
                await store._call(lambda: store._redis.script_load(_ATTEMPT_LUA), "sync")
        except StoreUnavailable:
            await store._close_clients()
            raise
        if watch:
            options = redis_options(url)
            if options.sentinel and not options.replicas:
                log.warning("store.redis_url: Sentinel without replicas=: attempts counted just before a "
                            "failover can be lost with the old primary (asynchronous replication); "
                            "replicas=1 makes each wait for a replica")
            store._watcher = asyncio.get_running_loop().create_task(store._watch())
            store._migration = asyncio.get_running_loop().create_task(store._migrate_refusals())
        return store

    async def _migrate_refusals(self) -> None:
        """Once per Redis, by one instance: the refusals recorded before the record history (only their
        counters) become refusal records, so they end the consents given before them as new ones do. Until
        it is done they only hold the cooldown, as they did. In the background: one SCAN of the keyspace."""
        r, done = self._bulk, self.prefix + "migrated:refusal_log"
        try:
            if await r.exists(done) or not await r.set(done + ":lock", os.getpid(), nx=True, ex=3600):
                return
            escaped = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in self.prefix)
            start, moved = f"{self.prefix}c:{{", 0
            async for key in r.scan_iter(match=escaped + "c:{*}:ref", count=1000):
                account, _, number = key.decode()[len(start):-len("}:ref")].partition(SEP)
                value = await r.get(key)
                known = {o.at for o in self._objections(self._refusals, account, number)}
                if value is None or not number or float(value) in known:
                    continue
                event = json.dumps(["at", float(value), "migrated", None])
                await self._append(keys=[self.k_refusals, self.k_log], args=[account + SEP + number, event,
                                                                               LOG_MAXLEN])
                moved += 1
            await r.set(done, moved)
            await self._call(self._sync_records, "sync")
            if moved:
                log.info("redis store: %d refusal(s) recorded before the record history brought forward",
                         moved)
        except (TimeoutError, RedisError, OSError, StoreUnavailable) as exc:
            log.error("redis store: bringing earlier refusals forward failed (retried at the next start): %s",
                      exc)
            with contextlib.suppress(TimeoutError, RedisError, OSError):
                await r.delete(done + ":lock")

    async def _call(self, make: Callable[[], Awaitable[T]], operation: str = "other") -> T:
        if asyncio.current_task() is None:
            # Stepped by hand outside any Task (the B2BUA decides inline): redis-py's timeouts need one.
            return await asyncio.get_running_loop().create_task(self._call(make, operation))
        try:
            result = await make()
        except (TimeoutError, RedisError, OSError) as exc:
            raise self.health.failed(exc, operation) from exc
        self.health.ok()
        return result

    @property
    def round_trips(self) -> int:
        """Call-path exchanges with Redis so far (pipelines of attempt checks, script loads)."""
        return self._attempts.round_trips

    @property
    def attempt_checks(self) -> int:
        """Attempt checks answered (or failed) so far: round_trips / attempt_checks is the batching."""
        return self._attempts.calls

    def _ckey(self, account: str, number: str, kind: str) -> str:
        # Hash tag on (account, number): the attempts and the refusal share a Cluster slot for the script.
        return f"{self.prefix}c:{{{account}{SEP}{number}}}:{kind}"

    # --- lists -------------------------------------------------------------------------------------------
    async def _sync_lists(self) -> None:
        async with self._lists_lock:
            await self._sync_lists_locked()

    async def _sync_lists_locked(self) -> None:
        raw: dict[bytes, bytes] = await self._bulk.hgetall(self.k_lists)
        metas = {k.decode(): json.loads(v) for k, v in raw.items()}
        sets, infos = dict(self._sets), dict(self._infos)
        changed = False
        for name, m in metas.items():
            known = infos.get(name)
            if m.get("deleted"):
                if known is not None and known.version < m["version"]:
                    del sets[name], infos[name]
                    changed = True
                continue
            if known is not None and known.version >= m["version"]:
                continue
            data = await self._read_blob(m["key"])
            if data is None:
                continue  # superseded while we read it; the next poll sees the newer version
            sets[name] = NumberSet.deserialize(data)
            infos[name] = ListInfo(name, m["version"], m["count"], m["imported_at"], m["source_name"],
                                   m["source_size"], m["source_sha256"])
            changed = True
        for name in set(infos) - set(metas):
            # Gone without a tombstone: Redis lost its data (restart without persistence). Keep answering
            # from the copy we have rather than letting every list vanish from the call path.
            if name not in self._missing_warned:
                self._missing_warned.add(name)
                log.error("list %s vanished from Redis without being deleted; keeping version %d in memory",
                          name, infos[name].version)
        if changed:
            self._sets, self._infos = sets, infos

    async def _read_blob(self, key: str) -> bytes | None:
        size = await self._bulk.strlen(key)
        if not size:
            return None
        parts = []
        for start in range(0, size, CHUNK):
            parts.append(await self._bulk.getrange(key, start, min(start + CHUNK, size) - 1))
        data = b"".join(parts)
        return data if len(data) == size else None

    async def put_list(self, name: str, numbers: NumberSet, source: SourceInfo,
                       imported_at: float | None = None) -> ListInfo:
        check_list_name(name)
        data = numbers.serialize()
        r = self._bulk

        async def write() -> dict[str, Any]:
            version = int(await r.incr(self.k_list_seq))
            key = f"{self.prefix}list:{name}:v{version}"
            await r.delete(key)
            for start in range(0, max(len(data), 1), CHUNK):
                await r.append(key, data[start : start + CHUNK])  # aside: no reader knows this key yet
            await r.expire(key, ORPHAN_TTL_S)  # an import that dies before the switch leaves no garbage
            meta = {"version": version, "count": len(numbers),
                    "imported_at": time.time() if imported_at is None else imported_at,
                    "source_name": source.name, "source_size": source.size, "source_sha256": source.sha256,
                    "key": key}
            old = await r.hget(self.k_lists, name)
            await r.persist(key)
            await r.hset(self.k_list_history, f"{name}{SEP}{version}", json.dumps(meta))
            await r.hset(self.k_lists, name, json.dumps(meta))  # the atomic switch
            if old:
                old_key = json.loads(old).get("key")
                if old_key:
                    await r.expire(old_key, OLD_VERSION_GRACE_S)
            return meta

        meta = await self._call(write, "list_write")
        await self._call(self._sync_lists, "sync")
        info = self._infos.get(name)
        if info is None or info.version < meta["version"]:
            raise StoreUnavailable(f"list {name}: version {meta['version']} written but could not be loaded")
        return info

    async def delete_list(self, name: str) -> bool:
        r = self._bulk

        async def tombstone() -> bool:
            old = await r.hget(self.k_lists, name)
            if old is None or json.loads(old).get("deleted"):
                return False
            version = int(await r.incr(self.k_list_seq))
            await r.hset(self.k_lists, name, json.dumps({"version": version, "deleted": True}))
            await r.expire(json.loads(old)["key"], OLD_VERSION_GRACE_S)
            return True

        done = await self._call(tombstone, "list_write")
        await self._call(self._sync_lists, "sync")
        return done

    # --- consents and contracts: local replicas of append-only event logs ---------------------------------
    def consent_for(self, account: str, number: str, at: float) -> ConsentRecord | None:
        field = f"{account}{SEP}{number}".encode()
        raw = self._consents.get(field)
        if raw is None:
            return None
        found = consent_in_force(self._consent_history(account, number, raw), at)
        if found is None:
            return None
        refusals = self._refusals.get(field)
        times = None if refusals is None else sorted(
            r.at for r in _fold_objections(account, number, json.loads(refusals)) if r.active)
        return usable(found, times, self._opposed_since(account, number, field), at)

    def has_contract(self, account: str, number: str, at: float, purpose: str | None = None) -> bool:
        raw = self._contracts.get(f"{account}{SEP}{number}".encode())
        return raw is not None and any(r.in_force(at) and (purpose is None or purpose in r.scope)
                                       for r in self._contract_history(account, number, raw))

    def contract_for(self, account: str, number: str, at: float,
                     purpose: str | None = None) -> ContractRecord | None:  # fmt: skip
        raw = self._contracts.get(f"{account}{SEP}{number}".encode())
        if raw is None:
            return None
        return latest_contract(self._contract_history(account, number, raw), at, purpose)

    def opposition_for(self, account: str, number: str, at: float) -> float | None:
        since = self._opposed_since(account, number, f"{account}{SEP}{number}".encode())
        return since if since is not None and since <= at else None

    def _opposed_since(self, account: str, number: str, field: bytes) -> float | None:
        raw = self._oppositions.get(field)
        if raw is None:
            return None
        opposed = _fold_objections(account, number, json.loads(raw))
        return min((o.at for o in opposed if o.active), default=None)

    def _consent_history(self, account: str, number: str,
                         raw: bytes | None = None) -> tuple[ConsentRecord, ...]:
        if raw is None:
            raw = self._consents.get(f"{account}{SEP}{number}".encode())
        return _fold_consents(account, number, json.loads(raw))[0] if raw else ()

    def _objections(self, replica: dict[bytes, bytes], account: str, number: str) -> tuple[Objection, ...]:
        raw = replica.get(f"{account}{SEP}{number}".encode())
        return _fold_objections(account, number, json.loads(raw)) if raw else ()

    def _contract_history(self, account: str, number: str,
                          raw: bytes | None = None) -> tuple[ContractRecord, ...]:
        if raw is None:
            raw = self._contracts.get(f"{account}{SEP}{number}".encode())
        return _fold_contracts(account, number, json.loads(raw)) if raw else ()

    async def _append_event(self, hash_key: str, account: str, number: str, event: list[Any]) -> None:
        await self._call(lambda: self._append(keys=[hash_key, self.k_log],
                                              args=[account + SEP + number, json.dumps(event), LOG_MAXLEN]),
                         "record_write")
        await self._call(self._sync_records, "sync")

    async def add_consent(self, record: ConsentRecord) -> None:
        await self._append_event(self.k_consents, record.account, record.number,
                                 ["grant", record.granted_at, record.proof, record.hours, record.time_zone])
        if record.revoked_at is not None:
            await self.revoke_consent(record.account, record.number, record.revoked_at)

    async def add_consents(self, records: Sequence[ConsentRecord]) -> None:
        for start in range(0, len(records), 2000):
            args: list[Any] = [LOG_MAXLEN]
            for r in records[start : start + 2000]:
                args += [r.account + SEP + r.number,
                         json.dumps(["grant", r.granted_at, r.proof, r.hours, r.time_zone])]
            keys = [self.k_consents, self.k_log]
            await self._call(functools.partial(self._append_many, keys=keys, args=args), "record_write")
        for r in records:
            if r.revoked_at is not None:
                await self.revoke_consent(r.account, r.number, r.revoked_at)
        await self._call(self._sync_records, "sync")

    async def revoke_consent(self, account: str, number: str, at: float) -> int:
        await self._call(self._sync_records, "sync")
        before = self._consent_history(account, number)
        n = sum(1 for r in before if r.granted_at <= at and (r.revoked_at is None or r.revoked_at > at))
        if n:
            await self._append_event(self.k_consents, account, number, ["revoke", at])
        return n

    async def consents(self, account: str, number: str) -> tuple[ConsentRecord, ...]:
        await self._call(self._sync_records, "sync")
        return self._consent_history(account, number)

    async def add_contract(self, record: ContractRecord) -> None:
        await self._append_event(self.k_contracts, record.account, record.number,
                                 ["start", record.started_at, record.ended_at, record.reference,
                                  scope_text(record.scope)])

    async def end_contract(self, account: str, number: str, at: float) -> int:
        await self._call(self._sync_records, "sync")
        n = sum(1 for r in self._contract_history(account, number) if r.in_force(at))
        if n:
            await self._append_event(self.k_contracts, account, number, ["end", at])
        return n

    async def contracts(self, account: str, number: str) -> tuple[ContractRecord, ...]:
        await self._call(self._sync_records, "sync")
        return self._contract_history(account, number)

    async def undo_consent(self, account: str, number: str, proof: str | None, granted_at: float | None,
                           reason: str, undone_at: float) -> tuple[ConsentRecord, ...]:
        await self._call(self._sync_records, "sync")
        undone = consent_undo_targets(self._consent_history(account, number), proof, granted_at)
        for r in {(r.granted_at, r.proof) for r in undone}:
            await self._append_event(self.k_consents, account, number, ["undo", *r, undone_at, reason])
        return tuple(undone)

    # --- objections: refusals and oppositions --------------------------------------------------------------
    async def record_refusal(self, account: str, number: str, at: float, source: str = "") -> None:
        # The event log first: it ends the consents and is the proof; then the counter the attempt script
        # reads. Should the second write fail, the caller sees the error and retries (a repeated event is
        # harmless).
        await self._append_event(self.k_refusals, account, number, ["at", at, source, time.time()])
        await self._call(lambda: self._refusal(keys=[self._ckey(account, number, "ref")],
                                               args=[repr(float(at)), REFUSAL_TTL_S]), "record_write")

    async def undo_refusal(self, account: str, number: str, at: float | None, reason: str,
                           undone_at: float) -> tuple[Objection, ...]:
        await self._call(self._sync_records, "sync")
        active = [r for r in self._objections(self._refusals, account, number) if r.active]
        times = undo_targets([r.at for r in active], at)
        for t in times:
            await self._append_event(self.k_refusals, account, number, ["undo", t, undone_at, reason])
        if times:
            key = self._ckey(account, number, "ref")
            left = [r.at for r in self._objections(self._refusals, account, number) if r.active]
            await self._call(lambda: self._undo_refusal(
                keys=[key], args=[repr(float(max(times))), repr(float(max(left))) if left else "",
                                  REFUSAL_TTL_S]), "record_write")
            # A refusal recorded by another instance meanwhile may have been missed by `left`: raise the
            # counter to the latest one the log now holds (the refusal script only ever raises it).
            await self._call(self._sync_records, "sync")
            left = [r.at for r in self._objections(self._refusals, account, number) if r.active]
            if left:
                latest = repr(float(max(left)))
                await self._call(lambda: self._refusal(keys=[key], args=[latest, REFUSAL_TTL_S]),
                                 "record_write")
        return tuple(Objection(r.account, r.number, r.at, r.source, r.recorded_at, undone_at, reason)
                     for r in active if r.at in times)

    async def add_opposition(self, account: str, number: str, at: float, source: str = "") -> None:
        await self._append_event(self.k_oppositions, account, number, ["at", at, source, time.time()])

    async def undo_opposition(self, account: str, number: str, reason: str,
                              undone_at: float) -> tuple[Objection, ...]:
        await self._call(self._sync_records, "sync")
        active = [o for o in self._objections(self._oppositions, account, number) if o.active]
        for t in sorted({o.at for o in active}):
            await self._append_event(self.k_oppositions, account, number, ["undo", t, undone_at, reason])
        return tuple(Objection(o.account, o.number, o.at, o.source, o.recorded_at, undone_at, reason)
                     for o in active)

    async def history(self, account: str, number: str) -> History:
        await self._call(self._sync_records, "sync")
        raw = self._consents.get(f"{account}{SEP}{number}".encode())
        consents, undone = _fold_consents(account, number, json.loads(raw)) if raw else ((), ())
        return History(account, number, consents, undone, self._contract_history(account, number),
                       self._objections(self._refusals, account, number),
                       self._objections(self._oppositions, account, number))

    async def list_history(self, name: str) -> tuple[ListInfo, ...]:
        async def read() -> list[bytes]:
            # List names have no glob characters (check_list_name).
            return [v async for _, v in self._bulk.hscan_iter(self.k_list_history, match=f"{name}{SEP}*",
                                                               count=1000)]

        metas = [json.loads(v) for v in await self._call(read, "read")]
        return tuple(sorted((ListInfo(name, m["version"], m["count"], m["imported_at"], m["source_name"],
                                      m["source_size"], m["source_sha256"]) for m in metas),
                            key=lambda i: i.version))

    def _apply(self, hash_key: bytes, field: bytes, value: bytes | None) -> None:
        replica = self._replicas().get(hash_key.decode())
        if replica is None:
            return  # a records hash this version does not replicate
        if value is None:
            replica.pop(field, None)
        else:
            replica[field] = value

    async def _sync_records(self) -> None:
        async with self._records_lock:
            await self._sync_records_locked()

    async def _sync_records_locked(self) -> None:
        r = self._bulk
        if self._log_id is not None:
            first = await r.xrange(self.k_log, "-", "+", count=1)
            if not first or _stream_id(first[0][0].decode()) <= _stream_id(self._log_id):
                while True:
                    entries = await r.xrange(self.k_log, "(" + self._log_id, "+", count=10_000)
                    if not entries:
                        return
                    todo = {(e[1][b"h"], e[1][b"f"]) for e in entries}
                    if any(not f for _, f in todo):
                        break  # a bulk import: reload everything below
                    pipe = r.pipeline(transaction=False)
                    for h, f in todo:
                        pipe.hget(h, f)
                    values = await pipe.execute()
                    for (h, f), v in zip(todo, values, strict=True):
                        self._apply(h, f, v)
                    self._log_id = entries[-1][0].decode()
            # else: the log was trimmed past our position, or a bulk import: reload everything below.
        last = await r.xrevrange(self.k_log, "+", "-", count=1)
        log_id = last[0][0].decode() if last else "0-0"
        loaded: dict[str, dict[bytes, bytes]] = {}
        for hash_key in self._replicas():
            loaded[hash_key] = replica = {}
            async for f, v in r.hscan_iter(hash_key, count=1000):
                replica[f] = v
        self._consents, self._contracts = loaded[self.k_consents], loaded[self.k_contracts]
        self._refusals, self._oppositions = loaded[self.k_refusals], loaded[self.k_oppositions]
        self._log_id = log_id

    def _replicas(self) -> dict[str, dict[bytes, bytes]]:
        """Records hash → its local replica (field "account\x1fnumber" → JSON event log)."""
        return {self.k_consents: self._consents, self.k_contracts: self._contracts,
                self.k_refusals: self._refusals, self.k_oppositions: self._oppositions}

    # --- refresh --------------------------------------------------------------------------------------
    async def refresh(self) -> None:
        await self._call(self._sync_lists, "sync")
        await self._call(self._sync_records, "sync")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.refresh()
            except StoreUnavailable:
                pass  # logged once by Health; replicas keep answering
            except Exception:  # never let the watcher die: lists would silently freeze
                log.exception("redis store watcher")

    # --- counters --------------------------------------------------------------------------------------
    async def check_and_record_attempt(
        self, account: str, number: str, now: float, cap: int, window_s: float, refusal_cooldown_s: float
    ) -> AttemptDecision:
        # Unique per attempt across instances and restarts: a resend of the same attempt counts once.
        member = f"{now!r}:{self._member_prefix}{next(self._member_seq)}"
        key = self._ckey(account, number, "")
        # A plain future, no Task: this runs inside the B2BUA's hand-stepped decision (see redis_batch).
        pending = self._attempts.submit(
            (key + "att", key + "ref"),
            (repr(now), cap, repr(float(window_s)), repr(float(refusal_cooldown_s)), member))
        try:
            res = await pending
        except (TimeoutError, RedisError, OSError) as exc:
            raise self.health.failed(exc, "attempt") from exc
        self.health.ok()
        refused = float(res[2]) if res[2] is not None else None
        return AttemptDecision(bool(res[0]), int(res[1]), refused)

    async def attempts(self, account: str, number: str, now: float, window_s: float) -> int:
        key = self._ckey(account, number, "att")
        return int(await self._call(lambda: self._redis.zcount(key, f"({now - window_s!r}", "+inf"), "read"))

    async def last_refusal(self, account: str, number: str) -> float | None:
        v = await self._call(lambda: self._redis.get(self._ckey(account, number, "ref")), "read")
        return float(v) if v is not None else None

    async def close(self) -> None:
        for task in (self._watcher, self._migration):
            if task is not None:
                # Cancelled again until done: a cancellation that lands inside redis-py's connection code
                # can be swallowed there, and the watcher would then sleep on as if nothing happened.
                while not task.done():
                    task.cancel()
                    await asyncio.wait({task}, timeout=0.1)
        self._watcher = self._migration = None
        await self._attempts.close()
        await self._close_clients()

    async def _close_clients(self) -> None:
        for client in (self._calls, self._redis, self._bulk):
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()
