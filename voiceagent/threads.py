"""The one way blocking libraries (boto3, sqlite3) are called from the trio loop.

Each caller passes its own ``CapacityLimiter``: store calls and model streams must never share
trio's default limiter (40 tokens, shared with anyio), or a burst of one starves the other.
The function runs in a copy of the current context so the CallSid logging contextvar follows.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Generic, TypeVar

import outcome
import trio

T = TypeVar("T")


async def run_blocking(fn: Callable[[], T], *, limiter: trio.CapacityLimiter,
                       abandon_on_cancel: bool = False) -> T:
    """Run ``fn`` in a worker thread. Not cancellable unless ``abandon_on_cancel``: a store
    write that was started finishes, so its outcome is known."""
    context = contextvars.copy_context()
    # The thread's outcome comes back in a hand-over, raised here once taken out of it:
    # trio's ``to_thread`` raises it from a frame that holds it (its message from the
    # thread), and the thread's own frames, linked to the error's traceback (``f_back``),
    # hold what they returned. Either way a store call's or a blocking tool's failure was a
    # cycle, the call's objects in it, until a middle collection (minutes apart under load:
    # ``voiceagent.app.heap``).
    handover: _Handover[T] = _Handover()
    try:
        await trio.to_thread.run_sync(context.run, _into, handover, fn, limiter=limiter,
                                      abandon_on_cancel=abandon_on_cancel)
    except BaseException:
        handover.abandon()
        raise
    result = handover.kept.pop()
    try:
        return result.unwrap()
    finally:
        del result                  # this frame is in the error's traceback: see above


class _Handover(Generic[T]):
    """The thread's outcome, for ``run_blocking``; dropped once nobody waits for it. Each
    side empties it after its own step (the loop: abandoning; the thread: putting the outcome
    in), so whichever comes second finds the other's (list operations and the flag are atomic
    under the GIL): an abandoned thread's outcome is never kept with its frames."""

    __slots__ = ("abandoned", "kept")

    def __init__(self) -> None:
        self.kept: list[outcome.Outcome[T]] = []
        self.abandoned = False

    def abandon(self) -> None:
        self.abandoned = True
        self.kept.clear()


def _into(handover: _Handover[T], fn: Callable[[], T]) -> None:
    handover.kept.append(outcome.capture(fn))
    if handover.abandoned:
        handover.kept.clear()
