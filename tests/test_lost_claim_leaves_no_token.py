"""A claim decided on a process's word and lost with that process must not leave its token
good in the store. A's socket claimed a session A minted while the store refused A's claim
(served on A's word, the claim queued); A stopped with it still queued (its drain's flush
timed out, or it crashed). The store held the mint, its token unspent, for SESSION_TTL_S
(a day): a replay of that socket's setup, on any process, claimed the call again and was
served the caller's prompt and conversation. A token now opens a socket only within
PENDING_TTL_S of its mint, here or read from the store, so a lost claim leaves it good that
long at most."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio

import voiceagent.app.session_claims as session_claims
import voiceagent.store.records as records
from actors.call import CallRejected
from tests.sessions_support import setup_message
from tests.test_sessions_elsewhere import CALL_SID, _prepare_on, _setup, _two_processes
from voiceagent.app.session_offers import PENDING_TTL_S

OTHER_SID = "CA" + "8" * 32


async def test_a_token_whose_claim_was_lost_opens_nothing_later(
        autojump_clock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """And the window is the socket's: one that reaches another process just inside it (a
    second call) is served, as it always was."""
    monkeypatch.setattr(session_claims, "SESSION_WRITE_S", 0.1)
    now_s = 1_750_000_000.0
    monkeypatch.setattr(time, "time", lambda: now_s)
    store, a, _a_writer, b = await _two_processes()     # A's queue is never drained: lost
    with trio.fail_after(30):
        session = await _prepare_on(a)                  # the mint is in the store
        store.throttled = True                          # A's claim is not decided in time:
        plan = await a.resolve(_setup(session.token))   # served on A's word, queued on A
        assert plan.generation == 0
        store.throttled = False                         # the store is back; A is gone
        item = await store.get(CALL_SID, records.SESSION_SK)
        assert item is not None
        assert item["token"] == session.token          # still unspent
        other = await a.prepare({"CallSid": OTHER_SID, "From": "+15555550101",
                                 "To": "+15555550199"})
        now_s += PENDING_TTL_S - 1                      # the other call's socket, just in time
        assert (await b.resolve(setup_message(OTHER_SID, other.token))).call_sid == OTHER_SID
        now_s += 2                                      # the replay comes later
        with pytest.raises(CallRejected, match="minted 121 s ago"):
            await b.resolve(_setup(session.token))
    item = await store.get(CALL_SID, records.SESSION_SK)
    assert item is not None
    assert item["token"] == session.token              # B claimed nothing
