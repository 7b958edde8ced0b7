"""hypercorn's queue of ASGI events for each connection, on the call's own channel.

hypercorn hands each request's events (a body's chunks, a relay socket's frames, the
disconnect) to the app through a trio memory channel it opens per connection, and the app
waits on it for as long as the connection lives: for a relay socket, the whole call. trio's
channel costs ~2.6 KiB with its reader waiting (an empty ``deque`` allocated up front, two
``OrderedDict``s of waiting tasks, a ``set`` and a ``__dict__`` per end), the largest thing of
trio's a connected call still held after the thirty-first pass moved the call's own channels
to ``actors/channel.py`` (issue 20: RSS at 2000 calls). That channel has the same semantics
for one reader at ~0.5 KiB, and hypercorn's queue has one reader: the app's ``receive``
(quart's message task for a request, the relay reader for a socket).

hypercorn has no setting for the queue, so ``install`` sets the task group its connections
make (``hypercorn.trio.tcp_server.TaskGroup``) to a subclass that opens ours, only for a
release it was written against; otherwise the queue stays trio's, and everything works as
before. ``first_look`` reads either kind's state.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import hypercorn.trio.tcp_server as tcp_server
import trio
from hypercorn.config import Config
from hypercorn.trio.task_group import TaskGroup, _handle

from actors.channel import Channel
from voiceagent.relay import peer_close

log = logging.getLogger(__name__)


class LeanTaskGroup(TaskGroup):
    """hypercorn 0.18's connection task group, whose app queue is ``actors.channel``'s."""

    async def spawn_app(self, app: Any, config: Config, scope: Any,
                        send: Callable[[Any], Awaitable[None]]
                        ) -> Callable[[Any], Awaitable[None]]:
        put, receiver = Channel[Any](config.max_app_queue_size).ends()
        # as hypercorn's: the app gets the receiving end's ``receive`` and hypercorn's two
        # thread helpers; hypercorn puts each event with the sending end's ``send``
        self._nursery.start_soon(  # type: ignore[union-attr]  # set on entering, as hypercorn's
            _handle, app, config, scope, receiver.receive, send, trio.to_thread.run_sync,
            trio.from_thread.run)
        return put.send


def install() -> bool:
    """Idempotent. False (and a warning) when hypercorn's connection task group is not the
    one expected."""
    current = getattr(tcp_server, "TaskGroup", None)
    if current is LeanTaskGroup:
        return True
    if (current is not TaskGroup or not peer_close.release_known()
            or not callable(getattr(TaskGroup, "spawn_app", None))):
        log.warning("hypercorn's connection task group is not the one expected; each "
                    "connection's event queue stays trio's (~2 KiB more a call)",
                    extra={"found": repr(current),
                           "hypercorn": peer_close.hypercorn_release()})
        return False
    setattr(tcp_server, "TaskGroup", LeanTaskGroup)  # noqa: B010 (not exported: typed as such)
    return True
