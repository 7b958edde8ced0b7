"""Names the async tool that held the event loop.

Every call of a process shares one trio loop. An ``async def`` tool that does blocking work
between two awaits (``time.sleep``, ``requests``, sync boto3, heavy CPU) stalls every call
for that long: no audio, no barge-in seen, no timer fired. ``voiceagent_event_loop_lag_seconds``
shows that it happened, never who did it. So the executor drives each async tool's
coroutine through ``TimedSteps``, which times each step (one resumption of the coroutine up
to its next yield to trio), and a step over ``BLOCKING_STEP_S`` logs one warning per tool
per call, naming the tool. The cost is two ``perf_counter`` calls per step of a tool, none
anywhere else (the token path never sees this).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

# a step this long is no await-free bookkeeping: it is audio every caller did not hear
BLOCKING_STEP_S = 0.1
# blocking=True first: its threads are the tools' own (TOOL_THREADS); trio.to_thread's default
# limiter is shared with the rest of the process, and a thread left running holds it
ADVICE = ("make the tool a plain def with blocking=True (it runs in the tools' own threads), "
          "or use an async client")

T = TypeVar("T")


@dataclass
class ToolBlocking:
    """Per call: the tools whose run held the loop, counted into metrics when the call ends
    (a tool once per run; its warning once per call)."""

    runs: dict[str, int] = field(default_factory=dict)      # tool -> runs that held it

    def note(self, tool: str, longest_s: float) -> None:
        if tool not in self.runs:
            log.warning("tool held the event loop, stalling every call; " + ADVICE,
                        extra={"tool": tool, "longest_step_ms": round(longest_s * 1000),
                               "limit_ms": round(BLOCKING_STEP_S * 1000)})
        self.runs[tool] = self.runs.get(tool, 0) + 1


class TimedSteps(Generic[T]):
    """Awaits ``coroutine`` as ``yield from`` would (PEP 380: what trio sends or throws goes
    in, what it yields goes out, ``close()`` closes it) and keeps its longest step.

    Not ``yield from`` itself: that hands every step to the inner coroutine without coming
    back here, so no step could be timed.
    """

    __slots__ = ("_coroutine", "longest_s")

    def __init__(self, coroutine: Coroutine[Any, Any, T]) -> None:
        self._coroutine = coroutine
        self.longest_s = 0.0

    def __await__(self) -> Generator[Any, Any, T]:
        coroutine = self._coroutine
        resume: Callable[[Any], Any] = coroutine.send
        value: Any = None
        while True:
            started = perf_counter()
            try:
                yielded = resume(value)
            except StopIteration as done:
                return done.value               # type: ignore[no-any-return]
            except BaseException:
                # this frame is in the error's traceback: what trio sent (the outcome that
                # raised it, a Cancelled when the tool's limit cut it) kept here would hold it,
                # a cycle with the call's tool environment until a middle collection
                value = None
                raise
            finally:
                self.longest_s = max(self.longest_s, perf_counter() - started)
            try:
                value = yield yielded
            except GeneratorExit:               # closed: the coroutine's finally blocks run
                coroutine.close()
                raise
            except BaseException as err:        # thrown in (trio does, for a foreign await)
                # as it was thrown: not with this frame in its traceback, where the tool's
                # failure log would then place it
                tb = err.__traceback__
                resume, value = coroutine.throw, err.with_traceback(tb and tb.tb_next)
            else:
                resume = coroutine.send


async def timed(coroutine: Coroutine[Any, Any, T], tool: str, blocking: ToolBlocking) -> T:
    """``await coroutine``, noting in ``blocking`` a step over ``BLOCKING_STEP_S``, however
    it ends: a tool cut by a barge-in or failing stalled the calls all the same."""
    steps = TimedSteps(coroutine)
    try:
        return await steps
    finally:
        if steps.longest_s > BLOCKING_STEP_S:
            blocking.note(tool, steps.longest_s)
