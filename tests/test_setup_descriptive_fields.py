"""A ``setup`` with an odd descriptive field (a number in ``callerName``, an object in
``from``), through the real server and a real WebSocket caller: the field is taken as absent,
logged once under the call's CallSid by name and JSON type (never its value: it may be a
phone number), and the call is served. Before, the whole setup was dropped and the socket
closed at SETUP_TIMEOUT_S with 1008 "setup expected": the caller was lost for a field the
server only logs. The fields the socket is bound and authenticated by stay strict. An info
event's unusable ``ts`` (read nowhere) is likewise taken as absent."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

import voiceagent.app.sessions as sessions_module
from tests.server_harness import AUTH_TOKEN, RunningServer, make_settings, running_server
from tests.test_hostile_input import HOURS, reply_text
from voiceagent.app.caller import (
    Identity,
    RelayTarget,
    open_call,
    parse_relay_twiml,
    post_form,
    release_transport,
)
from voiceagent.signature import sign

ODD = {"callerName": 12025550100, "from": {"number": "+12025550100"}, "to": ["+12025550199"],
       "direction": 1, "callStatus": True, "accountSid": 7, "parentCallSid": {},
       "forwardedFrom": 12025550111, "callType": ["PSTN"]}
ODD_PROBLEM = ("accountSid: expected string, got number; from: expected string, got object; "
               "to: expected string, got array; callStatus: expected string, got boolean; "
               "direction: expected string, got number; callerName: expected string, got "
               "number; parentCallSid: expected string, got object; forwardedFrom: expected "
               "string, got number; callType: expected string, got array")
PROMPT = json.dumps({"type": "prompt", "voicePrompt": "hours?", "lang": "en-US", "last": True})


async def prepared(server: RunningServer, identity: Identity) -> RelayTarget:
    """A call as Twilio's signed /twiml prepares it: its relay socket's URL and token."""
    form = {"CallSid": identity.call_sid, "AccountSid": identity.account_sid,
            "From": identity.from_number, "To": identity.to_number, "CallStatus": "ringing"}
    return parse_relay_twiml(await post_form(server.url + "/twiml", form, AUTH_TOKEN))


def setup(identity: Identity, token: object, **fields: Any) -> str:
    return json.dumps({"type": "setup", "sessionId": "VX" + "1" * 32,
                       "callSid": identity.call_sid,
                       "customParameters": {"sessionToken": token}} | fields)


async def served(target: RelayTarget, setup_frame: str) -> str:
    """The reply to a prompt on a socket that sent ``setup_frame``; the caller hangs up."""
    headers = [(b"X-Twilio-Signature", sign(AUTH_TOKEN, target.url).encode())]
    async with open_websocket_url(target.url, extra_headers=headers) as ws:
        await ws.send_message(setup_frame)
        await ws.send_message(PROMPT)
        reply = await reply_text(ws)
        await ws.aclose(code=1000)
    return reply


async def refused(target: RelayTarget, setup_frame: str) -> tuple[int | None, str | None]:
    """The close code and reason a socket that sent ``setup_frame`` and a prompt gets."""
    headers = [(b"X-Twilio-Signature", sign(AUTH_TOKEN, target.url).encode())]
    async with open_websocket_url(target.url, extra_headers=headers) as ws:
        await ws.send_message(setup_frame)
        await ws.send_message(PROMPT)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
        await release_transport(ws)
    return closed.value.reason.code, closed.value.reason.reason


async def test_odd_descriptive_setup_fields_are_taken_as_absent_and_the_call_is_served(
        tmp_path: Path, records: list[logging.LogRecord]) -> None:
    identity = Identity()
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            target = await prepared(server, identity)
            token = target.parameters["sessionToken"]
            reply = await served(target, setup(identity, token, **ODD))
            await server.runtime.calls.wait_idle()
    assert reply.startswith(HOURS)
    (report,) = server.runtime.calls.reports
    assert report.ended_by == "hangup"
    assert report.turns.turns == 1
    assert dict(report.frames.rejected) == {"setup_field": 1}
    mine = [r for r in records if vars(r).get("call_sid") == identity.call_sid]
    (line,) = [r for r in mine if r.getMessage() == "setup field unusable, taken as absent"]
    assert line.levelno == logging.WARNING
    assert vars(line)["problem"] == ODD_PROBLEM
    (connected,) = [r for r in mine if r.getMessage() == "call connected"]
    assert (vars(connected)["direction"], vars(connected)["call_status"]) == ("", "")
    for record in mine:                  # the odd values themselves are logged nowhere
        text = record.getMessage() + json.dumps(vars(record), default=str)
        assert "2025550100" not in text
        assert "2025550111" not in text


@pytest.mark.parametrize(("change", "close", "problem"), [
    ({"callSid": 7}, (1008, "setup expected"), "callSid: expected string, got number"),
    ({"sessionId": None}, (1008, "setup expected"), "sessionId: missing"),
    ({"sessionId": ["VX1"]}, (1008, "setup expected"), "sessionId: expected string, got array"),
    ({"customParameters": "sessionToken=x"}, (1008, "setup expected"),
     "customParameters: expected object, got string"),
    ({"customParameters": {"sessionToken": 7}}, (1008, "unknown session"), None),
    ({"customParameters": {}}, (1008, "unknown session"), None),
])
async def test_a_setup_without_a_usable_load_bearing_field_is_still_refused(
        tmp_path: Path, records: list[logging.LogRecord], change: dict[str, object],
        close: tuple[int, str], problem: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CallSid, the relay session's id and the session token bind the socket to its
    signed call: without a usable one the setup is refused as before, whatever else it
    carries (an unparsable one is dropped, and the socket closed when no usable setup came
    within SETUP_TIMEOUT_S), and the rejection names that field. Nothing is consumed: the
    call's own socket, odd descriptive fields and all, is served after it."""
    # a token that does not match is refused after one store read, not ~3.5 s of real time
    # reading again (the pauses are test_sessions_elsewhere's, on the virtual clock)
    monkeypatch.setattr(sessions_module, "MINTED_ELSEWHERE_WAITS_S", ())
    identity = Identity()
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path, SETUP_TIMEOUT_S="0.5")) as server:
            target = await prepared(server, identity)
            token = target.parameters["sessionToken"]
            bad = json.loads(setup(identity, token, **ODD)) | change
            assert await refused(target, json.dumps(bad)) == close
            await server.runtime.calls.wait_idle()
            reply = await served(target, setup(identity, token, callerName=7))
            await server.runtime.calls.wait_idle()
    assert reply.startswith(HOURS)
    assert [r.ended_by for r in server.runtime.calls.reports][-1:] == ["hangup"]
    if problem is not None:
        (line,) = [r for r in records if r.getMessage() == "frame rejected"
                   and vars(r).get("frame_type") == "setup"]
        assert vars(line)["problem"] == problem


async def test_an_info_event_with_an_unusable_ts_is_passed_on_without_it(
        tmp_path: Path, records: list[logging.LogRecord]) -> None:
    """``ts`` is read nowhere: a ``tokensPlayed`` or a ``configUpdated`` was dropped whole for
    a ``ts`` of "later" (the caller's heard words, a provider failover, unrecorded)."""
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.send_raw(json.dumps({"type": "info", "name": "tokensPlayed",
                                                "value": "We open", "ts": "later"}))
                await call.send_raw(json.dumps({"type": "info", "name": "configUpdated",
                                                "value": "ttsProvider", "ts": {"ms": 1}}))
                await call.say("hours?")
                assert (await call.read_reply()).text.startswith(HOURS)
                await call.hang_up()
            await server.runtime.calls.wait_idle()
    (report,) = server.runtime.calls.reports
    assert dict(report.frames.rejected) == {"info_field": 2}
    mine = [r for r in records if vars(r).get("call_sid") == call.identity.call_sid]
    assert [vars(r)["problem"] for r in mine
            if r.getMessage() == "info field unusable, taken as absent"] == [
        "ts: expected number, got non-numeric string", "ts: expected number, got object"]
    (updated,) = [r for r in mine if r.getMessage() == "relay configuration updated"]
    assert vars(updated)["detail"] == "ttsProvider"
