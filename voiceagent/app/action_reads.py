"""When a reconnect's store reads in ``/action`` must end, so that the answer reaches Twilio
before it gives up on the webhook (15 s) and plays the caller its application error.

A reconnect reads the call's session, its use case (when this process's copy is over
``USE_CASE_TTL_S`` old: any call longer than a minute) and the failed relay session's
marks, then writes the answer's mark and the renewal (SESSION_WRITE_S each at most) with,
between them, a read of the old socket's end marks (``socket_marks``). The reads were
bounded by the store client alone: a DynamoDB get by its connect and read timeouts (2 + 4 s,
again on a fresh connection when a kept one turns out dead) and a wait for a request slot, a
query by botocore's two attempts in a thread (~13 s), a SQLite read by its lock, held by
writes that each wait up to the busy timeout. With the store stalled, ``/action`` answered
after Twilio had given up, or never; with each read at 3.5 s and the use case's copy
expired, at 17 s. Now each ends by ``ReconnectTimes.reads`` and the end marks' read by
``marks``: a read answered in time serves as before; one that is not is cancelled (a worker
thread's abandoned: it keeps its limiter slot until it ends, so nothing leaks, nor does its
connection) and the reconnect turns into the apology, counted ``refused_unavailable`` as
with the store down, or into the use case as this process last read it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import trio

from voiceagent.app.session_claims import SESSION_WRITE_S
from voiceagent.catalog import UnknownUseCase
from voiceagent.errors import StoreError
from voiceagent.usecases import UseCase

if TYPE_CHECKING:           # the runtime holds the relay answers, which read through here
    from voiceagent.app.runtime import Runtime

log = logging.getLogger(__name__)

T = TypeVar("T")

TWILIO_GIVES_UP_S = 15.0
# the answer goes out by then: Twilio's 15 s less 1 s for the request's way in and the
# answer's way back
ANSWER_S = 14.0
# after the reads: the answer's mark, the end marks' read, the renewal; the two writes
# SESSION_WRITE_S each (``RelayAnswers.answer_failure``, ``SessionClaims.offer``)
READS_S = ANSWER_S - 2 * SESSION_WRITE_S
MARKS_S = ANSWER_S - SESSION_WRITE_S
# a use case's read when this process holds a copy (over USE_CASE_TTL_S old) to go on with:
# no longer than a handoff's read (``session_end.HANDOFF_READ_S``), not the reads' whole
# time, which the relay marks' read after it needs
HELD_READ_S = 2.0


@dataclass(frozen=True)
class ReconnectTimes:
    """Trio times, from when ``/action`` took the request: ``waits`` for the call's writes and
    its socket (the old ``deadline``), ``reads`` for the session, use case and answer reads,
    ``marks`` for ``renew``'s read of the old socket's end marks."""

    waits: float
    reads: float
    marks: float

    @classmethod
    def from_now(cls, waits_s: float) -> ReconnectTimes:
        now = trio.current_time()
        return cls(now + waits_s, now + READS_S, now + MARKS_S)


async def read_by(when: float, what: str, read: Callable[[], Awaitable[T]]) -> T:
    """``read()``'s answer, or ``StoreError`` once trio time ``when`` has passed (the read
    cancelled): what a store that is down gets, so the same apology, log line and count."""
    with trio.move_on_at(when):
        return await read()
    raise StoreError(f"the store did not answer the {what} read in time (a reconnect's reads "
                     f"end {READS_S:g} s after Twilio's request, which gives up at "
                     f"{TWILIO_GIVES_UP_S:g} s)")


async def reconnect_use_case(runtime: Runtime, name: str, when: float) -> UseCase | None:
    """The use case a reconnect resumes with: the catalog's, read by ``when`` (within
    HELD_READ_S when this process holds a copy), else as this process last read it (the
    catalog's own answer to a store that is down). None: missing
    or unusable (logged). ``StoreError``: none could be had (the caller hears the apology)."""
    if runtime.catalog.held(name) is not None:      # a copy to go on with: read it briefly
        when = min(when, trio.current_time() + HELD_READ_S)
    try:
        return await read_by(when, "use case", lambda: runtime.catalog.use_case(name))
    except UnknownUseCase as err:
        log.error("use case missing or unusable", extra={"error": str(err)[:500]})
        return None
    except StoreError as err:
        held = runtime.catalog.held(name)
        if held is None:         # its cache ran out and the store is throttled or stalled
            log.error("use case unreadable", extra={"error": str(err)[:300]})
            raise
        log.warning("use case unreadable in time: reconnecting with the one this process "
                    "last read", extra={"error": str(err)[:300], "use_case": name})
        return held
