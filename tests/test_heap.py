"""The heap settled for latency (voiceagent.app.heap): start-up frozen, rarer middle collections,
and the pauses that remain measured."""

from __future__ import annotations

import gc
import logging
import time
from functools import partial

import pytest
import trio
import trio.testing

from voiceagent.app import heap


def test_settle_freezes_what_start_up_built(caplog: pytest.LogCaptureFixture) -> None:
    built_at_startup = [[n] for n in range(1000)]        # lists: always tracked
    try:
        with caplog.at_level(logging.INFO, logger="voiceagent.app.heap"):
            heap.settle_after_startup()
        assert gc.get_freeze_count() >= len(built_at_startup)
        assert all(gc.is_tracked(x) for x in built_at_startup)   # frozen, still tracked
        (record,) = [r for r in caplog.records if r.getMessage() == "heap settled"]
        assert record.frozen_objects >= len(built_at_startup)
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0


def test_settle_waits_longer_between_middle_collections() -> None:
    before = gc.get_threshold()
    try:
        heap.settle_after_startup()
        assert gc.get_threshold() == heap.GC_THRESHOLDS
        assert heap.GC_THRESHOLDS[1] >= 1000 * 10          # CPython's default is 10
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_start_up_collections_are_not_counted_as_pauses() -> None:
    """botocore loading its models and settle's own full collection happen before any call:
    a benchmark's "longest full collection" must be one a call waited for."""
    before = gc.get_threshold()
    recorder = heap.record_gc_pauses()
    try:
        gc.collect(2)                                   # start-up work
        assert sum(recorder.counts[2]) >= 1
        heap.settle_after_startup()
        assert recorder.summary()["2"] == {"count": 0, "total_ms": 0.0, "longest_ms": 0.0,
                                           "longest_cpu_ms": 0.0, "longest_collected": 0}
        gc.collect(2)                                   # one while serving: counted
        assert sum(recorder.counts[2]) == 1
        assert recorder.longest[2] > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_gc_pauses_are_timed_by_generation() -> None:
    pauses = heap.GcPauses()
    gc.callbacks.append(pauses.callback)
    try:
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
    finally:
        gc.callbacks.remove(pauses.callback)
    assert sum(pauses.counts[2]) >= 2          # automatic young ones may come on top
    assert pauses.sums[2] > 0
    assert pauses.longest[2] <= pauses.sums[2]
    summary = pauses.summary()
    assert summary["2"]["count"] == sum(pauses.counts[2])
    assert summary["2"]["longest_ms"] == round(pauses.longest[2] * 1000, 2)
    assert set(summary) == {"0", "1", "2"}


def test_the_longest_pause_says_how_much_garbage_it_found() -> None:
    """A long collection that freed cycles is a different fix from one that walked live
    objects: the summary says which."""
    pauses = heap.GcPauses()

    def descheduled(phase: str, info: dict[str, object]) -> None:
        if phase == "start":
            time.sleep(0.02)            # this one is the longest, whatever the others take

    cycles = []
    for _ in range(100):
        pair: list[object] = []
        pair.append(pair)
        cycles.append(pair)
    del pair
    gc.callbacks.extend([pauses.callback, descheduled])
    try:
        del cycles
        gc.collect(2)                   # wherever a young collection moved them meanwhile
    finally:
        gc.callbacks.remove(descheduled)
        gc.callbacks.remove(pauses.callback)
    assert pauses.summary()["2"]["longest_collected"] >= 100


def test_the_longest_pause_says_how_much_of_it_was_cpu() -> None:
    """A collection stretched by something else holding the core (here: a later callback
    that sleeps inside the pause, as a descheduled thread would) is long in wall time and
    short in CPU, and the summary tells the two apart."""
    pauses = heap.GcPauses()

    def descheduled(phase: str, info: dict[str, object]) -> None:
        if phase == "start":
            time.sleep(0.05)

    gc.callbacks.extend([pauses.callback, descheduled])
    try:
        gc.collect(0)                   # the young: a walk far shorter than the sleep
    finally:
        gc.callbacks.remove(descheduled)
        gc.callbacks.remove(pauses.callback)
    row = pauses.summary()["0"]
    assert row["longest_ms"] >= 50
    assert 0 < row["longest_cpu_ms"] < row["longest_ms"] / 2


def test_loop_lag_is_how_late_a_timer_ran() -> None:
    clock = trio.testing.MockClock()
    seen: list[float] = []

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(heap.watch_loop_lag, seen.append, interval_s=0.1))
            await trio.testing.wait_all_tasks_blocked()
            clock.jump(0.1)                     # on time
            await trio.testing.wait_all_tasks_blocked()
            clock.jump(0.25)                    # the next was due at 0.2: 0.15 late
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()

    trio.run(run, clock=clock)
    assert seen == [pytest.approx(0.0), pytest.approx(0.15)]
