"""A side-effect tool a barge-in cut, still running when the caller's next words come: the
filler goes out exactly ``FILLER_AFTER_S`` after they came (not after the tool's start), the
answer when the tool ends; the stand-in result a stored history held is stored again once the
real one is in. Through the real server: ``test_settle_filler_e2e``. Found by review (s19)."""

from __future__ import annotations

from typing import Any

import trio

from actors.history import History
from actors.settling import PENDING_RESULT, stand_in
from actors.tool_filler import FILLER_AFTER_S
from tests.call_harness import open_test_call, plain_use_case
from tests.fakes import FakeLLM, words
from voiceagent.llm.base import StreamEnd, ToolUseRequest
from voiceagent.llm.converse import converse_problems
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry

FILLER = "One moment while I place that."
ANSWER = "Your order is placed."


async def test_the_filler_goes_out_a_second_after_the_callers_words(
        autojump_clock: Any) -> None:
    started = trio.Event()

    async def place(ctx: Any, args: Any) -> dict[str, Any]:
        started.set()
        await trio.sleep(5)
        return {"order_number": 42}

    registry = ToolRegistry([ToolDefinition("placeOrder", place, side_effect=True)])
    use_case = plain_use_case(tools=[{"name": "placeOrder", "description": "Place it.",
                                      "filler": FILLER}])
    llm = FakeLLM([[*words("Placing it.", first_s=0, gap_s=0)[:-1],
                    ToolUseRequest("tu_1", "placeOrder", {}), StreamEnd("tool_use")],
                   words(ANSWER, first_s=0, gap_s=0)])
    async with open_test_call(llm, use_case=use_case, registry=registry) as call:
        call.say("a pizza please")
        await started.wait()
        placed_at = trio.current_time()
        await trio.sleep(2)
        call.interrupt(heard="Placing")
        call.say("and a drink")
        asked_at = trio.current_time()
        cut, _ = await call.reply()
        assert (cut, trio.current_time()) == ("Placing it.", asked_at)   # not held by it
        first = await call.frame()
        assert (first["token"], trio.current_time()) == ("One", asked_at + FILLER_AFTER_S)
        text, _ = await call.reply()
        assert trio.current_time() == placed_at + 5
        await call.hang_up()
    assert f"One{text}" == f"{FILLER} {ANSWER}"
    assert call.history[-2]["content"][0]["toolResult"]["status"] == "success"
    assert converse_problems(llm.requests[-1].messages, tools_configured=True) == []


def test_a_stored_stand_in_is_stored_again_with_the_result() -> None:
    use = ToolUseRequest("tu_1", "placeOrder", {})
    history = History([{"role": "user", "content": [{"text": "a pizza"}]}])
    history.add_assistant("Placing it.", [{"toolUseId": "tu_1", "name": "placeOrder",
                                           "input": {}}])
    history.add_tool_results([stand_in(use)])
    history.add_user_text("and a drink")
    history.add_assistant("One moment.")
    stored = {index: message for index, message, _ in history.take_sealed(final=True)}
    assert stored[2]["content"][0]["toolResult"]["content"] == [{"text": PENDING_RESULT}]
    result = {"toolResult": {"toolUseId": "tu_1", "status": "success",
                             "content": [{"json": {"order_number": 42}}]}}
    assert history.answer(result)
    again = history.take_sealed(final=True)
    assert [(index, message["content"]) for index, message, _ in again] == [
        (2, [result, {"text": "and a drink"}]), (3, [{"text": "One moment."}])]
    assert not history.answer({"toolResult": {**result["toolResult"], "toolUseId": "tu_9"}})
