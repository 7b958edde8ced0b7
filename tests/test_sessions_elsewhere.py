"""A socket that a balancer sends to another process than the one that answered its signed
``/twiml``. With the session written behind, the socket got there first: two processes at
1000 calls (``bench_latency.py --shape gate-barge --workers 2``) refused 290 calls with
"unknown session". Now the webhook writes the session before it answers (ahead of the
queue), and the other process waits a bounded while for a session still queued (a stalled
store, a renewal behind the call's other writes). Each process here is a ``Sessions`` with
its own write-behind queue over one shared store, on the virtual clock.

Twilio's reconnect after a failed relay session is the same story the other way round: the
``/action`` may reach another process than the one whose socket failed, and that one's queue
may still hold the socket's last messages, which the resuming socket reads from the store."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar, cast

import pytest
import trio

import voiceagent.store.config_records as config_records
import voiceagent.store.records as records
from actors.call import CallPlan, CallRejected
from tests.fakes import MemoryStore
from tests.sessions_support import sessions_on, setup_message
from voiceagent.app.session_offers import PENDING_TTL_S
from voiceagent.app.sessions import (
    MINTED_ELSEWHERE_WAITS_S,
    SESSION_WRITE_S,
    SOCKET_CLOSED_GRACE_S,
    SessionBusy,
    Sessions,
)
from voiceagent.errors import StoreError
from voiceagent.relay.protocol import Setup
from voiceagent.settings import Settings
from voiceagent.store.base import Store
from voiceagent.store.write_behind import WriteBehind
from voiceagent.usecases import UseCase

T = TypeVar("T")
CALL_SID = "CA" + "7" * 32
USE_CASE = UseCase(name="elsewhereUseCase", prompt="Be brief. <<USER_CONTEXT>>",
                   relay={"welcomeGreeting": "Hello from elsewhere."})


class CountingStore(MemoryStore):
    """Counts reads of sessions and of sockets' end marks; ``stall_s``: how long each write
    hangs before it lands; ``throttled``: conditional writes (a session's) fail at once."""

    def __init__(self) -> None:
        super().__init__()
        self.session_reads = 0
        self.written_reads = 0
        self.closed_reads = 0
        self.stall_s = 0.0
        self.throttled = False

    async def get(self, pk: str, sk: str) -> dict[str, Any] | None:
        self.session_reads += sk == records.SESSION_SK
        self.written_reads += sk.startswith(records.SOCKET_WRITTEN_PREFIX)
        self.closed_reads += sk.startswith(records.SOCKET_CLOSED_PREFIX)
        return await super().get(pk, sk)

    async def put(self, item: dict[str, Any]) -> None:
        await trio.sleep(self.stall_s)
        await super().put(item)

    async def put_unless_newer(self, item: dict[str, Any], version: str, *,
                               legacy: str | None = None) -> bool:
        await trio.sleep(self.stall_s)
        return await super().put_unless_newer(item, version, legacy=legacy)

    async def put_if_newer(self, item: dict[str, Any], version: str, *,
                           legacy: str | None = None) -> bool:
        await trio.sleep(self.stall_s)
        if self.throttled:
            raise StoreError("ProvisionedThroughputExceededException")
        return await super().put_if_newer(item, version, legacy=legacy)


def _process(store: Any) -> tuple[Sessions, WriteBehind]:
    return sessions_on(store, USE_CASE.name)


def _setup(token: str) -> Setup:
    return setup_message(CALL_SID, token)


async def _store_with_use_case() -> CountingStore:
    store = CountingStore()
    await store.put(config_records.use_case_item(USE_CASE))
    return store


async def _two_processes() -> tuple[CountingStore, Sessions, WriteBehind, Sessions]:
    """A and B over one store; A's write-behind queue is returned, B's is never drained."""
    store = await _store_with_use_case()
    a, a_writer = _process(store)
    b, _ = _process(store)
    return store, a, a_writer, b


async def _prepare_on(a: Sessions) -> records.CallSession:
    return await a.prepare({"CallSid": CALL_SID, "From": "+15555550100",
                            "To": "+15555550199"})


async def _while_a_drains_after(a_writer: WriteBehind, delay_s: float,
                                work: Callable[[], Awaitable[T]]) -> tuple[T, float]:
    """``work`` (B's) while A's write-behind starts draining only after ``delay_s``; what
    it returned and how long it took."""
    async with trio.open_nursery() as nursery:
        async def a_drains() -> None:
            await trio.sleep(delay_s)
            await nursery.start(a_writer.run)

        nursery.start_soon(a_drains)
        started = trio.current_time()
        result = await work()
        waited = trio.current_time() - started
        nursery.cancel_scope.cancel()
    return result, waited


async def _resolve_while_a_drains_after(b: Sessions, a_writer: WriteBehind, token: str,
                                        delay_s: float) -> tuple[CallPlan, float]:
    return await _while_a_drains_after(a_writer, delay_s, lambda: b.resolve(_setup(token)))


async def test_the_session_is_in_the_store_when_the_webhook_answers(
        autojump_clock: Any) -> None:
    store, a, a_writer, b = await _two_processes()
    with trio.fail_after(10):
        session = await _prepare_on(a)                 # A's queue is not even draining
        assert a_writer.statistics().pending == 1      # connectionSeen, which no socket needs
        started = trio.current_time()
        plan = await b.resolve(_setup(session.token))
    assert trio.current_time() == started               # found at the first read
    assert store.session_reads == 1                     # B's one read (A's check: a query)
    assert plan.system_prompt == session.system_prompt  # A's session, not rebuilt
    assert plan.started_at == session.created_at > 0    # MAX_CALL_DURATION_S counts from it
    assert plan.greeting == "Hello from elsewhere."
    with pytest.raises(CallRejected, match="already connected"):   # claimed: B holds it
        await b.resolve(_setup(session.token))


async def test_a_socket_that_beats_a_stalled_session_write_waits_for_it(
        autojump_clock: Any) -> None:
    store, a, a_writer, b = await _two_processes()
    with trio.fail_after(10):
        store.stall_s = 60.0                           # the webhook's write hangs...
        started = trio.current_time()
        session = await _prepare_on(a)
        assert trio.current_time() - started == pytest.approx(SESSION_WRITE_S)
        assert await store.get(CALL_SID, records.SESSION_SK) is None   # ...so it is queued
        store.stall_s = 0.0
        plan, waited = await _resolve_while_a_drains_after(b, a_writer, session.token, 0.3)
    assert plan.call_sid == CALL_SID
    assert 0.3 <= waited <= sum(MINTED_ELSEWHERE_WAITS_S)


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
    """Twilio's reconnect gets a fresh token from ``/action`` on A while the store does not
    answer A's writes: the renewal is queued after SESSION_WRITE_S (the store decides it
    once back), so the reconnect that B gets waits for it. (The renewal first waits for the
    call's writes queued on A, to its deadline: FLUSH_TIMEOUT_S.)"""
    store, a, a_writer, b = await _two_processes()
    with trio.fail_after(20):
        session = await _prepare_on(a)
        store.stall_s = 60.0
        renewed, _ = await a.renew(session)
        store.stall_s = 0.0
        assert a_writer.statistics().undecided == 1
        with pytest.raises(CallRejected, match="does not match"):
            await b.resolve(_setup("not-a-token"))
        plan, waited = await _resolve_while_a_drains_after(b, a_writer, renewed.token, 0.5)
    assert plan.call_sid == CALL_SID
    assert 0.5 <= waited <= sum(MINTED_ELSEWHERE_WAITS_S)


async def _claimed_on_a(store: CountingStore, a: Sessions, a_writer: WriteBehind
                        ) -> records.CallSession:
    """A prepared the call and its socket claimed it there; A's claim has landed."""
    session = await _prepare_on(a)
    await a.resolve(_setup(session.token))
    async with trio.open_nursery() as nursery:
        await nursery.start(a_writer.run)
        await a_writer.flush(timeout_s=1)
        nursery.cancel_scope.cancel()
    item = await store.get(CALL_SID, records.SESSION_SK)
    assert item is not None
    assert item["token"] == ""
    return records.session_from_item(item)


async def _a_socket_ends(a: Sessions, a_writer: WriteBehind, texts: list[str], *,
                         behind_s: float = 0.0, dropped: tuple[int, ...] = ()) -> None:
    """A's socket hands its last messages to A's queue and ends, as ``run_call`` does.
    ``behind_s``: A's queue is that far behind (another call's write waits that long).
    ``dropped``: the positions (from 1) of messages a barge-in then cut away, whose items
    the history's tombstones write over."""
    if behind_s:
        other = "CA" + "1" * 32
        a_writer.submit(records.chat_item(other, 1_000, 0, {
            "role": "user", "content": [{"text": "another call"}]}, {}, 3600), call_sid=other)
        await trio.sleep(behind_s)
    for seq, text in enumerate(texts, start=1):
        a_writer.submit(records.chat_item(CALL_SID, 1_000 + seq, seq, {
            "role": "user" if seq % 2 else "assistant", "content": [{"text": text}]}, {},
            3600), call_sid=CALL_SID)
    for seq in dropped:
        a_writer.submit(records.chat_item(CALL_SID, 1_000 + seq, seq, {},
                                          {"at_ms": 1_000 + seq, "dropped": True}, 3600),
                        call_sid=CALL_SID)
    await a.socket_ended(CALL_SID)
    a.release(CALL_SID)


async def test_a_reconnect_resumes_without_a_message_a_barge_in_cut_away(
        autojump_clock: Any) -> None:
    """A stored reply that a later barge-in cut away is written over with a tombstone; the
    socket that resumes the call must not read it as something the caller heard (nor, with
    the next reply stored, as two assistant messages in a row, which start it afresh)."""
    store, a, a_writer, b = await _two_processes()
    with trio.fail_after(30):
        claimed = await _claimed_on_a(store, a, a_writer)
        await _a_socket_ends(a, a_writer, ["what are your hours?", "Eleven to ten.",
                                           "and Sunday?", "Closed on Sundays."], dropped=(4,))
        (renewed, complete), _ = await _while_a_drains_after(
            a_writer, 0.0, lambda: b.renew(claimed))
        assert complete
        plan = await b.resolve(_setup(renewed.token))
    assert [m["content"][0]["text"] for m in plan.history] == [
        "what are your hours?", "Eleven to ten.", "and Sunday?"]
    assert len(await store.query(CALL_SID, records.CHAT_PREFIX)) == 4    # the tombstone


async def test_a_reconnect_on_another_process_waits_for_the_old_socket_s_last_messages(
        autojump_clock: Any) -> None:
    """The socket on A failed; Twilio's ``/action`` reaches B while A's queue still holds
    the socket's last exchange. B renews only once A's "written" mark is in the store, so
    the socket that resumes the call (anywhere) reads the whole conversation."""
    store, a, a_writer, b = await _two_processes()
    with trio.fail_after(30):
        claimed = await _claimed_on_a(store, a, a_writer)
        await _a_socket_ends(a, a_writer, ["what are your hours?", "Eleven to ten."],
                             behind_s=1.0)
        assert await store.query(CALL_SID, records.CHAT_PREFIX) == []
        (renewed, complete), waited = await _while_a_drains_after(
            a_writer, 2.5, lambda: b.renew(claimed))
        assert complete
        saved = await store.query(CALL_SID, records.CHAT_PREFIX)
        assert [records.chat_from_item(i)["chat"]["content"][0]["text"] for i in saved] == [
            "what are your hours?", "Eleven to ten."]
        assert 2.5 <= waited <= 2.5 + 0.8    # past the grace: A said it was draining
        assert store.closed_reads == 1
        assert (renewed.generation, claimed.generation) == (1, 0)
        plan = await b.resolve(_setup(renewed.token))    # resumes: B's own pending session
    assert [m["content"][0]["text"] for m in plan.history] == [
        "what are your hours?", "Eleven to ten."]
    item = await store.get(CALL_SID, records.SESSION_SK)
    assert item is not None
    assert (item["generation"], item["token"]) == (1, "")   # B's claim, decided at once


async def test_a_queue_not_behind_writes_no_closed_mark_and_its_written_mark_is_in_time(
        autojump_clock: Any) -> None:
    """The usual call end: A's queue is not behind, so A writes nothing of its own for the
    socket's end; its "written" mark lands with the last messages, within B's grace."""
    store, a, a_writer, b = await _two_processes()
    with trio.fail_after(30):
        claimed = await _claimed_on_a(store, a, a_writer)
        await _a_socket_ends(a, a_writer, ["what are your hours?"])
        closed = records.socket_mark_sk(records.SOCKET_CLOSED_PREFIX, 0)
        assert await store.get(CALL_SID, closed) is None
        store.closed_reads = 0
        (_, complete), waited = await _while_a_drains_after(
            a_writer, 0.3, lambda: b.renew(claimed))
        assert complete
        assert len(await store.query(CALL_SID, records.CHAT_PREFIX)) == 1
    assert waited == pytest.approx(0.35)                # read after 0.05, 0.1, 0.2
    assert (store.written_reads, store.closed_reads) == (4, 0)


async def test_a_reconnect_whose_old_process_reported_no_end_goes_on_after_a_grace(
        autojump_clock: Any) -> None:
    """The process that held the socket died with its queue: neither mark ever comes. B
    reconnects once SOCKET_CLOSED_GRACE_S has passed without a "closed" mark."""
    store, a, a_writer, b = await _two_processes()
    with trio.fail_after(30):
        claimed = await _claimed_on_a(store, a, a_writer)
        started = trio.current_time()
        renewed, complete = await b.renew(claimed)
    assert not complete                                 # what A's queue held is lost
    assert trio.current_time() - started == pytest.approx(1.55)     # 0.05 + ... + 0.8
    assert (store.written_reads, store.closed_reads) == (6, 1)
    assert renewed.generation == 1
    assert renewed.token


async def test_a_reconnect_waits_for_a_draining_process_as_long_as_it_waits_itself(
        autojump_clock: Any) -> None:
    """A reported its socket closed, but its queue does not move (its store stalls): B waits
    FLUSH_TIMEOUT_S, as A itself does for its writes, then reconnects with what is stored."""
    store, a, a_writer, b = await _two_processes()
    with trio.fail_after(30):
        claimed = await _claimed_on_a(store, a, a_writer)
        await _a_socket_ends(a, a_writer, ["what are your hours?"], behind_s=1.0)
        started = trio.current_time()
        _, complete = await b.renew(claimed)
    assert not complete
    assert trio.current_time() - started == pytest.approx(Settings().flush_timeout_s)
    assert (store.written_reads, store.closed_reads) == (11, 1)    # 0.05 .. 0.8 x4, 0.25


async def test_a_session_no_socket_claimed_is_renewed_at_once(autojump_clock: Any) -> None:
    """Its socket was refused or never came: no mark will ever be written for it, so each of
    Twilio's reconnects must not wait for one."""
    store, a, _, b = await _two_processes()
    with trio.fail_after(10):
        session = await _prepare_on(a)
        started = trio.current_time()
        renewed, complete = await b.renew(session)
        again, complete_again = await b.renew(renewed)
    assert complete is None             # no claim stored: the count looks again, later
    assert complete_again is None
    assert trio.current_time() == started
    assert (store.written_reads, store.closed_reads) == (0, 2)      # one look each
    assert (renewed.generation, again.generation) == (1, 2)
    assert len({session.token, renewed.token, again.token}) == 3


async def test_a_socket_that_failed_before_its_claim_landed_does_not_lock_the_reconnect_out(
        autojump_clock: Any) -> None:
    """A's socket claimed the call and failed while A's claim (token "") was still queued
    there (the store did not answer it in time: served on A's word). Renewed at once on B,
    the claim would land after B's renewal and the reconnect's socket, on a third process,
    would find no token to match. A's "closed" mark tells B that a socket did claim it: B
    waits for A's queue, and the renewal is the item's last write."""
    store, a, a_writer, b = await _two_processes()
    with trio.fail_after(30):
        session = await _prepare_on(a)
        store.stall_s = 60.0
        await a.resolve(_setup(session.token))              # the claim: queued on A
        store.stall_s = 0.0
        assert a_writer.statistics().undecided == 1
        await _a_socket_ends(a, a_writer, ["hello?"], behind_s=1.0)
        item = await store.get(CALL_SID, records.SESSION_SK)
        assert item is not None
        assert item["token"] == session.token               # what /action on B reads
        (renewed, complete), waited = await _while_a_drains_after(
            a_writer, 0.3, lambda: b.renew(records.session_from_item(item)))
        assert complete
        async with trio.open_nursery() as nursery:     # whatever A still had, it writes
            await nursery.start(a_writer.run)
            await a_writer.flush(timeout_s=1)
            nursery.cancel_scope.cancel()
        c, _ = _process(store)                 # the reconnect's socket reaches a third one
        plan = await c.resolve(_setup(renewed.token))
    assert [m["content"][0]["text"] for m in plan.history] == ["hello?"]
    assert 0.3 <= waited <= 0.3 + 0.4


async def test_a_reconnect_asked_before_the_socket_here_wound_down_waits_for_it(
        autojump_clock: Any) -> None:
    """Twilio asks ``/action`` the moment the relay session failed; the process that served
    the socket may not have seen it end yet. The renewal waits for that (and for the socket's
    last writes), instead of hanging up on the caller; a socket that stays refuses it."""
    store, a, a_writer, _ = await _two_processes()
    with trio.fail_after(30):
        session = await _prepare_on(a)
        await a.resolve(_setup(session.token))

        async def socket_ends_after(delay_s: float) -> None:
            await trio.sleep(delay_s)
            await _a_socket_ends(a, a_writer, ["are you there?"])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(socket_ends_after, 0.2)
            await nursery.start(a_writer.run)
            started = trio.current_time()
            renewed, complete = await a.renew(session)
            waited = trio.current_time() - started
            assert complete
            saved = await store.query(CALL_SID, records.CHAT_PREFIX)
            nursery.cancel_scope.cancel()
        assert waited == pytest.approx(0.2)
        assert len(saved) == 1                               # its last writes are in
        assert renewed.generation == 1

        await a.resolve(_setup(renewed.token))               # the reconnect's socket, here
        started = trio.current_time()
        with pytest.raises(SessionBusy):
            await a.renew(renewed)
    assert trio.current_time() - started == pytest.approx(SOCKET_CLOSED_GRACE_S)


@pytest.mark.parametrize("closes_after_s", [0.0, 1.0])
async def test_a_reconnect_waits_for_a_closed_socket_s_call_to_wind_down(
        autojump_clock: Any, closes_after_s: float) -> None:
    """The relay session fails while a side-effect tool runs (an order placed, 4 s); the
    socket here closes at once, or a second later, but the call winds down only when the
    tool has finished and its result is written. The renewal waits for that, up to the
    webhook's deadline: after SOCKET_CLOSED_GRACE_S it refused, as if the socket were still
    connected, and the caller was hung up on. One whose call outlives the deadline is
    refused at the deadline."""
    store, a, a_writer, _ = await _two_processes()
    with trio.fail_after(60):
        session = await _prepare_on(a)
        await a.resolve(_setup(session.token))

        async def socket_closes_then_call_ends() -> None:
            await trio.sleep(closes_after_s)
            a.socket_closed(CALL_SID)
            await trio.sleep(4.0 - closes_after_s)             # the tool finishing
            await _a_socket_ends(a, a_writer, ["order a pizza"])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(socket_closes_then_call_ends)
            await nursery.start(a_writer.run)
            started = trio.current_time()
            renewed, complete = await a.renew(session, deadline=started + 10.0)
            waited = trio.current_time() - started
            saved = await store.query(CALL_SID, records.CHAT_PREFIX)
            nursery.cancel_scope.cancel()
        assert waited == pytest.approx(4.0)
        assert complete
        assert len(saved) == 1                               # the call's last write is in
        assert renewed.generation == 1

        await a.resolve(_setup(renewed.token))               # the reconnect's socket
        a.socket_closed(CALL_SID)                            # closed; its call never ends
        started = trio.current_time()
        with pytest.raises(SessionBusy):
            await a.renew(renewed, deadline=started + 6.0)
    assert trio.current_time() - started == pytest.approx(6.0)


async def test_a_reconnect_on_another_process_waits_for_a_call_still_winding_down(
        autojump_clock: Any) -> None:
    """The socket on A drops while a side-effect tool runs (4 s); Twilio's ``/action``
    reaches B. A's queue is not behind, so A wrote no "closed" mark, and B took the silence
    for a dead process after SOCKET_CLOSED_GRACE_S: it resumed the call without the tool's
    result, which the history repair then reports as an error (the order placed, the caller
    told it failed). A now marks a socket whose call outlives its close by QUEUE_BEHIND_S,
    and B waits for the call's last writes (found by a review helper)."""
    store, a, a_writer, b = await _two_processes()
    with trio.fail_after(60):
        claimed = await _claimed_on_a(store, a, a_writer)
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(a_writer.run)
            a.socket_closed(CALL_SID)
            closed_at = trio.current_time()

            async def tool_finishes() -> None:
                await trio.sleep(4.0)
                await _a_socket_ends(a, a_writer, ["(the order is placed)"])

            nursery.start_soon(tool_finishes)
            await trio.sleep(0.8)                            # /action comes 0.5-1.2 s later
            renewed, complete = await b.renew(claimed)
            waited = trio.current_time() - closed_at
            saved = await store.query(CALL_SID, records.CHAT_PREFIX)
            nursery.cancel_scope.cancel()
    assert complete
    assert [records.chat_from_item(i)["chat"]["content"][0]["text"] for i in saved] == [
        "(the order is placed)"]
    assert 4.0 <= waited <= 4.0 + 0.8
    assert renewed.generation == 1


async def test_a_call_that_ends_soon_after_its_socket_closes_costs_no_mark(
        autojump_clock: Any) -> None:
    """The usual hang-up: the call winds down within QUEUE_BEHIND_S of its socket closing,
    so no "closed" mark is written for it (its "written" mark says everything)."""
    store, a, a_writer, _ = await _two_processes()
    with trio.fail_after(30):
        await _claimed_on_a(store, a, a_writer)
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(a_writer.run)
            a.socket_closed(CALL_SID)
            await trio.sleep(0.1)
            await _a_socket_ends(a, a_writer, ["bye"])
            await trio.sleep(2.0)
            assert await a_writer.flush(timeout_s=1)
            nursery.cancel_scope.cancel()
    assert await store.get(CALL_SID, records.socket_mark_sk(
        records.SOCKET_WRITTEN_PREFIX, 0)) is not None
    assert await store.get(CALL_SID, records.socket_mark_sk(
        records.SOCKET_CLOSED_PREFIX, 0)) is None


async def test_a_mark_that_fails_with_a_bug_does_not_stop_the_marking(
        autojump_clock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``Sessions.run`` is one task for every call, in the runtime's nursery: a bug in one
    mark's write would have ended it, and the server with it. It is logged instead, and the
    next socket's mark is written."""
    store, a, a_writer, _ = await _two_processes()
    real_write, failures = a_writer.write_now, [RuntimeError("a bug")]

    async def write_now(item: Any, **kw: Any) -> bool:
        if failures:
            raise failures.pop()
        return await real_write(item, **kw)

    with trio.fail_after(30):
        await _claimed_on_a(store, a, a_writer)
        monkeypatch.setattr(a_writer, "write_now", write_now)
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(a_writer.run)
            a.socket_closed(CALL_SID)                       # its mark: the bug
            await trio.sleep(1.0)
            a.socket_closed(CALL_SID)                       # closed again: marked
            await trio.sleep(1.0)
            nursery.cancel_scope.cancel()
    assert not failures
    assert await store.get(CALL_SID, records.socket_mark_sk(
        records.SOCKET_CLOSED_PREFIX, 0)) is not None


async def test_a_reconnect_s_socket_on_the_process_that_answered_twiml_is_served(
        autojump_clock: Any) -> None:
    """A answered ``/twiml``; the call's socket went to B, failed there, and B renewed it.
    The reconnect's socket lands on A, which still holds the first token as pending: it must
    look in the store rather than refuse (``bench_latency.py --shape gate-fail --workers 2``
    at 50 calls: 2 refused with "session token does not match" before)."""
    store = await _store_with_use_case()
    a, _ = _process(store)
    b, b_writer = _process(store)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(b_writer.run)
            session = await _prepare_on(a)
            await b.resolve(_setup(session.token))              # the first socket, on B
            b_writer.submit(records.chat_item(CALL_SID, 1_000, 0, {
                "role": "assistant", "content": [{"text": "Hello from elsewhere."}]}, {},
                3600), call_sid=CALL_SID)
            await b.socket_ended(CALL_SID)
            b.release(CALL_SID)
            assert await b_writer.flush(CALL_SID, timeout_s=1)  # as B's /action does
            item = await store.get(CALL_SID, records.SESSION_SK)
            assert item is not None
            renewed, _ = await b.renew(records.session_from_item(item))
            nursery.cancel_scope.cancel()
        plan = await a.resolve(_setup(renewed.token))
    assert plan.call_sid == CALL_SID
    assert [m["content"][0]["text"] for m in plan.history] == ["Hello from elsewhere."]
    assert plan.greeting is None                    # resumed: no second greeting
    with pytest.raises(CallRejected, match="does not match"):
        await _process(store)[0].resolve(_setup(session.token))   # the first token: spent


async def test_every_wait_of_a_reconnect_ends_by_its_deadline(autojump_clock: Any) -> None:
    """``/action`` already spent most of its budget (its flush waited on a backed-up queue):
    the wait for the old socket's marks stops at the deadline, not FLUSH_TIMEOUT_S later, so
    the webhook answers well within Twilio's 15 s."""
    store, a, a_writer, b = await _two_processes()
    with trio.fail_after(30):
        claimed = await _claimed_on_a(store, a, a_writer)
        await _a_socket_ends(a, a_writer, ["what are your hours?"], behind_s=1.0)  # "closed"
        started = trio.current_time()
        _, complete = await b.renew(claimed, deadline=started + 0.5)
    assert trio.current_time() - started == pytest.approx(0.5)
    assert not complete


async def _unreadable(pk: str, sk: str) -> dict[str, Any] | None:
    raise StoreError("dynamodb get: no answer within 4 s")


async def _unanswered(pk: str, sk: str) -> dict[str, Any] | None:
    await trio.sleep_forever()
    raise AssertionError("unreachable")


@pytest.mark.parametrize(("get", "elapsed_s"), [(_unreadable, 0.0), (_unanswered, 2.0)])
async def test_a_store_that_fails_or_stalls_the_mark_reads_still_lets_the_call_reconnect(
        autojump_clock: Any, get: Any, elapsed_s: float) -> None:
    """A failing read, or one the store never answers (it must not stretch the webhook past
    its deadline): the reconnect goes on with what is stored, counted as partial."""
    store, a, a_writer, b = await _two_processes()
    with trio.fail_after(30):
        claimed = await _claimed_on_a(store, a, a_writer)
        store.get = get                                 # type: ignore[method-assign]
        started = trio.current_time()
        renewed, complete = await b.renew(claimed, deadline=started + 2.0)
    assert trio.current_time() - started == pytest.approx(elapsed_s)
    assert not complete                                 # counted as resumed_partial
    assert renewed.generation == 1


async def _drained(writer: WriteBehind) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        assert await writer.flush(timeout_s=1)
        nursery.cancel_scope.cancel()


async def _reconnect(store: CountingStore, on: Sessions) -> CallPlan:
    """Twilio's ``/action`` after a failed relay session, then the new socket, on ``on``."""
    item = await store.get(CALL_SID, records.SESSION_SK)
    assert item is not None
    renewed, complete = await on.renew(records.session_from_item(item))
    assert complete
    return await on.resolve(_setup(renewed.token))


async def test_a_reconnect_with_nothing_stored_records_no_greeting(
        autojump_clock: Any) -> None:
    """The first socket wrote nothing (the caller hung on in silence, or its writes were
    lost): the reconnect starts with an empty history, but its TwiML leaves the welcome
    greeting out, so the model must not be told the caller heard it (helper-45)."""
    store = await _store_with_use_case()
    a, a_writer = _process(store)
    b, _ = _process(store)
    with trio.fail_after(30):
        first = await _claimed_on_a(store, a, a_writer)
        await a.socket_ended(CALL_SID)
        a.release(CALL_SID)
        await _drained(a_writer)
        plan = await _reconnect(store, b)
    assert first.greeting == "Hello from elsewhere."
    assert (plan.history, plan.greeting) == ((), None)


async def test_a_fresh_start_sets_the_unusable_history_aside_for_the_next_reconnect(
        autojump_clock: Any) -> None:
    """A reconnect that finds the saved history unusable starts afresh (no greeting: the
    reconnect's TwiML plays none, so none is recorded as said) and writes from position 0
    again, under later times. The next reconnect must resume that fresh conversation: it
    read the unusable items too, and started afresh on every reconnect. Read back, each
    socket's messages stay together, the old ones first (ordering by position interleaved
    them: helper-22), and ``calls show`` says where the call started afresh."""
    from actors.history import History
    from voiceagent.app.transcripts import AFRESH_NOTE, format_transcript, load_transcript

    store = await _store_with_use_case()
    a, a_writer = _process(store)
    b, b_writer = _process(store)
    with trio.fail_after(30):
        await _claimed_on_a(store, a, a_writer)
        for at_ms, seq, text in ((1_000, 0, "old: hi"), (3_000, 2, "old: table for two")):
            a_writer.submit(records.chat_item(CALL_SID, at_ms, seq, {
                "role": "user", "content": [{"text": text}]}, {"at_ms": at_ms}, 3600),
                call_sid=CALL_SID)                       # two prompts in a row: unusable
        await a.socket_ended(CALL_SID)
        a.release(CALL_SID)
        await _drained(a_writer)

        plan = await _reconnect(store, b)
        assert (plan.history, plan.greeting) == ((), None)
        fresh = History()
        fresh.add_assistant("new: Hello again.")
        fresh.add_user_text("new: where were we?")
        fresh.add_assistant("new: Let's start over.")
        for index, message, meta in fresh.take_sealed(final=True):
            b_writer.submit(records.chat_item(CALL_SID, 5_000 + index, index, message,
                                              {**meta, "at_ms": 5_000 + index}, 3600),
                            call_sid=CALL_SID)
        await b.socket_ended(CALL_SID)
        b.release(CALL_SID)
        await _drained(b_writer)

        plan = await _reconnect(store, a)
        transcript = await load_transcript(cast(Store, store), CALL_SID)
    assert [m["content"][0]["text"] for m in plan.history] == [
        "new: Hello again.", "new: where were we?", "new: Let's start over."]
    assert plan.greeting is None
    assert transcript is not None
    assert [entry["chat"]["content"][0]["text"] if entry["chat"] else "(set aside)"
            for entry in transcript.entries] == [
        "old: hi", "old: table for two", "(set aside)", "new: Hello again.",
        "new: where were we?", "new: Let's start over."]
    shown = format_transcript(transcript, "UTC")
    note = next(i for i, line in enumerate(shown) if AFRESH_NOTE in line)
    assert "new: Hello again." in shown[note - 1]
    assert sum(AFRESH_NOTE in line for line in shown) == 1
    assert "5 messages" in shown[2]


async def test_a_renewal_whose_socket_never_came_is_forgotten(autojump_clock: Any) -> None:
    """Stale offers were dropped only by ``/twiml``: a process answering only renewals
    (``/action``) kept each one whose socket never came, for the process's life."""
    store = await _store_with_use_case()
    a, a_writer = _process(store)
    with trio.fail_after(PENDING_TTL_S * 3):
        first = await _claimed_on_a(store, a, a_writer)
        await a.socket_ended(CALL_SID)
        a.release(CALL_SID)
        await _drained(a_writer)
        renewed, _ = await a.renew(first)              # Twilio reconnects; no socket comes
        assert CALL_SID in a._offers
        await trio.sleep(PENDING_TTL_S + 1)
        other = replace(renewed, call_sid="CA" + "e" * 32, token="t2")
        await a._offer(other, resumes=True)            # the next renewal, for another call
    assert CALL_SID not in a._offers
    assert other.call_sid in a._offers


async def test_stale_offers_are_dropped_oldest_first_and_a_renewed_one_counts_anew(
        autojump_clock: Any) -> None:
    """``SessionOffers.forget_stale`` drops from the front instead of scanning every offer,
    so the order must stay the minting order: an offer made again (a renewal) moves to the
    back, and does not keep an older one behind it alive."""
    store = await _store_with_use_case()
    a, a_writer = _process(store)
    with trio.fail_after(PENDING_TTL_S * 3):
        first = await _claimed_on_a(store, a, a_writer)
        early = replace(first, call_sid="CA" + "1" * 32, token="t-early")
        later = replace(first, call_sid="CA" + "2" * 32, token="t-later")
        await a._offer(early, resumes=False)
        await trio.sleep(10)
        await a._offer(later, resumes=False)
        await trio.sleep(40)
        await a._offer(replace(early, token="t-early-again", generation=1), resumes=True)
        await trio.sleep(PENDING_TTL_S - 35)       # `later` is stale, `early` made again is not
        a._offers.forget_stale()
    assert later.call_sid not in a._offers
    offer = a._offers.get(early.call_sid)
    assert offer is not None
    assert offer.session.token == "t-early-again"
