"""How many lines a store outage writes to the log (CloudWatch bills each one), through the
real write-behind queue in virtual time while calls keep writing: one line when it begins,
a summary with counts and the backlog each minute while it lasts, one when it ends. Before,
an outage of five minutes said nothing between its first failure and its recovery, and a
throttled store that failed every other batch wrote a failing/recovered pair per batch
(~8 lines a second measured at 300 calls)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytest
import trio
import trio.testing

import voiceagent.store.config_records as config_records
from tests.fakes import MemoryStore
from tests.test_write_behind import FakeStore, chat
from voiceagent.catalog import USE_CASE_TTL_S, Catalog
from voiceagent.errors import StoreError
from voiceagent.log_episodes import QUIET_S
from voiceagent.store.base import Item
from voiceagent.store.write_behind import WriteBehind
from voiceagent.tools.registry import ToolRegistry
from voiceagent.usecases import UseCase

LOGGER = "voiceagent.store.write_behind"
CALLS = 50


class Faulty(FakeStore):
    """``fault``: "down" (every attempt fails), "throttled" (every other one does: a
    throttled table lets some writes through) or None; ``errors``: raised first, in turn."""

    def __init__(self, fault: str | None, errors: Sequence[StoreError] = ()) -> None:
        super().__init__()
        self.fault = fault
        self.errors = list(errors)

    async def put_many(self, items: Sequence[Item]) -> None:
        if self.errors:
            self.attempts.append((trio.current_time(), []))
            raise self.errors.pop(0)
        self.down = self.fault == "down" or (
            self.fault == "throttled" and len(self.attempts) % 2 == 0)
        await super().put_many(items)


async def calls_writing(writer: WriteBehind, until: float) -> None:
    """CALLS calls, each handing the queue a message every 2 s (a turn's words)."""
    n = 0
    while trio.current_time() < until:
        for call in range(CALLS):
            writer.submit(chat(f"CA{call:032d}", n), call_sid=f"CA{call:032d}")
        n += 1
        await trio.sleep(2.0)


async def run_for(writer: WriteBehind, store: Faulty, *, fault_s: float) -> float:
    """Calls write for ``fault_s`` (the store failing), then a minute more (the store back);
    returns when the fault ended."""
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        nursery.start_soon(calls_writing, writer, fault_s + 60.0)
        await trio.sleep(fault_s)
        healed = trio.current_time()
        store.fault = None
        await trio.sleep(60.0 + QUIET_S)
        assert await writer.flush(timeout_s=60.0)
        nursery.cancel_scope.cancel(reason="test over")
    return healed


def lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.INFO]


async def test_five_minutes_down_is_a_begin_a_summary_a_minute_and_an_end(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    store = Faulty("down")
    writer = WriteBehind(store, jitter=lambda: 1.0)
    with trio.fail_after(1000):
        healed = await run_for(writer, store, fault_s=300.0)
    logged = lines(caplog)
    assert [r.getMessage() for r in logged] == [
        "store writes failing, retrying with backoff", *["store writes still failing"] * 4,
        "store writes recovered"]
    first, *summaries, end = logged
    assert vars(first)["reason"] == "fake store is down"
    backlog = [vars(s)["pending"] for s in summaries]
    assert backlog == sorted(backlog)                    # it grows, and says so
    assert backlog[0] >= CALLS * 30
    assert all(vars(s)["counts"]["StoreError"] >= 10 for s in summaries)  # each minute's
    assert vars(end)["counts"] == {"StoreError": len(store.attempts) - len(store.batches)}
    assert vars(end)["lasted_s"] == pytest.approx(healed, abs=5.0)
    assert vars(end)["pending"] < CALLS                  # the backlog was written
    assert len(store.written) == CALLS * len({sk for _, sk in store.written})


async def test_a_store_failing_every_other_batch_is_one_episode(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    """Throttling lets some writes through: the queue recovers and fails again every batch.
    Two minutes of it are one begin, two summaries and one end, not a pair per batch."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    store = Faulty("throttled")
    writer = WriteBehind(store, jitter=lambda: 1.0, linger_s=0.05)
    with trio.fail_after(1000):
        await run_for(writer, store, fault_s=125.0)
    failed = len(store.attempts) - len(store.batches)
    assert failed > 60                                   # a line each, and one more for each
    assert [r.getMessage() for r in lines(caplog)] == [  # recovery, before
        "store writes failing, retrying with backoff", "store writes still failing",
        "store writes still failing", "store writes recovered"]
    summary = lines(caplog)[1]
    assert vars(summary)["ok"] > 0                       # writes landed meanwhile too


async def test_the_failure_logged_in_full_is_the_first_of_each_kind(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    """A second kind of failure within one outage (throttled, then no answer) is logged
    too: what changed may be what the operator needs."""
    caplog.set_level(logging.INFO, logger=LOGGER)

    class NoAnswer(StoreError):
        pass

    store = Faulty(None, [StoreError("throttled"), StoreError("throttled"), NoAnswer("late")])
    writer = WriteBehind(store, jitter=lambda: 1.0)
    with trio.fail_after(100):
        await run_for(writer, store, fault_s=0.0)
    assert [(r.getMessage(), vars(r).get("error")) for r in lines(caplog)] == [
        ("store writes failing, retrying with backoff", "StoreError"),
        ("store writes failing, retrying with backoff", "NoAnswer"),
        ("store writes recovered", None)]
    assert vars(lines(caplog)[-1])["counts"] == {"StoreError": 2, "NoAnswer": 1}


async def test_lookups_served_from_the_cache_while_the_store_fails_are_counted(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    """Past its cache time a use case is read again at each lookup (each call, and each
    turn of the scripted model) and, while the store fails, served from the cache: a line
    each was ~8 a second at 300 calls. Three minutes of it: the first, a summary a minute,
    and a line when a read works again."""
    caplog.set_level(logging.INFO, logger="voiceagent.catalog")
    store = MemoryStore()
    await store.put(config_records.use_case_item(UseCase(name="cachedUseCase", prompt="Be brief.")))
    catalog = Catalog(store, ToolRegistry())
    await catalog.use_case("cachedUseCase")
    await trio.sleep(USE_CASE_TTL_S)
    real_get = store.get

    async def failing(pk: str, sk: str) -> Any:
        raise StoreError("dynamodb get: ThrottlingException")

    store.get = failing                                 # type: ignore[method-assign]
    for _ in range(180 * 5):                            # five lookups a second
        assert (await catalog.use_case("cachedUseCase")).prompt == "Be brief."
        await trio.sleep(0.2)
    store.get = real_get                                # type: ignore[method-assign]
    await catalog.use_case("cachedUseCase")
    logged = [r for r in caplog.records if r.name == "voiceagent.catalog"]
    assert [r.getMessage() for r in logged] == [
        "use case unreadable, using the cached one",
        *["use cases still unreadable, served from the cache"] * 2, "use cases read again"]
    assert vars(logged[0])["error"] == "dynamodb get: ThrottlingException"
    assert vars(logged[-1])["counts"] == {"cachedUseCase": 900}


async def test_sessions_written_ahead_of_the_queue_while_the_store_fails_are_counted(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    """Each call's session (and each socket's end mark) is tried ahead of the queue: while
    the store throttles, a line each time (two or more a call) said the same thing."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    store = Faulty("throttled")
    writer = WriteBehind(store, jitter=lambda: 1.0)
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            for n in range(100):                        # a call picked up every 0.5 s
                call_sid = f"CA{n:032d}"
                await writer.write_now({"pk": call_sid, "sk": "connection"},
                                       call_sid=call_sid, timeout_s=2.0)
                await trio.sleep(0.5)
            store.fault = None
            await trio.sleep(QUIET_S)
            assert await writer.flush(timeout_s=10)
            await trio.sleep(QUIET_S)
            nursery.cancel_scope.cancel(reason="test over")
    assert [r.getMessage() for r in lines(caplog)] == [
        "store write ahead of the queue failed; queued instead", "store writes recovered"]
    assert vars(lines(caplog)[-1])["counts"] == {"ahead_of_queue": 100}


async def test_a_process_stopping_mid_outage_logs_what_it_counted(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    writer = WriteBehind(Faulty("down"), jitter=lambda: 1.0)
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            nursery.start_soon(calls_writing, writer, 30.0)
            await trio.sleep(30.0)
            nursery.cancel_scope.cancel(reason="process stopping")
    assert [r.getMessage() for r in lines(caplog)] == [
        "store writes failing, retrying with backoff", "store writes still failing"]
    last = lines(caplog)[-1]
    assert vars(last)["stopping"] is True
    assert vars(last)["counts"]["StoreError"] > 5
    assert vars(last)["pending"] == CALLS * 15


async def test_the_failure_names_the_calls_whose_writes_failed(
        autojump_clock: trio.testing.MockClock, records: list[logging.LogRecord]) -> None:
    """A batch holds several calls' items, so its failure carried CallSid "-": an operator
    searching a call's CallSid for why its transcript was late did not find it. One call's
    batch is logged under its CallSid; several calls' name the first few."""
    failing = "store writes failing, retrying with backoff"
    store = Faulty(None, [StoreError("throttled")])
    writer = WriteBehind(store, jitter=lambda: 1.0)
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            writer.submit(chat("CA" + "7" * 32, 0), call_sid="CA" + "7" * 32)
            assert await writer.flush(timeout_s=60.0)
            await trio.sleep(QUIET_S)           # that episode over: the next is logged anew
            store.errors = [StoreError("throttled")]
            for call in range(CALLS):
                writer.submit(chat(f"CA{call:032d}", 0), call_sid=f"CA{call:032d}")
            assert await writer.flush(timeout_s=60.0)
            nursery.cancel_scope.cancel(reason="test over")
    alone, several = [vars(r) for r in records if r.getMessage() == failing]
    assert alone["call_sid"] == "CA" + "7" * 32
    assert "calls" not in alone
    assert several["call_sid"] == "-"
    assert several["calls"] == [f"CA{call:032d}" for call in range(5)]
    assert several["calls_in_batch"] == 25
