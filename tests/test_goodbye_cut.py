"""The end of a call and the caller's words around it. A barge-in that reaches the streamer
after EndCall (a drain, the call's length limit) used to cancel the goodbye turn: `end` was
never sent, every later prompt was ignored, and the call never ended. Found by a review of the
actors (2026-12-05). After a tool's `end` (endCall, a handoff), a prompt already on its way
started a model turn nobody could hear, recorded as said, and a barge-in dropped the handoff
itself from the history (review s14)."""
from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from actors.call_timers import DRAINING
from tests.call_harness import open_test_call, plain_use_case
from tests.end_tools import HANDOFF_END, HANDOFF_USE_CASE
from tests.fakes import FakeLLM, tool_use, words
from voiceagent.llm.converse import converse_problems
from voiceagent.relay.outbound import End
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
    said = "".join(f.get("token", "") for f in frames if f["type"] == "text")
    assert said.endswith(DRAINING), said                     # the goodbye, whole
    assert frames[-1] == {"type": "end", "handoffData": '{"reasonCode": "server-draining"}'}
    assert len(llm.requests) == 1                # the words after it asked the model nothing


def _texts(message: dict[str, Any]) -> list[str]:
    return [block["text"] for block in message["content"] if "text" in block]


def _end_registry() -> ToolRegistry:
    async def end_call(ctx: Any, args: Any) -> dict[str, Any]:
        await ctx.send(End(handoff_data='{"reasonCode": "end-call"}'))
        return {"status": "ended"}
    return ToolRegistry([ToolDefinition("endCall", end_call, timeout_s=5, ends_turn=True)])


async def test_a_prompt_after_the_end_tool_sent_end_starts_no_unheard_reply(
        autojump_clock: Any) -> None:
    """The model said goodbye and called endCall: ``end`` is on the socket. Twilio closes
    about 90 ms later, but a prompt it had already sent (the caller's "thanks, bye") still
    arrives. It started a new model turn: Bedrock was called (and billed) for a reply the
    writer drops after ``end``, and the history recorded that reply as said, though the
    caller never heard a word of it (a reconnect or transcript then shows it)."""
    llm = FakeLLM([tool_use("tu_end", "endCall", before="Goodbye, have a nice day."),
                   words("You are welcome, goodbye!")])
    use_case = plain_use_case(tools=[{"name": "endCall", "description": "Hang up."}])
    async with open_test_call(llm, use_case=use_case, registry=_end_registry()) as call:
        call.say("that's all, thanks")
        await call.until_end()
        call.say("thanks, bye")                 # already on its way when `end` went out
        await trio.sleep(2)
        sent_after_end = call.socket.pending()
    assert sent_after_end == []                 # the writer sent nothing after `end` ...
    said = [t for m in call.history if m["role"] == "assistant" for t in _texts(m)]
    # ... so nothing after the goodbye may be recorded as said
    assert said[-1] == "Goodbye, have a nice day.", said
    assert len(llm.requests) == 1, "the model was asked for a reply nobody can hear"
    assert [entry["chat"] for entry in call.writer.stored()] == list(call.history)
    assert converse_problems(call.report.history.for_request()) == []  # type: ignore[union-attr]


async def test_a_handoff_whose_end_went_out_stays_in_history_after_a_barge_in(
        autojump_clock: Any) -> None:
    """The handoff tool sent ``end`` (the session is over: POST /action connects a person)
    and then wrote its summary to the store; the caller cut into "Let me transfer you" in
    that moment. The tool is not a side effect, so the cut abandoned it and recorded neither
    its toolUse nor its result: the history (the stored transcript, what a reconnect or the
    person taking the call sees) said the agent never transferred, though it did. Once its
    ``end`` is out, the tool runs on and its result is recorded."""
    summaries: list[float] = []

    async def handoff(ctx: Any, args: Any) -> dict[str, Any]:
        await ctx.send(HANDOFF_END)
        await trio.sleep(0.5)                   # e.g. the summary written to the store
        summaries.append(trio.current_time())
        return {"status": "transferring"}

    registry = ToolRegistry([ToolDefinition("handoff", handoff, timeout_s=10, ends_turn=True)])
    llm = FakeLLM([tool_use("tu_h", "handoff", before="Let me transfer you.")])
    async with open_test_call(llm, use_case=HANDOFF_USE_CASE, registry=registry) as call:
        call.say("a person please")
        await call.until_end()
        call.interrupt(heard="Let me transfer you.")
        await trio.sleep(2)
    assert len(summaries) == 1                  # not cut by the barge-in
    assert call.history[-2:] == (
        {"role": "assistant", "content": [
            {"text": "Let me transfer you."},
            {"toolUse": {"toolUseId": "tu_h", "name": "handoff", "input": {}}}]},
        {"role": "user", "content": [{"toolResult": {
            "toolUseId": "tu_h", "content": [{"json": {"status": "transferring"}}],
            "status": "success"}}]})
    assert [entry["chat"] for entry in call.writer.stored()] == list(call.history)
    assert converse_problems(call.report.history.for_request()) == []  # type: ignore[union-attr]


async def test_a_barge_in_before_the_end_tool_sent_end_still_stops_it(
        autojump_clock: Any) -> None:
    """Until its ``end`` is out, an ending tool is cut like any other: the caller who cuts
    in ("no, wait") keeps the call."""
    ends: list[float] = []

    async def handoff(ctx: Any, args: Any) -> dict[str, Any]:
        await trio.sleep(0.5)                   # looks something up first
        ends.append(trio.current_time())
        await ctx.send(HANDOFF_END)
        return {"status": "transferring"}

    registry = ToolRegistry([ToolDefinition("handoff", handoff, timeout_s=10, ends_turn=True)])
    llm = FakeLLM([tool_use("tu_h", "handoff", before="Let me transfer you."),
                   words("Sure, what else?")])
    async with open_test_call(llm, use_case=HANDOFF_USE_CASE, registry=registry) as call:
        call.say("a person please")
        while not (await call.frame()).get("token", "").endswith("you."):
            pass
        call.interrupt(heard="Let me transfer you.")
        await trio.sleep(2)
        assert ends == []
        call.socket.pending()                   # the cut reply's closer
        call.say("no wait, one more thing")
        assert (await call.reply())[0] == "Sure, what else?"
    assert not call.report.writer.ended
    assert converse_problems(call.report.history.for_request()) == []  # type: ignore[union-attr]
