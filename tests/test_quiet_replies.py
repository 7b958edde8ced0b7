"""Model rounds that end without a word where the caller waits for one, and the tool results
they leave next to the caller's next words. Found by a review helper (helper-24): after a
tool round, a reply that came back empty left the caller in silence until the idle
re-prompt, and the caller's next words then shared a user message with the tool results,
which Bedrock refuses for some models ("Conversation blocks and tool result blocks cannot be
provided in the same turn"), every turn after it."""

from __future__ import annotations

from typing import Any

import trio

from actors.turn import NO_WORDS
from tests.call_harness import open_test_call, plain_use_case
from tests.fakes import FakeLLM, tool_use, words
from tests.test_call_actors import TOOLS, order_registry
from voiceagent.llm.base import StreamEnd, TextDelta, ToolUseRequest
from voiceagent.llm.converse import NO_REPLY
from voiceagent.relay.outbound import End
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry, default_registry


def _texts(message: dict[str, Any]) -> list[str]:
    return [block["text"] for block in message["content"] if "text" in block]


async def test_an_empty_reply_after_a_tool_round_is_not_silence(autojump_clock: Any) -> None:
    runs: list[float] = []
    llm = FakeLLM([tool_use("tu_1", "pickupTime", before="Let me check."),
                   [0.2, StreamEnd("end_turn")],
                   words("Twenty minutes.")])
    async with open_test_call(llm, use_case=plain_use_case(tools=TOOLS),
                              registry=order_registry(runs, duration_s=0.5)) as call:
        call.say("when can I pick up?")
        heard, _ = await call.reply()
        call.say("so when?")
        again, _ = await call.reply()
    assert heard == "Let me check. " + NO_WORDS
    assert again == "Twenty minutes."
    assert len(runs) == 1
    assert [(m["role"], _texts(m)) for m in call.history[-5:]] == [
        ("assistant", ["Let me check."]), ("user", []), ("assistant", [NO_WORDS]),
        ("user", ["so when?"]), ("assistant", ["Twenty minutes."])]
    assert llm.violations == []


async def test_a_reply_a_content_filter_stopped_before_a_word_is_not_silence(
        autojump_clock: Any) -> None:
    llm = FakeLLM([[0.3, StreamEnd("content_filtered")], words("We open at nine.")])
    async with open_test_call(llm) as call:
        call.say("tell me something awful")
        heard, _ = await call.reply()
        call.say("when do you open?")
        again, _ = await call.reply()
    assert (heard, again) == (NO_WORDS, "We open at nine.")


async def test_a_filtered_reply_that_spoke_first_keeps_its_words(autojump_clock: Any) -> None:
    llm = FakeLLM([[0.3, TextDelta("Well,"), StreamEnd("content_filtered")]])
    async with open_test_call(llm) as call:
        call.say("tell me something awful")
        heard, _ = await call.reply()
    assert heard == "Well,"


async def test_caller_words_after_a_cut_follow_up_go_apart_from_the_tool_results(
        autojump_clock: Any) -> None:
    """The follow-up to a tool round is cut before its first word: the caller's words and
    the tool result share the user message in the history (roles alternate), and the
    request sends them as two turns with ``NO_REPLY`` between, which every model takes."""
    runs: list[float] = []
    llm = FakeLLM([tool_use("tu_1", "pickupTime"),
                   [5.0, TextDelta("Twenty"), TextDelta(" minutes.")],
                   words("About twenty minutes.")])
    async with open_test_call(llm, use_case=plain_use_case(tools=TOOLS),
                              registry=order_registry(runs, duration_s=0.5)) as call:
        call.say("when can I pick up?")
        await trio.sleep(2.0)                       # the tool ran; the follow-up thinks
        call.interrupt("")
        call.say("actually, how long?")
        heard, _ = await call.reply()
    assert heard == "About twenty minutes."
    assert llm.violations == []
    last = llm.requests[-1].messages
    assert [m["role"] for m in last[-3:]] == ["user", "assistant", "user"]
    assert [next(iter(b)) for b in last[-3]["content"]] == ["toolResult"]
    assert _texts(last[-2]) == [NO_REPLY]
    assert _texts(last[-1]) == ["actually, how long?"]
    merged = [m for m in call.history if m["role"] == "user"
              and any("toolResult" in b for b in m["content"])]
    assert _texts(merged[-1]) == ["actually, how long?"]      # the history keeps it as was


PLAY_TOOLS = [{"name": "playAudio", "description": "Play an audio file to the caller.",
               "input_schema": {"type": "object", "required": ["url"],
                                "properties": {"url": {"type": "string"}}}}]


async def test_no_words_after_a_tool_that_played_the_caller_something(
        autojump_clock: Any) -> None:
    """The model plays the hold recording and rightly says nothing more: the caller heard
    the recording, then "Sorry, I lost my train of thought" over it (helper-28)."""
    llm = FakeLLM([tool_use("tu_play", "playAudio", {"url": "https://example.com/hold.mp3"}),
                   [0.2, StreamEnd("end_turn")]])
    async with open_test_call(llm, use_case=plain_use_case(tools=PLAY_TOOLS),
                              registry=default_registry()) as call:
        call.say("play me the hold music please")
        assert (await call.frame())["type"] == "play"
        await trio.sleep(5)
        after = call.socket.pending()
    assert after == []                  # nothing spoken: not even the talk cycle's closer
    assert len(llm.requests) == 2


async def test_an_ends_turn_tool_whose_result_is_capped_still_ends_the_turn(
        autojump_clock: Any) -> None:
    """A handoff (ends_turn) sent its ``end`` and returned more than a result may hold: the
    result is replaced by an error, but the tool did its work, and the model is not asked
    again after the call's end (nor NO_WORDS recorded as said) (helper-28)."""
    registry = ToolRegistry()

    async def handoff(ctx: Any, args: Any) -> dict[str, Any]:
        await ctx.send(End(handoff_data='{"reasonCode": "live-agent-handoff"}'))
        return {"status": "transferring", "context": "y" * (40 * 1024)}

    registry.register(ToolDefinition("handoff", handoff, timeout_s=10, ends_turn=True))
    llm = FakeLLM([tool_use("tu_h", "handoff", before="Transferring you now."),
                   [0.2, StreamEnd("end_turn")]])
    use_case = plain_use_case(tools=[{"name": "handoff", "description": "To a person"}])
    async with open_test_call(llm, use_case=use_case, registry=registry) as call:
        call.say("a person please")
        await call.reply()
        await trio.sleep(5)
    assert len(llm.requests) == 1
    assert _texts(call.history[-1]) == []                   # the results, nothing after
    (result,) = call.history[-1]["content"]
    assert result["toolResult"]["status"] == "error"


async def test_a_call_past_the_per_reply_limit_fires_no_relay_rule(
        autojump_clock: Any) -> None:
    """A ninth call in one reply is answered, not run: a ``once`` rule for its tool (speech
    hints) must not be used up by it, nor sent (helper-31)."""
    runs: list[float] = []
    nine = [ToolUseRequest(f"tu_{n}", "placeOrder", {"item": "pizza"}) for n in range(8)]
    nine.append(ToolUseRequest("tu_8", "pickupTime", {}))
    llm = FakeLLM([[0.1, *nine, StreamEnd("tool_use")], words("Orders placed."),
                   tool_use("tu_9", "pickupTime"), words("Twenty minutes.")])
    use_case = plain_use_case(tools=TOOLS, relay_updates=[
        {"when": {"tool": "pickupTime"}, "hints": ["twenty"]}])
    async with open_test_call(llm, use_case=use_case,
                              registry=order_registry(runs, duration_s=0.5)) as call:
        call.say("eight pizzas, and when can I pick up?")
        _, first = await call.reply()
        call.say("so when?")
        _, second = await call.reply()
    assert [f["type"] for f in first if f["type"] != "text"] == []
    assert [f["type"] for f in second if f["type"] != "text"] == ["hints"]
    assert len(runs) == 9                       # eight orders, then the time
