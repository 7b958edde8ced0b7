"""The end of the socket a reconnect replaces, as marks in the store (``Sessions.renew``).

A reconnect may land on a third process, which resumes the conversation from the store, so
the process that served the failed socket marks its end behind its last messages
("written"), and at once when its queue is behind or its call still winds down ("closed");
here a renewal reads them, a bounded while, and then whether that socket took the agent's
``end`` (its ``relayEnded`` mark, which the "written" mark follows).
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import trio

import voiceagent.store.records as records
from voiceagent.errors import StoreError
from voiceagent.log_episodes import Episode
from voiceagent.store.base import Item, Store
from voiceagent.store.write_behind import WriteBehind

log = logging.getLogger(__name__)

SOCKET_END_FIRST_WAIT_S = 0.05   # renew reads the old socket's end marks again after pauses
SOCKET_END_LONGEST_WAIT_S = 0.8  # doubling from this to this, until renew's deadline
SOCKET_CLOSED_GRACE_S = 1.5      # no "closed" mark by then: no process is draining its writes
MARK_READ_S = 1.0                # the least time the mark reads get, past renew's deadline


class AgentEnded(Exception):
    """The agent had ended the call (``end`` taken) before its relay session failed: the
    answer is that end's (its ``handoff_data``: a handoff, or a goodbye), never a reconnect.
    The ``end`` may have been lost on its way to Twilio; resuming would reopen a
    conversation the agent closed, or let a replayed request mint a session token."""

    def __init__(self, handoff_data: str) -> None:
        super().__init__("the agent ended the call before its relay session failed")
        self.handoff_data = handoff_data


class SocketMarks:
    """A process's renewals reading the old socket's end marks (``previous_socket_ended``),
    and its log of the reconnects resumed with that socket's writes still queued here. Under
    a mass failure (a task dying with hundreds of calls) with the store stalled, every call's
    ``/action`` can find its writes queued: the first is logged in full, the rest counted."""

    def __init__(self, store: Store, writer: WriteBehind) -> None:
        self._store = store
        self._writer = writer
        self._queued_here = Episode(
            log, lasts="reconnects still resumed with their calls' writes queued here",
            ended="reconnects no longer find their calls' writes queued here",
            state=lambda: _backlog(writer))

    async def previous_socket_ended(self, session: records.CallSession, deadline: float,
                                    marks_by: float = math.inf) -> bool | None:
        """Wait for the socket that a reconnect replaces to have written everything. That socket may
        have been served by another process, whose queue can be seconds behind under load, and the
        new socket may reach a third process, which reads the conversation from the store. Once the
        old socket's "written" mark is there (it is queued behind its messages, its claim included),
        the resumed history misses nothing, and the old claim (token "") cannot land after the
        renewal and lock the reconnect out. Its "closed" mark, written at once when that process's
        queue is ``sessions.QUEUE_BEHIND_S`` or more behind (or its call still winds down that long
        after the socket closed), says it is alive and draining: then the wait goes on up to the
        deadline (FLUSH_TIMEOUT_S), as long as that process waits for its own writes. With neither
        after SOCKET_CLOSED_GRACE_S, the process died (its queue with it) or has not seen its socket
        close: nothing more will come. (A queue less behind than that lands the "written" mark
        within the grace; so the usual call end costs no write of its own.) A store that fails the
        reads: the reconnect goes on too.

        Not waited for when ``session`` (as ``/action`` read it from the store) still has a token
        and no "closed" mark is there: as far as the store knows no socket claimed it (refused, or
        never came), and no mark will ever come for it, at any of Twilio's reconnects. (With a
        "closed" mark, a socket did claim it and failed before its claim landed: that claim is on
        its way, and is waited for.) None then, not True: a claim may be on its way still, with its
        "closed" mark about to land, and the resumed history may miss what that socket said
        (``reconnect_outcomes`` looks again, for the count). Nor with the marks still queued here:
        this process's own flush of them (``/action``'s, then ``renew``'s) has already waited for
        them, to the deadline. Nor once the stored claim's own "refused" mark is there (its
        nonce's: the process whose socket it was gave up on the claim, which landed after all, and
        refused the socket): True, that socket wrote nothing;
        unless a "closed" mark says a socket of the generation was served all the same (on its
        process's word, its own claim queued and lost), whose marks are waited for.

        False when it stopped waiting without the "written" mark (the resumed history may miss the
        old socket's last messages), or when those are still queued here. ``AgentEnded`` when the
        marks read show that the old socket took the agent's ``end``: ``/action``'s first look may
        have come before that mark landed (queued on the process that served the socket, or taken
        while the renewal waited for the socket here)."""
        call_sid, generation = session.call_sid, session.generation
        if self._writer.queued(call_sid):
            # the store is behind this process: its own queue may hold the agent's end
            refuse_after_agent_end(self._writer.queued_item(call_sid, records.RELAY_ENDED_SK))
            backlog = self._writer.statistics()
            self._queued_here.note(
                "queued", "reconnecting before the previous socket's last writes reached the "
                "store (still queued here: /action's flush of them timed out): the resumed "
                "conversation may miss what was said last, so the caller may hear the agent "
                "ask or say it again; counted resumed_partial", pending=backlog.pending,
                oldest_pending_s=round(backlog.oldest_pending_age_s, 1))
            return False
        self._queued_here.succeeded()
        written = records.socket_mark_sk(records.SOCKET_WRITTEN_PREFIX, generation)
        closed = records.socket_mark_sk(records.SOCKET_CLOSED_PREFIX, generation)
        # the claim stored: its socket's "refused" mark (an earlier release's claim: none)
        refused = (records.socket_refused_sk(generation, session.claim)
                   if session.claim and not session.token else None)
        # a store slow to answer must not stretch the webhook either; one read fits, unless
        # the reads before took the time the answer has (``marks_by``: ``action_reads``)
        with trio.move_on_at(min(max(deadline, trio.current_time() + MARK_READ_S), marks_by)):
            try:
                complete = await _read_socket_marks(self._store, call_sid, session.token,
                                                    _Marks(written, closed, refused), deadline)
                refuse_after_agent_end(await self._store.get(call_sid, records.RELAY_ENDED_SK))
                return complete
            except StoreError as err:       # a reconnect with what is stored beats none
                log.warning("the previous socket's end marks unreadable: reconnecting with "
                            "the history stored", extra={"error": str(err)})
                return False
        log.warning("the store did not answer for the previous socket's end marks in time: "
                    "reconnecting with the history stored")
        return False


    def close(self) -> None:
        """At shutdown: the storm's count since its last line (``Episode.close``); only a
        renewal ends the episode otherwise, and a process stopping mid-storm said nothing of
        the reconnects it counted."""
        self._queued_here.close()


def _backlog(writer: WriteBehind) -> dict[str, float]:
    stats = writer.statistics()
    return {"pending": stats.pending, "oldest_pending_s": round(stats.oldest_pending_age_s, 1)}


class _Marks(NamedTuple):
    """The sks of the marks a renewal reads; ``refused``: None unless the claim stored has
    a nonce (``records.socket_refused_item``)."""

    written: str
    closed: str
    refused: str | None


async def _read_socket_marks(store: Store, call_sid: str, token: str, marks: _Marks,
                             deadline: float) -> bool | None:
    closed_seen, refused = False, marks.refused
    if token:
        if await store.get(call_sid, marks.closed) is None:
            return None                 # no socket claimed it, as far as the store knows
        closed_seen = True
    waited = 0.0
    for pause in (*_pauses(deadline - trio.current_time()), None):
        if await store.get(call_sid, marks.written) is not None:
            if waited:
                log.info("the previous socket's messages found in the store after waiting",
                         extra={"waited_ms": round(waited * 1000)})
            return True
        if refused is not None and await store.get(call_sid, refused) is not None:
            refused = None
            closed_seen = closed_seen or await store.get(call_sid, marks.closed) is not None
            if not closed_seen:
                log.info("the previous socket was refused, its claim given up before it "
                         "landed: no messages of it to wait for",
                         extra={"waited_ms": round(waited * 1000)})
                return True
        if not closed_seen and waited >= SOCKET_CLOSED_GRACE_S:
            closed_seen = await store.get(call_sid, marks.closed) is not None
            if not closed_seen:
                log.warning("no process reported the previous socket's end (it may have "
                            "died with its queue): reconnecting with the history stored",
                            extra={"waited_ms": round(waited * 1000)})
                return False
        if pause is None:
            break
        await trio.sleep(pause)
        waited += pause
    log.warning("the previous socket's last messages are not all in the store yet: "
                "reconnecting with the history stored",
                extra={"waited_ms": round(waited * 1000)})
    return False


def refuse_after_agent_end(item: Item | None) -> None:
    """``AgentEnded`` when ``item`` (the call's ``relayEnded`` mark) says the agent sent `end`."""
    handoff_data = item.get(records.AGENT_END_ATTRIBUTE) if item is not None else None
    if isinstance(handoff_data, str):
        raise AgentEnded(handoff_data)


def _pauses(budget_s: float) -> list[float]:
    """Doubling pauses from SOCKET_END_FIRST_WAIT_S, none longer than
    SOCKET_END_LONGEST_WAIT_S, summing to ``budget_s``."""
    pauses: list[float] = []
    pause, left = SOCKET_END_FIRST_WAIT_S, budget_s
    while left > 1e-9:
        pauses.append(min(pause, left))
        left -= pauses[-1]
        pause = min(pause * 2, SOCKET_END_LONGEST_WAIT_S)
    return pauses
