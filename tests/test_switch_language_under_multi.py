"""The switchLanguage tool under ``multi`` transcription switches the voice only: a fixed
transcription language would stop Deepgram hearing the caller's other languages."""

from __future__ import annotations

import logging
from typing import Any, cast

import pytest
import trio

from voiceagent.relay.outbound import Language
from voiceagent.settings import Settings
from voiceagent.store.base import Store
from voiceagent.tools import ToolContext, ToolLog, ToolMessage
from voiceagent.tools.registry import default_registry
from voiceagent.usecases import UseCase


def _use_case(relay: dict[str, Any]) -> UseCase:
    return UseCase.model_validate({
        "name": "bilingual", "prompt": "Hi.", "relay": relay,
        "languages": [{"code": "en-US"}, {"code": "es-US"}],
        "tools": [{"name": "switchLanguage", "description": "Switch language.",
                   "input_schema": {"type": "object", "properties": {
                       "language": {"type": "string", "enum": ["en-US", "es-US"]}},
                       "required": ["language"]}}]})


async def _switch(use_case: UseCase, code: str) -> list[ToolMessage]:
    sent: list[ToolMessage] = []

    async def record(message: ToolMessage) -> bool:
        sent.append(message)
        return True

    ctx = ToolContext(call_sid="CA" + "0" * 32, caller="", called="", use_case=use_case,
                      tool_name="switchLanguage", tool_use_id="tooluse_1",
                      store=cast(Store, None), settings=Settings.model_validate({}),
                      log=ToolLog(logging.getLogger("test"), {}), _sender=record)
    definition = default_registry().get("switchLanguage")
    assert definition is not None
    with trio.fail_after(5):
        result = await definition.call(ctx, {"language": code},
                                       threads=trio.CapacityLimiter(1))
    assert result == {"status": "switched", "language": code,
                      "instruction": f"From now on, reply only in the language {code}."}
    return sent


@pytest.mark.parametrize("relay", [
    {"language": "en-US", "transcriptionLanguage": "multi"},
    {"language": "multi"},
    {"language": "en-US", "transcriptionLanguage": "MULTI"},
])
async def test_multi_transcription_keeps_hearing_every_language(relay: dict[str, Any]) -> None:
    assert await _switch(_use_case(relay), "es-US") == [Language(tts_language="es-US")]


@pytest.mark.parametrize("relay", [
    {"language": "en-US"},
    {},
    {"language": "multi", "transcriptionLanguage": "en-US"},   # the specific one wins
])
async def test_a_fixed_transcription_language_switches_with_the_voice(
        relay: dict[str, Any]) -> None:
    assert await _switch(_use_case(relay), "es-US") == [
        Language(tts_language="es-US", transcription_language="es-US")]
