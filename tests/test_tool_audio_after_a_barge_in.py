"""A tool's audio and digits after the caller cut in. The relay writer withheld only the words
of a cut turn: a ``play`` or ``sendDigits`` its tools sent afterwards still went out, and a
side-effect tool runs on after a barge-in, so hold music started, or keys were pressed down
the line, over the caller who had just interrupted (Twilio had dropped everything queued at
the interrupt). The tool was told nothing, so its result said the keys were sent. Found by a
review of the barge-in path (s17)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from tests.call_harness import open_test_call, plain_use_case
from tests.end_tools import HANDOFF_END
from tests.fakes import FakeLLM, MemorySocket, SlowAtTheWordSocket, Step, tool_use, words
from tests.server_harness import AUTH_TOKEN, make_settings, one_use_case_config, running_server
from voiceagent.app.caller import open_call
from voiceagent.llm.base import StreamEnd, ToolUseRequest
from voiceagent.relay.outbound import Play, SendDigits
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.call_control import WITHHELD
from voiceagent.tools.registry import ToolRegistry, builtin_tools, default_registry

HOLD = "https://example.com/hold.mp3"
MUSIC = "https://example.com/music.mp3"
URL_INPUT = {"type": "object", "required": ["url"], "properties": {"url": {"type": "string"}}}
USE_CASE: dict[str, Any] = {
    "name": "transfers",
    "prompt": "You put callers through to sales.",
    "relay": {"welcomeGreeting": "Hello."},
    "tools": [{"name": "dialSales", "description": "Dial sales and press its extension."},
              {"name": "watchLine", "description": "Listen to the line while dialling."},
              {"name": "playAudio", "description": "Play audio.", "input_schema": URL_INPUT}]}


def _settings(tmp_path: Path) -> Any:
    folder = one_use_case_config(tmp_path, USE_CASE)
    return make_settings(tmp_path, CONFIG_DIR=str(folder), STACK_USE_CASE="transfers")


def _dial_script() -> list[Step]:
    """"Putting you through.", then both tools in one reply."""
    return [*words("Putting you through.", gap_s=0.01, first_s=0.01)[:-1],
            ToolUseRequest("tu_dial", "dialSales", {}),
            ToolUseRequest("tu_watch", "watchLine", {}), StreamEnd("tool_use")]


async def test_a_side_effect_tool_of_a_cut_turn_plays_nothing_and_presses_no_key(
        tmp_path: Path) -> None:
    watching, cut_seen, dialled = trio.Event(), trio.Event(), trio.Event()
    told: list[bool] = []

    async def watch_line(ctx: Any, args: Any) -> dict[str, Any]:
        try:                            # no side effect: the barge-in abandons it
            watching.set()
            await trio.sleep_forever()
        finally:
            cut_seen.set()

    async def dial_sales(ctx: Any, args: Any) -> dict[str, Any]:
        await cut_seen.wait()           # the caller cuts in while the line is dialled
        told.append(await ctx.send(SendDigits("1234#")))
        told.append(await ctx.send(Play(HOLD)))
        dialled.set()
        return {"connected": True, "keys_pressed": told[0]}

    registry = ToolRegistry([*builtin_tools(),
                             ToolDefinition("dialSales", dial_sales, side_effect=True),
                             ToolDefinition("watchLine", watch_line)])
    llm = FakeLLM([_dial_script(), tool_use("tu_music", "playAudio", {"url": MUSIC}),
                   words("Enjoy the music.", gap_s=0.01, first_s=0.01)])
    with trio.fail_after(20):
        async with running_server(_settings(tmp_path), llm=llm, registry=registry) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("sales, please")
                while "through." not in call.heard:
                    assert await call.receive() is not None
                await watching.wait()                       # the tools run
                await call.interrupt()
                await dialled.wait()
                after_cut = await call.read_reply()         # up to the cut turn's closer
                await call.say("play me some music while I wait")
                next_turn = await call.read_reply()
                await call.hang_up()
            await server.runtime.calls.wait_idle()
            history = server.runtime.calls.reports[-1].history
    assert [f["type"] for f in after_cut.frames] == ["text"], after_cut.frames
    assert told == [False, False]
    # the next turn's audio goes out: only the cut turn's is withheld
    assert [f for f in next_turn.frames if f["type"] == "play"] == [
        {"type": "play", "source": MUSIC, "loop": 1, "interruptible": True}]
    assert history is not None
    results = {b["toolResult"]["toolUseId"]: b["toolResult"]["content"][0]
               for m in history.messages for b in m["content"] if "toolResult" in b}
    assert results["tu_dial"] == {"json": {"connected": True, "keys_pressed": False}}




async def test_digits_still_queued_in_the_writer_at_a_barge_in_are_not_pressed(
        autojump_clock: Any) -> None:
    """The built-in sendDigits ran as the turn's words went out; its keys waited behind a
    word Twilio was slow to take, and the caller cut in meanwhile."""
    socket = SlowAtTheWordSocket(" moment.")
    llm = FakeLLM([tool_use("tu_keys", "sendDigits", {"digits": "1234"}, before="One moment."),
                   words("Done.")])
    use_case = plain_use_case(tools=[{
        "name": "sendDigits", "description": "Press keys.",
        "input_schema": {"type": "object", "required": ["digits"],
                         "properties": {"digits": {"type": "string"}}}}])
    async with open_test_call(llm, use_case=use_case, registry=default_registry(),
                              socket=socket) as call:
        call.say("press one two three four")
        await trio.sleep(1.5)           # " moment." is on its way; the keys wait behind it
        call.interrupt(heard="One")
        await trio.sleep(5)
        frames = socket.pending()
    assert [f["type"] for f in frames if f["type"] != "text"] == []
    assert call.report.writer.dropped_after_cut == 1
    assert call.history[-1] == {"role": "user", "content": [{"toolResult": {
        "toolUseId": "tu_keys", "content": [{"json": {"sent": 0, "withheld": WITHHELD}}],
        "status": "success"}}]}


async def test_keys_and_audio_after_the_end_are_reported_as_not_sent(
        autojump_clock: Any) -> None:
    """One reply hands the call to a person and presses an extension at once; the handoff's
    ``end`` reached the writer first, which sends nothing after it. The keys were dropped as
    before, but the writer told the tool they went out: its result said the keys were
    pressed, and the call's record says the caller heard them."""
    handed_off = trio.Event()
    told: list[bool] = []

    async def handoff(ctx: Any, args: Any) -> dict[str, Any]:
        await ctx.send(HANDOFF_END)
        handed_off.set()
        return {"status": "transferring"}

    async def press_extension(ctx: Any, args: Any) -> dict[str, Any]:
        await handed_off.wait()
        told.append(await ctx.send(SendDigits("1234#")))
        told.append(await ctx.send(Play(HOLD)))
        return {"keys_pressed": told[0]}

    registry = ToolRegistry([ToolDefinition("handoff", handoff, ends_turn=True),
                             ToolDefinition("pressExtension", press_extension,
                                            side_effect=True)])
    use_case = plain_use_case(tools=[{"name": "handoff", "description": "To a person"},
                                     {"name": "pressExtension", "description": "Dial it"}])
    llm = FakeLLM([[ToolUseRequest("tu_hand", "handoff", {}),
                    ToolUseRequest("tu_keys", "pressExtension", {}), StreamEnd("tool_use")]])
    socket = MemorySocket()
    async with open_test_call(llm, use_case=use_case, registry=registry,
                              socket=socket) as call:
        call.say("put me through to sales")
        await call.until_end()
        await trio.sleep(5)
        frames = socket.pending()
    assert [f["type"] for f in frames] == []
    assert told == [False, False]
    results = {b["toolResult"]["toolUseId"]: b["toolResult"]["content"][0]
               for m in call.history for b in m["content"] if "toolResult" in b}
    assert results["tu_keys"] == {"json": {"keys_pressed": False}}
