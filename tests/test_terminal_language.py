"""``voiceagent call`` (and the demo) could not speak another language: every prompt reported
the language Twilio hears, so a multi-language use case's automatic switch could not be
tried from the terminal. ``/lang es`` sets the ``lang`` the caller's prompts report, as
Twilio's transcription would for a caller speaking it; ``/lang`` alone goes back."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.server_harness import AUTH_TOKEN, make_settings, one_use_case_config, running_server
from voiceagent.app.caller import open_call
from voiceagent.app.terminal import LANG_USAGE, Transcript, scripted

EN_FALLBACK, ES_FALLBACK = "Sorry, I didn't get that.", "Perdone, no le he entendido."
USE_CASE = {
    "name": "shop", "prompt": "You answer the phone for a shop.",
    "relay": {"language": "en-US", "transcriptionLanguage": "multi"},
    "languages": [{"code": "en-US"}, {"code": "es-US", "scripted_fallback": ES_FALLBACK}],
    "auto_language": True, "scripted": {"fallback": EN_FALLBACK}}


async def test_lang_speaks_another_language_and_the_agent_answers_in_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = one_use_case_config(tmp_path, USE_CASE)
    settings = make_settings(tmp_path, CONFIG_DIR=config, STACK_USE_CASE="shop")
    with trio.fail_after(20):
        async with running_server(settings) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await scripted(call, ["blah", "/lang español", "blah", "/lang es", "blah",
                                      "/lang en-US", "blah", "/lang"], Transcript())
    out = capsys.readouterr().out.splitlines()
    at = out.index("caller: blah")
    assert out[at:] == [
        "caller: blah", f"agent: {EN_FALLBACK}",
        "caller: /lang español", LANG_USAGE,             # nothing changed
        "caller: blah", f"agent: {EN_FALLBACK}",
        "caller: /lang es", "[your words now report lang es]",
        "caller: blah", "[language tts=es-US stt=None]", f"agent: {ES_FALLBACK}",
        "caller: /lang en-US", "[your words now report lang en-US]",
        "caller: blah", "[language tts=en-US stt=None]", f"agent: {EN_FALLBACK}",
        # back to what Twilio hears: under multi, the language it now speaks
        "caller: /lang", "[your words now report lang en]"], out
