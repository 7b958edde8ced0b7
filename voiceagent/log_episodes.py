"""A fault that repeats while it lasts, logged in proportion to what an operator needs.

A store that throttles, a model that refuses every turn, a flood of requests with a bad
signature: a line per occurrence is hundreds a second at scale, each saying the same thing.
CloudWatch Logs bills every line ingested, and a screen of identical lines hides the one that
matters. An ``Episode`` logs the first occurrence of each kind in full (its own
event and fields, under the CallSid of the call it happened in), then counts the rest: a
summary line every ``every_s`` while occurrences keep coming, and one line when the episode
is over (no occurrence for ``quiet_s``, noticed at the next success, the next occurrence, or
an owner's ``expire``; with ``quiet_s`` 0, at the next success). The rest are still logged
at DEBUG, so LOG_LEVEL=DEBUG shows each.

The summary and end lines are about the process, not one call: they carry no CallSid. A
process that stops mid-episode logs a last summary (``close``, with ``stopping``), or the
end line if the episode was over by then and nothing had noticed.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import trio

from voiceagent.logs import for_call

SUMMARY_EVERY_S = 60.0
QUIET_S = 10.0


class Episode:
    """One fault's lines. ``lasts``: the summary's event, ``ended``: the end's. ``state``
    adds what the owner knows at that moment (a backlog, a quota) to both."""

    def __init__(self, logger: logging.Logger, *, lasts: str, ended: str,
                 level: int = logging.WARNING,
                 state: Callable[[], dict[str, Any]] | None = None,
                 every_s: float = SUMMARY_EVERY_S, quiet_s: float = QUIET_S) -> None:
        self._log = logger
        self._lasts = lasts
        self._ended = ended
        self._level = level
        self._state = state
        self._every_s = every_s
        self._quiet_s = quiet_s
        self._began: float | None = None
        self._last = 0.0                    # the latest occurrence
        self._line_at = 0.0                 # the latest summary (or the start)
        self._window: Counter[str] = Counter()   # occurrences since that line
        self._total: Counter[str] = Counter()
        self._ok_window = 0                 # successes since that line
        self._ok_total = 0

    @property
    def active(self) -> bool:
        return self._began is not None

    @property
    def quiet_at(self) -> float | None:
        """When the episode is over unless something else goes wrong (for an owner that
        waits, so the end line does not wait for the next success)."""
        return None if self._began is None else self._last + self._quiet_s

    def note(self, kind: str, event: str, /, *, level: int | None = None,
             **fields: Any) -> bool:
        """One occurrence: ``event`` with ``fields`` is logged if ``kind`` is new in this
        episode, else counted (and logged at DEBUG). True when it was logged."""
        now = trio.current_time()
        self.expire()
        if self._began is None:
            self._began = self._line_at = now
        self._last = now
        first = kind not in self._total
        self._window[kind] += 1
        self._total[kind] += 1
        self._log.log((self._level if level is None else level) if first else logging.DEBUG,
                      event, extra=fields, stacklevel=2)
        if now - self._line_at >= self._every_s:
            self._line(self._level, self._lasts, for_s=round(now - self._began, 1),
                       counts=dict(self._window), ok=self._ok_window)
            self._window.clear()
            self._ok_window = 0
            self._line_at = now
        return first

    def succeeded(self) -> None:
        """What the episode is about worked this time: it ends if it has been quiet."""
        if self._began is not None:
            self._ok_window += 1
            self._ok_total += 1
            self._end_if_quiet()

    def expire(self) -> None:
        """End the episode if nothing went wrong for ``quiet_s`` (with ``quiet_s`` 0, only
        a success ends it)."""
        if self._quiet_s > 0:
            self._end_if_quiet()

    def close(self) -> None:
        """At shutdown, mid-episode: what was counted since the last summary, which would
        otherwise be lost with the process. An episode already over (quiet for ``quiet_s``)
        that nothing has noticed yet (no success since, no owner's ``expire``) logs its end
        instead: "still failing" with ``stopping`` would say the fault outlived the process."""
        self.expire()
        if self._began is not None and (self._window or self._ok_window):
            now = trio.current_time()
            self._line(self._level, self._lasts, for_s=round(now - self._began, 1),
                       counts=dict(self._window), ok=self._ok_window, stopping=True)
            self._window.clear()
            self._ok_window = 0

    def _end_if_quiet(self) -> None:
        if self._began is None or trio.current_time() - self._last < self._quiet_s:
            return
        self._line(logging.INFO, self._ended, lasted_s=round(self._last - self._began, 1),
                   counts=dict(self._total), ok=self._ok_total)
        self._began = None
        self._window.clear()
        self._total.clear()
        self._ok_window = self._ok_total = 0

    def _line(self, level: int, event: str, **fields: Any) -> None:
        if self._state is not None:
            fields.update(self._state())
        with for_call("-"):
            self._log.log(level, event, extra=fields)
