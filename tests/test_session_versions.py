"""A session's writes never go back a generation, whichever process's queue lands last.

Found by a review helper (helper-25): process A served a call while DynamoDB throttled A's
writes, so A's claim of the session (token spent) waited in A's queue, and so did the
"closed" mark A writes when its queue is behind (``write_now`` queued everything while the
queue backed off). The socket failed; ``/action`` on B read the session (token still there)
and no mark, took it that no socket had claimed the call, and renewed it at once. When A's
backoff ended, A's stale claim (generation 0, no token) overwrote B's renewal: the
reconnect's socket was refused on any third process, and the reconnect count went back to 0.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

import trio

import voiceagent.store.records as records
from actors.messages import Setup
from tests.sessions_support import sessions_on, setup_message
from tests.test_sessions_elsewhere import USE_CASE, CountingStore, _store_with_use_case
from voiceagent.app.sessions import Sessions
from voiceagent.errors import StoreError
from voiceagent.store.base import Store
from voiceagent.store.write_behind import WriteBehind

CALL_SID = "CA" + "7" * 32


class ThrottledView:
    """Process A's view of the shared table: its writes fail while ``down`` (throttled);
    reads go through."""

    name = "throttled"

    def __init__(self, store: CountingStore) -> None:
        self._store = store
        self.down = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def _ok(self) -> None:
        await trio.lowlevel.checkpoint()
        if self.down:
            raise StoreError("ProvisionedThroughputExceededException (A's writes)")

    async def put(self, item: dict[str, Any]) -> None:
        await self.put_many([item])

    async def put_many(self, items: Any) -> None:
        await self._ok()
        for item in items:
            await self._store.put(item)

    async def put_unless_newer(self, item: dict[str, Any], version: str, *,
                               legacy: str | None = None) -> bool:
        await self._ok()
        return await self._store.put_unless_newer(item, version, legacy=legacy)

    async def put_if_newer(self, item: dict[str, Any], version: str, *,
                           legacy: str | None = None) -> bool:
        await self._ok()
        return await self._store.put_if_newer(item, version, legacy=legacy)


def _sessions_on(store: Any) -> tuple[Sessions, WriteBehind]:
    return sessions_on(store, USE_CASE.name)


def _setup(token: str) -> Setup:
    return setup_message(CALL_SID, token)


async def _three_processes() -> tuple[CountingStore, ThrottledView, tuple[Sessions, WriteBehind],
                                     Sessions, Sessions]:
    """A (its writes through a view that can be throttled), B and C over one store."""
    shared = await _store_with_use_case()
    view = ThrottledView(shared)
    return shared, view, _sessions_on(view), _sessions_on(shared)[0], _sessions_on(shared)[0]


async def _claimed_on_throttled_a(nursery: trio.Nursery, a: Sessions, a_writer: WriteBehind,
                                  view: ThrottledView) -> None:
    """A prepared the call; then DynamoDB throttles A, and the call's socket claims it on
    A: the claim waits in A's queue."""
    await nursery.start(a_writer.run)
    session = await a.prepare({"CallSid": CALL_SID, "From": "+15555550100",
                               "To": "+15555550199"})
    assert await a_writer.flush(timeout_s=1)             # connectionSeen landed
    view.down = True
    await a.resolve(_setup(session.token))


async def _a_fails_then_b_renews(shared: CountingStore, view: ThrottledView, a: Sessions,
                                 a_writer: WriteBehind, b: Sessions,
                                 last: tuple[int, int, str]) -> records.CallSession:
    """A's socket hands its last words (at_ms, position, text) to A's throttled queue and
    fails; ``/action`` on B renews the session as B reads it; then A reaches the store
    again and drains. The renewal."""
    at_ms, seq, text = last
    a_writer.submit(records.chat_item(CALL_SID, at_ms, seq, {
        "role": "user", "content": [{"text": text}]}, {}, 3600), call_sid=CALL_SID)
    await a.socket_ended(CALL_SID)
    a.release(CALL_SID)
    item = await shared.get(CALL_SID, records.SESSION_SK)
    assert item is not None
    renewed, _ = await b.renew(records.session_from_item(item))
    view.down = False                                     # A reaches the store again
    assert await a_writer.flush(timeout_s=10)
    return renewed


async def test_a_claim_held_back_by_a_throttled_queue_never_undoes_the_renewal(
        autojump_clock: Any) -> None:
    shared, view, (a, a_writer), b, c = await _three_processes()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await _claimed_on_throttled_a(nursery, a, a_writer, view)
            await trio.sleep(3.0)
            view.down = False                             # over; A's queue still backs off
            assert a_writer.statistics().store_down
            a_writer.submit(records.chat_item(CALL_SID, 2_000, 1, {
                "role": "user", "content": [{"text": "hello?"}]}, {}, 3600),
                call_sid=CALL_SID)
            await a.socket_ended(CALL_SID)                # the socket failed
            a.release(CALL_SID)
            # the "closed" mark went ahead of the backed-off queue: B knows A is draining
            closed = records.socket_mark_sk(records.SOCKET_CLOSED_PREFIX, 0)
            assert await shared.get(CALL_SID, closed) is not None
            item = await shared.get(CALL_SID, records.SESSION_SK)
            assert item is not None
            (renewed, complete) = await b.renew(records.session_from_item(item))
            assert complete                               # it waited for A's last writes
            assert await a_writer.flush(timeout_s=10)
            nursery.cancel_scope.cancel()
        stored = await shared.get(CALL_SID, records.SESSION_SK)
        plan = await c.resolve(_setup(renewed.token))     # the reconnect's socket, on C
    assert stored is not None
    assert (stored["token"], stored["generation"]) == (renewed.token, 1)
    assert [m["content"][0]["text"] for m in plan.history] == ["hello?"]


async def test_a_claim_that_lands_after_a_renewal_is_dropped_not_written(
        autojump_clock: Any) -> None:
    """The same race with A cut off from the store until after B renewed (its "closed"
    mark lost too): B cannot know to wait for A, but A's claim, landing late, must not
    undo B's renewal; A's other writes still land."""
    shared, view, (a, a_writer), b, c = await _three_processes()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await _claimed_on_throttled_a(nursery, a, a_writer, view)
            renewed = await _a_fails_then_b_renews(shared, view, a, a_writer, b,
                                                   (2_000, 1, "hello?"))
            nursery.cancel_scope.cancel()
        stored = await shared.get(CALL_SID, records.SESSION_SK)
        plan = await c.resolve(_setup(renewed.token))
    assert stored is not None
    assert (stored["token"], stored["generation"]) == (renewed.token, 1)
    assert [m["content"][0]["text"] for m in plan.history] == ["hello?"]
    assert a_writer.statistics().failed == 0


BROKEN = [  # a toolUse whose next message is caller words, not its result: beyond repair
    (1_000, {"role": "assistant", "content": [
        {"toolUse": {"toolUseId": "tu_old", "name": "x", "input": {}}}]}),
    (1_001, {"role": "user", "content": [{"text": "old words"}]}),
]


async def test_a_set_aside_history_stays_set_aside_when_the_claim_is_superseded(
        autojump_clock: Any) -> None:
    """A reconnect on A (renewed there) sets a broken history aside and the call goes on
    afresh while A's writes are throttled (its claim queued: served on A's word); the socket
    fails and B renews the session before A's claim lands (then dropped as older). The
    set-aside was a field of that claim, so the next reconnect read the broken items again
    and threw the fresh conversation away with them (helper-28). It is a mark among the
    chat items now, in A's queue ahead of the fresh messages."""
    shared, view, (a, a_writer), b, c = await _three_processes()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(a_writer.run)
            minter, m_writer = _sessions_on(shared)          # /twiml answered elsewhere
            await nursery.start(m_writer.run)
            session = await minter.prepare({"CallSid": CALL_SID, "From": "+15555550100",
                                            "To": "+15555550199"})
            for at_ms, message in BROKEN:
                await shared.put(records.chat_item(CALL_SID, at_ms, 0, message, {}, 3600))
            first, _ = await a.renew(session)               # its socket never came
            view.down = True
            plan = await a.resolve(_setup(first.token))     # a renewal: resumes
            assert (plan.history, plan.history_after_ms) == ((), 1_001)
            renewed = await _a_fails_then_b_renews(shared, view, a, a_writer, b,
                                                   (5_000, 0, "fresh words"))
            nursery.cancel_scope.cancel()
        plan = await c.resolve(_setup(renewed.token))
    assert [m["content"][0].get("text") for m in plan.history] == ["fresh words"]


async def test_a_mint_that_lands_late_never_makes_its_spent_token_good_again(
        autojump_clock: Any) -> None:
    """``/twiml``'s session write timed out but DynamoDB applied it, so it was queued again;
    meanwhile the call's socket claimed the session (token spent). The queued mint, the same
    generation, landed after the claim: the spent token was good again (helper-28). A
    generation's claim now outranks its mint."""
    from tests.fakes import MemoryStore

    store = MemoryStore()
    writer = WriteBehind(cast(Store, store), jitter=lambda: 1.0)
    session = records.CallSession(
        call_sid=CALL_SID, token="minted", use_case=USE_CASE.name, system_prompt="p",
        model_id="m", caller="", called="", profile=None, greeting=None, created_at=1.0)
    claimed = records.session_item(replace(session, token=""), 3600)
    await store.put(claimed)
    writer.submit(records.session_item(session, 3600), call_sid=CALL_SID, urgent=True,
                  version=records.SESSION_VERSION)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            assert await writer.flush(timeout_s=5)
            nursery.cancel_scope.cancel()
    assert await store.get(CALL_SID, records.SESSION_SK) == claimed
