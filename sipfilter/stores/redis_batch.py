"""The Redis store's call path: attempt checks streamed to Redis on one held connection, answered as their
replies arrive.

The B2BUA steps each decision's coroutine by hand, outside any asyncio Task (most decisions never suspend,
and a Task per call costs), so nothing a decision awaits may need a Task of its own. redis-py's socket
timeouts do. A decision therefore awaits a plain future from `submit`. The decisions queued in one
event-loop pass are written together once the pass is over (one write, one round trip: EVALSHA of the
check-and-record script, loaded once per Redis server), without waiting for the batches still in flight:
Redis answers in order on one connection, so a batch never queues behind another's round trip. redis-py
opens the connection (Sentinel discovery, TLS, AUTH, SELECT); the replies are then parsed as they arrive by a
protocol of this module's own (hiredis), which resolves each batch's futures in the loop pass that reads it.
Each batch has a deadline (`timeout_s`); one that misses it drops the connection and fails every batch in
flight (a late reply must never answer a later call). A connection that breaks is reopened and the batches
in flight on it resent, once: the script's member makes a resent attempt count once.

A Cluster goes through redis-py's ClusterPipeline instead (ClusterBatcher), which routes each script to the
shard of its keys, one pipeline in flight at a time.

With `replicas=N` each batch ends with `WAIT N <ms>`: a call is relayed only once its attempt is on N
replicas, so a Sentinel failover (the primary killed) loses no counted attempt. Without it Redis replicates
asynchronously and the last attempts before a crash can be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

MAX_BATCH = 256  # commands in one write: bounds the reply one batch waits for

_MORE = object()  # hiredis: not enough data for a whole reply yet
# An unsent or in-flight script call: (RESP command, its future, resent after a break, resent after NOSCRIPT).
Item = tuple[bytes, "asyncio.Future[Any]", bool, bool]


class ReplicasBehind(RedisError):
    """WAIT returned fewer acknowledgements than `replicas=`: the attempts may not survive a failover."""


def _reply_error(message: str) -> ResponseError:
    """An error reply as redis-py would raise it, for the ones the batcher tells apart."""
    code = message.partition(" ")[0]
    if code == "NOSCRIPT":
        return NoScriptError(message)
    if code == "READONLY":
        return ReadOnlyError(message)
    return ResponseError(message)


def _bulk(part: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(part), part)


def _command(*parts: str | int) -> bytes:
    """One command in RESP."""
    encoded = [str(p).encode() for p in parts]
    return b"*%d\r\n" % len(encoded) + b"".join(_bulk(p) for p in encoded)


class _Batch:
    __slots__ = ("deadline", "expect", "items", "replies")

    def __init__(self, items: list[Item], expect: int, deadline: float) -> None:
        self.items = items
        self.expect = expect  # replies: one per item, and WAIT's
        self.deadline = deadline
        self.replies: list[Any] = []


class _Replies(asyncio.Protocol):
    """The held connection's protocol once redis-py has opened it: each reply, parsed as soon as its bytes
    arrive, goes to the batcher."""

    def __init__(self, batcher: AttemptBatcher) -> None:
        self._batcher = batcher
        self._reader = hiredis.Reader(replyError=_reply_error, notEnoughData=_MORE)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        try:
            reply = reader.gets()
            while reply is not _MORE:
                self._batcher._reply(self, reply)
                reply = reader.gets()
        except hiredis.ProtocolError as exc:
            self._batcher._lost(self, RedisConnectionError(f"Redis protocol error: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._batcher._lost(self, exc)


class AttemptBatcher:
    """Queues script calls (keys, args) and streams them to Redis on one connection of `client`'s pool (see
    the module docstring), each batch within `timeout_s` (connecting included: the client itself needs no
    socket timeout).

    `submit` never awaits and needs no Task: the caller awaits the future it returns, whose result is the
    script's reply, or whose exception is the RedisError/OSError the round trip raised."""

    def __init__(self, client: Any, script: str, timeout_s: float, *, replicas: int = 0,
                 max_batch: int = MAX_BATCH) -> None:
        self._client = client
        self._script = script
        sha = hashlib.sha1(script.encode()).hexdigest()
        self._evalsha = _bulk(b"EVALSHA") + _bulk(sha.encode())
        self._timeout_s = timeout_s
        self._replicas = replicas
        wait_ms = max(1, int(timeout_s * 500))  # WAIT gives up at half the deadline: its answer fits
        self._wait = _command("WAIT", replicas, wait_ms) if replicas else b""
        self._wait_ms = wait_ms
        self._max_batch = max_batch
        self._queue: list[Item] = []  # not written yet
        self._sent: deque[_Batch] = deque()  # written, oldest first: the order Redis answers in
        self._reloading: list[Item] = []  # answered NOSCRIPT, resent once the script is loaded
        self._send_soon: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._loading: asyncio.Task[None] | None = None
        self._conn: Any = None  # the redis-py connection whose transport carries the call path
        self._transport: asyncio.Transport | None = None
        self._wire: _Replies | None = None
        self._releasing: set[asyncio.Task[None]] = set()
        self.round_trips = 0  # exchanges with Redis: batches written, and the SCRIPT LOAD after a NOSCRIPT
        self.calls = 0  # script calls answered, successfully or not

    def submit(self, keys: Sequence[str], args: Sequence[Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        parts = [p.encode() if isinstance(p, str) else str(p).encode() for p in (*keys, *args)]
        command = b"".join((b"*%d\r\n" % (len(parts) + 3), self._evalsha, _bulk(b"%d" % len(keys)),
                            *[_bulk(p) for p in parts]))
        self._queue.append((command, future, False, False))
        if self._send_soon is None:
            # Runs after the current pass: every decision of this pass is queued by then.
            self._send_soon = loop.call_soon(self._send)
        return future

    # --- writing -----------------------------------------------------------------------------------------
    def _schedule_send(self) -> None:
        if self._send_soon is None and self._queue:
            self._send_soon = asyncio.get_running_loop().call_soon(self._send)

    def _send(self) -> None:
        self._send_soon = None
        if not self._queue:
            return
        transport = self._transport
        if transport is None:
            if self._connecting is None:
                self._connecting = asyncio.get_running_loop().create_task(self._connect())
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        extra = 1 if self._replicas else 0
        while self._queue:
            items = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            self._sent.append(_Batch(items, len(items) + extra, deadline))
            self.round_trips += 1
            transport.write(b"".join([command for command, _, _, _ in items]) + self._wait)
        if self._timer is None:
            self._timer = loop.call_at(self._sent[0].deadline, self._expire)

    async def _connect(self) -> None:
        """Open the held connection (redis-py: Sentinel, TLS, AUTH, SELECT) and take its transport over."""
        try:
            try:
                async with asyncio.timeout(self._timeout_s):
                    conn = await self._client.connection_pool.get_connection()
            except TimeoutError:
                raise RedisTimeout(f"no connection within {self._timeout_s:g} s") from None
        except (RedisError, OSError) as exc:
            self._connecting = None
            queued, self._queue = self._queue, []
            self._fail(queued, exc)
            return
        self._connecting = None
        transport = conn._writer.transport  # redis-py's StreamWriter: its reader is not used from now on
        wire = _Replies(self)
        transport.set_protocol(wire)
        self._conn, self._transport, self._wire = conn, transport, wire
        self._send()

    # --- reading -----------------------------------------------------------------------------------------
    def _reply(self, wire: _Replies, reply: Any) -> None:
        if wire is not self._wire or not self._sent:
            return
        batch = self._sent[0]
        batch.replies.append(reply)
        if len(batch.replies) < batch.expect:
            return
        self._sent.popleft()
        replies = batch.replies
        if self._replicas:
            acked = replies.pop()
            if isinstance(acked, BaseException) or int(acked) < self._replicas:
                self._fail(batch.items, acked if isinstance(acked, BaseException) else ReplicasBehind(
                    f"WAIT: {acked} of {self._replicas} replica(s) acknowledged the attempts within "
                    f"{self._wait_ms} ms"))
                return
        reload: list[Item] = []
        moved: list[Item] = []
        for item, reply in zip(batch.items, replies, strict=True):
            if isinstance(reply, NoScriptError) and not item[3]:
                reload.append(item)
            elif isinstance(reply, ReadOnlyError) and not item[2]:
                moved.append(item)  # a primary turned replica (failover): resent to the new one
            else:
                self._answer(item[1], reply)
        if reload:
            self._reload(reload)
        if moved:  # the connection goes: reopened, a Sentinel-managed one asks the Sentinels for the primary
            self._lost(wire, ReadOnlyError("the primary is now a replica"), resend=moved)

    def _answer(self, future: asyncio.Future[Any], reply: Any) -> None:
        self.calls += 1
        if future.done():  # the caller went away (cancelled): nothing to tell
            return
        if isinstance(reply, BaseException):
            future.set_exception(reply)
        else:
            future.set_result(reply)

    def _fail(self, items: list[Item], exc: BaseException) -> None:
        for _, future, _, _ in items:
            self._answer(future, exc)

    def _expire(self) -> None:
        """The oldest batch's deadline: unanswered, every batch in flight fails and the connection goes
        (its late replies must never answer later calls); not answered in time, nothing is resent."""
        self._timer = None
        if not self._sent:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._sent[0].deadline:
            self._timer = loop.call_at(self._sent[0].deadline, self._expire)
            return
        batches = list(self._sent)
        self._sent.clear()
        self._drop_connection()
        timeout = RedisTimeout(f"no answer within {self._timeout_s:g} s")
        for batch in batches:
            self._fail(batch.items, timeout)
        self._schedule_send()

    def _lost(self, wire: _Replies, exc: BaseException | None, *, resend: list[Item] | None = None) -> None:
        """The held connection broke (Redis restarted, a failover): the calls in flight on it are resent once
        on a fresh one (Redis may have run them: their members make them count once), then fail."""
        if wire is not self._wire:
            return
        in_flight = [item for batch in self._sent for item in batch.items]
        self._sent.clear()
        self._drop_connection()
        error = exc if isinstance(exc, RedisError) else RedisConnectionError(
            f"connection to Redis lost: {exc or 'closed by Redis'}")
        again: list[Item] = []
        for item in [*(resend or []), *in_flight]:
            if item[2]:
                self._answer(item[1], error)
            elif not item[1].done():
                again.append((item[0], item[1], True, item[3]))
        self._queue[:0] = again
        self._schedule_send()

    def _reload(self, items: list[Item]) -> None:
        """This Redis has not seen the script (restarted, failed over, SCRIPT FLUSH): load it, then resend
        those calls, once. SCRIPT LOAD goes over the client's pool, in a Task (redis-py needs one)."""
        self._reloading.extend((command, future, resent, True) for command, future, resent, _ in items)
        if self._loading is None:
            self._loading = asyncio.get_running_loop().create_task(self._load_script())

    async def _load_script(self) -> None:
        self.round_trips += 1
        try:
            try:
                async with asyncio.timeout(self._timeout_s):
                    await self._client.script_load(self._script)
            except TimeoutError:
                raise RedisTimeout(f"SCRIPT LOAD: no answer within {self._timeout_s:g} s") from None
        except (RedisError, OSError) as exc:
            items, self._reloading = self._reloading, []
            self._fail(items, exc)
        else:
            self._queue[:0], self._reloading = self._reloading, []
            self._schedule_send()
        finally:
            self._loading = None

    def _drop_connection(self) -> None:
        transport, conn = self._transport, self._conn
        self._transport = self._conn = self._wire = None
        if transport is not None:
            transport.abort()
        if conn is not None:
            task = asyncio.get_running_loop().create_task(self._release(conn))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)

    async def _release(self, conn: Any) -> None:
        """Back to the pool, disconnected (the pool reconnects it before any other use)."""
        with contextlib.suppress(RedisError, OSError):
            await conn.disconnect(nowait=True)
        with contextlib.suppress(RedisError, OSError):
            await self._client.connection_pool.release(conn)

    async def close(self) -> None:
        """The calls in flight or still queued fail with a RedisError; the connection goes back."""
        for task in (self._connecting, self._loading):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._connecting = self._loading = None
        for handle in (self._send_soon, self._timer):
            if handle is not None:
                handle.cancel()
        self._send_soon = self._timer = None
        waiting = [item for batch in self._sent for item in batch.items] + self._queue + self._reloading
        self._sent.clear()
        self._queue, self._reloading = [], []
        self._fail(waiting, RedisError("store closed"))
        self._drop_connection()
        if self._releasing:
            await asyncio.wait(self._releasing)


class ClusterBatcher:
    """A Cluster's script calls: the calls queued in one pass go in one ClusterPipeline (which routes each to
    the shard of its keys), one pipeline in flight at a time, within `timeout_s`. Same `submit` as
    AttemptBatcher."""

    def __init__(self, client: Any, script: str, timeout_s: float, *, max_batch: int = MAX_BATCH) -> None:
        self._client = client
        self._script = script
        self._sha = hashlib.sha1(script.encode()).hexdigest()
        self._timeout_s = timeout_s
        self._max_batch = max_batch
        self._queue: list[tuple[Sequence[str], Sequence[Any], asyncio.Future[Any]]] = []
        self._in_flight: list[tuple[Sequence[str], Sequence[Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.round_trips = 0
        self.calls = 0

    def submit(self, keys: Sequence[str], args: Sequence[Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((keys, args, future))
        if self._flusher is None:
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
                except TimeoutError:
                    replies = [RedisTimeout(f"no answer within {self._timeout_s:g} s")] * len(batch)
                except (RedisError, OSError) as exc:
                    replies = [exc] * len(batch)
                self.calls += len(batch)
                for (_, _, future), reply in zip(batch, replies, strict=True):
                    if future.done():
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
        if missing:  # SCRIPT LOAD goes to every primary of a Cluster; then those calls once more
            self.round_trips += 1
            await self._client.script_load(self._script)
            again = await self._pipeline([batch[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, batch: list[tuple[Sequence[str], Sequence[Any], asyncio.Future[Any]]]
                        ) -> list[Any]:  # fmt: skip
        self.round_trips += 1
        pipe = self._client.pipeline(transaction=False)
        for keys, args, _ in batch:
            pipe.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    async def close(self) -> None:
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
