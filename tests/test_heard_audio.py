"""A caller who cuts into a tool's ``play`` gets from Twilio an empty ``utteranceUntilInterrupt``
(the recording has no words) with the time it played. The words the turn said before the
tool ran had all played, queued ahead of the recording; before, the empty report dropped them
from the history, and the model said them again. The words after the recording were not
reached. An empty report with no audio played, or with no tool's audio in the turn, still
keeps nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from actors.messages import Play
from tests.call_harness import open_test_call, plain_use_case
from tests.fakes import FakeLLM, tool_use, words
from tests.server_harness import AUTH_TOKEN, running_server
from tests.test_relay_controls_e2e import _settings
from voiceagent.app.caller import open_call
from voiceagent.llm.base import StreamEnd
from voiceagent.llm.converse import converse_problems
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry, default_registry

HOLD = "https://example.com/hold.mp3"
PLAY_TOOLS = [{"name": "playAudio", "description": "Play an audio file to the caller.",
               "input_schema": {"type": "object", "required": ["url"],
                                "properties": {"url": {"type": "string"}}}}]


def _texts(messages: Any) -> list[tuple[str, list[str]]]:
    return [(m["role"], [b["text"] for b in m["content"] if "text" in b]) for m in messages]


async def test_cut_into_the_hold_recording_keeps_the_words_before_it(tmp_path: Path) -> None:
    llm = FakeLLM([
        tool_use("tu_play", "playAudio", {"url": HOLD}, before="Let me put you on hold."),
        words("While you wait, our menu has changed.", first_s=0.01, gap_s=0.01),
        words("Welcome back.", first_s=0.01, gap_s=0.01)])
    with trio.fail_after(20):
        async with running_server(_settings(tmp_path), llm=llm) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("can you hold on?")
                reply = await call.read_reply()
                assert [f["type"] for f in reply.frames].count("play") == 1
                await call.interrupt(heard="", duration_ms=4000)
                await call.say("I am back")
                assert (await call.read_reply()).text == "Welcome back."
                await call.hang_up()
            await server.runtime.calls.wait_idle()
    sent = llm.requests[-1].messages
    assert _texts(sent[-4:]) == [
        ("assistant", ["Let me put you on hold."]), ("user", []),
        ("assistant", ["..."]), ("user", ["I am back"])]      # "..." stands in: results apart
    assert sent[-4]["content"][-1]["toolUse"]["name"] == "playAudio"
    assert converse_problems(sent) == []


async def test_cut_while_the_tool_still_plays_keeps_the_words_before_it(
        autojump_clock: Any) -> None:
    """The tool plays the recording and runs on; the caller cuts in meanwhile, and the turn
    is cancelled around it: the words before it stay as well."""
    started = trio.Event()

    async def hold_music(ctx: Any, args: Any) -> dict[str, Any]:
        await ctx.send(Play(HOLD))
        started.set()
        await trio.sleep(5)
        return {"played": True}

    registry = ToolRegistry([ToolDefinition("holdMusic", hold_music, timeout_s=10)])
    llm = FakeLLM([tool_use("tu_p", "holdMusic", before="One moment.")])
    use_case = plain_use_case(tools=[{"name": "holdMusic", "description": "Play hold music"}])
    async with open_test_call(llm, use_case=use_case, registry=registry) as call:
        call.say("can you hold?")
        await started.wait()
        call.interrupt(heard="", duration_ms=1500)
        await trio.sleep(10)
    assert _texts(call.history[-2:]) == [("assistant", ["One moment."]), ("user", [])]


@pytest.mark.parametrize("duration_ms", [0, None])
async def test_an_empty_report_with_no_audio_played_keeps_nothing(
        duration_ms: int | None, autojump_clock: Any) -> None:
    llm = FakeLLM([
        tool_use("tu_play", "playAudio", {"url": HOLD}, before="Let me put you on hold."),
        [0.2, StreamEnd("end_turn")]])
    async with open_test_call(llm, use_case=plain_use_case(tools=PLAY_TOOLS),
                              registry=default_registry()) as call:
        call.say("can you hold on?")
        await trio.sleep(3)
        frame: dict[str, Any] = {"type": "interrupt", "utteranceUntilInterrupt": ""}
        if duration_ms is not None:
            frame["durationUntilInterruptMs"] = duration_ms
        call.socket.push(frame)
        await trio.testing.wait_all_tasks_blocked()
        assert _texts(call.history[-3:]) == [("user", ["can you hold on?"]),
                                            ("assistant", []), ("user", [])]


async def test_an_empty_report_with_audio_but_no_tool_audio_keeps_nothing(
        autojump_clock: Any) -> None:
    """Audio played, but no tool of the turn played any: nothing is known to have been
    heard (Twilio's words are those of the item playing), and nothing is kept, as before."""
    llm = FakeLLM([words("We open at nine. We close at ten.")])
    async with open_test_call(llm) as call:
        call.say("hours?")
        await call.reply()
        call.interrupt(heard="", duration_ms=2500)
        await trio.testing.wait_all_tasks_blocked()
        assert _texts(call.history[-1:]) == [("user", ["hours?"])]
