"""A cap on the TCP connections open at once, before any request is read.

Anyone who reaches the port can open connections, silent or sending a header byte now and
then: each is held until HTTP_IDLE_TIMEOUT_S (310 s by default, above the ALB's idle timeout)
and costs a file descriptor and a few tasks before any signature is checked. Without a proxy
in front, a few thousand of them took the process's descriptors and every new call with them
(``accept`` failing with EMFILE), and the model's and the store's connections too.

The cap is what the settings already say the process serves (``connections_allowed``): a
socket per call (MAX_CALLS and the margin of ``socket_standing``), the relay sockets waiting
for their setup (MAX_SOCKETS_WAITING), and webhooks in flight; and never more than the
open-file limit leaves once the model's and the store's pools and the process's own files are
counted (``open_files.connection_limit``). No new setting.

A connection accepted over the cap makes room by closing the connection idle the longest:
one with no request under way (hypercorn's idle timer running: before its first request's
headers are complete, or kept alive between requests), which a slow-header connection always
is. A relay socket is never idle after its upgrade, so a live call's socket is never the one
closed. When no connection is idle, the new one is closed at once. Both are edge refusals
(``Runtime.edge_refusals``): the first of each kind logged in full, then counted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio

from voiceagent.app.socket_standing import CAPACITY_MARGIN
from voiceagent.log_episodes import Episode
from voiceagent.settings import Settings

log = logging.getLogger(__name__)

# webhooks (/twiml, /action, /health) under way at once: each takes milliseconds, a call
# makes two or three in its life, and kept-alive ones are idle (closed first when needed)
WEBHOOKS_MIN = 64
WEBHOOKS_PER_CALL = 0.25

EVICTED = "connection closed to make room: open connections at their cap"
REFUSED = "connection refused: open connections at their cap, none idle"


def connections_allowed(settings: Settings) -> int:
    """What the settings need open at once; see the module's docstring."""
    webhooks = max(WEBHOOKS_MIN, int(settings.max_calls * WEBHOOKS_PER_CALL))
    return settings.max_calls + CAPACITY_MARGIN + settings.max_sockets_waiting + webhooks


class OpenConnections:
    """The connections one server holds, and which of them are idle (oldest idle first)."""

    def __init__(self, limit: int, refusals: Episode | None = None) -> None:
        self.limit = limit
        self._refusals = refusals
        self._open: set[object] = set()
        self._leaving: set[object] = set()            # closed to make room, not yet gone
        self._idle: dict[object, trio.CancelScope] = {}   # in the order they became idle

    @property
    def open(self) -> int:
        return len(self._open) - len(self._leaving)

    def admit(self, connection: object, peer: str) -> bool:
        """Count ``connection`` in, closing the one idle longest if at the cap; False when
        none is idle: the caller closes ``connection`` at once."""
        if self.open >= self.limit:
            if not self._idle:
                self._note("connection_refused", REFUSED, peer)
                return False
            oldest = next(iter(self._idle))
            self._idle.pop(oldest).cancel()          # its idle timer ends: hypercorn closes it
            self._leaving.add(oldest)
            self._note("connection_evicted", EVICTED, peer)
        self._open.add(connection)
        return True

    def closed(self, connection: object) -> None:
        self._open.discard(connection)
        self._leaving.discard(connection)
        self._idle.pop(connection, None)

    @contextmanager
    def idle(self, connection: object) -> Iterator[trio.CancelScope]:
        """While ``connection`` waits for a request: the scope is cancelled to close it."""
        with trio.CancelScope() as scope:
            if connection in self._leaving:          # made room already: close at once
                scope.cancel()
            else:
                self._idle[connection] = scope
            try:
                yield scope
            finally:
                self._idle.pop(connection, None)

    def _note(self, kind: str, event: str, peer: str) -> None:
        fields: dict[str, Any] = {"peer": peer, "max_connections": self.limit,
                                  "open_connections": self.open}
        if self._refusals is None:
            log.warning(event, extra=fields)
        else:
            self._refusals.note(kind, event, **fields)
