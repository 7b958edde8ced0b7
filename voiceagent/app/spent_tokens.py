"""Which session tokens were spent here while other sockets were still looking theirs up,
and the lookup of a session another process minted (``minted_elsewhere``).

``Sessions.resolve`` awaits between finding a call's session and claiming it (the saved
history, the use case), so two sockets carrying one token can both hold the session. The
claim is refused while a socket is connected for the call, but the first socket may have
claimed and gone by the time the second one re-checks, which then found nothing connected
and was served the same call. So a claim records its session's generation for as long as
any lookup of that call is in flight; a lookup that ends after it is refused. Memory stays
with the calls being looked up: once none is, the spent token is gone from the offers here and
consumed in the store, or queued here to be, which ``newest_session`` prefers to the store.

A claim decided on a process's word (its store not answering in time) is queued there, and
lost if that process stops first (its drain's flush timed out, a crash): the store then
holds the token unspent until the session expires (SESSION_TTL_S, a day), and a replay of
that socket's setup, on any process, was served the call, its prompt and its conversation.
Only that store could have said the token was spent, so instead a token opens a socket only
within PENDING_TTL_S of its mint (``too_late``), as an offer here is held no longer: a lost
claim leaves its token good that long at most. A socket comes within seconds of the signed
request that minted its token (Twilio connects it on the TwiML); processes' clocks agree to
well within that (a task's clock is NTP-synced).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import trio

import voiceagent.store.records as records
from actors.call import CallRejected
from voiceagent.app.session_offers import PENDING_TTL_S
from voiceagent.store.base import Item, Store
from voiceagent.store.write_behind import WriteBehind

log = logging.getLogger(__name__)


class SpentTokens:
    def __init__(self) -> None:
        self._looking: dict[str, int] = {}      # CallSid: its lookups in flight
        self._spent: dict[str, int] = {}        # CallSid: the newest generation claimed

    @contextmanager
    def looking_up(self, call_sid: str) -> Iterator[None]:
        """Around one socket's lookup of ``call_sid``; the last one out forgets the call."""
        self._looking[call_sid] = self._looking.get(call_sid, 0) + 1
        try:
            yield
        finally:
            left = self._looking.pop(call_sid) - 1
            if left:
                self._looking[call_sid] = left
            else:
                self._spent.pop(call_sid, None)

    def spend(self, call_sid: str, generation: int) -> bool:
        """Claim the session ``generation`` of ``call_sid`` (inside ``looking_up``); False,
        and nothing changed, when a lookup in flight beside this one claimed it (or a newer
        one) first."""
        if self._spent.get(call_sid, -1) >= generation:
            return False
        self._spent[call_sid] = generation
        return True


def matches(session: records.CallSession, token: str) -> bool:
    """Whether ``token`` is ``session``'s, unspent (compared in constant time)."""
    return bool(session.token) and secrets.compare_digest(session.token.encode(),
                                                          token.encode())


def too_late(session: records.CallSession) -> str | None:
    """Why ``session``'s token opens no socket any more (see the module docstring), or None.
    A session without its mint's time (written by the release before) is not bounded."""
    age_s = time.time() - session.minted_at
    if not session.minted_at or age_s <= PENDING_TTL_S:
        return None
    return (f"this call's session token was minted {age_s:.0f} s ago, and a token opens "
            f"its socket within {PENDING_TTL_S:g} s (a replayed setup, or a socket that "
            "came too late: Twilio's /action gets the call a fresh token)")


def newest_session(stored: Item | None, queued: Item | None) -> records.CallSession | None:
    """A call's session as this process knows it: the store's, unless this process has a
    write of it still queued that is as new (a claim's, its token spent; the store behind it,
    throttled or backed up, still shows the token, which opened the call again)."""
    session = records.session_from_item(stored) if stored is not None else None
    if queued is None:
        return session
    mine = records.session_from_item(queued)
    return mine if session is None or mine.generation >= session.generation else session


async def minted_elsewhere(store: Store, writer: WriteBehind, call_sid: str, token: str, *,
                           waits_s: Sequence[float],
                           on_retry: Callable[[], None] | None = None) -> records.CallSession:
    """The session of a call whose signed ``/twiml`` (or ``/action``) another process
    answered. That process writes the session before it answers, unless its store
    stalled (then it is queued) or the call has writes queued there (a renewal waits
    behind them), and a balancer may send the socket here straight away. So a missing
    item, or one whose token does not match yet (a renewal), is read again after each
    pause of ``waits_s`` (``sessions.MINTED_ELSEWHERE_WAITS_S``: a CallSid nobody prepared
    costs eight consistent reads and ~3.5 s of its own socket, no more). The pauses bound the
    whole wait, reads included: a store whose reads are slow is read fewer times, rather than
    holding an unauthenticated socket eight slow reads longer. ``on_retry``: called before
    the first pause."""
    started = trio.current_time()
    deadline = started + sum(waits_s)
    retried = False
    for pause in (*waits_s, None):
        session = newest_session(await store.get(call_sid, records.SESSION_SK),
                                 writer.queued_item(call_sid, records.SESSION_SK))
        if session is not None and matches(session, token):
            if (late := too_late(session)) is not None:
                raise CallRejected(late)
            if retried:
                log.info("session found in the store after waiting", extra={
                    "waited_ms": round((trio.current_time() - started) * 1000)})
            return session
        left = deadline - trio.current_time()
        if pause is None or left <= 0:
            break
        if not retried and on_retry is not None:
            on_retry()
        retried = True
        await trio.sleep(min(pause, left))
    waited = trio.current_time() - started
    if session is None:
        raise CallRejected("no call was prepared with this CallSid (none in the store "
                           f"after {waited:.2f} s)")
    return session                      # refused by the caller: the token differs
