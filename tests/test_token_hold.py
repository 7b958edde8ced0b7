"""TOKEN_HOLD_MS: a reply's first token goes at once, later ones go together at a clause end or
when the hold expires; held text that was never sent is never spoken nor recorded.

Virtual clock throughout, so each frame's send time is asserted exactly.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from actors.turn import APOLOGY_CUT
from tests import call_harness
from tests.call_harness import open_test_call, plain_use_case
from tests.fakes import FakeLLM, tool_use, words
from voiceagent.errors import ModelStreamFailed
from voiceagent.llm.base import TextDelta
from voiceagent.settings import Settings
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry

HOLD = {"token_hold_s": 0.1}


async def timed_reply(call: call_harness.TestCall) -> list[tuple[float, str, bool]]:
    """(virtual time, token, last) for each text frame up to the one closing the cycle."""
    frames = []
    while True:
        frame = await call.frame()
        assert frame["type"] == "text"
        frames.append((round(trio.current_time(), 6), frame["token"], frame["last"]))
        if frame["last"]:
            return frames


async def test_first_token_at_once_then_chunks_at_clause_ends_and_hold_expiry(
        autojump_clock: Any) -> None:
    llm = FakeLLM([words("We open at nine and close at ten tonight.", gap_s=0.03, first_s=0.2)])
    async with open_test_call(llm, services_changes=HOLD) as call:
        call.say("when are you open?")
        frames = await timed_reply(call)
    assert frames == [
        (0.2, "We", False),                        # the latency the caller notices: not held
        (0.33, " open at nine and", False),        # " open" came at 0.23: held 0.1 s
        (0.44, " close at ten tonight.", False),   # a clause end goes at once
        (0.44, "", True),
    ]
    assert call.history[-1]["content"] == [{"text": "We open at nine and close at ten tonight."}]
    assert call.report.writer.tokens == 3


async def test_the_final_chunk_carries_last_true(autojump_clock: Any) -> None:
    llm = FakeLLM([words("Sure thing", gap_s=0.03, first_s=0.2)])
    async with open_test_call(llm, services_changes=HOLD) as call:
        call.say("a pizza please")
        assert await timed_reply(call) == [(0.2, "Sure", False), (0.23, " thing", True)]
    assert call.history[-1]["content"] == [{"text": "Sure thing"}]


async def test_a_slow_model_waits_no_longer_than_the_hold(autojump_clock: Any) -> None:
    llm = FakeLLM([words("We open at nine", gap_s=0.5, first_s=0.2)])
    async with open_test_call(llm, services_changes=HOLD) as call:
        call.say("hours?")
        frames = await timed_reply(call)
    assert frames == [(0.2, "We", False), (0.8, " open", False), (1.3, " at", False),
                      (1.7, " nine", True)]


async def test_barge_in_drops_held_tokens_they_are_never_sent_nor_recorded(
        autojump_clock: Any) -> None:
    llm = FakeLLM([words("We open at nine and close at ten tonight.", gap_s=0.03,
                         first_s=0.2)])
    async with open_test_call(llm, services_changes=HOLD) as call:
        call.say("when are you open?")
        assert (await call.frame())["token"] == "We"
        await trio.sleep_until(0.3)                # " open at nine" is held, not sent
        call.interrupt(heard=None)
        await trio.testing.wait_all_tasks_blocked()
        assert call.socket.pending() == [{"type": "text", "token": "", "last": True}]
        assert llm.open_streams == 0
        await trio.sleep(5)
        assert call.socket.pending() == []
    assert call.history[-1]["content"] == [{"text": "We"}]   # what was sent, nothing held
    assert call.report.writer.tokens == 1


async def test_held_text_is_spoken_before_a_tool_runs(autojump_clock: Any) -> None:
    started_at: list[float] = []
    registry = ToolRegistry()

    async def lookup(ctx: Any, args: Any) -> dict[str, Any]:
        started_at.append(trio.current_time())
        await trio.sleep(2)
        return {"minutes": 20}

    registry.register(ToolDefinition("pickupTime", lookup, timeout_s=10))
    before = words("Let me look that up for you", gap_s=0.03)[:-1]   # no clause end
    llm = FakeLLM([[*before, *tool_use("tu_1", "pickupTime")[1:]],
                   words("About twenty minutes.", gap_s=0.03)])
    use_case = plain_use_case(tools=[{"name": "pickupTime", "description": "Minutes"}])
    async with open_test_call(llm, use_case=use_case, registry=registry,
                              services_changes=HOLD) as call:
        call.say("when is it ready?")
        frames = await timed_reply(call)
    assert frames[:3] == [(0.2, "Let", False), (0.33, " me look that up", False),
                          (0.38, " for you", False)]   # flushed as the tool starts
    assert "".join(token for _, token, _ in frames) == (
        "Let me look that up for you About twenty minutes.")
    tool_at = round(started_at[0], 6)
    assert "".join(token for at, token, _ in frames if at <= tool_at) == (
        "Let me look that up for you")
    assert frames[-3:] == [(round(tool_at + 2.2, 6), " About", False),
                           (round(tool_at + 2.26, 6), " twenty minutes.", False),
                           (round(tool_at + 2.26, 6), "", True)]


async def test_a_model_failure_sends_what_was_held_then_the_apology(
        autojump_clock: Any) -> None:
    llm = FakeLLM([[0.1, TextDelta("We"), 0.03, TextDelta(" open"),
                    ModelStreamFailed("modelStreamErrorException", "x")]])
    async with open_test_call(llm, services_changes=HOLD) as call:
        call.say("hours?")
        frames = await timed_reply(call)
    text = "".join(token for _, token, _ in frames)
    assert text == "We open" + APOLOGY_CUT
    assert call.history[-1]["content"] == [{"text": "We open" + APOLOGY_CUT}]


def test_the_hold_is_a_setting_with_a_bound() -> None:
    assert Settings().token_hold_ms == 100
    assert Settings.model_validate({"TOKEN_HOLD_MS": "0"}).token_hold_ms == 0
    with pytest.raises(ValueError, match="TOKEN_HOLD_MS"):
        Settings.model_validate({"TOKEN_HOLD_MS": "5000"})
