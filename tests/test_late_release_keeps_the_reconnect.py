"""A socket's end lets go of its own claim only. Its call is renewable as soon as its last
messages are queued (``socket_ended``), but the socket lets go of the call (``release``) only
after waiting for those writes, FLUSH_TIMEOUT_S at most: with the store slow, the reconnect
that ``/action`` answered meanwhile could already have claimed the call here. That
``release`` took the new socket's claim away: a second failure was renewed without waiting
for the socket still connected (two sockets on one call), and the new socket's own end
marked nothing, so a reconnect elsewhere resumed without its last messages."""

from __future__ import annotations

from typing import Any, cast

import pytest
import trio

import voiceagent.store.records as records
from tests.fakes import FakeLLM
from tests.test_sessions_elsewhere import (
    CALL_SID,
    USE_CASE,
    _prepare_on,
    _process,
    _setup,
    _store_with_use_case,
)
from voiceagent.app.reconnect_outcomes import ReconnectOutcomes
from voiceagent.app.relay_answers import RelayAnswers
from voiceagent.app.runtime import Runtime
from voiceagent.app.sessions import SessionBusy
from voiceagent.app.socket_standing import SocketStanding
from voiceagent.catalog import Catalog
from voiceagent.settings import Settings
from voiceagent.store.base import Store
from voiceagent.tools.registry import ToolRegistry


async def _stored(store: Store) -> records.CallSession:
    """The call's session as ``/action`` reads it."""
    item = await store.get(CALL_SID, records.SESSION_SK)
    assert item is not None
    return records.session_from_item(item)


async def test_a_release_after_the_reconnect_claimed_leaves_the_reconnect_connected(
        autojump_clock: Any) -> None:
    store = await _store_with_use_case()
    sessions, writer = _process(store)
    settings = Settings.model_validate({"STACK_USE_CASE": USE_CASE.name})
    runtime = Runtime(settings=settings, store=cast(Store, store), llm=FakeLLM([]),
                      registry=ToolRegistry(), writer=writer,
                      catalog=Catalog(cast(Store, store), ToolRegistry()), sessions=sessions,
                      relay_answers=RelayAnswers(settings=settings, store=cast(Store, store),
                                                 writer=writer),
                      reconnects=ReconnectOutcomes(cast(Store, store)))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await nursery.start(sessions.run)
            first = SocketStanding(runtime)
            await first.claim(_setup((await _prepare_on(sessions)).token))
            first.socket_closed()
            await sessions.socket_ended(CALL_SID)   # its last messages queued, its flush on
            renewed, _ = await sessions.renew(await _stored(cast(Store, store)))
            second = SocketStanding(runtime)        # Twilio's reconnect lands here
            await second.claim(_setup(renewed.token))
            first.end()                             # the first socket's flush is over
            assert runtime.calls.active == 1
            with pytest.raises(SessionBusy):        # the reconnect's socket is connected
                await sessions.renew(await _stored(cast(Store, store)))
            second.socket_closed()
            await sessions.socket_ended(CALL_SID)
            assert await writer.flush(CALL_SID, timeout_s=5)
            second.end()
            nursery.cancel_scope.cancel()
    mark = records.socket_mark_sk(records.SOCKET_WRITTEN_PREFIX, renewed.generation)
    assert await store.get(CALL_SID, mark) is not None      # the second socket's end, marked
    assert runtime.calls.active == 0
