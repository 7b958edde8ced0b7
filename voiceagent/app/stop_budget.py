"""One budget for a whole stop, from the first SIGTERM (or Ctrl-C) to the process's exit.

A stop has phases, each with its own bound: live calls run on (DRAIN_TIMEOUT_S), are ended
politely (END_GRACE_S), the write-behind queue is flushed (FLUSH_TIMEOUT_S), hypercorn closes
what is left (``GRACEFUL_S``), then the runtime flushes once more and closes. Each flush used
to take its own FLUSH_TIMEOUT_S, and the write-behind's attempt in flight its own read
timeout: with the store stalled at shutdown the phases added up past Fargate's StopTimeout,
and SIGKILL took the process, with the lines saying what was lost. Now every flush of the stop
(the calls' own, the drain's, the runtime's last) ends by ``Stop.flushes_end``, the drainer's
attempt in flight with it, and the process is closed ``CLOSE_S`` later: the stop takes at most
``budget_s(settings)``, and what was not written is logged as dropped, by CallSid.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import trio

from voiceagent.logs import for_call
from voiceagent.settings import Settings

log = logging.getLogger(__name__)

GRACEFUL_S = 2.0        # after our own drain, hypercorn's last grace (server.py)
# after the last flush: the task's scale-in protection released (at most 4 s, a local
# endpoint), the store's and the model's clients closed
CLOSE_S = 5.0
CALLS_LISTED = 100      # CallSids named in the summary line; each call has its own line too


def budget_s(settings: Settings) -> float:
    """The longest a stop takes, whatever the store does (the deploy checks it against the
    container's stop timeout)."""
    return (settings.drain_timeout_s + settings.end_grace_s + settings.flush_timeout_s
            + GRACEFUL_S + CLOSE_S)


@dataclass(frozen=True)
class Stop:
    """A stop under way: started at the signal, on trio's clock."""

    started_at: float
    deadline: float             # the process has exited by now

    @classmethod
    def starting_now(cls, settings: Settings) -> Stop:
        now = trio.current_time()
        return cls(started_at=now, deadline=now + budget_s(settings))

    @property
    def flushes_end(self) -> float:
        """Every flush of the stop, and the write-behind's attempt in flight, ends by now."""
        return self.deadline - CLOSE_S


def flushes_end(stop: Stop | None) -> float:
    """When a flush must end at the latest: never, outside a stop."""
    return stop.flushes_end if stop is not None else math.inf


def log_dropped(unwritten: Mapping[str, int], *, why: str) -> None:
    """The writes the process gives up on, as it exits: a line under each call's CallSid
    (an operator searching one finds why its transcript stops short), then one for the
    process with the totals. Counts and keys' owners only, never an item's content."""
    if not unwritten:
        return
    for call_sid, count in unwritten.items():
        with for_call(call_sid):
            log.error("store writes dropped at shutdown", extra={"items": count, "why": why})
    sids = list(unwritten)
    log.error("store writes dropped at shutdown", extra={
        "items": sum(unwritten.values()), "calls": len(sids), "call_sids": sids[:CALLS_LISTED],
        "why": why})
