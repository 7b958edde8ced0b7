"""The one way blocking libraries (boto3, sqlite3) are called from the trio loop.

Each caller passes its own ``CapacityLimiter``: store calls and model streams must never share
trio's default limiter (40 tokens, shared with anyio), or a burst of one starves the other.
The function runs in a copy of the current context so the CallSid logging contextvar follows.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")


async def run_blocking(fn: Callable[[], T], *, limiter: trio.CapacityLimiter,
                       abandon_on_cancel: bool = False) -> T:
    """Run ``fn`` in a worker thread. Not cancellable unless ``abandon_on_cancel``: a store
    write that was started finishes, so its outcome is known."""
    context = contextvars.copy_context()
    return await trio.to_thread.run_sync(context.run, fn, limiter=limiter,
                                         abandon_on_cancel=abandon_on_cancel)
