"""The heap, settled for a latency-bound server, and the pauses it still costs.

CPython's cyclic collector stops the event loop while it runs, for every call at once, and a
full collection walks every object the process tracks: about 940 per live call here (trio
tasks' coroutines, cancel scopes, hypercorn's protocol objects, the call's state), so
~40-70 ms at 500 calls in one process and ~0.2-0.7 s at 2000. Two settings, measured with
benchmarks/bench_latency.py (benchmarks/RESULTS.md):

* everything built at start-up (modules, botocore's models, pydantic schemas, the catalog)
  lives as long as the process, so it is frozen out of the collector's walks;
* a full collection waits for 1000 middle-generation ones instead of 10 (``GC_THRESHOLDS``):
  a few minutes under load instead of every ~6 s. Calls live for minutes, so their objects
  reach the oldest generation, and each full collection found little to free: what it
  finds is mostly hypercorn's per-connection object cycles (~35 objects a connection) and
  botocore's response parsers. That garbage now waits longer: bounded by the calls of the
  last ~1000 middle collections (tens of MB at 2000 calls), freed at the next full one.
  p99 application latency overhead at 500 calls (one worker on its own core): ~20 ms with
  CPython's defaults, ~13 ms after 100, ~10 ms after 1000. A full collection still stops
  every call when it comes: ``voiceagent_gc_pause_seconds{generation="2"}`` shows how long.

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

GC_THRESHOLDS = (700, 10, 1000)         # CPython's defaults are (700, 10, 10)
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
    Prometheus wants them), and the longest."""

    def __init__(self) -> None:
        self.buckets = PAUSE_BUCKETS
        self._started = 0.0
        self.reset()

    def reset(self) -> None:
        self.counts = {g: [0] * (len(PAUSE_BUCKETS) + 1) for g in range(3)}
        self.sums = dict.fromkeys(range(3), 0.0)
        self.longest = dict.fromkeys(range(3), 0.0)

    def callback(self, phase: str, info: dict[str, Any]) -> None:
        """For ``gc.callbacks``; it runs inside the pause, so it does very little."""
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = int(info.get("generation", 2))
        pause = time.perf_counter() - self._started
        self.counts[generation][bisect.bisect_left(self.buckets, pause)] += 1
        self.sums[generation] += pause
        if pause > self.longest[generation]:
            self.longest[generation] = pause

    def summary(self) -> dict[str, dict[str, float]]:
        """Per generation: count, total and longest pause (ms), for the exit log line."""
        return {str(g): {"count": sum(self.counts[g]),
                         "total_ms": round(self.sums[g] * 1000, 1),
                         "longest_ms": round(self.longest[g] * 1000, 2)} for g in range(3)}


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
