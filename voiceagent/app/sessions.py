"""A call's session: prepared during ``/twiml`` while the phone rings, claimed by its socket.

``/twiml`` picks the use case, renders the prompt, mints a token that goes to Twilio in a
``<Parameter>`` and comes back in ``setup``, and writes the session item before it answers
(``_offer``). The socket finds the session in this process's memory (``session_offers``: no
store round trip), else in the store (the webhook landed on another process), where it may
not have landed yet: see ``spent_tokens.minted_elsewhere``.

Why a token at all: Twilio's signature on the WebSocket upgrade covers only the URL, which
is the same for every call, so a captured signed upgrade could otherwise open any call with
any ``from`` and ``to``. So a socket is served only with a session that a signed request
minted, and each token is used once:

* a CallSid nobody prepared, a token that does not match, and an empty token are refused;
* claiming consumes the token, so the token of a call that ended, or of a socket that
  went away, opens nothing; and a token opens a socket only within PENDING_TTL_S of its
  mint, so one whose claim was lost with its process does not open it later
  (``spent_tokens``);
* while a socket holds the call, a second one for the same CallSid is refused, and a
  replayed ``/twiml`` for a CallSid already seen mints nothing (it would take the call over,
  or, once the call is over, open a new one with the caller's profile in its prompt): the
  session item says so while it lives, and a ``connectionSeen`` item with nothing of the
  caller in it for CALL_SEEN_TTL_S after that (Twilio's signature carries no time: a
  captured request verifies until the auth token is rotated);
* Twilio's reconnect after a failed relay session gets a fresh token through the signed
  ``/action`` callback (``renew``), once the old socket is gone; once per relay session,
  and never after the call's relay ended (``relay_answers.RelayAnswers``), so a captured
  ``/action`` replayed later cannot reopen the call and read its history.

Across processes the store decides each of these (``session_claims``): the mint, the claim
and the renewal are conditional writes on the session's version, so one process wins each,
whichever process answered what; this process's memory only decides among its own sockets
(``spent_tokens``), and when the store cannot answer in time (what then: ``session_claims``).

A reconnect may land on a third process, which resumes the conversation from the store. So
the old socket's end is marked in the store behind its last messages (``socket_ended``), and
``renew`` waits for that mark (``socket_marks``) before it mints the new token.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import NamedTuple

import trio

import voiceagent.store.records as records
from actors.call import CallPlan, CallRejected
from actors.messages import Setup
from voiceagent.app.action_reads import ANSWER_S
from voiceagent.app.saved_history import SavedHistory, saved_history
from voiceagent.app.session_claims import SESSION_WRITE_S, SessionClaims
from voiceagent.app.session_offers import SessionOffers
from voiceagent.app.socket_marks import SOCKET_CLOSED_GRACE_S, SocketMarks
from voiceagent.app.spent_tokens import SpentTokens, matches, minted_elsewhere
from voiceagent.catalog import Catalog
from voiceagent.errors import StoreError
from voiceagent.llm import scripted
from voiceagent.logs import call_sid_var, mask_phone
from voiceagent.settings import Settings
from voiceagent.store.base import Store
from voiceagent.store.write_behind import WriteBehind
from voiceagent.usecases import render_prompt

log = logging.getLogger(__name__)

TOKEN_PARAMETER = "sessionToken"
# A session minted by another process may still be queued there (its store stalled, or a
# renewal waits behind the call's writes): read the store again after each of these pauses
# (~3.5 s in all, slow reads included) before refusing. Its /twiml gives up on a slow write
# after SESSION_WRITE_S and queues it, and the queue's write takes as long again: at ~1.5 s,
# writes of 3 s refused the socket just before its session landed.
MINTED_ELSEWHERE_WAITS_S = (0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0)
# /twiml's reads (whether the CallSid was answered before, the caller's profile, the use
# case) end by this, which leaves the session's write its SESSION_WRITE_S before the answer
# is due (``action_reads.ANSWER_S``). A DynamoDB read may take two tries of its 4 s read
# timeout: with the store stalled, the reads alone ran past Twilio's 15 s.
PREPARE_READS_S = ANSWER_S - SESSION_WRITE_S
# A socket that keeps failing must not keep the caller in a loop: at most this many fresh
# relay sessions per call, counted in its session item (its generation), so across processes.
MAX_RECONNECTS = 3
CALL_SEEN_TTL_S = 400 * 24 * 3600    # a replayed /twiml refused this long (rotate the token)
# The "closed" mark is written (one store write ahead of the queue) only when the queue is
# this far behind, that is, when the "written" mark may not land within the grace above; or
# when a call is still winding down this long after its socket closed (a side-effect tool
# finishing), for the same reason.
QUEUE_BEHIND_S = 0.5


class Renewal(NamedTuple):
    session: records.CallSession      # the fresh token for the reconnect
    history_complete: bool | None     # False: the failed socket's last messages may be
    #                                   missing; None: no claim of it stored (socket_marks)


class SessionExists(Exception):
    """A ``/twiml`` for a CallSid this service has already prepared: a replay, or a retry."""


class SessionBusy(Exception):
    """A fresh token was asked for a call whose socket is still connected here."""


class SessionRenewed(Exception):
    """Another renewal of the call's session from the same generation was stored first: a
    replayed ``/action`` racing Twilio's, or this one read a generation already renewed."""


class Sessions:
    def __init__(self, *, settings: Settings, store: Store, catalog: Catalog,
                 writer: WriteBehind) -> None:
        self._settings = settings
        self._store = store
        self._catalog = catalog
        self._writer = writer
        self._claims = SessionClaims(writer=writer, ttl_s=settings.session_ttl_s)
        self._marks = SocketMarks(store, writer)
        self._offers = SessionOffers()          # minted here, their sockets not come yet
        self._live: dict[str, int] = {}         # CallSids with a socket here: its generation
        self._spent = SpentTokens()             # claimed while other sockets looked them up
        self._gone: dict[str, trio.Event] = {}  # set when that socket ends (a renewal waits)
        self._closing: dict[str, trio.Event] = {}   # set when it closed, its call winding down
        # sockets closed here lately, oldest first: when to look again, CallSid, generation
        self._wind_downs: deque[tuple[float, str, int]] = deque()
        self._wind_down_added = trio.Event()

    async def prepare(self, form: Mapping[str, str]) -> records.CallSession:
        """Build the session for Twilio's call webhook (form fields CallSid, From, To).
        Raises ``SessionExists`` for a CallSid already prepared, here or in the store;
        ``StoreError`` when the store cannot tell, or not by PREPARE_READS_S."""
        call_sid, caller, called = form["CallSid"], form.get("From", ""), form.get("To", "")
        self._offers.forget_stale()
        with trio.move_on_after(PREPARE_READS_S) as reads:      # a read is abandoned
            if (call_sid in self._offers or call_sid in self._live
                    or await self._seen(call_sid)):
                raise SessionExists(call_sid)
            session = await self._build(call_sid, caller, called,
                                        token=secrets.token_urlsafe(18))
        if reads.cancelled_caught:
            raise StoreError(f"the store did not answer the call's reads within "
                             f"{PREPARE_READS_S:g} s (Twilio gives up on /twiml at 15 s)")
        if call_sid in self._offers or call_sid in self._live:      # raced while building
            raise SessionExists(call_sid)
        if not await self._offer(session, resumes=False):   # another process's answer stands
            raise SessionExists(call_sid)
        self._writer.submit(records.call_seen_item(call_sid, session.created_at, max(
            CALL_SEEN_TTL_S, self._settings.session_ttl_s)), call_sid=call_sid)
        log.info("session prepared", extra={"use_case": session.use_case,
                                            "caller": mask_phone(caller),
                                            "known_caller": session.profile is not None})
        return session

    async def _seen(self, call_sid: str) -> bool:
        """Whether a ``/twiml`` for ``call_sid`` was answered before, by any process: its
        session item, or (that one expired) its ``connectionSeen`` item; one read finds
        both, their keys sharing the prefix."""
        return bool(await self._store.query(call_sid, records.SESSION_SK, limit=1))

    async def renew(self, session: records.CallSession, *, deadline: float | None = None,
                    marks_by: float = math.inf) -> Renewal:
        """A fresh token for Twilio's reconnect of ``session``'s call, after its relay
        session failed (the signed ``/action`` callback asks). ``SessionBusy`` while a socket
        still holds the call here, SOCKET_CLOSED_GRACE_S after the ask. Every wait for the
        old socket ends by ``deadline`` (trio time; default FLUSH_TIMEOUT_S from now), then
        the renewal is written (SESSION_WRITE_S at most): Twilio gives up on a webhook after
        15 s, and a mass failure (a task dying with hundreds of calls) backs the store up.
        The old socket's end marks are read by ``marks_by`` at the latest (``action_reads``).
        A socket here that has closed but whose call still winds down (a side-effect tool
        finishing) is waited for up to the deadline. ``AgentEnded`` (``socket_marks``) when,
        its writes in, the old socket turns out to have taken the agent's ``end``;
        ``SessionRenewed`` when the store already holds a renewal of this generation."""
        if deadline is None:
            deadline = trio.current_time() + self._settings.flush_timeout_s
        if session.call_sid in self._live:
            await self._socket_here_ended(session.call_sid, deadline)
            session = replace(session, token="")    # claimed here, whatever the item said
        # the call's last writes, queued here: ``/action`` flushed them for a share of the
        # deadline only (``web.RECONNECT_FLUSH_S``), so a slow store leaves time for the
        # reads; bounded by the deadline, not timed out by itself (the time went to the
        # wind-down or the reads). What the reconnect misses is said by
        # ``previous_socket_ended`` next: the writes are still queued here.
        await self._writer.flush(session.call_sid, timeout_s=math.inf, until=deadline)
        complete = await self._marks.previous_socket_ended(session, deadline, marks_by)
        renewed = replace(session, token=secrets.token_urlsafe(18),
                          generation=session.generation + 1, claim="", minted_at=time.time())
        if not await self._offer(renewed, resumes=True):
            raise SessionRenewed(session.call_sid)
        log.info("session token renewed for a reconnect")
        return Renewal(renewed, complete)

    async def _offer(self, session: records.CallSession, *, resumes: bool) -> bool:
        """Wait for the socket here, and in the store for a sibling process. The item is
        written before the webhook answers, ahead of the write-behind queue: behind it, with
        two processes at 1000 calls, the socket reached the other process first for ~30 % of
        calls, the backlog being seconds long. It is written on condition, the store
        deciding (``session_claims``): False when another session of its generation, or a
        later one, is there. A slow or failing store leaves it to the queue after
        ``SESSION_WRITE_S``: True then, and the socket here is served."""
        self._offers.add(session, resumes=resumes)
        if await self._claims.offer(session) is not False:
            return True
        self._offers.withdraw(session)
        return False

    async def resolve(self, setup: Setup, *,
                      on_retry: Callable[[], None] | None = None,
                      on_match: Callable[[], None] | None = None) -> CallPlan:
        """The plan for a socket that sent ``setup``, which claims the call (see the module
        docstring); ``CallRejected`` for anything but the one unused token of a known call.
        The caller must ``release`` the call when its socket ends. ``on_retry``: called once
        if the call was not in the store at the first read and is looked up again;
        ``on_match``: once its token is found to be the session's, unspent (before the
        saved history and the claim: task protection counts it from there)."""
        with self._spent.looking_up(setup.call_sid):
            return await self._resolve(setup, on_retry, on_match)

    async def _resolve(self, setup: Setup, on_retry: Callable[[], None] | None,
                       on_match: Callable[[], None] | None) -> CallPlan:
        call_sid = setup.call_sid
        token = setup.custom_parameters.get(TOKEN_PARAMETER, "")
        if not token:
            raise CallRejected("no session token in setup")
        if call_sid in self._live:
            raise CallRejected("a socket is already connected for this call")
        offer = self._offers.get(call_sid)
        if offer is not None and matches(offer.session, token):
            session, resumes = offer.session, offer.resumes
        else:
            # Not minted here, or minted here and renewed since by another process: the call's
            # first socket went elsewhere, failed, and the reconnect's socket came back here
            # (a stale offer refused it at once before)
            session = await self._minted_elsewhere(call_sid, token, on_retry)
            resumes = True
        if not matches(session, token):
            # a wrong token consumes nothing: the right socket may still come
            raise CallRejected("session token does not match the call's signed request")
        if on_match is not None:
            on_match()
        saved = (saved_history(await self._store.query(call_sid, records.CHAT_PREFIX))
                 if resumes else SavedHistory((), (), 0, 0))
        use_case = await self._catalog.use_case(session.use_case)
        if call_sid in self._live:                  # another socket won while we waited
            raise CallRejected("a socket is already connected for this call")
        minted_here = offer is not None and offer.session is session
        if not (self._spent.spend(call_sid, session.generation)     # ...and is gone
                and await self._claims.claim(session, in_memory=minted_here)):
            if minted_here:                 # claimed on another process: gone here too
                self._offers.discard(call_sid)
            raise CallRejected("this call's session token was used already")
        self._offers.discard(call_sid)
        self._live[call_sid] = session.generation
        if saved.set_aside_at:          # ahead of everything this socket writes: see records
            self._writer.submit(records.set_aside_item(call_sid, saved.set_aside_at,
                                                       self._settings.session_ttl_s),
                                call_sid=call_sid)
        return CallPlan(call_sid=session.call_sid, use_case=use_case,
                        system_prompt=session.system_prompt, model_id=session.model_id,
                        # a renewal's TwiML plays no greeting: none is recorded as said
                        greeting=None if saved.messages or session.generation
                        else session.greeting, caller=session.caller, called=session.called,
                        history=saved.messages, history_meta=saved.meta,
                        history_after_ms=saved.after_ms, generation=session.generation,
                        started_at=session.created_at)

    async def _minted_elsewhere(self, call_sid: str, token: str,
                                on_retry: Callable[[], None] | None = None
                                ) -> records.CallSession:
        return await minted_elsewhere(self._store, self._writer, call_sid, token,
                                      waits_s=MINTED_ELSEWHERE_WAITS_S, on_retry=on_retry)

    async def socket_ended(self, call_sid: str) -> None:
        """``call_sid``'s socket here has ended and handed its last messages to the
        write-behind queue (call it after them): the call may be renewed now, and its end is
        marked in the store behind those messages, and also at once when the queue is behind
        (see ``socket_marks.previous_socket_ended``, which reads both marks)."""
        generation = self._live.get(call_sid)
        if generation is None:
            return
        now, ttl_s = time.time(), self._settings.session_ttl_s
        self._writer.submit(records.socket_mark_item(records.SOCKET_WRITTEN_PREFIX, call_sid,
                                                     generation, now, ttl_s),
                            call_sid=call_sid, urgent=True, fence=True)
        self._socket_gone(call_sid)     # a renewal waiting here goes on: its flush has the mark
        if self._writer.statistics().oldest_pending_age_s < QUEUE_BEHIND_S:
            return      # "written" lands well within a reconnect's grace: no write of its own
        await self._write_closed_mark(call_sid, generation, now)

    def socket_closed(self, call_sid: str) -> None:
        """The socket that claimed ``call_sid`` here has closed; its call may take a while
        longer to wind down (a side-effect tool runs to its end, up to its timeout), and a
        reconnect waits for that rather than hang up on the caller: here through
        ``_closing``, on another process through the "closed" mark, which ``run`` writes
        for a call still winding down QUEUE_BEHIND_S after its socket closed."""
        generation = self._live.get(call_sid)
        if generation is None:
            return
        self._closing.setdefault(call_sid, trio.Event()).set()
        self._wind_downs.append((trio.current_time() + QUEUE_BEHIND_S, call_sid, generation))
        self._wind_down_added.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Marks the sockets whose calls outlive their close (see ``socket_closed``): without
        the mark, a reconnect answered by another process took the silence for a dead
        process after SOCKET_CLOSED_GRACE_S and resumed the call without the tool's result,
        which the history repair then calls an error (the order placed, the caller told it
        failed). One task for every call; each mark is written in a task of its own. And
        forgets the offers whose socket never came (``SessionOffers.expire``)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._offers.expire)
            task_status.started()
            while True:
                if not self._wind_downs:
                    self._wind_down_added = trio.Event()
                    await self._wind_down_added.wait()
                    continue
                due, call_sid, generation = self._wind_downs[0]
                await trio.sleep_until(due)
                self._wind_downs.popleft()
                if self._live.get(call_sid) == generation:
                    nursery.start_soon(self._mark_closed, call_sid, generation)

    def close(self) -> None:
        """At shutdown: the last lines of the episodes its parts log (``Episode.close``)."""
        self._marks.close()
        self._claims.close()

    async def _mark_closed(self, call_sid: str, generation: int) -> None:
        call_sid_var.set(call_sid)
        log.info("call still winding down after its socket closed: marking the socket's end")
        try:
            await self._write_closed_mark(call_sid, generation, time.time())
        except Exception:           # a bug here costs one reconnect's wait, not the process
            log.exception("marking a closed socket failed")

    async def _write_closed_mark(self, call_sid: str, generation: int, at: float) -> None:
        """The "closed" mark, ahead of the queue: its key is the socket's alone."""
        await self._writer.write_now(
            records.socket_mark_item(records.SOCKET_CLOSED_PREFIX, call_sid, generation, at,
                                     self._settings.session_ttl_s),
            call_sid=call_sid, timeout_s=SESSION_WRITE_S, ordered=False)

    async def _socket_here_ended(self, call_sid: str, deadline: float) -> None:
        """Twilio asks for the reconnect the moment the relay session failed, and this
        process's call may not have seen its socket end yet (its reader has to notice the
        close, its actors to wind down). Wait for the socket to close a bounded while
        (``SessionBusy`` after it: as far as this process knows, it is connected), then for
        the call to wind down, up to the deadline (a side-effect tool finishing; refused
        after the grace, a reconnect during a 3 s order placement hung up on the caller);
        ``renew`` then waits for the socket's last writes: the new socket resumes the call
        from the store."""
        ended = self._gone.setdefault(call_sid, trio.Event())
        closing = self._closing.setdefault(call_sid, trio.Event())
        with trio.move_on_at(min(trio.current_time() + SOCKET_CLOSED_GRACE_S, deadline)):
            await closing.wait()
        if closing.is_set():
            with trio.move_on_at(deadline):
                await ended.wait()
        if call_sid in self._live:
            raise SessionBusy(call_sid)

    def _socket_gone(self, call_sid: str) -> int | None:
        """The socket of ``call_sid`` here has ended: its generation, if it had claimed."""
        for events in (self._closing, self._gone):
            event = events.pop(call_sid, None)
            if event is not None:
                event.set()
        return self._live.pop(call_sid, None)

    def release(self, call_sid: str, generation: int | None = None) -> None:
        """The socket that claimed ``call_sid`` (its plan's ``generation``; None: whichever)
        has ended, its writes flushed or given up on. ``socket_ended`` has usually said so
        already, and a reconnect may have claimed the call since (the flush outlasted the
        renewal: a slow store): that claim is not this socket's to let go."""
        if generation is None or self._live.get(call_sid) == generation:
            self._socket_gone(call_sid)

    async def _build(self, call_sid: str, caller: str, called: str, *,
                     token: str) -> records.CallSession:
        profile = await self._catalog.profile(caller)
        name = (profile.use_case if profile and profile.use_case
                else self._settings.stack_use_case)
        use_case = await self._catalog.use_case(name)
        now = time.time()
        prompt = render_prompt(use_case, profile, dt.datetime.fromtimestamp(now, dt.UTC),
                               self._settings.time_zone)
        return records.CallSession(
            call_sid=call_sid, token=token, use_case=use_case.name, system_prompt=prompt,
            # the model that answers, as `calls show` tells it
            model_id=(scripted.MODEL_ID if self._settings.llm == "scripted"
                      else use_case.model or self._settings.model_identifier),
            caller=caller, called=called, profile=profile, greeting=use_case.welcome_greeting,
            created_at=now, minted_at=now)
