"""How calls ended, as the metrics count them, through the real server: a relay socket that
failed (and the call that went on over a reconnect) apart from a caller hanging up, and the
calls the agent handed to a person."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import hypercorn.protocol.h2 as h2
import hypercorn.protocol.h11 as h11
import pytest
import trio
from hypercorn.protocol.ws_stream import WSStream

from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from tests.test_metrics import METRICS_TOKEN, _scrape, _value
from tests.test_usecase_handoff import RESTAURANT, _config_with_handoff, ended, failed
from voiceagent.app.caller import open_call, open_relay, parse_relay_twiml, post_form
from voiceagent.app.testing import agent_server
from voiceagent.logs import _ContextFilter
from voiceagent.relay import peer_close
from voiceagent.settings import SOURCE_CONFIG

pytestmark = pytest.mark.timeout(60)


def _failed(call_sid: str, session_id: str) -> dict[str, str]:
    """Twilio's /action form when the relay session failed with the call in progress."""
    return {"CallSid": call_sid, "SessionId": session_id, "SessionStatus": "failed",
            "CallStatus": "in-progress", "ErrorCode": "64105",
            "ErrorMessage": "Websocket ended"}


async def test_a_failed_socket_whose_call_reconnected_is_not_a_hangup(tmp_path: Path) -> None:
    """hypercorn told every close it did not start as 1006, Twilio's hang-up (1000) too, so
    a socket that failed (closed with an error, or its connection lost) counted as
    ``ended_by="hangup"``, and a call that reconnected counted a hang-up for a caller who
    was still talking. Now: "dropped" for the failed socket, "hangup" for the one the
    caller hung up on, and the reconnect in between as before."""
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path,
                                                METRICS_TOKEN=METRICS_TOKEN)) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("what are your hours?")
                await call.read_reply()
                await call.fail()                       # closed 1011, as Twilio's failure
            target = parse_relay_twiml(await post_form(
                server.url + "/action", _failed(call.identity.call_sid, call.session_id),
                AUTH_TOKEN))
            async with open_relay(target, call.identity, auth_token=AUTH_TOKEN) as again:
                await again.say("what are your hours?")
                await again.read_reply()
                await again.ws._close_stream()          # lost: no close frame at all
            await server.runtime.calls.wait_idle()
            target = parse_relay_twiml(await post_form(
                server.url + "/action", _failed(call.identity.call_sid, again.session_id),
                AUTH_TOKEN))
            async with open_relay(target, call.identity, auth_token=AUTH_TOKEN) as last:
                await last.say("what are your hours?")
                await last.read_reply()
                await last.hang_up()
            await server.runtime.calls.wait_idle()
            reports = list(server.runtime.calls.reports)
            _, samples = await trio.to_thread.run_sync(_scrape, server.url)
    assert [r.ended_by for r in reports] == ["dropped", "dropped", "hangup"]
    assert _value(samples, "voiceagent_calls_total", ended_by="dropped") == 2
    assert _value(samples, "voiceagent_calls_total", ended_by="hangup") == 1
    assert _value(samples, "voiceagent_reconnects_total", outcome="resumed") == 2


async def test_without_the_peers_close_codes_every_close_is_a_hangup_as_before(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hypercorn the stream class does not fit: its disconnects say 1006 whoever closed,
    so a socket cannot be called dropped by its code, and a hang-up must not be."""
    monkeypatch.setattr(peer_close, "install", lambda: False)
    monkeypatch.setattr(h11, "WSStream", WSStream)
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path)) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("what are your hours?")
                await call.read_reply()
                await call.fail()
            await server.runtime.calls.wait_idle()
    assert server.runtime.calls.reports[-1].ended_by == "hangup"


def test_install_is_idempotent_and_refuses_an_unknown_hypercorn(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(h11, "WSStream", WSStream)
    monkeypatch.setattr(h2, "WSStream", WSStream)
    assert peer_close.install()
    assert peer_close.install()                             # again: nothing changes
    assert h11.WSStream is h2.WSStream is peer_close.PeerCodeWSStream
    assert peer_close.codes_known()

    class SomethingElse:
        pass

    monkeypatch.setattr(h11, "WSStream", SomethingElse)
    with caplog.at_level(logging.WARNING, logger="voiceagent.relay.peer_close"):
        assert not peer_close.install()
    assert h11.WSStream is SomethingElse                    # left as found
    assert not peer_close.codes_known()
    assert "not the one expected" in caplog.text
    monkeypatch.setattr(h11, "WSStream", WSStream)          # the class, a newer release
    monkeypatch.setattr(peer_close, "hypercorn_release", lambda: "0.19.0")
    assert not peer_close.install()
    assert h11.WSStream is WSStream
    assert not peer_close.codes_known()


async def test_calls_handed_to_a_person_are_counted_by_outcome(tmp_path: Path) -> None:
    """A call the agent handed to a person ended its socket as ``ended_by="end"``, like a
    goodbye, and nothing else counted it: how many callers went to a person, or asked for
    one and reached no one, could not be told from the metrics. Counted as /action answers
    them, ``end`` kept as it was."""
    with trio.fail_after(30):
        async with agent_server(SOURCE_CONFIG, use_case=RESTAURANT, data_dir=tmp_path,
                                METRICS_NAMESPACE="Test") as agent:
            metrics = agent.runtime.metrics
            assert metrics is not None
            metrics._emf_stream = emf = io.StringIO()
            async with agent.call() as handed:
                turn = await handed.say("can I talk to a person please")
                assert turn.ended is not None
            await agent.post("/action", ended(handed.call_sid, turn.ended["handoffData"]))
            async with agent.call() as lost:          # its end lost, the session failed
                assert (await lost.say("can I talk to a person please")).ended is not None
            await agent.post("/action", failed(lost.relay))
            async with agent.call() as goodbye:
                last = await goodbye.say("that's all, goodbye")
                assert last.ended is not None
            await agent.post("/action", ended(goodbye.call_sid, last.ended["handoffData"]))
            await agent.post("/action", ended("CA" + "9" * 32, json.dumps({"handoff": True})))
            reports = list(agent.runtime.calls.reports)
    assert [r.ended_by for r in reports] == ["end", "end", "end"]
    assert metrics.handoffs.labels("enqueue")._value.get() == 2
    assert metrics.handoffs.labels("unavailable")._value.get() == 1
    lines = [d for d in map(json.loads, emf.getvalue().splitlines()) if "Handoffs" in d]
    assert [(d["Outcome"], d.get("HandoffsFailed")) for d in lines] == [
        ("enqueue", None), ("enqueue", None), ("unavailable", 1)]
    assert lines[0]["CallSid"] == handed.call_sid


@pytest.mark.parametrize(("handoff", "outcome"), [
    ("handoff:\n  mode: none\n", "no_target"),
    ("handoff:\n  mode: dial\n  number: '+15555550123'\n", "dial")])
async def test_a_handoff_is_counted_by_where_it_went(tmp_path: Path, handoff: str,
                                                    outcome: str) -> None:
    config = _config_with_handoff(tmp_path, handoff)
    with trio.fail_after(30):
        async with agent_server(config, use_case=RESTAURANT, data_dir=tmp_path,
                                METRICS_TOKEN=METRICS_TOKEN) as agent:
            async with agent.call() as call:
                turn = await call.say("I want to speak to a manager")
                assert turn.ended is not None
            await agent.post("/action", ended(call.call_sid, turn.ended["handoffData"]))
            _, samples = await trio.to_thread.run_sync(_scrape, agent.url)
    assert _value(samples, "voiceagent_handoffs_total", outcome=outcome) == 1
    assert sum(v for (name, _), v in samples.items()
               if name == "voiceagent_handoffs_total") == 1


async def test_a_handoff_that_reached_no_one_says_what_to_do(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The warnings of a handoff that reached no one said what happened, not why nor what to
    change: which use case lacks a target and how to give it one; and, for a call whose
    session is gone, that it expired or was never this service's (no line said so)."""
    config = _config_with_handoff(tmp_path, "handoff:\n  mode: none\n")
    gone = "CA" + "8" * 32
    with trio.fail_after(30):
        async with agent_server(config, use_case=RESTAURANT, data_dir=tmp_path) as agent:
            async with agent.call() as call:
                turn = await call.say("I want to speak to a manager")
                assert turn.ended is not None
            caplog.handler.addFilter(_ContextFilter())     # the CallSid, as in production
            with caplog.at_level(logging.WARNING, logger="voiceagent"):
                await agent.post("/action", ended(call.call_sid, turn.ended["handoffData"]))
                await agent.post("/action", ended(gone, json.dumps({"handoff": True})))
    (no_target,) = [r for r in caplog.records if "no handoff target" in r.getMessage()]
    assert "mode enqueue with queue or workflow_sid, or dial with number" in \
        no_target.getMessage()
    assert (no_target.use_case, no_target.call_sid) == (  # type: ignore[attr-defined]
        RESTAURANT, call.call_sid)
    (missing,) = [r for r in caplog.records if r.getMessage().startswith("call session")]
    assert "SESSION_TTL_S" in missing.getMessage()
    assert missing.call_sid == gone                         # type: ignore[attr-defined]
    (goodbye,) = [r for r in caplog.records if "could not be had" in r.getMessage()]
    assert goodbye.call_sid == gone                         # type: ignore[attr-defined]
