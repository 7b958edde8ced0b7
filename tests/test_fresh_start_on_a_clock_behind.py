"""A conversation that starts afresh after a set-aside stays after it in the store's key order,
whichever process's wall clock stamps it. A reconnect found the saved conversation beyond
repair and set it aside (a mark keyed at its last message's time, from that process's
clock); the fresh conversation's socket failed before it stored a word. The next reconnect
landed on a process whose clock was a few seconds behind: it found nothing after the mark,
so stamped its messages with its own clock alone, and they were keyed before the mark. The
reconnect after that (and the transcript) took them for part of the set-aside conversation:
the caller's words since were lost to the model."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio

import voiceagent.store.records as records
from actors.history import History
from tests.test_session_versions import BROKEN, _sessions_on, _setup
from tests.test_sessions_elsewhere import CALL_SID, _store_with_use_case

BEHIND_S = 3.0          # this process's clock, against the one that set the conversation aside


async def test_a_fresh_conversation_stays_after_the_set_aside_mark(
        autojump_clock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    now_s = 1_750_000_000.0
    monkeypatch.setattr(time, "time", lambda: now_s)
    ahead_ms = int((now_s + BEHIND_S) * 1000)
    store = await _store_with_use_case()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            minter, m_writer = _sessions_on(store)          # /twiml answered elsewhere
            await nursery.start(m_writer.run)
            session = await minter.prepare({"CallSid": CALL_SID, "From": "+15555550100",
                                            "To": "+15555550199"})
            # the process ahead set the broken conversation aside; nothing stored since
            for n, (_, message) in enumerate(BROKEN):
                await store.put(records.chat_item(CALL_SID, ahead_ms - 1_000 + n, n, message,
                                                  {}, 3600))
            await store.put(records.set_aside_item(CALL_SID, ahead_ms, 3600))
            here, writer = _sessions_on(store)
            await nursery.start(writer.run)
            plan = await here.resolve(_setup(session.token))
            assert plan.history == ()
            history = History()                         # as actors.call builds it
            history.keep_after(plan.history_after_ms)
            history.add_user_text("are you still there?")
            for seq, message, meta in history.take_sealed(final=True):
                await store.put(records.chat_item(CALL_SID, meta["at_ms"], seq, message, meta,
                                                  3600))
            nursery.cancel_scope.cancel()
    read, _ = records.readable_chat(await store.query(CALL_SID, records.CHAT_PREFIX))
    resumed = records.since_set_aside(read)             # what the next reconnect resumes
    assert [entry["chat"]["content"][0]["text"] for entry in resumed] == [
        "are you still there?"]
