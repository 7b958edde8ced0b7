"""A relay session that fails after the agent took ``end`` is answered with that end also
when the process that served the socket, and now answers its ``/action``, still holds the
``relayEnded`` mark in its own write-behind queue (its store behind: ``/action``'s flush
timed out). The store shows no end yet, so only the queue here can tell."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest
import trio

import voiceagent.store.records as records
from tests.test_sessions_elsewhere import (
    CALL_SID,
    _a_socket_ends,
    _claimed_on_a,
    _two_processes,
)
from voiceagent.app.relay_answers import RelayAnswers
from voiceagent.app.socket_marks import AgentEnded
from voiceagent.settings import Settings
from voiceagent.store.base import Store

HANDOFF = json.dumps({"handoff": True, "reasonCode": "live-agent-handoff"})
SESSION_ID = "VX" + "b" * 32


async def test_an_end_queued_on_this_process_is_not_reconnected(autojump_clock: Any) -> None:
    """The agent handed off on A, its ``end`` was lost, and Twilio's ``/action`` (failed)
    comes back to A while A's queue cannot reach the store: no token may be minted."""
    store, a, a_writer, _ = await _two_processes()
    answers = RelayAnswers(settings=Settings(), store=cast(Store, store), writer=a_writer)
    with trio.fail_after(30):
        claimed = await _claimed_on_a(store, a, a_writer)
        answers.agent_ended(CALL_SID, HANDOFF)              # A's writer took end
        await _a_socket_ends(a, a_writer, ["a person please", "Connecting you."])
        assert not await a_writer.flush(CALL_SID, timeout_s=1.0)   # A's store is behind
        await answers.answer_failure(CALL_SID, SESSION_ID, 0)         # the store shows no end
        with pytest.raises(AgentEnded) as ended:
            await a.renew(claimed, deadline=trio.current_time() + 1.0)
    assert ended.value.handoff_data == HANDOFF
    assert a_writer.queued_item(CALL_SID, records.SESSION_SK) is None   # no token minted
