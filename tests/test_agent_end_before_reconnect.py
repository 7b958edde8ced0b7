"""A relay session that fails after the agent took ``end`` is answered with that end, never
resumed, also when ``/action``'s first look at the store cannot see the end yet: the
process that served the socket still holds its ``relayEnded`` mark in its write-behind queue
(``/action`` reached another process), or its writer takes ``end`` while the renewal waits
for the socket to wind down. The renewal waits for the old socket's writes anyway; the end
is looked for again once they are in, before a token is minted."""

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
    _prepare_on,
    _setup,
    _two_processes,
)
from voiceagent.app.relay_answers import RelayAnswers
from voiceagent.app.socket_marks import AgentEnded
from voiceagent.settings import Settings
from voiceagent.store.base import Store
from voiceagent.store.write_behind import WriteBehind

HANDOFF = json.dumps({"handoff": True, "reasonCode": "live-agent-handoff"})
SESSION_ID = "VX" + "a" * 32


async def _drains_after(writer: WriteBehind, delay_s: float) -> None:
    await trio.sleep(delay_s)
    await writer.run()


def _answers(store: Any, writer: WriteBehind) -> RelayAnswers:
    return RelayAnswers(settings=Settings(), store=cast(Store, store), writer=writer)


async def test_an_end_still_queued_on_the_socket_s_process_is_not_reconnected(
        autojump_clock: Any) -> None:
    """The agent handed off on A; its ``end`` was lost and Twilio's ``/action`` (failed)
    reaches B while A's queue is a second behind: B's claim finds no ``relayEnded`` yet,
    and the renewal, which waits for A's last writes, must not then mint a token."""
    store, a, a_writer, b = await _two_processes()
    b_writer = WriteBehind(cast(Store, store), jitter=lambda: 1.0)
    with trio.fail_after(30):
        claimed = await _claimed_on_a(store, a, a_writer)
        _answers(store, a_writer).agent_ended(CALL_SID, HANDOFF)   # A's writer took end
        await _a_socket_ends(a, a_writer, ["a person please", "Connecting you."],
                             behind_s=1.0)
        await _answers(store, b_writer).answer_failure(CALL_SID, SESSION_ID, 0)   # claimed
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drains_after, a_writer, 1.0)
            with pytest.raises(AgentEnded) as ended:
                await b.renew(claimed)
            nursery.cancel_scope.cancel()
    assert ended.value.handoff_data == HANDOFF
    item = await store.get(CALL_SID, records.SESSION_SK)
    assert item is not None
    assert (item["generation"], item["token"]) == (0, "")      # no token minted


async def test_an_end_taken_while_the_renewal_waits_here_is_not_reconnected(
        autojump_clock: Any) -> None:
    """Twilio failed the session before this process saw its socket close, and the call's
    writer takes ``end`` (a goodbye) in the meantime: the renewal, waiting for the socket
    here to wind down, must answer that end rather than resume the call."""
    store, a, a_writer, _ = await _two_processes()
    with trio.fail_after(30):
        session = await _prepare_on(a)
        await a.resolve(_setup(session.token))
        answers = _answers(store, a_writer)

        async def goodbye_then_socket_ends() -> None:
            await trio.sleep(0.2)
            answers.agent_ended(CALL_SID, None)
            a.socket_closed(CALL_SID)
            await _a_socket_ends(a, a_writer, ["bye"])

        async with trio.open_nursery() as nursery:
            await nursery.start(a_writer.run)
            await answers.answer_failure(CALL_SID, SESSION_ID, 0)     # nothing ended yet
            nursery.start_soon(goodbye_then_socket_ends)
            with pytest.raises(AgentEnded) as ended:
                await a.renew(session)
            nursery.cancel_scope.cancel()
    assert ended.value.handoff_data == ""
