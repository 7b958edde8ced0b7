"""A relay socket is served only with the one session a signed request minted for its call,
through the real server with signatures on and real WebSocket clients.

Twilio's signature on the upgrade covers only the URL (the same for every call), so these
tests hold a validly signed upgrade throughout, as an attacker with one captured handshake
would, and show what it does not open.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from trio.testing import wait_all_tasks_blocked
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

import voiceagent.app.sessions as sessions_module
import voiceagent.store.records as records
from actors.call import CallRejected
from tests.fakes import throttled_queries
from tests.server_harness import (
    AUTH_TOKEN,
    RunningServer,
    make_settings,
    running_server,
    until_started,
)
from voiceagent.app.caller import CallerError, Identity, open_call, post_form, release_transport
from voiceagent.app.runtime import CallCounters
from voiceagent.app.socket_standing import CAPACITY_MARGIN, SocketStanding
from voiceagent.errors import StoreError
from voiceagent.signature import sign
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry

VICTIM = "+15555550100"


def relay_url(server: RunningServer) -> str:
    return server.url.replace("http://", "ws://") + "/relay"


@asynccontextmanager
async def signed_socket(server: RunningServer) -> AsyncIterator[WebSocketConnection]:
    """A relay socket whose upgrade carries a valid signature (a captured one)."""
    url = relay_url(server)
    headers = [(b"X-Twilio-Signature", sign(AUTH_TOKEN, url).encode())]
    async with open_websocket_url(url, extra_headers=headers) as ws:
        yield ws


def setup_frame(call_sid: str, token: str | None, *, caller: str = VICTIM) -> str:
    parameters = {} if token is None else {"sessionToken": token}
    return json.dumps({"type": "setup", "sessionId": "VX1", "callSid": call_sid,
                       "from": caller, "to": "+15555550199", "customParameters": parameters})


async def closed_with(ws: WebSocketConnection) -> int | None:
    """The close code the server sends (after any frames); None if it sent a text frame."""
    try:
        await ws.get_message()
    except ConnectionClosed as closed:
        await release_transport(ws)
        return closed.reason.code
    return None


async def answered(server: RunningServer, call_sid: str, token: str) -> bool:
    """A socket with this setup is served: a prompt gets a reply."""
    async with signed_socket(server) as ws:
        await ws.send_message(setup_frame(call_sid, token))
        await ws.send_message(json.dumps({"type": "prompt", "voicePrompt": "hours?",
                                          "lang": "en-US", "last": True}))
        code = await closed_with(ws)
        assert code in (None, 1008)
        return code is None


def token_in(twiml: str) -> str:
    """The session token a TwiML answer hands to Twilio."""
    return twiml.split('name="sessionToken" value="')[1].split('"')[0]


def failed_form(call_sid: str, session_id: str) -> dict[str, str]:
    """Twilio's /action form after the relay session ``session_id`` failed."""
    return {"CallSid": call_sid, "SessionId": session_id, "SessionStatus": "failed",
            "CallStatus": "in-progress", "ErrorCode": "64107"}


@asynccontextmanager
async def prepared_on_two(tmp_path: Path, identity: Identity
                          ) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    """Two processes sharing one store, and a call the first one's ``/twiml`` prepared."""
    async with running_server(make_settings(tmp_path)) as first, \
            running_server(make_settings(tmp_path)) as second:
        await post_form(first.url + "/twiml", {"CallSid": identity.call_sid,
                                               "From": VICTIM, "To": "+15555550199"},
                        AUTH_TOKEN)
        yield first, second


async def refused(base_url: str, form: dict[str, str]) -> str:
    """The error a signed /action that must mint nothing answers (its HTTP status in it)."""
    with pytest.raises(CallerError, match="already answered") as refusal:
        await post_form(base_url + "/action", form, AUTH_TOKEN)
    return str(refusal.value)


async def reconnect_token(server: RunningServer, call_sid: str, session_id: str) -> str:
    """Twilio's signed /action after a failed relay session: the reconnect's fresh token."""
    return token_in(await post_form(server.url + "/action", failed_form(call_sid, session_id),
                                    AUTH_TOKEN))


@pytest.fixture
def one_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """A setup whose session is missing, or whose token differs, refused after one store
    read rather than ~3.5 s of real time reading again (MINTED_ELSEWHERE_WAITS_S, whose
    pauses test_sessions_elsewhere checks on the virtual clock): for the tests of what is
    refused here, not of how long it is looked for."""
    monkeypatch.setattr(sessions_module, "MINTED_ELSEWHERE_WAITS_S", ())


@pytest.mark.parametrize("token", ["anything", "", None])
async def test_a_call_sid_nobody_prepared_is_refused_whatever_the_token(
        tmp_path: Path, token: str | None, one_lookup: None) -> None:
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            async with signed_socket(server) as ws:
                await ws.send_message(setup_frame("CA" + "e" * 32, token))
                assert await closed_with(ws) == 1008
            await server.runtime.calls.wait_idle()
            assert server.runtime.calls.total == 0          # never counted as a call
            item = await server.runtime.store.get("CA" + "e" * 32, "connection")
    assert item is None                                     # nothing rebuilt or written


async def test_a_second_socket_for_a_live_call_is_refused_and_the_call_goes_on(
        tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            identity = Identity(from_number=VICTIM)
            async with open_call(server.url, auth_token=AUTH_TOKEN, identity=identity) as call:
                token = call.target.parameters["sessionToken"]
                assert not await answered(server, identity.call_sid, token)
                await call.say("what are your hours?")
                assert (await call.read_reply()).text.startswith("We are open")
                await call.hang_up()
            await server.runtime.calls.wait_idle()
    ended = [r.ended_by for r in server.runtime.calls.reports]
    assert ended.count("rejected") == 0                     # the refused one was never a call
    assert server.runtime.calls.total == 1


async def test_the_token_of_an_ended_call_opens_nothing(tmp_path: Path,
                                                        one_lookup: None) -> None:
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            identity = Identity()
            async with open_call(server.url, auth_token=AUTH_TOKEN, identity=identity) as call:
                token = call.target.parameters["sessionToken"]
                await until_started(server.runtime.calls, 1)    # its claim spent the token
                await call.hang_up()
            await server.runtime.calls.wait_idle()
            await server.runtime.writer.flush(identity.call_sid, timeout_s=5)
            assert not await answered(server, identity.call_sid, token)


async def test_a_wrong_token_does_not_spoil_the_right_one(tmp_path: Path,
                                                         one_lookup: None) -> None:
    """A forged setup for a ringing call is refused without consuming the call's token, so
    Twilio's own socket still gets the call."""
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            identity = Identity()
            form = {"CallSid": identity.call_sid, "From": VICTIM, "To": "+15555550199"}
            url = server.url + "/twiml"
            token = token_in(await post_form(url, form, AUTH_TOKEN))
            assert not await answered(server, identity.call_sid, "forged")
            assert not await answered(server, identity.call_sid, "forg\u00e9 \ufffd")
            assert await answered(server, identity.call_sid, token)


async def test_a_replayed_twiml_request_mints_nothing_and_takes_nothing_over(
        tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            identity = Identity(from_number=VICTIM)
            form = {"CallSid": identity.call_sid, "AccountSid": identity.account_sid,
                    "From": VICTIM, "To": identity.to_number, "CallStatus": "ringing",
                    "Direction": "inbound", "ApiVersion": "2010-04-01"}
            async with open_call(server.url, auth_token=AUTH_TOKEN, identity=identity) as call:
                with pytest.raises(CallerError, match="409"):
                    await post_form(server.url + "/twiml", form, AUTH_TOKEN)   # the replay
                await call.say("what are your hours?")
                assert (await call.read_reply()).text.startswith("We are open")
                await call.hang_up()
            await server.runtime.calls.wait_idle()
            with pytest.raises(CallerError, match="409"):          # and after it ended
                await post_form(server.url + "/twiml", form, AUTH_TOKEN)
    assert [r.ended_by for r in server.runtime.calls.reports] == ["hangup"]


async def test_a_replayed_twiml_request_mints_nothing_after_the_session_expired(
        tmp_path: Path) -> None:
    """Twilio's signature carries no time, so a captured ``/twiml`` verifies for as long as
    the auth token lives. Once the session item expired (SESSION_TTL_S, a day), a replay
    minted a new session with the caller's profile in its prompt, and the token for it.
    A ``connectionSeen`` item, with nothing of the caller in it, outlives the session."""
    identity = Identity(from_number=VICTIM)
    form = {"CallSid": identity.call_sid, "From": VICTIM, "To": identity.to_number}
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            store = server.runtime.store
            async with open_call(server.url, auth_token=AUTH_TOKEN, identity=identity) as call:
                await call.hang_up()
            await server.runtime.calls.wait_idle()
            await server.runtime.writer.flush(timeout_s=5)
            seen = await store.get(identity.call_sid, records.CALL_SEEN_SK)
            for item in await store.query(identity.call_sid):      # what expires with it
                if item["sk"] != records.CALL_SEEN_SK:
                    await store.delete(item["pk"], item["sk"])
            with pytest.raises(CallerError, match="409"):
                await post_form(server.url + "/twiml", form, AUTH_TOKEN)
    assert seen is not None
    assert set(seen) == {"pk", "sk", "at", "expireAt"}         # nothing of the caller
    assert seen["expireAt"] - seen["at"] >= 365 * 24 * 3600


async def test_twilio_reconnects_a_failed_session_with_a_fresh_token(
        tmp_path: Path, one_lookup: None) -> None:
    """The relay session fails, Twilio calls /action (signed) and connects again with the
    TwiML it gets back: a fresh token for the same call, which resumes the conversation.
    The old token stays dead."""
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path)) as server:
            identity = Identity()
            async with open_call(server.url, auth_token=AUTH_TOKEN, identity=identity) as call:
                old = call.target.parameters["sessionToken"]
                await call.say("what are your hours?")
                assert (await call.read_reply()).text.startswith("We are open")
                await call.ws.aclose(code=1011, reason="relay session failed")
            await server.runtime.calls.wait_idle()
            fresh = await reconnect_token(server, identity.call_sid, call.session_id)
            assert fresh != old
            assert not await answered(server, identity.call_sid, old)
            assert await answered(server, identity.call_sid, fresh)
            await server.runtime.calls.wait_idle()
    resumed = server.runtime.calls.reports[-1].history
    assert resumed is not None
    said = [b.get("text", "") for m in resumed.for_request() for b in m["content"]]
    assert "what are your hours?" in said                   # the first session's turn


async def test_a_session_failing_during_a_side_effect_tool_is_reconnected(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The socket drops while an order is being placed (a side-effect tool runs to its end,
    shielded). Twilio's ``/action`` comes at once; the call here winds down only when the
    tool is done. The closed socket tells the reconnect to wait for that: it answered "still
    connected" after SOCKET_CLOSED_GRACE_S and the caller was hung up on."""
    monkeypatch.setattr(sessions_module, "SOCKET_CLOSED_GRACE_S", 0.05)
    started, release = trio.Event(), trio.Event()

    async def place(ctx: Any, args: Any) -> dict[str, Any]:
        started.set()
        await release.wait()
        return {"minutes": 25}

    registry = ToolRegistry([ToolDefinition("CheckRestaurantPickUpTime", place,
                                            side_effect=True, timeout_s=10)])
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path), registry=registry) as server:
            identity = Identity()
            sessions = server.runtime.sessions
            async with open_call(server.url, auth_token=AUTH_TOKEN, identity=identity) as call:
                await call.say("when can I pick up?")
                await started.wait()
                await call.ws.aclose(code=1011, reason="relay session failed")
            answer = ""

            async def action() -> None:
                nonlocal answer
                answer = await post_form(server.url + "/action",
                                         failed_form(identity.call_sid, call.session_id),
                                         AUTH_TOKEN)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(action)
                while identity.call_sid not in sessions._gone:  # noqa: ASYNC110 - it waits
                    await trio.sleep(0.005)
                await trio.sleep(0.2)                   # past the grace, the tool still busy
                assert identity.call_sid in sessions._live
                release.set()
            assert await answered(server, identity.call_sid, token_in(answer))
            await server.runtime.calls.wait_idle()
    results = [b["toolResult"] for m in server.runtime.calls.reports[-1].history.messages
               for b in m["content"] if "toolResult" in b]
    assert results[0]["content"] == [{"json": {"minutes": 25}}]


async def test_a_replayed_action_callback_never_reopens_the_call(tmp_path: Path) -> None:
    """Twilio asks ``/action`` once per relay session; a signed one captured (from a log, a
    proxy) verifies as well when replayed. Answered again, it handed out a token that
    reopened the call with its history, also after the caller hung up. Now a SessionId is
    answered once, and nothing is renewed after the call's relay ended; the reconnect
    Twilio itself asked for still works."""
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path)) as server:
            identity = Identity()
            async with open_call(server.url, auth_token=AUTH_TOKEN, identity=identity) as call:
                await call.say("what are your hours?")
                assert (await call.read_reply()).text.startswith("We are open")
                await call.ws.aclose(code=1011, reason="relay session failed")
            await server.runtime.calls.wait_idle()
            captured = failed_form(identity.call_sid, call.session_id)
            fresh = await reconnect_token(server, identity.call_sid, call.session_id)
            assert "409" in await refused(server.url, captured)   # while the call goes on
            assert await answered(server, identity.call_sid, fresh)   # Twilio's reconnect
            await server.runtime.calls.wait_idle()
            await post_form(server.url + "/action", {
                "CallSid": identity.call_sid, "SessionId": "VX2", "SessionStatus": "completed",
                "CallStatus": "completed"}, AUTH_TOKEN)         # the caller hung up
            for form in (captured, failed_form(identity.call_sid, "VX2")):
                assert "409" in await refused(server.url, form)
    assert server.runtime.calls.total == 2                  # the call and its one reconnect


async def test_a_replayed_action_on_another_process_is_refused_too(tmp_path: Path) -> None:
    """The store holds which relay sessions were answered: a replay that a balancer sends to
    a second process sharing the table is refused as well, as is a renewal after the call's
    relay ended there (``SessionStatus=ended``: we said goodbye)."""
    identity = Identity()
    with trio.fail_after(30):
        async with prepared_on_two(tmp_path, identity) as (first, second):
            form = failed_form(identity.call_sid, "VX" + "a" * 32)
            token_in(await post_form(first.url + "/action", form, AUTH_TOKEN))
            assert "409" in await refused(second.url, form)
            await post_form(first.url + "/action", {
                "CallSid": identity.call_sid, "SessionId": "VX" + "b" * 32,
                "SessionStatus": "ended", "CallStatus": "in-progress"}, AUTH_TOKEN)
            await first.runtime.writer.flush(timeout_s=5)
            assert "409" in await refused(
                second.url, failed_form(identity.call_sid, "VX" + "b" * 32))


async def test_a_failure_answered_with_an_apology_stays_unrenewable(tmp_path: Path) -> None:
    """The store throttles the relay marks' read when Twilio's /action comes: the answer is
    an apology and a hang-up. The call's relay has ended, and says so once the store takes
    writes again, so the same signed request replayed later, on another process, mints
    nothing (found by a review helper)."""
    identity = Identity()
    with trio.fail_after(30):
        async with prepared_on_two(tmp_path, identity) as (first, second):
            form = failed_form(identity.call_sid, "VX" + "c" * 32)
            with throttled_queries(first.runtime.store, records.RELAY_PREFIX):
                answer = await post_form(first.url + "/action", form, AUTH_TOKEN)
            await first.runtime.writer.flush(timeout_s=5)
            assert "409" in await refused(second.url, form)
    assert "<Hangup" in answer
    assert "sessionToken" not in answer


async def test_one_action_sent_to_two_processes_at_once_is_answered_once(
        tmp_path: Path) -> None:
    """A replay racing Twilio's own ``/action`` to another process: both read the marks
    before either wrote one. The claim is a conditional write, which one process wins; the
    other answers 409 (found by a review helper: both handed out a token before)."""
    identity = Identity()
    with trio.fail_after(30):
        async with prepared_on_two(tmp_path, identity) as (first, second):
            both_read, reading = trio.Event(), 0
            for server in (first, second):
                real_query = server.runtime.store.query

                async def in_step(pk: str, sk_prefix: str = "", *, _real: Any = real_query,
                                  **kw: Any) -> Any:
                    nonlocal reading
                    found = await _real(pk, sk_prefix, **kw)
                    if sk_prefix == records.RELAY_PREFIX:
                        reading += 1
                        if reading == 2:
                            both_read.set()
                        await both_read.wait()          # neither has claimed yet
                    return found

                server.runtime.store.query = in_step    # type: ignore[method-assign]
            form = failed_form(identity.call_sid, "VX" + "d" * 32)
            answers: list[str] = []

            async def post(url: str) -> None:
                try:
                    answers.append(token_in(await post_form(url + "/action", form,
                                                            AUTH_TOKEN)))
                except CallerError as err:
                    answers.append(str(err))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(post, first.url)
                nursery.start_soon(post, second.url)
    assert sorted("409" in answer for answer in answers) == [False, True], answers


async def test_an_apology_for_an_unreadable_session_stays_unrenewable(tmp_path: Path) -> None:
    """/action's other apology for a store that cannot answer (the session item's read
    throttled) ends the call's relay too: the same signed request replayed later on another
    process mints nothing (found by a review helper). Every answer but a reconnect writes
    relayEnded."""
    identity = Identity()
    with trio.fail_after(30):
        async with prepared_on_two(tmp_path, identity) as (first, second):
            form = failed_form(identity.call_sid, "VX" + "d" * 32)
            store = first.runtime.store
            real_get = store.get

            async def throttled(pk: str, sk: str) -> Any:
                if sk == "connection":
                    raise StoreError("ProvisionedThroughputExceededException")
                return await real_get(pk, sk)

            store.get = throttled                       # type: ignore[method-assign]
            answer = await post_form(first.url + "/action", form, AUTH_TOKEN)
            store.get = real_get                        # type: ignore[method-assign]
            await first.runtime.writer.flush(timeout_s=5)
            assert "<Hangup" in answer
            assert "sessionToken" not in answer
            assert "409" in await refused(second.url, form)


@pytest.mark.parametrize("session_id", [None, "", "VX1/../x", "VX" + "1" * 80])
async def test_a_failed_session_without_a_proper_session_id_gets_no_token(
        tmp_path: Path, session_id: str | None) -> None:
    """Twilio always sends the SessionId; without it (or with one that is not an id) a
    replay could not be told apart, so nothing is minted, and the answer says why."""
    identity = Identity()
    form = failed_form(identity.call_sid, session_id or "")
    if session_id is None:
        del form["SessionId"]
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            await post_form(server.url + "/twiml", {"CallSid": identity.call_sid,
                                                    "From": VICTIM, "To": "+15555550199"},
                            AUTH_TOKEN)
            with pytest.raises(CallerError, match=r"400.*relay session's id"):
                await post_form(server.url + "/action", form, AUTH_TOKEN)


async def test_sockets_that_never_send_setup_never_keep_a_call_out(tmp_path: Path) -> None:
    """Idle signed sockets wait in a budget of their own: they are not calls, and when the
    budget is full the one that waited longest makes room for Twilio's socket."""
    settings = make_settings(tmp_path, MAX_CALLS="2", MAX_SOCKETS_WAITING="3",
                             SETUP_TIMEOUT_S="60")
    with trio.fail_after(30):
        async with running_server(settings) as server:
            async with signed_socket(server) as idle1, signed_socket(server) as idle2, \
                    signed_socket(server) as idle3:
                while len(server.runtime.sockets_waiting) < 3:  # noqa: ASYNC110 - no event
                    await trio.sleep(0.01)
                assert server.runtime.calls.active == 0
                async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                    await call.say("what are your hours?")
                    assert (await call.read_reply()).text.startswith("We are open")
                    assert server.runtime.calls.active == 1
                    assert await closed_with(idle1) == 1008     # the longest waiting
                    await call.hang_up()
                assert len(server.runtime.sockets_waiting) == 2
                for ws in (idle2, idle3):
                    await ws.aclose()
            await server.runtime.calls.wait_idle()
            ended = {how: server.runtime.metrics.registry.get_sample_value(
                "voiceagent_calls_total", {"ended_by": how}) or 0
                for how in ("evicted", "no-setup", "hangup")}
    # one call; the sockets that were never calls are counted by how they ended
    assert ended == {"evicted": 1, "no-setup": 2, "hangup": 1}


async def test_setups_for_calls_nobody_prepared_stay_within_the_waiting_budget(
        tmp_path: Path) -> None:
    """A setup naming an unknown CallSid is looked up in the store for ~3.5 s (the session
    may have been minted by another process). Such sockets left the waiting budget the
    moment they sent setup, so a captured signed upgrade replayed with made-up CallSids
    had any number of lookups running (eight store reads each). Now a socket whose call was
    not found at the first read waits in the budget again: the oldest lookup makes room
    for the newest (at most one more is at its first read here)."""
    settings = make_settings(tmp_path, MAX_SOCKETS_WAITING="3", SETUP_TIMEOUT_S="60")
    sockets = 9
    with trio.fail_after(30):
        async with running_server(settings) as server:
            sessions, running, most = server.runtime.sessions, 0, 0
            lookup, back = sessions._minted_elsewhere, trio.Semaphore(0)

            async def counted(call_sid: str, token: str, on_retry: Any) -> object:
                nonlocal running, most
                running += 1
                most = max(most, running)

                def waiting_again() -> None:    # its first read missed: back in the budget
                    on_retry()
                    back.release()

                try:
                    return await lookup(call_sid, token, waiting_again)
                finally:
                    running -= 1

            sessions._minted_elsewhere = counted        # type: ignore[method-assign]
            async with contextlib.AsyncExitStack() as stack:
                opened = []
                for n in range(sockets):
                    ws = await stack.enter_async_context(signed_socket(server))
                    await ws.send_message(setup_frame(f"CA{n:032d}", "made-up"))
                    opened.append(ws)
                    # until its first read is done and it waits in the budget again: on a
                    # busy machine, waiting only for the lookup to start let a slow first
                    # read overlap the next socket's (5 lookups at once, not 4)
                    await back.acquire()
                codes = [await closed_with(ws) for ws in opened]
            await server.runtime.calls.wait_idle()
            assert server.runtime.calls.total == 0
            assert not server.runtime.sockets_waiting
            ended = {how: server.runtime.metrics.registry.get_sample_value(
                "voiceagent_calls_total", {"ended_by": how}) or 0
                for how in ("evicted", "rejected", "hangup")}
    assert codes == [1008] * sockets
    assert most <= 3 + 1
    # never calls, but the metrics count each socket by how it ended: evicted during its
    # lookup, a socket is refused when the lookup ends
    assert ended == {"evicted": 0, "rejected": sockets, "hangup": 0}


async def test_twilio_s_own_sockets_resolving_from_a_slow_store_do_not_evict_each_other(
        tmp_path: Path) -> None:
    """Reconnects after a task died land on a process that did not mint them, while the
    store is slow. Each finds its session at the first read, and must not count against
    the budget of sockets without a call meanwhile: there, one more than
    MAX_SOCKETS_WAITING resolving at once closed the oldest of Twilio's sockets (found by a
    review helper)."""
    calls = [Identity() for _ in range(3)]
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path)) as first, \
                running_server(make_settings(tmp_path, MAX_SOCKETS_WAITING="2")) as second:
            tokens = [token_in(await post_form(first.url + "/twiml", {
                "CallSid": identity.call_sid, "From": VICTIM, "To": "+15555550199"},
                AUTH_TOKEN)) for identity in calls]
            store = second.runtime.store
            real_get, reading = store.get, trio.Semaphore(0)   # one per read started

            async def slow(pk: str, sk: str) -> Any:
                reading.release()
                await trio.sleep(0.3)                   # a store under a mass reconnect
                return await real_get(pk, sk)

            store.get = slow                            # type: ignore[method-assign]
            async with contextlib.AsyncExitStack() as stack:
                opened = []
                for identity, token in zip(calls, tokens, strict=True):
                    ws = await stack.enter_async_context(signed_socket(second))
                    await ws.send_message(setup_frame(identity.call_sid, token))
                    await ws.send_message(json.dumps({"type": "prompt", "lang": "en-US",
                                                      "voicePrompt": "hours?", "last": True}))
                    opened.append(ws)
                    await reading.acquire()    # until its read started
                codes = [await closed_with(ws) for ws in opened]
                for ws in opened:
                    await ws.aclose()
            await second.runtime.calls.wait_idle()
    assert codes == [None, None, None]                  # each got its reply


async def served_after_eviction(sessions: object, release: trio.Event, *,
                                setup_arrives: bool) -> bool:
    """A socket alone in a budget of one whose claim, once ``release`` is set, is rescheduled
    (``setup_arrives``: its setup frame comes then; else ``sessions`` waits on ``release``
    inside its lookup), and in that same pass of the scheduler a newer socket evicts it.
    Whether the socket went on to serve its call."""
    runtime = SimpleNamespace(settings=SimpleNamespace(max_sockets_waiting=1, max_calls=10),
                              calls=CallCounters(), sockets_waiting={}, sessions=sessions)
    standing = SocketStanding(runtime)          # type: ignore[arg-type]
    served = False

    async def call() -> None:
        nonlocal served
        with standing.scope:
            if setup_arrives:
                await release.wait()            # run_call's wait for setup
            try:
                await standing.claim(SimpleNamespace(call_sid="CA1"))   # type: ignore[arg-type]
            except CallRejected:                # refused before claiming
                return
            await trio.sleep(0.1)               # the call runs
            served = True

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await wait_all_tasks_blocked()
            release.set()                       # the claimer is rescheduled...
            SocketStanding(runtime)             # type: ignore[arg-type]  # ...a socket comes
    return served


async def test_a_socket_whose_lookup_claimed_its_call_is_never_evicted_as_a_call() -> None:
    """A socket waiting in the budget while its call is looked up again: the lookup finds
    the session and claims the call, and in the same pass of the scheduler, before that
    task runs on, a newer socket evicts it. The cancel used to land on the socket's whole
    call, which was then cut at its first checkpoint with its token spent; it lands on the
    lookup only, which has already finished (found by a review helper)."""
    looked_up = trio.Event()
    claimed: list[str] = []

    class LookedUpAgain:
        async def resolve(self, setup: Any, *, on_retry: Any, on_match: Any) -> Any:
            on_retry()                          # not at the first read: waits in the budget
            await looked_up.wait()              # the store answers the second read
            claimed.append(setup.call_sid)      # token consumed, the call live
            return SimpleNamespace(call_sid=setup.call_sid, generation=0)

    served = await served_after_eviction(LookedUpAgain(), looked_up, setup_arrives=False)
    assert claimed == ["CA1"]
    assert served


async def test_a_socket_evicted_as_its_setup_arrives_is_not_cut_after_claiming() -> None:
    """The setup frame of a waiting socket has arrived (its task rescheduled, not yet run)
    when a newer socket evicts it, cancelling the socket's whole scope. The claim ran to its
    end without a checkpoint (a session minted here, its use case cached), spending the
    token and counting the call, which was then cut at its first checkpoint. Now the claim
    sees the eviction and refuses first (found by a review helper)."""
    claimed: list[str] = []

    class InMemory:
        async def resolve(self, setup: Any, *, on_retry: Any, on_match: Any) -> Any:
            claimed.append(setup.call_sid)      # found among the offers: no await at all
            return SimpleNamespace(call_sid=setup.call_sid, generation=0)

    served = await served_after_eviction(InMemory(), trio.Event(), setup_arrives=True)
    assert not claimed                          # refused before its token was spent
    assert not served


# ---------------------------------------------------------------- webhook bodies

async def raw_post(server: RunningServer, path: str, head: list[str], body: bytes = b""
                   ) -> tuple[int, float]:
    """Send a request head (and maybe part of a body) by hand; the status, and how long the
    answer took. The body is never sent in full: a server that waits for it hangs here."""
    host, port = server.url.removeprefix("http://").split(":")
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}",
             "Content-Type: application/x-www-form-urlencoded", *head]
    started = trio.current_time()
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        answer = await stream.receive_some(4096)
    return int(answer.split(b" ", 2)[1]), trio.current_time() - started


@pytest.mark.parametrize("path", ["/twiml", "/action"])
async def test_an_unsigned_webhook_is_refused_before_its_body_is_read(
        tmp_path: Path, path: str) -> None:
    with trio.fail_after(10):
        async with running_server(make_settings(tmp_path)) as server:
            status, _ = await raw_post(server, path, ["Content-Length: 16000000"], b"a=1&")
    assert status == 403


async def test_a_signed_looking_webhook_over_64_kib_is_refused_unread(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with running_server(make_settings(tmp_path)) as server:
            status, _ = await raw_post(server, "/twiml", [
                "Content-Length: 16000000", "X-Twilio-Signature: bm90LWEtc2lnbmF0dXJl"])
            assert status == 413
            chunk = b"a" * 65536
            chunked = b"".join(b"%x\r\n%b\r\n" % (len(chunk), chunk) for _ in range(3))
            status, _ = await raw_post(server, "/twiml", [
                "Transfer-Encoding: chunked", "X-Twilio-Signature: bm90LWEtc2lnbmF0dXJl"],
                chunked)
            assert status == 413


# ---------------------------------------------------------------- /metrics

async def get_status(url: str, headers: dict[str, str] | None = None) -> int:
    import urllib.error
    import urllib.request

    def fetch() -> int:
        request = urllib.request.Request(url, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as err:
            return err.code
    return await trio.to_thread.run_sync(fetch)


async def test_metrics_need_their_own_token(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            assert await get_status(server.url + "/metrics") == 404
        settings = make_settings(tmp_path, METRICS_TOKEN="scrape-me")
        async with running_server(settings) as server:
            url = server.url + "/metrics"
            assert await get_status(url) == 401
            assert await get_status(url, {"Authorization": "Bearer wrong"}) == 401
            assert await get_status(url, {"Authorization": f"Bearer {AUTH_TOKEN}"}) == 401
            assert await get_status(url, {"Authorization": "Bearer scrape-me"}) == 200


async def test_a_session_that_failed_before_the_reply_resumes_with_a_valid_history(
        tmp_path: Path) -> None:
    """The first socket dies right after the caller spoke, before the model's first token:
    the stored conversation ends with the caller's words. The resumed socket's next prompt
    joins that message (roles must alternate), so the model answers instead of Bedrock's
    ValidationException turning every later turn into an apology."""
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path)) as server:
            identity = Identity()
            async with open_call(server.url, auth_token=AUTH_TOKEN, identity=identity) as call:
                await call.say("hello there")
                await call.ws.aclose(code=1011, reason="relay session failed")
            await server.runtime.calls.wait_idle()
            fresh = await reconnect_token(server, identity.call_sid, call.session_id)
            async with signed_socket(server) as ws:
                await ws.send_message(setup_frame(identity.call_sid, fresh))
                await ws.send_message(json.dumps({"type": "prompt", "lang": "en-US",
                                                  "voicePrompt": "what are your hours?",
                                                  "last": True}))
                words = []
                while True:
                    frame = json.loads(await ws.get_message())
                    words.append(frame.get("token", ""))
                    if frame.get("last"):
                        break
                await ws.aclose()
            await server.runtime.calls.wait_idle()
    assert "".join(words).startswith("We are open")
    resumed = server.runtime.calls.reports[-1].history
    assert resumed is not None
    roles = [m["role"] for m in resumed.for_request()]
    assert all(a != b for a, b in itertools.pairwise(roles))


def _runtime_for_claims(sessions: object, *, waiting: int) -> Any:
    """A runtime at MAX_CALLS 2 for SocketStanding alone (its calls never end)."""
    return SimpleNamespace(
        settings=SimpleNamespace(max_sockets_waiting=waiting, max_calls=2),
        calls=CallCounters(), sockets_waiting={}, sessions=sessions)


async def _claim(runtime: Any, call_sid: str, outcome: dict[str, str]) -> None:
    """A socket's setup for ``call_sid`` claims its call: "call", or why it was refused."""
    standing = SocketStanding(runtime)
    try:
        with standing.scope:
            await standing.claim(SimpleNamespace(call_sid=call_sid))  # type: ignore[arg-type]
            outcome[call_sid] = "call"
    except CallRejected as err:
        outcome[call_sid] = str(err)


async def test_setups_looked_up_at_once_stay_within_the_capacity_margin(
        autojump_clock: Any) -> None:
    """Capacity was checked before the lookup, which awaits the store: a mass reconnect
    (tokens minted by /action while this process had no calls) had every socket pass the
    check before any became a call, and all became calls, far past MAX_CALLS and the
    open-file budget sized for MAX_CALLS + CAPACITY_MARGIN. Lookups under way now count."""
    class SlowStore:
        async def resolve(self, setup: Any, *, on_retry: Any, on_match: Any) -> Any:
            await trio.sleep(1)                 # every lookup awaits the store
            return SimpleNamespace(call_sid=setup.call_sid, generation=0)

    runtime = _runtime_for_claims(SlowStore(), waiting=100)
    outcome: dict[str, str] = {}
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(_claim, runtime, f"CA{n}", outcome)
    assert runtime.calls.total == 2 + CAPACITY_MARGIN
    refused = [result for result in outcome.values() if result != "call"]
    assert refused == ["over capacity"] * (20 - 2 - CAPACITY_MARGIN)
    assert runtime.calls.claims == 0


async def test_setups_looked_up_again_do_not_refuse_a_real_call(autojump_clock: Any) -> None:
    """Lookups that found nothing at the first read and are looked up again (made-up
    CallSids, or a session still on its way from another process) wait in the budget,
    where they can be evicted; counted as calls to come, a dozen of them refused a real
    Twilio socket as over capacity (found by a review helper, helper-21)."""
    class Sessions:
        async def resolve(self, setup: Any, *, on_retry: Any, on_match: Any) -> Any:
            if setup.call_sid == "CAreal":
                return SimpleNamespace(call_sid="CAreal", generation=0)
            await trio.sleep(0.01)
            on_retry()                          # back in the waiting budget
            await trio.sleep(1.5)
            raise CallRejected("no such call")

    runtime = _runtime_for_claims(Sessions(), waiting=50)
    outcome: dict[str, str] = {}
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for n in range(2 + CAPACITY_MARGIN):
                nursery.start_soon(_claim, runtime, f"CAmadeup{n}", outcome)
            await trio.sleep(0.1)
            assert len(runtime.sockets_waiting) == 2 + CAPACITY_MARGIN
            assert runtime.calls.claims == 0
            await _claim(runtime, "CAreal", outcome)
    assert outcome["CAreal"] == "call"
    assert runtime.calls.claims == 0


async def test_a_call_being_looked_up_counts_for_twiml(tmp_path: Path) -> None:
    """A socket's call, minted elsewhere, is being looked up in a slow store when /twiml
    asks for one more call on a process at MAX_CALLS 1: the new call is refused (a polite
    goodbye), and the socket's call goes on. /twiml counted only the calls already running,
    so both were admitted (helper-21)."""
    identity, newcomer = Identity(), Identity()
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path)) as first, \
                running_server(make_settings(tmp_path, MAX_CALLS="1")) as second:
            token = token_in(await post_form(first.url + "/twiml", {
                "CallSid": identity.call_sid, "From": VICTIM, "To": "+15555550199"},
                AUTH_TOKEN))
            store, answer, claiming = second.runtime.store, trio.Event(), trio.Event()
            real_get = store.get

            async def slow(pk: str, sk: str) -> Any:
                if pk == identity.call_sid:
                    claiming.set()                      # the socket's claim reads it
                    await answer.wait()                 # the store under a mass reconnect
                return await real_get(pk, sk)

            store.get = slow                            # type: ignore[method-assign]
            async with signed_socket(second) as ws:
                await ws.send_message(setup_frame(identity.call_sid, token))
                await claiming.wait()
                assert second.runtime.calls.claims == 1
                refused = await post_form(second.url + "/twiml", {
                    "CallSid": newcomer.call_sid, "From": VICTIM, "To": "+15555550199"},
                    AUTH_TOKEN)
                assert "<Hangup" in refused
                assert "ConversationRelay" not in refused
                answer.set()
                await ws.send_message(json.dumps({"type": "prompt", "lang": "en-US",
                                                  "voicePrompt": "hours?", "last": True}))
                assert await closed_with(ws) is None    # its reply came
                await ws.aclose()
            await second.runtime.calls.wait_idle()
