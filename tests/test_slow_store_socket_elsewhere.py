"""A store whose writes are slow (1-3 s) and a socket that the balancer sends to another task
than the one that answered its signed ``/twiml``. Two processes (``Sessions`` with their own
write-behind queues, both draining) over one store, on the virtual clock; Twilio opens the
socket 0.2 s after ``/twiml`` answered.

What happened: ``/twiml`` waits SESSION_WRITE_S (2 s) for the session item, then queues it and
answers. A write of 3 s was then refused on the other task either way it could go: DynamoDB
applying the given-up write late (the request was sent), B found the item but its own claim,
3 s too, was given up at 2 s and the socket closed 1011 ("unavailable"), the token spent in
the store for nobody; the given-up write lost (never sent), A's queue wrote it ~3 s after
``/twiml`` answered, past the ~1.5 s B read again for it, and the socket was closed 1008
("unknown session"). Either way the caller heard the greeting, then Twilio's ``/action``,
whose reconnect met the same store. A socket of a session read from the store now waits for
it up to MINTED_ELSEWHERE_WAITS_S, and for its claim up to CLAIM_ELSEWHERE_S: a slow store
answers, and a store that does not answer still refuses the socket within a bound."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import trio

import voiceagent.store.config_records as config_records
import voiceagent.store.records as records
from actors.call import CallRejected
from tests.fakes import MemoryStore
from tests.sessions_support import sessions_on, setup_message
from voiceagent.app.session_claims import CLAIM_ELSEWHERE_S, SESSION_WRITE_S
from voiceagent.app.sessions import MINTED_ELSEWHERE_WAITS_S
from voiceagent.errors import StoreError
from voiceagent.usecases import UseCase

T = TypeVar("T")
CALL_SID = "CA" + "5" * 32
USE_CASE = UseCase(name="slowStoreUseCase", prompt="Be brief. <<USER_CONTEXT>>",
                   relay={"welcomeGreeting": "Hello."})
FORM = {"CallSid": CALL_SID, "From": "+15555550100", "To": "+15555550199"}
SOCKET_AFTER_TWIML_S = 0.2


class SlowStore(MemoryStore):
    """Each write takes ``write_s`` and each read ``read_s``. ``applied_late``: a write whose
    caller stopped waiting lands all the same (the request reached DynamoDB); else it is
    lost (cut before it was sent: the writer's queue must send it again)."""

    def __init__(self, nursery: trio.Nursery) -> None:
        super().__init__()
        self._nursery = nursery
        self.write_s = 0.0
        self.read_s = 0.0
        self.applied_late = True

    async def _slow(self, write: Callable[[], Awaitable[T]]) -> T:
        if not self.applied_late:
            await trio.sleep(self.write_s)
            return await write()
        landed = trio.Event()
        answers: list[T] = []

        async def land() -> None:
            await trio.sleep(self.write_s)
            answers.append(await write())
            landed.set()

        self._nursery.start_soon(land)
        await landed.wait()
        return answers[0]

    async def get(self, pk: str, sk: str) -> dict[str, Any] | None:
        await trio.sleep(self.read_s)
        return await super().get(pk, sk)

    async def query(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        await trio.sleep(self.read_s)
        return await super().query(*args, **kwargs)     # type: ignore[no-any-return]

    async def put(self, item: dict[str, Any]) -> None:
        await self._slow(lambda: MemoryStore.put(self, item))

    async def put_new(self, item: dict[str, Any]) -> bool:
        return await self._slow(lambda: MemoryStore.put_new(self, item))

    async def put_unless_newer(self, item: dict[str, Any], version: str, *,
                               legacy: str | None = None) -> bool:
        return await self._slow(lambda: MemoryStore.put_unless_newer(
            self, item, version, legacy=legacy))

    async def put_if_newer(self, item: dict[str, Any], version: str, *,
                           legacy: str | None = None) -> bool:
        return await self._slow(lambda: MemoryStore.put_if_newer(
            self, item, version, legacy=legacy))


async def _twiml_on_a_then_socket_on_b(store: SlowStore, nursery: trio.Nursery
                                        ) -> tuple[records.CallSession, Any, float, float]:
    """``/twiml`` on A, its socket on B; the session, B's resolve (a CallPlan, or the
    exception it raised), how long ``/twiml`` took and how long B took."""
    await MemoryStore.put(store, config_records.use_case_item(USE_CASE))
    a, a_writer = sessions_on(store, USE_CASE.name)
    b, b_writer = sessions_on(store, USE_CASE.name)
    await nursery.start(a_writer.run)
    await nursery.start(b_writer.run)
    started = trio.current_time()
    session = await a.prepare(FORM)
    twiml_s = trio.current_time() - started
    await trio.sleep(SOCKET_AFTER_TWIML_S)
    started = trio.current_time()
    try:
        outcome: Any = await b.resolve(setup_message(CALL_SID, session.token))
    except (CallRejected, StoreError) as err:
        outcome = err
    return session, outcome, twiml_s, trio.current_time() - started


@pytest.mark.parametrize(("write_s", "read_s", "applied_late"), [
    (1.5, 0.0, True),       # within SESSION_WRITE_S: found at once, claimed in 1.5 s
    (3.0, 0.0, True),       # was: found, then the claim given up at 2 s (1011)
    (3.0, 0.0, False),      # was: the item landed after B's last read (1008)
    (2.5, 0.5, False),      # reads slow too
], ids=["writes-1.5s", "writes-3s-applied-late", "writes-3s-lost", "writes-2.5s-reads-0.5s"])
async def test_a_socket_on_another_task_is_served_by_a_slow_store(
        autojump_clock: Any, write_s: float, read_s: float, applied_late: bool) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            store = SlowStore(nursery)
            store.write_s, store.read_s, store.applied_late = write_s, read_s, applied_late
            session, plan, twiml_s, setup_s = await _twiml_on_a_then_socket_on_b(
                store, nursery)
            await trio.sleep(2 * write_s)               # every write in flight lands
            stored = await MemoryStore.get(store, CALL_SID, records.SESSION_SK)
            nursery.cancel_scope.cancel()
    assert twiml_s <= SESSION_WRITE_S + 3 * read_s      # the phone rang no longer than before
    assert not isinstance(plan, Exception), f"refused: {plan!r}"
    assert (plan.call_sid, plan.system_prompt) == (CALL_SID, session.system_prompt)
    assert setup_s <= sum(MINTED_ELSEWHERE_WAITS_S) + CLAIM_ELSEWHERE_S + 10 * read_s
    assert stored is not None
    assert stored["token"] == ""                        # B's claim: the token spent


@pytest.mark.parametrize(("applied_late", "read_s"), [(True, 0.0), (False, 0.0), (False, 1.0)],
                         ids=["applied-late", "lost", "lost-reads-1s"])
async def test_a_store_that_does_not_answer_still_refuses_the_socket_within_a_bound(
        autojump_clock: Any, applied_late: bool, read_s: float) -> None:
    """The store answers no write for a minute: ``/twiml`` answers on A's word after
    SESSION_WRITE_S, and B, never finding the session, refuses the socket within
    MINTED_ELSEWHERE_WAITS_S (and the read under way then), however slow its reads: at 1 s
    a read, eight reads and their pauses held it ~11.5 s."""
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            store = SlowStore(nursery)
            store.write_s, store.applied_late = 60.0, applied_late
            store.read_s = read_s
            _, refused, twiml_s, setup_s = await _twiml_on_a_then_socket_on_b(store, nursery)
            nursery.cancel_scope.cancel()
    assert twiml_s == pytest.approx(SESSION_WRITE_S + 3 * read_s)
    assert isinstance(refused, CallRejected), refused
    assert "none in the store" in str(refused)
    assert setup_s <= sum(MINTED_ELSEWHERE_WAITS_S) + read_s
