"""The server's word to its live calls to end politely, when it drains.

Why not a ``trio.Event`` each call waits on: a call's interrupt handler waits on the caller's
input, and waiting on an event as well took one more task per call, with two cancel scopes,
for the whole life of every call: ~4 KB and one more await chain per call, 2000 of each at
2000 calls, for a moment that comes once per process (issue 20, benchmarks/RESULTS.md). The
handler already waits in a cancel scope of its own (its key, silence and length deadlines); it
lends that scope here while it waits, and ``set`` cancels every scope lent, so each handler
wakes, sees ``is_set`` and ends its call. A handler that is busy when ``set`` comes sees it the
next time it looks, before it waits again.
"""

from __future__ import annotations

import trio


class EndSignal:
    """Set once, never cleared; ``waiting`` / ``done_waiting`` bracket each wait it should
    end."""

    __slots__ = ("_set", "_waiting")

    def __init__(self) -> None:
        self._set = False
        self._waiting: set[trio.CancelScope] = set()

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        for scope in self._waiting:
            scope.cancel(reason="the server is ending its calls")

    def waiting(self, scope: trio.CancelScope) -> None:
        """``scope`` is cancelled when the signal is set (at once if it already is)."""
        if self._set:
            scope.cancel(reason="the server is ending its calls")
        self._waiting.add(scope)

    def done_waiting(self, scope: trio.CancelScope) -> None:
        self._waiting.discard(scope)

    @property
    def waiters(self) -> int:
        """Scopes lent and not yet returned: for tests, and to see that none leak."""
        return len(self._waiting)
