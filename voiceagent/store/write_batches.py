"""Which queued writes go into the write-behind's next store request, and taking them out.

A batch takes the oldest writes that can go together and passes over the ones that cannot
(a second write of one key, which DynamoDB refuses in one batch; a call's fence after one of
its own writes, since a batch is not atomic; a versioned write, which goes alone), holding
back the rest of their call and their key's later writes, so each call's writes, and each
key's, land in the order they were made. Stopping
at the first such write instead, as the queue did before, cut batches to ~2 items when many
calls ended together (each call's last write, then its fence): 500 calls hanging up at once
took 500 round trips, ~5 s, and their flushes timed out.
"""

from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass

from voiceagent.store.base import BATCH_LIMIT, Item, Version

SCAN_LIMIT = 4 * BATCH_LIMIT    # queued writes a batch looks at, those passed over included


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    call_sid: str
    key: tuple[str, str]
    item: Item
    submitted_at: float
    version: Version | None = None   # see ``WriteBehind.submit``
    cost: int = 0                    # memory it holds while queued, roughly
    fence: bool = False              # see ``WriteBehind.submit``


def next_batch(queue: collections.deque[Entry]) -> tuple[list[Entry], int]:
    """The next batch of a non-empty ``queue``, and how many entries from its head were
    looked at to make it (what ``take_out`` needs). A versioned head goes alone; a
    versioned entry further on waits to be the head. An entry passed over holds back its
    call's later entries and its key's (a caller's profile is written by each of its
    calls): neither may land before it."""
    head = queue[0]
    if head.version is not None:
        return [head], 1
    batch: list[Entry] = []
    keys: set[tuple[str, str]] = set()
    calls: set[str] = set()
    held: set[str] = set()
    looked_at = 0
    for looked, entry in enumerate(itertools.islice(queue, SCAN_LIMIT), 1):
        if entry.call_sid in held or entry.version is not None or entry.key in keys or (
                entry.fence and entry.call_sid in calls):
            held.add(entry.call_sid)
            keys.add(entry.key)     # a later write of its key, any call's, waits behind it
            continue
        batch.append(entry)
        keys.add(entry.key)
        calls.add(entry.call_sid)
        looked_at = looked
        if len(batch) == BATCH_LIMIT:
            break
    return batch, looked_at


def take_out(queue: collections.deque[Entry], batch: list[Entry],
             looked_at: int) -> list[Entry]:
    """Remove ``batch`` (written or dropped) from ``queue``; returns its entries in queue
    order. The entries it passed over keep their places at the head, so the queue stays in
    submission order. Writes only ever join at the tail, so the first ``looked_at``
    positions have not moved while the batch was written."""
    taken = {id(entry) for entry in batch}
    out: list[Entry] = []
    passed_over: list[Entry] = []
    for _ in range(looked_at):
        entry = queue.popleft()
        (out if id(entry) in taken else passed_over).append(entry)
    queue.extendleft(reversed(passed_over))
    return out
