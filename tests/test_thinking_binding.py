"""Claude models that bind their thinking to the conversation (Fable 5.1 and later): a
reasoning block sent back after something before it changed (a trimmed history, a new system
note) is refused, so each request leaves out the blocks whose prefix changed since they were
signed (``voiceagent.llm.binding``); the local endpoint keeps the rule (``fake_binding``).
"""

from __future__ import annotations

import copy
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
    Frame,
    RecordedRequest,
    Reply,
    StreamReply,
    message_end,
    message_start,
    reasoning_events,
    stream_reply,
    text_events,
    text_reply,
    tool_events,
)
from tests.fake_binding import BOUND_ELSEWHERE
from tests.fake_reasoning import reasoning_blocks
from voiceagent.errors import ModelRejected
from voiceagent.llm import bedrock as bedrock_module
from voiceagent.llm.base import LLMRequest, Reasoning, TextDelta
from voiceagent.llm.bedrock import BedrockLLM
from voiceagent.llm.binding import ThinkingBindings, binds_thinking
from voiceagent.llm.converse import converse_problems
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry

FABLE = "global.anthropic.claude-fable-5-1"
SIGNATURE = "RmFibGVzaWduZWRpdA=="
LATER_SIGNATURE = "TGF0ZXJzaWduZWQ="
TOOL = {"name": "pickupTime", "inputSchema": {"json": {"type": "object"}}}


@pytest.mark.parametrize(("model_id", "binds"), [
    ("global.anthropic.claude-fable-5-1", True),
    ("anthropic.claude-fable-5-2", True),
    ("us.anthropic.claude-mythos-5-1", True),
    ("anthropic.claude-opus-5-5", True),
    ("eu.anthropic.claude-sonnet-5-5", True),
    ("anthropic.claude-haiku-5-5", True),
    ("anthropic.claude-opus-6", True),                  # a later model is taken to bind
    ("anthropic.claude-fable-5", False),
    ("anthropic.claude-opus-5", False),
    ("anthropic.claude-sonnet-5", False),
    ("anthropic.claude-opus-4-8", False),
    ("us.anthropic.claude-sonnet-4-20250514-v1:0", False),
    ("anthropic.claude-3-7-sonnet-20250219-v1:0", False),
    ("arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc", False),
    ("amazon.nova-pro-v1:0", False),
])
def test_which_models_bind_their_thinking(model_id: str, binds: bool) -> None:
    assert binds_thinking(model_id) is binds


# ------------------------------------------------------------------------- the rule, pure

def thought(signature: str, text: str = "") -> dict[str, Any]:
    return {"reasoningContent": {"reasoningText": {"text": text, "signature": signature}}}


def said(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "content": [{"text": text}]}


USE = {"toolUse": {"toolUseId": "tu_1", "name": "pickupTime", "input": {}}}
RESULT = {"role": "user", "content": [{"toolResult": {
    "toolUseId": "tu_1", "content": [{"json": {"minutes": 20}}], "status": "success"}}]}


def body(*messages: dict[str, Any], system: str = "Host.") -> dict[str, Any]:
    return {"modelId": FABLE, "messages": list(messages),
            "system": [{"text": system}, {"cachePoint": {"type": "default"}}],
            "toolConfig": {"tools": [{"toolSpec": TOOL}]}}


def blocks_of(request: dict[str, Any]) -> list[list[str]]:
    return [[next(iter(b)) for b in m["content"]] for m in request["messages"]]


def test_a_block_is_kept_while_all_before_it_stays_and_left_out_once_anything_changes(
        ) -> None:
    bindings = ThinkingBindings()
    first = body(said("user", "Hi"), said("assistant", "Hello."), said("user", "Pickup?"))
    bindings.fit(first).signed([thought(SIGNATURE)])
    tool_round = {"role": "assistant", "content": [thought(SIGNATURE), USE]}
    history = [*first["messages"], tool_round, RESULT, said("assistant", "Twenty minutes."),
               said("user", "Thanks.")]
    kept = body(*copy.deepcopy(history))
    bindings.fit(kept)
    assert kept["messages"] == history                  # nothing changed: sent back whole

    for changed in (body(*history, system="Host. Answer in French."),       # a system note
                    body(*history[2:]),                                       # trimmed
                    body(said("user", "Hi"), said("assistant", "Hel"),        # cut to "heard"
                         *history[2:])):
        sent = changed["messages"]
        before = copy.deepcopy(sent)
        bindings.fit(changed)
        at = next(n for n, m in enumerate(before) if m is not None and m["content"][0]
                  .get("reasoningContent"))
        assert changed["messages"][at] == {"role": "assistant", "content": [USE]}
        assert [m for n, m in enumerate(changed["messages"]) if n != at] == [
            m for n, m in enumerate(before) if n != at]
    assert tool_round == {"role": "assistant", "content": [thought(SIGNATURE), USE]}


def test_an_unknown_block_goes_and_one_signed_after_it_went_stays() -> None:
    """A block this process never saw signed (a resumed call) cannot be shown unchanged; a
    block signed after that one was left out was signed without it, and stays."""
    bindings = ThinkingBindings()
    old_round = {"role": "assistant", "content": [thought("c2lnbmVkIGVsc2V3aGVyZQ=="), USE]}
    asked = body(said("user", "Pickup?"), old_round, RESULT, said("assistant", "Twenty."),
                 said("user", "And delivery?"))
    bindings.fit(asked).signed([thought(LATER_SIGNATURE)])
    assert blocks_of(asked)[1] == ["toolUse"]
    later = {"role": "assistant", "content": [thought(LATER_SIGNATURE), {"toolUse": {
        "toolUseId": "tu_2", "name": "pickupTime", "input": {}}}]}
    again = body(said("user", "Pickup?"), old_round, RESULT, said("assistant", "Twenty."),
                 said("user", "And delivery?"), later, RESULT)
    bindings.fit(again)
    assert blocks_of(again)[1] == ["toolUse"]
    assert blocks_of(again)[5] == ["reasoningContent", "toolUse"]


def test_the_oldest_blocks_are_forgotten_past_the_bound() -> None:
    bindings = ThinkingBindings(remembered=2)
    asked = body(said("user", "Pickup?"))
    for n in range(3):
        bindings.fit(copy.deepcopy(asked)).signed([thought(f"sig{n}")])
    for n, kept in ((0, False), (2, True)):
        request = body(said("user", "Pickup?"), {"role": "assistant", "content": [
            thought(f"sig{n}"), USE]}, RESULT)
        bindings.fit(request)
        assert ("reasoningContent" in blocks_of(request)[1]) is kept


# ------------------------------------------------------------------------- over a socket

def ask(*messages: dict[str, Any], system: str = "Host.") -> LLMRequest:
    return LLMRequest(call_sid="CA1", use_case="test", model_id=FABLE, system=(system,),
                      messages=messages, tools=(TOOL,))


async def collect(backend: BedrockLLM, request: LLMRequest) -> list[Any]:
    async with backend.stream(request) as events:
        return [event async for event in events]


async def test_a_changed_system_prompt_leaves_the_earlier_thinking_out(
        fake_bedrock: FakeBedrock, monkeypatch: pytest.MonkeyPatch) -> None:
    """The endpoint refuses, as Bedrock does, a block sent back under another system prompt
    (here: the language note that comes once the caller switches language); the backend
    leaves it out and the request is answered. Unchanged, the block goes back whole."""
    fake = fake_bedrock
    question = said("user", "Pickup?")
    backend = BedrockLLM(region="us-east-1")
    try:
        with trio.fail_after(10):
            fake.push(stream_reply(message_start(), reasoning_events(0, [""], signature=SIGNATURE),
                                   tool_events(1, "tu_1", "pickupTime", ["{}"]),
                                   message_end("tool_use")))
            events = await collect(backend, ask(question))
            signed = next(e for e in events if isinstance(e, Reasoning)).blocks
            tool_round = {"role": "assistant", "content": [*signed, USE]}
            fake.push(text_reply(["Twenty minutes."]))
            await collect(backend, ask(question, tool_round, RESULT))
            history = (question, tool_round, RESULT, said("assistant", "Twenty minutes."),
                       said("user", "Merci."))
            french = ask(*history, system="Host. Answer in French.")
            # as before: every block sent back as the history keeps it
            monkeypatch.setattr(bedrock_module, "binds_thinking", lambda model_id: False,
                                raising=False)
            with pytest.raises(ModelRejected) as refused:
                await collect(backend, french)
            assert BOUND_ELSEWHERE.format(at=1, n=0) in str(refused.value)
            monkeypatch.undo()
            fake.push(text_reply(["De rien."]))
            events = await collect(backend, french)
    finally:
        await backend.aclose()
    assert fake.requests[1].body["messages"][1] == tool_round       # unchanged: sent whole
    assert TextDelta("De rien.") in events
    assert fake.requests[3].body["messages"][1] == {"role": "assistant", "content": [USE]}
    assert len(fake.violations) == 1                    # the refused request, and only it


# ------------------------------------------------------------------------- a whole call

GREET_BACK = "Hi, how can I help?"
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
    return [Frame(f.data, GAP_S, f.parsed) for f in frames]


def last_block(request: RecordedRequest) -> dict[str, Any]:
    return dict(request.body["messages"][-1]["content"][-1])


async def test_a_call_with_a_barge_in_and_a_trimmed_history_goes_on_thinking(
        fake_bedrock: FakeBedrock, llm: BedrockLLM, mock_clock: trio.testing.MockClock
        ) -> None:
    """Claude Fable 5.1 thinks on every turn (unasked). The caller cuts the answer after a
    tool round (its reasoning kept), and at the next turn the oldest exchange is trimmed:
    the tool round's reasoning now follows another conversation, so it is left out, and the
    caller hears the answer, not an apology."""
    fake = fake_bedrock
    thinking = reasoning_events(0, [""], signature=SIGNATURE)

    def respond(request: RecordedRequest) -> Reply:
        block = last_block(request)
        if "toolResult" in block:
            return StreamReply(tuple(slow([
                message_start(), *reasoning_events(0, [""], signature="YW5zd2Vy"),
                *text_events(["Ready", " in twenty", " minutes."], index=1),
                *message_end()])))
        if block.get("text") == QUESTION:
            return StreamReply(tuple(slow([
                message_start(), *thinking, *tool_events(1, "tu_1", "pickupTime", ["{}"]),
                *message_end("tool_use")])))
        if block.get("text") == NEXT:
            return stream_reply(message_start(), reasoning_events(0, [""], signature="bmV4dA=="),
                                text_events([FINE], index=1), message_end())
        return text_reply([GREET_BACK])

    fake.responder = respond
    use_case = plain_use_case(tools=[{"name": "pickupTime", "description": "Minutes to pickup"}])
    tools = ToolRegistry()

    async def pickup(ctx: Any, args: Any) -> dict[str, Any]:
        await trio.sleep(2)
        return {"minutes": 20}

    tools.register(ToolDefinition("pickupTime", pickup))

    async def resolve(setup: Setup) -> CallPlan:
        return CallPlan(call_sid=setup.call_sid, use_case=use_case,
                        system_prompt=use_case.prompt, model_id=FABLE,
                        greeting=use_case.welcome_greeting, caller="+15555550100",
                        called="+15555550199")

    async with open_test_call(llm, use_case=use_case, registry=tools, resolve=resolve,
                              services_changes={"max_history_messages": 4}) as call:
        call.say("Hello")
        assert (await call.reply())[0] == GREET_BACK
        call.say(QUESTION)
        await trio.sleep(12 * GAP_S + 2 + 2 * GAP_S + 0.1)     # into the answer after the tool
        call.interrupt(heard="Ready")
        await trio.sleep(1)
        call.say(NEXT)
        texts = [(await call.reply())[0]]
        while not texts[-1].endswith(FINE):
            texts.append((await call.reply())[0])
        await call.hang_up()
    assert fake.violations == []
    tool_round = {"role": "assistant", "content": [*reasoning_blocks(thinking), {"toolUse": {
        "toolUseId": "tu_1", "name": "pickupTime", "input": {}}}]}
    assert tool_round in call.history                   # the history keeps what was signed
    last = fake.requests[-1].body["messages"]
    assert converse_problems(last) == []
    assert last[-1]["content"][-1] == {"text": NEXT}
    assert {"role": "assistant", "content": [{"text": "Ready"}]} in last     # what was heard
    sent = next(m for m in last if any("toolUse" in b for b in m["content"]))
    assert last[0] == said("user", QUESTION)                        # the greeting exchange went
    assert sent == {"role": "assistant", "content": tool_round["content"][1:]}
    answered = next(r for r in fake.requests if "toolResult" in last_block(r))
    assert answered.body["messages"][-2] == tool_round  # within its turn, sent back whole
