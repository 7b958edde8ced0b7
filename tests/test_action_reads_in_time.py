"""``/action``'s store reads end in time for Twilio (``app/action_reads``), on the virtual
clock, through the webhook itself (signed, as Twilio sends it).

What each path waited for with reads that hang or are slow, before: a goodbye reads nothing
(answered at once, ``test_goodbye_with_the_store_down``); a handoff reads the session and the
use case, each bounded by HANDOFF_READ_S (2 s) as long as the read can be cancelled, which
a SQLite read in its worker thread could not be: stuck behind the store's lock, the answer
waited for the lock; a reconnect flushed the call's writes (2.5 s), then read the session,
the use case (once this process's copy was over a minute old) and the relay session's marks
with no bound but the store client's (DynamoDB: 2 + 4 s a get, ~13 s a query; SQLite: its
lock): never answered with the store stalled, at 17 s with every read at 3.5 s.
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing

import voiceagent.store.records as store_records
from tests.settled_clock import jump_when_settled
from tests.test_reconnect_with_a_slow_store import (
    AUTH_TOKEN,
    FAILED,
    PUBLIC_URL,
    STORE_S,
    SlowStore,
    _outcomes,
    _post_action,
    _reconnect_token,
    _runtime,
    _slow_store,
    _socket_fails,
    claimed_here,
)
from tests.test_sessions_elsewhere import CALL_SID, USE_CASE, CountingStore
from voiceagent.app.action_reads import ANSWER_S, HELD_READ_S, READS_S, TWILIO_GIVES_UP_S
from voiceagent.app.relay_answers import RelayAnswers
from voiceagent.app.session_end import HANDOFF_READ_S
from voiceagent.app.sessions import Sessions
from voiceagent.app.web import SORRY
from voiceagent.catalog import USE_CASE_TTL_S, Catalog
from voiceagent.settings import Settings
from voiceagent.store import config_records
from voiceagent.store.base import Store
from voiceagent.store.sqlite import open_sqlite_store
from voiceagent.store.write_behind import WriteBehind
from voiceagent.tools.registry import ToolRegistry
from voiceagent.usecases import UseCase

pytestmark = pytest.mark.timeout(60)

STALLED_S = 3600.0               # a read that would answer an hour later: stalled


class ReadsSlower(SlowStore):
    """Writes take ``delay_s``; reads ``reads_s`` (0: as writes); ``stalled_sk``: a read of
    that sort key alone takes ``STALLED_S``."""

    def __init__(self) -> None:
        super().__init__()
        self.reads_s = 0.0
        self.stalled_sk = ""

    async def get(self, pk: str, sk: str) -> dict[str, Any] | None:
        await trio.sleep(STALLED_S if sk == self.stalled_sk else self.reads_s)
        return await CountingStore.get(self, pk, sk)

    async def query(self, pk: str, sk_prefix: str = "", **kw: Any) -> list[dict[str, Any]]:
        await trio.sleep(self.reads_s)
        return await CountingStore.query(self, pk, sk_prefix, **kw)


async def _reconnect(store: SlowStore, turn_slow: Any, *, idle_s: float = 0.0
                     ) -> tuple[float, int, str]:
    """A call's socket claims here, ``idle_s`` pass (the call goes on), ``turn_slow()``
    changes the store, the socket fails and Twilio asks ``/action``: how long the answer
    took, its status and body."""
    await store.put(config_records.use_case_item(USE_CASE))
    runtime = _runtime(store)
    sessions, writer = runtime.sessions, runtime.writer
    with trio.fail_after(2 * STALLED_S):
        async with trio.open_nursery() as nursery:
            await claimed_here(runtime, nursery)
            await trio.sleep(idle_s)
            turn_slow()
            await _socket_fails(sessions, writer)
            started = trio.current_time()
            status, answer = await _post_action(runtime, FAILED)
            answered_in = trio.current_time() - started
            nursery.cancel_scope.cancel()
    return answered_in, status, answer


def _apology(status: int, answer: str) -> None:
    assert status == 200, answer
    said = ET.fromstring(answer).find("Say")
    assert said is not None, answer
    assert said.text == SORRY


async def test_a_reconnect_with_the_store_stalled_is_the_apology_in_time(
        autojump_clock: Any, records: list[logging.LogRecord]) -> None:
    """Every read and write hangs: the session's read held the answer for ever."""
    store = SlowStore()

    def stall() -> None:
        store.delay_s = STALLED_S

    answered_in, status, answer = await _reconnect(store, stall)
    _apology(status, answer)
    assert answered_in == pytest.approx(READS_S)
    assert _outcomes(records) == ["refused_unavailable"]    # as with the store down
    unreadable = [r for r in records if r.getMessage() == "call session unreadable"]
    assert "did not answer the call session read in time" in vars(unreadable[0])["error"]


async def test_a_reconnect_past_the_use_case_s_cache_with_the_store_slow_is_answered_in_time(
        autojump_clock: Any, records: list[logging.LogRecord]) -> None:
    """A call over a minute long, every read and write at 3.5 s: the use case read again
    too (its copy here expired), and the answer went out at 17 s (2.5 s of flush, three reads,
    two writes given up on), after Twilio gave up. The marks' read is cut instead."""
    store = await _slow_store()

    def slow() -> None:
        store.delay_s = STORE_S

    answered_in, status, answer = await _reconnect(store, slow, idle_s=USE_CASE_TTL_S)
    assert answered_in < TWILIO_GIVES_UP_S
    assert answered_in == pytest.approx(READS_S)
    _apology(status, answer)
    assert _outcomes(records)[-1] == "refused_unavailable"


async def test_a_use_case_read_that_stalls_reconnects_with_the_copy_held_here(
        autojump_clock: Any, records: list[logging.LogRecord]) -> None:
    """The use case's read alone hangs (its copy here over a minute old): the reconnect
    goes on with that copy, as when the store refuses the read, not after Twilio gave up."""
    store = ReadsSlower()

    def stall_the_use_case() -> None:
        store.stalled_sk = "configuration"

    answered_in, status, answer = await _reconnect(store, stall_the_use_case,
                                                   idle_s=USE_CASE_TTL_S)
    assert _reconnect_token(status, answer)
    assert answered_in == pytest.approx(HELD_READ_S)     # the rest of the store answers
    assert _outcomes(records) == ["resumed"]
    assert any(r.getMessage().startswith("use case unreadable in time") for r in records)


async def test_the_old_socket_s_marks_are_read_no_later_than_the_renewal_leaves_time_for(
        autojump_clock: Any, records: list[logging.LogRecord]) -> None:
    """Reads at 3.6 s, writes at 1.9 s (each in time, nothing queued): the reads end at 9.7 s,
    the answer's mark at 11.6 s; the old socket's marks then had 1 s (12.6 s) and the
    renewal its 1.9 s: 14.5 s, past ANSWER_S, half a second from Twilio giving up."""
    store = ReadsSlower()

    def slow() -> None:
        store.delay_s, store.reads_s = 1.9, 3.6

    answered_in, status, answer = await _reconnect(store, slow)
    assert _reconnect_token(status, answer)
    assert answered_in == pytest.approx(ANSWER_S - 0.1)     # the marks cut at 12 s
    assert _outcomes(records) == ["resumed_partial"]


async def test_a_handoff_whose_sqlite_read_waits_for_the_lock_is_answered_in_time(
        mock_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    """A SQLite read waits in its worker thread for the store's lock (writes ahead of it,
    each up to the busy timeout): HANDOFF_READ_S cancelled nothing, and the handoff waited
    for the lock. The read is abandoned now (its thread keeps its limiter slot until it
    ends) and the call goes where the end's use case says."""
    jump_when_settled(mock_clock, monkeypatch)      # the setup's writes take no time
    handing_off = UseCase(name=USE_CASE.name, prompt=USE_CASE.prompt,
                          handoff={"mode": "dial", "number": "+15555550123"})
    settings = Settings.model_validate({
        "STACK_USE_CASE": USE_CASE.name, "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "PUBLIC_URL": PUBLIC_URL})
    with trio.fail_after(10 * STALLED_S):
        async with open_sqlite_store(tmp_path / "voiceagent.db",
                                     limiter=trio.CapacityLimiter(4)) as sqlite:
            store = cast(Store, sqlite)
            writer = WriteBehind(store, jitter=lambda: 1.0)
            catalog = Catalog(store, ToolRegistry())
            runtime = _runtime(SlowStore())
            runtime.store, runtime.writer, runtime.catalog = store, writer, catalog
            runtime.sessions = Sessions(settings=settings, store=store, catalog=catalog,
                                        writer=writer)
            runtime.relay_answers = RelayAnswers(settings=settings, store=store,
                                                 writer=writer)
            await store.put(config_records.use_case_item(handing_off))
            await catalog.use_case(USE_CASE.name)           # warm, as after its /twiml
            async with trio.open_nursery() as nursery:
                await nursery.start(writer.run)
                await runtime.sessions.prepare({"CallSid": CALL_SID, "From": "+15555550100",
                                                "To": "+15555550199"})
                assert await store.get(CALL_SID, store_records.SESSION_SK) is not None
                # a write holds the lock: taken once the write-behind's last one, which may
                # still be in its thread, lets go of it (the clock held till then)
                await trio.to_thread.run_sync(sqlite._lock.acquire)
                # from here a thread waiting for the lock lets the clock run, as it does
                monkeypatch.undo()
                mock_clock.autojump_threshold = 0
                released = trio.Event()

                async def write_done() -> None:
                    with trio.move_on_after(STALLED_S):
                        await released.wait()
                    sqlite._lock.release()

                nursery.start_soon(write_done)
                try:
                    started = trio.current_time()
                    status, answer = await _post_action(runtime, {
                        "CallSid": CALL_SID, "SessionId": "VX" + "b" * 32,
                        "SessionStatus": "ended", "CallStatus": "in-progress",
                        "HandoffData": f'{{"handoff": true, "useCase": "{USE_CASE.name}"}}'})
                    answered_in = trio.current_time() - started
                    assert sqlite._lock.locked()        # the read is still waiting for it
                finally:
                    mock_clock.autojump_threshold = math.inf    # the threads end, not time
                    released.set()
                nursery.cancel_scope.cancel()
    assert status == 200, answer
    assert [child.tag for child in ET.fromstring(answer)] == ["Say", "Dial"], answer
    assert answered_in == pytest.approx(HANDOFF_READ_S)
