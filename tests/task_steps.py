"""How many schedule points a task takes: for tests that a hot path does not give the event
loop back where it need not (under load each one waits for every call's runnable work)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import trio


class TaskSteps(trio.abc.Instrument):
    """One task's steps since counting began: one more at each schedule point it takes.
    ``on_step`` runs just before each of them, to look at what the task had done by then."""

    def __init__(self, task: trio.lowlevel.Task,
                 on_step: Callable[[], None] | None = None) -> None:
        self.task, self.steps, self._on_step = task, 0, on_step

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1
            if self._on_step is not None:
                self._on_step()


@contextmanager
def steps_of_this_task(on_step: Callable[[], None] | None = None) -> Iterator[TaskSteps]:
    """The calling task's steps, counted while the block runs."""
    steps = TaskSteps(trio.lowlevel.current_task(), on_step)
    trio.lowlevel.add_instrument(steps)
    try:
        yield steps
    finally:
        trio.lowlevel.remove_instrument(steps)
