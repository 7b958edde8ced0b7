"""The offline model: exact virtual timings, rule matching, tool rounds and Bedrock's strictness."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from voiceagent.errors import ModelRejected
from voiceagent.llm.base import (
    LLM,
    LLMEvent,
    LLMRequest,
    Message,
    StreamEnd,
    TextDelta,
    ToolUseRequest,
)
from voiceagent.llm.scripted import APOLOGY, ScriptedLLM, fill
from voiceagent.usecases import ScriptedConfig, ScriptedRule, ScriptedToolStep, load_use_case_file

RESTAURANT = Path(__file__).parent.parent / "config" / "usecases" / "restaurantOrderingUseCase.yaml"
FIRST_S = 0.5          # binary fractions: virtual times add up exactly
GAP_S = 0.25
WAIT_SPEC = {"name": "CheckWait", "description": "Minutes to wait.",
             "inputSchema": {"json": {"type": "object", "properties": {}}}}

DEMO = ScriptedConfig(
    fallback="Say that again?",
    rules=(
        ScriptedRule(match=r"\bhours?\b", reply="We open at eleven."),
        ScriptedRule(match=r"\bhello\b", reply="Hi there."),
        ScriptedRule(match=r"\bwait\b", tool=ScriptedToolStep(name="CheckWait"),
                     then="About {minutes} minutes, ticket {ticket}."),
        ScriptedRule(match=r"\bbye\b", reply="Goodbye now.",
                     tool=ScriptedToolStep(name="CheckWait", input={"final": True})),
    ),
)


def _llm(**options: Any) -> ScriptedLLM:
    return ScriptedLLM({"demo": DEMO}, first_token_delay_s=FIRST_S, token_delay_s=GAP_S,
                       **options)


def _user(*texts: str) -> Message:
    return {"role": "user", "content": [{"text": t} for t in texts]}


def _request(messages: Sequence[Message], *, use_case: str = "demo",
             tools: Sequence[dict[str, Any]] = (WAIT_SPEC,)) -> LLMRequest:
    return LLMRequest(call_sid="CA00000000000000000000000000000001", use_case=use_case,
                      model_id="scripted", system=("Be brief.",), messages=tuple(messages),
                      tools=tuple(tools))


async def _timed(llm: LLM, request: LLMRequest) -> list[tuple[float, LLMEvent]]:
    start = trio.current_time()
    out: list[tuple[float, LLMEvent]] = []
    with trio.fail_after(10):
        async with llm.stream(request) as events:
            async for event in events:
                out.append((trio.current_time() - start, event))
    return out


def _text(events: Sequence[tuple[float, LLMEvent]]) -> str:
    return "".join(e.text for _, e in events if isinstance(e, TextDelta))


def _tool_round(use: ToolUseRequest, result: dict[str, Any]) -> list[Message]:
    return [{"role": "assistant", "content": [{"toolUse": {
                "toolUseId": use.tool_use_id, "name": use.name, "input": dict(use.input)}}]},
            {"role": "user", "content": [{"toolResult": {"toolUseId": use.tool_use_id, **result}}]}]


async def test_reply_tokens_arrive_at_exact_virtual_times(
        autojump_clock: trio.testing.MockClock) -> None:
    events = await _timed(_llm(), _request([_user("What are your hours?")]))
    assert events[:-1] == [(0.5, TextDelta("We")), (0.75, TextDelta(" open")),
                           (1.0, TextDelta(" at")), (1.25, TextDelta(" eleven."))]
    at, end = events[-1]
    assert at == 1.25
    assert isinstance(end, StreamEnd)
    assert end.stop_reason == "end_turn"
    assert end.first_token_s == 0.5
    assert end.usage is not None
    assert end.usage.output_tokens == 4
    assert end.usage.input_tokens > 0


async def test_use_case_delays_override_the_defaults(
        autojump_clock: trio.testing.MockClock) -> None:
    quick = DEMO.model_copy(update={"first_token_delay_ms": 125, "token_delay_ms": 125})
    llm = ScriptedLLM({"demo": quick}, first_token_delay_s=FIRST_S, token_delay_s=GAP_S)
    events = await _timed(llm, _request([_user("hello")]))
    assert [at for at, _ in events] == [0.125, 0.25, 0.25]
    assert _text(events) == "Hi there."


async def test_first_matching_rule_wins_over_all_text_blocks(
        autojump_clock: trio.testing.MockClock) -> None:
    events = await _timed(_llm(), _request([_user("Hello!", "WHAT ARE YOUR HOURS")]))
    assert _text(events) == "We open at eleven."


async def test_no_match_and_unknown_use_case_speak_the_fallback(
        autojump_clock: trio.testing.MockClock) -> None:
    events = await _timed(_llm(), _request([_user("Tell me a joke")]))
    assert _text(events) == "Say that again?"
    events = await _timed(_llm(), _request([_user("hello")], use_case="other"))
    assert _text(events) == ScriptedConfig().fallback


async def test_tool_round_then_speaks_the_result(autojump_clock: trio.testing.MockClock) -> None:
    llm = _llm()
    history = [_user("How long is the wait?")]
    events = await _timed(llm, _request(history))
    assert events[0] == (0.5, ToolUseRequest("tooluse_1", "CheckWait", {}))
    (at, end), = events[1:]
    assert at == 0.5
    assert isinstance(end, StreamEnd)
    assert end.stop_reason == "tool_use"
    use = events[0][1]
    assert isinstance(use, ToolUseRequest)
    history += _tool_round(use, {"content": [{"json": {"minutes": 20, "ticket": "A7"}}],
                                 "status": "success"})
    events = await _timed(llm, _request(history))
    assert _text(events) == "About 20 minutes, ticket A7."
    assert events[0][0] == 0.5
    assert isinstance(events[-1][1], StreamEnd)
    assert events[-1][1].stop_reason == "end_turn"

    history += [{"role": "assistant", "content": [{"text": _text(events)}]},
                _user("and the wait now?")]
    events = await _timed(llm, _request(history))
    assert events[0][1] == ToolUseRequest("tooluse_2", "CheckWait", {})


async def test_reply_before_a_tool_call(autojump_clock: trio.testing.MockClock) -> None:
    events = await _timed(_llm(), _request([_user("ok bye")]))
    assert [(at, e) for at, e in events[:-1]] == [
        (0.5, TextDelta("Goodbye")), (0.75, TextDelta(" now.")),
        (1.0, ToolUseRequest("tooluse_1", "CheckWait", {"final": True}))]
    end = events[-1][1]
    assert isinstance(end, StreamEnd)
    assert end.stop_reason == "tool_use"


async def test_missing_result_fields_are_left_out(autojump_clock: trio.testing.MockClock) -> None:
    use = ToolUseRequest("tooluse_1", "CheckWait", {})
    history = [_user("wait?"), *_tool_round(use, {"content": [{"json": {"minutes": 15}}],
                                                  "status": "success"})]
    events = await _timed(_llm(), _request(history))
    assert _text(events) == "About 15 minutes, ticket."


async def test_a_field_the_result_lacks_is_logged_by_name(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    """A `then` naming a field the tool does not return (``{ticket}`` misspelt, or never
    returned) was a silent gap in the sentence: the warning names it, and the fields there
    are, never their values."""
    use = ToolUseRequest("tooluse_1", "CheckWait", {})
    history = [_user("wait?"), *_tool_round(use, {"content": [{"json": {
        "minutes": 15, "tickets": "A7-private"}}], "status": "success"})]
    with caplog.at_level("WARNING", logger="voiceagent.llm.scripted"):
        events = await _timed(_llm(), _request(history))
    assert _text(events) == "About 15 minutes, ticket."
    (record,) = [r for r in caplog.records
                 if r.getMessage() == "scripted reply left out fields its tool's result lacks"]
    assert record.__dict__["tool"] == "CheckWait"
    assert record.__dict__["missing"] == ["ticket"]
    assert record.__dict__["result_fields"] == ["minutes", "tickets"]
    assert "A7-private" not in str(record.__dict__)


async def test_a_list_in_the_result_is_said_as_its_items(
        autojump_clock: trio.testing.MockClock) -> None:
    """A tool returning free slots as a list was spoken as Python writes a list, brackets
    and quotes: "ticket ['A7', 'B2']"."""
    use = ToolUseRequest("tooluse_1", "CheckWait", {})
    history = [_user("wait?"), *_tool_round(use, {"content": [{"json": {
        "minutes": [10, 15], "ticket": ["A7", "B2"]}}], "status": "success"})]
    events = await _timed(_llm(), _request(history))
    assert _text(events) == "About 10, 15 minutes, ticket A7, B2."
    assert fill("{prices:.2f} or {none}.", {"prices": [1, 2.5], "none": []}) == "1.00, 2.50 or."


async def test_error_result_gets_an_apology(autojump_clock: trio.testing.MockClock) -> None:
    use = ToolUseRequest("tooluse_1", "CheckWait", {})
    history = [_user("wait?"), *_tool_round(use, {"content": [{"text": "timed out"}],
                                                  "status": "error"})]
    events = await _timed(_llm(), _request(history))
    assert _text(events) == APOLOGY


async def test_tool_rules_need_the_tool_offered(autojump_clock: trio.testing.MockClock) -> None:
    events = await _timed(_llm(), _request([_user("how long is the wait")], tools=()))
    assert _text(events) == "Say that again?"
    assert not any(isinstance(e, ToolUseRequest) for _, e in events)


def test_fill_never_raises() -> None:
    assert fill("Total ${total:.2f}.", {"total": 29.9}) == "Total $29.90."
    assert fill("Total ${total:.2f}.", {"total": "a lot"}) == "Total $a lot."
    assert fill("Total ${total:.2f} today.", {}) == "Total today."
    assert fill("Item {items[0][name]}, {x.y}.", {"items": [{"name": "soup"}]}) == "Item soup."
    assert fill("Broken {brace and {}.", {}) == "Broken {brace and."


@pytest.mark.parametrize("messages", [
    [_user("hi"), _user("hello")],                                          # no alternation
    [_user("hi"), {"role": "assistant", "content": [{"toolUse": {
        "toolUseId": "tooluse_1", "name": "CheckWait", "input": {}}}]}, _user("well?")],
    [_user("  ")],                                                          # blank text
])
async def test_strict_mode_rejects_what_bedrock_rejects(
        autojump_clock: trio.testing.MockClock, messages: list[Message]) -> None:
    llm = _llm()
    with pytest.raises(ModelRejected) as caught:
        await _timed(llm, _request(messages))
    assert caught.value.code == "ValidationException"
    assert llm.statistics().streams_opened == 0
    events = await _timed(_llm(strict=False), _request(messages))
    assert isinstance(events[-1][1], StreamEnd)


async def test_tool_blocks_without_tools_are_rejected(
        autojump_clock: trio.testing.MockClock) -> None:
    use = ToolUseRequest("tooluse_1", "CheckWait", {})
    history = [_user("wait?"), *_tool_round(use, {"content": [{"json": {}}]})]
    with pytest.raises(ModelRejected, match="toolConfig"):
        await _timed(_llm(), _request(history, tools=()))


async def test_leaving_the_context_stops_the_generator(
        autojump_clock: trio.testing.MockClock) -> None:
    llm = _llm()
    start = trio.current_time()
    with trio.fail_after(10):
        async with llm.stream(_request([_user("hours")])) as events:
            assert await events.receive() == TextDelta("We")
            assert llm.statistics().streams_open == 1
        assert llm.statistics().streams_open == 0
        assert trio.current_time() - start == FIRST_S        # did not wait for the rest
        await trio.sleep(5)
    assert llm.statistics().streams_opened == 1


async def test_shipped_restaurant_rules(autojump_clock: trio.testing.MockClock) -> None:
    uc = load_use_case_file(RESTAURANT)
    llm = ScriptedLLM.from_use_cases([uc], first_token_delay_s=0, token_delay_s=0)
    cases = {                               # caller's words -> part of the spoken reply
        "Hi, how are you?": "Hi there!",
        "What time do you close on Friday?": "We're open Tuesday",
        "Where are you located?": "101 Spear Street",
        "What's on the menu?": "We have pizzas",
        "Mumble mumble": "Sorry, I didn't quite get that.",
    }
    for said, opening in cases.items():
        events = await _timed(llm, _request([_user(said)], use_case=uc.name,
                                            tools=uc.tool_specs()))
        assert opening in _text(events), said
    tools = {
        "Can I talk to a real person?": "liveAgentHandoff",
        "That's all, bye": "endCall",
        "I'd like to order a large pepperoni pizza": "PlaceOrderFunction",
        "How long until a pickup order is ready?": "CheckRestaurantPickUpTime",
        "How long does delivery take?": "CheckRestaurantDeliveryTime",
    }
    for said, name in tools.items():
        events = await _timed(llm, _request([_user(said)], use_case=uc.name,
                                            tools=uc.tool_specs()))
        uses = [e for _, e in events if isinstance(e, ToolUseRequest)]
        assert [u.name for u in uses] == [name], said


async def test_shipped_order_round(autojump_clock: trio.testing.MockClock) -> None:
    uc = load_use_case_file(RESTAURANT)
    llm = ScriptedLLM.from_use_cases([uc], first_token_delay_s=0, token_delay_s=0)
    history = [_user("Can I get a pepperoni pizza delivered?")]
    events = await _timed(llm, _request(history, use_case=uc.name, tools=uc.tool_specs()))
    use = events[0][1]
    assert isinstance(use, ToolUseRequest)
    assert use.input["order_type"] == "delivery"
    result = {"status": "placed", "order_number": "4821", "order_total": 29.69,
              "ready_in_minutes": 40}
    history += _tool_round(use, {"content": [{"json": result}], "status": "success"})
    events = await _timed(llm, _request(history, use_case=uc.name, tools=uc.tool_specs()))
    assert _text(events) == ("All set, a large Classic Pepperoni with extra mushroom and an "
                             "order of mozzarella sticks, order number 4821. Your total is "
                             "$29.69, and it should be at your door in about 40 minutes.")


async def test_is_an_llm() -> None:
    llm: LLM = ScriptedLLM({})
    assert llm.name == "scripted"
    await llm.aclose()


async def test_a_receive_cut_by_a_deadline_loses_nothing(
        autojump_clock: trio.testing.MockClock) -> None:
    """A turn waits on the stream under its held text's deadline (TOKEN_HOLD_MS)."""
    received: list[LLMEvent] = []
    cuts = 0
    with trio.fail_after(10):
        async with _llm().stream(_request([_user("What are your hours?")])) as events:
            while True:
                with trio.move_on_after(0.1) as window:          # shorter than every gap
                    try:
                        received.append(await events.receive())
                    except trio.EndOfChannel:
                        break
                cuts += window.cancelled_caught
    assert cuts >= 10
    assert _text([(0.0, e) for e in received]) == "We open at eleven."
    assert isinstance(received[-1], StreamEnd)
    assert received[-1].first_token_s == 0.5
    assert sum(isinstance(e, StreamEnd) for e in received) == 1
