"""``applicationReconnect`` (Twilio, GA 28 Oct 2026): on an unexpected drop Twilio connects
to the same URL again and replays up to 500 buffered events. Twilio documents nothing of that
socket's handshake (a second ``setup``? the same ``sessionId``?), and each session token here
opens one socket, so its reconnect is refused like a replayed setup while the caller waits
on it. A use case file that turned it on loaded, and every dropped call waited on a reconnect
that could not be served before Twilio failed it to ``/action``. Now ``config load`` refuses
it, saying what is served instead (the ``/action`` reconnect); a use case an older release
stored is served without it, with a warning."""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

import voiceagent.app.sessions as sessions_module
from tests.server_harness import AUTH_TOKEN, RunningServer, make_settings, running_server
from tests.twiml_support import relay_element
from voiceagent.app.caller import Identity, open_call, post_form, release_transport
from voiceagent.errors import ConfigError
from voiceagent.signature import sign
from voiceagent.store import config_records
from voiceagent.store.config_records import profile_item
from voiceagent.usecases import Profile, UseCase, load_use_case_file

BASE = "name: desk\nprompt: You answer the phone.\n"
UPDATE = "relay_updates:\n  - when: {caller_says: 'card'}\n"


def _load(tmp_path: Path, text: str) -> UseCase:
    path = tmp_path / "desk.yaml"
    path.write_text(BASE + text, encoding="utf-8")
    return load_use_case_file(path)


@pytest.mark.parametrize(("text", "key_path"), [
    ("relay:\n  applicationReconnect: true\n", "relay.applicationReconnect"),
    ("relay:\n  applicationReconnect: 'true'\n", "relay.applicationReconnect"),
    (UPDATE + "    config: {applicationReconnect: true}\n",
     "relay_updates[0].config.applicationReconnect"),
])
def test_turning_it_on_is_refused_at_load_saying_what_is_served(
        tmp_path: Path, text: str, key_path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    assert caught.value.key_path == key_path
    problem = caught.value.problem
    assert "not served by this release" in problem
    assert "/action callback reconnects the call" in problem     # what to rely on instead
    assert "Leave it out (or false)" in problem                  # what to do


def test_off_loads_and_goes_out_as_written(tmp_path: Path) -> None:
    """Off is Twilio's default behaviour, the one served: a file may say so. On, next to it,
    is what is refused."""
    relay = relay_element(_load(tmp_path, "relay:\n  applicationReconnect: false\n"))
    assert relay.get("applicationReconnect") == "false"
    with pytest.raises(ConfigError):
        _load(tmp_path, "relay:\n  applicationReconnect: true\n")


def _stored_with_it_on(name: str = "desk") -> UseCase:
    """As an older release stored it: its item's attribute edited past today's checks."""
    item = config_records.use_case_item(UseCase(
        name=name, prompt="You answer the phone.",
        relay={"welcomeGreeting": "Hello.", "dtmfDetection": True}))
    item["voiceagent"]["relay"]["applicationReconnect"] = True
    return config_records.use_case_from_item(item)


def test_a_stored_use_case_is_served_without_it_and_the_log_says_so_once(
        caplog: pytest.LogCaptureFixture) -> None:
    stored = _stored_with_it_on()
    assert stored.relay["applicationReconnect"] is True           # kept as stored
    with caplog.at_level(logging.WARNING, logger="voiceagent.twiml"):
        elements = [relay_element(stored) for _ in range(2)]
    for relay in elements:
        assert relay.get("applicationReconnect") is None
        assert (relay.get("welcomeGreeting"), relay.get("dtmfDetection")) == ("Hello.", "true")
    (warning,) = [r for r in caplog.records if "not served" in r.getMessage()]
    assert (warning.__dict__["use_case"], warning.__dict__["attribute"]) == (
        "desk", "applicationReconnect")


def _relay_attributes(document: str) -> dict[str, str]:
    relay = ET.fromstring(document).find("Connect/ConversationRelay")
    assert relay is not None
    return dict(relay.attrib)


async def _socket_closed_with(server: RunningServer, setup: dict[str, object]) -> int | None:
    """What the server does with a signed socket to the same URL presenting ``setup``: its
    close code, or None if it answered a prompt."""
    url = server.url.replace("http://", "ws://") + "/relay"
    headers = [(b"X-Twilio-Signature", sign(AUTH_TOKEN, url).encode())]
    async with open_websocket_url(url, extra_headers=headers) as ws:
        await ws.send_message(json.dumps(setup))
        await ws.send_message(json.dumps({"type": "prompt", "voicePrompt": "hours?",
                                          "lang": "en-US", "last": True}))
        try:
            await ws.get_message()
        except ConnectionClosed as closed:
            await release_transport(ws)
            return closed.reason.code
        return None


async def test_a_dropped_call_of_a_stored_use_case_goes_to_action_and_resumes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the server, with real WebSocket clients. The TwiML leaves the attribute out,
    so a drop fails the session to ``/action`` instead of having Twilio reconnect to the
    same URL: there a socket replaying the first setup (what Twilio's undocumented reconnect
    could at best present) is refused, while ``/action``'s fresh token resumes the call."""
    # the replay is refused after one store read, not ~3.5 s of real time reading again
    # (the pauses are test_sessions_elsewhere's, on the virtual clock)
    monkeypatch.setattr(sessions_module, "MINTED_ELSEWHERE_WAITS_S", ())
    identity = Identity(from_number="+15555550123")
    stored = _stored_with_it_on("oldDesk")
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path)) as server:
            await server.runtime.store.put(config_records.use_case_item(stored))
            await server.runtime.store.put(profile_item(Profile(
                phone=identity.from_number, first_name="Grace", use_case=stored.name)))
            async with open_call(server.url, auth_token=AUTH_TOKEN, identity=identity) as call:
                first = call.target
                await call.say("what are your hours?")
                await call.read_reply()
                await call.ws.aclose(code=1011, reason="relay session failed")
            await server.runtime.calls.wait_idle()
            replayed = {"type": "setup", "sessionId": call.session_id,
                        "callSid": identity.call_sid, "from": identity.from_number,
                        "to": identity.to_number, "customParameters": first.parameters}
            assert await _socket_closed_with(server, replayed) == 1008
            form = {"CallSid": identity.call_sid, "SessionId": call.session_id,
                    "SessionStatus": "failed", "CallStatus": "in-progress",
                    "ErrorCode": "64105"}
            document = await post_form(server.url + "/action", form, AUTH_TOKEN)
            fresh = document.split('name="sessionToken" value="')[1].split('"')[0]
            resumed = {**replayed, "customParameters": {**first.parameters,
                                                        "sessionToken": fresh}}
            assert await _socket_closed_with(server, resumed) is None
            await server.runtime.calls.wait_idle()
    assert "applicationReconnect" not in first.attributes          # the /twiml answer
    assert "applicationReconnect" not in _relay_attributes(document)   # the /action one
    assert first.attributes["dtmfDetection"] == "true"              # the rest as stored
