"""One turn in flight: each turn runs in its own cancel scope, and starting the next one first
cancels the current one and waits for it to finish recording what the caller heard.

Waiting matters: the cancelled turn writes its partial reply (and any side-effect tool results)
to the history in its cleanup, and the next turn must see that history, not race it. Only the
llm_streamer task calls ``restart`` and ``cancel_and_wait``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

log = logging.getLogger(__name__)

Turn = Callable[[], Awaitable[None]]


class TurnSlot:
    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._scope: trio.CancelScope | None = None
        self._done: trio.Event | None = None

    @property
    def busy(self) -> bool:
        return self._done is not None and not self._done.is_set()

    async def restart(self, turn: Turn, *, reason: str = "superseded") -> None:
        await self.cancel_and_wait(reason=reason)
        self._scope, self._done = await self._nursery.start(_run_scoped, turn)

    async def cancel_and_wait(self, *, reason: str) -> None:
        """Cancel the turn in flight (if any) and wait until its cleanup has run."""
        if self._scope is not None and self._done is not None and not self._done.is_set():
            log.info("turn cancelled", extra={"reason": reason})
            self._scope.cancel(reason=reason)
            await self._done.wait()
        self._scope = None


async def _run_scoped(turn: Turn, *,
                      task_status: trio.TaskStatus[tuple[trio.CancelScope, trio.Event]]) -> None:
    done = trio.Event()
    try:
        with trio.CancelScope() as scope:
            task_status.started((scope, done))
            await turn()
    finally:
        done.set()
