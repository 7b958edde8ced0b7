"""A side-effect tool cut by its timeout may have done its work (a request sent, its answer
not back; a blocking tool's thread runs on): the model is told so, or it would run it again
(a second booking). A tool without side effects is told only that it timed out."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from tests.call_harness import open_test_call, plain_use_case
from tests.fakes import FakeLLM, tool_use, words
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry


@pytest.mark.parametrize(("side_effect", "warned"), [(True, True), (False, False)])
async def test_a_timed_out_tool_s_result_says_whether_it_may_have_happened(
        autojump_clock: Any, side_effect: bool, warned: bool) -> None:
    async def book(ctx: Any, args: Any) -> dict[str, Any]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    registry = ToolRegistry([ToolDefinition("book", book, timeout_s=3.0,
                                            side_effect=side_effect)])
    llm = FakeLLM([tool_use("tu_1", "book"), words("Let me check that booking.")])
    use_case = plain_use_case(tools=[{"name": "book", "description": "Book a table."}])
    async with open_test_call(llm, use_case=use_case, registry=registry) as call:
        call.say("book it")
        await call.reply()
    text = call.history[3]["content"][0]["toolResult"]["content"][0]["text"]
    assert text.startswith("timed out after 3 s; tell the caller")
    assert ("may still have taken effect: check before repeating it" in text) is warned
