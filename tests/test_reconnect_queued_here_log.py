"""A reconnect whose old socket's writes are still queued on the process answering its
``/action`` (its store behind, the flush timed out) is resumed without them and counted
``resumed_partial``. That used to say nothing in the log, so a failure read from the log
alone showed a partial resume with no reason. Now the first one says why and what the caller
may hear, under its CallSid; the rest of a storm (a task dying with hundreds of calls, its
store stalled) are counted, not a line each."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import pytest
import trio

import voiceagent.store.records as records
from tests.sessions_support import setup_message
from tests.test_sessions_elsewhere import _process, _store_with_use_case
from voiceagent.app.sessions import Sessions
from voiceagent.log_episodes import QUIET_S
from voiceagent.logs import for_call
from voiceagent.store.write_behind import WriteBehind

SIDS = ["CA" + str(n) * 32 for n in range(1, 4)]
QUEUED = "reconnecting before the previous socket's last writes reached the store"


def _said_last(writer: WriteBehind, call_sid: str, text: str) -> None:
    """The call's last message, handed to the write-behind queue."""
    writer.submit(records.chat_item(call_sid, 1_000, 1, {
        "role": "assistant", "content": [{"text": text}]}, {}, 3600), call_sid=call_sid)


async def _a_call_whose_socket_failed(a: Sessions, writer: WriteBehind,
                                      call_sid: str) -> records.CallSession:
    """The call's socket claimed it here and ended, its claim and last message still queued
    (the queue is not draining): the session as ``/action`` then reads it."""
    session = await a.prepare({"CallSid": call_sid, "From": "+15555550100",
                               "To": "+15555550199"})
    await a.resolve(setup_message(call_sid, session.token))
    _said_last(writer, call_sid, "Your table is booked.")
    await a.socket_ended(call_sid)
    a.release(call_sid)
    return replace(session, token="")


async def test_a_reconnect_resumed_with_its_writes_queued_here_says_why_once_a_storm(
        autojump_clock: Any, records: list[logging.LogRecord]) -> None:
    store = await _store_with_use_case()
    a, writer = _process(store)
    with trio.fail_after(60):
        failed = [await _a_call_whose_socket_failed(a, writer, sid) for sid in SIDS]
        renewals = []
        for session in failed:
            with for_call(session.call_sid):
                renewals.append(await a.renew(session, deadline=trio.current_time() + 1.0))
        assert [renewal.history_complete for renewal in renewals] == [False] * 3
        lines = [r for r in records if r.getMessage().startswith(QUEUED)]
        assert len(lines) == 1                            # the storm's first, in full
        (line,) = lines
        assert line.levelno == logging.WARNING
        assert vars(line)["call_sid"] == SIDS[0]
        assert "resumed_partial" in line.getMessage()
        assert "may hear the agent ask or say it again" in line.getMessage()
        assert vars(line)["pending"] == writer.statistics().pending > 3   # the backlog
        assert "oldest_pending_s" in vars(line)
        async with trio.open_nursery() as nursery:        # the store takes the queue
            await nursery.start(writer.run)
            assert await writer.flush(timeout_s=5)
            nursery.cancel_scope.cancel()
        await trio.sleep(QUIET_S)
        with for_call(SIDS[0]):                           # a reconnect with nothing queued
            await a.renew(renewals[0].session, deadline=trio.current_time() + 1.0)
    ended = [r for r in records
             if r.getMessage() == "reconnects no longer find their calls' writes queued here"]
    assert len(ended) == 1
    assert vars(ended[0])["counts"] == {"queued": 3}      # the other two were counted
    assert [r for r in records if r.getMessage().startswith(QUEUED)] == [line]


async def test_a_reconnect_whose_deadline_the_wind_down_spent_logs_no_flush_timeout(
        autojump_clock: Any, records: list[logging.LogRecord]) -> None:
    """The socket here closed while its call wound down (a tool finishing) until just
    before the reconnect's deadline; its last writes are queued, the store behind. The flush
    of them had what was left of the deadline, nothing or a millisecond, and logged "store
    flush timed out" with ``timeout_s`` 0.0 or so: read as a store fault of its own, when
    the reconnect's time went to the wind-down. The line that says what the reconnect misses
    is the "queued" one, which follows."""
    store = await _store_with_use_case()
    a, writer = _process(store)
    call_sid = SIDS[0]
    with trio.fail_after(60), for_call(call_sid):
        session = await a.prepare({"CallSid": call_sid, "From": "+15555550100",
                                   "To": "+15555550199"})
        await a.resolve(setup_message(call_sid, session.token))
        a.socket_closed(call_sid)
        deadline = trio.current_time() + 5.0

        async def call_winds_down_until_just_before_the_deadline() -> None:
            await trio.sleep_until(deadline - 0.001)
            _said_last(writer, call_sid, "Your order is placed.")
            await a.socket_ended(call_sid)
            a.release(call_sid)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call_winds_down_until_just_before_the_deadline)
            renewal = await a.renew(session, deadline=deadline)
        assert trio.current_time() == pytest.approx(deadline)    # bounded by the deadline
    assert renewal.history_complete is False
    assert [r for r in records if r.getMessage() == "store flush timed out"] == []
    (line,) = [r for r in records if r.getMessage().startswith(QUEUED)]
    assert vars(line)["call_sid"] == call_sid
    assert writer.queued(call_sid)
