"""Session end through the real server: live-agent handoff, goodbye, and reconnect-resume."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import trio
from trio_websocket import open_websocket_url

from voiceagent.app.caller import CallerError, RelayCall, parse_relay_twiml
from voiceagent.app.testing import agent_server
from voiceagent.llm.base import LLMEvent, LLMRequest
from voiceagent.llm.scripted import ScriptedLLM
from voiceagent.settings import SOURCE_CONFIG
from voiceagent.signature import sign
from voiceagent.usecases import load_use_case_file

RESTAURANT = "restaurantOrderingUseCase"


def ended(call_sid: str, handoff: str, **more: str) -> dict[str, str]:
    """Twilio's /action form once the agent's ``end`` closed the session."""
    return {"CallSid": call_sid, "SessionStatus": "ended", "CallStatus": "in-progress",
            "HandoffData": handoff, **more}


def failed(relay: RelayCall) -> dict[str, str]:
    """Twilio's /action form when the relay session failed with the call in progress."""
    return {"CallSid": relay.identity.call_sid, "SessionId": relay.session_id,
            "SessionStatus": "failed", "CallStatus": "in-progress",
            "ErrorCode": "64105", "ErrorMessage": "Websocket ended"}


def _config_with_handoff(tmp_path: Path, handoff: str) -> Path:
    """A copy of the shipped config whose restaurant use case hands off as given."""
    config = tmp_path / "config"
    (config / "usecases").mkdir(parents=True)
    text = (SOURCE_CONFIG / "usecases" / f"{RESTAURANT}.yaml").read_text()
    start = text.index("\nhandoff:\n")
    end = text.index("\nscripted:\n")
    (config / "usecases" / f"{RESTAURANT}.yaml").write_text(
        text[:start] + "\n" + handoff + text[end:])
    return config


async def test_handoff_tool_then_action_enqueues(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with agent_server(SOURCE_CONFIG, use_case=RESTAURANT, data_dir=tmp_path) as agent:
            async with agent.call() as call:
                turn = await call.say("can I talk to a person please")
                assert turn.ended is not None
                assert turn.tool("liveAgentHandoff").input["reason_code"] == "user-requested"
            handoff = turn.ended["handoffData"]
            assert json.loads(handoff)["reasonCode"] == "user-requested"
            body = await agent.post("/action", ended(call.call_sid, handoff, SessionId="VX1",
                                                     SessionDuration="5"))
    root = ET.fromstring(body)
    assert [child.tag for child in root] == ["Say", "Enqueue"]
    assert root[0].text == "One moment, I'm connecting you with someone at the restaurant."
    assert root[1].text == "dough-boy-front-counter"


async def test_handoff_to_a_flex_workflow_carries_the_task(tmp_path: Path) -> None:
    config = _config_with_handoff(tmp_path, "handoff:\n  mode: enqueue\n"
                                  "  workflow_sid: WW0123456789abcdef0123456789abcdef\n")
    with trio.fail_after(30):
        async with agent_server(config, use_case=RESTAURANT, data_dir=tmp_path) as agent:
            async with agent.call() as call:
                turn = await call.press("0")
                assert turn.ended is not None
            body = await agent.post("/action", ended(call.call_sid,
                                                     turn.ended["handoffData"]))
    enqueue = ET.fromstring(body).find("Enqueue")
    assert enqueue is not None
    assert enqueue.attrib["workflowSid"] == "WW0123456789abcdef0123456789abcdef"
    task = enqueue.find("Task")
    assert task is not None
    assert task.text is not None
    assert json.loads(task.text)["reasonCode"] == "user-requested"


async def test_handoff_dials_the_number(tmp_path: Path) -> None:
    config = _config_with_handoff(tmp_path, "handoff:\n  mode: dial\n  number: '+15555550123'\n"
                                  "  message: Putting you through.\n")
    with trio.fail_after(30):
        async with agent_server(config, use_case=RESTAURANT, data_dir=tmp_path) as agent:
            async with agent.call() as call:
                turn = await call.say("I want to speak to a manager")
                assert turn.ended is not None
            body = await agent.post("/action", ended(call.call_sid,
                                                     turn.ended["handoffData"]))
    root = ET.fromstring(body)
    assert [(c.tag, c.text) for c in root] == [("Say", "Putting you through."),
                                               ("Dial", "+15555550123")]


async def test_end_call_and_completed_sessions(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with agent_server(SOURCE_CONFIG, use_case=RESTAURANT, data_dir=tmp_path) as agent:
            async with agent.call() as call:
                turn = await call.say("that's all, goodbye")
                assert turn.ended is not None
            by_agent = await agent.post("/action", ended(call.call_sid,
                                                         turn.ended["handoffData"]))
            completed = await agent.post("/action", {
                "CallSid": call.call_sid, "SessionStatus": "completed",
                "CallStatus": "completed"})
            dropped = await agent.post("/action", {
                "CallSid": call.call_sid, "SessionStatus": "failed", "CallStatus": "completed",
                "ErrorCode": "64105"})
            unknown = await agent.post("/action", {
                "CallSid": "CA" + "9" * 32, "SessionStatus": "ended",
                "HandoffData": json.dumps({"reasonCode": "legal"})})
    assert [c.tag for c in ET.fromstring(by_agent)] == ["Say", "Hangup"]
    assert list(ET.fromstring(completed)) == []
    assert [c.tag for c in ET.fromstring(unknown)] == ["Say", "Hangup"]
    assert [c.tag for c in ET.fromstring(dropped)] == ["Say", "Hangup"]   # no reconnect


class RecordingLLM:
    """The scripted model, remembering every request it was sent."""

    name = "recording"

    def __init__(self, inner: ScriptedLLM) -> None:
        self.inner = inner
        self.requests: list[LLMRequest] = []

    def stream(self, request: LLMRequest) -> AbstractAsyncContextManager[
            trio.MemoryReceiveChannel[LLMEvent]]:
        self.requests.append(request)
        return self.inner.stream(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_failed_session_reconnects_and_resumes(tmp_path: Path) -> None:
    restaurant = load_use_case_file(SOURCE_CONFIG / "usecases" / f"{RESTAURANT}.yaml")
    llm = RecordingLLM(ScriptedLLM.from_use_cases([restaurant], first_token_delay_s=0.001,
                                                  token_delay_s=0.0))
    with trio.fail_after(30):
        async with agent_server(SOURCE_CONFIG, use_case=RESTAURANT, data_dir=tmp_path,
                                llm=llm) as agent:
            async with agent.call() as call:
                first = await call.say("what are your hours?")
                assert "Tuesday" in first.text
            body = await agent.post("/action", failed(call.relay))
            target = parse_relay_twiml(body)
            assert target.greeting is None
            assert "welcomeGreeting" not in target.attributes
            assert target.action == agent.url + "/action"
            assert set(target.parameters) == {"sessionToken"}
            signed = [(b"X-Twilio-Signature", sign(agent.auth_token, target.url).encode())]
            async with open_websocket_url(target.url, extra_headers=signed) as ws:
                again = RelayCall(ws, target, call.relay.identity)   # same CallSid
                await again.setup()
                await again.say("where are you located?")
                reply = await again.read_reply()
                assert "Spear Street" in reply.text
                await again.hang_up()
            await agent.runtime.calls.wait_idle()
    said = [b["text"] for m in llm.requests[-1].messages for b in m["content"] if "text" in b]
    earlier = [restaurant.welcome_greeting, "what are your hours?", first.text]
    assert [text for text in said if text in earlier] == earlier      # the first socket's turns
    assert said[-1] == "where are you located?"


@pytest.mark.parametrize("reason", ["caller-silent", "max-duration", "server-draining",
                                    "end-call", "legal", ""])
async def test_only_the_handoff_tools_end_hands_off(tmp_path: Path, reason: str) -> None:
    """A silent caller, a call at its time limit, a draining server, the agent hanging up,
    or an end nobody marked as a handoff: goodbye and hang up, never the agents' queue."""
    with trio.fail_after(30):
        async with agent_server(SOURCE_CONFIG, use_case=RESTAURANT, data_dir=tmp_path) as agent:
            async with agent.call() as call:
                await call.say("hello")
            body = await agent.post("/action", ended(
                call.call_sid, json.dumps({"reasonCode": reason}) if reason else ""))
            handoff = await agent.post("/action", ended(
                call.call_sid, json.dumps({"handoff": True, "reasonCode": reason or "x"})))
    assert [c.tag for c in ET.fromstring(body)] == ["Say", "Hangup"]
    assert "Enqueue" in [c.tag for c in ET.fromstring(handoff)]


async def test_a_failed_session_after_the_agent_ended_the_call_is_not_reconnected(
        tmp_path: Path) -> None:
    """A tool ended the call (``end`` went out with its handoff data), then ``/action``
    reports the relay session failed with the call in progress: the ``end`` was lost on the
    way, or the request is a replay. Reconnecting would resume a conversation the agent
    closed and hand a fresh session token to whoever asked; the agent's own last word
    stands instead, the handoff it asked for (helper-45)."""
    with trio.fail_after(30):
        async with agent_server(SOURCE_CONFIG, use_case=RESTAURANT, data_dir=tmp_path,
                                METRICS_TOKEN="t" * 24, METRICS_NAMESPACE="Test") as agent:
            metrics = agent.runtime.metrics
            assert metrics is not None
            metrics._emf_stream = emf = io.StringIO()
            async with agent.call() as call:
                turn = await call.say("can I talk to a person please")
                assert turn.ended is not None
            body = await agent.post("/action", failed(call.relay))
            with pytest.raises(CallerError, match="HTTP 409"):     # its replay: refused
                await agent.post("/action", failed(call.relay))
    root = ET.fromstring(body)
    assert [child.tag for child in root] == ["Say", "Enqueue"]
    assert root[1].text == "dough-boy-front-counter"
    assert metrics.reconnects.labels("ended_by_agent")._value.get() == 1
    reconnects = [d for d in map(json.loads, emf.getvalue().splitlines()) if "Reconnects" in d]
    assert [d["Outcome"] for d in reconnects] == ["ended_by_agent", "refused_replay"]
    assert "ReconnectsRefused" not in reconnects[0]     # nobody is hung up on: no alarm


async def test_a_failed_session_after_a_goodbye_says_goodbye_again(tmp_path: Path) -> None:
    """As above, for an ``end`` without a handoff: the call ends, it is not resumed."""
    with trio.fail_after(30):
        async with agent_server(SOURCE_CONFIG, use_case=RESTAURANT, data_dir=tmp_path) as agent:
            async with agent.call() as call:
                turn = await call.say("that's all, goodbye")
                assert turn.ended is not None
            body = await agent.post("/action", failed(call.relay))
    assert [child.tag for child in ET.fromstring(body)] == ["Say", "Hangup"]
