"""The invariants of one call (docs/architecture.md), proven on its nursery driven through
channels.

Every test runs on trio's virtual clock (``autojump_clock``): the model's pauses take no real
time, and the timings asserted are exact.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing

from actors.call import CallPlan
from actors.history import CALL_CONNECTED
from actors.tool_executor import CANCELLED
from actors.turn import APOLOGY_CUT, APOLOGY_SILENT
from tests.call_harness import CALL_SID, GREETING, open_test_call, plain_use_case
from tests.fakes import FakeLLM, tool_use, words
from voiceagent.errors import ModelStreamFailed, ModelThrottled
from voiceagent.llm.base import StreamEnd, TextDelta, ToolUseRequest
from voiceagent.llm.converse import converse_problems
from voiceagent.relay.outbound import Play
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry

REPLY = "We open at nine and close at ten tonight."


def texts(frames: list[dict[str, Any]]) -> list[str]:
    return [f["token"] for f in frames if f["type"] == "text" and f["token"]]


def closers(frames: list[dict[str, Any]]) -> int:
    return sum(1 for f in frames if f["type"] == "text" and f["last"])


async def test_a_turn_streams_tokens_then_closes_once(autojump_clock: Any) -> None:
    llm = FakeLLM([words(REPLY, gap_s=0.1, first_s=0.2)])
    async with open_test_call(llm) as call:
        start = trio.current_time()
        call.say("when are you open?")
        first = await call.frame()
        assert first == {"type": "text", "token": "We", "last": False}
        assert trio.current_time() - start == pytest.approx(0.2)
        text, frames = await call.reply()
        assert "We" + text == REPLY
        assert frames[-1] == {"type": "text", "token": "", "last": True}
        assert closers(frames) == 1
    assert call.history == (
        {"role": "assistant", "content": [{"text": GREETING}]},
        {"role": "user", "content": [{"text": "when are you open?"}]},
        {"role": "assistant", "content": [{"text": REPLY}]},
    )
    assert all(isinstance(raw, str) and json.loads(raw) for raw in call.socket.raw_sent)


async def test_greeting_is_the_first_assistant_message_and_request_starts_with_user(
        autojump_clock: Any) -> None:
    llm = FakeLLM([words("Sure.")])
    async with open_test_call(llm) as call:
        call.say("hi")
        await call.reply()
    request = llm.requests[0]
    assert request.messages[0] == {"role": "user", "content": [{"text": CALL_CONNECTED}]}
    assert request.messages[1] == {"role": "assistant", "content": [{"text": GREETING}]}
    assert not llm.violations


async def test_barge_in_stops_tokens_closes_stream_and_keeps_what_was_heard(
        autojump_clock: Any) -> None:
    llm = FakeLLM([words(REPLY, gap_s=0.5, first_s=0.1)])
    async with open_test_call(llm) as call:
        call.say("when are you open?")
        assert (await call.frame())["token"] == "We"
        assert (await call.frame())["token"] == " open"
        call.interrupt(heard="We open ")
        interrupted_at = trio.current_time()
        await trio.testing.wait_all_tasks_blocked()
        after = call.socket.pending()
        assert texts(after) == []                       # no token of the old turn
        assert after == [{"type": "text", "token": "", "last": True}]
        assert llm.open_streams == 0
        assert llm.closed_at[0] == interrupted_at       # closed at once, in virtual time
        await trio.sleep(5)
        assert call.socket.pending() == []
    assert call.history[-1] == {"role": "assistant", "content": [{"text": "We open"}]}
    assert call.writer.persisted[-1][3]["generated"] == "We open"


async def test_a_barge_in_with_an_unusable_duration_still_cuts_the_reply(
        autojump_clock: Any) -> None:
    """A field of the interrupt that cannot be read (a carrier's empty string) is taken as
    absent: the barge-in was dropped as a bad frame, and the reply went on over the caller
    and into the history as heard (helper-23)."""
    llm = FakeLLM([words(REPLY, gap_s=0.5, first_s=0.1)])
    async with open_test_call(llm) as call:
        call.say("when are you open?")
        assert (await call.frame())["token"] == "We"
        call.socket.push({"type": "interrupt", "utteranceUntilInterrupt": "We",
                          "durationUntilInterruptMs": ""})
        await trio.testing.wait_all_tasks_blocked()
        assert texts(call.socket.pending()) == []
        assert llm.open_streams == 0
    assert call.history[-1] == {"role": "assistant", "content": [{"text": "We"}]}
    assert call.report.frames.rejected["interrupt_field"] == 1


async def test_barge_in_with_nothing_heard_drops_the_turn_and_merges_the_caller(
        autojump_clock: Any) -> None:
    llm = FakeLLM([words(REPLY, gap_s=0.5), words("Sure, a large one.")])
    async with open_test_call(llm) as call:
        call.say("when are you open?")
        await call.frame()
        call.interrupt(heard="")
        call.say("actually, I want a pizza")
        assert await call.reply() == ("", [{"type": "text", "token": "", "last": True}])
        text, _ = await call.reply()
        assert text == "Sure, a large one."
    assert call.history[1:] == (
        {"role": "user", "content": [{"text": "when are you open?"},
                                     {"text": "actually, I want a pizza"}]},
        {"role": "assistant", "content": [{"text": "Sure, a large one."}]},
    )
    assert not llm.violations


async def test_interrupt_after_the_reply_finished_still_cuts_history(
        autojump_clock: Any) -> None:
    llm = FakeLLM([words(REPLY)])
    async with open_test_call(llm) as call:
        call.say("hours?")
        await call.reply()                               # streaming done, TTS still playing
        call.interrupt(heard="We open at nine and")
        await trio.testing.wait_all_tasks_blocked()
        assert call.socket.pending() == []              # nothing to close: cycle was closed
    assert call.history[-1]["content"] == [{"text": "We open at nine and"}]


async def test_new_prompt_supersedes_the_reply_and_nothing_is_lost(autojump_clock: Any) -> None:
    llm = FakeLLM([words(REPLY, gap_s=0.5), words("A large pepperoni, coming up.")])
    async with open_test_call(llm) as call:
        call.say("when are you open?")
        await call.frame()                               # "We" was sent
        call.say("and I'd like a large pepperoni")
        frames = []
        while True:
            frame = await call.frame()
            frames.append(frame)
            if frame["type"] == "text" and frame["token"] == " up.":
                break
        frames.append(await call.frame())
        assert frames[0] == {"type": "text", "token": "", "last": True}   # old cycle closed
        assert "".join(texts(frames)) == "A large pepperoni, coming up."
        assert closers(frames) == 2
    assert call.history[1:] == (
        {"role": "user", "content": [{"text": "when are you open?"}]},
        {"role": "assistant", "content": [{"text": "We"}]},
        {"role": "user", "content": [{"text": "and I'd like a large pepperoni"}]},
        {"role": "assistant", "content": [{"text": "A large pepperoni, coming up."}]},
    )
    assert call.report.turns.superseded == 1


def order_registry(runs: list[float], *, duration_s: float = 3.0,
                   started: trio.Event | None = None) -> ToolRegistry:
    registry = ToolRegistry()
    started = started if started is not None else trio.Event()

    async def place(ctx: Any, args: Any) -> dict[str, Any]:
        started.set()
        await trio.sleep(duration_s)
        runs.append(trio.current_time())
        return {"status": "placed", "order_number": 42}

    async def lookup(ctx: Any, args: Any) -> dict[str, Any]:
        started.set()
        await trio.sleep(duration_s)
        runs.append(-1.0)
        return {"minutes": 20}

    registry.register(ToolDefinition("placeOrder", place, side_effect=True, timeout_s=10))
    registry.register(ToolDefinition("pickupTime", lookup, timeout_s=10))
    return registry


TOOLS = [{"name": "placeOrder", "description": "Place the order",
          "input_schema": {"type": "object", "properties": {"item": {"type": "string"}},
                           "required": ["item"]}},
         {"name": "pickupTime", "description": "Minutes to pickup"}]


async def test_side_effect_tool_completes_under_barge_in_and_is_recorded(
        autojump_clock: Any) -> None:
    runs: list[float] = []
    started = trio.Event()
    llm = FakeLLM([tool_use("tu_1", "placeOrder", {"item": "pizza"}, before="Placing it now."),
                   words("Your order number is 42.")])
    async with open_test_call(llm, use_case=plain_use_case(tools=TOOLS),
                              registry=order_registry(runs, started=started)) as call:
        call.say("order a pizza")
        await started.wait()
        call.interrupt(heard="Placing it now.")
        interrupted_at = trio.current_time()
        await trio.sleep(10)
        assert runs == [interrupted_at + 3.0]             # ran to completion, once
        assert texts(call.socket.pending())[-1] == " now."
    assert call.history[2:] == (
        {"role": "assistant", "content": [
            {"text": "Placing it now."},
            {"toolUse": {"toolUseId": "tu_1", "name": "placeOrder", "input": {"item": "pizza"}}}]},
        {"role": "user", "content": [{"toolResult": {
            "toolUseId": "tu_1", "content": [{"json": {"status": "placed", "order_number": 42}}],
            "status": "success"}}]},
    )


async def test_tool_without_side_effects_is_abandoned_on_barge_in(autojump_clock: Any) -> None:
    runs: list[float] = []
    started = trio.Event()
    llm = FakeLLM([tool_use("tu_1", "pickupTime", before="Let me check."), words("Ok.")])
    async with open_test_call(llm, use_case=plain_use_case(tools=TOOLS),
                              registry=order_registry(runs, started=started)) as call:
        call.say("when can I pick up?")
        await started.wait()
        call.interrupt(heard="Let me check.")
        await trio.sleep(10)
        assert runs == []                                # cancelled, never finished
    assert call.history[-1] == {"role": "assistant", "content": [{"text": "Let me check."}]}
    assert converse_problems(call.report.history.for_request()) == []  # type: ignore[union-attr]


async def test_a_cut_tool_that_played_the_caller_something_stays_in_history(
        autojump_clock: Any) -> None:
    """A tool without side effects that had already played a recording when the caller cut
    in: the caller heard it, so its toolUse stays, answered as cancelled (review s14)."""
    started = trio.Event()

    async def hold_music(ctx: Any, args: Any) -> dict[str, Any]:
        await ctx.send(Play("https://example.com/hold.mp3"))
        started.set()
        await trio.sleep(5)
        return {"played": True}

    registry = ToolRegistry([ToolDefinition("holdMusic", hold_music, timeout_s=10)])
    llm = FakeLLM([tool_use("tu_p", "holdMusic", before="One moment.")])
    use_case = plain_use_case(tools=[{"name": "holdMusic", "description": "Play hold music"}])
    async with open_test_call(llm, use_case=use_case, registry=registry) as call:
        call.say("can you hold?")
        await started.wait()
        call.interrupt(heard="One moment.")
        await trio.sleep(10)
    assert call.history[-2:] == (
        {"role": "assistant", "content": [
            {"text": "One moment."},
            {"toolUse": {"toolUseId": "tu_p", "name": "holdMusic", "input": {}}}]},
        {"role": "user", "content": [{"toolResult": {
            "toolUseId": "tu_p", "content": [{"text": CANCELLED}], "status": "error"}}]})
    assert converse_problems(call.report.history.for_request()) == []  # type: ignore[union-attr]


async def test_tool_round_text_reaches_caller_before_tool_runs(autojump_clock: Any) -> None:
    runs: list[float] = []
    llm = FakeLLM([tool_use("tu_1", "pickupTime", before="One moment."),
                   words("About twenty minutes.")])
    async with open_test_call(llm, use_case=plain_use_case(tools=TOOLS),
                              registry=order_registry(runs, duration_s=2.0)) as call:
        call.say("pickup time?")
        text, frames = await call.reply()
        assert text == "One moment. About twenty minutes."
        assert closers(frames) == 1                      # one cycle across the tool round
    assert [m["role"] for m in call.history] == ["assistant", "user", "assistant", "user",
                                                 "assistant"]
    assert not llm.violations
    assert llm.requests[1].messages[-1]["content"][0]["toolResult"]["content"] == [
        {"json": {"minutes": 20}}]


async def test_invalid_tool_input_becomes_an_error_result(autojump_clock: Any) -> None:
    llm = FakeLLM([tool_use("tu_1", "placeOrder", {"item": 5}), words("Sorry, which item?")])
    async with open_test_call(llm, use_case=plain_use_case(tools=TOOLS),
                              registry=order_registry([])) as call:
        call.say("order")
        text, _ = await call.reply()
        assert text == "Sorry, which item?"
    result = call.history[3]["content"][0]["toolResult"]
    assert result["status"] == "error"
    assert "item" in result["content"][0]["text"]


async def test_tool_input_the_model_layer_refused_is_an_error_result_and_never_runs(
        autojump_clock: Any) -> None:
    """A call whose input could not be used as sent (a number JSON cannot hold): the tool
    does not run, the model reads why and answers the caller."""
    runs: list[float] = []
    problem = "input: a number that is not finite"
    refused = ToolUseRequest("tu_1", "pickupTime", {"minutes": None}, input_problem=problem)
    llm = FakeLLM([[0.1, refused, StreamEnd("tool_use")], words("Sorry, when was that?")])
    async with open_test_call(llm, use_case=plain_use_case(tools=TOOLS),
                              registry=order_registry(runs, duration_s=0.5)) as call:
        call.say("pick up in a zillion minutes")
        text, _ = await call.reply()
        assert text == "Sorry, when was that?"
    assert runs == []
    assert call.history[3] == {"role": "user", "content": [{"toolResult": {
        "toolUseId": "tu_1", "content": [{"text": f"invalid input: {problem}"}],
        "status": "error"}}]}
    assert not llm.violations


async def test_too_many_tool_rounds_end_with_a_spoken_fallback(autojump_clock: Any) -> None:
    def script(request: Any) -> list[Any]:
        return tool_use(f"tu_{len(request.messages)}", "pickupTime")

    llm = FakeLLM(script)
    async with open_test_call(llm, use_case=plain_use_case(tools=TOOLS),
                              registry=order_registry([], duration_s=0.1)) as call:
        call.say("loop forever")
        text, frames = await call.reply()
        assert "longer than it should" in text
        assert closers(frames) == 1
    assert len(llm.requests) == 5          # 4 tool rounds (the default limit), then no more
    assert converse_problems(call.report.history.for_request()) == []  # type: ignore[union-attr]


@pytest.mark.parametrize(("script", "expected"), [
    ([ModelThrottled("throttlingException", "slow down")], APOLOGY_SILENT),
    ([0.1, TextDelta("We open"), ModelStreamFailed("modelStreamErrorException", "x")],
     "We open" + APOLOGY_CUT),
])
async def test_model_error_is_spoken_and_history_stays_valid(
        autojump_clock: Any, script: list[Any], expected: str) -> None:
    llm = FakeLLM([script, words("Back again.")])
    async with open_test_call(llm) as call:
        call.say("hours?")
        text, frames = await call.reply()
        assert text == expected
        assert closers(frames) == 1
        call.say("hours please")
        text, _ = await call.reply()
        assert text == "Back again."
    assert not llm.violations
    assert call.report.turns.model_errors == 1


async def test_hang_up_mid_stream_tears_down_in_bounded_time_and_flushes(
        autojump_clock: Any) -> None:
    llm = FakeLLM([words(REPLY, gap_s=1.0)])
    async with open_test_call(llm) as call:
        call.say("hours?")
        await call.frame()
        start = trio.current_time()
        await call.hang_up()
        assert trio.current_time() - start < 1.0
    assert llm.open_streams == 0
    assert call.writer.flushed == [call.report.call_sid]
    persisted = [m for _, _, m, _ in call.writer.persisted]
    assert persisted == list(call.history)
    assert [i for _, i, _, _ in call.writer.persisted] == list(range(len(call.history)))


async def test_one_writer_sends_every_frame(autojump_clock: Any) -> None:
    registry = ToolRegistry()

    async def hold(ctx: Any, args: Any) -> dict[str, Any]:
        from actors.messages import Play
        await ctx.send(Play("https://example.com/hold.mp3"))
        return {"ok": True}

    registry.register(ToolDefinition("hold", hold))
    llm = FakeLLM([tool_use("tu_1", "hold", before="Hold on."), words("Done.")])
    use_case = plain_use_case(tools=[{"name": "hold", "description": "hold music"}])
    async with open_test_call(llm, use_case=use_case, registry=registry) as call:
        call.say("hold please")
        _, frames = await call.reply()
        assert {"type": "play", "source": "https://example.com/hold.mp3"} in frames
    assert len(call.socket.senders) == 1
    assert "relay_writer" in next(iter(call.socket.senders))


async def test_a_broken_call_does_not_touch_another(autojump_clock: Any) -> None:
    healthy = FakeLLM([words(REPLY)])
    broken = FakeLLM([[0.1, RuntimeError("a bug in a backend")]])
    async with open_test_call(healthy) as good, open_test_call(broken) as bad:
        bad.say("crash please")
        good.say("hours?")
        text, _ = await good.reply()
        assert text == REPLY
        with trio.fail_after(5):
            await bad.done.wait()
        assert bad.report.ended_by == "error"
        assert bad.socket.closed_with == (1011, "internal error")
        good.say("thanks")
        await good.reply()
    assert good.report.ended_by == "hangup"


async def test_dtmf_handler_reply_and_multi_digit_entry(autojump_clock: Any) -> None:
    use_case = plain_use_case(dtmf={"handlers": {"1": {"reply": "We open at nine."}},
                                    "idle_timeout_s": 2.0})
    llm = FakeLLM([words("Order 4 2 7 is on its way.")])
    async with open_test_call(llm, use_case=use_case) as call:
        call.dtmf("1")
        text, _ = await call.reply()
        assert text == "We open at nine."
        assert llm.requests == []                        # a reply handler needs no model
        for digit in "427":
            call.dtmf(digit)
        pressed_at = trio.current_time()
        await call.frame()
        assert trio.current_time() - pressed_at == pytest.approx(2.0 + 0.2)
        await call.reply()
    assert call.history[1] == {"role": "user", "content": [
        {"text": "(The caller pressed 1 on the keypad.)"}]}
    assert call.history[3] == {"role": "user", "content": [
        {"text": "(The caller pressed 427 on the keypad.)"}]}


async def test_a_keypad_reply_and_the_model_words_after_it_are_kept_apart(
        autojump_clock: Any) -> None:
    """A key handler's fixed reply, then the model (``to_model``): the model's first token
    has no leading space (models rarely give one), and only a new segment after a tool
    round used to get one, so Twilio was sent, spoke and the history recorded
    "One moment.Sure, ..." (review s14)."""
    use_case = plain_use_case(dtmf={"handlers": {"1": {"reply": "One moment.",
                                                       "to_model": True}}})
    llm = FakeLLM([words("Sure, we open at nine.")])
    async with open_test_call(llm, use_case=use_case) as call:
        call.dtmf("1")
        text, _ = await call.reply()
    assert text == "One moment. Sure, we open at nine."
    assert call.history[-1] == {"role": "assistant", "content": [
        {"text": "One moment. Sure, we open at nine."}]}


async def test_a_keypad_tool_in_a_resumed_call_gets_an_id_of_its_own(
        autojump_clock: Any) -> None:
    """A resumed call counts its turns from 0 again: keypad tool ids made from the turn
    number repeated one already in the history, which some models refuse (helper-24)."""
    use_case = plain_use_case(tools=TOOLS, dtmf={"handlers": {"2": {"tool": "pickupTime"}}})
    earlier = ({"role": "user", "content": [{"text": "(The caller pressed 2 on the keypad.)"}]},
               {"role": "assistant", "content": [{"toolUse": {
                   "toolUseId": "dtmf_1_pickupTime", "name": "pickupTime", "input": {}}}]},
               {"role": "user", "content": [{"toolResult": {
                   "toolUseId": "dtmf_1_pickupTime", "status": "success",
                   "content": [{"json": {"minutes": 20}}]}}]},
               {"role": "assistant", "content": [{"text": "About twenty minutes."}]})
    plan = CallPlan(call_sid=CALL_SID, use_case=use_case, system_prompt=use_case.prompt,
                    model_id="test-model", history=earlier)

    async def resume(setup: Any) -> CallPlan:
        await trio.lowlevel.checkpoint()
        return plan

    runs: list[float] = []
    llm = FakeLLM([words("Still about twenty minutes.")])
    async with open_test_call(llm, use_case=use_case, resolve=resume,
                              registry=order_registry(runs, duration_s=0.5)) as call:
        call.dtmf("2")
        text, _ = await call.reply()
    assert text == "Still about twenty minutes."
    assert llm.violations == []
    ids = [b["toolUse"]["toolUseId"] for m in llm.requests[-1].messages
           for b in m["content"] if "toolUse" in b]
    assert len(ids) == len(set(ids)) == 2


async def test_malformed_frames_are_counted_and_the_call_goes_on(autojump_clock: Any) -> None:
    llm = FakeLLM([words("Fine.")])
    async with open_test_call(llm) as call:
        for frame in (b"\x00binary", "{not json", '{"type": "surprise"}', "[1, 2]",
                      '{"type": "prompt", "voicePrompt": 7}', "x" * 70_000):
            call.socket.push(frame)
        call.say("still there?")
        text, _ = await call.reply()
        assert text == "Fine."
    assert sum(call.report.frames.rejected.values()) == 6


async def test_stream_end_without_text_still_records_valid_history(autojump_clock: Any) -> None:
    llm = FakeLLM([[0.1, StreamEnd("end_turn")], words("Hello?")])
    async with open_test_call(llm) as call:
        call.say("hmm")
        await trio.sleep(1)
        assert call.socket.pending() == []              # nothing spoken, nothing to close
        call.say("hello?")
        text, _ = await call.reply()
        assert text == "Hello?"
    assert converse_problems(call.report.history.for_request()) == []  # type: ignore[union-attr]


async def test_each_model_round_is_recorded_for_metrics(autojump_clock: Any) -> None:
    from voiceagent.llm.base import Usage
    done = StreamEnd("end_turn", Usage(input_tokens=120, output_tokens=3, cache_read_tokens=100),
                     first_token_s=0.42)
    llm = FakeLLM([[0.2, TextDelta("We"), 0.1, TextDelta(" open."), done],
                   words("A long answer " * 5, gap_s=1.0)])
    async with open_test_call(llm) as call:
        call.say("hours?")
        await call.reply()
        call.say("tell me more")
        await call.frame()
        call.interrupt(heard="A long")
        await call.frame()
    first, cut = call.report.turns.rounds
    assert (first.turn, first.stop_reason, first.first_token_s) == (1, "end_turn", 0.42)
    assert (first.input_tokens, first.output_tokens, first.cache_read_tokens) == (120, 3, 100)
    assert first.overhead_s == 0.0                  # virtual clock: no time passes in our code
    assert (cut.turn, cut.stop_reason) == (2, "cancelled")


async def test_caller_gone_mid_turn_ends_the_turn_quietly(autojump_clock: Any) -> None:
    llm = FakeLLM([words(REPLY, gap_s=0.5)])
    async with open_test_call(llm) as call:
        call.say("hours?")
        await call.frame()
        call.socket.closed_with = (1006, "gone")          # sends now fail: the writer stops
        await trio.sleep(2)
        await call.hang_up()
    assert call.report.ended_by == "hangup"               # not an internal error
    assert call.history[-1]["role"] == "assistant"
    assert converse_problems(call.report.history.for_request()) == []  # type: ignore[union-attr]


async def test_latency_counts_from_the_prompt_frame_to_the_first_token_on_the_socket(
        autojump_clock: Any) -> None:
    """Twilio's application latency: the prompt frame's arrival to the first token frame's
    send. A socket whose sends take 50 ms shows in the figure (handing the token to the
    writer is not the end of it), for a prompt and for a keypad entry alike."""
    reply = [0.2, TextDelta("We"), 0.1, TextDelta(" open."), StreamEnd("end_turn")]
    llm = FakeLLM([reply])
    summaries: list[dict[str, Any]] = []
    use_case = plain_use_case(dtmf={"default_to_model": True})
    async with open_test_call(llm, use_case=use_case,
                              services_changes={"on_turn": summaries.append}) as call:
        plain_send = call.socket.send

        async def slow_send(text: str) -> None:
            await trio.sleep(0.05)
            await plain_send(text)

        call.socket.send = slow_send  # type: ignore[method-assign]
        call.say("hours?")
        await call.reply()
        await trio.sleep(1)
        call.dtmf("1")
        call.dtmf("#")                      # the entry is complete when its terminator comes
        await call.reply()
    assert [s["latency_ms"] for s in summaries] == [pytest.approx(250.0)] * 2
    assert call.report.turns.latencies_s == [pytest.approx(0.25)] * 2


LONG_REPLY = " ".join(f"word{n}" for n in range(60))


@pytest.mark.parametrize("seed", range(40))
async def test_no_word_of_a_cut_turn_leaves_after_the_interrupt_is_read(
        autojump_clock: Any, seed: int) -> None:
    """Tokens back to back (no gap at all), the interrupt pushed after a random number of
    them and a random number of scheduler passes: once the call's reader has read the
    interrupt, the writer hands the socket no further word of that turn, only its closer.
    Each seed is another schedule (trio also shuffles the order of ready tasks)."""
    import random

    rng = random.Random(seed)
    llm = FakeLLM([words(LONG_REPLY, gap_s=0, first_s=0.1)])
    async with open_test_call(llm) as call:
        call.say("tell me everything")
        for _ in range(rng.randint(1, 20)):
            await call.frame()
        for _ in range(rng.randint(0, 6)):
            await trio.lowlevel.checkpoint()
        call.interrupt(heard=None)
        await trio.testing.wait_all_tasks_blocked()
        timeline = list(call.socket.timeline)
    read_at = next(n for n, (kind, frame) in enumerate(timeline)
                   if kind == "read" and frame["type"] == "interrupt")
    after = [frame for kind, frame in timeline[read_at:] if kind == "send"]
    assert texts(after) == []
    assert after[:1] == [{"type": "text", "token": "", "last": True}] or after == []
    spoken = "".join(f.get("token", "") for kind, f in timeline[:read_at] if kind == "send")
    assert call.history[-1] == {"role": "assistant", "content": [{"text": spoken.strip()}]}


# Twilio, "Getting and sending WebSocket messages"
# (https://www.twilio.com/docs/voice/conversationrelay/websocket-messages): "ConversationRelay
# sends this message when an error occurs during the session" ({"type": "error",
# "description": ...}); "If validation fails then Twilio returns error 64107 with details about
# the validation failure." Error 64107's page: "Looking at the message can give an insight into
# why this might happen." The description is the only thing that says which frame Twilio
# dropped and why; the call logs "twilio rejected a message we sent" with none of it.
async def test_twilios_error_report_reaches_the_log_with_its_code(
        autojump_clock: Any, caplog: pytest.LogCaptureFixture) -> None:
    llm = FakeLLM([words("Fine.")])
    description = ('Invalid message received, code: 64107, '
                   '{"type":"hints","hints":"pizza"}')
    with caplog.at_level("WARNING"):
        async with open_test_call(llm) as call:
            call.socket.push(json.dumps({"type": "error", "description": description}))
            call.say("still there?")
            await call.reply()
    logged = [" ".join(str(v) for v in vars(r).values()) for r in caplog.records]
    assert any("64107" in line for line in logged), logged
