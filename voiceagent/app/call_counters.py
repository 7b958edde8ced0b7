"""How many calls this process serves, and the sockets about to become calls: what capacity,
the drain, task protection and the metrics follow (``Runtime.calls``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from actors.call import CallReport

log = logging.getLogger(__name__)


@dataclass
class CallCounters:
    active: int = 0
    total: int = 0
    claims: int = 0             # sockets whose setup's call is at its first read (capacity)
    lookups: int = 0            # sockets whose setup's call is being looked up at all (drain)
    matched: int = 0            # of those, whose token matched its session (task protection)
    live: list[CallReport] = field(default_factory=list)      # calls in progress
    # Ended calls' reports, whole History included: the last ``keep``, for tests
    # (voiceagent.app.testing). A server keeps none: only the metrics read one, at its end.
    reports: list[CallReport] = field(default_factory=list)
    keep: int = 0
    on_finished: Callable[[CallReport], None] | None = None    # metrics
    _idle: trio.Event = field(default_factory=trio.Event)
    _changed: trio.Event = field(default_factory=trio.Event)

    def started(self, report: CallReport) -> None:
        self._busy()
        self.active += 1
        self.total += 1
        self.live.append(report)
        self._announce()

    def finished(self, report: CallReport) -> None:
        self.active -= 1
        self.live.remove(report)
        if self.keep:
            self.reports.append(report)
            del self.reports[:-self.keep]
        self._report(report)
        self._idle_unless_busy()
        self._announce()

    def claim_started(self) -> None:
        """A socket's setup is being looked up (``SocketStanding``): it counts for capacity,
        and a drain waits for it, since it becomes a call a moment later."""
        self._busy()
        self.claims += 1
        self.lookups += 1
        self._announce()

    def looked_up_again(self) -> None:
        """Its call was not there at the first read: no longer counted for capacity (a flood
        of made-up CallSids must not refuse real calls), but still waited for by a drain:
        its session may be on its way from another process, and the call start then."""
        self.claims -= 1

    def token_matched(self) -> None:
        """Its setup's token is its call's session's: it claims the call, unless a socket
        racing it with the same token claims it first. Task protection counts it from here,
        not from ``claim_started``: a captured signed upgrade replayed with a spent token, or
        a CallSid nobody prepared, is looked up for ~3.5 s before it is refused, and anyone
        can send one every few seconds (the upgrade's signature covers only the URL), which
        kept an idle task protected, and every deployment and scale-in off it. A token spent
        on another task whose claim is still queued there (a slow store) matches here too,
        for seconds, until this socket's claim is refused: accepted, see docs/deploy.md."""
        self.matched += 1
        self._announce()

    def claim_done(self, *, at_first_read: bool = True, matched: bool = False) -> None:
        """Its lookup is over: a call (``started`` follows at once) or refused.
        ``at_first_read``: not ``looked_up_again``, so still counted for capacity;
        ``matched``: counted in ``token_matched``."""
        self.claims -= at_first_read
        self.lookups -= 1
        self.matched -= matched
        self._idle_unless_busy()
        self._announce()

    def _busy(self) -> None:
        if self._idle.is_set():
            self._idle = trio.Event()

    def _idle_unless_busy(self) -> None:
        if not self.active and not self.lookups:
            self._idle.set()

    def never_started(self, report: CallReport) -> None:
        """A socket closed before its call started (refused, unavailable, evicted, no
        setup): not a live call, but the metrics count it by how it ended."""
        self._report(report)

    def _report(self, report: CallReport) -> None:
        if self.on_finished is not None:
            try:
                self.on_finished(report)
            except Exception:
                log.exception("call report hook failed")

    async def wait_changed(self) -> None:
        """Until a call, or a socket's lookup of its call, starts or ends, or a lookup finds
        its token matched (task protection follows the count)."""
        await self._changed.wait()

    def _announce(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_idle(self) -> None:
        """Until no call is in progress and no socket's call is being looked up (drain,
        tests), at its first read or again. Looked again after each wake-up: a claim that
        ends as its call starts sets the event a moment before the call counts."""
        while self.active or self.lookups:
            await self._idle.wait()
