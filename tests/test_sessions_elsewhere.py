"""A socket that a balancer sends to another process than the one that answered its signed
``/twiml``: that process writes the session behind, so the socket can arrive first. Measured
with two processes at 1000 calls (``bench_latency.py --shape gate-barge --workers 2``), 290
calls were refused with "unknown session" before this; each process here is a ``Sessions``
with its own write-behind queue over one shared store, on the virtual clock."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, cast

import pytest
import trio

import voiceagent.store.records as records
from actors.call import CallRejected
from tests.fakes import MemoryStore, setup_frame
from voiceagent.app.sessions import MINTED_ELSEWHERE_WAITS_S, Sessions
from voiceagent.catalog import Catalog
from voiceagent.relay.protocol import Setup, parse_frame
from voiceagent.settings import Settings
from voiceagent.store.base import Store
from voiceagent.store.write_behind import WriteBehind
from voiceagent.tools.registry import ToolRegistry
from voiceagent.usecases import UseCase

CALL_SID = "CA" + "7" * 32
USE_CASE = UseCase(name="elsewhereUseCase", prompt="Be brief. <<USER_CONTEXT>>",
                   relay={"welcomeGreeting": "Hello from elsewhere."})


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.session_reads = 0

    async def get(self, pk: str, sk: str) -> dict[str, Any] | None:
        if sk == records.SESSION_SK:
            self.session_reads += 1
        return await super().get(pk, sk)


def _process(store: CountingStore) -> tuple[Sessions, WriteBehind]:
    writer = WriteBehind(cast(Store, store), jitter=lambda: 1.0)
    settings = Settings.model_validate({"STACK_USE_CASE": USE_CASE.name})
    sessions = Sessions(settings=settings, store=cast(Store, store),
                        catalog=Catalog(cast(Store, store), ToolRegistry()), writer=writer)
    return sessions, writer


def _setup(token: str) -> Setup:
    frame = parse_frame(json.dumps(setup_frame(CALL_SID, token)))
    assert isinstance(frame, Setup)
    return frame


async def _store_with_use_case() -> CountingStore:
    store = CountingStore()
    await store.put(records.use_case_item(USE_CASE))
    return store


async def test_a_socket_that_beats_the_session_write_waits_for_it(autojump_clock: Any) -> None:
    store = await _store_with_use_case()
    a, a_writer = _process(store)
    b, _ = _process(store)
    session = await a.prepare({"CallSid": CALL_SID, "From": "+15555550100",
                               "To": "+15555550199"})
    assert await store.get(CALL_SID, records.SESSION_SK) is None    # still behind, on A
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            async def a_writes_after(delay: float) -> None:
                await trio.sleep(delay)
                await nursery.start(a_writer.run)

            nursery.start_soon(a_writes_after, 0.3)
            started = trio.current_time()
            plan = await b.resolve(_setup(session.token))
            waited = trio.current_time() - started
            nursery.cancel_scope.cancel()
    assert plan.call_sid == CALL_SID
    assert plan.system_prompt == session.system_prompt          # A's session, not rebuilt
    assert plan.greeting == "Hello from elsewhere."
    assert 0.3 <= waited <= sum(MINTED_ELSEWHERE_WAITS_S)
    with pytest.raises(CallRejected, match="already connected"):   # claimed: B holds it
        await b.resolve(_setup(session.token))


async def test_a_call_nobody_prepared_is_refused_after_a_bounded_wait(
        autojump_clock: Any) -> None:
    store = await _store_with_use_case()
    b, _ = _process(store)
    started = trio.current_time()
    with trio.fail_after(10), pytest.raises(CallRejected, match="none in the store after"):
        await b.resolve(_setup("guessed"))
    assert trio.current_time() - started == pytest.approx(sum(MINTED_ELSEWHERE_WAITS_S))
    assert store.session_reads == len(MINTED_ELSEWHERE_WAITS_S) + 1


async def test_a_renewed_token_is_awaited_and_a_wrong_one_still_refused(
        autojump_clock: Any) -> None:
    """Twilio's reconnect gets a fresh token from ``/action`` on one process while the store
    still holds the used session (token spent) written by another."""
    store = await _store_with_use_case()
    a, a_writer = _process(store)
    b, _ = _process(store)
    session = await a.prepare({"CallSid": CALL_SID, "From": "+15555550100",
                               "To": "+15555550199"})
    await store.put(records.session_item(replace(session, token=""), 3600))   # claimed once
    renewed = await a.renew(session)
    with trio.fail_after(10):
        with pytest.raises(CallRejected, match="does not match"):
            await b.resolve(_setup(session.token))                  # the spent one
        async with trio.open_nursery() as nursery:
            async def a_writes_after(delay: float) -> None:
                await trio.sleep(delay)
                await nursery.start(a_writer.run)

            nursery.start_soon(a_writes_after, 0.5)
            plan = await b.resolve(_setup(renewed.token))
            nursery.cancel_scope.cancel()
    assert plan.call_sid == CALL_SID
