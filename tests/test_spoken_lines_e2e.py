"""voiceagent's own lines (apologies, the re-prompt, the goodbyes) in the caller's language,
through the real server, the real Bedrock backend against the local endpoint (refusing on
purpose) and a real WebSocket caller, on trio's virtual clock moved by the test alone.

They were English constants: a Spanish-only use case had its caller hear "Sorry, I'm having
a little trouble right now" and "Are you still there?" read by a Spanish voice, and so did a
caller who had switched to Spanish. A use case's ``lines`` (top level, and per ``languages``
entry) give its words; the line said is the one of the language Twilio speaks then. Found by
review (s21).
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from actors.call_timers import REPROMPT
from actors.model_trouble import CANNOT_GO_ON
from actors.turn import APOLOGY_SILENT
from tests.bedrock_clock import llm_on_virtual_clock
from tests.fake_bedrock import (
    FakeBedrock,
    HttpError,
    RecordedRequest,
    Reply,
    message_end,
    message_start,
    stream_reply,
    text_reply,
    tool_events,
)
from tests.server_harness import AUTH_TOKEN, make_settings, one_use_case_config, running_server
from voiceagent.app.caller import RelayCall, open_call
from voiceagent.llm.bedrock import BedrockLLM

pytestmark = pytest.mark.timeout(60)    # virtual time below; this bounds the real waits

IDLE_S = 8.0                            # IDLE_REPROMPT_S
SPANISH = {"trouble": "Perdone, tengo un pequeño problema. ¿Me lo puede repetir?",
           "reprompt": "¿Sigue ahí?",
           "cannot_go_on": "Lo siento, ahora no podemos atender su llamada. Llame más tarde."}
VOICE = {"ttsProvider": "Google", "transcriptionProvider": "Google",
         "speechModel": "telephony"}
SWITCH = {"name": "switchLanguage", "description": "Switch the language of the call.",
          "input_schema": {"type": "object", "required": ["language"], "properties": {
              "language": {"type": "string", "enum": ["en-US", "es-US"]}}}}
CLARO = "Claro, hablemos en español."


def refused(request: RecordedRequest) -> Reply:
    return HttpError(400, "ValidationException", "scripted refusal")


def switches_to_spanish(request: RecordedRequest) -> Reply:
    """The model calls switchLanguage, then answers in Spanish after its result."""
    if "toolResult" in request.body["messages"][-1]["content"][0]:
        return text_reply([CLARO])
    return stream_reply(message_start(), tool_events(
        0, "tu_switch", "switchLanguage", ['{"language": "es-US"}']), message_end("tool_use"))


@pytest.fixture
async def llm(fake_bedrock: FakeBedrock, mock_clock: trio.testing.MockClock
              ) -> AsyncIterator[BedrockLLM]:
    async with llm_on_virtual_clock(mock_clock) as backend:
        mock_clock.autojump_threshold = math.inf
        yield backend


class _Call:
    """A call to ``use_case``: each turn's words, and the re-prompt after ``IDLE_S``."""

    def __init__(self, call: RelayCall, fake: FakeBedrock,
                 mock_clock: trio.testing.MockClock) -> None:
        self.call, self.fake, self.clock = call, fake, mock_clock
        self.frames: list[dict[str, Any]] = []

    async def turn(self, responder: Callable[[RecordedRequest], Reply]) -> str:
        self.fake.responder = responder
        self.clock.jump(1.0)
        await self.call.say("hola")
        return await self._reply()

    async def silence(self) -> str:
        await trio.testing.wait_all_tasks_blocked()
        self.clock.jump(IDLE_S + 0.1)
        return await self._reply()

    async def _reply(self) -> str:
        reply = await self.call.read_reply()
        self.frames.extend(reply.frames)
        if reply.ended is None and reply.closed:
            await trio.testing.wait_all_tasks_blocked()
        return reply.text


async def _conversation(tmp_path: Path, llm: BedrockLLM, fake: FakeBedrock,
                        mock_clock: trio.testing.MockClock, use_case: dict[str, Any],
                        steps: list[Callable[[RecordedRequest], Reply] | None], *,
                        ends: bool = False) -> tuple[list[str], list[dict[str, Any]]]:
    """What the caller heard at each step (a turn the endpoint answers so, or ``None``: the
    caller says nothing until the re-prompt), and every frame (with the ``end`` that follows
    the last words, when the call ``ends``)."""
    folder = one_use_case_config(tmp_path, {
        "model": "us.amazon.nova-lite-v1:0", "prompt": "You take orders for a taqueria.",
        **use_case})
    settings = make_settings(tmp_path, CONFIG_DIR=str(folder), STACK_USE_CASE=use_case["name"],
                             LLM="bedrock", AWS_REGION="us-east-1", IDLE_REPROMPT_S=str(IDLE_S))
    heard: list[str] = []
    async with running_server(settings, llm=llm) as server:
        async with open_call(server.url, auth_token=AUTH_TOKEN) as relay:
            call = _Call(relay, fake, mock_clock)
            for step in steps:
                heard.append(await (call.silence() if step is None else call.turn(step)))
            if ends:
                call.frames.extend((await relay.read_reply()).frames)
            await relay.hang_up()
        await server.runtime.calls.wait_idle()
    return heard, call.frames


async def test_a_spanish_only_use_case_says_its_own_lines(
        tmp_path: Path, fake_bedrock: FakeBedrock, llm: BedrockLLM,
        mock_clock: trio.testing.MockClock) -> None:
    """The apology, the re-prompt and the last words are the use case's; the call still ends
    at the third failed turn in a row."""
    use_case = {"name": "taqueria", "relay": {"language": "es-US", "voice": "es-US-Neural2-A",
                                              **VOICE}, "lines": SPANISH}
    heard, frames = await _conversation(tmp_path, llm, fake_bedrock, mock_clock, use_case,
                                        [refused, None, refused, refused], ends=True)
    assert heard == [SPANISH["trouble"], SPANISH["reprompt"], SPANISH["trouble"],
                     SPANISH["cannot_go_on"]]
    ends = [f for f in frames if f["type"] == "end"]
    assert [json.loads(f["handoffData"]) for f in ends] == [{"reasonCode": "model-unavailable"}]
    assert fake_bedrock.violations == []


async def test_without_lines_the_english_defaults_are_said_as_before(
        tmp_path: Path, fake_bedrock: FakeBedrock, llm: BedrockLLM,
        mock_clock: trio.testing.MockClock) -> None:
    use_case = {"name": "taqueria", "relay": {"language": "es-US", "voice": "es-US-Neural2-A",
                                              **VOICE}}
    heard, _ = await _conversation(tmp_path, llm, fake_bedrock, mock_clock, use_case,
                                   [refused, None, refused, refused])
    assert heard == [APOLOGY_SILENT, REPROMPT, APOLOGY_SILENT, CANNOT_GO_ON]


async def test_after_switch_language_the_spanish_entry_s_lines_are_said(
        tmp_path: Path, fake_bedrock: FakeBedrock, llm: BedrockLLM,
        mock_clock: trio.testing.MockClock) -> None:
    """English first (the entry for en-US has no lines: the defaults), then switchLanguage to
    es-US: the apology and the re-prompt are es-US's from the next line on; the top-level
    ``reprompt`` stands for a language whose entry leaves it out."""
    use_case = {
        "name": "taqueria", "relay": {"language": "en-US", "voice": "en-US-Journey-O", **VOICE},
        "auto_language": False, "tools": [SWITCH], "lines": {"reprompt": "Hello, anyone?"},
        "languages": [{"code": "en-US"},
                      {"code": "es-US", "voice": "es-US-Neural2-A", "lines": {
                          "trouble": SPANISH["trouble"], "reprompt": SPANISH["reprompt"]}}]}
    heard, frames = await _conversation(tmp_path, llm, fake_bedrock, mock_clock, use_case,
                                        [refused, None, switches_to_spanish, refused, None])
    assert heard == [APOLOGY_SILENT, "Hello, anyone?", CLARO, SPANISH["trouble"],
                     SPANISH["reprompt"]]
    assert [f for f in frames if f["type"] == "language"] == [
        {"type": "language", "ttsLanguage": "es-US", "transcriptionLanguage": "es-US"}]
