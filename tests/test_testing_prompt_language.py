"""``Conversation.say`` reports the language Twilio hears, as Twilio's prompts do: after a
switch to es-US, the next prompt is es-US, not a fixed en-US that turned an auto_language use
case straight back to English (a two-language project's tests could not test its second
language without ``auto_language: false``). Under ``multi``, the primary subtag of the
language spoken. Found by review (s22, a newcomer's two-language agent).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from tests.server_harness import one_use_case_config
from voiceagent.app.testing import agent_server

EN_FALLBACK, ES_FALLBACK = "Sorry, I didn't get that.", "Perdone, no le he entendido."
SWITCH = {"name": "switchLanguage", "description": "Switch the call's language.",
          "input_schema": {"type": "object", "properties": {
              "language": {"type": "string", "enum": ["en-US", "es-US"]}}}}

pytestmark = pytest.mark.timeout(60)


def use_case(relay: dict[str, Any]) -> dict[str, Any]:
    return {"name": "shop", "prompt": "You answer the phone for a shop.", "relay": relay,
            "tools": [SWITCH],
            "languages": [{"code": "en-US"},
                          {"code": "es-US", "scripted_fallback": ES_FALLBACK}],
            "scripted": {"fallback": EN_FALLBACK, "rules": [
                {"match": r"\bespañol\b",
                 "tool": {"name": "switchLanguage", "input": {"language": "es-US"}},
                 "then": "Claro."}]}}


@pytest.mark.parametrize("relay", [
    {"language": "en-US"},
    {"language": "en-US", "transcriptionLanguage": "multi"}])
async def test_after_a_switch_the_caller_is_heard_in_the_new_language(
        tmp_path: Path, relay: dict[str, Any]) -> None:
    config = one_use_case_config(tmp_path, use_case(relay))
    with trio.fail_after(30):
        async with agent_server(config, use_case="shop", data_dir=tmp_path) as agent:
            async with agent.call() as call:
                before = await call.say("blah")
                await call.say("¿Hablan español?")
                after = await call.say("blah blah")
                told = await call.say("blah", lang="en-US")
    assert before.text == EN_FALLBACK
    assert after.text == ES_FALLBACK
    assert not [f for f in after.frames if f.get("type") == "language"]
    assert told.text == EN_FALLBACK            # a given lang is what Twilio reports
