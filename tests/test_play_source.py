"""A ``play`` whose source Twilio cannot fetch: Twilio drops the frame (64107) with no word
to us and the caller hears nothing. A tool that builds the URL from the model's words sent
``javascript:``, a relative path, a file:// URL or a page of text as it was; now ``Play``
refuses it when it is made, and the tool's error tells the model what was wrong."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from tests.call_harness import open_test_call, plain_use_case
from tests.fakes import FakeLLM, tool_use, words
from voiceagent.relay.outbound import MAX_PLAY_SOURCE, Play
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry, default_registry

TOO_LONG = "https://cdn.example.com/" + "a" * MAX_PLAY_SOURCE
URL_TOOL = {"type": "object", "required": ["url"], "properties": {"url": {"type": "string"}}}


@pytest.mark.parametrize(("source", "problem"), [
    ("javascript:alert(1)", "absolute http:// or https:// URL .* not javascript:"),
    ("file:///etc/hosts", "not file:"),
    ("data:audio/mpeg;base64,AAAA", "not data:"),
    ("/static/hold.mp3", "not a relative one"),
    ("//cdn.example.com/hold.mp3", "not a relative one"),
    ("https:///hold.mp3", "must name a host"),
    ("https://cdn.example.com:99999/hold.mp3", "not a valid URL"),
    ("http://[::1/hold.mp3", "not a valid URL"),
    ("https://cdn.example.com/on hold.mp3", "spaces or control characters"),
    ("https://cdn.example.com/hold.mp3\n", "spaces or control characters"),
    (TOO_LONG, f"is {len(TOO_LONG)} characters; at most {MAX_PLAY_SOURCE}"),
])
def test_a_source_twilio_cannot_fetch_is_refused_saying_why(source: str, problem: str) -> None:
    with pytest.raises(ValueError, match=rf"^Play\.source .*{problem}"):
        Play(source)


def test_a_source_that_is_not_text_is_refused() -> None:
    with pytest.raises(TypeError, match=r"Play\.source must be a URL string, not bytes"):
        Play(b"https://cdn.example.com/hold.mp3")  # type: ignore[arg-type]


@pytest.mark.parametrize("source", [
    "https://cdn.example.com/hold.mp3",
    "http://cdn.example.com/hold.mp3",                      # Twilio fetches http too
    "HTTPS://CDN.example.com:8443/hold.mp3?v=2#t",
    "https://user:secret@cdn.example.com/hold.mp3",
    "https://bücher.example/ä.mp3",
    "https://cdn.example.com/" + "a" * (MAX_PLAY_SOURCE - 24),
])
def test_web_urls_still_play(source: str) -> None:
    assert Play(source).source == source


async def test_a_tools_bad_play_url_is_its_error_and_nothing_goes_to_twilio(
        autojump_clock: Any) -> None:
    async def announce(ctx: Any, args: Any) -> dict[str, Any]:
        await ctx.send(Play(args["url"]))
        return {"playing": True}

    llm = FakeLLM([tool_use("tu_1", "announce", {"url": "javascript:alert(1)"}),
                   words("Sorry.")])
    use_case = plain_use_case(tools=[{"name": "announce", "description": "Play a clip.",
                                      "input_schema": URL_TOOL}])
    async with open_test_call(llm, use_case=use_case,
                              registry=ToolRegistry([ToolDefinition("announce", announce)])
                              ) as call:
        call.say("play the jingle")
        with trio.fail_after(10):
            text, frames = await call.reply()
    assert text == "Sorry."
    assert [f for f in frames if f["type"] == "play"] == []
    (result,) = [b["toolResult"] for m in call.history for b in m["content"]
                 if "toolResult" in b]
    assert result["status"] == "error"
    assert result["content"][0]["text"].startswith(
        "failed: ValueError: Play.source must be an absolute http:// or https:// URL")


async def test_play_audio_refuses_a_url_too_long_to_be_an_address(autojump_clock: Any) -> None:
    llm = FakeLLM([tool_use("tu_1", "playAudio", {"url": TOO_LONG}), words("Sorry.")])
    use_case = plain_use_case(tools=[{"name": "playAudio", "description": "Play audio.",
                                      "input_schema": URL_TOOL}])
    async with open_test_call(llm, use_case=use_case, registry=default_registry()) as call:
        call.say("play the jingle")
        with trio.fail_after(10):
            _, frames = await call.reply()
    assert [f for f in frames if f["type"] == "play"] == []
    (result,) = [b["toolResult"] for m in call.history for b in m["content"]
                 if "toolResult" in b]
    assert result["content"] == [{"text": f"failed: ToolInputError: url: is {len(TOO_LONG)} "
                                          f"characters; at most {MAX_PLAY_SOURCE}: the "
                                          "address of an audio file, not its content"}]
