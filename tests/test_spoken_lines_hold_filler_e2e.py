"""A ``languages`` entry's ``hold_line`` and ``fillers`` through the real server, with a
WebSocket client playing Twilio: after switchLanguage to es-US, a slow model has the Spanish
hold line said and a slow tool the Spanish filler, where the caller heard the use case's
English ones read by the Spanish voice. Found by review (s21).

The clock is trio's virtual one, moved by the test alone (``mock_clock``, no autojump): the
model's slow start and the tool's run end only when the test jumps there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from actors.hold_line import HOLD_LINE_AFTER_S
from actors.tool_filler import FILLER_AFTER_S
from tests.fakes import FakeLLM, Step, words
from tests.server_harness import AUTH_TOKEN, make_settings, one_use_case_config, running_server
from voiceagent.app.caller import RelayCall, open_call
from voiceagent.llm.base import LLMRequest, StreamEnd, ToolUseRequest
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry, builtin_tools

HOLD, FILLER = "One moment, please.", "One moment while I check that."
ES_HOLD, ES_FILLER = "Un momento, por favor.", "Un momento, lo compruebo."
ANSWER, CLARO = "Your order is ready.", "Claro."
SLOW_S = HOLD_LINE_AFTER_S + 0.5        # the model's first event, after the hold line
TOOL_S = 5.0                            # the slow tool's run
USE_CASE: dict[str, Any] = {
    "name": "orders", "prompt": "You tell callers whether their order is ready.",
    "relay": {"language": "en-US"}, "auto_language": False, "hold_line": HOLD,
    "tools": [{"name": "lookUpOrder", "description": "Look the order up.", "filler": FILLER},
              {"name": "switchLanguage", "description": "Switch the call's language.",
               "input_schema": {"type": "object", "properties": {
                   "language": {"type": "string", "enum": ["en-US", "es-US"]}}}}],
    "languages": [{"code": "en-US"},
                  {"code": "es-US", "hold_line": ES_HOLD,
                   "fillers": {"lookUpOrder": ES_FILLER}}]}


def slow_lookup(tool_use_id: str) -> list[Step]:
    return [SLOW_S, ToolUseRequest(tool_use_id, "lookUpOrder", {}), StreamEnd("tool_use")]


SCRIPTS: list[list[Step]] = [
    slow_lookup("tu_order_1"), words(ANSWER, first_s=0, gap_s=0),
    [ToolUseRequest("tu_switch", "switchLanguage", {"language": "es-US"}),
     StreamEnd("tool_use")], words(CLARO, first_s=0, gap_s=0),
    slow_lookup("tu_order_2"), words(ANSWER, first_s=0, gap_s=0)]

pytestmark = pytest.mark.timeout(60)    # virtual time below; this bounds the real waits


class _Model:
    """The scripts in order; ``asked`` is set as each request comes in."""

    def __init__(self) -> None:
        self.asked = [trio.Event() for _ in SCRIPTS]
        self.llm = FakeLLM(self.script)
        self.tool_started = trio.Event()
        self.registry = ToolRegistry([*builtin_tools(),
                                      ToolDefinition("lookUpOrder", self.look_up)])

    def script(self, request: LLMRequest) -> list[Step]:
        index = len(self.llm.requests) - 1
        self.asked[index].set()
        return SCRIPTS[index]

    async def look_up(self, ctx: Any, args: Any) -> dict[str, Any]:
        self.tool_started.set()
        await trio.sleep(TOOL_S)
        return {"ready": True}


async def _slow_turn(call: RelayCall, model: _Model, request: int,
                     mock_clock: trio.testing.MockClock) -> str:
    """The model slow to begin, then the tool slow to answer: the clock to each."""
    model.tool_started = trio.Event()
    await call.say("is my order ready?")
    await model.asked[request].wait()
    await trio.testing.wait_all_tasks_blocked()
    mock_clock.jump(HOLD_LINE_AFTER_S)              # the hold line
    await trio.testing.wait_all_tasks_blocked()
    mock_clock.jump(SLOW_S - HOLD_LINE_AFTER_S)     # the model calls the tool
    await model.tool_started.wait()
    await trio.testing.wait_all_tasks_blocked()
    mock_clock.jump(FILLER_AFTER_S)                 # the filler
    await trio.testing.wait_all_tasks_blocked()
    mock_clock.jump(TOOL_S - FILLER_AFTER_S)        # the tool's result, then the answer
    return (await call.read_reply()).text


async def test_after_switch_language_the_entry_s_hold_line_and_filler_are_said(
        tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    folder = one_use_case_config(tmp_path, USE_CASE)
    settings = make_settings(tmp_path, CONFIG_DIR=str(folder), STACK_USE_CASE="orders")
    model = _Model()
    async with running_server(settings, llm=model.llm, registry=model.registry) as server:
        async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
            english = await _slow_turn(call, model, 0, mock_clock)
            await call.say("en español, por favor")
            switched = await call.read_reply()
            spanish = await _slow_turn(call, model, 4, mock_clock)
            await call.hang_up()
        await server.runtime.calls.wait_idle()
    assert english == f"{HOLD} {FILLER} {ANSWER}"
    assert switched.text == CLARO
    assert [f for f in switched.frames if f["type"] == "language"] == [
        {"type": "language", "ttsLanguage": "es-US", "transcriptionLanguage": "es-US"}]
    assert spanish == f"{ES_HOLD} {ES_FILLER} {ANSWER}"
    assert model.llm.violations == []
