"""A use case's ``hold_line`` through the real server, the Bedrock backend against the local
endpoint, and a WebSocket client playing Twilio. A model slow to begin left the caller in dead
air: the first-event timeout (3 s), a patient retry, then the apology; callers say "hello?"
after a second or two, and that barges in. Found by review (s21).

The clock is trio's virtual one, moved by the test alone (``mock_clock``, no autojump): the
server's and the endpoint's I/O run on real time, and every frame the caller receives is
stamped with the virtual time it arrived, so when the hold line and the reply came is
asserted exactly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from actors.hold_line import HOLD_LINE_AFTER_S
from tests.fake_bedrock import (
    FakeBedrock,
    Stall,
    message_end,
    message_start,
    stream_reply,
    text_events,
    text_reply,
)
from tests.server_harness import AUTH_TOKEN, make_settings, one_use_case_config, running_server
from voiceagent.app.caller import RelayCall, open_call
from voiceagent.app.runtime import Runtime
from voiceagent.llm.bedrock import FIRST_EVENT_TIMEOUT_S
from voiceagent.llm.converse import converse_problems

HOLD = "One moment, please."
USE_CASE: dict[str, Any] = {
    "name": "host", "model": "us.amazon.nova-lite-v1:0",
    "prompt": "You tell callers when the restaurant is open.",
    "relay": {"welcomeGreeting": "Hello."}, "hold_line": HOLD}
RETRY_DELAY_S = 0.2         # the backend's retry after a stalled start waits 0.1-0.2 s

pytestmark = pytest.mark.timeout(60)    # virtual time below; this bounds the real waits


@dataclass
class _Caller:
    """The call, and every text frame it received as (virtual time, token, last)."""

    call: RelayCall
    runtime: Runtime
    heard: list[tuple[float, str, bool]] = field(default_factory=list)

    async def listen(self) -> None:
        while (frame := await self.call.receive()) is not None:
            if frame.get("type") == "text":
                self.heard.append((round(trio.current_time(), 6), str(frame["token"]),
                                   bool(frame["last"])))

    def text(self) -> str:
        return "".join(token for _, token, _ in self.heard)

    def take(self) -> list[tuple[float, str, bool]]:
        heard, self.heard = self.heard, []
        return heard


@asynccontextmanager
async def _calling(tmp_path: Path) -> AsyncIterator[_Caller]:
    folder = one_use_case_config(tmp_path, USE_CASE)
    settings = make_settings(tmp_path, CONFIG_DIR=str(folder), STACK_USE_CASE="host",
                             LLM="bedrock", AWS_REGION="us-east-1")
    assert settings.token_hold_ms == 100        # later tokens are held: not the first clause
    async with running_server(settings) as server, trio.open_nursery() as nursery:
        async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
            caller = _Caller(call, server.runtime)
            nursery.start_soon(caller.listen)
            yield caller
            await call.hang_up()
        await server.runtime.calls.wait_idle()


async def _ask(caller: _Caller, fake: FakeBedrock, words: str, requests: int) -> float:
    """Say ``words``; returns the virtual time the model's request went out."""
    await caller.call.say(words)
    await fake.wait_requests(requests)
    await trio.testing.wait_all_tasks_blocked()
    return trio.current_time()


async def _until(mock_clock: trio.testing.MockClock, at: float) -> None:
    """The clock to ``at`` (a hair past it: the sums of floats), the server's tasks settled."""
    mock_clock.jump(max(at - trio.current_time(), 0.0) + 1e-9)
    await trio.testing.wait_all_tasks_blocked()


def _history(caller: _Caller) -> list[tuple[str, Any]]:
    report = caller.runtime.calls.reports[-1]
    assert report.history is not None
    return [(m["role"], m["content"]) for m in report.history.messages]


async def test_a_stalled_start_has_the_hold_line_said_once_then_the_reply(
        fake_bedrock: FakeBedrock, tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    """A model that answers in time is heard as before; one that stalls has the hold line
    said at HOLD_LINE_AFTER_S, and the retry after the stall does not say it again."""
    fake_bedrock.push(stream_reply(message_start(), text_events(
                          ["We open", " at nine."], first_delay_s=HOLD_LINE_AFTER_S - 0.1),
                          message_end()),
                      Stall(), text_reply(["We close", " at ten."]))
    async with _calling(tmp_path) as caller:
        asked_first = await _ask(caller, fake_bedrock, "when do you open?", 1)
        await _until(mock_clock, asked_first + HOLD_LINE_AFTER_S - 0.1)
        await _until(mock_clock, asked_first + HOLD_LINE_AFTER_S + 1.0)
        on_time = caller.take()
        asked = await _ask(caller, fake_bedrock, "and close?", 2)
        await _until(mock_clock, asked + HOLD_LINE_AFTER_S - 0.01)
        assert caller.take() == []                   # silence, so far
        await _until(mock_clock, asked + HOLD_LINE_AFTER_S)
        held = caller.take()
        await _until(mock_clock, asked + FIRST_EVENT_TIMEOUT_S)     # the stall: retried
        await _until(mock_clock, asked + FIRST_EVENT_TIMEOUT_S + RETRY_DELAY_S)
        await fake_bedrock.wait_requests(3)
        await trio.testing.wait_all_tasks_blocked()
        reply = caller.take()
    assert "".join(t for _, t, _ in on_time) == "We open at nine."
    assert on_time[0][0] == round(asked_first + HOLD_LINE_AFTER_S - 0.1, 6)
    assert "".join(t for _, t, _ in held) == HOLD
    assert {at for at, _, _ in held} == {round(asked + HOLD_LINE_AFTER_S, 6)}
    assert not any(last for _, _, last in held)
    assert "".join(t for _, t, _ in reply) == " We close at ten."   # no second hold line
    assert reply[-1][2]
    assert [r.outcome for r in fake_bedrock.requests[1:]] == ["client_closed", "complete"]
    # the model sees that it said the hold line, as the start of its words
    assert _history(caller)[-2:] == [
        ("user", [{"text": "and close?"}]),
        ("assistant", [{"text": f"{HOLD} We close at ten."}])]
    assert fake_bedrock.violations == []


async def test_words_just_after_the_hold_line_follow_it_at_once_token_by_token(
        fake_bedrock: FakeBedrock, tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    """Headers only at the hold line's moment (the stream is still being opened), the first
    words 10 ms later: the hold line is not held up by the opening, and the model's words
    follow it when they come, their first clause token by token (the token hold would have
    kept them 100 ms), not behind a clock of the hold line's."""
    fake_bedrock.push(stream_reply(
        message_start(), text_events(["We open", " at nine", " tomorrow.", " Anything", " else?"],
                                     first_delay_s=0.01, gap_s=0.02),
        message_end(), headers_delay_s=HOLD_LINE_AFTER_S))
    async with _calling(tmp_path) as caller:
        asked = await _ask(caller, fake_bedrock, "when do you open?", 1)
        for step in (0.0, 0.01, 0.03, 0.05, 0.07, 0.09, 0.2):
            await _until(mock_clock, asked + HOLD_LINE_AFTER_S + step)
        heard = [(round(at - asked - HOLD_LINE_AFTER_S, 6), token, last)
                 for at, token, last in caller.take()]
    assert heard == [
        (0.0, "One", False), (0.0, " moment,", False), (0.0, " please.", False),
        (0.01, " We open", False), (0.03, " at nine", False), (0.05, " tomorrow.", False),
        (0.2, " Anything else?", True)]     # held from the first clause's end, as ever


async def test_a_barge_in_during_the_hold_line_keeps_what_was_heard(
        fake_bedrock: FakeBedrock, tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    """The caller cuts in two words into the hold line: the stalled request is closed, the
    next turn is answered, and the history holds the two words heard as the agent's."""
    fake_bedrock.push(Stall(), text_reply(["We close", " at ten."]))
    async with _calling(tmp_path) as caller:
        asked = await _ask(caller, fake_bedrock, "when do you open?", 1)
        await _until(mock_clock, asked + HOLD_LINE_AFTER_S)
        held = caller.take()
        await caller.call.interrupt(heard="One moment")
        await trio.testing.wait_all_tasks_blocked()
        await _ask(caller, fake_bedrock, "never mind, when do you close?", 2)
        await trio.testing.wait_all_tasks_blocked()
        reply = caller.take()
    assert "".join(t for _, t, _ in held) == HOLD
    assert "".join(t for _, t, _ in reply) == "We close at ten."
    assert fake_bedrock.requests[0].outcome == "client_closed"
    sent = fake_bedrock.requests[1].body["messages"]
    assert [(m["role"], m["content"]) for m in sent[-3:]] == [
        ("user", [{"text": "when do you open?"}]),
        ("assistant", [{"text": "One moment"}]),
        ("user", [{"text": "never mind, when do you close?"}])]
    assert converse_problems(sent) == []
    assert fake_bedrock.violations == []
