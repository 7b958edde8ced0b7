"""Hostile input through the real server (hypercorn, the relay route, real WebSocket and TCP
clients, signatures on): key floods, lone surrogates, JSON nested past the bound in frames
and in the model's tool input, and request bodies sent a byte at a time."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

import voiceagent.app.server
from actors.turn import APOLOGY_SILENT
from tests.fake_bedrock import (
    RecordedRequest,
    Reply,
    message_end,
    message_start,
    running_fake_bedrock,
    stream_reply,
    text_reply,
    tool_events,
)
from tests.fakes import FakeLLM, tool_use, words
from tests.server_harness import AUTH_TOKEN, RunningServer, make_settings, running_server
from voiceagent.app.caller import (
    Identity,
    RelayTarget,
    open_call,
    parse_relay_twiml,
    post_form,
    release_transport,
)
from voiceagent.jsonlimits import MAX_DEPTH
from voiceagent.llm.scripted import ScriptedLLM
from voiceagent.relay.protocol import MAX_FRAME_DEPTH
from voiceagent.signature import sign
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry

GAP_S = 0.3                       # InputPolicy.min_turn_gap_s
HOURS = "We are open from eleven in the morning"


async def stored_chat(server: RunningServer, call_sid: str) -> list[dict[str, Any]]:
    """The transcript as the store holds it, once the call's writes are flushed."""
    assert await server.runtime.writer.flush(call_sid, timeout_s=5)
    items = await server.runtime.store.query(call_sid, "chat::")
    return [item["chat"] for item in items]


def user_texts(chat: list[dict[str, Any]]) -> list[str]:
    return [b["text"] for m in chat if m["role"] == "user" for b in m["content"] if "text" in b]


# ---------------------------------------------------------------- a flood of keys


async def test_a_key_flood_starts_few_turns_and_ends_with_the_caller(tmp_path: Path) -> None:
    """1,200 presses of a key without a handler are 100 entries for the model. They share the
    prompts' limit (two turns per gap), and the server has read them all when the caller
    hangs up, so it is idle at once instead of working through them for half a minute."""
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path)) as server:
            assert isinstance(server.runtime.llm, ScriptedLLM)
            opened_before = server.runtime.llm.statistics().streams_opened
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                started = trio.current_time()
                for _ in range(1200):
                    await call.dtmf("5")
                with trio.fail_after(5):              # leaving, and the server idle after
                    await call.hang_up()
                    await server.runtime.calls.wait_idle()
            elapsed = trio.current_time() - started
            opened = server.runtime.llm.statistics().streams_opened - opened_before
    report = server.runtime.calls.reports[-1]
    assert report.frames.received == 1 + 1200
    assert report.turns.turns <= 2 * (elapsed / GAP_S + 1)
    assert report.turns.turns < 100 / 2                    # one per entry before
    assert opened <= report.turns.turns


# ---------------------------------------------------------------- lone surrogates


@asynccontextmanager
async def prepared_socket(server: RunningServer, identity: Identity
                          ) -> AsyncIterator[tuple[WebSocketConnection, RelayTarget]]:
    """A call prepared by a signed /twiml and its signed relay socket, before any setup."""
    form = {"CallSid": identity.call_sid, "AccountSid": identity.account_sid,
            "From": identity.from_number, "To": identity.to_number, "CallStatus": "ringing"}
    target = parse_relay_twiml(await post_form(server.url + "/twiml", form, AUTH_TOKEN))
    headers = [(b"X-Twilio-Signature", sign(AUTH_TOKEN, target.url).encode())]
    async with open_websocket_url(target.url, extra_headers=headers) as ws:
        yield ws, target


def setup_text(call_sid: str, token: str, *, lone: str = "\\ud800") -> str:
    """A setup frame as raw JSON text, ``lone`` (a JSON escape) in every text field."""
    return ('{"type":"setup","sessionId":"VX1' + lone + '","callSid":"' + call_sid + '",'
            '"accountSid":"AC' + lone + '","from":"+1555' + lone + '","to":"' + lone + '",'
            '"callerName":"' + lone + '","forwardedFrom":"' + lone + '","direction":"in'
            + lone + '","callStatus":"RINGING' + lone + '","customParameters":{'
            '"sessionToken":"' + token + '","note' + lone + '":"x' + lone + '"}}')


async def reply_text(ws: WebSocketConnection) -> str:
    tokens = []
    while True:
        frame = json.loads(await ws.get_message())
        if frame["type"] == "text":
            tokens.append(frame["token"])
            if frame["last"]:
                return "".join(tokens)


async def test_lone_surrogates_in_setup_and_prompts_become_replacement_characters(
        tmp_path: Path) -> None:
    identity = Identity()
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            async with prepared_socket(server, identity) as (ws, target):
                token = target.parameters["sessionToken"]
                await ws.send_message(setup_text(identity.call_sid, token))
                await ws.send_message('{"type":"prompt","voicePrompt":"hours? \\ud800 \\udfff",'
                                      '"lang":"en-US\\ud800","last":true}')
                assert (await reply_text(ws)).startswith(HOURS)
                await ws.send_message('{"type":"interrupt","utteranceUntilInterrupt":'
                                      '"We are \\ud800"}')
                await ws.send_message('{"type":"prompt","voicePrompt":"open \\ud83d\\ude00?",'
                                      '"last":true}')
                assert (await reply_text(ws)).startswith(HOURS)      # the call goes on
                await ws.aclose(code=1000)
            await server.runtime.calls.wait_idle()
            chat = await stored_chat(server, identity.call_sid)
    assert [r.ended_by for r in server.runtime.calls.reports] == ["hangup"]
    assert user_texts(chat) == ["hours? \ufffd \ufffd", "open \U0001f600?"]
    json.dumps(chat, ensure_ascii=False).encode("utf-8")    # nothing stored is invalid


async def test_a_lone_surrogate_in_the_call_sid_is_refused_not_an_internal_error(
        tmp_path: Path) -> None:
    identity = Identity()
    with trio.fail_after(20):
        # the setup is rejected as a frame, and the socket then waits for one until
        # SETUP_TIMEOUT_S: a second here, not the default 10 s of real time
        async with running_server(make_settings(tmp_path, SETUP_TIMEOUT_S=1)) as server:
            async with prepared_socket(server, identity) as (ws, target):
                token = target.parameters["sessionToken"]
                await ws.send_message(setup_text(identity.call_sid[:-1] + "\\ud800", token))
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
                await release_transport(ws)
            await server.runtime.calls.wait_idle()
    assert closed.value.reason.code == 1008                 # unknown call, not 1011


# ---------------------------------------------------------------- nesting


def nested(levels: int) -> str:
    """A JSON value ``levels`` deep."""
    return "[" * (levels - 1) + "{}" + "]" * (levels - 1)


async def test_frames_nested_too_deep_are_rejected_and_the_call_goes_on(
        tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.send_raw('{"type":"info","name":"x","value":'
                                    + nested(MAX_FRAME_DEPTH - 1) + "}")   # just fits
                await call.send_raw('{"type":"prompt","voicePrompt":"hi","x":'
                                    + nested(5000) + "}")
                await call.send_raw("[" * 30000 + "]" * 30000)
                await call.say("hours?")
                assert (await call.read_reply()).text.startswith(HOURS)
                await call.hang_up()
            await server.runtime.calls.wait_idle()
    report = server.runtime.calls.reports[-1]
    assert report.ended_by == "hangup"
    assert dict(report.frames.rejected) == {"too_deep": 2}


def deep_input(levels: int) -> dict[str, Any]:
    """A tool input ``levels`` deep (the input object itself is the first level)."""
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def counting_registry(calls: list[dict[str, Any]]) -> ToolRegistry:
    async def pickup_time(ctx: Any, args: Any) -> dict[str, Any]:
        calls.append(args)
        return {"minutes": 15}
    return ToolRegistry([ToolDefinition("CheckRestaurantPickUpTime", pickup_time)])


async def test_tool_input_nested_too_deep_from_bedrock_is_a_model_error_the_call_survives(
        tmp_path: Path, aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real Bedrock backend reading the model's toolUse fragments: JSON deeper than the
    bound is a malformed reply (an apology), never a tool call; the next turn is answered."""
    fragments = json.dumps(deep_input(MAX_DEPTH + 1))
    cut = len(fragments) // 2

    def respond(request: RecordedRequest) -> Reply:
        said = request.body["messages"][-1]["content"][-1].get("text", "")
        if said == "pickup?":
            return stream_reply(message_start(), tool_events(
                0, "tooluse_1", "CheckRestaurantPickUpTime", [fragments[:cut], fragments[cut:]]),
                message_end("tool_use"))
        return text_reply(["We open", " at eleven."])

    tool_calls: list[dict[str, Any]] = []
    async with running_fake_bedrock(responder=respond) as bedrock:
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", bedrock.endpoint_url)
        settings = make_settings(tmp_path, LLM="bedrock", AWS_REGION="us-east-1")
        with trio.fail_after(30):
            async with running_server(settings, registry=counting_registry(tool_calls)) \
                    as server:
                async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                    await call.say("pickup?")
                    assert (await call.read_reply()).text == APOLOGY_SILENT
                    await call.say("hours?")
                    assert (await call.read_reply()).text == "We open at eleven."
                    await call.hang_up()
                await server.runtime.calls.wait_idle()
    report = server.runtime.calls.reports[-1]
    assert tool_calls == []
    assert report.turns.model_errors == 1
    assert report.ended_by == "hangup"
    assert bedrock.violations == []


async def test_tool_input_nested_too_deep_without_a_parse_is_refused_as_invalid(
        tmp_path: Path) -> None:
    """A model that hands over a dict (scripted, or a test's) is bounded where tool input is
    validated: an error result the model can act on, and the tool never runs."""
    llm = FakeLLM([tool_use("tu_1", "CheckRestaurantPickUpTime", deep_input(MAX_DEPTH + 1)),
                   words("Sorry, that did not work.")])
    tool_calls: list[dict[str, Any]] = []
    identity = Identity()
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path), llm=llm,
                                  registry=counting_registry(tool_calls)) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN, identity=identity) as call:
                await call.say("pickup?")
                assert (await call.read_reply()).text == "Sorry, that did not work."
                await call.hang_up()
            await server.runtime.calls.wait_idle()
            chat = await stored_chat(server, identity.call_sid)
    results = [b["toolResult"] for m in chat for b in m["content"] if "toolResult" in b]
    assert tool_calls == []
    assert [r["status"] for r in results] == ["error"]
    assert results[0]["content"] == [
        {"text": f"invalid input: input: nested deeper than {MAX_DEPTH} levels"}]
    assert llm.violations == []


# ---------------------------------------------------------------- slow request bodies


async def test_a_request_body_sent_a_byte_at_a_time_is_cut_off(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Headers that promise 1,000 bytes, then a byte every 0.1 s: each read is quick, so only
    a bound on the whole body ends it. The server answers 408 and closes the connection."""
    monkeypatch.setattr(voiceagent.app.server, "BODY_TIMEOUT_S", 1.0, raising=False)
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            host, port = server.url.removeprefix("http://").split(":")
            head = (f"POST /twiml HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    "Content-Type: application/x-www-form-urlencoded\r\n"
                    "X-Twilio-Signature: bm90LWEtc2lnbmF0dXJl\r\nContent-Length: 1000\r\n\r\n")
            async with await trio.open_tcp_stream(host, int(port)) as stream, \
                    trio.open_nursery() as nursery:
                await stream.send_all(head.encode())
                started = trio.current_time()

                async def trickle() -> None:
                    try:
                        while True:
                            await stream.send_all(b"a")
                            await trio.sleep(0.1)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return

                nursery.start_soon(trickle)
                answer = b""
                with trio.fail_after(5):
                    while chunk := await stream.receive_some(4096):
                        answer += chunk
                closed_after = trio.current_time() - started
                nursery.cancel_scope.cancel()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert 1.0 <= closed_after < 5


async def test_quiet_calls_and_bodies_sent_in_pieces_in_time_are_not_cut(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The body bound is for HTTP bodies only: a relay socket quiet for longer than it is
    served, and a webhook whose body comes in two pieces within it is answered."""
    monkeypatch.setattr(voiceagent.app.server, "BODY_TIMEOUT_S", 0.5, raising=False)
    identity = Identity()
    form = {"CallSid": identity.call_sid, "From": identity.from_number,
            "To": identity.to_number, "CallStatus": "ringing"}
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            url = server.url + "/twiml"
            body = "&".join(f"{k}={v.replace('+', '%2B')}" for k, v in form.items()).encode()
            host, port = server.url.removeprefix("http://").split(":")
            head = (f"POST /twiml HTTP/1.1\r\nHost: {host}:{port}\r\n"
                    "Content-Type: application/x-www-form-urlencoded\r\n"
                    f"X-Twilio-Signature: {sign(AUTH_TOKEN, url, form)}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n")
            async with await trio.open_tcp_stream(host, int(port)) as stream:
                await stream.send_all(head.encode() + body[:10])
                await trio.sleep(0.2)                   # the second piece, well in time
                await stream.send_all(body[10:])
                answer = b""
                while not answer.endswith(b"</Response>"):
                    answer += await stream.receive_some(4096)
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert b"<ConversationRelay" in answer
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await trio.sleep(1.5)                   # quiet, three times the body bound
                await call.say("hours?")
                assert (await call.read_reply()).text.startswith(HOURS)
                await call.hang_up()
            await server.runtime.calls.wait_idle()
    assert [r.ended_by for r in server.runtime.calls.reports] == ["hangup"]
