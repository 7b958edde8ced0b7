"""The process's write-behind queue: every call's writes go through it, off the critical path.

A call keeps its state in memory and ``submit``s items here; one drainer task (``run``, in
the server's nursery) writes them in order, up to ``BATCH_LIMIT`` at a time. So no store
round trip sits between a caller's words and the first token, and a store outage does not
stop a call: writes wait, retried with capped exponential backoff, and land in order once
the store is back. Calls that end ``flush`` their own items with a deadline.

Order: each call's items are written in the order it submitted them, calls' items oldest
first; a batch passes over an item that cannot share it (a second write of a key, a fence, a
versioned write: ``write_batches``), and the later writes of its call and of its key, for
other calls' items behind. The exceptions are ``write_now`` (an item another process may
read at once): it goes ahead of the queue only when its call has nothing queued, so per-call
order still holds (or for a key no other write of the call touches: a socket's end mark);
and ``write_decided`` (a session minted, claimed or renewed, the store deciding which
process wins: ordered against the call's other session writes by its version). A batch is
not atomic (DynamoDB may apply any part of one and hand the rest back), so an item that
vouches for its call's earlier writes (``submit``'s ``fence``) never shares a batch with one
of them. Across processes, writes of one key can still cross (one process's queue behind a
throttled store): an item whose writes carry a ``version`` (a session's generation) is
written on condition, never over a newer one.

Failures: a ``StoreError`` is transient and retried forever, unless it is ``permanent`` (the
store refused the item itself, see ``StoreRejected``). A permanently refused batch is retried
item by item so only the bad item is dropped; it is logged by key, never by content. An outage
is logged as an episode (``log_episodes``): its first failure of each kind, a summary with
counts and the backlog each minute while it lasts, and its end.
"""

from __future__ import annotations

import collections
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from voiceagent.errors import StoreError, StorePartlyWritten, is_permanent
from voiceagent.log_episodes import Episode
from voiceagent.logs import for_call, mask_phone
from voiceagent.store.base import (
    BATCH_LIMIT,
    Item,
    MeasuredItem,
    Store,
    Version,
    copy_item,
    item_size,
)
from voiceagent.store.write_ahead import WriteAhead
from voiceagent.store.write_batches import Entry as _Entry
from voiceagent.store.write_batches import next_batch, take_out

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 5.0


CALLS_NAMED = 5         # of a failed batch's calls, in its log line (a batch holds up to 25)
ENTRY_OVERHEAD = 700    # bytes a queued item holds beyond its DynamoDB size (its dicts)


def _queued(item: Item) -> tuple[Item, int]:
    """The queue's own copy of ``item``, and its cost. Measured: a small chat item (~200
    bytes as DynamoDB counts) held ~0.9 KB queued; a large one, about its size. The size is
    kept with the copy (``MeasuredItem``): the store checks it against DynamoDB's limit
    without measuring again. Anything ``item_size`` cannot measure costs its overhead, and
    is left for the store to measure and refuse."""
    copied = copy_item(item)
    try:
        size = item_size(copied)
    except (TypeError, ValueError):
        return copied, ENTRY_OVERHEAD
    return MeasuredItem(copied, size), size + ENTRY_OVERHEAD


def _jitter_factor() -> float:
    return random.uniform(0.5, 1.0)


@dataclass(frozen=True, slots=True)
class WriteBehindStatistics:
    pending: int                     # submitted, not yet written or dropped
    written: int
    failed: int                      # refused permanently and dropped
    retries: int                     # attempts repeated after a transient error
    oldest_pending_age_s: float      # the lag; 0.0 when nothing is pending
    store_down: bool
    pending_bytes: int = 0           # about the memory the pending items hold
    undecided: int = 0               # conditional writes the store did not answer in time


class WriteBehind(WriteAhead):
    """Owns the queue; the store stays owned (and closed) by whoever opened it."""

    def __init__(self, store: Store, *, jitter: Callable[[], float] = _jitter_factor,
                 linger_s: float = 0.0) -> None:
        """``jitter`` returns the factor in [0.5, 1] applied to each backoff delay (tests
        pin it to 1.0 for exact virtual times). ``linger_s``: how long a batch that is not
        full waits for more items (unless a call's ``flush`` is waiting): under load, each
        store write then carries many calls' items instead of one turn's."""
        self._store = store
        self._jitter = jitter
        self._linger_s = linger_s
        self._hurry = trio.Event()       # set while a flush waits: no lingering
        self._flushing = 0
        self._queue: collections.deque[_Entry] = collections.deque()
        self._next_seq = 1
        self._last_by_call: dict[str, int] = {}
        # a call with writes queued: the last of them written (a flush of its items up to a
        # seq is over once this reaches it; a call's writes land in its order)
        self._done_by_call: dict[str, int] = {}
        self._wakeup = trio.Event()
        self._progress = trio.Event()
        self._filled_or_emptied = trio.Event()
        self._written = 0
        self._failed = 0
        self._retries = 0
        self._undecided = 0
        self._down_since: float | None = None
        self._pending_bytes = 0
        self._running = False
        # the log's view of an outage: its first failure, a summary a minute, its end once
        # no write failed for QUIET_S (a throttled store fails every other batch: a line
        # per failure and per recovery was ~8 a second at 300 calls)
        self._outage = Episode(log, lasts="store writes still failing",
                               ended="store writes recovered", state=self._backlog)

    # ------------------------------------------------------------------ producers

    def submit(self, item: Item, *, call_sid: str, urgent: bool = False,
               version: Version | None = None, fence: bool = False) -> None:
        """Queue ``item`` (copied, so later changes by the caller do not leak in). Never
        blocks. Raises ``ValueError`` at once for an item without string pk and sk.
        ``urgent``: another process may look for it soon (a session): do not linger.
        ``version``: the attribute that orders this key's writes across processes (a
        session's generation); written alone, and dropped if the store has a newer one.
        ``fence``: its presence in the store says the call's earlier writes are there too (a
        socket's "written" mark): written only once they have all landed."""
        pk, sk = item.get("pk"), item.get("sk")
        if not isinstance(pk, str) or not isinstance(sk, str):
            raise ValueError("a store item needs string 'pk' and 'sk' attributes")
        seq = self._next_seq
        self._next_seq += 1
        queued, cost = _queued(item)
        self._queue.append(_Entry(seq, call_sid, (pk, sk), queued, trio.current_time(),
                                  version, cost, fence))
        self._pending_bytes += cost
        self._last_by_call[call_sid] = seq
        self._wakeup.set()
        if len(self._queue) == 1:
            self._announce_filled_or_emptied()
        if urgent:
            self._hurry.set()

    async def _put(self, item: Item, version: Version | None) -> None:
        if version is None:
            await self._store.put(item)
        elif not await self._conditional_put(item, version):
            log.info("store write superseded by a newer one, dropped",
                     extra={"sk": item.get("sk"), "version": item.get(version.attribute)})

    @property
    def pending(self) -> int:
        """Submitted, not yet written or dropped: memory a store outage makes grow."""
        return len(self._queue)

    @property
    def pending_bytes(self) -> int:
        """About the memory the pending items hold (a store outage makes it grow)."""
        return self._pending_bytes

    @property
    def filled_or_emptied(self) -> trio.Event:
        """Set when ``pending`` next goes from 0 to more or back to 0: what task protection
        follows (unsaved writes hold the task). Only at those edges, so a queue that stays
        busy costs ``submit`` one length check. Taken before looking at ``pending``, it cannot
        miss a change."""
        return self._filled_or_emptied

    def _announce_filled_or_emptied(self) -> None:
        self._filled_or_emptied.set()
        self._filled_or_emptied = trio.Event()

    def queued(self, call_sid: str) -> bool:
        """Whether a write of ``call_sid`` is still waiting here (its store is behind it)."""
        return call_sid in self._last_by_call

    def unwritten(self) -> dict[str, int]:
        """The writes still waiting, counted by call, oldest call first: what a process that
        stops now loses (``stop_budget.log_dropped``)."""
        return dict(collections.Counter(entry.call_sid for entry in self._queue))

    def queued_item(self, pk: str, sk: str) -> Item | None:
        """The last item of ``pk``/``sk`` waiting here, unwritten: newer than the store's."""
        for entry in reversed(self._queue):
            if entry.key == (pk, sk):
                return entry.item
        return None

    async def flush(self, call_sid: str | None = None, *, timeout_s: float,
                    until: float = math.inf) -> bool:
        """Wait until every item submitted before this call (for ``call_sid``, or all) is
        written or dropped. False when ``timeout_s`` passed first, or the caller's own
        deadline ``until`` (trio's clock); the items stay queued. Only the first is the
        store's fault and logged: at ``until`` the caller's time was spent elsewhere (a stop's
        budget, a reconnect's wind-down), and a "timed out" line with what was left of it
        (``timeout_s: 0.0`` at worst) read as a second fault."""
        await trio.lowlevel.checkpoint()
        target = self._next_seq - 1 if call_sid is None else self._last_by_call.get(call_sid)
        if target is None or self._written_through(call_sid, target):
            return True
        timed_out_at = trio.current_time() + timeout_s
        self._flushing += 1
        self._hurry.set()
        try:
            with trio.move_on_at(min(timed_out_at, until)):
                while not self._written_through(call_sid, target):
                    await self._progress.wait()
                return True
        finally:
            self._flushing -= 1
        if until < timed_out_at:
            return False
        pending = sum(1 for e in self._queue
                      if e.seq <= target and (call_sid is None or e.call_sid == call_sid))
        log.warning("store flush timed out", extra={
            "pending": pending, "timeout_s": timeout_s,
            "scope": "call" if call_sid is not None else "all"})
        return False

    def _written_through(self, call_sid: str | None, seq: int) -> bool:
        """Whether every item up to ``seq`` (of ``call_sid``, or of every call) is written
        or dropped. The queue stays in submission order (a batch takes items out of it,
        those left keep their places), so its head is the oldest still waiting."""
        if call_sid is None:
            return not self._queue or self._queue[0].seq > seq
        return (call_sid not in self._last_by_call
                or self._done_by_call.get(call_sid, 0) >= seq)

    def statistics(self) -> WriteBehindStatistics:
        age = trio.current_time() - self._queue[0].submitted_at if self._queue else 0.0
        return WriteBehindStatistics(
            pending=self.pending, written=self._written, failed=self._failed,
            retries=self._retries, oldest_pending_age_s=age,
            store_down=self._down_since is not None, pending_bytes=self._pending_bytes,
            undecided=self._undecided)

    # ------------------------------------------------------------------ the drainer

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Drain the queue until cancelled. Start it with ``nursery.start``. A batch being
        written when the cancel comes finishes its current attempt (store calls are not
        abandoned), but its entries stay queued."""
        if self._running:
            raise RuntimeError("WriteBehind.run is already running: one drainer keeps order")
        self._running = True
        task_status.started()
        try:
            await self._drain()
        finally:
            self._running = False
            self._outage.close()

    async def _drain(self) -> None:
        while True:
            if not self._queue:
                self._wakeup = trio.Event()
                with trio.move_on_at(self._outage.quiet_at or math.inf):
                    await self._wakeup.wait()
                self._outage.expire()
                continue
            if self._linger_s > 0 and len(self._queue) < BATCH_LIMIT and not self._flushing:
                with trio.move_on_after(self._linger_s):
                    await self._hurry.wait()
                if not self._flushing:
                    self._hurry = trio.Event()
            batch, looked_at = next_batch(self._queue)
            await self._write(batch)
            for entry in take_out(self._queue, batch, looked_at):
                self._pending_bytes -= entry.cost
                if self._last_by_call.get(entry.call_sid) == entry.seq:
                    del self._last_by_call[entry.call_sid]
                    self._done_by_call.pop(entry.call_sid, None)
                else:
                    self._done_by_call[entry.call_sid] = entry.seq
            self._progress.set()
            self._progress = trio.Event()
            if not self._queue:
                self._announce_filled_or_emptied()

    async def _write(self, batch: list[_Entry]) -> None:
        """Write the batch, retrying transient errors until it lands. Returns once every
        entry is written or dropped as refused."""
        attempt = 0
        while True:
            try:
                if batch[0].version is not None:        # always alone: see _next_batch
                    with for_call(batch[0].call_sid):   # its "superseded" line names it
                        await self._put(batch[0].item, batch[0].version)
                else:
                    await self._store.put_many([entry.item for entry in batch])
            except trio.Cancelled:
                raise
            except Exception as err:
                if isinstance(err, StorePartlyWritten):
                    left = set(err.remaining)
                    self._written += sum(1 for entry in batch if entry.key not in left)
                    batch = [entry for entry in batch if entry.key in left] or batch
                if isinstance(err, StoreError) and not is_permanent(err):
                    attempt += 1
                    self._note_failure(err, batch)
                    await trio.sleep(self._backoff_s(attempt))
                    self._retries += 1
                    continue
                await self._refused(batch, err)
                return
            self._note_recovery()
            self._written += len(batch)
            return

    async def _refused(self, batch: list[_Entry], err: Exception) -> None:
        """Find the refused item(s) by writing one at a time; drop only those. An error that
        is not a StoreError (a bug in a backend) is treated the same, so it costs items, not
        the process."""
        if len(batch) > 1:
            for entry in batch:
                await self._write([entry])
            return
        entry = batch[0]
        self._failed += 1
        with for_call(entry.call_sid):
            log.error("store refused item, dropped", exc_info=not isinstance(err, StoreError),
                      extra={"pk": mask_phone(entry.key[0]) if entry.key[0].startswith("+")
                             else entry.key[0], "sk": entry.key[1],
                             "error": type(err).__name__, "failed": self._failed})

    def _backoff_s(self, attempt: int) -> float:
        delay: float = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0 ** (attempt - 1))
        return delay * self._jitter()

    def _note_failure(self, err: StoreError, batch: list[_Entry]) -> None:
        """The line an outage starts with names the calls whose writes failed: under the
        CallSid when the batch is one call's, else a few of them in ``calls``, so an
        operator searching a call's CallSid finds why its transcript is late."""
        self._note_down()
        sids = list(dict.fromkeys(entry.call_sid for entry in batch))
        named: dict[str, Any] = {} if len(sids) == 1 else {
            "calls": sids[:CALLS_NAMED], "calls_in_batch": len(sids)}
        with for_call(sids[0] if len(sids) == 1 else "-"):
            self._outage.note(type(err).__name__, "store writes failing, retrying with "
                              "backoff", error=type(err).__name__, reason=str(err),
                              pending=len(self._queue), **named)

    def _note_down(self) -> float:
        """A write failed (not refused as bad): the store is down since when, from now on."""
        if self._down_since is None:
            self._down_since = trio.current_time()
        return self._down_since

    def _note_recovery(self) -> None:
        self._down_since = None
        self._outage.succeeded()

    def _backlog(self) -> dict[str, float]:
        stats = self.statistics()
        return {"pending": stats.pending, "pending_bytes": stats.pending_bytes,
                "oldest_pending_s": round(stats.oldest_pending_age_s, 1)}
