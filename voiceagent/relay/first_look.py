"""A relay frame seen in hypercorn's read task, before it is handed to the call's reader.

A barge-in's cut (``CutMarks.cut``) is made by the relay reader the moment it reads the
interrupt. The frame reaches the reader through hypercorn's queue of ASGI events: the
connection's read task parses it and puts it there, and the reader runs one pass of the
scheduler later. At a thousand busy calls that pass is milliseconds, during which Bedrock
keeps generating for a caller who has stopped listening (issue 20: interrupt -> upstream
closed, p99 < 10 ms at 2000 calls).

So the stream lets the call look at a text frame first, in the read task itself
(``look_first``, set in the connection's ASGI scope, the one dict hypercorn and the app
share). Only when the reader is waiting on that queue with nothing queued ahead: the frame
is then the very next one the reader reads, and every frame before it has been handled, so
a cut made now cuts the turn the reader would cut, one pass sooner. With a frame queued
ahead (a prompt, say) the look is skipped, and the reader cuts in order as before.

hypercorn has no hook for this, so, as ``peer_close`` and ``ws_pings`` do, ``install``
sets its HTTP/1.1 protocol's stream class to a subclass, only for a release it was written
against; otherwise every cut is the reader's, one pass later.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

import trio
from hypercorn.protocol.events import Request
from hypercorn.protocol.ws_stream import WSStream

from voiceagent.relay import peer_close, stream_swap

log = logging.getLogger(__name__)

SCOPE_KEY = "voiceagent.look_first"      # in the ASGI scope: a ``Look``, while one is set

Look = Callable[[str], None]
Put = Callable[[dict[str, Any]], Awaitable[None]]


@runtime_checkable
class SaysReaderWaits(Protocol):
    """A queue that says whether its one reader waits: ``actors.channel``'s sending end,
    which ``asgi_queue`` puts under hypercorn (this layer does not import the actors')."""

    async def send(self, value: Any) -> None: ...
    def reader_waiting(self) -> bool: ...


Queue = SaysReaderWaits | trio.MemorySendChannel[Any]


class FirstLook(WSStream):
    """hypercorn's stream, whose text frames the app may look at before they are queued."""

    async def handle(self, event: Any) -> None:
        await super().handle(event)
        # the app's queue is made on the upgrade's request; wrapped after the
        # ``websocket.connect`` it carries, which no look is for
        if type(event) is Request and isinstance(
                queue := getattr(self.app_put, "__self__", None),
                SaysReaderWaits | trio.MemorySendChannel):
            self.app_put = looking_put(queue, self.scope)


def reader_waiting(queue: Queue) -> bool:
    """Whether the app waits on its queue with nothing queued ahead: the next frame put is
    the very next one it reads. The queue is trio's (hypercorn's own) or ours
    (``asgi_queue``)."""
    if isinstance(queue, trio.MemorySendChannel):
        queued = queue.statistics()
        return bool(queued.tasks_waiting_receive and not queued.current_buffer_used)
    return queue.reader_waiting()


def looking_put(queue: Queue, scope: Any) -> Put:
    """``queue.send``, which first shows a text frame to the scope's ``Look`` when the
    frame is the next one the queue's reader gets. A closure, not a method of the stream:
    the stream holding its own bound method would be a cycle, and every ended connection
    would wait for the collector (``connection_cycle``)."""
    put = queue.send

    async def put_looked(message: dict[str, Any]) -> None:
        look: Look | None = scope.get(SCOPE_KEY)
        if (look is not None and (text := message.get("text")) is not None
                and reader_waiting(queue)):
            try:
                look(text)
            except Exception:
                # the read task serves the whole connection: a look that fails must not
                # end it; the reader reads the frame as it would have
                log.exception("a frame's first look failed")
        await put(message)
    return put_looked


def install() -> bool:
    """Idempotent. False (and a warning) when hypercorn's HTTP/1.1 stream is not the one
    expected. Builds on the class in place (``peer_close``'s), as ``ws_pings`` does."""
    if not peer_close.release_known() or not stream_swap.swap_in(FirstLook):
        log.warning("hypercorn's WebSocket stream is not the one expected; a barge-in is cut "
                    "when the call's reader reads it, a scheduler pass later",
                    extra={"found": repr(stream_swap.in_place()),
                           "hypercorn": peer_close.hypercorn_release()})
        return False
    return True
