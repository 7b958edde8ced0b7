"""``play``'s ``loop``: Twilio documents 0 as 1000 times, its maximum. A tool's ``Play`` with a
larger count went out as it was, a frame Twilio drops (64107) with the caller hearing nothing
and the model told the audio played; now ``Play`` refuses it when it is made, and the tool's
error says what the limit is. Through the real server and a WebSocket caller."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from tests.fakes import FakeLLM, tool_use, words
from tests.server_harness import AUTH_TOKEN, make_settings, one_use_case_config, running_server
from voiceagent.app.caller import open_call
from voiceagent.relay.outbound import Play
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry

LOOP_TOOL = {"type": "object", "required": ["times"],
             "properties": {"times": {"type": "integer"}}}
USE_CASE: dict[str, Any] = {
    "name": "holdMusic",
    "prompt": "You answer the phone.",
    "relay": {"welcomeGreeting": "Hello."},
    "tools": [{"name": "holdMusic", "description": "Play hold music.",
               "input_schema": LOOP_TOOL}],
}


async def _hold_music(ctx: Any, args: Any) -> dict[str, Any]:
    await ctx.send(Play("https://cdn.example.com/hold.mp3", loop=args["times"]))
    return {"playing": True}


async def _call(tmp_path: Path, times: int) -> tuple[list[dict[str, Any]], list[Any]]:
    settings = make_settings(tmp_path, CONFIG_DIR=str(one_use_case_config(tmp_path, USE_CASE)),
                             STACK_USE_CASE="holdMusic")
    llm = FakeLLM([tool_use("tu_1", "holdMusic", {"times": times}), words("Done.")])
    registry = ToolRegistry([ToolDefinition("holdMusic", _hold_music)])
    with trio.fail_after(20):
        async with running_server(settings, llm=llm, registry=registry) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("put me on hold")
                reply = await call.read_reply()
                await call.hang_up()
            await server.runtime.calls.wait_idle()
    history = server.runtime.calls.reports[-1].history
    assert history is not None
    results = [b["toolResult"] for m in history.messages for b in m["content"]
               if "toolResult" in b]
    return reply.frames, results


async def test_a_loop_over_twilios_maximum_is_the_tools_error(tmp_path: Path) -> None:
    frames, (result,) = await _call(tmp_path, 5000)
    assert [f for f in frames if f["type"] == "play"] == []
    assert result["status"] == "error"
    assert "Play.loop must be >= 0 and at most 1000" in result["content"][0]["text"]


async def test_twilios_maximum_still_plays(tmp_path: Path) -> None:
    frames, (result,) = await _call(tmp_path, 1000)
    assert [f for f in frames if f["type"] == "play"] == [
        {"type": "play", "source": "https://cdn.example.com/hold.mp3", "loop": 1000}]
    assert result.get("status") != "error"
