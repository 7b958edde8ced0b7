"""Words the writer never sent stay out of the stored history at the end of the call,
whatever the turn after them recorded (``CutMarks.take_all_unrecorded``)."""
from __future__ import annotations

from typing import Any

from tests.breaking_socket import hours_on_a_socket_that_breaks
from tests.call_harness import plain_use_case
from tests.fakes import FakeLLM, tool_use, words
from voiceagent.llm.converse import converse_problems
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry


async def test_unsent_words_come_off_when_the_next_turn_recorded_a_tool_round(
        autojump_clock: Any) -> None:
    """As test_end_tool_edges' test_unsent_last_frame_stays_unsaid_when_a_prompt_follows_
    the_broken_socket, but the turn the caller's "mhm" started called a tool (no words
    before it) before its reply failed to send. Its toolUse message is now the last
    assistant message, so ``drop_unsent`` (which looks only at the last one's text) returns
    without taking T1's "and close at ten" off: the store keeps words Twilio never got."""
    async def lookup(ctx: Any, args: Any) -> dict[str, Any]:
        return {"open": "9-22"}

    registry = ToolRegistry([ToolDefinition("lookup", lookup, timeout_s=5)])
    use_case = plain_use_case(tools=[{"name": "lookup", "description": "Hours"}])
    llm = FakeLLM([words("We open at nine, and close at ten", gap_s=0.05),
                   tool_use("tu_l", "lookup"), words("Okay.")])
    call, sent = await hours_on_a_socket_that_breaks(llm, then="mhm", use_case=use_case,
                                                     registry=registry)
    assert sent == "We open at nine,"
    uses = [b["toolUse"]["toolUseId"] for m in call.history for b in m["content"]
            if "toolUse" in b]
    assert uses == ["tu_l"], call.history       # the second turn did record its tool round
    said = [b["text"] for m in call.history if m["role"] == "assistant"
            for b in m["content"] if "text" in b]
    assert not any("close at ten" in t for t in said), said
    assert converse_problems(call.report.history.for_request()) == []  # type: ignore[union-attr]
    assert [entry["chat"] for entry in call.writer.stored()] == list(call.history)
