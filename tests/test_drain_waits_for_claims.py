"""A socket whose setup's call is still being looked up (a slow store, a mass reconnect) is
not a call yet, but becomes one a moment later. ``CallCounters.wait_idle`` returned at once
while such a lookup ran, so a drain could flush and stop the process under a call that
started after it: no polite end at the drain deadline, its last writes after the flush.
Now wait_idle, and the drain with it, waits for those lookups too."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import trio
import trio.testing

from actors.call import CallReport
from actors.end_signal import EndSignal
from voiceagent.app.runtime import CallCounters
from voiceagent.app.server import drain


async def _flushed(*, timeout_s: float) -> bool:
    return True


def _runtime(calls: CallCounters) -> Any:
    return SimpleNamespace(
        draining=False, calls=calls, end_calls=EndSignal(),
        settings=SimpleNamespace(drain_timeout_s=30.0, end_grace_s=5.0, flush_timeout_s=1.0),
        persist_stuck_calls=lambda: 0, begin_stop=lambda: None, flush_writes=_flushed)


async def test_a_drain_waits_for_a_call_being_looked_up_then_for_that_call(
        autojump_clock: trio.testing.MockClock) -> None:
    calls = CallCounters()
    report = CallReport()
    drained_at: float | None = None

    async def drains() -> None:
        nonlocal drained_at
        await drain(_runtime(calls))
        drained_at = trio.current_time()

    with trio.fail_after(60):
        calls.claim_started()                   # the socket's setup: its call looked up
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drains)
            await trio.sleep(1)                 # the store takes a second to answer
            assert drained_at is None
            calls.claim_done()                  # found: it is a call from now on
            calls.started(report)
            await trio.sleep(10)
            assert drained_at is None
            calls.finished(report)              # the caller hangs up
    assert drained_at == 11


async def test_wait_idle_is_not_woken_for_good_by_a_lookup_that_becomes_a_call(
        autojump_clock: trio.testing.MockClock) -> None:
    """The lookup's end and its call's start come in one step: the idle event is set for
    that moment, and the waiter, woken, finds a call and waits on."""
    calls = CallCounters()
    report = CallReport()
    idle = trio.Event()

    async def waits() -> None:
        await calls.wait_idle()
        idle.set()

    with trio.fail_after(10):
        calls.claim_started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waits)
            await trio.testing.wait_all_tasks_blocked()
            calls.claim_done()
            calls.started(report)
            await trio.testing.wait_all_tasks_blocked()
            assert not idle.is_set()
            calls.finished(report)
    assert idle.is_set()
    assert (calls.active, calls.claims) == (0, 0)
