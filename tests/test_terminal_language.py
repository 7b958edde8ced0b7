"""``voiceagent call`` (and the demo) could not speak another language: every prompt reported
the language Twilio hears, so a multi-language use case's automatic switch could not be
tried from the terminal. ``/lang es`` sets the ``lang`` the caller's prompts report, as
Twilio's transcription would for a caller speaking it; ``/lang`` alone goes back."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.server_harness import AUTH_TOKEN, make_settings, one_use_case_config, running_server
from voiceagent.app import cli
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


@pytest.mark.timeout(60)        # cli.main runs in a thread, which fail_after cannot stop
async def test_call_lang_speaks_the_language_from_the_first_word(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--lang``: without it, trying a use case that switches on the caller's language
    took a first prompt in the language Twilio hears (and ``--say "/lang es"`` first)."""
    config = one_use_case_config(tmp_path, USE_CASE)
    settings = make_settings(tmp_path, CONFIG_DIR=config, STACK_USE_CASE="shop")
    with trio.fail_after(20):
        async with running_server(settings) as server:
            # `voiceagent call` runs its own trio loop: in a thread of its own, as in a shell
            code = await trio.to_thread.run_sync(cli.main, [
                "call", server.url, "--auth-token", AUTH_TOKEN, "--lang", "es",
                "--say", "blah", "--say", "/lang", "--say", "blah"])
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    at = out.index("caller: blah")
    assert out[at:] == [
        "caller: blah", "[language tts=es-US stt=None]", f"agent: {ES_FALLBACK}",
        "caller: /lang", "[your words now report lang es]",      # what Twilio now speaks
        "caller: blah", f"agent: {ES_FALLBACK}"], out


@pytest.mark.timeout(60)        # the demo's server runs in this process (main: trio.run)
def test_demo_lang_speaks_the_language_from_the_first_word(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CONFIG_DIR", "TIME_ZONE"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["demo", "--lang", "es-US", "--say", "blah"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:3] == ["caller: blah", "[language tts=es-US stt=None]"], out


@pytest.mark.parametrize("command", ["demo", "call"])
@pytest.mark.parametrize("code", ["español", "es US", "e", ""])
def test_a_lang_that_is_no_language_code_is_refused_with_the_form_to_use(
        command: str, code: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main([command, "--lang", code, "--say", "hi"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert f"argument --lang: {code!r} is not a language code" in error
    assert "(e.g. es-US, en-GB, or es under transcriptionLanguage multi)" in error


def test_demo_lang_with_web_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """The browser is the caller under --web: a --lang would be silently ignored."""
    assert cli.main(["demo", "--web", "--lang", "es"]) == 2
    assert "--lang sets the language of the caller at this terminal" in capsys.readouterr().err
