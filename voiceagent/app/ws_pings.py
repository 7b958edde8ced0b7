"""A WebSocket's ping task ends when its socket closes, not at its next ping.

hypercorn 0.18 pings each WebSocket every ``websocket_ping_interval`` (PING_INTERVAL_S, 20 s)
from a task in the connection's task group, and that task looks at whether the socket has
closed only when it wakes. The connection's task group, and with it the connection (its
protocol, wsproto's and h11's state, the socket object, its place under the cap on open
connections), waited for it: every call stayed in the process up to 20 s after it ended.
Measured with ``benchmarks/bench_soak.py`` (calls ending at ~25 a second): ~480 ended calls'
connections held at any time, ~170 tracked objects each (their tasks, cancel scopes, h11's and
wsproto's state, the socket object), each still counted under the cap on open connections
(``open_connections``), which answers a 503 once it is full. The stream's class in
hypercorn's HTTP/1.1 protocol (the only one served: ``http1_only``) is swapped for one whose
ping loop is cancelled the moment the socket is marked closed. ``install`` swaps it only when
hypercorn is the version it was written against, and says so otherwise (the server works as
before, connections lingering).
"""

from __future__ import annotations

import logging
from operator import attrgetter

import trio
from hypercorn.protocol.ws_stream import WSStream

from voiceagent.relay import stream_swap

log = logging.getLogger(__name__)


class PromptPings(WSStream):
    """hypercorn's stream, whose ``closed`` flag also ends its ping loop."""

    _closed = False
    _pings: trio.CancelScope | None = None

    def _set_closed(self, value: bool) -> None:
        self._closed = value
        if value and self._pings is not None:
            self._pings.cancel()

    # hypercorn reads ``closed`` at every frame sent and received: a C getter (attrgetter),
    # not a Python one, costs no Python frame there; only setting it needs ours
    closed = property(attrgetter("_closed"), _set_closed)

    async def _send_pings(self) -> None:
        with trio.CancelScope() as self._pings:
            if not self._closed:
                await super()._send_pings()


def install() -> bool:
    """Idempotent. False (and a warning) when hypercorn's HTTP/1.1 protocol no longer looks
    as expected. Call it after the other stream swaps (``peer_close``): it builds on the
    class in place, which must be hypercorn's or a subclass of it."""
    if (not callable(getattr(WSStream, "_send_pings", None))
            or not stream_swap.swap_in(PromptPings)):
        log.warning("hypercorn's WebSocket stream is not the one expected; a closed socket's "
                    "connection stays until its next ping",
                    extra={"found": repr(stream_swap.in_place())})
        return False
    return True
