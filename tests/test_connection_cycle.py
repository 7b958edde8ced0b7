"""hypercorn's per-connection objects are freed when the connection ends (reference counting),
not left as a cycle for a full collection, which the server runs rarely on purpose
(voiceagent/app/connection_cycle.py). Through a real server: a ``/twiml`` request and a whole
call over the relay socket, with the cyclic collector off so nothing but reference counting
can free anything."""

from __future__ import annotations

import gc
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hypercorn.trio.run as worker
import pytest
import trio
import trio.testing
from hypercorn.events import RawData
from hypercorn.trio.tcp_server import TCPServer

from tests.task_steps import steps_of_this_task
from voiceagent.app import connection_cycle
from voiceagent.app.connection_cycle import ReleasingTCPServer
from voiceagent.app.testing import agent_server
from voiceagent.settings import SOURCE_CONFIG

pytestmark = pytest.mark.timeout(60)


@contextmanager
def _collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _servers() -> int:
    """hypercorn's connection servers the process still holds, reachable or not."""
    return sum(isinstance(o, TCPServer) for o in gc.get_objects())


async def test_ended_connections_leave_nothing_for_the_collector(tmp_path: Path) -> None:
    with trio.fail_after(30), _collector_off():
        async with agent_server(SOURCE_CONFIG, use_case="restaurantOrderingUseCase",
                                data_dir=tmp_path) as agent:
            assert worker.TCPServer is connection_cycle.ReleasingTCPServer
            await trio.testing.wait_all_tasks_blocked(0.05)
            before = _servers()
            async with agent.call() as call:        # /twiml, then the relay socket
                assert _servers() > before          # the socket's server is alive meanwhile
                turn = await call.say("When are you open?")
                assert turn.text
            await agent.post("/action", {"CallSid": call.call_sid, "SessionStatus": "ended",
                                         "CallStatus": "completed"})
            await trio.testing.wait_all_tasks_blocked(0.05)
            assert _servers() == before


async def test_a_connection_closed_by_its_peer_while_idle_goes_at_once(tmp_path: Path) -> None:
    """A bare connect that closes before any request (a health check's probe, an idle
    keep-alive connection let go by its peer): nothing of it is left, and it no longer counts
    under the cap, without waiting for its idle timer (HTTP_IDLE_TIMEOUT_S, 310 s)."""
    with trio.fail_after(30):
        async with agent_server(SOURCE_CONFIG, use_case="restaurantOrderingUseCase",
                                data_dir=tmp_path) as agent:
            connections = agent.runtime.connections
            assert connections is not None
            await trio.testing.wait_all_tasks_blocked(0.05)
            gc.collect()
            before, open_before = _servers(), connections.open
            port = int(agent.url.rsplit(":", 1)[1])
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await trio.testing.wait_all_tasks_blocked(0.05)
            assert connections.open == open_before + 1  # accepted and counted
            await stream.aclose()
            await trio.testing.wait_all_tasks_blocked(0.05)
            gc.collect()
            assert connections.open == open_before
            assert _servers() == before


def test_install_is_idempotent_and_refuses_an_unknown_hypercorn(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(worker, "TCPServer", TCPServer)
    assert connection_cycle.install()
    assert connection_cycle.install()                       # again: nothing changes
    assert worker.TCPServer is connection_cycle.ReleasingTCPServer

    class SomethingElse:
        pass

    monkeypatch.setattr(worker, "TCPServer", SomethingElse)
    with caplog.at_level(logging.WARNING, logger="voiceagent.app.connection_cycle"):
        assert not connection_cycle.install()
    assert worker.TCPServer is SomethingElse                # left as found
    assert "not the one expected" in caplog.text


async def test_a_frame_goes_out_before_its_task_gives_the_loop_back() -> None:
    """trio's Lock yields even when free: each frame to a relay socket (a turn's first word
    among them) waited a batch of every call's runnable work at hypercorn's send lock before
    its bytes left. Now the only schedule point is the send's own, after the bytes."""
    ours, right = socket.socketpair()
    right.setblocking(False)
    server = ReleasingTCPServer.__new__(ReleasingTCPServer)   # its send path alone
    server.send_lock = trio.Lock()
    server.stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    seen_at_first_step: list[bytes] = []

    def look() -> None:
        if not seen_at_first_step:
            try:
                seen_at_first_step.append(right.recv(100))
            except BlockingIOError:
                seen_at_first_step.append(b"")         # nothing sent yet

    with trio.fail_after(5), right:
        with steps_of_this_task(on_step=look) as steps:
            await server.protocol_send(RawData(b"a relay frame"))
        await server.stream.aclose()
    assert steps.steps == 1
    assert seen_at_first_step == [b"a relay frame"]
