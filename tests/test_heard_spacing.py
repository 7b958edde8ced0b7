"""What Twilio says was heard is matched to what we said word by word, not character by
character: Twilio may space the played words otherwise than we sent them (a model's blank
lines between sentences), and a reply with a tool round is several texts in the history."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from tests.call_harness import open_test_call, plain_use_case
from tests.fakes import FakeLLM, Step, words
from tests.test_history_property import TOOLS, registry
from voiceagent.llm.base import StreamEnd, TextDelta, ToolUseRequest
from voiceagent.llm.converse import converse_problems


def _tokens(*parts: str) -> list[Step]:
    steps: list[Step] = [0.2]
    for part in parts:
        steps += [TextDelta(part), 0.1]
    return steps


async def test_heard_words_spaced_otherwise_cut_the_reply_after_a_tool_round(
        autojump_clock: Any) -> None:
    """Before, the words before the tool round were measured in characters of Twilio's text:
    two blank lines played as spaces put the rest a character late, and the history said "t is"."""
    llm = FakeLLM([
        [*_tokens("Let me check.", "\n\nOne moment.", "\n\nAlmost there."),
         ToolUseRequest("tu1", "lookup", {}), StreamEnd("tool_use")],
        [*_tokens("It is", " ready", " now."), StreamEnd("end_turn")],
        words("Fine.")])
    async with open_test_call(llm, use_case=plain_use_case(tools=TOOLS),
                              registry=registry()) as call:
        call.say("is my order ready?")
        sent = ""
        while not sent.endswith(" It is"):     # the tool ran, and the reply began
            sent += (await call.frame()).get("token", "")
        assert sent == "Let me check.\n\nOne moment.\n\nAlmost there. It is"
        call.interrupt("Let me check. One moment. Almost there. It is")
        await trio.testing.wait_all_tasks_blocked()
        assert call.history[-3:] == (
            {"role": "assistant", "content": [
                {"text": "Let me check.\n\nOne moment.\n\nAlmost there."},
                {"toolUse": {"toolUseId": "tu1", "name": "lookup", "input": {}}}]},
            {"role": "user", "content": [{"toolResult": {
                "toolUseId": "tu1", "content": [{"json": {"done": True}}], "status": "success"}}]},
            {"role": "assistant", "content": [{"text": "It is"}]})
        call.say("thanks")
        await trio.sleep(5)
        assert converse_problems(llm.requests[-1].messages) == []
    assert llm.violations == []
