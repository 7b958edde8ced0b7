"""Prompt caching on a long call: with ``prompt_caching`` on, a Claude request carries one more
cache point, after the last block of its last message (the caller's words, or a tool round's
results), once the conversation reaches the model's per-checkpoint minimum (512 tokens on
Opus 5, 1,024 on Sonnet 5, 2,048 on 3.5 Haiku, 4,096 on Haiku 4.5 and on a Claude the
documents do not list yet); the next round and the next turn re-send everything before it
unchanged, a barge-in cutting only what comes after it. A round of more blocks than Claude
walks back over keeps the previous point too. Never more than Bedrock's 4 points in a
request; none in the history, the store or the transcript. The local endpoint refuses what
Bedrock refuses (``fake_caching``), so a point put where Bedrock would not take it fails here,
and models what a request reads of the one before (``reads_from``).
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import trio
import trio.testing

from actors.call import CallPlan
from actors.messages import Setup
from tests import call_harness
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
    text_events,
    text_reply,
    tool_events,
)
from tests.fake_caching import (
    AFTER_REASONING,
    IN_TOOL_RESULT,
    NOT_ALONE,
    NOTHING_BEFORE,
    TOO_MANY,
    placement_refusal,
    reads_from,
)
from voiceagent.errors import LLMError
from voiceagent.llm import bedrock_converse
from voiceagent.llm.base import LLMRequest, ModelOptions
from voiceagent.llm.bedrock import BedrockLLM
from voiceagent.llm.cache_points import with_moving_point
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry

OPUS = "us.anthropic.claude-opus-5"                   # 512 tokens a checkpoint
HAIKU = "us.anthropic.claude-haiku-4-5-20251001-v1:0"   # 4,096
FABLE = "global.anthropic.claude-fable-5-1"       # binds its thinking, thinks unasked
NOVA = "us.amazon.nova-pro-v1:0"
CACHE = {"cachePoint": {"type": "default"}}
# 6,000 characters: 1,500 tokens at four characters a token (Claude's English runs about 3.5
# a token, so more); three of them pass 4,096 tokens, two do not (MAX_PROMPT_CHARS raised)
LONG = ("Let me tell you about the order. " * 200)[:6000].strip()
# 3,000 characters, 750 tokens: one passes 512, two 1,024, three 2,048, six 4,096
HALF = LONG[:3000].strip()
TOOL = {"name": "pickupTime", "description": "Minutes to pickup"}
ANSWER = "Ready in twenty minutes, and I can also tell you more about the order if you like."


def long_prompt(n: int) -> str:
    return f"{LONG} Question {n}?"


def points(body: dict[str, Any]) -> int:
    blocks = [*(body.get("system") or ()), *((body.get("toolConfig") or {}).get("tools") or ()),
              *(b for m in body["messages"] for b in m["content"])]
    return sum(1 for b in blocks if "cachePoint" in b)


def message_points(body: dict[str, Any]) -> list[tuple[int, int]]:
    return [(at, n) for at, m in enumerate(body["messages"])
            for n, b in enumerate(m["content"]) if "cachePoint" in b]


def stripped(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**m, "content": [b for b in m["content"] if "cachePoint" not in b]}
            for m in messages]


def last_words(request: RecordedRequest) -> str:
    content = [b for b in request.body["messages"][-1]["content"] if "cachePoint" not in b]
    return str(content[-1].get("text", ""))


@pytest.fixture
async def llm(fake_bedrock: FakeBedrock, mock_clock: trio.testing.MockClock
              ) -> AsyncIterator[BedrockLLM]:
    async with llm_on_virtual_clock(mock_clock) as backend:
        yield backend


def tools() -> ToolRegistry:
    registry = ToolRegistry()

    async def pickup(ctx: Any, args: Any) -> dict[str, Any]:
        return {"minutes": 20}

    registry.register(ToolDefinition("pickupTime", pickup))
    return registry


def call_on(llm: BedrockLLM, model_id: str, **options: Any) -> Any:
    use_case = plain_use_case(tools=[TOOL], model_options={"prompt_caching": True, **options})

    async def resolve(setup: Setup) -> CallPlan:
        return CallPlan(call_sid=setup.call_sid, use_case=use_case,
                        system_prompt=use_case.prompt, model_id=model_id,
                        greeting=use_case.welcome_greeting, caller="+15555550100",
                        called="+15555550199")

    return open_test_call(llm, use_case=use_case, registry=tools(), resolve=resolve,
                          services_changes={"max_prompt_chars": 8000})


def assert_never_kept(call: call_harness.TestCall) -> None:
    assert "cachePoint" not in repr(call.history)
    assert "cachePoint" not in repr(call.writer.persisted)      # store and transcripts


async def test_each_turn_of_a_long_call_caches_up_to_the_callers_words(
        fake_bedrock: FakeBedrock, llm: BedrockLLM,
        mock_clock: trio.testing.MockClock) -> None:
    """Turn by turn: no message point while the conversation is short; then one, after the
    caller's words, and the next turn re-sends all it covered (the barge-in in between cut
    the reply after it). System, tools and the moving point: 3 of Bedrock's 4."""
    fake_bedrock.responder = lambda request: text_reply([f"Noted {len(request.body['messages'])}, "
                                                         "and what else would you like?"])
    async with call_on(llm, HAIKU) as call:
        for n in range(1, 5):
            call.say(long_prompt(n))
            await call.reply()
            if n == 3:
                call.interrupt(heard="Noted")           # the caller cut the third answer
        await call.hang_up()
    assert fake_bedrock.violations == []
    bodies = {last_words(r): r.body for r in fake_bedrock.requests}
    for n in (1, 2):
        assert message_points(bodies[long_prompt(n)]) == [], n
        assert points(bodies[long_prompt(n)]) == 2
    third, fourth = bodies[long_prompt(3)], bodies[long_prompt(4)]
    for body in (third, fourth):
        assert body["messages"][-1]["content"][-2:] == [
            {"text": body["messages"][-1]["content"][0]["text"]}, CACHE]
        assert message_points(body) == [(len(body["messages"]) - 1, 1)]
        assert points(body) == 3
    covered = stripped(third["messages"])
    assert stripped(fourth["messages"])[:len(covered)] == covered
    assert fourth["messages"][len(covered)] == {"role": "assistant",
                                                "content": [{"text": "Noted"}]}   # the cut
    assert_never_kept(call)


async def test_a_tool_round_caches_after_its_results_over_the_prefix_of_the_round_before(
        fake_bedrock: FakeBedrock, llm: BedrockLLM,
        mock_clock: trio.testing.MockClock) -> None:
    def respond(request: RecordedRequest) -> Reply:
        last = request.body["messages"][-1]["content"]
        if any("toolResult" in b for b in last):
            return text_reply([ANSWER])
        if last_words(request) == long_prompt(3):
            return stream_reply(message_start(), tool_events(0, "tu_1", "pickupTime", ["{}"]),
                                message_end("tool_use"))
        return text_reply(["Noted, and what else would you like to know?"])

    fake_bedrock.responder = respond
    async with call_on(llm, OPUS) as call:
        for n in range(1, 4):
            call.say(long_prompt(n))
            text = (await call.reply())[0]
        await call.hang_up()
    assert text == ANSWER
    assert fake_bedrock.violations == []
    asked, answered = fake_bedrock.requests[-2].body, fake_bedrock.requests[-1].body
    assert asked["messages"][-1]["content"][-1] == CACHE
    assert message_points(asked) == [(len(asked["messages"]) - 1, 1)]
    assert answered["messages"][-1]["content"][0]["toolResult"]["toolUseId"] == "tu_1"
    assert answered["messages"][-1]["content"][1:] == [CACHE]
    assert message_points(answered) == [(len(answered["messages"]) - 1, 1)]
    assert points(asked) == points(answered) == 3
    covered = stripped(asked["messages"])
    assert stripped(answered["messages"])[:len(covered)] == covered
    assert_never_kept(call)


async def test_a_short_call_and_a_nova_call_get_no_point_in_the_conversation(
        fake_bedrock: FakeBedrock, llm: BedrockLLM,
        mock_clock: trio.testing.MockClock) -> None:
    """Under the minimum a point caches nothing (Bedrock takes it and ignores it); Nova
    documents no look-back from a later point, so a moving one would be written, never read."""
    fake_bedrock.responder = lambda request: text_reply(["Sure, anything else?"])
    async with call_on(llm, OPUS) as call:
        for words in ("Hello", "Can I order a pizza?", "With olives, please."):
            call.say(words)
            await call.reply()
        await call.hang_up()
    async with call_on(llm, NOVA) as call:
        for n in range(1, 5):
            call.say(long_prompt(n))
            await call.reply()
        await call.hang_up()
    assert fake_bedrock.violations == []
    assert len(fake_bedrock.requests) == 7
    assert all(message_points(r.body) == [] for r in fake_bedrock.requests)


async def test_thinking_bound_to_its_conversation_survives_the_moving_point(
        fake_bedrock: FakeBedrock, llm: BedrockLLM,
        mock_clock: trio.testing.MockClock) -> None:
    """Claude Fable 5.1 signs its reasoning with all before it, and refuses it back when
    anything there changed: the point that moved from the caller's words to the tool's
    results is no part of that (Anthropic leaves ``cache_control`` out of the check), so the
    tool round's reasoning goes back with its result."""
    def respond(request: RecordedRequest) -> Reply:
        last = request.body["messages"][-1]["content"]
        if any("toolResult" in b for b in last):
            return stream_reply(message_start(), reasoning_events(0, [""], signature="YW5z"),
                                text_events([ANSWER], index=1), message_end())
        if last_words(request) == long_prompt(3):
            return stream_reply(message_start(), reasoning_events(0, [""], signature="dG9vbA=="),
                                tool_events(1, "tu_1", "pickupTime", ["{}"]),
                                message_end("tool_use"))
        return text_reply(["Noted, and what else would you like to know?"])

    fake_bedrock.responder = respond
    async with call_on(llm, FABLE) as call:
        for n in range(1, 4):
            call.say(long_prompt(n))
            text = (await call.reply())[0]
        await call.hang_up()
    assert text == ANSWER                       # after the tool, not an apology
    assert fake_bedrock.violations == []
    answered = fake_bedrock.requests[-1].body
    tool_round = answered["messages"][-2]["content"]
    assert "reasoningContent" in tool_round[0]
    assert "toolUse" in tool_round[1]
    assert answered["messages"][-1]["content"][-1] == CACHE


@pytest.mark.parametrize(("model_id", "first_turn"), [
    (OPUS, 1), ("anthropic.claude-sonnet-5", 2), ("anthropic.claude-3-5-haiku-20241022-v1:0", 3),
    (HAIKU, 6), ("anthropic.claude-opus-6", 6)])
async def test_the_point_comes_once_the_conversation_reaches_the_models_minimum(
        fake_bedrock: FakeBedrock, llm: BedrockLLM,
        mock_clock: trio.testing.MockClock, model_id: str, first_turn: int) -> None:
    """750 tokens a turn: Opus 5 caches the conversation from the first turn, where a Claude
    whose minimum the documents do not give waits for the largest, 4,096 tokens."""
    fake_bedrock.responder = lambda request: text_reply(["Noted."])
    async with call_on(llm, model_id) as call:
        for n in range(1, 7):
            call.say(f"{HALF} Question {n}?")
            await call.reply()
        await call.hang_up()
    assert fake_bedrock.violations == []
    marked = [bool(message_points(r.body)) for r in fake_bedrock.requests]
    assert marked == [n >= first_turn for n in range(1, 7)]


def tool_round(calls: int) -> Reply:
    return stream_reply(message_start(),
                        *(tool_events(n, f"tu_{n}", "pickupTime", ["{}"]) for n in range(calls)),
                        message_end("tool_use"))


@pytest.mark.parametrize(("calls", "kept"), [(2, False), (12, True)])
async def test_a_round_of_more_blocks_than_claude_walks_back_keeps_the_previous_point(
        fake_bedrock: FakeBedrock, llm: BedrockLLM,
        mock_clock: trio.testing.MockClock, calls: int, kept: bool) -> None:
    """Twelve tools at once are 24 blocks between the caller's words and the results, more
    than the 20 Claude walks back over: the round keeps the point after the words, the fourth
    and last of the request, and reads the conversation cached; two tools need no second."""
    def respond(request: RecordedRequest) -> Reply:
        if any("toolResult" in b for b in request.body["messages"][-1]["content"]):
            return text_reply([ANSWER])
        if last_words(request) == long_prompt(2):
            return tool_round(calls)
        return text_reply(["Noted, and what else would you like to know?"])

    fake_bedrock.responder = respond
    async with call_on(llm, OPUS) as call:
        for n in range(1, 3):
            call.say(long_prompt(n))
            text = (await call.reply())[0]
        await call.hang_up()
    assert text == ANSWER
    assert fake_bedrock.violations == []
    asked, answered = fake_bedrock.requests[-2].body, fake_bedrock.requests[-1].body
    assert len(answered["messages"][-1]["content"]) == calls + 1       # the results, a point
    last = len(answered["messages"]) - 1
    words = (last - 2, len(answered["messages"][last - 2]["content"]) - 1)
    assert message_points(answered) == ([words] if kept else []) + [(last, calls)]
    assert points(answered) == (4 if kept else 3)
    assert reads_from(asked, answered)
    assert_never_kept(call)


# --------------------------------------------------------- the endpoint keeps Bedrock's rules

def said(role: str, *blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": role, "content": list(blocks)}


WORDS = {"text": "Hours?"}
THOUGHT = {"reasoningContent": {"reasoningText": {"text": "", "signature": "c2ln"}}}
RESULT = {"toolResult": {"toolUseId": "tu_1", "content": [{"json": {"open": 9}}]}}


@pytest.mark.parametrize(("messages", "refused"), [
    ([said("user", CACHE)], NOTHING_BEFORE.format(path="messages.0.content.0")),
    ([said("user", CACHE, WORDS)], NOTHING_BEFORE.format(path="messages.0.content.0")),
    ([said("user", {**WORDS, **CACHE})], NOT_ALONE.format(path="messages.0.content.0")),
    ([said("user", WORDS), said("assistant", THOUGHT, CACHE)], AFTER_REASONING),
    ([said("user", {"toolResult": {"toolUseId": "tu_1", "content": [{"text": "9"}, CACHE]}})],
     IN_TOOL_RESULT.format(path="messages.0.content.0.toolResult.content.1")),
    ([said("user", WORDS, CACHE, WORDS, CACHE, WORDS, CACHE)], TOO_MANY.format(found=5)),
])
def test_the_endpoint_refuses_a_point_where_bedrock_takes_none(
        messages: list[dict[str, Any]], refused: str) -> None:
    body = {"system": [{"text": "Host."}, CACHE], "messages": messages,
            "toolConfig": {"tools": [{"toolSpec": TOOL}, CACHE]}}
    assert placement_refusal(body) == refused


def test_no_point_without_room_for_one() -> None:
    """The request's other points counted: a fifth would fail the request, not cache."""
    messages = [said("user", {"text": LONG}), said("assistant", {"text": LONG}),
                said("user", {"text": LONG})]
    assert with_moving_point(messages, room=1)[-1]["content"] == [{"text": LONG}, CACHE]
    assert with_moving_point(messages, room=0) == messages
    assert messages[-1]["content"] == [{"text": LONG}]        # the history's, unchanged


def test_the_previous_point_is_kept_only_with_room_for_both() -> None:
    uses = [{"toolUse": {"toolUseId": f"tu_{n}", "name": "pickupTime", "input": {}}}
            for n in range(12)]
    note = "Ready at the front desk, ask for the order by name. " * 2     # 26 tokens
    results = [{"toolResult": {"toolUseId": f"tu_{n}",
                               "content": [{"json": {"minutes": 20, "note": note}}]}}
               for n in range(12)]
    messages = [said("user", {"text": LONG}), said("assistant", *uses), said("user", *results)]
    both = with_moving_point(messages, room=2, min_tokens=512)
    assert [m["content"][-1] == CACHE for m in both] == [True, False, True]
    one = with_moving_point(messages, room=1, min_tokens=512)
    assert [m["content"][-1] == CACHE for m in one] == [False, False, True]
    # 1,500 tokens before the round, 1,500 + 12 x 32 after: at a minimum of 1,700 the words
    # never took a point, so there is nothing there to read
    later = with_moving_point(messages, room=2, min_tokens=1_700)
    assert [m["content"][-1] == CACHE for m in later] == [False, False, True]
    assert messages[0]["content"] == [{"text": LONG}]          # the history's, unchanged


def test_the_endpoint_takes_a_point_after_words_or_results() -> None:
    body = {"system": [{"text": "Host."}, CACHE],
            "toolConfig": {"tools": [{"toolSpec": TOOL}, CACHE]},
            "messages": [said("user", WORDS), said("assistant", THOUGHT, WORDS, CACHE),
                         said("user", RESULT, CACHE)]}             # 4 in all: the most
    assert placement_refusal(body) is None


async def test_a_point_put_first_in_the_last_message_fails_the_request(
        fake_bedrock: FakeBedrock, llm: BedrockLLM,
        mock_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a wrong placement costs: the whole request (and so every turn past the
    minimum)."""
    def first(messages: Sequence[dict[str, Any]], *, room: int,
              min_tokens: int) -> list[dict[str, Any]]:
        last = copy.deepcopy(messages[-1])
        return [*messages[:-1], {**last, "content": [CACHE, *last["content"]]}]

    monkeypatch.setattr(bedrock_converse, "with_moving_point", first)
    request = LLMRequest(call_sid="CA1", use_case="test", model_id=OPUS, system=("Host.",),
                         messages=({"role": "user", "content": [WORDS]},),
                         options=ModelOptions(prompt_caching=True))

    async def ask() -> None:
        async with llm.stream(request) as events:
            async for _ in events:
                pass

    with trio.fail_after(10), pytest.raises(LLMError) as failed:
        await ask()
    assert NOTHING_BEFORE.format(path="messages.0.content.0") in str(failed.value)
    assert len(fake_bedrock.violations) == 1
