"""A tool that changes the ``args`` it was given (``args.setdefault(...)``, ``args.pop(...)``:
easy to write, and ``Mapping`` is only a type hint) changes only its own copy: never the
toolUse the history records, nor a DTMF handler's fixed input in the use case."""

from __future__ import annotations

from typing import Any

import trio

from tests.call_harness import open_test_call, plain_use_case
from tests.fakes import FakeLLM, tool_use, words
from voiceagent.tools import ToolDefinition
from voiceagent.tools.registry import ToolRegistry

BOOK = [{"name": "bookRepair", "description": "Book a repair.", "input_schema": {
    "type": "object", "properties": {"day": {"type": "string"}}}}]


def mutating_registry() -> ToolRegistry:
    async def book(ctx: Any, args: Any) -> dict[str, Any]:
        day = args.pop("day", "monday")          # the tool's own business
        args["note"] = "added by the tool"
        return {"status": "booked", "day": day}

    return ToolRegistry([ToolDefinition("bookRepair", book)])


async def test_a_tool_changing_its_args_does_not_rewrite_the_models_tool_use(
        autojump_clock: Any) -> None:
    """The history's toolUse is what the model asked for: it goes back to the model on every
    later request and to the store. A tool's edits showed up there (and in `calls show`) as
    input the model never sent."""
    llm = FakeLLM([tool_use("tu_1", "bookRepair", {"day": "tuesday"}), words("Booked.")])
    async with open_test_call(llm, use_case=plain_use_case(tools=BOOK),
                              registry=mutating_registry()) as call:
        call.say("book my bike in on tuesday")
        with trio.fail_after(10):
            await call.reply()
    assert call.history[2]["content"] == [{"toolUse": {
        "toolUseId": "tu_1", "name": "bookRepair", "input": {"day": "tuesday"}}}]
    assert llm.requests[1].messages[-2]["content"][0]["toolUse"]["input"] == {"day": "tuesday"}


async def test_a_tool_changing_its_args_does_not_change_the_keypad_handlers_input(
        autojump_clock: Any) -> None:
    """A DTMF handler's ``input`` is the use case's own dict, shared by every call the process
    serves with it: the second press (and every later call) ran the tool without a day."""
    use_case = plain_use_case(tools=BOOK, dtmf={"handlers": {"1": {
        "tool": "bookRepair", "input": {"day": "friday"}}}})
    llm = FakeLLM([words("Booked."), words("Booked again.")])
    async with open_test_call(llm, use_case=use_case, registry=mutating_registry()) as call:
        for _ in range(2):
            call.dtmf("1")
            with trio.fail_after(10):
                await call.reply()
    assert use_case.dtmf.handlers["1"].input == {"day": "friday"}
    results = [m["content"][0]["toolResult"]["content"][0]["json"] for m in call.history
               if m["role"] == "user" and "toolResult" in m["content"][0]]
    assert results == [{"status": "booked", "day": "friday"}] * 2
