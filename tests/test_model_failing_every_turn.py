"""A model that fails every turn, through the real server, the real Bedrock backend and a
real WebSocket caller: credentials that stay expired (a task role that lost its access, keys
rotated under a process that cannot find the new ones) fail every request the same way.

The caller used to hear "Sorry, I'm having a little trouble right now. Could you say that
again?" every time they spoke, for as long as they kept trying. Now the third failed turn in
a row ends the session: with the use case's handoff when it has a target (``/action`` says
its message and connects a person), else with the words of a call the server cannot take
and ``/action``'s goodbye. A turn the model answers starts the count again.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
import trio

from actors.model_trouble import CANNOT_GO_ON, FAILED_TURNS_BEFORE_GOODBYE
from actors.turn import APOLOGY_SILENT
from tests.fake_bedrock import FakeBedrock, running_fake_bedrock, text_reply
from tests.server_harness import FIXTURE_CONFIG
from tests.test_usecase_handoff import RESTAURANT, _config_with_handoff, ended
from voiceagent.app.caller import RelayCall, Reply
from voiceagent.app.session_end import GOODBYE
from voiceagent.app.testing import AgentServer, agent_server

pytestmark = pytest.mark.timeout(60)

FINE = "Fine, anything else?"
KEY = "AKIDEXAMPLE"             # the aws_env fixture's access key id


async def turn(call: RelayCall, words: str) -> tuple[Reply, dict[str, Any] | None]:
    """What the caller hears for ``words``, and the ``end`` that follows it, if one does."""
    await call.say(words)
    reply = await call.read_reply()
    if reply.ended is not None or not reply.closed:
        return reply, reply.ended
    with trio.move_on_after(1.0):           # the writer sends `end` right after the cycle
        frame = await call.receive()
        return reply, frame if frame is not None and frame.get("type") == "end" else None
    return reply, None


def serving(fake: FakeBedrock, config: Path, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch, use_case: str
            ) -> AbstractAsyncContextManager[AgentServer]:
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", fake.endpoint_url)
    return agent_server(config, use_case=use_case, data_dir=tmp_path, LLM="bedrock",
                        AWS_REGION="us-east-1")


async def test_a_model_failing_every_turn_ends_the_call_instead_of_apologising_forever(
        tmp_path: Path, aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    accepted: set[str] = set()          # every request refused: ExpiredTokenException
    heard: list[tuple[str, dict[str, Any] | None]] = []
    async with running_fake_bedrock(responder=lambda r: text_reply([FINE]),
                                    accepted_keys=accepted) as fake:
        with trio.fail_after(40):
            async with serving(fake, FIXTURE_CONFIG, tmp_path, monkeypatch,
                                     use_case="testUseCase") as agent:
                async with agent.call() as conversation:
                    call = conversation.relay
                    for n in range(6):
                        if n == 2:
                            accepted.add(KEY)       # the model answers this one turn
                        elif n == 3:
                            accepted.clear()
                        reply, end = await turn(call, f"question {n}")
                        heard.append((reply.text, end))
                        if end is not None:
                            break
                assert end is not None
                answer = await agent.post("/action", ended(conversation.call_sid,
                                                           str(end["handoffData"])))
    texts = [text for text, _ in heard]
    assert texts == [APOLOGY_SILENT, APOLOGY_SILENT, FINE, APOLOGY_SILENT, APOLOGY_SILENT,
                     CANNOT_GO_ON]
    assert [end is not None for _, end in heard] == [False] * 5 + [True]
    assert json.loads(end["handoffData"]) == {"reasonCode": "model-unavailable"}
    root = ET.fromstring(answer)
    assert [(child.tag, child.text) for child in root] == [("Say", GOODBYE), ("Hangup", None)]
    assert FAILED_TURNS_BEFORE_GOODBYE == 3


async def test_with_a_handoff_target_the_caller_goes_to_a_person(
        tmp_path: Path, aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config_with_handoff(tmp_path, "handoff:\n  mode: dial\n  number: '+15555550123'\n"
                                  "  message: Let me get someone from the front desk.\n")
    heard: list[tuple[str, dict[str, Any] | None]] = []
    async with running_fake_bedrock(responder=lambda r: text_reply([FINE]),
                                    accepted_keys=set()) as fake:
        with trio.fail_after(40):
            async with serving(fake, config, tmp_path, monkeypatch,
                                     use_case=RESTAURANT) as agent:
                async with agent.call() as conversation:
                    for n in range(FAILED_TURNS_BEFORE_GOODBYE):
                        reply, end = await turn(conversation.relay, f"question {n}")
                        heard.append((reply.text, end))
                end = heard[-1][1]
                assert end is not None
                answer = await agent.post("/action", ended(conversation.call_sid,
                                                           str(end["handoffData"])))
    assert [text for text, _ in heard] == [APOLOGY_SILENT, APOLOGY_SILENT, ""]
    assert json.loads(end["handoffData"]) == {"reasonCode": "model-unavailable",
                                              "handoff": True, "useCase": RESTAURANT}
    root = ET.fromstring(answer)
    assert [(child.tag, child.text) for child in root] == [
        ("Say", "Let me get someone from the front desk."), ("Dial", "+15555550123")]
