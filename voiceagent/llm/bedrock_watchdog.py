"""The read watchdog of the Bedrock streams (``bedrock_http.Attempt``).

It knows an exchange only by its ``read_deadline`` and ``time_out``: what a deadline passed
means (a first event not come, a silence, a reply past its deadline) is the exchange's to
decide.
"""

from __future__ import annotations

import math
from typing import Protocol

import trio

WATCHDOG_SLACK_S = 0.05             # read timeouts fire up to this late


class Watched(Protocol):
    """An exchange whose read the watchdog may end."""

    read_deadline: float            # trio time; moves as the exchange hears from Bedrock

    def time_out(self) -> None:
        """End the read that waits now (close its socket); never blocks."""


class ReadWatchdog:
    """Ends reads that have waited longer than their deadline: one task for every stream
    of a trio run, instead of a cancel scope around each read (one per model event, which
    cost as much as parsing the event). It sleeps while no stream is open."""

    def __init__(self) -> None:
        self._attempts: set[Watched] = set()
        self._token: trio.lowlevel.TrioToken | None = None
        self._changed = trio.Event()
        self._wakes_at = math.inf

    def watch(self, attempt: Watched) -> None:
        token = trio.lowlevel.current_trio_token()
        if self._token is not token:          # a new trio run (tests start many)
            self._token, self._attempts = token, set()
            self._changed, self._wakes_at = trio.Event(), math.inf
            trio.lowlevel.spawn_system_task(self._run, name="bedrock read watchdog")
        self._attempts.add(attempt)
        # a new attempt's first-event deadline may come before the reads already watched
        if attempt.read_deadline < self._wakes_at:
            self._changed.set()

    def forget(self, attempt: Watched) -> None:
        self._attempts.discard(attempt)

    async def _run(self) -> None:
        while True:
            self._changed = trio.Event()
            now = trio.current_time()
            for attempt in [a for a in self._attempts if a.read_deadline <= now]:
                self._attempts.discard(attempt)
                attempt.time_out()
            soonest = min((a.read_deadline for a in self._attempts), default=math.inf)
            # A watched attempt's deadline moves later as events come (earlier only at
            # messageStop or words after a long wait, which watch it again), so waking at
            # the soonest one is early, never late; the slack batches busy streams' checks.
            self._wakes_at = max(soonest, now + WATCHDOG_SLACK_S)
            with trio.move_on_at(self._wakes_at):
                await self._changed.wait()
