"""The store throttled or unreachable while a call is picked up (a DynamoDB incident): every
failure is ours to answer, never hypercorn's. Found by a review helper (helper-23): a
``StoreError`` while a socket's call was loaded escaped the relay route (hypercorn's own
traceback and close, no log line of ours, no report), and one while ``/action`` read the
use case answered 500, which Twilio plays as its "application error"."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio

import voiceagent.store.config_records as config_records
import voiceagent.store.records as records
from tests.fakes import MemoryStore, throttled_queries
from tests.server_harness import AUTH_TOKEN, RunningServer, make_settings, running_server
from tests.test_session_binding import (
    answered,
    closed_with,
    failed_form,
    reconnect_token,
    setup_frame,
    signed_socket,
    token_in,
)
from voiceagent.app.caller import open_call, post_form
from voiceagent.catalog import USE_CASE_TTL_S, Catalog
from voiceagent.errors import StoreError
from voiceagent.tools.registry import ToolRegistry
from voiceagent.usecases import UseCase


async def a_call_to_resume(server: RunningServer) -> tuple[str, str]:
    """One call answered and hung up, then Twilio's /action for its failed session: its
    CallSid and the reconnect's session token."""
    async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
        await call.say("what are your hours?")
        await call.read_reply()
        await call.hang_up()
    await server.runtime.calls.wait_idle()
    call_sid = call.identity.call_sid
    return call_sid, await reconnect_token(server, call_sid, call.session_id)


async def test_a_reconnect_the_store_fails_to_load_is_closed_as_ours_and_can_reconnect_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Twilio reconnects a failed relay session; the new socket's saved history cannot be
    read (throttled). The socket is closed 1011 by us, with one log line saying why; its
    token is not spent, and Twilio's next ``/action``, with the store back, resumes."""
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path)) as server:
            call_sid, token = await a_call_to_resume(server)
            with throttled_queries(server.runtime.store, records.CHAT_PREFIX), \
                    caplog.at_level(logging.INFO):
                async with signed_socket(server) as ws:
                    await ws.send_message(setup_frame(call_sid, token))
                    code = await closed_with(ws)
                await server.runtime.calls.wait_idle()
            again = await reconnect_token(server, call_sid, "VX" + "2" * 32)
            assert await answered(server, call_sid, again)
    assert code == 1011
    (line,) = [r for r in caplog.records if r.getMessage() == "call could not be loaded"]
    assert line.levelno == logging.ERROR
    assert "ProvisionedThroughputExceededException" in line.reason  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if r.name.startswith("hypercorn")
                and r.levelno >= logging.ERROR]


async def test_action_answers_an_apology_when_the_use_case_cannot_be_read(
        tmp_path: Path) -> None:
    """``/action`` after a relay failure while the store throttles, the use case no longer
    cached: TwiML Twilio can play, not a 500."""
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path)) as server:
            call_sid = "CA" + "5" * 32
            await post_form(server.url + "/twiml", {"CallSid": call_sid, "From": "+15555550100",
                                                    "To": "+15555550199"}, AUTH_TOKEN)
            server.runtime.catalog._cache.clear()       # its time ran out
            store = server.runtime.store
            real_get = store.get

            async def throttled(pk: str, sk: str) -> Any:
                if sk == "configuration":
                    raise StoreError("dynamodb get: ThrottlingException")
                return await real_get(pk, sk)

            store.get = throttled                       # type: ignore[method-assign]
            answer = await post_form(server.url + "/action",
                                     failed_form(call_sid, "VX" + "1" * 32), AUTH_TOKEN)
    assert "<Say" in answer
    assert "<Hangup />" in answer
    with pytest.raises(IndexError):
        token_in(answer)                                # nothing minted


async def test_a_use_case_the_store_cannot_give_again_is_served_from_the_cache(
        autojump_clock: Any) -> None:
    """Past its time in the cache, a use case is read again; a store that fails then leaves
    the one the cache had (calls go on through a throttle), and the next lookup reads
    again. Nothing cached: the failure is the caller's to answer."""
    store = MemoryStore()
    use_case = UseCase(name="cachedUseCase", prompt="Be brief.")
    await store.put(config_records.use_case_item(use_case))
    catalog = Catalog(store, ToolRegistry())
    assert (await catalog.use_case("cachedUseCase")).prompt == "Be brief."
    await store.put(config_records.use_case_item(UseCase(name="cachedUseCase", prompt="Be kind.")))
    await trio.sleep(USE_CASE_TTL_S + 1)
    real_get = store.get
    reads: list[str] = []

    async def failing(pk: str, sk: str) -> Any:
        reads.append(pk)
        raise StoreError("dynamodb get: no answer within 4 s")

    store.get = failing                                 # type: ignore[method-assign]
    assert (await catalog.use_case("cachedUseCase")).prompt == "Be brief."
    assert (await catalog.use_case("cachedUseCase")).prompt == "Be brief."
    assert reads == ["cachedUseCase", "cachedUseCase"]  # each lookup tried the store
    with pytest.raises(StoreError):
        await catalog.use_case("neverCached")
    store.get = real_get                                # type: ignore[method-assign]
    assert (await catalog.use_case("cachedUseCase")).prompt == "Be kind."


async def test_a_setup_whose_call_sid_is_not_one_never_reaches_the_store(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The upgrade's signature can be replayed, so a setup is untrusted until its token is
    checked: a 60 KB CallSid with line breaks (DynamoDB refuses keys over 2048 bytes; every
    log line of the socket would carry it) is a bad frame, not a lookup."""
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path, SETUP_TIMEOUT_S=1)) as server:
            store = server.runtime.store
            real_get = store.get
            keys: list[str] = []

            async def recording(pk: str, sk: str) -> Any:
                keys.append(pk)
                return await real_get(pk, sk)

            store.get = recording                       # type: ignore[method-assign]
            with caplog.at_level(logging.INFO):
                async with signed_socket(server) as ws:
                    await ws.send_message(setup_frame("CA\n" + "x" * 60_000, "some-token"))
                    code = await closed_with(ws)
    assert code == 1008                                 # no setup, then
    assert keys == []
    (rejected,) = [r for r in caplog.records if r.getMessage() == "frame rejected"]
    assert (rejected.reason, rejected.problem) == (     # type: ignore[attr-defined]
        "bad_field", "callSid: expected 1-128 letters, digits or _ . : -")
