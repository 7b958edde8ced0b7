"""A call's session decided by the store, not by each process's memory (``session_claims``).

Two ``Sessions``, each with its own write-behind queue (never drained here, as behind a
throttled or backed-up store) and its own connection, play two processes over one real
store: a moto-served DynamoDB table (over the production HTTP path) and one SQLite file.
Decided in memory and written behind, a token spent on A still opened the call on B, two
processes answering one ``/twiml`` at once each minted a token, and two renewals of one
generation each minted the next; here each race has exactly one winner.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import voiceagent.app.sessions as sessions_module
import voiceagent.store.config_records as config_records
import voiceagent.store.records as records
from actors.call import CallRejected
from tests.dynamodb_support import aws_env, isolate_env, moto_endpoint, open_test_table
from tests.sessions_support import sessions_on, setup_message
from voiceagent.app.sessions import SessionExists, SessionRenewed, Sessions
from voiceagent.relay.protocol import Setup
from voiceagent.settings import Settings
from voiceagent.store.base import Store
from voiceagent.store.dynamodb import open_dynamodb_store
from voiceagent.store.sqlite import open_sqlite_store
from voiceagent.store.write_behind import WriteBehind
from voiceagent.usecases import Profile, UseCase

__all__ = ["moto_endpoint"]          # the fixture, imported so pytest finds it here

pytestmark = pytest.mark.timeout(60)

CALL_SID = "CA" + "5" * 32
CALLER = "+15555550100"
USE_CASE = UseCase(name="claimsUseCase", prompt="Be brief. <<USER_CONTEXT>>",
                   relay={"welcomeGreeting": "Hello."})
FORM = {"CallSid": CALL_SID, "From": CALLER, "To": "+15555550199"}


@asynccontextmanager
async def _dynamodb(tmp_path: Path, endpoint: str, monkeypatch: pytest.MonkeyPatch
                    ) -> AsyncIterator[tuple[Store, Store]]:
    isolate_env(monkeypatch, aws_env(endpoint, tmp_path))
    async with open_test_table(endpoint) as table:
        settings = Settings.from_env(STORE="dynamodb", TABLE_NAME=table.table_name,
                                     VALIDATE_SIGNATURES=False)
        async with open_dynamodb_store(settings, limiter=trio.CapacityLimiter(4)) as a, \
                open_dynamodb_store(settings, limiter=trio.CapacityLimiter(4)) as b:
            yield a, b


@asynccontextmanager
async def _sqlite(tmp_path: Path) -> AsyncIterator[tuple[Store, Store]]:
    path = tmp_path / "data" / "voiceagent.db"          # one file, two connections
    async with open_sqlite_store(path, limiter=trio.CapacityLimiter(4)) as a, \
            open_sqlite_store(path, limiter=trio.CapacityLimiter(4)) as b:
        yield a, b


@pytest.fixture(params=["dynamodb", "sqlite"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Store, Store]]:
    """One store as two processes see it; the use case and the caller's profile in it."""
    opened = (_dynamodb(tmp_path, request.getfixturevalue("moto_endpoint"), monkeypatch)
              if request.param == "dynamodb" else _sqlite(tmp_path))
    async with opened as (a, b):
        await a.put(config_records.use_case_item(USE_CASE))
        await a.put(config_records.profile_item(Profile(phone=CALLER, first_name="Ada")))
        yield a, b


def _process(store: Any) -> tuple[Sessions, WriteBehind]:
    return sessions_on(store, USE_CASE.name)


def _setup(token: str) -> Setup:
    return setup_message(CALL_SID, token)


async def _outcome(sessions: Sessions, token: str) -> str:
    try:
        await sessions.resolve(_setup(token))
    except CallRejected as err:
        return str(err)
    return "served"


async def test_a_token_claimed_on_a_opens_nothing_on_b_before_a_s_queue_drains(
        stores: tuple[Store, Store], monkeypatch: pytest.MonkeyPatch) -> None:
    """B reads the session before A's socket claims it, then the same token reaches B (a
    replayed setup): B's claim is the store's to refuse. And once A's claim is in, a socket
    with that token finds nothing to claim on B. A's queue never drains."""
    monkeypatch.setattr(sessions_module, "MINTED_ELSEWHERE_WAITS_S", ())     # one read
    (a, a_writer), (b, _) = _process(stores[0]), _process(stores[1])
    with trio.fail_after(30):
        session = await a.prepare(FORM)
        real_use_case, b_holds_it, a_claimed = b._catalog.use_case, trio.Event(), trio.Event()

        async def after_a_claims(name: str) -> UseCase:
            """B's lookup, the session in hand, waits for A's socket to claim the call."""
            b_holds_it.set()
            await a_claimed.wait()
            return await real_use_case(name)

        b._catalog.use_case = after_a_claims            # type: ignore[method-assign]
        outcomes: dict[str, str] = {}
        async with trio.open_nursery() as nursery:
            async def on_b() -> None:
                outcomes["b"] = await _outcome(b, session.token)

            nursery.start_soon(on_b)
            await b_holds_it.wait()
            outcomes["a"] = await _outcome(a, session.token)
            a_claimed.set()
        b._catalog.use_case = real_use_case             # type: ignore[method-assign]
        later = await _outcome(b, session.token)
    assert outcomes == {"a": "served", "b": "this call's session token was used already"}
    assert "does not match" in later
    assert a_writer.statistics().undecided == 0     # the store decided A's claim


async def test_one_twiml_prepared_on_a_and_b_at_once_is_answered_once(
        stores: tuple[Store, Store]) -> None:
    """A replayed ``/twiml`` racing Twilio's own: both processes find nothing stored and
    mint a token; the store keeps one, and the other process answers ``SessionExists``.
    Only the winner's token opens the call, on either process."""
    (a, _), (b, _) = _process(stores[0]), _process(stores[1])
    built, both_built = 0, trio.Event()
    for sessions in (a, b):
        real_profile = sessions._catalog.profile

        async def when_both_looked(phone: str, real: Any = real_profile) -> Profile | None:
            """Each process's build, past its look for the call, waits for the other's."""
            nonlocal built
            built += 1
            if built == 2:
                both_built.set()
            await both_built.wait()
            return await real(phone)    # type: ignore[no-any-return]

        sessions._catalog.profile = when_both_looked    # type: ignore[method-assign]
    answers: dict[str, records.CallSession | str] = {}

    async def prepare(name: str, sessions: Sessions) -> None:
        try:
            answers[name] = await sessions.prepare(FORM)
        except SessionExists:
            answers[name] = "SessionExists"

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(prepare, "a", a)
            nursery.start_soon(prepare, "b", b)
        assert sorted(isinstance(answer, str) for answer in answers.values()) == [False, True]
        winner = next(v for v in answers.values() if isinstance(v, records.CallSession))
        loser = next(name for name, v in answers.items() if isinstance(v, str))
        assert answers[loser] == "SessionExists"
        stored = await stores[0].get(CALL_SID, records.SESSION_SK)
        assert stored is not None
        assert stored["token"] == winner.token
        on_loser = a if loser == "a" else b
        assert await _outcome(on_loser, winner.token) == "served"


async def test_two_renewals_of_one_generation_mint_it_once(
        stores: tuple[Store, Store], monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ``/action`` renewals of the same claimed generation, on A and B at once: one
    stores the next generation, the other is told ``SessionRenewed``; only the stored
    token opens the reconnect, and the other one opens nothing anywhere."""
    monkeypatch.setattr(sessions_module, "MINTED_ELSEWHERE_WAITS_S", ())
    (a, _), (b, _) = _process(stores[0]), _process(stores[1])
    with trio.fail_after(30):
        first = await a.prepare(FORM)
        assert await _outcome(a, first.token) == "served"
        await a.socket_ended(CALL_SID)
        a.release(CALL_SID)
        await stores[0].put(records.socket_mark_item(       # its last writes are in
            records.SOCKET_WRITTEN_PREFIX, CALL_SID, 0, 1.0, 3600))
        item = await stores[1].get(CALL_SID, records.SESSION_SK)
        assert item is not None
        claimed = records.session_from_item(item)
        answers: dict[str, records.CallSession | str] = {}

        async def renew(name: str, sessions: Sessions) -> None:
            try:
                answers[name] = (await sessions.renew(claimed)).session
            except SessionRenewed:
                answers[name] = "SessionRenewed"

        async with trio.open_nursery() as nursery:
            nursery.start_soon(renew, "a", a)
            nursery.start_soon(renew, "b", b)
        renewals = [v for v in answers.values() if isinstance(v, records.CallSession)]
        assert len(renewals) == 1, answers
        assert "SessionRenewed" in answers.values()
        stored = await stores[0].get(CALL_SID, records.SESSION_SK)
        assert stored is not None
        assert (stored["generation"], stored["token"]) == (1, renewals[0].token)
        c, _ = _process(stores[1])                      # the reconnect, on a third one
        assert await _outcome(c, renewals[0].token) == "served"
