"""The one way blocking libraries (boto3, sqlite3) are called from the trio loop.

Each caller passes its own ``CapacityLimiter``: store calls and model streams must never share
trio's default limiter (40 tokens, shared with anyio), or a burst of one starves the other.
The function runs in a copy of the current context so the CallSid logging contextvar follows.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import TypeVar

import outcome
import trio

T = TypeVar("T")


async def run_blocking(fn: Callable[[], T], *, limiter: trio.CapacityLimiter,
                       abandon_on_cancel: bool = False) -> T:
    """Run ``fn`` in a worker thread. Not cancellable unless ``abandon_on_cancel``: a store
    write that was started finishes, so its outcome is known."""
    context = contextvars.copy_context()
    # The thread's outcome comes back in a list, raised here once taken out of it: trio's
    # ``to_thread`` raises it from a frame that holds it (its message from the thread), and
    # the thread's own frames, linked to the error's traceback (``f_back``), hold what they
    # returned. Either way a store call's or a blocking tool's failure was a cycle, the
    # call's objects in it, until a middle collection (minutes apart under load:
    # ``voiceagent.app.heap``).
    done: list[outcome.Outcome[T]] = []
    await trio.to_thread.run_sync(context.run, _into, done, fn, limiter=limiter,
                                  abandon_on_cancel=abandon_on_cancel)
    result = done.pop()
    try:
        return result.unwrap()
    finally:
        del result                  # this frame is in the error's traceback: see above


def _into(done: list[outcome.Outcome[T]], fn: Callable[[], T]) -> None:
    done.append(outcome.capture(fn))
