"""The sessions this process minted whose socket has not come yet.

A signed ``/twiml`` (or a renewal for a reconnect, through ``/action``) mints a session, and
its socket usually comes back to this process: held here, it is claimed without a store round
trip (``sessions``). Each offer carries the prompt rendered for the caller, with their
profile in it, so it is held only until its socket claims it or PENDING_TTL_S passes, and
forgotten on time on a quiet process too (``expire``), not only when the next call comes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import NamedTuple

import trio

import voiceagent.store.records as records

# a /twiml whose socket never came is forgotten after this; and its token, read from the
# store, opens nothing after it either (``spent_tokens.too_late``)
PENDING_TTL_S = 120.0


class Offer(NamedTuple):
    made_at: float                    # trio time
    session: records.CallSession
    resumes: bool                     # a renewal: the socket resumes a conversation


class SessionOffers:
    def __init__(self) -> None:
        # oldest first (a dict finds its first entry by walking past those deleted)
        self._offers: OrderedDict[str, Offer] = OrderedDict()
        self._added = trio.Event()

    def __contains__(self, call_sid: object) -> bool:
        return call_sid in self._offers

    def __len__(self) -> int:
        return len(self._offers)

    def __iter__(self) -> Iterator[str]:
        """The CallSids offered, oldest first."""
        return iter(self._offers)

    def get(self, call_sid: str) -> Offer | None:
        return self._offers.get(call_sid)

    def add(self, session: records.CallSession, *, resumes: bool) -> None:
        """Offer ``session`` to its socket, in place of any earlier offer for its call.
        Stale offers go first: a process that answers only renewals (``/action``) kept
        every one whose socket never came."""
        self.forget_stale()
        self._offers.pop(session.call_sid, None)     # re-entered at the end: oldest first
        self._offers[session.call_sid] = Offer(trio.current_time(), session, resumes)
        self._added.set()

    def withdraw(self, session: records.CallSession) -> None:
        """Take back the offer of ``session`` itself, if it is still the call's: another
        process's session stands, and this token never leaves the process."""
        offer = self._offers.get(session.call_sid)
        if offer is not None and offer.session is session:
            del self._offers[session.call_sid]

    def discard(self, call_sid: str) -> None:
        """The call's socket claimed it, here or on another process."""
        self._offers.pop(call_sid, None)

    def forget_stale(self) -> None:
        """Drop the offers made PENDING_TTL_S ago or more, from the front: kept oldest
        first, so each call costs what it drops, not a scan of every session minted in the
        last two minutes (with several processes, most of them claimed on another process
        and never removed here)."""
        now = trio.current_time()
        while self._offers:
            offer = next(iter(self._offers.values()))
            if offer.made_at + PENDING_TTL_S > now:
                return
            self._offers.popitem(last=False)

    async def expire(self) -> None:
        """Forget each offer PENDING_TTL_S after it was made, on a quiet process too:
        ``add`` forgets them only when the next one comes. Wakes when the oldest expires (an
        offer made meanwhile is newer): its work is what it drops, each offer made by a
        signed request."""
        while True:
            if not self._offers:
                self._added = trio.Event()
                await self._added.wait()
                continue
            offer = next(iter(self._offers.values()))
            await trio.sleep_until(offer.made_at + PENDING_TTL_S)
            self.forget_stale()
