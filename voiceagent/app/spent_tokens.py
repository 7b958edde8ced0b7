"""Which session tokens were spent here while other sockets were still looking theirs up.

``Sessions.resolve`` awaits between finding a call's session and claiming it (the saved
history, the use case), so two sockets carrying one token can both hold the session. The
claim is refused while a socket is connected for the call, but the first socket may have
claimed and gone by the time the second one re-checks, which then found nothing connected
and was served the same call. So a claim records its session's generation for as long as
any lookup of that call is in flight; a lookup that ends after it is refused. Memory stays
with the calls being looked up: once none is, the spent token is gone from ``_pending`` and
consumed in the store, or queued here to be, which ``newest_session`` prefers to the store.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import voiceagent.store.records as records
from voiceagent.store.base import Item


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


def newest_session(stored: Item | None, queued: Item | None) -> records.CallSession | None:
    """A call's session as this process knows it: the store's, unless this process has a
    write of it still queued that is as new (a claim's, its token spent; the store behind it,
    throttled or backed up, still shows the token, which opened the call again)."""
    session = records.session_from_item(stored) if stored is not None else None
    if queued is None:
        return session
    mine = records.session_from_item(queued)
    return mine if session is None or mine.generation >= session.generation else session
