"""The B2BUA steps each decision's coroutine by hand, outside any Task; decisions that suspend on what a
networked store awaits (a plain future resolved later, a Task of the store's own) must finish like any other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from b2bua_rig import StubPolicy, invite, make_rig

from sipfilter.b2bua.core import B2BUA


class FuturePolicy(StubPolicy):
    """Suspends on a plain future resolved by a later loop callback, as the Redis store's attempt batcher
    does; `fail` resolves it with an exception instead (a Redis error), which the decision turns into 603."""

    def __init__(self, fail: bool = False, via_task: bool = False) -> None:
        super().__init__()
        self.fail, self.via_task = fail, via_task
        self.tasks: list[bool] = []  # whether a Task was running, at each step of the decision

    async def decide(self, facts: Any, store: Any) -> Any:
        loop = asyncio.get_running_loop()
        self.tasks.append(asyncio.current_task() is not None)
        if self.via_task:  # what the store does for a command that needs a Task (redis-py's timeouts)

            async def in_task() -> bool:
                return asyncio.current_task() is not None

            assert await loop.create_task(in_task())
        future: asyncio.Future[int] = loop.create_future()
        # Still pending when the B2BUA's Task first awaits it, as a Redis reply is.
        if self.fail:
            loop.call_later(0.005, future.set_exception, OSError("connection reset"))
        else:
            loop.call_later(0.005, future.set_result, 1)
        try:
            await future
        except OSError:
            self.reject.add(facts.callee.raw)
        await asyncio.sleep(0)  # and once more on nothing at all
        return await super().decide(facts, store)


async def _until(cond: Callable[[], bool]) -> None:
    for _ in range(100):
        if cond():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("the decision did not finish")


@pytest.mark.parametrize("via_task", [False, True], ids=["plain-future", "store-task"])
async def test_a_decision_suspended_on_a_future_is_relayed(tmp_path: Path, via_task: bool) -> None:
    rig = make_rig(tmp_path)
    policy = FuturePolicy(via_task=via_task)
    rig.b2b.rt.policy = policy
    # From a loop callback, as the transports deliver datagrams (the test itself runs in a Task).
    asyncio.get_running_loop().call_soon(rig.from_dialer, invite(call_id="future-1"))
    await _until(lambda: bool(policy.tasks))
    assert policy.tasks == [False]  # the first step runs inline: no Task per call for stores that never wait
    await _until(lambda: bool(rig.outside.sent))
    sent = rig.outside.take()
    assert [m.method for m in sent if m.is_request] == ["INVITE"]
    assert not _finals(rig.b2b, rig.inside.take())


async def test_an_error_resolving_the_future_reaches_the_decision(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.b2b.rt.policy = FuturePolicy(fail=True)
    asyncio.get_running_loop().call_soon(rig.from_dialer, invite(call_id="future-2"))
    finals: list[int] = []
    await _until(lambda: bool(finals.extend(_finals(rig.b2b, rig.inside.take())) or finals))
    assert finals == [603]
    assert not rig.outside.sent


def _finals(b2b: B2BUA, msgs: list[Any]) -> list[int]:
    return [m.status for m in msgs if not m.is_request and m.status >= 200]
