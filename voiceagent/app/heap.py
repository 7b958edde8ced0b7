"""The heap, settled for a latency-bound server, and the pauses it still costs.

CPython's cyclic collector stops the event loop while it runs, for every call at once, and a
full collection walks every object the process tracks: about 940 per live call here (trio
tasks' coroutines, cancel scopes, hypercorn's protocol objects, the call's state), so
~40-70 ms at 500 calls in one process and ~0.2-0.7 s at 2000. The server makes almost no
cyclic garbage: a call's turns, tool rounds, barge-ins, hang-up, Bedrock's connection faults,
failing tools and DynamoDB's requests leave none (``tests/test_calls_leave_no_cycles.py``,
``tests/test_dynamodb_requests_leave_no_cycles.py``): reference counting frees what they
make, and nearly everything the collector walks is alive. Settings, measured with
benchmarks/bench_latency.py (benchmarks/RESULTS.md):

* everything built at start-up (modules, botocore's models, pydantic schemas, the catalog)
  lives as long as the process, so it is frozen out of the collector's walks;
* a middle-generation collection waits for 10 000 young ones instead of 10
  (``GC_THRESHOLDS``). What survives a young collection here is alive: each call's await
  chains (every actor waiting on its channel or socket, made anew at each turn) and its
  state. CPython's defaults walked those chains again every ~10 young collections, several
  times a second under load, 5-35 ms a time at 500 calls and ~1 % of the loop's time: the
  p99 tail. Now a chain dies (by reference count, when its wait ends) without any middle
  collection seeing it. The first middle collection after 10 000 young ones walks what the
  full collection walked before (every object made since the last one and still alive) and
  as often: every ~15-20 minutes under load, a pause the size of a full collection's. Full
  collections, of what outlived one of those, follow every 10 (CPython's default).

Garbage in a cycle that outlives a young collection (a library's, a tool's) waits for the
next middle collection, ~15-20 minutes under load, as garbage that reached the oldest
generation did before. ``voiceagent_gc_pause_seconds{generation}`` shows how often
collections come and how long they take.

``GcPauses`` times every collection (``gc.callbacks``) for /metrics, and ``watch_loop_lag``
samples how late the event loop runs a timer: the latency every call pays, whatever its
cause (a collection, a long step, a starved core).
"""

from __future__ import annotations

import bisect
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

import trio

log = logging.getLogger(__name__)

GC_THRESHOLDS = (700, 10_000, 10)       # CPython's defaults are (700, 10, 10)
PAUSE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
LAG_INTERVAL_S = 0.1


def settle_after_startup() -> None:
    """Call once the service is built, before it takes calls."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    if _installed is not None:      # start-up's collections (this one, botocore loading its
        _installed.reset()          # models) are no pause a call waited for
    log.info("heap settled", extra={"frozen_objects": gc.get_freeze_count(),
                                    "gc_thresholds": list(GC_THRESHOLDS)})


class GcPauses:
    """Collections by generation: how many, how long (cumulative histogram buckets, as
    Prometheus wants them), and the longest, with the CPU the collecting thread spent in it:
    on a shared or throttled core a long pause can be the collector descheduled, not a long
    walk, and the two need different fixes."""

    def __init__(self) -> None:
        self.buckets = PAUSE_BUCKETS
        self._started = 0.0
        self._cpu_started = 0.0
        self.reset()

    def reset(self) -> None:
        self.counts = {g: [0] * (len(PAUSE_BUCKETS) + 1) for g in range(3)}
        self.sums = dict.fromkeys(range(3), 0.0)
        self.longest = dict.fromkeys(range(3), 0.0)
        self.longest_cpu = dict.fromkeys(range(3), 0.0)
        self.longest_collected = dict.fromkeys(range(3), 0)

    def callback(self, phase: str, info: dict[str, Any]) -> None:
        """For ``gc.callbacks``; it runs inside the pause, so it does very little."""
        if phase == "start":
            self._started = time.perf_counter()
            self._cpu_started = time.thread_time()
            return
        pause = time.perf_counter() - self._started
        generation = int(info.get("generation", 2))
        self.counts[generation][bisect.bisect_left(self.buckets, pause)] += 1
        self.sums[generation] += pause
        if pause > self.longest[generation]:
            self.longest[generation] = pause
            self.longest_cpu[generation] = time.thread_time() - self._cpu_started
            self.longest_collected[generation] = int(info.get("collected", 0))

    def summary(self) -> dict[str, dict[str, float]]:
        """Per generation: count, total and longest pause (ms), and the CPU the longest took
        (ms) and the garbage it found (objects: a walk of live objects finds none), for the
        exit log line."""
        return {str(g): {"count": sum(self.counts[g]),
                         "total_ms": round(self.sums[g] * 1000, 1),
                         "longest_ms": round(self.longest[g] * 1000, 2),
                         "longest_cpu_ms": round(self.longest_cpu[g] * 1000, 2),
                         "longest_collected": self.longest_collected[g]}
                for g in range(3)}


_installed: GcPauses | None = None


def gc_pauses() -> GcPauses | None:
    """The process's recorder, once ``record_gc_pauses`` has run (the server does)."""
    return _installed


def record_gc_pauses() -> GcPauses:
    """Install the process-wide recorder (idempotent: one per process)."""
    global _installed
    if _installed is None:
        _installed = GcPauses()
        gc.callbacks.append(_installed.callback)
    return _installed


async def watch_loop_lag(observe: Callable[[float], None], *,
                         interval_s: float = LAG_INTERVAL_S,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Every ``interval_s``, how late a timer fired (seconds), until cancelled."""
    task_status.started()
    due = trio.current_time() + interval_s
    while True:
        await trio.sleep_until(due)
        now = trio.current_time()
        observe(now - due)
        due = now + interval_s
