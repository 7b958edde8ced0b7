"""A turn's "turn done" line, read as the operator reads a slow turn: was it the model's
first round, or the round after a tool, its prompt grown by the tool's result?
``first_token_ms`` is the first round's; each round's went to /metrics only, so a turn of
two rounds said how long the caller waited but not which round made them wait."""

from __future__ import annotations

import logging
from typing import Any

import trio

from tests.call_harness import CALL_SID, open_test_call, plain_use_case
from tests.fakes import FakeLLM, Step
from voiceagent.llm.base import StreamEnd, TextDelta, ToolUseRequest
from voiceagent.tools import ToolDefinition
from voiceagent.tools.registry import ToolRegistry

TOOLS = [{"name": "pickupTime", "description": "Minutes to pickup"}]


async def _pickup_time(ctx: Any, args: Any) -> dict[str, Any]:
    return {"minutes": 20}


def _round(first_token_s: float, *steps: Step) -> list[Step]:
    """A model round as the Bedrock backend ends it: its first token's time in its end."""
    return [first_token_s, *steps, StreamEnd(
        "tool_use" if isinstance(steps[-1], ToolUseRequest) else "end_turn",
        first_token_s=first_token_s)]


def _turn_lines(records: list[logging.LogRecord]) -> list[dict[str, Any]]:
    return [vars(r) for r in records
            if r.getMessage() == "turn done" and vars(r)["call_sid"] == CALL_SID]


async def test_a_turn_of_two_rounds_names_each_rounds_first_token(
        autojump_clock: trio.testing.MockClock, records: list[logging.LogRecord]) -> None:
    """A turn of one round keeps its line as short as it was: ``first_token_ms`` says it."""
    llm = FakeLLM([_round(0.25, TextDelta("We open at eleven.")),
                   _round(0.25, TextDelta("One moment."),
                          ToolUseRequest("tu_1", "pickupTime", {})),
                   _round(1.5, TextDelta("About twenty minutes."))])
    registry = ToolRegistry([ToolDefinition("pickupTime", _pickup_time, timeout_s=5)])
    async with open_test_call(llm, use_case=plain_use_case(tools=TOOLS),
                              registry=registry) as call:
        call.say("when do you open?")
        await call.reply()
        call.say("when can I pick up?")
        text, _ = await call.reply()
        assert text == "One moment. About twenty minutes."
    one, two = _turn_lines(records)
    assert (one["rounds"], one["first_token_ms"]) == (1, 250.0)
    assert "first_token_ms_by_round" not in one
    assert (two["rounds"], two["first_token_ms"]) == (2, 250.0)
    assert two["first_token_ms_by_round"] == [250.0, 1500.0]
