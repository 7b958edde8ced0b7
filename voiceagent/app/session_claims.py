"""Which process a call's session belongs to, decided by the store (``Sessions``).

voiceagent runs as several processes (WORKERS per task, tasks behind a balancer), and
Twilio's ``/twiml``, its socket and its ``/action`` can each reach a different one. Decided in
each process's memory and written behind, a session's fate could be decided twice: a token
spent on one process opened the call on another until the "used" write landed; two
processes answering one signed ``/twiml`` at once (a replay racing Twilio's own) each minted
a token, and each token opened a socket; two renewals of one generation each minted the
next. So every write that decides a session is a conditional write that the store decides
(``Store.put_if_newer``: a DynamoDB PutItem with a ConditionExpression, one transaction
holding SQLite's write lock), ordered by the session's version (``records.SESSION_VERSION``):
generation g's mint is 2g, its claim 2g+1, so the next mint (the renewal) is 2g+2. Of two
writes of one version exactly one lands: one mint per call, one socket per generation, one
renewal per generation. A claim item carries a nonce of its own, so that a resent claim
whose first attempt was applied knows it won and another process's identical claim does not.

A write that fails (throttled, its connection reset) is tried again until SESSION_WRITE_S is
up: most sockets reach a process that did not mint their session, and one throttled claim
refused them. Not once the process's writes (its write-behind queue's, or these) have failed
for SESSION_WRITE_S without one answered: that is a store down (refusing connections, failing
every write), not a throttle or a blip, which the next tries get past well within that; each
write then gets one try, not 2 s of them, and the first write answered (the queue's retries,
or one of these) tells that the store is back. (A store refusing connections fails the
reads too, so ``/twiml`` and ``/action`` give up at their reads before any such write: the
2 s fell on sockets of calls minted just before, and on a store whose writes alone fail, such
as SQLite on a full disk or a role that may read but not write.) When the store has not
decided in time, nothing is decided:

* a mint or a renewal is queued (to be written on the same condition) and the webhook
  answers with its token, as before: refusing would hang up on a caller whose store is
  merely slow. Its socket's claim decides: if another token of that generation was minted
  meanwhile, only the first of the two sockets to claim is served;
* a claim of a session minted in this process's memory is served on this process's word,
  its claim queued: as before, a store outage does not stop such a call. Another process
  can only serve the same token if it reads it from the store and the store answers it
  but not us (a replay of the setup, during a partial outage, within those seconds): the
  harm of hanging up on every call whose setup meets a slow store is surer. Should this
  process stop with the claim still queued, the store keeps the token unspent: it opens
  nothing PENDING_TTL_S after its mint all the same (``spent_tokens.too_late``). Each such
  claim is counted (the write-behind's ``undecided``) and logged as an episode;
* a claim of a session read from the store (minted elsewhere) is refused as the store
  being unavailable: only the store vouches for it, and serving it here is the one case
  where two processes would both serve it on their own word. Its claim is not queued, and
  the ``/action`` that Twilio sends for the refused socket renews the call. Refusing is all
  this claim can fall back on, so it waits CLAIM_ELSEWHERE_S rather than SESSION_WRITE_S:
  at 2 s, a store whose writes took 2-3 s refused every socket that reached a process that
  had not minted its session, and their reconnects met the same store (with N processes,
  each served only on the one that renewed it). An attempt cut
  off at CLAIM_ELSEWHERE_S may have been sent, though, and land later: the token is then
  spent for a socket nobody serves, and that ``/action`` waited SOCKET_CLOSED_GRACE_S for
  end marks no socket would write, and counted the reconnect ``resumed_partial``. So the
  refused socket's end is marked (queued: the socket is not held for it) under its claim's
  nonce, ``records.socket_refused_item``: the ``/action`` that finds the stored claim
  carrying that nonce knows its socket wrote nothing, and renews at once (``socket_marks``).
  The "closed" and "written" marks are per generation, not per claim: such a mark written
  for the refused socket would have vouched for whichever claim of it won.

A queued write lands later on the same condition, so it never undoes a decided one: a
queued mint or renewal finds its generation claimed, or a renewal of it, and is dropped; a
queued claim finds the next generation minted and is dropped. ``spent_tokens.newest_session``
still prefers a queued claim to the store's item, so a token spent here on the process's word
opens nothing here while the store is behind.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time

import voiceagent.store.records as records
from voiceagent.errors import StoreError
from voiceagent.log_episodes import Episode
from voiceagent.store.write_behind import WriteBehind

log = logging.getLogger(__name__)

SESSION_WRITE_S = 2.0            # /twiml waits this long for the session item, then queues it
# A claim of a session read from the store (minted elsewhere) waits longer: undecided, it is
# refused, not served. Twice the mint's wait, one DynamoDB attempt's whole read timeout: a
# store slow but answering (writes of 1-3 s) decides it, while Twilio speaks the greeting.
CLAIM_ELSEWHERE_S = 4.0
SESSION_DECIDED = dataclasses.replace(records.SESSION_VERSION, strict=True)
CLAIM_NONCE = records.CLAIM_ATTRIBUTE    # the claim item's own (``Store.put_if_newer``)


class SessionClaims:
    def __init__(self, *, writer: WriteBehind, ttl_s: int) -> None:
        self._writer = writer
        self._ttl_s = ttl_s
        self._undecided = Episode(log, lasts="session claims still decided in memory",
                                  ended="session claims decided by the store again")

    async def offer(self, session: records.CallSession) -> bool | None:
        """Write a minted session (``/twiml``'s, or a renewal's) if the store holds none of
        its generation or later: True written, False refused (another one is there), None
        not decided (queued; see the module docstring). A renewal goes ahead of its call's
        writes still queued here (``/action``'s flush of them timed out: a slow store), no
        longer behind them: a socket resuming on another process may then miss them, which
        ``socket_marks`` already reports as partial (the socket resuming here reads the
        store too), where one renewal per generation is the rule."""
        decided = await self._writer.write_decided(
            records.session_item(session, self._ttl_s), call_sid=session.call_sid,
            timeout_s=SESSION_WRITE_S, version=SESSION_DECIDED)
        self._note(decided, "mint" if session.generation == 0 else "renewal")
        return decided

    async def claim(self, session: records.CallSession, *, in_memory: bool) -> bool:
        """Spend ``session``'s token in the store: True if this socket may be served, False
        if another claim of its generation (or a later generation) is there. ``in_memory``:
        the session was minted here, so an undecided claim is served (and queued); else it
        is ``StoreError`` (module docstring)."""
        nonce = secrets.token_urlsafe(12)
        item = records.session_item(dataclasses.replace(session, token="", claim=nonce),
                                    self._ttl_s)
        timeout_s = SESSION_WRITE_S if in_memory else CLAIM_ELSEWHERE_S
        decided = await self._writer.write_decided(
            item, call_sid=session.call_sid, timeout_s=timeout_s,
            version=SESSION_DECIDED, queue=in_memory, down_s=SESSION_WRITE_S)
        if in_memory or decided is not None:
            self._note(decided, "claim")
        else:
            # the attempt may land yet: say, under its nonce, that its socket writes nothing
            self._writer.submit(records.socket_refused_item(
                session.call_sid, session.generation, nonce, time.time(), self._ttl_s),
                call_sid=session.call_sid, urgent=True)
            raise StoreError("the store did not decide this socket's claim of its session in "
                             f"{timeout_s:g} s; the session was read from the store, "
                             "which alone can vouch that no other process serves it")
        return decided is not False

    def close(self) -> None:
        """At shutdown: the claims decided in memory since the episode's last line."""
        self._undecided.close()

    def _note(self, decided: bool | None, kind: str) -> None:
        if decided is not None:
            self._undecided.succeeded()
            return
        self._undecided.note(kind, f"session {kind} not decided by the store in time: "
                             "going on with this process's word, the write queued "
                             "(the store decides it once back)", timeout_s=SESSION_WRITE_S)
