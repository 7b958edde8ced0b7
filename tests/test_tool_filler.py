"""A tool's ``filler``, said while it runs: when (exactly ``FILLER_AFTER_S`` after the call,
on the virtual clock), which one (the first call still running that has one), when not (a
tool that played audio, one that ends the call, a filler already said in the turn), with
which flags, what the history keeps when the caller cuts in, and how the use case declares
it (checked at load, kept by the store, absent from items that set none). The end-to-end
behaviour through the real server is in ``test_tool_filler_e2e``. Found by review (s19)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from actors.tool_filler import FILLER_AFTER_S
from tests.call_harness import open_test_call, plain_use_case
from tests.fakes import FakeLLM, Step, words
from voiceagent.errors import ConfigError
from voiceagent.llm.base import StreamEnd, ToolUseRequest
from voiceagent.llm.converse import converse_problems
from voiceagent.relay.outbound import Play
from voiceagent.store import config_records
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry
from voiceagent.usecase_relay import STORED
from voiceagent.usecase_schema import MAX_FILLER_CHARS
from voiceagent.usecases import UseCase, parse_model

FILLER = "One moment while I check that."
ANSWER = "Your order is ready."


def _calls(*calls: tuple[str, str], before: str = "") -> list[Step]:
    said = words(before, first_s=0, gap_s=0)[:-1] if before else []
    return [*said, *(ToolUseRequest(i, name, {}) for i, name in calls), StreamEnd("tool_use")]


def _answer(text: str = ANSWER) -> list[Step]:
    return words(text, first_s=0, gap_s=0)


def _sleeper(seconds: float) -> Any:
    async def run(ctx: Any, args: Any) -> dict[str, Any]:
        await trio.sleep(seconds)
        return {"ready": True}
    return run


def _tools(*declarations: dict[str, Any]) -> UseCase:
    return plain_use_case(tools=[{"description": "Look it up.", **d} for d in declarations])


def _texts(frames: list[dict[str, Any]]) -> str:
    return "".join(f.get("token", "") for f in frames if f["type"] == "text")


async def test_the_filler_goes_out_exactly_after_the_delay(autojump_clock: Any) -> None:
    registry = ToolRegistry([ToolDefinition("lookUp", _sleeper(5))])
    llm = FakeLLM([_calls(("tu_1", "lookUp")), _answer()])
    async with open_test_call(llm, use_case=_tools({"name": "lookUp", "filler": FILLER}),
                              registry=registry) as call:
        asked = trio.current_time()
        call.say("is my order ready?")
        first = await call.frame()
        assert (first["token"], trio.current_time() - asked) == ("One", FILLER_AFTER_S)
        text, _ = await call.reply()
        assert trio.current_time() - asked == 5
    assert f"One{text}" == f"{FILLER} {ANSWER}"
    assert converse_problems(llm.requests[-1].messages) == []


async def test_the_filler_of_the_call_still_running_is_said(autojump_clock: Any) -> None:
    """Two calls in one reply: the first, with a filler of its own, has answered by then."""
    registry = ToolRegistry([ToolDefinition("quick", _sleeper(0.5)),
                             ToolDefinition("slow", _sleeper(5))])
    llm = FakeLLM([_calls(("tu_q", "quick"), ("tu_s", "slow")), _answer()])
    use_case = _tools({"name": "quick", "filler": "Checking the menu."},
                      {"name": "slow", "filler": "Checking the kitchen."})
    async with open_test_call(llm, use_case=use_case, registry=registry) as call:
        call.say("is my order ready?")
        text, _ = await call.reply()
    assert text == f"Checking the kitchen. {ANSWER}"
    assert call.history[-3]["content"][0] == {"text": "Checking the kitchen."}


async def test_no_filler_once_a_tool_has_played_the_caller_something(
        autojump_clock: Any) -> None:
    async def hold_music(ctx: Any, args: Any) -> dict[str, Any]:
        await ctx.send(Play("https://example.com/hold.mp3"))
        await trio.sleep(5)
        return {"played": True}

    registry = ToolRegistry([ToolDefinition("holdMusic", hold_music)])
    llm = FakeLLM([_calls(("tu_h", "holdMusic")), _answer()])
    async with open_test_call(llm, use_case=_tools({"name": "holdMusic", "filler": FILLER}),
                              registry=registry) as call:
        call.say("is my order ready?")
        text, frames = await call.reply()
    assert text == ANSWER
    assert frames[0]["type"] == "play"


async def test_a_filler_is_said_once_a_turn(autojump_clock: Any) -> None:
    """The model calls the slow tool again in its next round: the caller heard the filler a
    few seconds ago, and the same sentence again sounds like a machine."""
    registry = ToolRegistry([ToolDefinition("lookUp", _sleeper(3))])
    llm = FakeLLM([_calls(("tu_1", "lookUp")), _calls(("tu_2", "lookUp")), _answer()])
    async with open_test_call(llm, use_case=_tools({"name": "lookUp", "filler": FILLER}),
                              registry=registry) as call:
        call.say("is my order ready?")
        text, _ = await call.reply()
    assert text == f"{FILLER} {ANSWER}"


async def test_the_filler_has_the_twimls_flags_not_an_earlier_tools_reply_controls(
        autojump_clock: Any) -> None:
    """``reply: {interruptible: false}`` is for the model's reply after that tool (an order
    confirmation); a filler said in the next round is the caller's to cut as usual."""
    registry = ToolRegistry([ToolDefinition("placeOrder", _sleeper(0.1)),
                             ToolDefinition("lookUp", _sleeper(5))])
    llm = FakeLLM([_calls(("tu_p", "placeOrder")), _calls(("tu_l", "lookUp")), _answer()])
    use_case = _tools({"name": "placeOrder", "reply": {"interruptible": False}},
                      {"name": "lookUp", "filler": FILLER})
    async with open_test_call(llm, use_case=use_case, registry=registry) as call:
        call.say("place it and tell me when it is ready")
        _, frames = await call.reply()
    said = [f for f in frames if f["type"] == "text" and f["token"]]
    assert _texts(said[:6]) == FILLER
    assert all("interruptible" not in f for f in said[:6]), said[:6]
    assert all(f["interruptible"] is False for f in said[6:]), said[6:]


async def test_no_filler_for_a_tool_that_ends_the_call(autojump_clock: Any) -> None:
    """A use case stored with one (the tool's code changed to ``ends_turn`` since, say) is
    served without it; loading it from a file is refused."""
    async def hand_off(ctx: Any, args: Any) -> dict[str, Any]:
        await trio.sleep(3)
        return {"transferred": True}

    registry = ToolRegistry([ToolDefinition("handOff", hand_off, ends_turn=True)])
    data = {"name": "test", "prompt": "You are a test agent.",
            "tools": [{"name": "handOff", "description": "Transfer.", "filler": FILLER}]}
    with pytest.raises(ConfigError) as caught:
        registry.check_use_case(parse_model(UseCase, data, "config/test.yaml"))
    assert caught.value.key_path == "tools[0].filler"
    assert "ends the call" in caught.value.problem
    llm = FakeLLM([_calls(("tu_h", "handOff"))])
    stored = parse_model(UseCase, data, "store item test/configuration", STORED)
    async with open_test_call(llm, use_case=stored, registry=registry) as call:
        call.say("put me through")
        await trio.sleep(5)
        assert _texts(call.socket.pending()) == ""


async def test_a_cut_into_the_filler_of_a_side_effect_keeps_its_words_heard_and_its_result(
        autojump_clock: Any) -> None:
    """The order runs on (shielded): its toolUse and result stay, and the filler before
    them is cut to the words Twilio says were heard."""
    registry = ToolRegistry([ToolDefinition("placeOrder", _sleeper(5), side_effect=True)])
    llm = FakeLLM([_calls(("tu_p", "placeOrder")), _answer("Anything else?")])
    async with open_test_call(llm, use_case=_tools({"name": "placeOrder", "filler": FILLER}),
                              registry=registry) as call:
        call.say("place my order")
        while "that." not in (await call.frame()).get("token", ""):
            pass
        call.interrupt(heard="One moment while")
        await trio.sleep(10)                    # the order finishes, shielded
        assert _texts(call.socket.pending()) == ""      # the cut turn's closer alone
        call.say("thanks")
        assert (await call.reply())[0] == "Anything else?"
    sent = llm.requests[-1].messages
    assert [m["content"] for m in call.history[-3:]] == [
        [{"text": "One moment while"},
         {"toolUse": {"toolUseId": "tu_p", "name": "placeOrder", "input": {}}}],
        [{"toolResult": {"toolUseId": "tu_p", "content": [{"json": {"ready": True}}],
                         "status": "success"}}, {"text": "thanks"}],
        [{"text": "Anything else?"}]]
    assert converse_problems(sent) == []


# ------------------------------------------------------------------ the declaration


@pytest.mark.parametrize(("filler", "wanted"), [
    ("   ", "write one short sentence"),
    ("x" * (MAX_FILLER_CHARS + 1), f"at most {MAX_FILLER_CHARS}"),
    ("One moment.\nStill checking.", "U+000A"),
    ("One\x0bmoment.", "U+000B"),
])
def test_a_filler_that_is_no_short_sentence_is_refused_at_load(filler: str,
                                                               wanted: str) -> None:
    data = {"name": "test", "prompt": "p",
            "tools": [{"name": "lookUp", "description": "d", "filler": filler}]}
    with pytest.raises(ConfigError) as caught:
        parse_model(UseCase, data, "config/test.yaml")
    assert caught.value.key_path == "tools[0].filler"
    assert wanted in caught.value.problem, caught.value.problem


def test_the_store_keeps_a_filler_and_items_without_one_stay_as_older_releases_wrote_them(
        ) -> None:
    """No ``filler`` key at all when none is set: a release from before fillers reads the
    item's ``voiceagent`` attribute strictly, and ``filler: null`` made it refuse the whole
    attribute (rolling deploys, rollbacks). An item written before fillers loads."""
    use_case = _tools({"name": "lookUp", "filler": FILLER}, {"name": "other"})
    item = config_records.use_case_item(use_case)
    assert config_records.use_case_from_item(item) == use_case
    tools = item["voiceagent"]["tools"]
    assert (tools[0]["filler"], "filler" in tools[1]) == (FILLER, False)
    older = config_records.use_case_item(_tools({"name": "other"}))
    assert config_records.use_case_from_item(older).tools[0].filler is None
