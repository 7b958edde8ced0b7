"""Ctrl-C in ``voiceagent demo``, which serves and calls in one process: taken as a signal
the program waits for, never as a KeyboardInterrupt raised wherever the loop happens to be.
And in programs that embed the server and leave SIGINT to trio: the KeyboardInterrupt gets
past hypercorn to them (``interrupts_escape`` below).

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
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:        # not at run time: the demo imports this module before hypercorn
    from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope

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


# For programs that embed the server (``open_server``, ``voiceagent.app.testing``) and leave
# SIGINT to trio, which raises KeyboardInterrupt in whatever code runs when it lands. When
# that is the server's, hypercorn lost it: raised in a request's or a call's task it arrives
# in an exception group, which hypercorn logs as "Error in ASGI Framework" before serving
# on; raised in one of its own tasks (the accept loop, the shutdown trigger) it is taken for
# a shutdown, and ``hypercorn.trio.serve`` returns as if asked to stop. Either way the
# program's Ctrl-C did nothing, or only stopped the server under its feet.

def interrupts_escape(app: ASGIFramework) -> ASGIFramework:
    """``app``, whose KeyboardInterrupt leaves it bare: hypercorn's handler takes only
    ``Exception`` and groups, so the interrupt goes on up and ends the server."""
    async def asgi(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        try:
            await app(scope, receive, send)
        except BaseExceptionGroup as group:
            interrupt = interrupt_alone(group)
            if interrupt is None:
                raise
            raise interrupt from None
    return asgi


def interrupt_alone(group: BaseExceptionGroup[BaseException]) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt a group carries with nothing else but cancellations, which it
    caused: raised alone, an embedder's ``except KeyboardInterrupt`` (and Python's exit 130
    at the top) still sees it through the nurseries on its way."""
    interrupts, rest = group.split(KeyboardInterrupt)
    if interrupts is None or (rest is not None and rest.split(trio.Cancelled)[1] is not None):
        return None
    leaf: BaseException = interrupts
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    assert isinstance(leaf, KeyboardInterrupt)
    return leaf
