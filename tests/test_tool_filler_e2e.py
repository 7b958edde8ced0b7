"""A tool's filler through the real server, with a WebSocket client playing Twilio. A model
that calls a tool without a word first left the caller in silence until the tool returned
and the next round spoke: up to the tool's timeout, 10 s by default, long enough for a
caller to say "hello?" (and barge in). A tool declared with a ``filler`` now has it said
once it has run ``FILLER_AFTER_S`` without an answer. Found by review (s19).

The clock is trio's virtual one, moved by the test alone (``mock_clock``, no autojump): the
server's own I/O runs on real time, and a tool sleeping 5 s ends only when the test jumps
there, so which of the filler's timer and the tool's end comes first is the test's choice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from actors.tool_filler import FILLER_AFTER_S
from tests.fakes import FakeLLM, Step, words
from tests.server_harness import AUTH_TOKEN, make_settings, one_use_case_config, running_server
from voiceagent.app.caller import RelayCall, Reply, open_call
from voiceagent.llm.base import StreamEnd, ToolUseRequest
from voiceagent.llm.converse import converse_problems
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry, builtin_tools

FILLER = "One moment while I check that."
ANSWER = "Your order is ready."
TOOL_S = 5.0                            # the slow tool's run, in virtual seconds
USE_CASE: dict[str, Any] = {
    "name": "orders",
    "prompt": "You tell callers whether their order is ready.",
    "relay": {"welcomeGreeting": "Hello."},
    "tools": [{"name": "lookUpOrder", "description": "Look the caller's order up.",
               "filler": FILLER}]}

pytestmark = pytest.mark.timeout(60)    # virtual time below; this bounds the real waits


def _settings(tmp_path: Path) -> Any:
    folder = one_use_case_config(tmp_path, USE_CASE)
    return make_settings(tmp_path, CONFIG_DIR=str(folder), STACK_USE_CASE="orders")


def _tool_call(before: str = "") -> list[Step]:
    """The model's round, on no clock: its words (if any), then the tool call."""
    said = words(before, first_s=0, gap_s=0)[:-1] if before else []
    return [*said, ToolUseRequest("tu_order", "lookUpOrder", {}), StreamEnd("tool_use")]


class _Tool:
    """``lookUpOrder``, taking ``seconds``; ``started`` once the model has called it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = trio.Event()
        self.registry = ToolRegistry([*builtin_tools(),
                                      ToolDefinition("lookUpOrder", self.look_up)])

    async def look_up(self, ctx: Any, args: Any) -> dict[str, Any]:
        self.started.set()
        await trio.sleep(self.seconds)
        return {"ready": True}


async def _ask_and_wait(call: RelayCall, tool: _Tool, mock_clock: trio.testing.MockClock,
                        *jumps: float) -> Reply:
    """Ask, let the tool start, move the clock by ``jumps`` (the server's tasks settle after
    each, so a timer due in one fires before the next), then read the reply."""
    await call.say("is my order ready?")
    await tool.started.wait()
    for jump in jumps:
        mock_clock.jump(jump)
        await trio.testing.wait_all_tasks_blocked()
    return await call.read_reply()


async def test_a_slow_tool_has_its_filler_said_then_the_answer(
        tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    tool = _Tool(TOOL_S)
    llm = FakeLLM([_tool_call(), words(ANSWER, first_s=0, gap_s=0)])
    async with running_server(_settings(tmp_path), llm=llm, registry=tool.registry) as server:
        async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
            reply = await _ask_and_wait(call, tool, mock_clock, FILLER_AFTER_S,
                                        TOOL_S - FILLER_AFTER_S)
            await call.hang_up()
        await server.runtime.calls.wait_idle()
    assert reply.closed
    assert reply.text == f"{FILLER} {ANSWER}"
    # the answering round knows the filler was said, as its own words before the tool call
    sent = llm.requests[-1].messages
    assert sent[-2] == {"role": "assistant", "content": [
        {"text": FILLER}, {"toolUse": {"toolUseId": "tu_order", "name": "lookUpOrder",
                                       "input": {}}}]}
    assert [next(iter(b)) for b in sent[-1]["content"]] == ["toolResult"]
    assert converse_problems(sent, tools_configured=True) == []


async def test_a_tool_that_answers_within_the_delay_stays_silent(
        tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    tool = _Tool(FILLER_AFTER_S - 0.1)
    llm = FakeLLM([_tool_call(), words(ANSWER, first_s=0, gap_s=0)])
    async with running_server(_settings(tmp_path), llm=llm, registry=tool.registry) as server:
        async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
            reply = await _ask_and_wait(call, tool, mock_clock, FILLER_AFTER_S - 0.1)
            await call.hang_up()
        await server.runtime.calls.wait_idle()
    assert reply.text == ANSWER
    assert llm.requests[-1].messages[-2]["content"][0] == {"toolUse": {
        "toolUseId": "tu_order", "name": "lookUpOrder", "input": {}}}


async def test_no_filler_when_the_model_spoke_before_the_tool_call(
        tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    tool = _Tool(TOOL_S)
    llm = FakeLLM([_tool_call(before="Let me check."), words(ANSWER, first_s=0, gap_s=0)])
    async with running_server(_settings(tmp_path), llm=llm, registry=tool.registry) as server:
        async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
            reply = await _ask_and_wait(call, tool, mock_clock, FILLER_AFTER_S,
                                        TOOL_S - FILLER_AFTER_S)
            await call.hang_up()
        await server.runtime.calls.wait_idle()
    assert reply.text == f"Let me check. {ANSWER}"


async def test_a_barge_in_during_the_filler_keeps_what_was_heard_and_a_valid_history(
        tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    """The caller cuts in two words into the filler: the tool (no side effect) is abandoned,
    and the history holds the two words heard, as the agent's, and no toolUse without its
    result."""
    tool = _Tool(TOOL_S)
    llm = FakeLLM([_tool_call(), words("We close at ten.", first_s=0, gap_s=0)])
    async with running_server(_settings(tmp_path), llm=llm, registry=tool.registry) as server:
        async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
            await call.say("is my order ready?")
            await tool.started.wait()
            mock_clock.jump(FILLER_AFTER_S)
            await trio.testing.wait_all_tasks_blocked()         # the filler is out
            await call.interrupt(heard="One moment")
            await call.say("never mind, when do you close?")
            cut = await call.read_reply()           # up to the cut turn's closer
            assert (cut.text, cut.closed) == (FILLER, True)
            reply = await call.read_reply()
            await call.hang_up()
        await server.runtime.calls.wait_idle()
        history = server.runtime.calls.reports[-1].history
    assert reply.text == "We close at ten."
    sent = llm.requests[-1].messages
    assert [(m["role"], m["content"]) for m in sent[-3:]] == [
        ("user", [{"text": "is my order ready?"}]),
        ("assistant", [{"text": "One moment"}]),
        ("user", [{"text": "never mind, when do you close?"}])]
    assert converse_problems(sent, tools_configured=True) == []
    assert history is not None
    assert not history.has_tool_blocks()
