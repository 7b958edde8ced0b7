"""What the model is told about a tool the call's teardown cut (``ToolExecutor.tear_down_by``)."""
from __future__ import annotations

from typing import Any

import trio

from tests.call_harness import open_test_call
from tests.end_tools import HANDOFF_USE_CASE, hanging_handoff
from tests.fakes import FakeLLM, tool_use


async def test_a_tool_cut_by_the_teardown_is_not_said_to_be_interrupted_by_the_caller(
        autojump_clock: Any) -> None:
    """A handoff that sent ``end`` and hangs is cut by the teardown deadline (36dd27b). Its
    toolResult, which a resumed session's model reads, says "the caller interrupted before
    this finished" (CANCELLED): nobody interrupted; the call ended under it."""
    llm = FakeLLM([tool_use("tu_h", "handoff", before="Let me transfer you.")])
    async with open_test_call(llm, use_case=HANDOFF_USE_CASE,
                              registry=hanging_handoff()) as call:
        call.say("a person please")
        await call.until_end()
        await trio.sleep(0.1)
        call.socket.hang_up()
        with trio.fail_after(10):
            await call.done.wait()
    results = [b["toolResult"] for m in call.history for b in m["content"] if "toolResult" in b]
    assert len(results) == 1, call.history
    assert "interrupted" not in results[0]["content"][0]["text"], results
