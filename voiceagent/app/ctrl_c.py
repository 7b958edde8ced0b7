"""Ctrl-C in ``voiceagent demo``, which serves and calls in one process: taken as a signal
the program waits for, never as a KeyboardInterrupt raised wherever the loop happens to be.

trio raises KeyboardInterrupt in whatever code runs when SIGINT lands. In the demo that is
often the server's: a request's or a call's task, where hypercorn logs what escapes as
"Error in ASGI Framework" and serves on (and its accept loop takes one for a shutdown of its
own). The Ctrl-C was lost, and the demo waited for its caller for ever. Received here, the
first one ends the conversation (the server then drains, as on any exit) and a second one
everything at once, drain included.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import trio

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopping:
    """What the signals asked for so far."""

    def __init__(self) -> None:
        self.signum: int | None = None      # the first one: the exit code says which
        self._talk = trio.CancelScope()
        self._everything = trio.CancelScope()

    @property
    def exit_code(self) -> int:
        """As a shell reports a command a signal ended: 130 for Ctrl-C."""
        return 128 + self.signum if self.signum is not None else 0

    @contextmanager
    def talking(self) -> Iterator[None]:
        """The conversation, which the first signal ends (at once if it came before)."""
        with self._talk:
            yield

    async def _receive(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if self.signum is None:
                self.signum = signum
                self._talk.cancel()
            else:
                self._everything.cancel()


@asynccontextmanager
async def signals_stop() -> AsyncIterator[Stopping]:
    """Enter before the server starts: SIGINT and SIGTERM are then never raised inside it."""
    stopping = Stopping()
    with trio.open_signal_receiver(*SIGNALS) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stopping._receive, signals)
            with stopping._everything:
                yield stopping
            nursery.cancel_scope.cancel()
