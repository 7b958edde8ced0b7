"""A model thinking with tools (Claude with extended thinking): the reasoning a reply sent with
its tool use goes back verbatim, first in that round's assistant message, or Bedrock refuses the
tool-result round (the local endpoint keeps the rule: ``fake_reasoning``). Reasoning is never
spoken nor heard; a round that ends in words, and a tool round the caller cut, drop theirs.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from actors.history import History
from tests.bedrock_clock import llm_on_virtual_clock
from tests.call_harness import open_test_call, plain_use_case
from tests.fake_bedrock import (
    FakeBedrock,
    Frame,
    RecordedRequest,
    Reply,
    StreamReply,
    message_end,
    message_start,
    reasoning_events,
    redacted_events,
    stream_reply,
    text_events,
    text_reply,
    tool_events,
)
from tests.fake_reasoning import MISSING_THINKING, reasoning_blocks
from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from voiceagent.app.caller import Identity, open_call
from voiceagent.app.saved_history import saved_history
from voiceagent.errors import ModelRejected
from voiceagent.llm.base import LLMRequest, Reasoning, StreamEnd, TextDelta, ToolUseRequest
from voiceagent.llm.bedrock import BedrockLLM
from voiceagent.llm.bedrock_reply import ReplyAssembler
from voiceagent.llm.converse import converse_problems
from voiceagent.store import records
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry

SIGNATURE = "RXFBc2lnbmVkYnlDbGF1ZGU="
BLOB = "ZW5jcnlwdGVkIHRoaW5raW5n"
THOUGHT = {"reasoningContent": {"reasoningText": {"text": "The caller wants the pickup time.",
                                                  "signature": SIGNATURE}}}
REDACTED = {"reasoningContent": {"redactedContent": BLOB}}
READY = "It will be ready soon."
CLAUDE = "us.anthropic.claude-sonnet-4-20250514-v1:0"
MORE = "Anything else?"


def feed(assembler: ReplyAssembler, frames: list[Frame]) -> list[Any]:
    out: list[Any] = []
    for frame in frames:
        assert frame.parsed is not None
        assembler.feed_event(*frame.parsed, out)
    assembler.finish(out)
    return out


def test_reasoning_blocks_come_whole_and_in_order_just_before_the_end() -> None:
    out = feed(ReplyAssembler(0.0), [
        message_start(), *reasoning_events(0, ["The caller wants", " the pickup time."],
                                           signature=SIGNATURE),
        *redacted_events(1, BLOB), *text_events(["Let me", " check."], index=2),
        *tool_events(3, "tu_1", "pickupTime", ['{"n":', ' 1}']), *message_end("tool_use")])
    assert out[:3] == [TextDelta("Let me"), TextDelta(" check."),
                       ToolUseRequest("tu_1", "pickupTime", {"n": 1})]
    assert out[3] == Reasoning((THOUGHT, REDACTED))
    assert isinstance(out[4], StreamEnd)
    assert len(out) == 5


def test_a_reply_without_reasoning_yields_none_and_one_without_a_signature_keeps_its_text(
        ) -> None:
    plain = feed(ReplyAssembler(0.0), [message_start(), *text_events(["Hi."]), *message_end()])
    assert not any(isinstance(e, Reasoning) for e in plain)
    unsigned = feed(ReplyAssembler(0.0), [
        message_start(), *reasoning_events(0, ["hm"], signature=None),
        *text_events(["Hi."], index=1), *message_end()])
    assert Reasoning(({"reasoningContent": {"reasoningText": {"text": "hm"}}},)) in unsigned


def test_converse_takes_reasoning_only_in_an_assistant_message_and_in_its_shapes() -> None:
    asked = [{"role": "user", "content": [{"text": "pickup?"}]},
             {"role": "assistant", "content": [THOUGHT, REDACTED, {"toolUse": {
                 "toolUseId": "tu_1", "name": "pickupTime", "input": {}}}]},
             {"role": "user", "content": [{"toolResult": {
                 "toolUseId": "tu_1", "content": [{"json": {"minutes": 20}}],
                 "status": "success"}}]}]
    assert converse_problems(asked) == []
    assert converse_problems([{"role": "user", "content": [{"text": "x"}, THOUGHT]}]) == [
        "messages[0].content[1]: reasoningContent outside an assistant message"]
    both = {"reasoningContent": {**THOUGHT["reasoningContent"], **REDACTED["reasoningContent"]}}
    bytes_blob = {"reasoningContent": {"redactedContent": b"raw"}}
    for bad in (both, bytes_blob, {"reasoningContent": {"reasoningText": {"signature": "s"}}}):
        assert converse_problems([asked[0], {"role": "assistant", "content": [
            bad, {"text": "Hi."}]}]) != [], bad


def test_a_saved_history_with_reasoning_is_resumed_not_set_aside() -> None:
    """A reconnect reads the conversation back from the store's items: reasoning included,
    it is a history Converse accepts, so the call resumes it."""
    history = History()
    history.add_user_text("When can I pick it up?")
    history.add_assistant("", [{"toolUseId": "tu_1", "name": "pickupTime", "input": {}}],
                          reasoning=[THOUGHT, REDACTED])
    history.add_tool_results([{"toolResult": {"toolUseId": "tu_1", "status": "success",
                                              "content": [{"json": {"minutes": 20}}]}}])
    history.add_assistant(READY)
    items = [records.chat_item("CA1", meta["at_ms"], seq, message, meta, ttl_s=60)
             for seq, message, meta in history.take_sealed(final=True)]
    saved = saved_history(json.loads(json.dumps(items)))     # as the store gives them back
    assert saved.set_aside_at == 0
    assert list(saved.messages) == list(history.messages)
    assert saved.messages[1]["content"][:2] == [THOUGHT, REDACTED]


def test_a_text_round_keeps_no_reasoning_and_a_tool_round_keeps_it_first() -> None:
    history = History()
    history.add_user_text("Hi")
    history.add_assistant("Hello.", reasoning=[THOUGHT])
    assert history.messages[-1] == {"role": "assistant", "content": [{"text": "Hello."}]}
    history.add_user_text("Pickup?")
    history.add_assistant("Let me check.", [{"toolUseId": "t", "name": "x", "input": {}}],
                          reasoning=[THOUGHT])
    assert [next(iter(b)) for b in history.messages[-1]["content"]] == [
        "reasoningContent", "text", "toolUse"]


# ---------------------------------------------------------------------------- a real call

def thinking_tool_reply(index: int, reasoning: list[Frame]) -> StreamReply:
    return stream_reply(message_start(), reasoning,
                        tool_events(9, f"tooluse_{index}", "CheckRestaurantPickUpTime", ["{}"]),
                        message_end("tool_use"))


def last_block(request: RecordedRequest) -> dict[str, Any]:
    return dict(request.body["messages"][-1]["content"][-1])


REASONINGS = {
    "signed": lambda: reasoning_events(0, ["The caller wants", " the pickup time."],
                                       signature=SIGNATURE),
    "redacted": lambda: redacted_events(0, BLOB),
    "two blocks": lambda: [*reasoning_events(0, ["The caller wants", " the pickup time."],
                                             signature=SIGNATURE), *redacted_events(1, BLOB)],
}


@pytest.mark.parametrize("kind", list(REASONINGS))
async def test_a_tool_call_with_reasoning_is_answered_over_a_real_socket(
        fake_bedrock: FakeBedrock, tmp_path: Path, kind: str) -> None:
    fake = fake_bedrock
    reasoning = REASONINGS[kind]()

    def respond(request: RecordedRequest) -> Reply:
        block = last_block(request)
        if "toolResult" in block:       # the answer thinks too: that reasoning is dropped
            return stream_reply(message_start(), reasoning_events(0, ["Say it."]),
                                text_events(["It will be", " ready soon."], index=1),
                                message_end())
        if "pick up" in str(block.get("text")):
            return thinking_tool_reply(request.index, reasoning)
        return text_reply([MORE])

    fake.responder = respond
    settings = make_settings(tmp_path, LLM="bedrock", AWS_REGION="us-east-1")
    identity = Identity()
    with trio.fail_after(30):
        async with running_server(settings) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN, identity=identity) as call:
                await call.say("When can I pick up my order?")
                first = await call.read_reply()
                await call.say("Thanks.")
                second = await call.read_reply()
                await call.hang_up()
            await server.runtime.calls.wait_idle()
            items = await server.runtime.store.query(identity.call_sid, "chat::")
    assert (first.text, second.text) == (READY, MORE)       # the reasoning is never said
    assert fake.violations == []
    blocks = list(reasoning_blocks(reasoning))
    tool_round = {"role": "assistant", "content": [*blocks, {"toolUse": {
        "toolUseId": "tooluse_0", "name": "CheckRestaurantPickUpTime", "input": {}}}]}
    assert fake.requests[1].body["messages"][-2] == tool_round
    later = fake.requests[2].body["messages"]
    assert later[-4] == tool_round                      # kept as it was, in the next turn
    assert later[-2] == {"role": "assistant", "content": [{"text": READY}]}
    stored = [entry["chat"] for entry in records.chat_entries(items)]
    assert stored == [*later[1:], {"role": "assistant", "content": [{"text": MORE}]}]


async def test_without_its_reasoning_the_tool_round_is_refused_as_bedrock_refuses_it(
        fake_bedrock: FakeBedrock) -> None:
    """The endpoint's rule itself, through the backend: the round sent back without the
    reasoning, or with it changed, is refused (400 ValidationException, Bedrock's words)."""
    fake = fake_bedrock
    question = {"role": "user", "content": [{"text": "pickup?"}]}
    use = {"toolUse": {"toolUseId": "tooluse_0", "name": "CheckRestaurantPickUpTime",
                       "input": {}}}
    result = {"role": "user", "content": [{"toolResult": {
        "toolUseId": "tooluse_0", "content": [{"json": {"minutes": 20}}], "status": "success"}}]}
    changed = {"reasoningContent": {"reasoningText": {"text": "Pickup!",
                                                      "signature": SIGNATURE}}}

    def ask(*messages: dict[str, Any]) -> LLMRequest:
        return LLMRequest(call_sid="CA1", use_case="test", model_id=CLAUDE, system=("Host.",),
                          messages=messages, tools=({"name": "CheckRestaurantPickUpTime",
                                                     "inputSchema": {"json": {"type": "object"}}},))

    backend = BedrockLLM(region="us-east-1")
    try:
        fake.push(thinking_tool_reply(0, reasoning_events(0, ["Pickup?"], signature=SIGNATURE)))
        with trio.fail_after(10):
            events = await collect(backend, ask(question))
            sent = next(e for e in events if isinstance(e, Reasoning)).blocks
            for content, refusal in (([use], MISSING_THINKING.format(at=1, found="tool_use")),
                                     ([changed, use], "Invalid `signature` in `thinking`")):
                with pytest.raises(ModelRejected) as refused:
                    await collect(backend, ask(
                        question, {"role": "assistant", "content": content}, result))
                assert refusal in str(refused.value)
            fake.push(text_reply([READY]))
            events = await collect(backend, ask(
                question, {"role": "assistant", "content": [*sent, use]}, result))
    finally:
        await backend.aclose()
    assert TextDelta(READY) in events
    assert len(fake.requests) == 4
    assert len(fake.violations) == 2


async def collect(backend: BedrockLLM, request: LLMRequest) -> list[Any]:
    async with backend.stream(request) as events:
        return [event async for event in events]


# ---------------------------------------------------------------------------- barge-in

QUESTION = "When can I pick up my pizza?"
NEXT = "And delivery?"
FINE = "We deliver too."
GAP_S = 0.5


@pytest.fixture
async def llm(fake_bedrock: FakeBedrock, mock_clock: trio.testing.MockClock
              ) -> AsyncIterator[BedrockLLM]:
    async with llm_on_virtual_clock(mock_clock) as backend:
        yield backend


def slow(frames: list[Frame]) -> list[Frame]:
    """Each event ``GAP_S`` after the one before: a barge-in can land inside the reply."""
    return [Frame(f.data, GAP_S, f.parsed) for f in frames]


def registry(runs: list[str]) -> ToolRegistry:
    tools = ToolRegistry()

    async def pickup(ctx: Any, args: Any) -> dict[str, Any]:
        runs.append("pickupTime")
        await trio.sleep(2)
        return {"minutes": 20}

    async def order(ctx: Any, args: Any) -> dict[str, Any]:
        runs.append("placeOrder")
        await trio.sleep(2)
        return {"order_number": 42}

    tools.register(ToolDefinition("pickupTime", pickup))
    tools.register(ToolDefinition("placeOrder", order, side_effect=True))
    return tools


USE_CASE = plain_use_case(tools=[{"name": "pickupTime", "description": "Minutes to pickup"},
                                 {"name": "placeOrder", "description": "Place the order"}])


# where the caller cuts in (virtual seconds after the question), and what stays of the turn
CUTS = {
    "in the reasoning": 2 * GAP_S + 0.1,
    "while the tool runs": 11 * GAP_S + 1,
    "in the answer after the tool": 11 * GAP_S + 2 + 2 * GAP_S + 0.1,
}


@pytest.mark.parametrize("tool", ["pickupTime", "placeOrder"])
@pytest.mark.parametrize("where", list(CUTS))
async def test_a_barge_in_in_a_thinking_tool_turn_leaves_a_history_bedrock_accepts(
        fake_bedrock: FakeBedrock, llm: BedrockLLM, mock_clock: trio.testing.MockClock,
        where: str, tool: str) -> None:
    fake = fake_bedrock
    thought = reasoning_events(0, ["The caller", " wants", " a time."], signature=SIGNATURE)

    def respond(request: RecordedRequest) -> Reply:
        block = last_block(request)
        if "toolResult" in block:
            return StreamReply(tuple(slow([message_start(), *text_events(
                ["Ready", " in twenty", " minutes."], index=0), *message_end()])))
        if block.get("text") == QUESTION:
            return StreamReply(tuple(slow([
                message_start(), *thought,
                *tool_events(1, "tu_1", tool, ["{}"]), *message_end("tool_use")])))
        return text_reply([FINE])

    fake.responder = respond
    runs: list[str] = []
    async with open_test_call(llm, use_case=USE_CASE, registry=registry(runs)) as call:
        call.say(QUESTION)
        await trio.sleep(CUTS[where])
        heard = "Ready" if where == "in the answer after the tool" else None
        call.interrupt(heard=heard)
        await trio.sleep(5)                         # the side effect runs to its end
        call.say(NEXT)
        texts = [(await call.reply())[0]]
        while not texts[-1].endswith(FINE):
            texts.append((await call.reply())[0])
        await call.hang_up()
    assert fake.violations == []
    last = fake.requests[-1].body["messages"]
    assert converse_problems(last) == []
    assert last[-1]["content"][-1] == {"text": NEXT}
    assert [m for m in call.history if any("reasoningContent" in b for b in m["content"])] == (
        [{"role": "assistant", "content": [*reasoning_blocks(thought), {"toolUse": {
            "toolUseId": "tu_1", "name": tool, "input": {}}}]}]
        if where == "in the answer after the tool" else [])
    assert [entry["chat"] for entry in call.writer.stored()] == list(call.history)
    assert (runs != []) == (where != "in the reasoning")
    kept = where == "in the answer after the tool" or (
        where == "while the tool runs" and tool == "placeOrder")    # a side effect that ran
    assert [b["toolUse"]["name"] for m in call.history for b in m["content"]
            if "toolUse" in b] == ([tool] if kept else [])
    if where == "in the answer after the tool":
        assert last[-2] == {"role": "assistant", "content": [{"text": "Ready"}]}
