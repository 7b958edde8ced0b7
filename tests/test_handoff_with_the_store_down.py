"""The agent hands the caller to a person while the store is down or stalled (a DynamoDB
incident as the call ends), through the real server, the offline model and a real WebSocket
caller, on the virtual clock.

Twilio's ``/action`` for a handoff first waited for the call's writes to reach the store
(FLUSH_TIMEOUT_S, 5 s) and then read the call's session: with the store refusing, the caller,
who had just asked for a person, sat 5 s in silence and then heard "Sorry, we cannot take
your call right now" and was hung up on; with the store stalled, Twilio's webhook timed out.
A handoff needs the call's use case (its handoff target), not its history: it waits for no
flush, takes the session from this process's queue when it waits there (the store's writes
throttled), else reads it within HANDOFF_READ_S, and with the store unable to give it goes
where the end's own ``useCase`` says.
"""

from __future__ import annotations

import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from actors.model_trouble import FAILED_TURNS_BEFORE_GOODBYE
from tests.fakes import FakeLLM, words
from tests.server_harness import one_use_case_config
from tests.settled_clock import jump_when_settled
from voiceagent import signature
from voiceagent.app import caller, testing
from voiceagent.app.session_end import HANDOFF_READ_S
from voiceagent.app.testing import AgentServer, agent_server
from voiceagent.errors import ModelUnavailable, StoreError
from voiceagent.llm.base import LLM
from voiceagent.store.base import Store

pytestmark = pytest.mark.timeout(60)

NUMBER, MESSAGE = "+15555550123", "Connecting you now."
USE_CASE = {
    "name": "deli", "prompt": "You answer for a deli.",
    "handoff": {"mode": "dial", "number": NUMBER, "message": MESSAGE},
    "tools": [{"name": "liveAgentHandoff", "description": "Hands the caller to a person.",
               "input_schema": {"type": "object", "properties": {
                   "reason_code": {"type": "string"}, "summary": {"type": "string"}}}}],
    "scripted": {"fallback": "We open at eleven.", "rules": [
        {"match": r"\bperson\b", "tool": {"name": "liveAgentHandoff", "input": {
            "reason_code": "user-requested", "summary": "Wants a person."}}}]}}
WRITES = ("put", "put_many", "put_new", "put_unless_newer", "put_if_newer", "delete")
EVERYTHING = ("get", "query", "query_index", *WRITES)


@asynccontextmanager
async def _server(tmp_path: Path, llm: LLM | None = None) -> AsyncIterator[AgentServer]:
    folder = one_use_case_config(tmp_path, USE_CASE)
    async with agent_server(folder, use_case="deli", data_dir=tmp_path, llm=llm) as agent:
        yield agent


@asynccontextmanager
async def _store_failing(store: Store, failure: Callable[[], Awaitable[None]],
                         methods: tuple[str, ...] = EVERYTHING) -> AsyncIterator[None]:
    """Every read and write of ``store`` (or ``methods``) goes through ``failure`` first (it
    raises, or waits until the store is back, then the real call runs); as it was on
    leaving."""
    working = {name: getattr(store, name) for name in methods}

    def through(name: str) -> Callable[..., Awaitable[Any]]:
        async def method(*args: Any, **kwargs: Any) -> Any:
            await failure()
            return await working[name](*args, **kwargs)
        return method

    for name in methods:
        setattr(store, name, through(name))
    try:
        yield
    finally:
        for name, method in working.items():
            setattr(store, name, method)


async def _handed_off(agent: AgentServer, failure: Callable[[], Awaitable[None]], *,
                      asks: tuple[str, ...] = ("a person please",)
                      ) -> tuple[ET.Element, float]:
    """A call whose caller, once the store has gone, says ``asks`` until the agent ends the
    session: ``/action``'s answer to that ``end``, as Twilio posts it, and how long the
    caller waited for it."""
    async with agent.call() as call:
        assert "eleven" in (await call.say("when do you open?")).text
        async with _store_failing(agent.runtime.store, failure):
            for words in asks:
                turn = await call.say(words)
            assert turn.ended is not None
            started = trio.current_time()
            body = await agent.post("/action", {
                "CallSid": call.call_sid, "SessionId": "VX1", "SessionStatus": "ended",
                "CallStatus": "in-progress", "HandoffData": str(turn.ended["handoffData"])})
            waited = trio.current_time() - started
    return ET.fromstring(body), waited


async def _post_form(url: str, form: dict[str, str], auth_token: str | None = None, *,
                     limiter: trio.CapacityLimiter | None = None) -> str:
    """``post_form`` on trio's own sockets: it waits in a worker thread, and the virtual clock
    stands still while one runs (``jump_when_settled``), so a server waiting on that clock
    (a stalled store write) would never answer it. No thread, so ``limiter`` goes unused."""
    parts = urllib.parse.urlsplit(url)
    host, port, path = parts.hostname or "", parts.port or 80, parts.path
    body = urllib.parse.urlencode(form).encode()
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close",
            "Content-Type: application/x-www-form-urlencoded", f"Content-Length: {len(body)}",
            f"X-Twilio-Signature: {signature.sign(auth_token or '', url, form)}"]
    answer = b""
    async with await trio.open_tcp_stream(host, port) as stream:
        await stream.send_all(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        while chunk := await stream.receive_some(65536):
            answer += chunk
    status, _, rest = answer.partition(b"\r\n\r\n")
    assert status.split(b" ", 2)[1] == b"200", answer[:300]
    return rest.decode()


@pytest.fixture(autouse=True)
def _webhooks_on_trio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(caller, "post_form", _post_form)
    monkeypatch.setattr(testing, "post_form", _post_form)


def _said(root: ET.Element) -> list[tuple[str, str | None]]:
    return [(child.tag, child.text) for child in root]


async def test_a_handoff_with_the_store_refusing_goes_to_a_person_at_once(
        tmp_path: Path, mock_clock: trio.testing.MockClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    jump_when_settled(mock_clock, monkeypatch)

    async def refused() -> None:
        await trio.sleep(0.05)
        raise StoreError("dynamodb: connection refused")

    with trio.fail_after(40):
        async with _server(tmp_path) as agent:
            answer, waited = await _handed_off(agent, refused)
    assert _said(answer) == [("Say", MESSAGE), ("Dial", NUMBER)]     # not the apology
    assert waited < 0.5                     # not the flush's 5 s of silence first


async def test_a_handoff_with_the_store_stalled_goes_to_a_person_within_its_read_bound(
        tmp_path: Path, mock_clock: trio.testing.MockClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    jump_when_settled(mock_clock, monkeypatch)
    back = trio.Event()

    async def stalled() -> None:
        await back.wait()

    with trio.fail_after(40):
        async with _server(tmp_path) as agent:
            try:
                answer, waited = await _handed_off(agent, stalled)
            finally:
                back.set()                  # the queue drains: the server stops at once
    assert _said(answer) == [("Say", MESSAGE), ("Dial", NUMBER)]
    assert waited == pytest.approx(HANDOFF_READ_S, abs=0.25)   # the read bound, no more


async def test_a_model_failing_with_the_store_down_still_hands_the_caller_to_a_person(
        tmp_path: Path, mock_clock: trio.testing.MockClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A regional incident takes the model and the store at once: after the failed turns the
    call goes to a person (the use case has a handoff target), its end naming the use case
    as the handoff tool's does, since the session cannot be read."""
    jump_when_settled(mock_clock, monkeypatch)
    llm = FakeLLM([words("We open at eleven."),
                   [ModelUnavailable("ServiceUnavailableException", "down")]])

    async def refused() -> None:
        await trio.sleep(0.05)
        raise StoreError("dynamodb: connection refused")

    with trio.fail_after(60):
        async with _server(tmp_path, llm) as agent:
            answer, waited = await _handed_off(
                agent, refused, asks=tuple(f"hello {n}" for n in range(
                    FAILED_TURNS_BEFORE_GOODBYE)))
    assert _said(answer) == [("Say", MESSAGE), ("Dial", NUMBER)]
    assert waited < 0.5


async def test_a_session_only_in_this_process_s_queue_is_handed_off_by_it(
        tmp_path: Path, mock_clock: trio.testing.MockClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's writes stalled before the call began (a throttled table; its reads still
    answer): ``/twiml`` left the call's session to its write-behind queue, and a handoff tool
    of one's own names no use case in its end. The session waiting here is the call's, newer
    than the store's (which has none): no flush waits for it to land first."""
    jump_when_settled(mock_clock, monkeypatch)
    back = trio.Event()

    async def stalled() -> None:
        await back.wait()

    with trio.fail_after(60):
        async with _server(tmp_path) as agent:
            try:
                async with _store_failing(agent.runtime.store, stalled, WRITES):
                    async with agent.call() as call:
                        assert "eleven" in (await call.say("when do you open?")).text
                    assert agent.runtime.writer.queued_item(call.call_sid, "connection")
                    started = trio.current_time()
                    body = await agent.post("/action", {
                        "CallSid": call.call_sid, "SessionId": "VX1",
                        "SessionStatus": "ended", "CallStatus": "in-progress",
                        "HandoffData": '{"handoff": true, "reasonCode": "escalation"}'})
                    waited = trio.current_time() - started
            finally:
                back.set()
    assert _said(ET.fromstring(body)) == [("Say", MESSAGE), ("Dial", NUMBER)]
    assert waited < 0.5
