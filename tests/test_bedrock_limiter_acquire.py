"""The Bedrock concurrency limiter's slot is taken without a trip through the scheduler when
one is free (voiceagent.llm.bedrock._acquire): under load that trip costs a turn's first word
a whole batch of every call's runnable work (``bench_token_calls.py --hops``). A full limiter
still waits, and a cancelled turn still stops there."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tests.task_steps import steps_of_this_task
from voiceagent.llm.bedrock import _acquire

pytestmark = pytest.mark.timeout(10)


async def test_a_free_slot_is_taken_without_a_schedule_point() -> None:
    limiter = trio.CapacityLimiter(2)
    with steps_of_this_task() as steps:
        await _acquire(limiter, "turn")
        assert steps.steps == 0                     # the task never gave the loop back
        await trio.lowlevel.checkpoint()
        assert steps.steps == 1                     # (and the count sees one when it does)
    assert limiter.borrowed_tokens == 1
    limiter.release_on_behalf_of("turn")


async def test_a_full_limiter_still_waits_for_a_slot(autojump_clock: trio.abc.Clock) -> None:
    limiter = trio.CapacityLimiter(1)
    limiter.acquire_on_behalf_of_nowait("first")
    got: list[float] = []

    async def second() -> None:
        await _acquire(limiter, "second")
        got.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(second)
        await trio.sleep(5)
        assert got == []
        limiter.release_on_behalf_of("first")
    assert got == [5.0]
    assert limiter.borrowed_tokens == 1


async def test_a_cancelled_turn_stops_there_and_takes_no_slot() -> None:
    limiter = trio.CapacityLimiter(1)
    with trio.CancelScope() as scope:
        scope.cancel()
        await _acquire(limiter, "turn")
    assert scope.cancelled_caught
    assert limiter.borrowed_tokens == 0
