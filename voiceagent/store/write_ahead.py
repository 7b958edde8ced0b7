"""Writes that go ahead of the write-behind queue, for a reader in another process that
cannot wait for its backlog: ``write_now`` (a socket's end mark) and ``write_decided`` (a
session minted, claimed or renewed on condition, the store deciding which process wins), and
the conditional put both those and the queue's versioned writes make.

Apart from ``write_behind``, whose queue drains behind the calls in submission order: these
are awaited by their caller, bounded by its timeout, and fall back to that queue (``submit``)
when the store does not answer. Mixed into ``WriteBehind``.
"""

from __future__ import annotations

import itertools
from typing import Protocol

import trio

from voiceagent.errors import StoreError, is_permanent
from voiceagent.log_episodes import Episode
from voiceagent.store.base import Item, Store, Version


class _QueueParts(Protocol):
    """What ``WriteAhead`` uses of the queue it is mixed into (``WriteBehind``)."""

    _store: Store
    _outage: Episode
    _written: int
    _undecided: int
    _down_since: float | None

    def submit(self, item: Item, *, call_sid: str, urgent: bool = False,
               version: Version | None = None, fence: bool = False) -> None: ...

    def queued(self, call_sid: str) -> bool: ...

    def _backoff_s(self, attempt: int) -> float: ...

    def _note_down(self) -> float: ...

    def _note_recovery(self) -> None: ...


class WriteAhead(_QueueParts):
    """Mixed into ``WriteBehind``: its writes ahead of the queue, apart from the drainer."""

    async def write_now(self, item: Item, *, call_sid: str, timeout_s: float,
                        ordered: bool = True) -> bool:
        """Write ``item`` at once, ahead of the queue, for a reader in another process that
        cannot wait for the backlog (a socket's end mark, which a reconnect elsewhere reads).
        Order per call holds: with a write of ``call_sid`` still queued (unless ``ordered``
        is False: a key no other write of the call touches), or the store known to be down,
        or no answer within ``timeout_s`` (or a store error), the item is queued as
        ``submit(urgent=True)`` would, and False is returned. True: it is in the store. A
        key of its own (not ``ordered``) is tried even while the queue backs off from a
        failing store: a socket's end mark says this process is alive and behind, when a
        reconnect elsewhere needs it most (queued, it told that process nothing)."""
        if (ordered and (self.queued(call_sid) or self._down_since is not None)):
            self.submit(item, call_sid=call_sid, urgent=True)
            return False
        written = False
        try:
            with trio.move_on_after(timeout_s):
                try:
                    await self._store.put(item)     # awaited here: nothing can change it
                    written = True
                except StoreError as err:       # one of the outage's failures
                    self._outage.note("ahead_of_queue", "store write ahead of the queue "
                                      "failed; queued instead", error=type(err).__name__,
                                      sk=item.get("sk"))
        finally:        # also when the webhook itself is cancelled: the item is never lost
            if written:
                self._written += 1
            else:
                self.submit(item, call_sid=call_sid, urgent=True)
        return written

    async def write_decided(self, item: Item, *, call_sid: str, timeout_s: float,
                            version: Version, queue: bool = True,
                            down_s: float | None = None) -> bool | None:
        """Write ``item`` at once, ahead of the call's queue (ordered by ``version``), on its
        condition (``strict``: one process wins): True written, False refused (the store
        holds one as new, or newer). Tried again after a transient failure until
        ``timeout_s`` (a resend of an applied one finds its own item), unless the store's
        writes have failed that long, or ``down_s`` when given (the store is down, not slow:
        one try, see ``session_claims``); None if undecided by then: queued (unless not
        ``queue``) on the same condition, which may still lose. Its failures and answers
        tell whether the store is down as the queue's do: a process whose writes are mostly
        these (sockets of sessions minted elsewhere, refused undecided and never queued)
        gave every claim its 2 s through an outage, and showed ``store_down`` 0 all along."""
        decided: bool | None = None
        down_s = timeout_s if down_s is None else down_s
        try:
            with trio.move_on_after(timeout_s):
                for attempt in itertools.count(1):
                    try:
                        decided = await self._conditional_put(item, version)
                        self._note_recovery()       # the store answered: it is up
                        break
                    except StoreError as err:       # one of the outage's failures
                        self._outage.note("ahead_of_queue", "store write ahead of the queue "
                                          "failed", error=type(err).__name__, sk=item.get("sk"))
                        if is_permanent(err):       # this item refused: says nothing of it
                            break
                        if trio.current_time() - self._note_down() >= down_s:
                            break
                        await trio.sleep(self._backoff_s(attempt))
        finally:        # also when cancelled from outside: the item is never lost
            if decided:
                self._written += 1
            elif decided is None:
                self._undecided += 1
                if queue:
                    self.submit(item, call_sid=call_sid, urgent=True, version=version)
        return decided

    async def _conditional_put(self, item: Item, version: Version) -> bool:
        put = self._store.put_if_newer if version.strict else self._store.put_unless_newer
        return await put(item, version.attribute, legacy=version.legacy)
