"""A use case's ``hold_line`` in one call's actors, on trio's virtual clock: once per turn
whatever its rounds (a round after a tool too, while the caller has heard nothing), the
apology after it is the one for a model that said nothing, the turn's latency is its reply's,
a tool's filler still fills the tool's silence after it, and the key is checked as a filler
is and stored only when set.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from actors.hold_line import HOLD_LINE_AFTER_S
from actors.tool_filler import FILLER_AFTER_S
from actors.turn import APOLOGY_CUT, APOLOGY_SILENT, CLOSE_TIMEOUT_S
from tests.call_harness import open_test_call, plain_use_case
from tests.fakes import FakeLLM, MemorySocket, Step, words
from voiceagent.errors import ConfigError, ModelStreamFailed, RelayBroken
from voiceagent.llm.base import StreamEnd, TextDelta, ToolUseRequest
from voiceagent.store import config_records
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry
from voiceagent.usecase_schema import MAX_FILLER_CHARS
from voiceagent.usecases import UseCase, parse_model

HOLD = "One moment, please."
SLOW_S = HOLD_LINE_AFTER_S + 0.5        # a model that begins after the hold line
LOOK_UP = {"name": "lookUp", "description": "Look it up."}


def _use_case(**changes: Any) -> UseCase:
    return plain_use_case(hold_line=HOLD, **changes)


def _tool_round(first_s: float) -> list[Step]:
    return [first_s, ToolUseRequest("tu_1", "lookUp", {}), StreamEnd("tool_use")]


def _registry(seconds: float) -> ToolRegistry:
    async def look_up(ctx: Any, args: Any) -> dict[str, Any]:
        import trio
        await trio.sleep(seconds)
        return {"found": True}
    return ToolRegistry([ToolDefinition("lookUp", look_up)])


async def test_said_once_in_a_turn_whose_rounds_are_both_slow(autojump_clock: Any) -> None:
    llm = FakeLLM([_tool_round(SLOW_S), words("It is there.", first_s=SLOW_S)])
    async with open_test_call(llm, use_case=_use_case(tools=[LOOK_UP]),
                              registry=_registry(0.1)) as call:
        call.say("is it there?")
        text, _ = await call.reply()
    assert text == f"{HOLD} It is there."
    assert [m["content"] for m in llm.sent_messages[-1][-2:]] == [
        [{"text": HOLD}, {"toolUse": {"toolUseId": "tu_1", "name": "lookUp", "input": {}}}],
        [{"toolResult": {"toolUseId": "tu_1", "content": [{"json": {"found": True}}],
                         "status": "success"}}]]


async def test_a_round_after_a_fast_silent_tool_is_covered_and_the_next_turn_has_its_own(
        autojump_clock: Any) -> None:
    """The model went straight to a tool that was too quick for its filler: the caller has
    heard nothing since their words, so the slow round after the tool is covered as a first
    round is (timed from its own request); the next turn's first round has its own line."""
    llm = FakeLLM([_tool_round(0.1), words("It is there.", first_s=SLOW_S),
                   words("Yes.", first_s=SLOW_S)])
    async with open_test_call(llm, use_case=_use_case(tools=[LOOK_UP]),
                              registry=_registry(0.1)) as call:
        call.say("is it there?")
        first, _ = await call.reply()
        call.say("open today?")
        second, _ = await call.reply()
    assert (first, second) == (f"{HOLD} It is there.", f"{HOLD} Yes.")
    assert [m["content"] for m in llm.sent_messages[2][-2:]] == [
        [{"text": f"{HOLD} It is there."}], [{"text": "open today?"}]]


async def test_no_line_after_a_round_when_the_caller_heard_the_model_or_a_filler(
        autojump_clock: Any) -> None:
    """Words before the tool, or the tool's filler, broke the silence: the slow round after
    the tool is heard as it comes, with no line in front of it."""
    spoke_first = FakeLLM([[0.1, TextDelta("Let me check."), ToolUseRequest("tu_1", "lookUp", {}),
                            StreamEnd("tool_use")], words("It is there.", first_s=SLOW_S)])
    async with open_test_call(spoke_first, use_case=_use_case(tools=[LOOK_UP]),
                              registry=_registry(0.1)) as call:
        call.say("is it there?")
        after_words, _ = await call.reply()
    filler = "Let me look."
    slow_tool = FakeLLM([_tool_round(0.1), words("It is there.", first_s=SLOW_S)])
    async with open_test_call(slow_tool, use_case=_use_case(tools=[{**LOOK_UP, "filler": filler}]),
                              registry=_registry(FILLER_AFTER_S + 0.5)) as call:
        call.say("is it there?")
        after_filler, _ = await call.reply()
    assert (after_words, after_filler) == ("Let me check. It is there.",
                                           f"{filler} It is there.")


async def test_each_turn_has_its_own(autojump_clock: Any) -> None:
    llm = FakeLLM([words("Yes.", first_s=SLOW_S)])
    async with open_test_call(llm, use_case=_use_case()) as call:
        call.say("open?")
        first, _ = await call.reply()
        call.say("today?")
        second, _ = await call.reply()
    assert (first, second) == (f"{HOLD} Yes.", f"{HOLD} Yes.")


async def test_a_model_failing_after_it_gets_the_apology_for_saying_nothing(
        autojump_clock: Any) -> None:
    """The hold line is not the model's words: "I lost my train of thought" after it would
    be wrong; the caller hears that there is trouble."""
    llm = FakeLLM([[SLOW_S, ModelStreamFailed("FirstEventTimeout", "stalled",
                                              after_tokens=False)]])
    async with open_test_call(llm, use_case=_use_case()) as call:
        call.say("open?")
        text, _ = await call.reply()
    assert text == f"{HOLD} {APOLOGY_SILENT}"
    assert APOLOGY_CUT.strip() not in text


async def test_the_turn_latency_is_its_replys_first_words_not_the_hold_line(
        autojump_clock: Any) -> None:
    """A hold line must not hide a slow model from the latency alarm (p99 over 2 s)."""
    llm = FakeLLM([words("Yes.", first_s=SLOW_S)])
    async with open_test_call(llm, use_case=_use_case()) as call:
        call.say("open?")
        text, _ = await call.reply()
        await call.hang_up()
    assert text == f"{HOLD} Yes."
    assert call.report.turns.latencies_s == [pytest.approx(SLOW_S)]


async def test_a_slow_tool_after_it_still_has_its_filler(autojump_clock: Any) -> None:
    """The hold line covered the model's silence, not the tool's: a tool the model called
    without a word first still has its filler said when it runs long."""
    filler = "Let me look."
    llm = FakeLLM([_tool_round(SLOW_S), words("It is there.", first_s=0.1)])
    async with open_test_call(llm, use_case=_use_case(tools=[{**LOOK_UP, "filler": filler}]),
                              registry=_registry(FILLER_AFTER_S + 2)) as call:
        call.say("is it there?")
        text, _ = await call.reply()
    assert text == f"{HOLD} {filler} It is there."


async def test_a_model_on_time_and_a_use_case_without_one_say_nothing_else(
        autojump_clock: Any) -> None:
    llm = FakeLLM([words("Yes.", first_s=HOLD_LINE_AFTER_S - 0.1)])
    async with open_test_call(llm, use_case=_use_case()) as call:
        call.say("open?")
        on_time, _ = await call.reply()
    async with open_test_call(FakeLLM([words("Yes.", first_s=SLOW_S)])) as call:
        call.say("open?")
        without, _ = await call.reply()
    assert (on_time, without) == ("Yes.", "Yes.")


async def test_it_has_the_twimls_flags_not_a_keypad_tools_reply_controls(
        autojump_clock: Any) -> None:
    """A key's tool with ``reply: {interruptible: false}`` makes the model's reply after it
    one the caller cannot cut; the hold line before that reply stays one they can."""
    use_case = _use_case(
        relay={"dtmfDetection": True},
        tools=[{**LOOK_UP, "reply": {"interruptible": False}}],
        dtmf={"handlers": {"1": {"tool": "lookUp"}}})
    llm = FakeLLM([words("It is there.", first_s=SLOW_S)])
    async with open_test_call(llm, use_case=use_case, registry=_registry(0.1)) as call:
        call.dtmf("1")
        text, frames = await call.reply()
    assert text == f"{HOLD} It is there."
    said = [f for f in frames if f["type"] == "text" and f["token"]]
    hold = len(HOLD.split(" "))
    assert all("interruptible" not in f for f in said[:hold]), said[:hold]
    assert all(f["interruptible"] is False for f in said[hold:]), said[hold:]


@pytest.mark.parametrize(("line", "wanted"), [
    ("   ", "write one short sentence"),
    ("x" * (MAX_FILLER_CHARS + 1), f"at most {MAX_FILLER_CHARS}"),
    ("One moment.\nStill thinking.", "U+000A"),
])
def test_a_hold_line_that_is_no_short_sentence_is_refused_at_load(line: str,
                                                                  wanted: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_model(UseCase, {"name": "test", "prompt": "p", "hold_line": line},
                    "config/test.yaml")
    assert caught.value.key_path == "hold_line"
    assert wanted in caught.value.problem, caught.value.problem
    assert "hold_line" in caught.value.problem


def test_the_store_keeps_a_hold_line_and_items_without_one_have_no_key() -> None:
    """As with a filler: ``hold_line: null`` would make an older release refuse the item."""
    item = config_records.use_case_item(_use_case())
    assert item["voiceagent"]["hold_line"] == HOLD
    assert config_records.use_case_from_item(item).hold_line == HOLD
    older = config_records.use_case_item(plain_use_case())
    assert "hold_line" not in older["voiceagent"]
    assert config_records.use_case_from_item(older).hold_line is None


class _SlowSocket(MemorySocket):
    """A Twilio that takes no frame while ``gate`` is closed: the writer waits on it."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: trio.Event | None = None
        self.broken = False             # a send fails as on a socket gone

    async def send(self, text: str) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.broken:
            raise RelayBroken("gone")
        await super().send(text)


async def test_a_barge_in_cuts_a_hold_line_the_socket_is_slow_to_take(
        autojump_clock: Any) -> None:
    """The line is a part of the turn: a barge-in while its words wait on a slow socket stops
    it with the turn, so the caller's next words are put to the model at once, not once the
    socket has taken the rest of a line nobody will hear."""
    socket = _SlowSocket()
    llm = FakeLLM([words("Yes.", first_s=60), words("Sure.", first_s=0.1)])
    async with open_test_call(llm, use_case=_use_case(), socket=socket) as call:
        gate = socket.gate = trio.Event()
        call.say("open?")
        await trio.sleep(HOLD_LINE_AFTER_S + 0.5)   # the line's first word waits on the gate
        call.interrupt(heard=None)
        call.say("today?")
        # the cut turn's closer waits its bound on the slow socket; the gate is still closed
        await trio.sleep(CLOSE_TIMEOUT_S + 0.5)
        asked_again = len(llm.sent_messages)
        gate.set()
        cut, _ = await call.reply()
        answer, _ = await call.reply()
    assert asked_again == 2
    assert (cut, answer) == ("One", "Sure.")


async def test_a_socket_gone_under_the_hold_line_ends_the_round_at_once(
        autojump_clock: Any) -> None:
    """Saying the line found the writer gone (the caller hung up as it went out): the round
    ends then, its model stream closed, not when the slow model would have begun."""
    socket = _SlowSocket()
    llm = FakeLLM([words("Yes.", first_s=60)])
    async with open_test_call(llm, use_case=_use_case(), socket=socket) as call:
        socket.broken = True
        call.say("open?")
        await trio.sleep(HOLD_LINE_AFTER_S + 1)
        closed_by_then = list(llm.closed_at)
    assert closed_by_then == [pytest.approx(HOLD_LINE_AFTER_S)]
