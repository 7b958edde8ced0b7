"""A cap on the TCP connections open at once, before any request is read.

Anyone who reaches the port can open connections, silent or sending a header byte now and
then: each is held until HTTP_IDLE_TIMEOUT_S (310 s by default, above the ALB's idle timeout)
and costs a file descriptor and a few tasks before any signature is checked. Without a proxy
in front, enough of them (the open-file limit: 1024 on many systems) took the process's
descriptors and every new call with them (``accept`` failing with EMFILE), and the model's
and the store's connections too.

The cap is what the settings already say the process serves (``connections_allowed``): a
socket per call (MAX_CALLS and the margin of ``socket_standing``), the relay sockets waiting
for their setup (MAX_SOCKETS_WAITING), and webhooks in flight; and never more than the
open-file limit leaves once the model's and the store's pools and the process's own files are
counted (``open_files.connection_limit``). No new setting.

A connection accepted over the cap makes room by closing another that costs nobody a call:
first the one idle longest (no request under way, hypercorn's idle timer running: before its
first request's headers are complete, which a slow-header connection always is, or kept
alive between requests); else the oldest whose request body is still arriving (answered 503
and closed: Twilio sends its few KB at once, and a body trickled for up to BODY_TIMEOUT_S
was the cheapest way to hold places). A relay socket is neither after its upgrade, so a live
call's socket is never the one closed. When there is no such connection, the new one is
answered a fixed 503 and closed (``connection_cycle``: its request is never read). Both are
edge refusals (``Runtime.edge_refusals``): the first of each kind in an episode logged in
full, then counted; and both are counted by outcome (``over_cap``) for the metrics, with the
connections open (``open``), read at scrape time.
"""

from __future__ import annotations

import logging
from collections import Counter
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

Peer = tuple[str, int]        # an accepted connection's peer address: unique among them

EVICTED = "connection closed to make room: open connections at their cap"
REFUSED = ("connection refused (answered 503): open connections at their cap, each a call or "
           "a relay socket waiting for its setup")


def connections_allowed(settings: Settings) -> int:
    """What the settings need open at once; see the module's docstring."""
    webhooks = max(WEBHOOKS_MIN, int(settings.max_calls * WEBHOOKS_PER_CALL))
    return settings.max_calls + CAPACITY_MARGIN + settings.max_sockets_waiting + webhooks


class OpenConnections:
    """The connections one server holds, and those that may be closed to make room: the
    idle ones (oldest idle first), then those whose request body is still arriving (oldest
    first). A connection is known by its peer address, as in its requests' ASGI scope."""

    def __init__(self, limit: int, refusals: Episode | None = None) -> None:
        self.limit = limit
        self._refusals = refusals
        self._open: set[Peer] = set()
        self._leaving: set[Peer] = set()          # closed to make room, not yet gone
        self._idle: dict[Peer, trio.CancelScope] = {}       # in the order they became idle
        self._bodies: dict[Peer, trio.CancelScope] = {}     # in the order they began
        # connections accepted at the cap, by outcome: refused (the new one answered 503),
        # closed_idle and closed_body (another closed to make room for it)
        self.over_cap: Counter[str] = Counter()

    @property
    def open(self) -> int:
        return len(self._open) - len(self._leaving)

    def admit(self, peer: Peer) -> bool:
        """Count ``peer``'s new connection in, closing another if at the cap; False when
        none may be closed: the caller closes the new one at once."""
        if self.open >= self.limit:
            room = self._idle or self._bodies
            if not room:
                self.over_cap["refused"] += 1
                self._note("connection_refused", REFUSED, peer)
                return False
            self.over_cap["closed_idle" if self._idle else "closed_body"] += 1
            oldest = next(iter(room))
            room.pop(oldest).cancel()
            self._leaving.add(oldest)
            self._note("connection_evicted", EVICTED, peer)
        self._open.add(peer)
        return True

    def closed(self, peer: Peer) -> None:
        self._open.discard(peer)
        self._leaving.discard(peer)
        self._idle.pop(peer, None)
        self._bodies.pop(peer, None)

    @contextmanager
    def idle(self, peer: Peer) -> Iterator[trio.CancelScope]:
        """While ``peer``'s connection waits for a request: the scope is cancelled to close
        it (hypercorn's idle timeout, early)."""
        with trio.CancelScope() as scope:
            if peer in self._leaving:            # picked while busy: closed when it is not
                scope.cancel()
            else:
                self._idle[peer] = scope
            try:
                yield scope
            finally:
                self._idle.pop(peer, None)

    @contextmanager
    def body_arriving(self, peer: Peer | None, scope: trio.CancelScope) -> Iterator[None]:
        """While a request's body arrives: ``scope`` is cancelled to close the connection
        (``server.bounded_bodies`` answers and closes it); ``body_arrived`` ends it early."""
        if peer is None or peer not in self._open:
            yield
            return
        if peer in self._leaving:
            scope.cancel()
        else:
            self._bodies[peer] = scope
        try:
            yield
        finally:
            self._bodies.pop(peer, None)

    def body_arrived(self, peer: Peer | None) -> None:
        if peer is not None:
            self._bodies.pop(peer, None)

    def made_room(self, peer: Peer | None) -> bool:
        """Whether ``peer``'s connection was closed to make room (not timed out)."""
        return peer in self._leaving

    def _note(self, kind: str, event: str, peer: Peer) -> None:
        fields: dict[str, Any] = {"peer": str(peer[0]), "max_connections": self.limit,
                                  "open_connections": self.open}
        if self._refusals is None:
            log.warning(event, extra=fields)
        else:
            self._refusals.note(kind, event, **fields)
