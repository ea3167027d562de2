"""A coarse timer wheel for the B2BUA's timers: one event-loop timer per tick, not one per SIP timer.

A relayed call starts about a dozen timers (retransmissions, Timer B/F/H, ring timeout, Timer C, maximum
duration, transaction memory) and cancels most of them within milliseconds; an event-loop TimerHandle each
costs microseconds to create and cancel. Here a timer is a small object in a bucket (a dict: cancelling
removes it at once, so cancelled timers neither wait in memory nor get scanned by the cyclic GC). Timers
fire at most one tick late (one second for delays of a minute or more), never early. Knows nothing of SIP:
it only calls back.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
from collections.abc import Callable
from types import MethodType
from typing import Any

log = logging.getLogger(__name__)

RESOLUTION_S = 0.01  # 10 ms: finer than any SIP timer needs (T1 is 500 ms; tests use 50 ms)
# Delays of a minute or more (ring timeout, Timer C, maximum call duration) share one bucket per second:
# a bucket per 10 ms over hours would be a bucket per call.
_LONG_S = 60.0
_LONG_TICKS = 100  # ticks per long bucket (1 s at 10 ms)


def _noop(*_args: Any) -> None:
    return None


class WheelTimer:
    """What `TimerWheel.call_later` returns; `cancel()` is all the B2BUA uses of it.

    A bound method callback is kept as its function and object, and up to two arguments in slots: one
    object per timer for the cyclic GC to scan (a call's timers live seconds), not a timer, a method object
    and an argument tuple. That scan was a large share of a young-generation collection."""

    __slots__ = ("a0", "a1", "cancelled", "func", "nargs", "obj", "tick", "wheel")

    def __init__(self, wheel: TimerWheel, tick: int, callback: Callable[..., Any],
                 args: tuple[Any, ...]) -> None:  # fmt: skip
        self.wheel = wheel
        self.tick = tick
        # A test, not getattr(callback, "__func__", None): a compiled method has no __func__, and a missing
        # attribute costs an AttributeError raised and caught, the largest part of a timer's start.
        if isinstance(callback, MethodType):  # a bound method: keep what it binds, not the method object
            self.func: Callable[..., Any] = callback.__func__
            self.obj: Any = callback.__self__
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
            self.wheel._remove(self)


def cancel(handle: object) -> None:
    """Cancel what a scheduler returned: a timer of the wheel (nearly all of them) by a compiled call, not a
    method looked up by name; anything else (an event-loop handle, a test's scheduler's) by its cancel()."""
    if isinstance(handle, WheelTimer):
        handle.cancel()  # typed here: the compiled method, called directly
        return
    if handle is not None and hasattr(handle, "cancel"):
        handle.cancel()


class TimerWheel:
    """Timers grouped by tick (`resolution` seconds of the loop's clock) in buckets; a heap of the ticks
    that have a bucket; one loop timer armed for the earliest of them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution: float = RESOLUTION_S) -> None:
        self._loop = loop
        self._res = resolution
        self._buckets: dict[int, dict[WheelTimer, None]] = {}
        self._ticks: list[int] = []  # heap of bucket ticks (may hold ticks whose bucket emptied)
        self._handle: asyncio.TimerHandle | None = None
        self._armed: int | None = None  # tick the loop timer is set for
        self._pending = 0  # timers in buckets
        self._firing = False  # inside _fire: it arms the loop timer itself when done

    def __len__(self) -> int:
        """Timers still to fire."""
        return self._pending

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Any:
        if delay <= 0:
            return self._loop.call_soon(callback, *args)
        tick = math.ceil((self._loop.time() + delay) / self._res)
        if delay >= _LONG_S:
            tick = -(-tick // _LONG_TICKS) * _LONG_TICKS  # rounded up: never early
        timer = WheelTimer(self, tick, callback, args)
        bucket = self._buckets.get(tick)
        if bucket is None:
            self._buckets[tick] = {timer: None}
            heapq.heappush(self._ticks, tick)
            if not self._firing and (self._armed is None or tick < self._armed):
                self._arm(tick)
        else:
            bucket[timer] = None
        self._pending += 1
        return timer

    def close(self) -> None:
        """Forget every timer (shutdown)."""
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._armed = None
        self._buckets.clear()
        self._ticks.clear()
        self._pending = 0

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
                bucket = self._buckets.pop(heapq.heappop(self._ticks), None)
                if bucket is None:
                    continue  # every timer of that tick was cancelled
                self._pending -= len(bucket)
                for timer in bucket:
                    if timer.cancelled:  # cancelled by an earlier callback of this bucket
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

    def _remove(self, timer: WheelTimer) -> None:
        bucket = self._buckets.get(timer.tick)
        if bucket is None or bucket.pop(timer, 0) is not None:
            return  # its bucket is firing (or gone): the cancelled flag is enough
        self._pending -= 1
        if not bucket:
            del self._buckets[timer.tick]
            # Ticks of emptied buckets stay in the heap until due; rebuild it when they dominate.
            if len(self._ticks) > 2 * len(self._buckets) + 64:
                self._ticks = list(self._buckets)
                heapq.heapify(self._ticks)
