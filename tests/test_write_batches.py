"""Which queued writes share a store request: a write that cannot join a batch (a second
write of a key, a fence after its call's own write, a versioned write) holds back only its
own call, not every call queued behind it. Before, the batch stopped there, and 100 calls
ending together (each one's last write, then its fence) took 101 requests instead of 8."""

from __future__ import annotations

import collections
from typing import Any

import pytest
import trio
import trio.testing

from tests.test_write_behind import FakeStore, chat
from voiceagent.store.base import BATCH_LIMIT, Version
from voiceagent.store.write_batches import SCAN_LIMIT, Entry, next_batch, take_out
from voiceagent.store.write_behind import WriteBehind

SESSION_VERSION = Version("generation")


class VersionedStore(FakeStore):
    """FakeStore with the conditional put the queue's versioned writes make, recorded as a
    batch of one (the store never holds a newer item here)."""

    async def put_unless_newer(self, item: dict[str, Any], version: str, *,
                               legacy: str | None = None) -> bool:
        await self.put_many([item])
        return True


def ended(call_sid: str) -> dict[str, Any]:
    return {"pk": call_sid, "sk": "ended"}


def written_mark(call_sid: str) -> dict[str, Any]:
    return {"pk": call_sid, "sk": "socketWritten::1"}


async def test_calls_ending_together_share_batches_and_each_fence_follows_its_call(
        autojump_clock: trio.testing.MockClock) -> None:
    store = FakeStore(latency_s=0.01)
    writer = WriteBehind(store, jitter=lambda: 1.0)
    calls = [f"CA{n:03d}" for n in range(100)]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            for call in calls:              # as sessions.socket_ended queues them
                writer.submit(ended(call), call_sid=call)
                writer.submit(written_mark(call), call_sid=call, urgent=True, fence=True)
            assert await writer.flush(timeout_s=5.0)
            nursery.cancel_scope.cancel(reason="test over")
    assert [len(batch) for batch in store.batches] == [BATCH_LIMIT] * 8
    assert trio.current_time() == pytest.approx(0.08)      # 8 requests of 10 ms, not 101
    for batch in store.batches:         # a fence never beside a write it vouches for
        assert len({pk for pk, _ in batch}) == len(batch)
    for call in calls:
        assert store.written.index((call, "ended")) < store.written.index(
            (call, "socketWritten::1"))
    assert writer.statistics().pending == 0


async def test_a_call_s_flush_ends_with_its_own_writes_not_with_an_older_call_s_fence(
        autojump_clock: trio.testing.MockClock) -> None:
    store = FakeStore(latency_s=1.0)
    writer = WriteBehind(store, jitter=lambda: 1.0)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            writer.submit(ended("CA-A"), call_sid="CA-A")
            writer.submit(written_mark("CA-A"), call_sid="CA-A", fence=True)
            writer.submit(ended("CA-B"), call_sid="CA-B")
            assert await writer.flush("CA-B", timeout_s=5.0)
            assert trio.current_time() == pytest.approx(1.0)       # one request
            assert writer.queued("CA-A")
            assert not writer.queued("CA-B")
            assert await writer.flush(timeout_s=5.0)
            assert trio.current_time() == pytest.approx(2.0)
            nursery.cancel_scope.cancel(reason="test over")
    assert store.batches == [[("CA-A", "ended"), ("CA-B", "ended")],
                             [("CA-A", "socketWritten::1")]]


async def test_a_write_passed_over_holds_back_the_rest_of_its_call_only(
        autojump_clock: trio.testing.MockClock) -> None:
    store = FakeStore(latency_s=0.01)
    writer = WriteBehind(store, jitter=lambda: 1.0)
    session = {"pk": "CA-A", "sk": "connection"}
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            writer.submit({**session, "v": 1}, call_sid="CA-A")
            writer.submit({**session, "v": 2}, call_sid="CA-A")     # the same key again
            writer.submit(chat("CA-B", 1), call_sid="CA-B")
            writer.submit(chat("CA-A", 1), call_sid="CA-A")         # after v2, so after it
            writer.submit(chat("CA-B", 2), call_sid="CA-B")
            assert await writer.flush(timeout_s=5.0)
            nursery.cancel_scope.cancel(reason="test over")
    assert store.batches == [
        [("CA-A", "connection"), ("CA-B", "chat::0001"), ("CA-B", "chat::0002")],
        [("CA-A", "connection"), ("CA-A", "chat::0001")]]
    assert store.items[("CA-A", "connection")]["v"] == 2


async def test_a_versioned_write_goes_alone_without_stopping_other_calls_writes(
        autojump_clock: trio.testing.MockClock) -> None:
    store = VersionedStore(latency_s=0.01)
    writer = WriteBehind(store, jitter=lambda: 1.0)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            writer.submit(chat("CA-A", 1), call_sid="CA-A")
            writer.submit({"pk": "CA-B", "sk": "session", "generation": 2}, call_sid="CA-B",
                          version=SESSION_VERSION)
            writer.submit(chat("CA-C", 1), call_sid="CA-C")
            writer.submit(chat("CA-B", 1), call_sid="CA-B")
            assert await writer.flush(timeout_s=5.0)
            nursery.cancel_scope.cancel(reason="test over")
    assert store.batches == [[("CA-A", "chat::0001"), ("CA-C", "chat::0001")],
                             [("CA-B", "session")], [("CA-B", "chat::0001")]]


async def test_a_write_passed_over_holds_back_later_writes_of_its_key_from_other_calls(
        autojump_clock: trio.testing.MockClock) -> None:
    """A caller's profile is one key that each of its calls writes: the older call's write,
    held back with its call, must not land after the newer call's and overwrite it."""
    store = FakeStore(latency_s=0.01)
    writer = WriteBehind(store, jitter=lambda: 1.0)
    profile = {"pk": "+15550001", "sk": "profile"}
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            writer.submit(chat("CA-A", 1, v=1), call_sid="CA-A")
            writer.submit(chat("CA-A", 1, v=2), call_sid="CA-A")     # holds CA-A back
            writer.submit({**profile, "by": "CA-A"}, call_sid="CA-A")
            writer.submit({**profile, "by": "CA-B"}, call_sid="CA-B")  # the newer one
            assert await writer.flush(timeout_s=5.0)
            nursery.cancel_scope.cancel(reason="test over")
    assert store.items[("+15550001", "profile")]["by"] == "CA-B"
    assert store.batches == [[("CA-A", "chat::0001")],
                             [("CA-A", "chat::0001"), ("+15550001", "profile")],
                             [("+15550001", "profile")]]


def entry(seq: int, call_sid: str, sk: str, **options: Any) -> Entry:
    return Entry(seq, call_sid, (call_sid, sk), {"pk": call_sid, "sk": sk}, 0.0, **options)


def test_a_batch_looks_no_further_than_its_scan_limit() -> None:
    """A call with a long run of writes to one key (a store outage's backlog) costs each
    batch at most SCAN_LIMIT entries looked at, not the whole queue."""
    queue = collections.deque(entry(n, "CA-A", "connection") for n in range(1, 1001))
    queue.append(entry(1001, "CA-B", "chat::0001"))
    batch, looked_at = next_batch(queue)
    assert [e.seq for e in batch] == [1]
    assert looked_at == 1
    queue.insert(SCAN_LIMIT - 1, entry(2000, "CA-C", "chat::0001"))
    batch, looked_at = next_batch(queue)
    assert [e.seq for e in batch] == [1, 2000]
    assert looked_at == SCAN_LIMIT


def test_taking_a_batch_out_leaves_the_rest_in_submission_order() -> None:
    queue = collections.deque([entry(1, "CA-A", "ended"),
                               entry(2, "CA-A", "socketWritten::1", fence=True),
                               entry(3, "CA-B", "ended"),
                               entry(4, "CA-B", "socketWritten::1", fence=True),
                               entry(5, "CA-C", "ended")])
    batch, looked_at = next_batch(queue)
    assert [e.seq for e in batch] == [1, 3, 5]
    assert looked_at == 5
    queue.append(entry(6, "CA-C", "socketWritten::1", fence=True))   # while it was written
    assert [e.seq for e in take_out(queue, batch, looked_at)] == [1, 3, 5]
    assert [e.seq for e in queue] == [2, 4, 6]
    batch, looked_at = next_batch(queue)
    assert [e.seq for e in batch] == [2, 4, 6]
