"""Security and reliability end to end through the real server: signatures (direct, behind a
proxy, shared keys), capacity, pings, hostile frames, faults from the model, privacy of logs."""

from __future__ import annotations

import json
import logging
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import wsproto
import wsproto.events
from hypothesis import given, settings
from hypothesis import strategies as st
from trio_websocket import open_websocket_url
from twilio.request_validator import RequestValidator

from tests.fake_bedrock import (
    HttpError,
    exception,
    message_start,
    running_fake_bedrock,
    stream_reply,
    text_events,
    text_reply,
)
from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from voiceagent.app.caller import Identity, open_call, parse_relay_twiml
from voiceagent.errors import ConfigError
from voiceagent.llm.scripted import APOLOGY
from voiceagent.logs import JsonFormatter, _ContextFilter
from voiceagent.signature import sign
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry
from voiceagent.usecases import UseCase, parse_model

PUBLIC = "https://agent.example.com"
FORM = {"CallSid": "CA" + "5" * 32, "From": "+15555550123", "To": "+15555550199",
        "AccountSid": "AC" + "0" * 32, "CallStatus": "ringing", "CallerName": "SECRET NAME"}


def _post(url: str, form: dict[str, str], headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(),
                                     method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


async def post(url: str, form: dict[str, str], headers: dict[str, str]) -> tuple[int, str]:
    return await trio.to_thread.run_sync(_post, url, form, headers)


async def test_action_webhook_requires_a_signature(tmp_path: Path) -> None:
    form = {"CallSid": FORM["CallSid"], "SessionStatus": "ended", "CallStatus": "in-progress"}
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            url = server.url + "/action"
            assert (await post(url, form, {}))[0] == 403
            assert (await post(url, form, {"X-Twilio-Signature": "bogus"}))[0] == 403
            status, body = await post(url, form,
                                      {"X-Twilio-Signature": sign(AUTH_TOKEN, url, form)})
    assert status == 200
    assert "<Hangup />" in body


async def test_behind_a_proxy_signatures_use_the_public_url(tmp_path: Path) -> None:
    """Twilio signs https://agent.example.com/...; the app sees http://127.0.0.1:port."""
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path, PUBLIC_URL=PUBLIC)) as server:
            local = server.url + "/twiml"
            assert (await post(local, FORM, {"X-Twilio-Signature":
                                             sign(AUTH_TOKEN, local, FORM)}))[0] == 403
            status, body = await post(local, FORM, {"X-Twilio-Signature":
                                                    sign(AUTH_TOKEN, PUBLIC + "/twiml", FORM)})
            assert status == 200
            target = parse_relay_twiml(body)
            assert target.url == "wss://agent.example.com/relay"
            assert target.action == PUBLIC + "/action"
            header = (b"X-Twilio-Signature", sign(AUTH_TOKEN, target.url).encode())
            local_ws = server.url.replace("http://", "ws://") + "/relay"
            async with open_websocket_url(local_ws, extra_headers=[header]) as ws:
                await ws.send_message(json.dumps({
                    "type": "setup", "sessionId": "VX1", "callSid": FORM["CallSid"],
                    "customParameters": target.parameters}))
                await ws.send_message(json.dumps({"type": "prompt", "voicePrompt": "hours?",
                                                  "last": True}))
                frame = json.loads(await ws.get_message())
                assert frame["type"] == "text"
                assert frame["token"] == "We"


@pytest.mark.parametrize("trusted", [True, False])
async def test_forwarded_headers_count_only_when_trusted(tmp_path: Path, trusted: bool) -> None:
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "agent.example.com",
               "X-Twilio-Signature": sign(AUTH_TOKEN, PUBLIC + "/twiml", FORM)}
    with trio.fail_after(20):
        async with running_server(make_settings(
                tmp_path, TRUST_PROXY_HEADERS=str(trusted).lower())) as server:
            status, _ = await post(server.url + "/twiml", FORM, headers)
    assert status == (200 if trusted else 403)


async def test_shared_key_sha256_signatures(tmp_path: Path) -> None:
    secret = "shared-key-secret"
    with trio.fail_after(20):
        async with running_server(make_settings(
                tmp_path, TWILIO_SHARED_KEY_SECRET=secret)) as server:
            url = server.url + "/twiml"
            signature = RequestValidator(secret).compute_signature(url, FORM,
                                                                   algorithm="HMAC_SHA256")
            settings_header = "key=KS123,algorithm=HMAC_SHA256"
            ok, _ = await post(url, FORM, {"X-Twilio-Signature": signature,
                                           "X-Twilio-Webhooks-Signature-Settings":
                                               settings_header})
            forged, _ = await post(url, FORM, {
                "X-Twilio-Signature": sign(AUTH_TOKEN, url, FORM),
                "X-Twilio-Webhooks-Signature-Settings": settings_header})
    assert (ok, forged) == (200, 403)


@pytest.mark.parametrize(("mode", "expected"), [("twiml", 200), ("503", 503)])
async def test_calls_beyond_the_limit_are_refused(tmp_path: Path, mode: str,
                                                  expected: int) -> None:
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path, MAX_CALLS="1",
                                                OVER_CAPACITY=mode)) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("hours?")
                await call.read_reply()
                url = server.url + "/twiml"
                status, body = await post(url, FORM, {"X-Twilio-Signature":
                                                      sign(AUTH_TOKEN, url, FORM)})
                assert status == expected
                if mode == "twiml":
                    assert "<Say>" in body
                    assert "<Hangup />" in body
                    assert "ConversationRelay" not in body
                await call.hang_up()


async def test_new_calls_are_refused_while_the_write_backlog_is_full(tmp_path: Path) -> None:
    """A store that takes no writes for hours: the backlog grew with every turn until the
    process was killed for memory, with all of it. Past WRITE_BACKLOG_MAX new calls are
    refused as over capacity; once the store has taken the backlog, they are answered."""
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path, WRITE_BACKLOG_MAX="100")) as server:
            url = server.url + "/twiml"
            headers = {"X-Twilio-Signature": sign(AUTH_TOKEN, url, FORM)}
            writer = server.runtime.writer
            blocker = sqlite3.connect(tmp_path / "voiceagent.db", isolation_level=None)
            try:
                blocker.execute("BEGIN EXCLUSIVE")          # the store cannot write
                for i in range(100):
                    writer.submit({"pk": "CAbacklog", "sk": f"chat::{i:03d}"},
                                  call_sid="CAbacklog")
                status, body = await post(url, FORM, headers)
                assert status == 200
                assert "<Say>" in body
                assert "ConversationRelay" not in body
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            assert await writer.flush(timeout_s=20)
            assert writer.pending == 0
            status, body = await post(url, FORM, headers)
    assert status == 200
    assert "ConversationRelay" in body


async def test_quiet_calls_get_websocket_pings(tmp_path: Path) -> None:
    """The ALB cuts connections idle for 60 s; Twilio sends nothing on a quiet call."""
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path, PING_INTERVAL_S="0.2",
                                                VALIDATE_SIGNATURES="false",
                                                DEMO="true")) as server:
            host, port = server.url.removeprefix("http://").split(":")
            async with await trio.open_tcp_stream(host, int(port)) as stream:
                client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
                await stream.send_all(client.send(wsproto.events.Request(
                    host=f"{host}:{port}", target="/relay")))
                pings = 0
                while pings < 2:
                    client.receive_data(await stream.receive_some(4096))
                    for event in client.events():
                        if isinstance(event, wsproto.events.Ping):
                            pings += 1
                            await stream.send_all(client.send(event.response()))
                await stream.send_all(client.send(wsproto.events.CloseConnection(code=1000)))
    assert pings == 2


async def test_a_frame_over_the_hard_limit_closes_only_that_socket(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path)) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as bad, \
                    open_call(server.url, auth_token=AUTH_TOKEN) as good:
                await bad.send_raw("z" * (2 * 1024 * 1024))
                assert await bad.receive() is None
                assert bad.closed_by_server == 1009      # message too big
                await good.say("hours?")
                assert (await good.read_reply()).text.startswith("We are open")
                await good.hang_up()
            await server.runtime.calls.wait_idle()


async def test_model_faults_become_speech_and_other_calls_carry_on(
        tmp_path: Path, aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the real server and the real Bedrock backend: throttled then fine (retried),
    a 5xx, and an error mid-stream (apology); a healthy call beside them is unaffected."""
    replies = {
        "throttled": [HttpError(429, "ThrottlingException"),
                      text_reply(["We open", " at eleven."])],
        "broken": [HttpError(503, "ServiceUnavailableException")] * 3,
        "midstream": [stream_reply(message_start(), text_events(["We open"]),
                                   exception("modelStreamErrorException", delay_s=0.05))],
        "healthy": [text_reply(["Hello", " there."])],
    }

    def respond(request: Any) -> Any:
        said = request.body["messages"][-1]["content"][-1]["text"]
        return replies[said].pop(0) if len(replies[said]) > 1 else replies[said][0]

    async with running_fake_bedrock(responder=respond) as bedrock:
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", bedrock.endpoint_url)
        settings = make_settings(tmp_path, LLM="bedrock", AWS_REGION="us-east-1")
        with trio.fail_after(30):
            async with running_server(settings) as server:
                texts: dict[str, str] = {}

                async def one(kind: str) -> None:
                    async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                        await call.say(kind)
                        texts[kind] = (await call.read_reply()).text
                        await call.hang_up()

                async with trio.open_nursery() as nursery:
                    for kind in replies:
                        nursery.start_soon(one, kind)
                await server.runtime.calls.wait_idle()
    assert texts["throttled"] == "We open at eleven."
    assert texts["broken"].startswith("Sorry, I'm having a little trouble")
    assert texts["midstream"].startswith("We open Sorry, I lost my train of thought")
    assert texts["healthy"] == "Hello there."
    assert bedrock.violations == []


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect(level=logging.DEBUG)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield lines
    root.removeHandler(handler)
    root.setLevel(old_level)


async def test_logs_keep_secrets_and_content_out(tmp_path: Path, log_lines: list[str]) -> None:
    caller = "+15555550987"
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            identity = Identity(from_number=caller)
            async with open_call(server.url, auth_token=AUTH_TOKEN, identity=identity) as call:
                await call.say("my secret is swordfish, what are your hours?")
                await call.read_reply()
                await call.hang_up()
            await server.runtime.calls.wait_idle()
            session = await server.runtime.store.get(identity.call_sid, "connection")
    text = "\n".join(log_lines)
    assert log_lines
    assert AUTH_TOKEN not in text
    assert "swordfish" not in text
    assert "We are open" not in text                 # what the agent said is content too
    assert caller not in text
    assert "+1555***0987" in text                    # masked, still useful
    assert any(json.loads(line).get("call_sid") == identity.call_sid for line in log_lines)
    assert session is not None
    assert "CallerName" not in json.dumps(session)   # only the Twilio fields we use


@settings(max_examples=200, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["name", "prompt", "relay", "tools", "dtmf", "scripted", "model",
                         "inference", "handoff", "languages", "x", "time_zone"]) | st.text(
            max_size=5), inner, max_size=4),
    max_leaves=12))
def test_use_case_loader_only_ever_raises_config_error(data: Any) -> None:
    """Any shape of data: a UseCase, or a ConfigError naming the file; nothing else."""
    problem = ""
    try:
        parse_model(UseCase, data, "fuzz.yaml")
    except ConfigError as err:
        problem = str(err)
    assert problem == "" or problem.startswith("fuzz.yaml")


async def test_content_is_logged_only_when_asked_and_redacted(
        tmp_path: Path, log_lines: list[str]) -> None:
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path, LOG_CONTENT="true")) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("hours? call me on +1 415 555 0199, card 4111 1111 1111 1111")
                await call.read_reply()
                await call.hang_up()
            await server.runtime.calls.wait_idle()
    said = [json.loads(line) for line in log_lines if '"caller said"' in line]
    assert len(said) == 1
    assert said[0]["text"].startswith("hours? call me on +1415***0199, card [card]")
    assert any('"agent said"' in line and "We are open" in line for line in log_lines)



@pytest.mark.parametrize("failure", ["raises", "hangs"])
async def test_a_broken_tool_through_the_server_gives_an_apology(
        tmp_path: Path, failure: str) -> None:
    async def broken(ctx: Any, args: Any) -> dict[str, Any]:
        if failure == "raises":
            raise RuntimeError("kitchen printer offline")
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    registry = ToolRegistry([ToolDefinition("CheckRestaurantPickUpTime", broken,
                                            timeout_s=0.5)])
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path), registry=registry) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as broken_call, \
                    open_call(server.url, auth_token=AUTH_TOKEN) as healthy:
                await broken_call.say("when can I pick up?")
                await healthy.say("what are your hours?")
                assert (await healthy.read_reply()).text.startswith("We are open")
                reply = await broken_call.read_reply()
                assert reply.text == APOLOGY
                await broken_call.say("what are your hours?")      # the call goes on
                assert (await broken_call.read_reply()).text.startswith("We are open")
                await broken_call.hang_up()
                await healthy.hang_up()
            await server.runtime.calls.wait_idle()
