"""Which failed relay sessions ``/action`` has answered, so a replayed one mints nothing.

Twilio asks ``/action`` once per relay session (each has its own SessionId), and its signature
carries no time: a signed request captured from a log, a proxy or a debugging tool verifies
just as well when replayed, and a reconnect's answer hands whoever sent it a session token
that opens the call with its history. So a failed session is answered once, across
processes (``relayAnswered::<SessionId>``), and none is renewed once the call's relay has
ended (``relayEnded``: the caller hung up, or ``/action`` answered anything but a
reconnect).
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import time
from collections import deque
from functools import partial

import trio

import voiceagent.store.records as records
from voiceagent.app import action_reads
from voiceagent.app.session_claims import SESSION_WRITE_S
from voiceagent.app.session_offers import PENDING_TTL_S
from voiceagent.app.socket_marks import refuse_after_agent_end
from voiceagent.errors import StoreError
from voiceagent.settings import Settings
from voiceagent.store.base import Store
from voiceagent.store.write_behind import WriteBehind

log = logging.getLogger(__name__)

SESSION_ID = re.compile(r"^[A-Za-z0-9]{1,64}$")      # Twilio's are VX + 32 hex digits


class ActionReplayed(Exception):
    """A failed relay session's ``/action`` answered before, or one that came after the
    call's relay ended: a replayed request, since Twilio asks once per relay session."""


class RelayAnswers:
    def __init__(self, *, settings: Settings, store: Store, writer: WriteBehind) -> None:
        self._settings = settings
        self._store = store
        self._writer = writer
        # Failed relay sessions answered here in the last PENDING_TTL_S: the SessionIds by
        # CallSid, and (when, CallSid, SessionId) oldest first, so that each /action drops
        # what expired from the front and looks its call up, whatever the number kept (after
        # a mass reconnect, 1000 calls' answers were scanned twice by every /action)
        self._answered: dict[str, set[str]] = {}
        self._answered_order: deque[tuple[float, str, str]] = deque()

    async def answer_failure(self, call_sid: str, session_id: str, generation: int, *,
                             read_by: float = math.inf) -> int:
        """Claim the one answer a failed relay session's ``/action`` gets: claimed in the
        store with a conditional write, which one process wins, before the answer, and
        here, for a replay racing that write; none once the call's relay has ended
        (``relay_ended``). ``AgentEnded`` when the agent ended it, ``ActionReplayed`` otherwise,
        ``ValueError`` for a SessionId that is not one, ``StoreError`` when the marks cannot
        be read, or not by trio time ``read_by`` (``action_reads``). A store that cannot
        take the claim in SESSION_WRITE_S gets it queued, and the reconnect goes on: a
        caller hung up on during a store incident is the surer harm than a replay racing
        Twilio's own request to the millisecond.

        Returns how many reconnects the call has had: the stored session's ``generation``,
        or, when more, the failed sessions answered before this one (the store's marks and
        this process's own). A renewal waits in its process's queue behind the call's
        writes (a backed-up queue, a slow store) while the answer's mark goes straight in:
        counted by the generation alone, each failure of a reconnect whose token never
        landed was given another, past MAX_RECONNECTS, the caller kept in the loop."""
        if not SESSION_ID.match(session_id):
            raise ValueError(f"SessionId {session_id[:70]!r} is not a relay session's id")
        self._forget_stale()
        answered_here = self._answered.setdefault(call_sid, set())
        if session_id in answered_here:
            raise ActionReplayed("this relay session's end was answered before")
        answered_here.add(session_id)
        self._answered_order.append((trio.current_time(), call_sid, session_id))
        answered = records.RELAY_ANSWERED_PREFIX + session_id
        marks = {item["sk"]: item for item in await action_reads.read_by(
            read_by, "relay marks", partial(self._store.query, call_sid, records.RELAY_PREFIX))}
        if records.RELAY_ENDED_SK in marks:
            refuse_after_agent_end(marks[records.RELAY_ENDED_SK])
            raise ActionReplayed("the call's relay has ended")
        if answered in marks:
            raise ActionReplayed("this relay session's end was answered before")
        earlier = len({sk for sk in marks if sk.startswith(records.RELAY_ANSWERED_PREFIX)} | {
            records.RELAY_ANSWERED_PREFIX + sid for sid in self._answered.get(call_sid, ())
            if sid != session_id})
        mark = {**records.relay_mark_item(call_sid, answered, time.time(),
                                          self._settings.session_ttl_s),
                "claim": secrets.token_urlsafe(12)}    # ours alone: see Store.put_new
        try:
            with trio.fail_after(SESSION_WRITE_S):
                claimed = await self._store.put_new(mark)
        except (StoreError, trio.TooSlowError) as err:
            log.warning("the relay session's answer could not be claimed in the store: "
                        "answering, its mark queued", extra={"error": str(err)[:300]})
            self._writer.submit(mark, call_sid=call_sid, urgent=True)
            return max(generation, earlier)
        if not claimed:
            raise ActionReplayed("this relay session's end was answered by another process")
        return max(generation, earlier)

    def _forget_stale(self) -> None:
        """Drop the answers given over PENDING_TTL_S ago, from the front (they are kept in
        the order given): each call costs what it drops."""
        cutoff = trio.current_time() - PENDING_TTL_S
        while self._answered_order and self._answered_order[0][0] < cutoff:
            _, call_sid, session_id = self._answered_order.popleft()
            answered_here = self._answered[call_sid]
            answered_here.discard(session_id)
            if not answered_here:
                del self._answered[call_sid]

    def relay_ended(self, call_sid: str) -> None:
        """The call's relay is over for good (the caller hung up, or ``/action`` answered
        with anything but a reconnect): no replayed ``/action`` renews it after this."""
        self._writer.submit(records.relay_mark_item(call_sid, records.RELAY_ENDED_SK,
                                                    time.time(), self._settings.session_ttl_s),
                            call_sid=call_sid, urgent=True)

    def agent_ended(self, call_sid: str, handoff_data: str | None) -> None:
        """The call's socket took ``end`` (a tool's handoff or goodbye, an idle or too-long
        call, a draining server): its relay is over, and a failed session's ``/action``
        gets that end's answer (``AgentEnded``). Queued at once, ahead of the socket's
        close, so that ``/action``'s flush of the call's writes finds it."""
        self._writer.submit(records.relay_mark_item(
            call_sid, records.RELAY_ENDED_SK, time.time(), self._settings.session_ttl_s,
            handoff_data=handoff_data or ""), call_sid=call_sid, urgent=True)
