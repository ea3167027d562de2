"""The Redis store on the call path: stepped outside any Task as the B2BUA does, one batch per event-loop
pass written without waiting for the batches in flight, the script loaded once, WAIT for replicas, resends
counted once, URL options checked at config load."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from redis_server import RedisServer, free_port

from sipfilter.config import ConfigError
from sipfilter.configure import load_config
from sipfilter.stores.base import AttemptDecision, StoreUnavailable
from sipfilter.stores.redis_store import _ATTEMPT_LUA, RedisStore
from sipfilter.stores.redis_url import RedisOptions, redis_options

DAY = 86400.0
# What INFO commandstats counts besides the clients' own commands: the script's calls, and the test's probes.
NOT_SENT_BY_THE_STORE = {"zremrangebyscore", "zcard", "get", "zscore", "zadd", "pexpire", "hello", "info",
                         "config|resetstat"}


def _stats(server: RedisServer) -> dict[str, int]:
    """Commands the store sent since the last CONFIG RESETSTAT (INFO commandstats)."""
    client = redis.Redis(port=server.port)
    try:
        info = client.info("commandstats")
    finally:
        client.close()
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items()}
    return {name: n for name, n in calls.items() if name not in NOT_SENT_BY_THE_STORE}


def _reset_stats(server: RedisServer) -> None:
    client = redis.Redis(port=server.port)
    try:
        client.config_resetstat()
    finally:
        client.close()


def _step_by_hand(coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
    """Run a coroutine the way the B2BUA runs a decision: first step inline from a loop callback (no Task),
    then resumed from the done-callback of whatever it awaits; never inside a Task."""
    loop = asyncio.get_running_loop()
    result: asyncio.Future[Any] = loop.create_future()

    def step(_: Any = None) -> None:
        try:
            awaited = coro.send(None)
        except StopIteration as stop:
            result.set_result(stop.value)
        except BaseException as exc:
            result.set_exception(exc)
        else:
            assert asyncio.current_task() is None
            awaited._asyncio_future_blocking = False
            awaited.add_done_callback(step)

    loop.call_soon(step)
    return result


async def test_check_and_record_stepped_outside_any_task(redis_server: RedisServer) -> None:
    store = await RedisStore.open(redis_server.url, watch=False)
    try:
        decisions = [await _step_by_hand(store.check_and_record_attempt("acme", "+33612345678", 100.0 + i,
                                                                        4, 30 * DAY, 60 * DAY))
                     for i in range(5)]  # fmt: skip
        assert [d.allowed for d in decisions] == [True, True, True, True, False]
        assert decisions[-1] == AttemptDecision(False, 4, None)
        assert store.health.errors == 0
    finally:
        await store.close()


async def test_record_refusal_stepped_outside_any_task(redis_server: RedisServer) -> None:
    """Commands outside the batch (refusals, reads) run in a Task of the store's own when there is none."""
    store = await RedisStore.open(redis_server.url, watch=False)
    try:
        await _step_by_hand(store.record_refusal("acme", "+33612345678", 50.0))
        assert await _step_by_hand(store.last_refusal("acme", "+33612345678")) == 50.0
    finally:
        await store.close()


async def test_one_round_trip_for_the_decisions_of_one_pass(redis_server: RedisServer) -> None:
    store = await RedisStore.open(redis_server.url, watch=False)
    try:
        await store.check_and_record_attempt("acme", "+33699999999", 1.0, 4, DAY, DAY)  # script loaded
        _reset_stats(redis_server)
        trips = store._attempts.round_trips
        callees = [f"+336000000{n:02d}" for n in range(40)]
        decisions = await asyncio.gather(*(store.check_and_record_attempt("acme", c, 10.0, 4, DAY, DAY)
                                           for c in callees * 2))  # fmt: skip
        assert all(d.allowed for d in decisions)
        assert [d.attempts_in_window for d in decisions] == [1] * 40 + [2] * 40
        assert store._attempts.round_trips - trips == 1
        assert _stats(redis_server) == {"evalsha": 80}  # nothing else: no EVAL, no SCRIPT EXISTS
    finally:
        await store.close()


async def test_the_script_is_loaded_again_after_redis_forgets_it(redis_server: RedisServer) -> None:
    store = await RedisStore.open(redis_server.url, watch=False)
    try:
        assert (await store.check_and_record_attempt("acme", "+33612345678", 1.0, 4, DAY, DAY)).allowed
        client = redis.Redis(port=redis_server.port)
        try:
            client.script_flush()  # as after a restart without persistence or a failover to a fresh replica
        finally:
            client.close()
        _reset_stats(redis_server)
        trips = store._attempts.round_trips
        d = await store.check_and_record_attempt("acme", "+33612345678", 2.0, 4, DAY, DAY)
        assert d == AttemptDecision(True, 2, None)
        assert store._attempts.round_trips - trips == 3  # NOSCRIPT, SCRIPT LOAD, resend
        assert _stats(redis_server) == {"evalsha": 2, "script|load": 1}
        assert store.health.errors == 0
    finally:
        await store.close()


async def test_a_stalled_redis_fails_within_the_deadline_and_leaves_no_stale_reply(
        redis_server: RedisServer) -> None:
    store = await RedisStore.open(redis_server.url + "?socket_timeout=0.2", watch=False)
    try:
        assert (await store.check_and_record_attempt("acme", "+33612345678", 1.0, 4, DAY, DAY)).allowed
        assert redis_server.proc is not None
        redis_server.proc.send_signal(signal.SIGSTOP)  # alive but silent: a hung or swapping Redis
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match=r"no answer within 0\.2 s"):
                await store.check_and_record_attempt("acme", "+33612345678", 2.0, 4, DAY, DAY)
            assert time.monotonic() - started < 1.0
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
        # The cut-off exchange's connection was dropped: its late reply ({1, 2}) never reaches this call.
        d = await store.check_and_record_attempt("acme", "+33687654321", 3.0, 4, DAY, DAY)
        assert d == AttemptDecision(True, 1, None)
        assert store.health.up
    finally:
        await store.close()


async def test_a_batch_is_written_while_another_is_in_flight(redis_server: RedisServer) -> None:
    """No head-of-line wait: the decisions of a later pass go out before the earlier batch is answered, and
    each batch's replies answer its own calls (Redis answers in order on the one connection)."""
    store = await RedisStore.open(redis_server.url + "?socket_timeout=5", watch=False)
    try:
        await store.check_and_record_attempt("acme", "+33699999999", 1.0, 4, DAY, DAY)  # connection open
        assert redis_server.proc is not None
        trips = store._attempts.round_trips
        redis_server.proc.send_signal(signal.SIGSTOP)  # nothing is answered until SIGCONT
        try:
            first = _step_by_hand(store.check_and_record_attempt("acme", "+33611111111", 10.0, 1, DAY, DAY))
            for _ in range(3):
                await asyncio.sleep(0)
            assert store._attempts.round_trips - trips == 1
            second = [_step_by_hand(store.check_and_record_attempt("acme", n, 11.0, 1, DAY, DAY))
                      for n in ("+33611111111", "+33622222222")]  # fmt: skip
            for _ in range(3):
                await asyncio.sleep(0)
            assert store._attempts.round_trips - trips == 2  # written at once, not after the first's reply
            assert not first.done() and not any(f.done() for f in second)
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
        assert await first == AttemptDecision(True, 1, None)
        assert [await f for f in second] == [AttemptDecision(False, 1, None), AttemptDecision(True, 1, None)]
        assert store.health.up
    finally:
        await store.close()


async def test_calls_in_flight_on_a_broken_connection_are_resent_once(redis_server: RedisServer) -> None:
    """Redis dies with a batch unanswered and is back at once (restarted, AOF): the calls go again on a
    fresh connection, answered and counted once; the data written before is still there."""
    store = await RedisStore.open(redis_server.url + "?socket_timeout=5", watch=False)
    try:
        await store.check_and_record_attempt("acme", "+33611111111", 1.0, 4, DAY, DAY)  # connection open
        assert redis_server.proc is not None
        trips = store._attempts.round_trips
        redis_server.proc.send_signal(signal.SIGSTOP)
        pending = _step_by_hand(store.check_and_record_attempt("acme", "+33611111111", 10.0, 4, DAY, DAY))
        for _ in range(3):
            await asyncio.sleep(0)
        assert store._attempts.round_trips - trips == 1 and not pending.done()
        # No await from the kill to the restart: the event loop sees the break only once Redis is back.
        redis_server.kill()
        redis_server.start()
        assert await pending == AttemptDecision(True, 2, None)
        # The batch; its resend, answered NOSCRIPT (a restarted Redis has no scripts); SCRIPT LOAD; resend.
        assert store._attempts.round_trips - trips == 4
        admin = redis.Redis(port=redis_server.port)
        try:
            assert admin.zcard(store._ckey("acme", "+33611111111", "att")) == 2
        finally:
            admin.close()
        assert store.health.up
    finally:
        await store.close()


async def test_the_call_path_through_a_unix_socket(tmp_path: Path) -> None:
    """A Redis on the same host, reached as unix:///path: the held connection is a unix socket's."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    sock = tmp_path / "redis.sock"
    server = RedisServer(free_port(), tmp_path / "redis", extra=("--unixsocket", str(sock),
                                                                 "--unixsocketperm", "700"))
    server.dir.mkdir()
    server.start()
    store = None
    try:
        store = await RedisStore.open(f"unix://{sock}?db=0", watch=False)
        decisions = [await _step_by_hand(store.check_and_record_attempt("acme", "+33612345678", float(t), 2,
                                                                        DAY, DAY)) for t in (1, 2, 3)]
        assert decisions == [AttemptDecision(True, 1, None), AttemptDecision(True, 2, None),
                             AttemptDecision(False, 2, None)]
        # The first: EVALSHA answered NOSCRIPT (watch=False loads nothing), SCRIPT LOAD, resend; then 1 each.
        assert store.round_trips == 5
    finally:
        if store is not None:
            await store.close()
        server.kill()


def start_replica(primary: RedisServer, tmp_path: Path) -> RedisServer:
    """A redis-server replicating `primary` (the caller kills it)."""
    replica = RedisServer(free_port(), tmp_path / "replica",
                          extra=("--replicaof", "127.0.0.1", str(primary.port)))
    replica.dir.mkdir()
    replica.start()
    return replica


async def test_a_primary_turned_replica_is_left_and_asked_once_more(tmp_path: Path,
                                                                     redis_server: RedisServer) -> None:
    """READONLY (the URL's server is a replica now, as after a failover): the call goes once more on a fresh
    connection (a Sentinel-managed one asks the Sentinels for the primary), then fails as unavailable."""
    replica = start_replica(redis_server, tmp_path)
    store = None
    try:
        store = await RedisStore.open(replica.url + "?socket_timeout=2", watch=False)
        await store._attempts._client.script_load(_ATTEMPT_LUA)  # a replica accepts SCRIPT LOAD
        trips = store._attempts.round_trips
        with pytest.raises(StoreUnavailable, match="READONLY"):
            await store.check_and_record_attempt("acme", "+33612345678", 1.0, 4, DAY, DAY)
        assert store._attempts.round_trips - trips == 2  # the batch, and once more on a fresh connection
    finally:
        if store is not None:
            await store.close()
        replica.kill()


async def test_a_resent_attempt_counts_once(redis_server: RedisServer) -> None:
    """A pipeline resent after a broken connection may run twice in Redis: the member makes it idempotent."""
    client = redis.Redis(port=redis_server.port)
    try:
        args = ["1000.0", 4, "100.0", "0.0", "1000.0:abc"]
        first = client.eval(_ATTEMPT_LUA, 2, "att", "ref", *args)
        again = client.eval(_ATTEMPT_LUA, 2, "att", "ref", *args)
        assert first[:2] == again[:2] == [1, 1]
        assert client.zcard("att") == 1
    finally:
        client.close()


async def test_replicas_wait_for_the_replica(tmp_path: Path, redis_server: RedisServer) -> None:
    replica = start_replica(redis_server, tmp_path)
    store = None
    try:
        for _ in range(100):  # the replica's first sync
            client = redis.Redis(port=redis_server.port)
            try:
                if client.info("replication").get("slave0", {}).get("state") == "online":
                    break
            finally:
                client.close()
            await asyncio.sleep(0.05)
        store = await RedisStore.open(redis_server.url + "?replicas=1&socket_timeout=0.4", watch=False)
        d = await store.check_and_record_attempt("acme", "+33612345678", 1.0, 4, DAY, DAY)
        assert d.allowed
        follower = redis.Redis(port=replica.port)
        try:  # acknowledged by the replica before the answer: it is there now, not eventually
            assert follower.zcard(store._ckey("acme", "+33612345678", "att")) == 1
        finally:
            follower.close()
        replica.kill()
        with pytest.raises(StoreUnavailable, match="replica"):
            await store.check_and_record_attempt("acme", "+33612345678", 2.0, 4, DAY, DAY)
        assert store.health.by_operation["attempt"] == 1
    finally:
        if store is not None:
            await store.close()
        replica.kill()


@pytest.mark.parametrize(("query", "problem"), [
    ("replicas=x", "replicas='x'"),
    ("replicas=1&cluster=1", "not supported with cluster=1"),
    ("socket_timeout=0", "socket_timeout='0'"),
    ("socket_timeout=abc", "socket_timeout='abc'"),
    ("sentinel=", "sentinel="),
    ("sentinel=m&cluster=1", "exclude each other"),
])  # fmt: skip
def test_bad_url_options_are_config_errors(tmp_path: Path, query: str, problem: str) -> None:
    example = Path(__file__).resolve().parents[2] / "config" / "sipfilter.yaml"
    config = yaml.safe_load(example.read_text())
    config["rule_packs"] = {name: str(example.parent / p) for name, p in config["rule_packs"].items()}
    config["store"] = {"backend": "redis", "redis_url": f"redis://127.0.0.1:6379/0?{query}"}
    path = tmp_path / "sipfilter.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="redis_url") as err:
        load_config(path)
    assert problem in str(err.value)


def test_url_options() -> None:
    assert redis_options("redis://h:1/0") == RedisOptions()
    assert redis_options("redis://h:1/0?replicas=1&socket_timeout=0.5&prefix=a:") == RedisOptions(
        prefix="a:", socket_timeout=0.5, replicas=1)
    assert redis_options("redis://h:1,h:2/0?sentinel=mymaster").sentinel == "mymaster"
    assert redis_options("redis://h:1/0?cluster=yes").cluster
