"""A relay socket's connection ends with the call, not at its next WebSocket ping
(voiceagent/app/ws_pings.py). Through a real server with pings on (PING_INTERVAL_S, 20 s as in
production): after the caller hangs up, nothing of the connection is left in the process, and
it no longer counts against the cap on open connections."""

from __future__ import annotations

import gc
from pathlib import Path

import hypercorn.protocol.h11 as h11_protocol
import pytest
import trio
import trio.testing
from hypercorn.protocol.ws_stream import WSStream
from hypercorn.trio.tcp_server import TCPServer

from voiceagent.app import ws_pings
from voiceagent.app.testing import agent_server
from voiceagent.relay import peer_close
from voiceagent.relay.peer_close import PeerCodeWSStream
from voiceagent.settings import SOURCE_CONFIG

pytestmark = pytest.mark.timeout(60)


def _held() -> tuple[int, int]:
    """hypercorn's connection servers and WebSocket streams the process still holds."""
    gc.collect()
    objects = gc.get_objects()
    return (sum(isinstance(o, TCPServer) for o in objects),
            sum(isinstance(o, WSStream) for o in objects))


async def test_a_hung_up_call_leaves_no_connection_waiting_for_its_ping(
        tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with agent_server(SOURCE_CONFIG, use_case="restaurantOrderingUseCase",
                                data_dir=tmp_path, PING_INTERVAL_S="20") as agent:
            connections = agent.runtime.connections
            assert connections is not None
            await trio.testing.wait_all_tasks_blocked(0.05)
            before, open_before = _held(), connections.open
            async with agent.call() as call:            # /twiml, then the relay socket
                turn = await call.say("When are you open?")
                assert turn.text
                assert _held()[1] == before[1] + 1      # the relay socket's stream
            # every task is asleep now: without the fix, the ping task's 20 s sleep holds
            # the connection's task group (and everything under it) open
            await trio.testing.wait_all_tasks_blocked(0.05)
            assert _held() == before
            assert connections.open == open_before


def test_install_is_idempotent_and_refuses_an_unknown_hypercorn(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(h11_protocol, "WSStream", WSStream)
    assert ws_pings.install()
    assert ws_pings.install()
    assert h11_protocol.WSStream is ws_pings.PromptPings

    class SomethingElse:
        pass

    monkeypatch.setattr(h11_protocol, "WSStream", PeerCodeWSStream)   # the server's order
    assert ws_pings.install()
    assert ws_pings.install()
    installed = h11_protocol.WSStream
    assert issubclass(installed, ws_pings.PromptPings)
    assert issubclass(installed, PeerCodeWSStream)
    assert peer_close.codes_known()                         # still the peer's codes
    assert peer_close.install()
    assert h11_protocol.WSStream is installed

    monkeypatch.setattr(h11_protocol, "WSStream", SomethingElse)
    assert not ws_pings.install()
    assert h11_protocol.WSStream is SomethingElse
    assert "stays until its next ping" in caplog.text
