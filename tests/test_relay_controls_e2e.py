"""Today's ConversationRelay through the real server and a WebSocket caller: automatic
language, relay_updates rules (config and hints), reply controls on text frames, the
call-control tools (play, sendDigits, hints), and info events."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import trio

from tests.fakes import FakeLLM, tool_use, words
from tests.server_harness import AUTH_TOKEN, make_settings, one_use_case_config, running_server
from voiceagent.app.caller import RelayCall, Reply, open_call, post_form
from voiceagent.llm.base import LLMRequest

USE_CASE: dict[str, Any] = {
    "name": "relayControls",
    "prompt": "You answer the phone for Test Pizza.",
    "relay": {"welcomeGreeting": "Hello.", "language": "en-US",
              "transcriptionLanguage": "multi", "ttsProvider": "ElevenLabs",
              "transcriptionProvider": "Deepgram", "speechModel": "nova-3-general",
              "events": "speaker-events tokens-played config-updated",
              "dtmfDetection": True},
    "languages": [
        {"code": "en-US", "voice": "UgBBYS2sOqTuMpoF3BR0"},
        {"code": "es-ES", "voice": "es-voice-1",
         "failover": {"ttsProvider": "Google", "voice": "es-ES-Neural2-A"}}],
    "tools": [
        {"name": "PlaceOrderFunction", "description": "Place the order.",
         "reply": {"interruptible": False}},
        {"name": "playAudio", "description": "Play an audio file to the caller.",
         "input_schema": {"type": "object", "required": ["url"],
                          "properties": {"url": {"type": "string"},
                                         "loop": {"type": "integer"}}}},
        {"name": "sendDigits", "description": "Press keys on the line.",
         "input_schema": {"type": "object", "required": ["digits"],
                          "properties": {"digits": {"type": "string"}}}},
        {"name": "setSpeechHints", "description": "Words to listen for.",
         "input_schema": {"type": "object", "required": ["phrases"],
                          "properties": {"phrases": {"type": "array",
                                                     "items": {"type": "string"}}}}}],
    "relay_updates": [
        {"when": {"tool": "PlaceOrderFunction"}, "hints": ["margherita", "pepperoni"]},
        {"when": {"agent_says": "card number"},
         "languages": [{"code": "en-US", "speechModel": "nova-3-phonecall"}],
         "config": {"interruptible": "speech"}},
        {"when": {"caller_says": "\\bslowly\\b"}, "config": {"speechTimeout": "3000"},
         "once": False}],
    "dtmf": {"handlers": {"9": {"reply": "This call may be recorded.",
                                "interruptible": False}}},
}


def _config_dir(tmp_path: Path, **changes: Any) -> Path:
    return one_use_case_config(tmp_path, {**USE_CASE, **changes}, "relayControls.yaml")


def _settings(tmp_path: Path, **changes: Any) -> Any:
    return make_settings(tmp_path, CONFIG_DIR=str(_config_dir(tmp_path, **changes)),
                         STACK_USE_CASE="relayControls")


def _of(reply: Reply, kind: str) -> list[dict[str, Any]]:
    return [frame for frame in reply.frames if frame.get("type") == kind]


async def _frames_until_closed(call: RelayCall) -> Reply:
    reply = await call.read_reply()
    assert reply.closed, reply.frames
    return reply


async def test_the_caller_switching_language_switches_tts_and_the_model(
        tmp_path: Path) -> None:
    llm = FakeLLM([words("Hello, how can I help?"), words("Claro, abrimos a las nueve."),
                   words("Claro.")])
    with trio.fail_after(20):
        async with running_server(_settings(tmp_path), llm=llm) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("what time do you open?", lang="en")
                first = await _frames_until_closed(call)
                await call.say("¿a qué hora abren?", lang="es")
                second = await _frames_until_closed(call)
                await call.say("gracias", lang="es")
                third = await _frames_until_closed(call)
                await call.hang_up()
    assert _of(first, "language") == []                      # en is the first language
    assert _of(second, "language") == [{"type": "language", "ttsLanguage": "es-ES"}]
    assert second.frames[0]["type"] == "language"            # before the first word
    assert _of(third, "language") == []                      # switched once
    systems = [request.system for request in llm.requests]
    assert len(systems[0]) == 1
    assert "es-ES" in systems[1][-1]
    assert "es-ES" in systems[2][-1]


async def test_auto_language_off_keeps_the_voice(tmp_path: Path) -> None:
    llm = FakeLLM([words("Hola.")])
    with trio.fail_after(20):
        async with running_server(_settings(tmp_path, auto_language=False), llm=llm) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("hola", lang="es")
                reply = await _frames_until_closed(call)
                await call.hang_up()
    assert _of(reply, "language") == []
    assert len(llm.requests[0].system) == 1


def _order_script(request: LLMRequest) -> list[Any]:
    said = request.messages[-1]["content"]
    if any("toolResult" in block for block in said):
        return words("Your order is placed. What is your card number?")
    return tool_use("t1", "PlaceOrderFunction", {}, before="One moment.")


async def test_rules_send_hints_and_config_and_reply_controls_mark_frames(
        tmp_path: Path) -> None:
    llm = FakeLLM(_order_script)
    with trio.fail_after(20):
        async with running_server(_settings(tmp_path), llm=llm) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("I'd like a pizza, please read it slowly")
                reply = await _frames_until_closed(call)
                after = await call.receive()           # agent_says fires after the reply
                await call.hang_up()
    kinds = [frame["type"] for frame in reply.frames]
    assert kinds[0] == "config"                                 # caller_says, before the turn
    assert reply.frames[0] == {"type": "config", "speechTimeout": "3000"}
    hints = _of(reply, "hints")
    assert hints == [{"type": "hints", "hints": "margherita,pepperoni"}]
    assert kinds.index("hints") < max(i for i, k in enumerate(kinds) if k == "text")
    spoken = [frame for frame in _of(reply, "text") if frame["token"]]
    before_tool = [f for f in spoken if "moment" in f["token"]]
    after_tool = [f for f in spoken if "order" in f["token"] or "card" in f["token"]]
    assert all("interruptible" not in f for f in before_tool)
    assert after_tool
    assert all(f["interruptible"] is False for f in after_tool)
    assert after == {"type": "config", "interruptible": "speech",
                     "languages": [{"code": "en-US", "speechModel": "nova-3-phonecall"}]}


async def test_tools_play_press_keys_and_set_hints(tmp_path: Path) -> None:
    llm = FakeLLM([
        tool_use("a", "playAudio", {"url": "https://example.com/hold.mp3", "loop": 2}),
        tool_use("b", "sendDigits", {"digits": "1w23#"}),
        tool_use("c", "setSpeechHints", {"phrases": ["calzone", "stromboli"]}),
        tool_use("d", "playAudio", {"url": "http://example.com/insecure.mp3"}),
        words("Done.")])
    with trio.fail_after(20):
        async with running_server(_settings(tmp_path), llm=llm) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("please hold")
                reply = await _frames_until_closed(call)
                await call.hang_up()
    assert _of(reply, "play") == [{"type": "play", "source": "https://example.com/hold.mp3",
                                   "loop": 2, "interruptible": True}]
    assert _of(reply, "sendDigits") == [{"type": "sendDigits", "digits": "1w23#"}]
    assert _of(reply, "hints") == [{"type": "hints", "hints": "calzone,stromboli"}]
    last_result = llm.requests[-1].messages[-1]["content"][0]["toolResult"]
    assert last_result["status"] == "error"
    assert "https://" in last_result["content"][0]["text"]


async def test_a_dtmf_reply_can_be_made_uninterruptible(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_server(_settings(tmp_path), llm=FakeLLM([words("x")])) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.dtmf("9")
                reply = await _frames_until_closed(call)
                await call.hang_up()
    spoken = [frame for frame in _of(reply, "text") if frame["token"]]
    assert "".join(f["token"] for f in spoken) == "This call may be recorded."
    assert all(f["interruptible"] is False for f in spoken)


async def test_info_events_are_taken_and_unknown_ones_counted(tmp_path: Path) -> None:
    llm = FakeLLM([words("We open at nine and close at ten.", gap_s=0.5)])
    with trio.fail_after(20):
        async with running_server(_settings(tmp_path), llm=llm) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("hours?")
                while "open at" not in call.heard:          # three words are out
                    await call.receive()
                await call.send_json({"type": "info", "name": "tokensPlayed",
                                      "value": "We open"})
                await call.send_json({"type": "info", "name": "configUpdated",
                                      "value": {"ttsProvider": "Google"}})
                await call.send_json({"type": "info", "name": "somethingNew", "value": "1"})
                await call.send_json({"type": "interrupt", "durationUntilInterruptMs": 700})
                await call.hang_up()
            await server.runtime.calls.wait_idle()
            report = server.runtime.calls.reports[-1]
    assert report.frames.other_info == {"somethingNew": 1}
    assert report.history is not None
    assistant = [m for m in report.history.messages if m["role"] == "assistant"]
    assert assistant[-1]["content"][0]["text"] == "We open"


async def test_the_webhook_renders_builder_attributes_languages_and_failover(
        tmp_path: Path) -> None:
    relay = {**USE_CASE["relay"], "elevenlabsLanguageTextNormalization": True,
             "turnDetection": True}
    settings = _settings(tmp_path, relay=relay, relay_extra={"eotThreshold": 0.7})
    form = {"CallSid": "CA" + "1" * 32, "AccountSid": "AC" + "2" * 32, "From": "+15555550100",
            "To": "+15555550199", "CallStatus": "ringing", "Direction": "inbound"}
    with trio.fail_after(20):
        async with running_server(settings, llm=FakeLLM([words("x")])) as server:
            document = await post_form(server.url + "/twiml", form, AUTH_TOKEN)
    element = ET.fromstring(document).find("Connect/ConversationRelay")
    assert element is not None
    assert element.attrib["elevenlabsLanguageTextNormalization"] == "true"
    assert element.attrib["turnDetection"] == "true"
    assert element.attrib["eotThreshold"] == "0.7"
    assert [lang.attrib for lang in element.findall("Language")] == [
        {"code": "en-US", "voice": "UgBBYS2sOqTuMpoF3BR0"},
        {"code": "es-ES", "voice": "es-voice-1"}]
    (failover,) = element.findall("Failover")
    assert [lang.attrib for lang in failover.findall("Language")] == [
        {"code": "es-ES", "ttsProvider": "Google", "voice": "es-ES-Neural2-A"}]
