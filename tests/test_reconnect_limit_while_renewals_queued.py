"""The reconnect limit while renewals wait in a queue. ``/action`` counted the reconnects by
the stored session's generation alone, but a renewal waits in its process's write-behind
queue behind the call's writes (a backed-up queue, a slow store), while the answer's
``relayAnswered`` mark goes straight to the store. Each reconnect whose token had not
landed then failed too (its socket found no such token), and the next ``/action``, here or
on another process, read generation 0 again and gave one more: past MAX_RECONNECTS, the
caller kept in a loop. Two processes (``Sessions`` with their own queues) over one store
whose queued writes are held on an Event, on the virtual clock."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import pytest
import trio

import voiceagent.store.config_records as config_records
import voiceagent.store.records as records
from tests.test_sessions_elsewhere import (
    CALL_SID,
    USE_CASE,
    CountingStore,
    _a_socket_ends,
    _claimed_on_a,
    _process,
)
from voiceagent.app.relay_answers import RelayAnswers
from voiceagent.app.sessions import MAX_RECONNECTS
from voiceagent.settings import Settings
from voiceagent.store.base import Store
from voiceagent.store.write_behind import WriteBehind


class HeldStore(CountingStore):
    """Writes wait for ``released`` once ``held``; ``put_new`` too when ``claims_held``."""

    def __init__(self) -> None:
        super().__init__()
        self.held = False
        self.claims_held = False
        self.released = trio.Event()

    async def _wait(self, held: bool) -> None:
        if held:
            await self.released.wait()

    async def put(self, item: dict[str, Any]) -> None:
        await self._wait(self.held)
        await super().put(item)

    async def put_many(self, items: Sequence[dict[str, Any]]) -> None:
        await self._wait(self.held)
        await super().put_many(items)

    async def put_unless_newer(self, item: dict[str, Any], version: str, *,
                               legacy: str | None = None) -> bool:
        await self._wait(self.held)
        return await super().put_unless_newer(item, version, legacy=legacy)

    async def put_if_newer(self, item: dict[str, Any], version: str, *,
                           legacy: str | None = None) -> bool:
        await self._wait(self.held)
        return await super().put_if_newer(item, version, legacy=legacy)

    async def put_new(self, item: dict[str, Any]) -> bool:
        await self._wait(self.claims_held)
        return await super().put_new(item)


async def _held_store() -> HeldStore:
    store = HeldStore()
    await store.put(config_records.use_case_item(USE_CASE))
    return store


@pytest.mark.parametrize("claims_held", [False, True], ids=["marks-land", "marks-queued"])
async def test_failed_reconnects_whose_renewals_are_queued_still_reach_the_limit(
        autojump_clock: Any, claims_held: bool) -> None:
    """Twilio's ``/action`` for each failed session, alternating between A (which served the
    socket) and B, each reading the session from the store as ``/action`` does. With the
    marks landing, both processes see every earlier answer; with them queued too (the store
    takes nothing), A still counts its own."""
    store = await _held_store()
    a, a_writer = _process(cast(CountingStore, store))
    b, b_writer = _process(cast(CountingStore, store))
    settings = Settings()

    def answers(writer: WriteBehind) -> RelayAnswers:
        return RelayAnswers(settings=settings, store=cast(Store, store), writer=writer)

    on = [(a, answers(a_writer)), (b, answers(b_writer))]
    counted: list[int] = []
    with trio.fail_after(120):
        await _claimed_on_a(store, a, a_writer)
        store.held, store.claims_held = True, claims_held
        async with trio.open_nursery() as nursery:
            await nursery.start(a_writer.run)
            await nursery.start(b_writer.run)
            await _a_socket_ends(a, a_writer, ["hello?"])        # queued behind the hold
            for n in range(MAX_RECONNECTS + 1):
                sessions, relay = on[0 if claims_held else n % 2]
                item = await store.get(CALL_SID, records.SESSION_SK)
                assert item is not None
                session = records.session_from_item(item)
                assert session.generation == 0                  # no renewal has landed
                reconnects = await relay.answer_failure(CALL_SID, f"VX{n}",
                                                        session.generation)
                counted.append(reconnects)
                if reconnects < MAX_RECONNECTS:     # given: its token waits in a queue
                    await sessions.renew(session, deadline=trio.current_time() + 1.0)
            nursery.cancel_scope.cancel()
    assert counted == list(range(MAX_RECONNECTS + 1))     # the last one is refused
