"""The write-behind queue against a fake store that can go down: order, batching, retries,
refusals and flush deadlines, all in trio's virtual time (``autojump_clock``)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.fakes import MemoryStore
from voiceagent.errors import StoreError, StoreRejected
from voiceagent.log_episodes import QUIET_S
from voiceagent.store.base import BATCH_LIMIT, MAX_ITEM_BYTES, Item, Version, item_size
from voiceagent.store.sqlite import open_sqlite_store
from voiceagent.store.write_behind import WriteBehind

Key = tuple[str, str]
LOGGER = "voiceagent.store.write_behind"


class FakeStore:
    """Records every ``put_many`` attempt with its virtual time. ``down`` makes attempts fail
    (transient); keys in ``refuse`` make a batch holding them fail permanently."""

    name = "fake"

    def __init__(self, latency_s: float = 0.0) -> None:
        self.latency_s = latency_s
        self.down = False
        self.refuse: set[Key] = set()
        self.bug: set[Key] = set()
        self.items: dict[Key, Item] = {}
        self.attempts: list[tuple[float, list[Key]]] = []
        self.batches: list[list[Key]] = []           # the attempts that succeeded

    @property
    def written(self) -> list[Key]:
        return [key for batch in self.batches for key in batch]

    async def put_many(self, items: Sequence[Item]) -> None:
        keys = [(item["pk"], item["sk"]) for item in items]
        self.attempts.append((trio.current_time(), keys))
        await trio.sleep(self.latency_s)
        if self.down:
            raise StoreError("fake store is down")
        if self.refuse.intersection(keys):
            raise StoreRejected("fake store refuses this item")
        if self.bug.intersection(keys):
            raise TypeError("a bug in a backend")
        self.batches.append(keys)
        self.items.update(zip(keys, (dict(item) for item in items), strict=True))

    async def put(self, item: Item) -> None:
        await self.put_many([item])

    async def get(self, pk: str, sk: str) -> Item | None:
        await trio.lowlevel.checkpoint()
        return self.items.get((pk, sk))

    async def query(self, pk: str, sk_prefix: str = "", *, descending: bool = False,
                    limit: int | None = None) -> list[Item]:
        raise NotImplementedError

    async def query_index(self, pk1: str, sk1_prefix: str = "", *, descending: bool = False,
                          limit: int | None = None) -> list[Item]:
        raise NotImplementedError

    async def delete(self, pk: str, sk: str) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def chat(call_sid: str, n: int, **extra: Any) -> Item:
    return {"pk": call_sid, "sk": f"chat::{n:04d}", **extra}


def attempt_times(store: FakeStore) -> list[float]:
    return [round(at, 6) for at, _ in store.attempts]


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


async def test_order_holds_and_batches_stay_within_the_limit(
        autojump_clock: trio.testing.MockClock) -> None:
    store = FakeStore(latency_s=0.01)
    writer = WriteBehind(store, jitter=lambda: 1.0)
    submitted = [chat(f"CA{i % 3}", i) for i in range(70)]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            for item in submitted:
                writer.submit(item, call_sid=item["pk"])
            assert writer.statistics().pending == 70
            assert await writer.flush(timeout_s=5.0)
            assert trio.current_time() == pytest.approx(0.03)      # three batches, 10 ms each
            nursery.cancel_scope.cancel(reason="test over")
    assert [len(batch) for batch in store.batches] == [BATCH_LIMIT, BATCH_LIMIT, 20]
    assert store.written == [(i["pk"], i["sk"]) for i in submitted]
    for call in ("CA0", "CA1", "CA2"):
        own = [key for key in store.written if key[0] == call]
        assert own == sorted(own)
    stats = writer.statistics()
    assert (stats.pending, stats.written, stats.failed, stats.retries) == (0, 70, 0, 0)
    assert stats.oldest_pending_age_s == 0.0
    assert not stats.store_down


async def test_the_queue_announces_filling_and_emptying_not_each_item(
        autojump_clock: trio.testing.MockClock) -> None:
    """Task protection follows these edges; every other ``submit`` must not wake it."""
    store = FakeStore(latency_s=0.01)
    writer = WriteBehind(store, jitter=lambda: 1.0)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            empty = writer.filled_or_emptied
            writer.submit(chat("CA1", 1), call_sid="CA1")
            assert empty.is_set()
            filled = writer.filled_or_emptied
            writer.submit(chat("CA1", 2), call_sid="CA1")
            writer.submit(chat("CA2", 1), call_sid="CA2")
            await trio.sleep(0.005)                       # the batch in flight
            assert not filled.is_set()
            assert await writer.flush(timeout_s=5.0)
            assert filled.is_set()
            assert writer.pending == 0
            assert not writer.filled_or_emptied.is_set()
            nursery.cancel_scope.cancel(reason="test over")


async def test_a_batch_never_writes_one_key_twice(
        autojump_clock: trio.testing.MockClock) -> None:
    store = FakeStore()
    writer = WriteBehind(store)
    session = {"pk": "CA1", "sk": "connection"}
    sequence = [{**session, "v": 1}, chat("CA1", 1), {**session, "v": 2}, chat("CA1", 2),
                {**session, "v": 3}]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            for item in sequence:
                writer.submit(item, call_sid="CA1")
            assert await writer.flush("CA1", timeout_s=1.0)
            nursery.cancel_scope.cancel(reason="test over")
    assert store.batches == [[("CA1", "connection"), ("CA1", "chat::0001")],
                             [("CA1", "connection"), ("CA1", "chat::0002")],
                             [("CA1", "connection")]]
    assert store.items[("CA1", "connection")]["v"] == 3             # the last one won


async def test_retries_with_backoff_while_down_then_drains_in_order(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    store = FakeStore()
    store.down = True
    writer = WriteBehind(store, jitter=lambda: 1.0)

    async def recover_at(at: float) -> None:
        await trio.sleep_until(at)
        store.down = False

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            nursery.start_soon(recover_at, 1.0)
            for n in range(3):
                writer.submit(chat("CA1", n, secret="card 4111"), call_sid="CA1")
            await trio.sleep(0.5)
            writer.submit(chat("CA2", 0), call_sid="CA2")
            stats = writer.statistics()
            assert (stats.pending, stats.written, stats.store_down) == (4, 0, True)
            assert stats.oldest_pending_age_s == pytest.approx(0.5)
            assert stats.retries == 3                               # at 0.05, 0.15, 0.35
            assert await writer.flush(timeout_s=10.0)
            assert trio.current_time() == pytest.approx(1.55)
            await trio.sleep(QUIET_S)       # the outage's end is logged once it has been quiet
            nursery.cancel_scope.cancel(reason="test over")
    # 0 fails, then waits of 0.05, 0.1, 0.2, 0.4, 0.8; the store is back at 1.0
    assert attempt_times(store) == [0.0, 0.05, 0.15, 0.35, 0.75, 1.55, 1.55]
    assert all(keys == store.attempts[0][1] for _, keys in store.attempts[:6])  # same batch
    assert store.written == [("CA1", "chat::0000"), ("CA1", "chat::0001"),
                             ("CA1", "chat::0002"), ("CA2", "chat::0000")]
    assert writer.statistics().retries == 5
    logged = messages(caplog)
    assert logged.count("store writes failing, retrying with backoff") == 1
    assert logged.count("store writes recovered") == 1
    recovered = next(r for r in caplog.records if r.getMessage() == "store writes recovered")
    assert vars(recovered)["counts"] == {"StoreError": 5}
    assert vars(recovered)["lasted_s"] == 0.8       # its first failure to its last
    assert "4111" not in caplog.text


async def test_backoff_is_capped(autojump_clock: trio.testing.MockClock) -> None:
    store = FakeStore()
    store.down = True
    writer = WriteBehind(store, jitter=lambda: 1.0)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            writer.submit(chat("CA1", 0), call_sid="CA1")
            await trio.sleep(30)
            nursery.cancel_scope.cancel(reason="test over")
    times = attempt_times(store)
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(times)]
    assert gaps[:10] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    assert writer.statistics().pending == 1


async def test_default_jitter_keeps_delays_between_half_and_full(
        autojump_clock: trio.testing.MockClock) -> None:
    store = FakeStore()
    store.down = True
    writer = WriteBehind(store)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            writer.submit(chat("CA1", 0), call_sid="CA1")
            await trio.sleep(20)
            nursery.cancel_scope.cancel(reason="test over")
    times = attempt_times(store)
    # even with every delay full (0.05 doubling to 5 s), 10 attempts fit in 20 s
    assert len(times) >= 10
    fulls = [min(5.0, 0.05 * 2**n) for n in range(len(times) - 1)]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    pairs = list(zip(gaps, fulls, strict=True))
    assert all(full / 2 - 1e-6 <= gap <= full + 1e-6 for gap, full in pairs)
    assert any(gap < full - 1e-6 for gap, full in pairs)        # jittered at all


async def test_refused_item_is_dropped_counted_and_logged_by_key(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    store = FakeStore()
    bad = {"pk": "+15555550123", "sk": "profile", "firstName": "Secretname"}
    store.refuse.add(("+15555550123", "profile"))
    writer = WriteBehind(store, jitter=lambda: 1.0)
    items = [chat("CA1", 0), chat("CA1", 1), bad, chat("CA1", 2), chat("CA1", 3)]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            for item in items:
                writer.submit(item, call_sid="CA1")
            assert await writer.flush("CA1", timeout_s=1.0)
            assert trio.current_time() == 0.0                      # no backoff for refusals
            await trio.sleep(10)                                   # and no retries later
            nursery.cancel_scope.cancel(reason="test over")
    assert store.written == [("CA1", "chat::0000"), ("CA1", "chat::0001"),
                             ("CA1", "chat::0002"), ("CA1", "chat::0003")]
    tried_bad = [keys for _, keys in store.attempts if ("+15555550123", "profile") in keys]
    assert len(tried_bad) == 2                  # in its batch, then alone to find it
    stats = writer.statistics()
    assert (stats.written, stats.failed, stats.retries, stats.pending) == (4, 1, 0, 0)
    [record] = [r for r in caplog.records if r.getMessage() == "store refused item, dropped"]
    assert record.levelno == logging.ERROR
    assert (vars(record)["pk"], vars(record)["sk"]) == ("+1555***0123", "profile")
    assert "Secretname" not in caplog.text
    assert "+15555550123" not in caplog.text


async def test_a_backend_bug_costs_the_item_not_the_process(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    store = FakeStore()
    store.bug.add(("CA1", "chat::0001"))
    writer = WriteBehind(store)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            for n in range(3):
                writer.submit(chat("CA1", n), call_sid="CA1")
            assert await writer.flush(timeout_s=1.0)
            nursery.cancel_scope.cancel(reason="test over")
    assert store.written == [("CA1", "chat::0000"), ("CA1", "chat::0002")]
    assert writer.statistics().failed == 1
    [record] = [r for r in caplog.records if r.name == LOGGER]
    assert record.exc_info is not None
    assert vars(record)["error"] == "TypeError"


async def test_flush_times_out_while_the_store_is_down(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    store = FakeStore()
    store.down = True
    writer = WriteBehind(store)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            writer.submit(chat("CA1", 0), call_sid="CA1")
            writer.submit(chat("CA2", 0), call_sid="CA2")
            writer.submit(chat("CA1", 1), call_sid="CA1")
            assert not await writer.flush("CA1", timeout_s=2.0)
            assert trio.current_time() == pytest.approx(2.0)
            assert not await writer.flush(timeout_s=1.0)
            assert trio.current_time() == pytest.approx(3.0)
            nursery.cancel_scope.cancel(reason="test over")
    timeouts = [r for r in caplog.records if r.getMessage() == "store flush timed out"]
    assert [(vars(r)["pending"], vars(r)["scope"]) for r in timeouts] == [
        (2, "call"), (3, "all")]
    assert writer.statistics().pending == 3
    assert store.written == []


async def test_flush_for_one_call_waits_only_up_to_its_own_items(
        autojump_clock: trio.testing.MockClock) -> None:
    store = FakeStore(latency_s=1.0)
    writer = WriteBehind(store)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            assert await writer.flush("CA-none", timeout_s=1.0)   # nothing queued for it
            assert await writer.flush(timeout_s=1.0)
            assert trio.current_time() == 0.0
            writer.submit(chat("CA-A", 0), call_sid="CA-A")
            for n in range(30):
                writer.submit(chat("CA-B", n), call_sid="CA-B")
            assert await writer.flush("CA-A", timeout_s=5.0)
            assert trio.current_time() == pytest.approx(1.0)       # the first batch only
            assert writer.statistics().pending == 6
            assert await writer.flush("CA-B", timeout_s=5.0)
            assert trio.current_time() == pytest.approx(2.0)
            nursery.cancel_scope.cancel(reason="test over")
    assert [len(batch) for batch in store.batches] == [BATCH_LIMIT, 6]


async def test_submit_copies_the_item_and_checks_its_keys(
        autojump_clock: trio.testing.MockClock) -> None:
    store = FakeStore()
    writer = WriteBehind(store)
    item = chat("CA1", 0, chat={"role": "user", "content": [{"text": "hi"}]})
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            writer.submit(item, call_sid="CA1")
            item["chat"]["content"][0]["text"] = "changed later"
            with pytest.raises(ValueError, match="pk"):
                writer.submit({"sk": "x"}, call_sid="CA1")
            assert await writer.flush(timeout_s=1.0)
            nursery.cancel_scope.cancel(reason="test over")
    assert store.items[("CA1", "chat::0000")]["chat"]["content"] == [{"text": "hi"}]
    assert writer.statistics().written == 1


async def test_items_submitted_before_run_starts_are_written(
        autojump_clock: trio.testing.MockClock) -> None:
    store = FakeStore()
    writer = WriteBehind(store)
    writer.submit(chat("CA1", 0), call_sid="CA1")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            assert await writer.flush(timeout_s=1.0)
            nursery.cancel_scope.cancel(reason="test over")
    assert store.written == [("CA1", "chat::0000")]


async def test_only_one_drainer_may_run(autojump_clock: trio.testing.MockClock) -> None:
    writer = WriteBehind(FakeStore())
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            with pytest.raises(RuntimeError, match="already running"):
                await writer.run()
            nursery.cancel_scope.cancel(reason="test over")


async def test_a_lingering_batch_gathers_items_from_many_calls(
        autojump_clock: trio.testing.MockClock) -> None:
    store = FakeStore()
    writer = WriteBehind(store, linger_s=0.05)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            for n in range(10):                   # ten calls' turns, 12 ms apart
                writer.submit(chat(f"CA{n}", 0), call_sid=f"CA{n}")
                await trio.sleep(0.012)
            await trio.sleep(0.2)
            nursery.cancel_scope.cancel(reason="test over")
    assert [len(batch) for batch in store.batches] == [5, 5]   # not ten writes of one
    assert writer.statistics().written == 10


async def test_a_flush_does_not_wait_for_the_linger(
        autojump_clock: trio.testing.MockClock) -> None:
    store = FakeStore()
    writer = WriteBehind(store, linger_s=10.0)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            writer.submit(chat("CA1", 0), call_sid="CA1")
            await trio.sleep(1.0)
            assert store.batches == []             # lingering: nothing written yet
            assert await writer.flush("CA1", timeout_s=1.0)
            assert trio.current_time() == pytest.approx(1.0)
            writer.submit(chat("CA1", 1), call_sid="CA1")
            writer.submit(chat("CA2", 0), call_sid="CA2")
            assert await writer.flush(timeout_s=1.0)
            assert trio.current_time() == pytest.approx(1.0)
            nursery.cancel_scope.cancel(reason="test over")
    assert [len(batch) for batch in store.batches] == [1, 2]


async def test_an_urgent_item_is_written_without_lingering(
        autojump_clock: trio.testing.MockClock) -> None:
    store = FakeStore()
    writer = WriteBehind(store, linger_s=10.0)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            writer.submit(chat("CA1", 0), call_sid="CA1", urgent=True)
            await trio.sleep(0.001)
            assert store.written == [("CA1", "chat::0000")]
            writer.submit(chat("CA1", 1), call_sid="CA1")
            await trio.sleep(1.0)
            assert len(store.written) == 1          # an ordinary item lingers again
            nursery.cancel_scope.cancel(reason="test over")


def session(call_sid: str, token: str) -> Item:
    return {"pk": call_sid, "sk": "connection", "token": token}


async def test_write_now_goes_ahead_of_a_backlog(autojump_clock: trio.testing.MockClock
                                                 ) -> None:
    """A session must be readable by another process when its webhook answers, however long
    the queue of other calls' writes is; those stay queued, in order."""
    store = FakeStore(latency_s=0.01)
    writer = WriteBehind(store)
    for n in range(100):
        writer.submit(chat(f"CA{n}", 0), call_sid=f"CA{n}")
    with trio.fail_after(60):
        started = trio.current_time()
        assert await writer.write_now(session("CAnew", "t1"), call_sid="CAnew", timeout_s=2.0)
        assert trio.current_time() - started == pytest.approx(0.01)     # one round trip
    assert store.written == [("CAnew", "connection")]
    assert writer.statistics().pending == 100
    assert writer.statistics().written == 1


async def test_write_now_queues_behind_a_write_of_the_same_call(
        autojump_clock: trio.testing.MockClock) -> None:
    """A renewed session must not land before the call's older session write still queued,
    which would then overwrite it."""
    store = FakeStore()
    writer = WriteBehind(store)
    writer.submit(session("CA1", ""), call_sid="CA1", urgent=True)       # the claim, queued
    with trio.fail_after(60):
        assert not await writer.write_now(session("CA1", "t2"), call_sid="CA1", timeout_s=2.0)
        assert store.written == []
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            assert await writer.flush("CA1", timeout_s=10)
            nursery.cancel_scope.cancel(reason="test over")
    assert store.items[("CA1", "connection")]["token"] == "t2"           # the newest won


async def test_write_now_unordered_goes_ahead_of_the_call_s_own_writes(
        autojump_clock: trio.testing.MockClock) -> None:
    """A socket's "closed" mark tells another process at once that the call's writes are on
    their way, so it must not wait behind them; it has a key none of them touches."""
    store = FakeStore()
    writer = WriteBehind(store)
    writer.submit(chat("CA1", 0), call_sid="CA1")
    mark = {"pk": "CA1", "sk": "socketClosed::000000"}
    with trio.fail_after(60):
        assert await writer.write_now(mark, call_sid="CA1", timeout_s=2.0, ordered=False)
    assert store.written == [("CA1", "socketClosed::000000")]
    assert writer.queued("CA1")
    assert writer.statistics().pending == 1


async def test_write_now_leaves_a_stalled_or_down_store_to_the_queue(
        autojump_clock: trio.testing.MockClock) -> None:
    store = FakeStore(latency_s=30.0)                                    # a stalled request
    writer = WriteBehind(store, jitter=lambda: 1.0)
    with trio.fail_after(60):
        started = trio.current_time()
        assert not await writer.write_now(session("CA1", "t1"), call_sid="CA1", timeout_s=2.0)
        assert trio.current_time() - started == pytest.approx(2.0)
        assert writer.statistics().pending == 1                          # queued instead
        store.latency_s, store.down = 0.0, True
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await trio.testing.wait_all_tasks_blocked()        # its attempt failed
            assert writer.statistics().store_down
            tried = len(store.attempts)
            started = trio.current_time()
            assert not await writer.write_now(session("CA2", "t2"), call_sid="CA2",
                                              timeout_s=2.0)
            assert trio.current_time() == started                      # no attempt, no wait
            assert len(store.attempts) == tried
            store.down = False
            assert await writer.flush(timeout_s=30)
            nursery.cancel_scope.cancel(reason="test over")
    assert store.items[("CA1", "connection")]["token"] == "t1"
    assert store.items[("CA2", "connection")]["token"] == "t2"


async def test_write_now_queues_an_item_the_store_failed(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    store = FakeStore()
    store.down = True                                  # the queue has not noticed yet
    writer = WriteBehind(store)
    with trio.fail_after(60), caplog.at_level(logging.WARNING, LOGGER):
        assert not await writer.write_now(session("CA1", "t1"), call_sid="CA1", timeout_s=2.0)
    assert writer.statistics().pending == 1
    assert messages(caplog) == ["store write ahead of the queue failed; queued instead"]


async def test_write_now_cancelled_from_outside_still_queues_the_item(
        autojump_clock: trio.testing.MockClock) -> None:
    """The webhook's request may be cancelled mid-write (its client went away): the session
    it had minted must still reach the store."""
    store = FakeStore(latency_s=5.0)
    writer = WriteBehind(store)
    with trio.move_on_after(1.0):
        await writer.write_now(session("CA1", "t1"), call_sid="CA1", timeout_s=2.0)
    assert writer.statistics().pending == 1
    store.latency_s = 0.0
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            assert await writer.flush(timeout_s=10)
            nursery.cancel_scope.cancel(reason="test over")
    assert store.items[("CA1", "connection")]["token"] == "t1"


async def test_write_decided_is_the_store_s_answer_or_left_to_the_queue_on_its_condition(
        autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """A session's mint, claim or renewal is the store's to decide: the first write of a
    version wins and the next is told it lost. One the store does not answer in time is
    queued, undecided, and written later on the same condition: it never lands over the
    one another process had decided meanwhile."""
    store = MemoryStore()
    writer = WriteBehind(store, jitter=lambda: 1.0)
    strict = Version("version", strict=True)

    def minted(token: str, version: int = 0) -> Item:
        return {"pk": "CA1", "sk": "connection", "token": token, "version": version}

    with trio.fail_after(60):
        assert await writer.write_decided(minted("a"), call_sid="CA1", timeout_s=2.0,
                                          version=strict)
        assert not await writer.write_decided(minted("b"), call_sid="CA1", timeout_s=2.0,
                                              version=strict)
        real_put = store.put_if_newer

        async def stalled(*args: Any, **kwargs: Any) -> bool:
            await trio.sleep(30.0)
            return await real_put(*args, **kwargs)

        monkeypatch.setattr(store, "put_if_newer", stalled)
        started = trio.current_time()
        assert await writer.write_decided(minted("c", 2), call_sid="CA1", timeout_s=2.0,
                                          version=strict) is None
        assert trio.current_time() - started == pytest.approx(2.0)
        monkeypatch.setattr(store, "put_if_newer", real_put)
        assert await store.put_if_newer(minted("d", 2), "version")     # another process
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            assert await writer.flush(timeout_s=10)
            nursery.cancel_scope.cancel(reason="test over")
    assert store.items[("CA1", "connection")]["token"] == "d"
    stats = writer.statistics()
    assert (stats.undecided, stats.pending, stats.failed) == (1, 0, 0)


async def test_an_item_is_written_as_it_was_submitted_whatever_its_maker_changes_after(
        autojump_clock: trio.testing.MockClock) -> None:
    """The queue's copy is the only one: ``History.take_sealed`` hands over its own messages
    (it replaces a message, never changes one), so nothing the call still holds may reach
    the store's thread through the queue."""
    store = FakeStore()
    writer = WriteBehind(store, jitter=lambda: 1.0)
    message = {"role": "user", "content": [{"text": "open today?"}]}
    item = chat("CA1", 1, chat=message, generated=["open"])
    writer.submit(item, call_sid="CA1")
    message["content"][0]["text"] = "changed"
    item["generated"].append("changed")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            assert await writer.flush(timeout_s=5.0)
            nursery.cancel_scope.cancel(reason="test over")
    written = store.items[("CA1", "chat::0001")]
    assert written["chat"] == {"role": "user", "content": [{"text": "open today?"}]}
    assert written["generated"] == ["open"]


async def test_an_item_over_dynamodbs_limit_is_still_refused_by_the_store_it_is_queued_for(
        tmp_path: Path) -> None:
    """The queue measures each item as it takes it; the store's 400 KB check is still the
    store's, and refuses what DynamoDB would (SQLite itself would take it)."""
    over = {"pk": "CA1", "sk": "chat::0001", "text": "é" * (MAX_ITEM_BYTES // 2)}
    fine = {"pk": "CA1", "sk": "chat::0002", "text": "é" * (MAX_ITEM_BYTES // 4)}
    assert item_size(fine) < MAX_ITEM_BYTES < item_size(over)
    with trio.fail_after(30):
        async with (open_sqlite_store(tmp_path / "voiceagent.db",
                                      limiter=trio.CapacityLimiter(1)) as store,
                    trio.open_nursery() as nursery):
            writer = WriteBehind(store, jitter=lambda: 1.0)
            await nursery.start(writer.run)
            writer.submit(over, call_sid="CA1")
            writer.submit(fine, call_sid="CA1")
            assert await writer.flush(timeout_s=20.0)
            stored = [item["sk"] for item in await store.query("CA1", "chat::")]
            nursery.cancel_scope.cancel(reason="test over")
    assert stored == ["chat::0002"]
    assert writer.statistics().failed == 1
