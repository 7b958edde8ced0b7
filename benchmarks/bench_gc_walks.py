"""How many objects the cyclic collector walks while calls talk, by generation and threshold.

A collection stops the event loop for every call, for a time in proportion to the objects it
walks. The load benchmark shows those pauses, but this machine's hour moves them by tens of
per cent; the objects walked do not move with the hour. This runs the real server in this
process (hypercorn, the relay route, the actors, the scripted model, SQLite), on trio's
virtual clock: N calls each say three turns a few (virtual) seconds apart. The clock moves
on once everything has waited 2 ms of real time, so SQLite's threads are done first (the
local Bedrock endpoint and moto, in processes of their own, cannot keep to a virtual
clock). Every collection is counted with what it walked (the objects in the generations it
collects, counted as it starts, which doubles the run's time, not its figures) and what it
freed, once with the server's own thresholds (``voiceagent/app/heap.py``) and once with
each ``--thresholds`` given. Two runs agree within ~3 %. Then, every call still up and idle,
one collection of generation 1 and one of generation 2 are timed: what the first middle
collection walks with the server's thresholds, and what a full one walked with the old.

    python benchmarks/bench_gc_walks.py --calls 200                      # heap.py vs CPython's
    python benchmarks/bench_gc_walks.py --calls 200 --thresholds 700,10,1000

The callers run in this process too: their objects are walked with the server's.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_call_memory import CONFIG, PROMPTS

from voiceagent.app import heap
from voiceagent.app.testing import agent_server

CPYTHON = (700, 10, 10)
LONG_WALK = 5000                    # objects: ~1-2 ms on this machine, more in a slow hour
SETTLE_S = 0.002                    # real time everything waits before the clock jumps


def _tracked_through(generation: int) -> int:
    """The objects a collection of ``generation`` walks: those of it and the younger ones."""
    return sum(len(gc.get_objects(g)) for g in range(generation + 1))


class Walks:
    """Per generation: collections, objects walked (total and longest), objects freed; and
    what one more collection of each older generation would walk with every call still up
    (``held``: generation -> objects, milliseconds)."""

    def __init__(self) -> None:
        self.by_generation: dict[int, Counter[str]] = {g: Counter() for g in range(3)}
        self.held: dict[int, tuple[int, float]] = {}

    def callback(self, phase: str, info: dict[str, Any]) -> None:
        counts = self.by_generation[info["generation"]]
        if phase == "start":
            walked = _tracked_through(info["generation"])
            counts["collections"] += 1
            counts["walked"] += walked
            counts["longest"] = max(counts["longest"], walked)
            counts["long"] += walked > LONG_WALK
        else:
            counts["freed"] += info["collected"]


async def measure(calls: int, thresholds: tuple[int, int, int]) -> Walks:
    walks = Walks()
    async with agent_server(CONFIG, use_case="benchUseCase", MAX_CALLS=str(calls + 10),
                            MAX_CONCURRENT_TURNS=str(calls + 10),
                            IDLE_REPROMPT_S="0") as agent:

        said, held = trio.Semaphore(0), trio.Event()

        async def caller(i: int) -> None:
            async with agent.call(call_sid=f"CA{i:032x}") as conversation:
                await trio.sleep(i * 0.01)              # 100 calls a (virtual) second
                for prompt in PROMPTS[:3]:
                    await conversation.say(prompt)
                    await trio.sleep(2 + (i % 7) * 0.5)  # 2-5 s between turns
                said.release()
                await held.wait()                       # up, idle, until measured

        await trio.testing.wait_all_tasks_blocked(0.05)
        gc.collect()
        gc.freeze()                                     # start-up's objects, as the server
        before = gc.get_threshold()
        gc.set_threshold(*thresholds)
        gc.callbacks.append(walks.callback)
        try:
            async with trio.open_nursery() as nursery:
                for i in range(calls):
                    nursery.start_soon(caller, i)
                for _ in range(calls):
                    await said.acquire()
                await trio.testing.wait_all_tasks_blocked(0.05)
                gc.callbacks.remove(walks.callback)
                for generation in (1, 2):               # the older ones, every call up
                    objects = _tracked_through(generation)
                    started = time.perf_counter()
                    gc.collect(generation)
                    walks.held[generation] = (objects, (time.perf_counter() - started) * 1e3)
                held.set()
        finally:
            if walks.callback in gc.callbacks:
                gc.callbacks.remove(walks.callback)
            gc.set_threshold(*before)
            gc.unfreeze()
    return walks


def _thresholds(text: str) -> tuple[int, int, int]:
    parts = tuple(int(p) for p in text.split(","))
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"three positive numbers, as 700,10,10: not {text!r}")
    return parts[0], parts[1], parts[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--thresholds", type=_thresholds, action="append",
                        help="gc thresholds to compare with heap.py's, as 700,10,10 "
                             "(repeatable; default: CPython's, 700,10,10)")
    args = parser.parse_args()
    sets = [heap.GC_THRESHOLDS, *(args.thresholds or [CPYTHON])]
    print(f"{args.calls} calls x 3 turns, scripted model + SQLite, virtual clock; objects "
          "walked by each generation's collections", flush=True)
    print(f"{'thresholds':>18} {'gen':>3} {'collections':>11} {'walked':>9} "
          f"{'a turn':>7} {'longest':>8} {f'over {LONG_WALK}':>9} {'freed':>6}")
    for thresholds in sets:
        walks = trio.run(measure, args.calls, thresholds,
                         clock=trio.testing.MockClock(autojump_threshold=SETTLE_S))
        label = ",".join(map(str, thresholds))
        total = 0
        for generation, c in walks.by_generation.items():
            total += c["walked"]
            print(f"{label:>18} {generation:>3} {c['collections']:>11} {c['walked']:>9} "
                  f"{c['walked'] / (3 * args.calls):>7.0f} {c['longest']:>8} {c['long']:>9} "
                  f"{c['freed']:>6}", flush=True)
        print(f"{label:>18} all {'':>11} {total:>9} {total / (3 * args.calls):>7.0f}",
              flush=True)
        for generation, (objects, ms) in walks.held.items():
            print(f"{label:>18}   then, every call up and idle: a generation-{generation} "
                  f"collection walks {objects} objects ({objects / args.calls:.0f} a call), "
                  f"{ms:.1f} ms", flush=True)


if __name__ == "__main__":
    main()
