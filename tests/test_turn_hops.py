"""``benchmarks/turn_hops.py``'s walk of a turn's causal path (``bench_token_calls.py --hops``).
The benchmark's trace comes from a real run; what turns it into figures is this walk, and a
wrong walk (a run-loop wake taken for the path's end, a step of another task counted as the
same task's) would print wrong hand-offs without any error. Steps here are written by hand,
in the shape the tracer records them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from turn_hops import MODEL, RELAY, Step, stretch, stretches  # noqa: E402


class FakeTask:
    def __init__(self, name: str) -> None:
        self.name = name


READER, GATE, TURN, DRAIN, CALLER = (FakeTask(n) for n in (
    "hypercorn.read", "actors.gate.run", "actors.turn.run", "app.drain", "caller"))
ENTRY_QUEUE = FakeTask("<TrioToken.run_sync_soon task>")


def step(task: FakeTask, batch: int, woken_by: int | None, *io: tuple[str, str, bytes],
         role: str = "server") -> Step:
    return Step(task=task, role=role, batch=batch, woken_by=woken_by,  # type: ignore[arg-type]
                io=list(io))


def trace() -> list[Step]:
    return [
        step(CALLER, 0, None, ("send", RELAY, b"prompt"), role="caller"),       # 0
        step(READER, 1, None, ("recv", RELAY, b"prompt")),                      # 1 arrival
        step(GATE, 2, 1),                                                       # 2
        step(DRAIN, 2, 1),                                                      # 3 off path
        step(TURN, 3, 2),                                                       # 4 spawned
        step(ENTRY_QUEUE, 4, None, role="run loop"),                            # 5 a thread
        step(TURN, 5, 5, ("send", MODEL, b"POST /model")),                      # 6 departure
        step(TURN, 9, None, ("recv", MODEL, b"headers, messageStart")),         # 7
        step(TURN, 12, None, ("recv", MODEL, b"...contentBlockDelta...")),      # 8 arrival
        step(READER, 13, 8),                                                    # 9
        step(READER, 14, 9, ("send", RELAY, b'{"type":"text","token":"We"}')),  # 10
    ]


def test_the_path_follows_wakes_and_a_run_loop_wake_goes_back_to_the_waiting_task() -> None:
    request, frame = stretches(trace())
    # 6 was woken by trio's entry queue (a thread's result): its cause is the turn's own
    # step 4, which began the wait, and the trip through the run loop is a hand-off
    assert (request.start, request.end, request.path) == (1, 6, [1, 2, 4, 6])
    assert request.run_loop == {6}
    assert request.hand_offs == 3               # reader -> gate -> turn, run loop -> turn
    assert request.batches == 4
    assert dict(request.others) == {"app.drain": 1}         # the entry queue is not the server's
    # the first read of the model's socket held no text delta: the arrival is the second
    assert (frame.start, frame.end, frame.path) == (8, 10, [8, 9, 10])
    assert (frame.hand_offs, frame.batches) == (1, 2)
    assert not frame.others


def test_a_path_that_does_not_reach_its_arrival_is_refused() -> None:
    steps = trace()
    steps[2] = step(GATE, 2, None)              # woken by a timer, not by the reader
    with pytest.raises(SystemExit, match="does not reach step 1"):
        stretch(steps, "prompt -> request", 1, 6)


def test_missing_traffic_is_refused() -> None:
    steps: list[Any] = trace()[:7]              # no model event read
    with pytest.raises(SystemExit, match="no server recv on the model socket"):
        stretches(steps)
