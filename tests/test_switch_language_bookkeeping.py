"""A ``switchLanguage`` tool call and the automatic switch (auto_language) keep one view of
the language Twilio speaks and hears. The tool's switch was not seen by the automatic one:
the caller's next prompt in the new language sent the same switch again, and a caller who
went back to the first language was answered in the tool's voice (the automatic switch
thought Twilio still spoke the first). Through the real server, counting ``language`` frames
a WebSocket caller receives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import yaml

from tests.fakes import FakeLLM, tool_use, words
from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from voiceagent.app.caller import RelayCall, Reply, open_call
from voiceagent.llm.base import LLMRequest

SWITCH_TOOL: dict[str, Any] = {
    "name": "switchLanguage", "description": "Switch the call's language.",
    "input_schema": {"type": "object", "required": ["language"], "properties": {
        "language": {"type": "string", "enum": ["en-US", "es-ES"]}}}}
MULTI = {"language": "en-US", "transcriptionLanguage": "multi",
         "transcriptionProvider": "Deepgram", "speechModel": "nova-3-general"}
FIXED = {"language": "en-US"}


def _settings(tmp_path: Path, relay: dict[str, Any]) -> Any:
    folder = tmp_path / "config"
    (folder / "usecases").mkdir(parents=True)
    (folder / "usecases" / "bilingual.yaml").write_text(yaml.safe_dump({
        "name": "bilingual", "prompt": "You answer the phone.", "relay": relay,
        "languages": [{"code": "en-US"}, {"code": "es-ES", "voice": "es-voice"}],
        "tools": [SWITCH_TOOL]}))
    return make_settings(tmp_path, CONFIG_DIR=str(folder), STACK_USE_CASE="bilingual")


async def _reply(call: RelayCall, text: str, lang: str) -> list[dict[str, Any]]:
    """The ``language`` frames sent between this prompt and the end of its reply."""
    await call.say(text, lang=lang)
    reply: Reply = await call.read_reply()
    assert reply.closed, reply.frames
    return [frame for frame in reply.frames if frame.get("type") == "language"]


async def _conversation(tmp_path: Path, relay: dict[str, Any], scripts: list[Any],
                        prompts: list[tuple[str, str]], requests: list[LLMRequest] | None = None
                        ) -> list[list[dict[str, Any]]]:
    llm = FakeLLM(scripts)
    with trio.fail_after(20):
        async with running_server(_settings(tmp_path, relay), llm=llm) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                frames = [await _reply(call, text, lang) for text, lang in prompts]
                await call.hang_up()
    if requests is not None:
        requests.extend(llm.requests)
    return frames


async def test_after_the_tool_switch_the_new_language_is_not_switched_to_again(
        tmp_path: Path) -> None:
    requests: list[LLMRequest] = []
    frames = await _conversation(
        tmp_path, MULTI,
        [tool_use("t1", "switchLanguage", {"language": "es-ES"}), words("Claro."),
         words("Abrimos a las nueve.")],
        [("can we speak Spanish?", "en"), ("¿a qué hora abren?", "es")], requests)
    assert frames == [[{"type": "language", "ttsLanguage": "es-ES"}], []]
    # the note from the next turn on: the answer to the tool is in the same turn, whose
    # system blocks stay as they were (the tool's result says the language meanwhile)
    assert [len(request.system) for request in requests[:2]] == [1, 1]
    assert "es-ES" in requests[2].system[-1]


async def test_after_the_tool_switch_going_back_switches_back(tmp_path: Path) -> None:
    requests: list[LLMRequest] = []
    frames = await _conversation(
        tmp_path, MULTI,
        [tool_use("t1", "switchLanguage", {"language": "es-ES"}), words("Claro."),
         words("We open at nine.")],
        [("can we speak Spanish?", "en"), ("sorry, what time do you open?", "en")], requests)
    assert frames == [[{"type": "language", "ttsLanguage": "es-ES"}],
                      [{"type": "language", "ttsLanguage": "en-US"}]]
    assert len(requests[-1].system) == 1        # back on the first language: no note


async def test_a_fixed_transcription_language_moves_with_the_tool(tmp_path: Path) -> None:
    """Without ``multi`` the tool switches both, and Twilio then reports prompts in the new
    transcription language: that is no change to switch to."""
    frames = await _conversation(
        tmp_path, FIXED,
        [tool_use("t1", "switchLanguage", {"language": "es-ES"}), words("Claro."),
         words("Abrimos a las nueve.")],
        [("can we speak Spanish?", "en-US"), ("¿a qué hora abren?", "es-ES")])
    assert frames == [[{"type": "language", "ttsLanguage": "es-ES",
                        "transcriptionLanguage": "es-ES"}], []]


async def test_the_tool_switching_to_the_language_spoken_sends_nothing(
        tmp_path: Path) -> None:
    """The caller's Spanish switched the voice; the model then calls the tool as well."""
    frames = await _conversation(
        tmp_path, MULTI,
        [tool_use("t1", "switchLanguage", {"language": "es-ES"}), words("Claro.")],
        [("¿hablan español?", "es")])
    assert frames == [[{"type": "language", "ttsLanguage": "es-ES"}]]


async def test_under_a_fixed_transcription_the_tool_still_moves_what_twilio_hears(
        tmp_path: Path) -> None:
    """The automatic switch moved the voice only; the tool's switch also moves the
    transcription, a real change, so it goes out whole."""
    frames = await _conversation(
        tmp_path, FIXED,
        [words("Hola."), tool_use("t1", "switchLanguage", {"language": "es-ES"}),
         words("Claro.")],
        [("hola", "es-ES"), ("en español, por favor", "es-ES")])
    assert frames == [[{"type": "language", "ttsLanguage": "es-ES"}],
                      [{"type": "language", "ttsLanguage": "es-ES",
                        "transcriptionLanguage": "es-ES"}]]
