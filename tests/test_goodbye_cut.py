"""A barge-in that reaches the streamer after EndCall (a drain, the call's length limit) used to
cancel the goodbye turn: `end` was never sent, every later prompt was ignored, and the call
never ended. Found by a review of the actors (2026-12-05)."""
from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from tests.call_harness import open_test_call, plain_use_case
from tests.fakes import FakeLLM, tool_use, words
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry

TOOLS = [{"name": "placeOrder", "description": "Place the order"}]


def registry(started: trio.Event) -> ToolRegistry:
    async def place(ctx: Any, args: Any) -> dict[str, Any]:
        started.set()
        await trio.sleep(3.0)
        return {"status": "placed"}
    return ToolRegistry([ToolDefinition("placeOrder", place, side_effect=True, timeout_s=10)])


@pytest.mark.trio
async def test_drain_goodbye_survives_a_barge_in(autojump_clock: Any) -> None:
    started = trio.Event()
    llm = FakeLLM([tool_use("tu_1", "placeOrder", before="Placing it now."),
                   words("Your order is placed.")])
    async with open_test_call(llm, use_case=plain_use_case(tools=TOOLS),
                              registry=registry(started)) as call:
        call.say("order a pizza")
        await started.wait()                 # side-effect tool running (3 s, shielded)
        call.services.end_calls.set()        # the server drains: EndCall goes to the streamer
        await trio.sleep(0.5)
        call.interrupt(heard="Placing it")   # the caller cuts into "Placing it now."
        await trio.sleep(8)                  # less than END_CLOSE_S after the tool's end
        frames = call.socket.pending()
        call.say("hello? are you there?")    # the caller keeps talking
        await trio.sleep(20)
        frames += call.socket.pending()
        assert any(f["type"] == "end" for f in frames), frames
