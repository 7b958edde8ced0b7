"""A session token opens one socket per process, even when two sockets carrying it race
through ``Sessions.resolve``: both hold the session while they wait (the use case, the saved
history), the first claims the call and its socket goes at once, and the second, whose
re-check saw only that no socket was connected, was served the same call too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

import voiceagent.app.sessions as sessions_module
from actors.call import CallRejected
from actors.messages import Setup
from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from tests.test_session_binding import VICTIM, token_in
from voiceagent.app.caller import post_form
from voiceagent.errors import StoreError
from voiceagent.usecases import UseCase

CALL_SID = "CA" + "7" * 32


@pytest.mark.parametrize("minted", ["here", "elsewhere"])
async def test_two_sockets_racing_with_one_token_claim_the_call_once(
        tmp_path: Path, minted: str) -> None:
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as first, \
                running_server(make_settings(tmp_path)) as second:
            twiml = await post_form(first.url + "/twiml", {
                "CallSid": CALL_SID, "From": VICTIM, "To": "+15555550199"}, AUTH_TOKEN)
            runtime = first.runtime if minted == "here" else second.runtime
            catalog, real_use_case = runtime.catalog, runtime.catalog.use_case
            gates = [trio.Event(), trio.Event()]
            arrived, waiting = [trio.Event(), trio.Event()], 0

            async def gated(name: str) -> UseCase:
                """Each socket's lookup waits for its own gate, the session in hand."""
                nonlocal waiting
                gate, now_here = gates[waiting], arrived[waiting]
                waiting += 1
                now_here.set()
                await gate.wait()
                return await real_use_case(name)

            catalog.use_case = gated                    # type: ignore[method-assign]
            setup = Setup(session_id="VX1", call_sid=CALL_SID,
                          custom_parameters={"sessionToken": token_in(twiml)})
            outcomes: dict[int, str] = {}
            done = [trio.Event(), trio.Event()]

            async def socket(n: int) -> Any:
                try:
                    await runtime.sessions.resolve(setup)
                    outcomes[n] = "served"
                except CallRejected as err:
                    outcomes[n] = str(err)
                done[n].set()

            async with trio.open_nursery() as nursery:
                for n in (0, 1):                        # each with the session in hand
                    nursery.start_soon(socket, n)
                    await arrived[n].wait()
                gates[0].set()
                await done[0].wait()
                assert outcomes == {0: "served"}
                runtime.sessions.release(CALL_SID)      # the first socket went at once
                gates[1].set()
            spent = runtime.sessions._spent     # kept only while lookups run
            assert (spent._looking, spent._spent) == ({}, {})
    assert outcomes == {0: "served", 1: "this call's session token was used already"}


async def test_a_token_spent_here_opens_nothing_while_the_store_still_shows_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim's write of the spent session waits in the write-behind queue (the store
    did not decide it: writes throttled; the session minted here is served on this
    process's word) while the store still holds the token: a socket with that token, after
    the first one went, was served from the store's stale item."""
    monkeypatch.setattr(sessions_module, "MINTED_ELSEWHERE_WAITS_S", ())   # one read
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            twiml = await post_form(server.url + "/twiml", {
                "CallSid": CALL_SID, "From": VICTIM, "To": "+15555550199"}, AUTH_TOKEN)
            store, sessions = server.runtime.store, server.runtime.sessions
            real_put = store.put_if_newer

            async def throttled(*args: Any, **kwargs: Any) -> bool:
                raise StoreError("throttled")           # transient: retried, kept queued

            store.put_if_newer = throttled          # type: ignore[method-assign]
            setup = Setup(session_id="VX1", call_sid=CALL_SID,
                          custom_parameters={"sessionToken": token_in(twiml)})
            await sessions.resolve(setup)               # served: the token is spent
            sessions.release(CALL_SID)
            stored = await store.get(CALL_SID, "connection") or {}
            assert stored.get("token") == token_in(twiml)     # the store is behind
            with pytest.raises(CallRejected, match="token does not match"):
                await sessions.resolve(setup)
            store.put_if_newer = real_put           # type: ignore[method-assign]
            assert await server.runtime.writer.flush(CALL_SID, timeout_s=10)
            assert (await store.get(CALL_SID, "connection") or {}).get("token") == ""
