"""A coarse timer wheel for the B2BUA's timers: one event-loop timer per tick, not one per SIP timer.

A relayed call starts about a dozen timers (retransmissions, Timer B/F/H, ring timeout, Timer C, maximum
duration, transaction memory) and cancels most of them within milliseconds; an event-loop TimerHandle each
costs microseconds to create and cancel. Here a timer is a small object in a bucket and cancelling it sets
a flag. Timers fire at most one tick late, never early. Knows nothing of SIP: it only calls back.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

RESOLUTION_S = 0.01  # 10 ms: finer than any SIP timer needs (T1 is 500 ms; tests use 50 ms)
_COMPACT_MIN = 4096  # cancelled timers tolerated before compaction is considered


def _noop(*_args: Any) -> None:
    return None


class WheelTimer:
    """What `TimerWheel.call_later` returns; `cancel()` is all the B2BUA uses of it.

    A bound method callback is kept as its function and object, and up to two arguments in slots: one
    object per timer for the cyclic GC to scan (a call's timers live seconds), not a timer, a method object
    and an argument tuple. That scan was a large share of a young-generation collection."""

    __slots__ = ("a0", "a1", "cancelled", "func", "nargs", "obj", "wheel")

    def __init__(self, wheel: TimerWheel, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.wheel = wheel
        func = getattr(callback, "__func__", None)
        if func is not None:  # a bound method: keep what it binds, not the method object
            self.func: Callable[..., Any] = func
            self.obj: Any = callback.__self__  # type: ignore[attr-defined]
        else:
            self.func = callback
            self.obj = None
        n = len(args)
        self.a0: Any
        self.a1: Any
        if n > 2:
            self.nargs, self.a0, self.a1 = -1, args, None
        else:
            self.nargs = n
            self.a0 = args[0] if n else None
            self.a1 = args[1] if n == 2 else None
        self.cancelled = False

    def run(self) -> None:
        func, obj, n = self.func, self.obj, self.nargs
        if obj is None:
            if n == 1:
                func(self.a0)
            elif n == 2:
                func(self.a0, self.a1)
            elif n == 0:
                func()
            else:
                func(*self.a0)
        elif n == 1:
            func(obj, self.a0)
        elif n == 2:
            func(obj, self.a0, self.a1)
        elif n == 0:
            func(obj)
        else:
            func(obj, *self.a0)

    def forget(self) -> None:
        """Drop every reference but the wheel's (a long timer may wait hours in its bucket)."""
        self.func, self.obj, self.a0, self.a1, self.nargs = _noop, None, None, None, 0

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.forget()
            self.wheel._cancelled_one()


class TimerWheel:
    """Timers grouped by tick (`resolution` seconds of the loop's clock) in buckets; a heap of the ticks
    that have a bucket; one loop timer armed for the earliest of them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution: float = RESOLUTION_S) -> None:
        self._loop = loop
        self._res = resolution
        self._buckets: dict[int, list[WheelTimer]] = {}
        self._ticks: list[int] = []  # heap of the keys of _buckets
        self._handle: asyncio.TimerHandle | None = None
        self._armed: int | None = None  # tick the loop timer is set for
        self._pending = 0  # timers in buckets, cancelled ones included
        self._cancelled = 0  # cancelled timers still in buckets
        self._firing = False  # inside _fire: it arms the loop timer itself when done

    def __len__(self) -> int:
        """Timers still to fire (cancelled ones not counted)."""
        return self._pending - self._cancelled

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Any:
        if delay <= 0:
            return self._loop.call_soon(callback, *args)
        timer = WheelTimer(self, callback, args)
        tick = math.ceil((self._loop.time() + delay) / self._res)
        bucket = self._buckets.get(tick)
        if bucket is None:
            self._buckets[tick] = [timer]
            heapq.heappush(self._ticks, tick)
            if not self._firing and (self._armed is None or tick < self._armed):
                self._arm(tick)
        else:
            bucket.append(timer)
        self._pending += 1
        return timer

    def close(self) -> None:
        """Forget every timer (shutdown)."""
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._armed = None
        self._buckets.clear()
        self._ticks.clear()
        self._pending = self._cancelled = 0

    def _arm(self, tick: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed = tick
        self._handle = self._loop.call_at(tick * self._res, self._fire)

    def _fire(self) -> None:
        armed = self._armed
        self._handle = self._armed = None
        # The loop timer may run a hair before tick*res (millisecond clocks): the armed tick is due anyway.
        limit = math.floor(self._loop.time() / self._res)
        if armed is not None and armed > limit:
            limit = armed
        self._firing = True
        try:
            # Callbacks may add timers, even to a tick <= limit: they run in this same pass.
            while self._ticks and self._ticks[0] <= limit:
                bucket = self._buckets.pop(heapq.heappop(self._ticks))
                self._pending -= len(bucket)
                for timer in bucket:
                    if timer.cancelled:
                        self._cancelled -= 1
                        continue
                    timer.cancelled = True  # fired: a late cancel() is a no-op
                    try:
                        timer.run()
                    except Exception:  # as the event loop would: log it, keep the other timers running
                        log.exception("error in timer callback %r", timer.func)
                    timer.forget()
        finally:
            self._firing = False
            if self._ticks:
                self._arm(self._ticks[0])

    def _cancelled_one(self) -> None:
        self._cancelled += 1
        # Cancelled long timers (maximum call duration: hours) would pile up: drop them once they are
        # more than half of what is pending. Amortised O(1) per cancel.
        if self._cancelled > _COMPACT_MIN and self._cancelled * 2 > self._pending and not self._firing:
            self._compact()

    def _compact(self) -> None:
        buckets: dict[int, list[WheelTimer]] = {}
        for tick, bucket in self._buckets.items():
            live = [t for t in bucket if not t.cancelled]
            if live:
                buckets[tick] = live
        self._buckets = buckets
        self._ticks = list(buckets)
        heapq.heapify(self._ticks)
        self._pending = sum(map(len, buckets.values()))
        self._cancelled = 0
        if self._armed is not None and self._armed not in buckets:
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self._armed = None
            if self._ticks:
                self._arm(self._ticks[0])
