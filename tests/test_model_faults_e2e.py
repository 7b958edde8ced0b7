"""Network faults on the model path, through a real ``voiceagent serve`` process and a real
WebSocket caller: the endpoint speaks TLS with a private CA (AWS_CA_BUNDLE) and misbehaves on
purpose. Each fault must be heard as an apology after what was already said (or not at all,
when a retry hides it), the call must go on, the next turn must be answered, and every
request the endpoint received must have been a history Converse accepts.
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from actors.turn import APOLOGY_CUT, APOLOGY_SILENT
from tests.aws_credentials_server import running_credentials_server
from tests.fake_bedrock import (
    FakeBedrock,
    Hangup,
    HangupBeforeHeaders,
    RecordedRequest,
    Reply,
    Stall,
    fake_bedrock_env,
    message_end,
    message_start,
    running_fake_bedrock,
    stream_reply,
    text_events,
    text_reply,
)
from tests.proxy_support import running_proxy
from tests.serve_process import ServerProcess, serve_process
from tests.server_harness import AUTH_TOKEN
from voiceagent.app.caller import Identity, open_call
from voiceagent.store.sqlite import open_sqlite_store

pytestmark = pytest.mark.slow

FINE = "Fine, anything else?"


def said(request: RecordedRequest) -> str:
    content = request.body["messages"][-1]["content"]
    return str(next(b["text"] for b in reversed(content) if "text" in b))


def scripted(replies: dict[str, list[Reply]]) -> Callable[[RecordedRequest], Reply]:
    """Replies by what the caller said last, in order; the last one repeats."""
    def respond(request: RecordedRequest) -> Reply:
        queue = replies.get(said(request))
        if queue is None:
            return text_reply([FINE])
        return queue.pop(0) if len(queue) > 1 else queue[0]
    return respond


def cut(deltas: Sequence[str], *, reset: bool) -> Hangup:
    frames = stream_reply(message_start(), text_events(deltas, gap_s=0.01),
                          message_end()).frames
    return Hangup(after_frames=1 + 2, reset=reset, frames=frames)   # start and two deltas


def bedrock_env(fake: FakeBedrock, tmp_path: Path, **more: str) -> dict[str, str]:
    """The server's whole AWS environment: static keys unless ``more`` names another source."""
    env = {"LLM": "bedrock", **fake_bedrock_env(fake, tmp_path),
           "BEDROCK_READ_TIMEOUT_S": "0.5", **more}
    if "AWS_CONTAINER_CREDENTIALS_FULL_URI" in more:
        del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    return env


@asynccontextmanager
async def serving(fake: FakeBedrock, tmp_path: Path, **more: str
                  ) -> AsyncIterator[ServerProcess]:
    async with serve_process(tmp_path, **bedrock_env(fake, tmp_path, **more)) as server:
        yield server


async def stop_and_read_logs(server: ServerProcess) -> list[dict[str, Any]]:
    server.process.send_signal(signal.SIGTERM)
    await server.wait_log("drained")
    assert await server.process.wait() == 0
    return server.events


async def stored_history(tmp_path: Path, call_sid: str) -> list[dict[str, Any]]:
    async with open_sqlite_store(tmp_path / "data" / "voiceagent.db",
                                 limiter=trio.CapacityLimiter(1)) as store:
        items = await store.query(call_sid, "chat::")
    return [item["chat"] for item in items]


FAULTS = {
    "fin mid reply": ("We open at", [cut(["We open", " at", " eleven."], reset=False)]),
    "reset mid reply": ("We open at", [cut(["We open", " at", " eleven."], reset=True)]),
    "stall mid reply": ("We open", [Stall(frames=stream_reply(
        message_start(), text_events(["We open"], stop=False)).frames)]),
}
HIDDEN = {
    "closed before the headers": [HangupBeforeHeaders(), text_reply(["We open", " at nine."])],
    "reset before the headers": [HangupBeforeHeaders(reset=True),
                                 text_reply(["We open", " at nine."])],
}


async def test_each_fault_is_an_apology_after_what_was_said_and_the_call_goes_on(
        aws_env: None, tmp_path: Path) -> None:
    replies: dict[str, list[Reply]] = {word: list(faulty) for word, (_, faulty) in
                                       FAULTS.items()}
    replies.update({word: list(faulty) for word, faulty in HIDDEN.items()})
    heard: dict[str, tuple[str, str]] = {}
    sids: dict[str, str] = {}
    async with running_fake_bedrock(tls=True, responder=scripted(replies)) as fake:
        with trio.fail_after(90):
            async with serving(fake, tmp_path) as server:
                for word in [*FAULTS, *HIDDEN]:
                    identity = Identity()
                    sids[word] = identity.call_sid
                    async with open_call(server.url, auth_token=AUTH_TOKEN,
                                         identity=identity) as call:
                        await call.say(word)
                        first = await call.read_reply()
                        await call.say("and then?")
                        second = await call.read_reply()
                        heard[word] = (first.text, second.text)
                        assert first.closed
                        assert second.closed
                        await call.hang_up()
                    assert call.closed_by_server is None
                events = await stop_and_read_logs(server)
        violations = list(fake.violations)
    for word, (partial, _) in FAULTS.items():
        assert heard[word] == (partial + APOLOGY_CUT, FINE), word
    for word in HIDDEN:
        assert heard[word] == ("We open at nine.", FINE), word
    assert violations == []
    turns = [e for e in events if e.get("event") == "turn done" and e.get("kind") == "caller"]
    failed = [e for e in turns if e.get("model_error")]
    assert len(failed) == len(FAULTS)
    assert {e["model_error"] for e in failed} == {"ModelStreamFailed"}
    assert {e["stop_reason"] for e in failed} == {"model_error"}    # not the callers' cut
    assert not [e for e in events if e.get("level") in ("error", "ERROR", "critical")]
    for word, (partial, _) in FAULTS.items():
        history = await stored_history(tmp_path, sids[word])
        spoken = [b["text"] for m in history if m["role"] == "assistant"
                  for b in m["content"] if "text" in b]
        assert partial + APOLOGY_CUT in spoken, word
        assert [m["role"] for m in history][-4:] == ["user", "assistant", "user", "assistant"]


async def test_credentials_rotated_mid_call_go_unnoticed_by_the_caller(
        aws_env: None, tmp_path: Path) -> None:
    async with running_credentials_server() as credentials, \
            running_fake_bedrock(tls=True, responder=lambda r: text_reply([FINE])) as fake:
        first = credentials.access_key_id
        fake.accepted_keys = {first}
        env = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": credentials.url}
        with trio.fail_after(60):
            async with serving(fake, tmp_path, **env) as server:
                async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                    await call.say("hello")
                    assert (await call.read_reply()).text == FINE
                    fake.accepted_keys = {credentials.rotate()}
                    await call.say("still there?")
                    assert (await call.read_reply()).text == FINE
                    await call.hang_up()
                events = await stop_and_read_logs(server)
    keys = [r.access_key for r in fake.requests]
    assert keys[0] == first
    assert keys[-1] != first
    renewed = [e for e in events if e.get("event", "").startswith(
        "bedrock refused our credentials: renewed")]
    assert len(renewed) == 1
    assert json.dumps(events).count("ExpiredTokenException") >= 1


async def test_a_burst_of_tls_records_reaches_the_caller_in_one_held_frame(
        aws_env: None, tmp_path: Path) -> None:
    """After the first clause the rest of the reply comes in one burst, each event its own
    TLS record: it must go out at the end of the hold window, together, not one frame per
    later wake (the raw socket under TLS has nothing to say about records already read)."""
    clause = "Here is everything we have on the menu today."
    rest = [f" dish{n}" for n in range(39)]
    reply = stream_reply(message_start(), text_events([clause]),
                         text_events(rest, first_delay_s=0.3, index=1), message_end())
    async with running_fake_bedrock(tls=True, responder=lambda r: reply) as fake:
        with trio.fail_after(60):
            async with serving(fake, tmp_path) as server:
                async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                    await call.say("what is on the menu?")
                    heard = await call.read_reply()
                    await call.hang_up()
                await stop_and_read_logs(server)
    assert heard.text == clause + "".join(rest)
    after_clause = [f for f in heard.frames if f.get("type") == "text"
                    and f.get("token") and not str(f["token"]).startswith("Here")]
    assert 1 <= len(after_clause) <= 2, [f["token"] for f in after_clause]


async def test_through_a_connect_proxy_and_a_proxy_that_refuses(
        aws_env: None, tmp_path: Path) -> None:
    async with running_proxy(basic_auth="agent:s3cret") as proxy, \
            running_fake_bedrock(tls=True, responder=lambda r: text_reply([FINE])) as fake:
        heard: list[str] = []
        with trio.fail_after(60):
            for proxy_url in (proxy.auth_url, proxy.url_with_auth("agent", "wrong")):
                async with serving(fake, tmp_path, HTTPS_PROXY=proxy_url) as server:
                    async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                        for _ in range(2):
                            await call.say("are you open?")
                            heard.append((await call.read_reply()).text)
                        await call.hang_up()
                    events = await stop_and_read_logs(server)
            tunnels = await proxy.wait_tunnels(1)
    assert heard[:2] == [FINE, FINE]
    assert heard[2:] == [APOLOGY_SILENT, APOLOGY_SILENT]       # the call goes on, politely
    assert tunnels[0] == f"localhost:{fake.port}"
    failed = [e for e in events if e.get("event") == "bedrock call failed"]
    assert {e["code"] for e in failed} == {"ProxyRefused"}
    assert "wrong" not in json.dumps(events)
    assert len(fake.requests) == 2
