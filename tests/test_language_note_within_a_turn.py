"""A tool that switches the call's language (switchLanguage) in a turn's first round: the
model's language note takes effect at the next turn, not at the next round of the same turn.

The note is a system block. On the models that bind their thinking to what came before it
(Claude Fable 5.1 and later, ``voiceagent.llm.binding``), a note that came between two rounds
of one turn changed the prefix the first round's reasoning was signed under, so the second
round's request left that reasoning out; and Claude thinking with tools requires the tool
round's reasoning back, so Bedrock refused the answer to the tool (the local endpoint keeps
both rules: ``fake_binding`` and ``fake_reasoning``) and the caller heard an apology. The
tool's own result says which language to answer in, and Twilio speaks the new language as
soon as the tool ran.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from actors.call import CallPlan
from actors.messages import Setup
from tests.bedrock_clock import llm_on_virtual_clock
from tests.call_harness import open_test_call, plain_use_case
from tests.fake_bedrock import (
    FakeBedrock,
    RecordedRequest,
    Reply,
    message_end,
    message_start,
    reasoning_events,
    stream_reply,
    text_reply,
    tool_events,
)
from tests.fake_reasoning import reasoning_blocks
from voiceagent.llm.bedrock import BedrockLLM
from voiceagent.tools.registry import default_registry

FABLE = "global.anthropic.claude-fable-5-1"
SWITCH = {"name": "switchLanguage", "description": "Switch the call's language.",
          "input_schema": {"type": "object", "required": ["language"], "properties": {
              "language": {"type": "string", "enum": ["en-US", "es-ES"]}}}}
THINKING = reasoning_events(0, [""], signature="c3dpdGNoaW5n")
QUESTION = "Can we speak Spanish?"
NEXT = "¿A qué hora abren?"


@pytest.fixture
async def llm(fake_bedrock: FakeBedrock, mock_clock: trio.testing.MockClock
              ) -> AsyncIterator[BedrockLLM]:
    async with llm_on_virtual_clock(mock_clock) as backend:
        yield backend


def respond(request: RecordedRequest) -> Reply:
    block = dict(request.body["messages"][-1]["content"][-1])
    if block.get("text") == QUESTION:
        return stream_reply(message_start(), THINKING,
                            tool_events(1, "tu_1", "switchLanguage", ['{"language": "es-ES"}']),
                            message_end("tool_use"))
    if "toolResult" in block:
        return text_reply(["Claro, hablemos en español."])
    if block.get("text") == NEXT:
        return text_reply(["Abrimos a las nueve."])
    return text_reply(["Hi, how can I help?"])


def notes(request: RecordedRequest) -> list[str]:
    return [b["text"] for b in request.body.get("system") or () if "es-ES" in b.get("text", "")]


async def test_a_language_switch_mid_turn_keeps_the_tool_rounds_thinking(
        fake_bedrock: FakeBedrock, llm: BedrockLLM,
        mock_clock: trio.testing.MockClock) -> None:
    fake_bedrock.responder = respond
    use_case = plain_use_case(languages=[{"code": "en-US"}, {"code": "es-ES",
                                                            "voice": "es-voice"}],
                              tools=[SWITCH])

    async def resolve(setup: Setup) -> CallPlan:
        return CallPlan(call_sid=setup.call_sid, use_case=use_case,
                        system_prompt=use_case.prompt, model_id=FABLE,
                        greeting=use_case.welcome_greeting, caller="+15555550100",
                        called="+15555550199")

    async with open_test_call(llm, use_case=use_case, registry=default_registry(),
                              resolve=resolve) as call:
        call.say("Hello")
        await call.reply()
        call.say(QUESTION)
        answer, frames = await call.reply()
        call.socket.push({"type": "prompt", "voicePrompt": NEXT, "lang": "es-ES",
                          "last": True})
        later, _ = await call.reply()
        await call.hang_up()
    assert fake_bedrock.violations == []
    assert {"type": "language", "ttsLanguage": "es-ES",
            "transcriptionLanguage": "es-ES"} in frames         # heard at once
    assert answer == "Claro, hablemos en español."
    assert later == "Abrimos a las nueve."
    asked, answered, next_turn = fake_bedrock.requests[1:4]
    tool_round = answered.body["messages"][-2]
    assert tool_round["content"][0] == reasoning_blocks(THINKING)[0]    # sent back whole
    assert answered.body["system"] == asked.body["system"]          # the turn's own note
    assert notes(asked) == []
    assert len(notes(next_turn)) == 1                               # the next turn's
    sent: list[Any] = [m for m in next_turn.body["messages"]
                       if any("toolUse" in b for b in m["content"])]
    assert sent == [{"role": "assistant", "content": tool_round["content"][1:]}]
