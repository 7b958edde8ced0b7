"""The use case's fixed words in the language the call speaks, through the real server, the
offline model and a real WebSocket caller: ``/action``'s ``<Say>`` (the handoff's message,
"no one is available", the goodbye, the apology for a refused reconnect), a key's reply and
the scripted fallback.

They were one text each, and ``/action``'s were English constants: a caller who had switched
to Spanish heard the handoff's failure, and the goodbye after the agent hung up, in English,
read by Twilio's en-US voice. Found by review (s22).
"""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from actors.model_trouble import CANNOT_GO_ON
from tests.server_harness import one_use_case_config
from voiceagent.app.session_end import GOODBYE, NO_AGENT
from voiceagent.app.sessions import MAX_RECONNECTS
from voiceagent.app.testing import AgentServer, Conversation, agent_server

pytestmark = pytest.mark.timeout(60)

SPANISH = {"goodbye": "Gracias por llamar. Adiós.",
           "no_agent": "Lo siento, ahora no hay nadie disponible. Llame más tarde.",
           "cannot_go_on": "Lo siento, ahora no podemos atender su llamada."}
PASO = "Le paso con una persona de nuestro equipo."
HOURS, HORAS = "We open at eleven.", "Abrimos a las once."
FALLBACK, PERDONE = "Sorry, I did not get that.", "Perdone, no le he entendido."
TOOLS = [{"name": "liveAgentHandoff", "description": "Hands the caller to a person.",
          "input_schema": {"type": "object", "properties": {
              "reason_code": {"type": "string"}, "summary": {"type": "string"}}}},
         {"name": "endCall", "description": "Hangs up."}]
RULES = [{"match": r"\bpersona?\b",
          "tool": {"name": "liveAgentHandoff",
                   "input": {"reason_code": "user-requested", "summary": "Wants a person."}}},
         {"match": r"\b(adi[oó]s|bye)\b", "tool": {"name": "endCall"}}]


def _use_case(*, words: bool = True, **changes: Any) -> dict[str, Any]:
    """English first, Spanish declared (the switch follows the caller); with ``words``, the
    Spanish entry has its own for everything said in place of the model."""
    spanish: dict[str, Any] = {"code": "es-US"}
    if words:
        spanish |= {"lines": SPANISH, "handoff_message": PASO, "scripted_fallback": PERDONE,
                    "dtmf_replies": {"1": HORAS}}
    return {"name": "cantina", "prompt": "You answer for a cantina.",
            "relay": {"language": "en-US", "dtmfDetection": True},
            "languages": [{"code": "en-US"}, spanish], "tools": TOOLS,
            "dtmf": {"handlers": {"1": {"reply": HOURS}}},
            "scripted": {"fallback": FALLBACK, "rules": RULES}, **changes}


@asynccontextmanager
async def _server(tmp_path: Path, use_case: dict[str, Any]) -> AsyncIterator[AgentServer]:
    folder = one_use_case_config(tmp_path, use_case)
    async with agent_server(folder, use_case=use_case["name"], data_dir=tmp_path) as agent:
        yield agent


async def _say(call: Conversation, text: str, lang: str) -> tuple[str, dict[str, Any] | None]:
    """The caller's words in ``lang``: what the agent said back, and its ``end``, if any."""
    relay = call.relay
    await relay.say(text, lang=lang)
    tokens: list[str] = []
    while (frame := await relay.receive()) is not None:
        if frame["type"] == "end":
            return "".join(tokens), frame
        if frame["type"] == "text":
            tokens.append(str(frame.get("token", "")))
            if frame.get("last"):
                return "".join(tokens), None
    return "".join(tokens), None


async def _ended(agent: AgentServer, tmp_path: Path, lang: str, words: str
                 ) -> tuple[dict[str, Any], ET.Element]:
    """A call whose caller (in ``lang``) gets the agent to end the session: its ``end``
    frame's handoff data, and ``/action``'s answer to it."""
    async with agent.call() as call:
        _, end = await _say(call, words, lang)
        assert end is not None
    handoff = str(end.get("handoffData", ""))
    body = await agent.post("/action", {
        "CallSid": call.call_sid, "SessionId": "VX1", "SessionStatus": "ended",
        "CallStatus": "in-progress", "HandoffData": handoff})
    return (json.loads(handoff) if handoff else {}), ET.fromstring(body)


def _says(root: ET.Element) -> list[tuple[str, str | None, dict[str, str]]]:
    return [(child.tag, child.text, dict(child.attrib)) for child in root]


async def test_a_spanish_call_s_failed_handoff_is_answered_in_spanish(tmp_path: Path) -> None:
    """No handoff target: "no one is available", in the language the call last spoke."""
    with trio.fail_after(40):
        async with _server(tmp_path, _use_case()) as agent:
            data, spanish = await _ended(agent, tmp_path, "es-US", "quiero una persona")
            _, english = await _ended(agent, tmp_path, "en-US", "I want a person")
    assert data["ttsLanguage"] == "es-US"
    assert data["useCase"] == "cantina"
    assert data["handoff"] is True                       # the tool's own keys kept
    assert _says(spanish) == [("Say", SPANISH["no_agent"], {"language": "es-US"}),
                              ("Hangup", None, {})]
    assert _says(english) == [("Say", NO_AGENT, {}), ("Hangup", None, {})]


async def test_the_handoff_s_message_is_said_in_the_call_s_language(tmp_path: Path) -> None:
    use_case = _use_case(handoff={"mode": "dial", "number": "+15555550123",
                                  "message": "Connecting you now."})
    with trio.fail_after(40):
        async with _server(tmp_path, use_case) as agent:
            _, spanish = await _ended(agent, tmp_path, "es-US", "quiero una persona")
            _, english = await _ended(agent, tmp_path, "en-US", "a person please")
    assert _says(spanish) == [("Say", PASO, {"language": "es-US"}),
                              ("Dial", "+15555550123", {})]
    assert _says(english) == [("Say", "Connecting you now.", {}), ("Dial", "+15555550123", {})]


async def test_the_goodbye_after_the_agent_hangs_up_is_the_call_s_language(
        tmp_path: Path) -> None:
    """A plain goodbye reads nothing from the store: the use case the end names, as held."""
    with trio.fail_after(40):
        async with _server(tmp_path, _use_case()) as agent:
            _, spanish = await _ended(agent, tmp_path, "es-US", "adiós")
            _, english = await _ended(agent, tmp_path, "en-US", "bye")
    assert _says(spanish) == [("Say", SPANISH["goodbye"], {"language": "es-US"}),
                              ("Hangup", None, {})]
    assert _says(english) == [("Say", GOODBYE, {}), ("Hangup", None, {})]


async def test_a_refused_reconnect_s_apology_is_the_use_case_s_first_language(
        tmp_path: Path) -> None:
    """A failed session carries no word of the language it last spoke: the use case's
    first one's (here its top-level lines, the relay's language). Past the reconnect limit,
    the call's next failure is refused with it."""
    use_case = _use_case(relay={"language": "es-US", "dtmfDetection": True}, lines=SPANISH,
                         languages=[{"code": "es-US"}, {"code": "en-US"}])
    with trio.fail_after(40):
        async with _server(tmp_path, use_case) as agent:
            async with agent.call() as call:
                await _say(call, "hola", "es-US")
            answers = [await agent.post("/action", {
                "CallSid": call.call_sid, "SessionId": f"VX{n}", "SessionStatus": "failed",
                "CallStatus": "in-progress", "ErrorCode": "64105"})
                for n in range(MAX_RECONNECTS + 1)]
            unknown = await agent.post("/action", {
                "CallSid": "CA" + "9" * 32, "SessionId": "VX9", "SessionStatus": "failed",
                "CallStatus": "in-progress", "ErrorCode": "64105"})
    *given, refused = answers
    assert all(ET.fromstring(answer)[0].tag == "Connect" for answer in given)
    assert _says(ET.fromstring(refused)) == [
        ("Say", SPANISH["cannot_go_on"], {"language": "es-US"}), ("Hangup", None, {})]
    # no session, so no use case: the English default, as before
    assert _says(ET.fromstring(unknown)) == [("Say", CANNOT_GO_ON, {}), ("Hangup", None, {})]


async def test_a_key_s_reply_and_the_fallback_follow_the_call_s_language(
        tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with _server(tmp_path, _use_case()) as agent:
            async with agent.call() as call:
                english = [(await call.press("1")).text, (await _say(call, "hmm", "en-US"))[0]]
                fallback, _ = await _say(call, "mmm", "es-US")    # the switch, then this
                spanish = [fallback, (await call.press("1")).text]
    assert english == [HOURS, FALLBACK]
    assert spanish == [PERDONE, HORAS]


async def test_without_words_of_its_own_the_call_and_action_are_as_before(
        tmp_path: Path) -> None:
    """A use case without per-language words: the end goes as the tool sent it, and every
    text is the use case's one, without a language on ``<Say>``."""
    with trio.fail_after(40):
        async with _server(tmp_path, _use_case(words=False)) as agent:
            data, failed = await _ended(agent, tmp_path, "es-US", "quiero una persona")
            bye, goodbye = await _ended(agent, tmp_path, "es-US", "adiós")
            async with agent.call() as call:
                await _say(call, "hola", "es-US")
                heard = [(await call.press("1")).text, (await _say(call, "mmm", "es-US"))[0]]
    assert set(data) == {"handoff", "reasonCode", "reasonDescription", "useCase"}
    assert bye == {"reasonCode": "end-call"}
    assert _says(failed) == [("Say", NO_AGENT, {}), ("Hangup", None, {})]
    assert _says(goodbye) == [("Say", GOODBYE, {}), ("Hangup", None, {})]
    assert heard == [HOURS, FALLBACK]


async def test_the_end_sent_line_says_handoff_only_for_a_handoff(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A goodbye's ``end`` carries the language stamp as data of its own: the call's
    "end sent" line must still say it was no handoff (an operator reads it at 3 a.m.)."""
    caplog.set_level(logging.INFO, logger="actors.relay_writer")
    with trio.fail_after(40):
        async with _server(tmp_path, _use_case()) as agent:
            goodbye, _ = await _ended(agent, tmp_path, "es-US", "adiós")
            handoff, _ = await _ended(agent, tmp_path, "es-US", "quiero una persona")
    assert goodbye["ttsLanguage"] == handoff["ttsLanguage"] == "es-US"
    assert [getattr(r, "handoff", None) for r in caplog.records
            if r.getMessage() == "end sent"] == [False, True]
