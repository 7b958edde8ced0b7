"""The cap on open connections (``voiceagent.app.open_connections``), through the real server
and real TCP clients: without a proxy in front, anyone could open connections that never
finish their headers, each held for HTTP_IDLE_TIMEOUT_S (310 s), until the process had no
descriptors left for calls, the model or the store. MAX_CALLS=1 and MAX_SOCKETS_WAITING=1
make the cap 1 + 10 + 1 + 64 = 76 connections."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.serve_process import serve_process
from tests.server_harness import AUTH_TOKEN, RunningServer, make_settings, running_server
from tests.test_edge_attacks import raw_answer
from tests.test_metrics import _capture_emf
from tests.test_session_binding import signed_socket
from voiceagent.app import server as server_module
from voiceagent.app.caller import open_call
from voiceagent.app.open_connections import EVICTED, REFUSED
from voiceagent.app.open_files import connection_limit

SMALL = {"MAX_CALLS": "1", "MAX_SOCKETS_WAITING": "1"}
CAP = 76
SLOW_HEAD = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "       # never finished
# headers complete, body never sent: a request under way until BODY_TIMEOUT_S (10 s); the
# 100 Continue says the server has read the headers
SLOW_BODY = (b"POST /twiml HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Twilio-Signature: bm90\r\n"
             b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n"
             b"Expect: 100-continue\r\n\r\n")


async def _connect(url: str) -> trio.SocketStream:
    host, port = url.removeprefix("http://").split(":")
    return await trio.open_tcp_stream(host, int(port))


async def _closed(stream: trio.SocketStream) -> bool:
    """True once the server has closed it (what it sent before, if anything, is read)."""
    try:
        while await stream.receive_some(4096):
            pass
    except trio.BrokenResourceError:           # a reset: what we sent was left unread
        pass
    return True


@pytest.mark.timeout(60)
async def test_slow_header_connections_make_room_and_a_live_call_goes_on(
        tmp_path: Path, records: list[logging.LogRecord]) -> None:
    """Past the cap, each new connection closes the one idle longest (here the oldest
    slow-header connections); the live call's socket is never closed, the call goes on, and
    a new request is answered. The first closing is logged in full, the rest counted."""
    settings = make_settings(tmp_path, **SMALL)
    assert connection_limit(settings) == CAP
    slow = CAP + 10
    closed: set[int] = set()
    with trio.fail_after(30):
        async with running_server(settings) as server, \
                open_call(server.url, auth_token=AUTH_TOKEN) as call:
            await call.say("what are your hours?")
            assert (await call.read_reply()).text.startswith("We are open")
            streams = []
            for _ in range(slow):
                stream = await _connect(server.url)
                await stream.send_all(SLOW_HEAD)
                streams.append(stream)
            answer = await raw_answer(server.url, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200"), answer[:60]
            # the call's socket + 75 slow ones fill the cap: 11 slow ones made room for the
            # 11 past it, one more for the /health connection
            expected = slow - (CAP - 1) + 1
            enough = trio.Event()

            async def watch(n: int, stream: trio.SocketStream) -> None:
                await _closed(stream)
                closed.add(n)
                if len(closed) == expected:
                    enough.set()

            async with trio.open_nursery() as nursery:
                for n, stream in enumerate(streams):
                    nursery.start_soon(watch, n, stream)
                await enough.wait()
                assert _sampled(server)[("voiceagent_connections_over_cap_total",
                                         "closed_idle")] == expected
                await call.say("what are your hours?")       # the call went on throughout
                assert (await call.read_reply()).text.startswith("We are open")
                await call.hang_up()
                await server.runtime.calls.wait_idle()
                nursery.cancel_scope.cancel()
            for stream in streams:
                await stream.aclose()
    assert closed == set(range(expected))                   # the oldest, and only those
    logged = [r for r in records if r.getMessage() == EVICTED]
    assert len(logged) == 1
    assert logged[0].levelno == logging.WARNING
    assert (vars(logged[0])["max_connections"], vars(logged[0])["peer"]) == (CAP, "127.0.0.1")


@pytest.mark.timeout(60)
async def test_with_no_connection_idle_the_oldest_slow_body_makes_room(
        tmp_path: Path, records: list[logging.LogRecord]) -> None:
    """The call's socket and 75 requests whose bodies never come fill the cap (a header
    claiming a signature is all it takes; each would hold its place for BODY_TIMEOUT_S):
    a new connection is answered, the oldest of them gets a 503 and is closed, and the call
    goes on."""
    settings = make_settings(tmp_path, **SMALL)
    with trio.fail_after(30):
        async with running_server(settings) as server, \
                open_call(server.url, auth_token=AUTH_TOKEN) as call:
            await call.say("what are your hours?")
            assert (await call.read_reply()).text.startswith("We are open")
            busy = []
            for _ in range(CAP - 1):
                stream = await _connect(server.url)
                await stream.send_all(SLOW_BODY)
                continued = await stream.receive_some(4096)
                assert continued.startswith(b"HTTP/1.1 100 "), continued[:60]
                busy.append(stream)
            started = trio.current_time()
            answer = await raw_answer(
                server.url, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:60]
            oldest = b""
            while chunk := await busy[0].receive_some(4096):
                oldest += chunk
            assert oldest.startswith(b"HTTP/1.1 503 "), oldest[:60]
            assert trio.current_time() - started < 5     # made room, not timed out (10 s)
            figures = _sampled(server)
            assert figures[("voiceagent_connections_over_cap_total", "closed_body")] == 1
            assert figures[("voiceagent_connections_over_cap_total", "refused")] == 0
            await call.say("what are your hours?")
            assert (await call.read_reply()).text.startswith("We are open")
            await call.hang_up()
            await server.runtime.calls.wait_idle()
            for stream in busy:
                await stream.aclose()
    logged = [r for r in records if r.getMessage() == EVICTED]
    assert len(logged) == 1
    assert not [r for r in records if r.getMessage() == "request body too slow"]


@pytest.mark.timeout(60)
def _sampled(server: RunningServer) -> dict[tuple[str, str], float]:
    """The connection figures as ``GET /metrics`` has them (read in-process: over the cap, a
    scrape would be refused too)."""
    metrics = server.runtime.metrics
    assert metrics is not None
    figures = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            if "connections" in sample.name:
                figures[(sample.name, sample.labels.get("outcome", ""))] = sample.value
    return figures


def _is_busy(answer: bytes) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 503 Service Unavailable", answer[:80]
    assert b"Retry-After: 5" in lines, head
    assert b"Connection: close" in lines, head
    assert body == b"server busy: too many connections, try again"


@pytest.mark.timeout(60)
async def test_with_nothing_to_close_a_new_connection_is_answered_503_at_once(
        tmp_path: Path, records: list[logging.LogRecord],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A live call and relay sockets waiting for their setup are never closed to make room:
    with the cap at 4, the call and three such sockets fill it, and a new connection gets a
    fixed 503 (it was closed unanswered: Twilio said 64102, a balancer logged a reset) at
    once, and is counted; the call goes on. (The cap is set here: derived, it always leaves
    room for more than the sockets that may wait.)"""
    monkeypatch.setattr(server_module, "connection_limit", lambda settings: 4)
    settings = make_settings(tmp_path, MAX_SOCKETS_WAITING="10", SETUP_TIMEOUT_S="60")
    with trio.fail_after(30):
        async with running_server(settings) as server, \
                open_call(server.url, auth_token=AUTH_TOKEN) as call:
            await call.say("what are your hours?")
            assert (await call.read_reply()).text.startswith("We are open")
            stream = _capture_emf(server.runtime)
            async with signed_socket(server), signed_socket(server), signed_socket(server):
                assert _sampled(server)[("voiceagent_open_connections", "")] == 4
                assert server.runtime.metrics is not None
                server.runtime.metrics.emit_active_calls()       # none refused yet
                started = trio.current_time()
                answer = await raw_answer(server.url,
                                          b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                _is_busy(answer)
                assert trio.current_time() - started < 1.5   # closed, not left to time out
                assert len(server.runtime.sockets_waiting) == 3
                figures = _sampled(server)
                assert figures[("voiceagent_connections_over_cap_total", "refused")] == 1
                assert figures[("voiceagent_open_connections_limit", "")] == 4
                server.runtime.metrics.emit_active_calls()
                server.runtime.metrics.emit_active_calls()       # counted in one line only
                await call.say("what are your hours?")
                assert (await call.read_reply()).text.startswith("We are open")
            await call.hang_up()
            await server.runtime.calls.wait_idle()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(d["OpenConnections"], d["ConnectionsRefused"]) for d in lines
            if "ActiveCalls" in d] == [(4, 0), (4, 1), (4, 0)]
    logged = [r for r in records if r.getMessage() == REFUSED]
    assert len(logged) == 1
    assert logged[0].levelno == logging.WARNING
    assert (vars(logged[0])["open_connections"], vars(logged[0])["max_connections"]) == (4, 4)


@pytest.mark.timeout(60)
async def test_peers_that_never_read_their_503_hold_nothing_and_log_one_line(
        tmp_path: Path, records: list[logging.LogRecord],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Over the cap, 40 peers send a request and never read: each is answered and closed
    at once all the same (the 503 waits in its receive buffer), so they hold no place and no
    task, and a peer that does read gets its 503 at once after them. One warning says so for
    the whole episode; the metrics count each."""
    monkeypatch.setattr(server_module, "connection_limit", lambda settings: 2)
    settings = make_settings(tmp_path, MAX_SOCKETS_WAITING="10", SETUP_TIMEOUT_S="60")
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    with trio.fail_after(30):
        async with running_server(settings) as server, \
                signed_socket(server), signed_socket(server), \
                contextlib.AsyncExitStack() as stack:
            silent = []
            for _ in range(40):
                stream = await stack.enter_async_context(await _connect(server.url))
                await stream.send_all(request)
                silent.append(stream)
            started = trio.current_time()
            _is_busy(await raw_answer(server.url, request))
            assert trio.current_time() - started < 1.5
            assert _sampled(server)[("voiceagent_connections_over_cap_total", "refused")] == 41
            assert _sampled(server)[("voiceagent_open_connections", "")] == 2
            for stream in silent:                  # their answers were there all along
                answer = b""
                with contextlib.suppress(trio.BrokenResourceError):
                    while chunk := await stream.receive_some(4096):
                        answer += chunk
                _is_busy(answer)
    assert len([r for r in records if r.getMessage() == REFUSED]) == 1


@pytest.mark.timeout(60)
async def test_idle_connections_past_the_open_file_limit_keep_no_one_out(
        tmp_path: Path) -> None:
    """``voiceagent serve`` held to 256 open files (a hard limit it cannot raise): 300 silent
    connections took every descriptor, accept failed with EMFILE and a /health waited
    unanswered. The cap (256 less the files reserved for the store and the process: 120)
    closes the oldest silent ones instead, and /health is answered at once."""
    with trio.fail_after(30):
        async with serve_process(tmp_path, open_files=(256, 256), MAX_CALLS="1000") as server:
            entry = await server.wait_log("open-file limit too low for MAX_CALLS")
            assert entry["max_connections"] == 120
            async with contextlib.AsyncExitStack() as stack:
                for _ in range(300):
                    await stack.enter_async_context(await _connect(server.url))
                with trio.fail_after(3):
                    answer = await raw_answer(server.url, b"GET /health HTTP/1.1\r\n"
                                                          b"Host: x\r\nConnection: close\r\n\r\n")
                assert answer.startswith(b"HTTP/1.1 200 "), answer[:60]
