"""The Redis store's call path: the attempts decided in one event-loop pass go to Redis in one pipeline.

The B2BUA steps each decision's coroutine by hand, outside any asyncio Task (most decisions never suspend,
and a Task per call costs), so nothing a decision awaits may need a Task of its own. redis-py's socket
timeouts do. A decision therefore awaits a plain future from `AttemptBatcher.submit`; one flusher Task per
burst sends every queued check-and-record script (EVALSHA: the script is loaded once per Redis server)
in one pipeline — one round trip however many decisions are waiting — and resolves the futures. While a
pipeline is in flight the next decisions queue up, so batches grow with the load by themselves and the call
path holds one Redis connection. That connection is used directly (packed commands written, replies read):
redis-py's Pipeline adds per-round-trip work of its own (an object, the pool, a retry wrapper) that showed
in the call path's CPU; a Cluster still goes through its ClusterPipeline, which routes each script to the
shard of its keys.

With `replicas=N` the pipeline ends with `WAIT N <ms>`: a call is relayed only once its attempt is on N
replicas, so a Sentinel failover (the primary killed) loses no counted attempt. Without it Redis replicates
asynchronously and the last attempts before a crash can be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

MAX_BATCH = 256  # commands in one pipeline: bounds the reply a single read waits for


class ReplicasBehind(RedisError):
    """WAIT returned fewer acknowledgements than `replicas=`: the attempts may not survive a failover."""


class AttemptBatcher:
    """Queues script calls (keys, args) and runs them through `client` in pipelines, one in flight at a time,
    each within `timeout_s` (connecting, sending, reading: the client itself needs no socket timeout).

    `submit` never awaits and needs no Task: the caller awaits the future it returns, whose result is the
    script's reply, or whose exception is the RedisError/OSError the round trip raised."""

    def __init__(self, client: Any, script: str, timeout_s: float, *, replicas: int = 0,
                 max_batch: int = MAX_BATCH) -> None:
        self._client = client
        self._script = script
        self._sha = hashlib.sha1(script.encode()).hexdigest()
        self._timeout_s = timeout_s
        self._replicas = replicas
        self._wait_ms = max(1, int(timeout_s * 500))  # WAIT gives up at half the deadline: its answer fits
        self._max_batch = max_batch
        self._cluster = not hasattr(client, "connection_pool")  # RedisCluster: a pool per node
        self._conn: Any = None  # the call path's connection, taken from the client's pool when first needed
        self._queue: list[tuple[Sequence[str], Sequence[Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._in_flight: list[tuple[Sequence[str], Sequence[Any], asyncio.Future[Any]]] = []
        self.round_trips = 0  # exchanges with Redis: pipelines, and the SCRIPT LOAD after a NOSCRIPT
        self.calls = 0  # script calls answered, successfully or not

    def submit(self, keys: Sequence[str], args: Sequence[Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((keys, args, future))
        if self._flusher is None:
            # Runs after the current pass: every decision of this pass is queued by then.
            self._flusher = loop.create_task(self._flush())
        return future

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch = self._in_flight = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                try:
                    async with asyncio.timeout(self._timeout_s):
                        replies = await self._run(batch)
                except TimeoutError:  # the connection cut off mid-exchange is dropped: no stale reply later
                    replies = [RedisTimeout(f"no answer within {self._timeout_s:g} s")] * len(batch)
                except (RedisError, OSError) as exc:
                    replies = [exc] * len(batch)
                self.calls += len(batch)
                for (_, _, future), reply in zip(batch, replies, strict=True):
                    if future.done():  # the caller went away (cancelled): nothing to tell
                        continue
                    if isinstance(reply, BaseException):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
        finally:
            self._flusher = None
            self._in_flight = []

    async def _run(self, batch: list[tuple[Sequence[str], Sequence[Any], asyncio.Future[Any]]]) -> list[Any]:
        replies = await self._pipeline(batch)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            # This Redis has not seen the script yet (restarted, failed over, SCRIPT FLUSH): load it once and
            # resend only those calls. SCRIPT LOAD goes to every primary of a Cluster.
            self.round_trips += 1
            await self._client.script_load(self._script)
            again = await self._pipeline([batch[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, batch: list[tuple[Sequence[str], Sequence[Any], asyncio.Future[Any]]]
                        ) -> list[Any]:  # fmt: skip
        commands: list[tuple[Any, ...]] = [("EVALSHA", self._sha, len(keys), *keys, *args)
                                           for keys, args, _ in batch]  # fmt: skip
        if self._replicas:
            commands.append(("WAIT", self._replicas, self._wait_ms))
        self.round_trips += 1
        if self._cluster:
            pipe = self._client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        else:
            try:
                replies = await self._exchange(commands)
            except RedisConnectionError:
                # A connection broken before this exchange (Redis restarted, a Sentinel failover): once more
                # on a fresh one, never after a timeout. A script Redis ran before the break counts once.
                self.round_trips += 1
                replies = await self._exchange(commands)
        if self._replicas:
            acked = replies.pop()
            if isinstance(acked, BaseException):
                raise acked
            if int(acked) < self._replicas:
                raise ReplicasBehind(f"WAIT: {acked} of {self._replicas} replica(s) acknowledged the "
                                     f"attempts within {self._wait_ms} ms")
        return replies

    async def _exchange(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Write `commands` in one go on the call path's connection and read their replies (a Redis error
        reply is returned in its place). Any failure, a cancellation included, drops the connection: a reply
        left unread must never answer the next exchange."""
        conn = self._conn
        if conn is None:
            conn = self._conn = await self._client.connection_pool.get_connection()
        try:
            await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:  # NOSCRIPT, WRONGTYPE…: this command's reply; the stream is fine
                    replies.append(exc)
        except BaseException:
            await self._drop_connection()
            raise
        return replies

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(RedisError, OSError):
                await conn.disconnect(nowait=True)
            with contextlib.suppress(RedisError, OSError):
                await self._client.connection_pool.release(conn)

    async def close(self) -> None:
        """Stop the flusher; the calls in flight or still queued fail with a RedisError."""
        flusher, self._flusher = self._flusher, None
        waiting = self._in_flight + self._queue
        self._queue = []
        if flusher is not None:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        for _, _, future in waiting:
            if not future.done():
                future.set_exception(RedisError("store closed"))
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(RedisError, OSError):
                await self._client.connection_pool.release(conn)
