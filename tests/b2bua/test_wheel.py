"""The B2BUA's timer wheel: never early, at most one tick late, cancel is cheap and forgets, errors are
contained, cancelled long timers do not pile up; plus one run on a real event loop."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any

import pytest

from sipfilter.b2bua.wheel import TimerWheel


class _Handle:
    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when, self.callback, self.args, self.cancelled = when, callback, args, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """Just what the wheel uses of a loop: time(), call_at(), call_soon(); time moves in run_until()."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.timers: list[tuple[float, int, _Handle]] = []
        self.soon: list[_Handle] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> _Handle:
        handle = _Handle(when, callback, args)
        heapq.heappush(self.timers, (when, next(self._seq), handle))
        return handle

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> _Handle:
        handle = _Handle(self.now, callback, args)
        self.soon.append(handle)
        return handle

    def armed(self) -> int:
        return sum(1 for _, _, h in self.timers if not h.cancelled)

    def run_until(self, end: float) -> None:
        while True:
            soon, self.soon = self.soon, []
            for h in soon:
                if not h.cancelled:
                    h.callback(*h.args)
            if self.timers and self.timers[0][0] <= end:
                when, _, handle = heapq.heappop(self.timers)
                self.now = max(self.now, when)
                if not handle.cancelled:
                    handle.callback(*handle.args)
                continue
            if not self.soon:
                break
        self.now = max(self.now, end)


@pytest.fixture
def loop() -> FakeLoop:
    return FakeLoop()


def test_fires_never_early_and_at_most_one_tick_late(loop: FakeLoop) -> None:
    wheel = TimerWheel(loop, resolution=0.01)  # type: ignore[arg-type]
    fired: list[tuple[str, float]] = []
    start = loop.now
    for name, delay in (("a", 0.5), ("b", 0.013), ("c", 32.0), ("d", 0.5)):
        wheel.call_later(delay, lambda n=name: fired.append((n, loop.now)))
    loop.run_until(start + 0.0129)
    assert fired == []
    loop.run_until(start + 40)
    assert [n for n, _ in fired] == ["b", "a", "d", "c"]  # due order; same tick: order of setting
    due = {"a": 0.5, "b": 0.013, "c": 32.0, "d": 0.5}
    for name, at in fired:
        assert start + due[name] - 1e-9 <= at <= start + due[name] + 0.01 + 1e-9
    assert len(wheel) == 0


def test_cancel_prevents_the_call_and_drops_its_arguments(loop: FakeLoop) -> None:
    wheel = TimerWheel(loop)  # type: ignore[arg-type]
    fired: list[int] = []
    payload = [1, 2, 3]
    t = wheel.call_later(1.0, fired.append, payload)
    keep = wheel.call_later(1.0, fired.append, 7)
    assert len(wheel) == 2
    t.cancel()
    t.cancel()  # twice is harmless
    assert t.a0 is None and len(wheel) == 1
    loop.run_until(loop.now + 2)
    assert fired == [7]
    keep.cancel()  # after it fired: no effect, no miscount
    assert len(wheel) == 0


def test_one_loop_timer_for_many_wheel_timers(loop: FakeLoop) -> None:
    wheel = TimerWheel(loop)  # type: ignore[arg-type]
    for i in range(1000):
        wheel.call_later(0.5 + i / 1000, lambda: None)
    assert loop.armed() == 1
    wheel.call_later(0.1, lambda: None)  # earlier than everything: re-armed, still one
    assert loop.armed() == 1


def test_zero_delay_goes_to_call_soon(loop: FakeLoop) -> None:
    wheel = TimerWheel(loop)  # type: ignore[arg-type]
    fired: list[str] = []
    handle = wheel.call_later(0, fired.append, "now")
    assert loop.soon == [handle]
    loop.run_until(loop.now)
    assert fired == ["now"]


def test_timers_set_by_a_callback_fire_in_their_own_time(loop: FakeLoop) -> None:
    wheel = TimerWheel(loop)  # type: ignore[arg-type]
    fired: list[float] = []
    start = loop.now

    def again(n: int) -> None:
        fired.append(loop.now)
        if n:
            wheel.call_later(0.5, again, n - 1)

    wheel.call_later(0.5, again, 3)
    loop.run_until(start + 10)
    assert len(fired) == 4
    for i, at in enumerate(fired):
        assert start + 0.5 * (i + 1) - 1e-9 <= at <= start + 0.5 * (i + 1) + 0.01 * (i + 1) + 1e-9


def test_a_failing_callback_is_logged_others_run(loop: FakeLoop, caplog: pytest.LogCaptureFixture) -> None:
    wheel = TimerWheel(loop)  # type: ignore[arg-type]
    fired: list[str] = []

    def boom() -> None:
        raise RuntimeError("boom")

    wheel.call_later(1.0, boom)
    wheel.call_later(1.0, fired.append, "after")
    wheel.call_later(2.0, fired.append, "later")
    loop.run_until(loop.now + 3)
    assert fired == ["after", "later"]
    assert "boom" in caplog.text


def test_cancel_removes_the_timer_and_empty_buckets(loop: FakeLoop) -> None:
    wheel = TimerWheel(loop)  # type: ignore[arg-type]
    fired: list[int] = []
    timers = [wheel.call_later(14400 + i, fired.append, i) for i in range(100)]
    assert len(wheel._buckets) == 100  # long delays: one bucket per second
    for t in timers[:90]:
        t.cancel()
    assert len(wheel) == 10 and len(wheel._buckets) == 10  # gone at once, not left to be scanned
    for _ in range(1000):  # churn: the heap of ticks does not keep growing with emptied buckets
        wheel.call_later(3600, lambda: None).cancel()
    assert len(wheel._ticks) <= 2 * len(wheel._buckets) + 65
    loop.run_until(loop.now + 20000)
    assert fired == list(range(90, 100))


def test_long_delays_are_rounded_up_to_the_second(loop: FakeLoop) -> None:
    wheel = TimerWheel(loop)  # type: ignore[arg-type]
    loop.now = 1000.123
    fired: list[float] = []
    wheel.call_later(120.0, lambda: fired.append(loop.now))
    loop.run_until(loop.now + 200)
    assert fired and 1120.123 <= fired[0] <= 1121.0 + 1e-9


def test_callbacks_of_every_shape(loop: FakeLoop) -> None:
    wheel = TimerWheel(loop)  # type: ignore[arg-type]
    got: list[tuple[Any, ...]] = []

    class Owner:
        def m(self, *args: Any) -> None:
            got.append(("m", self, *args))

    owner = Owner()
    for args in ((), (1,), (1, 2), (1, 2, 3)):
        wheel.call_later(1.0, owner.m, *args)
        wheel.call_later(1.0, lambda *a: got.append(("f", *a)), *args)
    timer = wheel.call_later(1.0, owner.m, "x")
    assert timer.obj is owner and timer.nargs == 1  # the method object is not kept
    loop.run_until(loop.now + 2)
    assert got == [("m", owner), ("f",), ("m", owner, 1), ("f", 1), ("m", owner, 1, 2), ("f", 1, 2),
                   ("m", owner, 1, 2, 3), ("f", 1, 2, 3), ("m", owner, "x")]  # fmt: skip


def test_close_forgets_everything(loop: FakeLoop) -> None:
    wheel = TimerWheel(loop)  # type: ignore[arg-type]
    fired: list[int] = []
    wheel.call_later(1.0, fired.append, 1)
    wheel.close()
    loop.run_until(loop.now + 5)
    assert fired == [] and len(wheel) == 0 and loop.armed() == 0


async def test_on_a_real_event_loop() -> None:
    loop = asyncio.get_running_loop()
    wheel = TimerWheel(loop)
    done = loop.create_future()
    fired: list[tuple[str, float]] = []
    start = loop.time()
    wheel.call_later(0.05, lambda: fired.append(("a", loop.time())))
    wheel.call_later(0.02, lambda: fired.append(("b", loop.time())))
    wheel.call_later(0.03, lambda: fired.append(("x", loop.time()))).cancel()
    wheel.call_later(0.08, lambda: done.set_result(None))
    await asyncio.wait_for(done, 5)
    assert [n for n, _ in fired] == ["b", "a"]
    # Never early (the loop's own clock granularity aside).
    assert fired[0][1] >= start + 0.02 - 0.002 and fired[1][1] >= start + 0.05 - 0.002
