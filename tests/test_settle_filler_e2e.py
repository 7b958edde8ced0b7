"""A side-effect tool the caller cut into, through the real server with a WebSocket client
playing Twilio. The tool runs on (an order is placed once), and the caller's next words were
held behind it: the cut turn waited for it before the next turn could start, so the caller
heard silence after they spoke, up to the tool's timeout. Now the next turn starts at once
and waits for the tool's result before its model round, saying the tool's ``filler`` once
that wait passes ``FILLER_AFTER_S`` (``actors.settling``). Found by review (s19).

The clock is trio's virtual one, moved by the test alone (as in ``test_tool_filler_e2e``).
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
from voiceagent.app.caller import RelayCall, open_call
from voiceagent.llm.base import StreamEnd, ToolUseRequest
from voiceagent.llm.converse import converse_problems
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry, builtin_tools

FILLER = "One moment while I place that."
BEFORE = "I'll place it now."
ASKED = "and a drink too please"
ANSWER = "Your order is placed, number 42."
TOOL_S = 5.0                            # the order's run, in virtual seconds
USE_CASE: dict[str, Any] = {
    "name": "orders",
    "prompt": "You take pizza orders.",
    "relay": {"welcomeGreeting": "Hello."},
    "tools": [{"name": "placeOrder", "description": "Place the caller's order.",
               "filler": FILLER}]}
PLACED = {"toolResult": {"toolUseId": "tu_order", "status": "success",
                         "content": [{"json": {"order_number": 42}}]}}
USE = {"toolUse": {"toolUseId": "tu_order", "name": "placeOrder", "input": {}}}

pytestmark = pytest.mark.timeout(60)    # virtual time below; this bounds the real waits


def _settings(tmp_path: Path) -> Any:
    folder = one_use_case_config(tmp_path, USE_CASE)
    return make_settings(tmp_path, CONFIG_DIR=str(folder), STACK_USE_CASE="orders")


def _place_order() -> list[Step]:
    """The model says a word first (so the tool's own filler is not said in that turn)."""
    return [*words(BEFORE, first_s=0, gap_s=0)[:-1],
            ToolUseRequest("tu_order", "placeOrder", {}), StreamEnd("tool_use")]


class _Order:
    """``placeOrder``, with side effects, taking ``seconds``; counts its runs."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = trio.Event()
        self.runs = 0
        self.registry = ToolRegistry([*builtin_tools(), ToolDefinition(
            "placeOrder", self.place, side_effect=True, timeout_s=30)])

    async def place(self, ctx: Any, args: Any) -> dict[str, Any]:
        self.started.set()
        await trio.sleep(self.seconds)
        self.runs += 1
        return {"order_number": 42}


async def _cut_the_order(call: RelayCall, order: _Order) -> None:
    """Ask for the order, cut into the model's words while it is placed, ask on."""
    await call.say("a large pizza please")
    await order.started.wait()
    await trio.testing.wait_all_tasks_blocked()         # the model's words are out
    await call.interrupt(heard="I'll place")
    await call.say(ASKED)


async def _settle(mock_clock: trio.testing.MockClock, *jumps: float) -> None:
    await trio.testing.wait_all_tasks_blocked()
    for jump in jumps:
        mock_clock.jump(jump)
        await trio.testing.wait_all_tasks_blocked()


async def test_a_slow_order_cut_by_the_caller_has_its_filler_said_then_the_answer(
        tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    order = _Order(TOOL_S)
    llm = FakeLLM([_place_order(), words(ANSWER, first_s=0, gap_s=0)])
    async with running_server(_settings(tmp_path), llm=llm, registry=order.registry) as server:
        async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
            await _cut_the_order(call, order)
            await _settle(mock_clock, FILLER_AFTER_S)
            assert len(llm.requests) == 1           # the model waits for the order's result
            await _settle(mock_clock, TOOL_S - FILLER_AFTER_S)
            cut = await call.read_reply()                   # up to the cut turn's closer
            reply = await call.read_reply()
            await call.hang_up()
        await server.runtime.calls.wait_idle()
        history = server.runtime.calls.reports[-1].history
    assert (cut.text, cut.closed) == (BEFORE, True)
    assert reply.text == f"{FILLER} {ANSWER}"
    assert order.runs == 1
    # the model was asked with the order's result ahead of the caller's words
    sent = llm.requests[-1].messages
    assert sent[-1] == {"role": "user", "content": [{"text": ASKED}]}
    assert {"role": "user", "content": [PLACED]} in sent[-3:]
    assert converse_problems(sent, tools_configured=True) == []
    assert history is not None
    assert [(m["role"], m["content"]) for m in history.messages[-4:]] == [
        ("user", [{"text": "a large pizza please"}]),
        ("assistant", [{"text": "I'll place"}, USE]),
        ("user", [PLACED, {"text": ASKED}]),
        ("assistant", [{"text": f"{FILLER} {ANSWER}"}])]


async def test_an_order_that_ends_within_the_delay_adds_nothing(
        tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    """The order ends half a second after the caller's words: no filler, just the answer
    (a filler then would only make the answer wait)."""
    order = _Order(TOOL_S)
    llm = FakeLLM([_place_order(), words(ANSWER, first_s=0, gap_s=0)])
    async with running_server(_settings(tmp_path), llm=llm, registry=order.registry) as server:
        async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
            await call.say("a large pizza please")
            await order.started.wait()
            await _settle(mock_clock, TOOL_S - FILLER_AFTER_S / 2)
            await call.interrupt(heard="I'll place")
            await call.say(ASKED)
            await _settle(mock_clock, FILLER_AFTER_S / 2)
            cut = await call.read_reply()
            reply = await call.read_reply()
            await call.hang_up()
        await server.runtime.calls.wait_idle()
    assert (cut.text, reply.text) == (BEFORE, ANSWER)
    assert {"role": "user", "content": [PLACED]} in llm.requests[-1].messages


async def test_a_barge_in_into_the_filler_keeps_what_was_heard_and_a_valid_history(
        tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    """The caller cuts into the filler too: the history holds the two words of it they
    heard, as the agent's, after their words, and the order's result ahead of both; the
    turn for their newest words waits for the order, and says its filler again."""
    order = _Order(TOOL_S)
    llm = FakeLLM([_place_order(), words(ANSWER, first_s=0, gap_s=0)])
    async with running_server(_settings(tmp_path), llm=llm, registry=order.registry) as server:
        async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
            await _cut_the_order(call, order)
            await _settle(mock_clock, FILLER_AFTER_S)       # the filler is out
            await call.interrupt(heard="One moment")
            await call.say("hello?")
            await _settle(mock_clock, TOOL_S - FILLER_AFTER_S)
            cut = await call.read_reply()
            filler = await call.read_reply()
            reply = await call.read_reply()
            await call.hang_up()
        await server.runtime.calls.wait_idle()
        history = server.runtime.calls.reports[-1].history
    assert (cut.text, filler.text, reply.text) == (BEFORE, FILLER, f"{FILLER} {ANSWER}")
    assert order.runs == 1
    assert len(llm.requests) == 2                       # one answer, once the order was in
    assert history is not None
    assert [(m["role"], m["content"]) for m in history.messages[-6:]] == [
        ("user", [{"text": "a large pizza please"}]),
        ("assistant", [{"text": "I'll place"}, USE]),
        ("user", [PLACED, {"text": ASKED}]),
        ("assistant", [{"text": "One moment"}]),
        ("user", [{"text": "hello?"}]),
        ("assistant", [{"text": f"{FILLER} {ANSWER}"}])]
    assert converse_problems(llm.requests[-1].messages, tools_configured=True) == []
    assert converse_problems(history.for_request(), tools_configured=True) == []
