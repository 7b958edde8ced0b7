"""End to end: the real server on 127.0.0.1 and a real WebSocket client playing Twilio.

Real sockets mean real time: each test has a time limit, and the scripted model's delays are
a few milliseconds so the suite stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

import actors.call
import voiceagent.app.sessions as sessions_module
from tests.server_harness import (
    AUTH_TOKEN,
    RunningServer,
    barge_in_on_the_story,
    make_settings,
    running_server,
)
from voiceagent.app.caller import CallerError, Identity, open_call, post_form, release_transport
from voiceagent.signature import sign

STORY_START = "Once upon a time"


async def test_greeting_twiml_and_a_turn(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                assert call.target.greeting == "Hello, this is Test Pizza."
                assert call.target.attributes["dtmfDetection"] == "true"
                assert call.target.action == server.url + "/action"
                assert set(call.target.parameters) == {"sessionToken"}
                await call.say("what are your hours?")
                reply = await call.read_reply()
                assert reply.text.startswith("We are open from eleven")
                assert reply.closed
                await call.hang_up()
            await _wait_calls_done(server)
            report = server.runtime.calls.reports[-1]
    assert report.history is not None
    assert report.history.messages[0] == {
        "role": "assistant", "content": [{"text": "Hello, this is Test Pizza."}]}


async def test_barge_in_mid_stream(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                barge = await barge_in_on_the_story(call)
                # Twilio reports less than we sent (speech lags the text): the history must
                # keep what it reports, not every token received.
                heard, after = barge.heard, barge.after
                assert barge.received.startswith(heard)
                assert len(heard) < len(barge.received)
                # frames already on the wire may arrive; then exactly one closer, then nothing
                closers = [f for f in after if f.get("last")]
                assert len(closers) == 1
                assert after[-1] == {"type": "text", "token": "", "last": True}
                assert len(after) <= 3
                await call.hang_up()
            await _wait_calls_done(server)
            history = server.runtime.calls.reports[-1].history
    assert history is not None
    assert history.messages[-1]["content"][0]["text"] == heard.strip()


async def test_prompt_during_a_stream_answers_the_new_prompt(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("tell me a story")
                first = await call.receive()
                assert first is not None
                assert first["token"] == "Once"
                await call.say("what are your hours?")
                story_rest, hours = await call.read_reply(), await call.read_reply()
                assert story_rest.closed                 # the story's cycle closed, cut short
                assert len(story_rest.tokens) < 120      # of about 150: cut short
                assert hours.text.startswith("We are open")
                await call.hang_up()
            await _wait_calls_done(server)
            history = server.runtime.calls.reports[-1].history
    assert history is not None
    users = [m for m in history.messages if m["role"] == "user"]
    said = [b["text"] for m in users for b in m["content"]]
    assert said == ["tell me a story", "what are your hours?"]


async def test_dtmf_and_tool_through_the_server(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.dtmf("1")
                reply = await call.read_reply()
                assert reply.text == "We are open from eleven to nine."
                await call.say("when can I pick up my order?")
                reply = await call.read_reply()
                assert reply.text.startswith("Your order will be ready in")
                await call.hang_up()


async def test_hang_up_mid_stream_persists_the_conversation(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            identity = Identity()
            async with open_call(server.url, auth_token=AUTH_TOKEN, identity=identity) as call:
                await call.say("tell me a story")
                first = await call.receive()
                assert first is not None
                await call.hang_up()
            await _wait_calls_done(server)
            items = await server.runtime.store.query(identity.call_sid, "chat::")
            session = await server.runtime.store.get(identity.call_sid, "connection")
    assert session is not None
    chats = [item["chat"] for item in items]
    assert [c["role"] for c in chats] == ["assistant", "user", "assistant"]
    assert chats[1]["content"] == [{"text": "tell me a story"}]
    cut = chats[2]["content"][0]["text"]             # the reply cut off by the hang-up
    assert cut.startswith(first["token"])
    assert STORY_START.startswith(cut) or cut.startswith(STORY_START)


async def test_hostile_frames_beside_a_healthy_call(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path)) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as bad, \
                    open_call(server.url, auth_token=AUTH_TOKEN) as good:
                for frame in (b"\x00\x01binary", "{broken json", '{"type": "mystery"}',
                              '{"type": "prompt", "voicePrompt": ["x"]}', "y" * 100_000):
                    await bad.send_raw(frame)
                await good.say("what are your hours?")
                assert (await good.read_reply()).text.startswith("We are open")
                await bad.say("what are your hours?")
                assert (await bad.read_reply()).text.startswith("We are open")
                await bad.hang_up()
                await good.hang_up()
            await _wait_calls_done(server)
            rejected = [sum(r.frames.rejected.values()) for r in server.runtime.calls.reports]
    assert sorted(rejected) == [0, 5]


async def test_fifty_concurrent_calls(tmp_path: Path) -> None:
    results: list[str] = []
    with trio.fail_after(60):
        async with running_server(make_settings(tmp_path)) as server:
            async def one_call(n: int) -> None:
                async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                    await call.say("what are your hours?")
                    results.append((await call.read_reply()).text)
                    await call.hang_up()

            async with trio.open_nursery() as nursery:
                for n in range(50):
                    nursery.start_soon(one_call, n)
            await _wait_calls_done(server)
            assert server.runtime.calls.total == 50
    assert len(results) == 50
    assert all(text.startswith("We are open") for text in results)


async def test_unsigned_requests_are_refused(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            with pytest.raises(CallerError, match="403"):
                await post_form(server.url + "/twiml", {"CallSid": "CA1", "From": "+1"})
            assert await upgrade_status(server.url, "/relay") == 403
            signed = {"X-Twilio-Signature": sign(AUTH_TOKEN, "ws://elsewhere.example/relay")}
            assert await upgrade_status(server.url, "/relay", signed) == 403


async def test_socket_with_a_wrong_session_token_is_closed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A signed handshake is replayable (it covers only the URL); the token minted by the
    signed /twiml request is what binds a socket to a call."""
    # refused after one store read, not ~3.5 s of real time reading again for a renewal
    # (the pauses are test_sessions_elsewhere's, on the virtual clock)
    monkeypatch.setattr(sessions_module, "MINTED_ELSEWHERE_WAITS_S", ())
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path, VALIDATE_SIGNATURES="false",
                                                DEMO="true")) as server:
            form = {"CallSid": "CA" + "7" * 32, "From": "+15555550100", "To": "+15555550199"}
            await post_form(server.url + "/twiml", form)
            async with open_websocket_url(server.url.replace("http", "ws") + "/relay") as ws:
                await ws.send_message(json.dumps({
                    "type": "setup", "sessionId": "VX1", "callSid": form["CallSid"],
                    "customParameters": {"sessionToken": "forged"}}))
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
                await release_transport(ws)
            assert closed.value.reason.code == 1008
            await server.runtime.calls.wait_idle()
    assert server.runtime.calls.total == 0          # a refused socket is never a call


async def upgrade_status(base_url: str, path: str,
                         headers: dict[str, str] | None = None) -> int:
    """The HTTP status a WebSocket upgrade gets, by hand (trio-websocket 0.12 leaks the TCP
    stream of a rejected handshake, which the warnings-as-errors policy would flag)."""
    host, port = base_url.removeprefix("http://").split(":")
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
             "Sec-WebSocket-Version: 13", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await stream.receive_some(4096)
    return int(head.split(b" ", 2)[1])


async def _wait_calls_done(server: RunningServer) -> None:
    await server.runtime.calls.wait_idle()


async def test_unknown_message_types_never_end_a_call(tmp_path: Path) -> None:
    """Twilio adds message types over time: any number of them is counted and ignored. Only
    frames that are not ConversationRelay at all (binary, broken JSON, oversize) count
    toward the ten-in-a-row limit."""
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                for n in range(30):
                    await call.send_json({"type": f"futureEvent{n % 3}", "name": "x"})
                await call.say("what are your hours?")
                assert (await call.read_reply()).text.startswith("We are open")
                for _ in range(10):
                    await call.send_raw("{broken json")
                assert await call.receive() is None
                assert call.closed_by_server == 1008
            await server.runtime.calls.wait_idle()
    report = server.runtime.calls.reports[-1]
    assert report.frames.rejected["unknown_type"] == 30
    assert report.ended_by == "bad-frames"


async def test_the_server_closes_a_socket_left_open_after_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Twilio closes the socket ~90 ms after our ``end``; a peer that never does (gone
    without a FIN) is closed by the server ``END_CLOSE_S`` later, and the call ends."""
    monkeypatch.setattr(actors.call, "END_CLOSE_S", 0.5)
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("what are your hours?")
                await call.read_reply()
                # timed from before the goodbye: the server's timer starts when it sends `end`,
                # which this side may read a moment later on a loaded machine
                ended_at = trio.current_time()
                server.runtime.end_calls.set()              # a goodbye, then `end`
                while (await call.read_reply()).ended is None:
                    pass
                assert await call.receive() is None         # we never close: the server does
                assert call.closed_by_server == 1000
                assert trio.current_time() - ended_at >= 0.5
            await server.runtime.calls.wait_idle()
    assert server.runtime.calls.reports[-1].ended_by == "end"


async def test_a_store_failing_during_the_call_webhook_is_a_polite_refusal_not_a_500(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DynamoDB throttled or unreachable while /twiml prepares the session: the answer was an
    HTTP 500, which has Twilio play its "application error" to the caller. Now it is the
    refusal an over-capacity server gives (an apology, or 503 for the fallback URL). Found
    by a review helper."""
    from voiceagent.errors import StoreError

    async def failing_get(*args: object, **kwargs: object) -> None:
        raise StoreError("dynamodb get failed (ProvisionedThroughputExceededException)")

    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            monkeypatch.setattr(server.runtime.store, "get", failing_get)
            identity = Identity()
            form = {"CallSid": identity.call_sid, "From": identity.from_number,
                    "To": identity.to_number, "CallStatus": "ringing"}
            answer = await post_form(server.url + "/twiml", form, AUTH_TOKEN)
    assert "<Hangup" in answer
    assert "<Say" in answer
    assert "<Connect" not in answer
