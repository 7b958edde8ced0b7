"""A kept-alive HTTP connection is closed once it has been idle HTTP_IDLE_TIMEOUT_S after its last
answer, and the next request's headers must all arrive within that time: anyone can open
connections (a GET /health, an unsigned POST answered 403), and each one held open for ever,
silent or trickling a header byte now and then, keeps a file descriptor and its tasks until
the process can accept no more, Twilio's included. hypercorn restarts its idle timer from the
task that sent the last body, and quart-trio cancels that task as soon as the body is out, so
the timer never ran again after a connection's first answer."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.server_harness import make_settings, running_server

REQUESTS = {
    "health": "GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n",
    "unsigned webhook": ("POST /twiml HTTP/1.1\r\nHost: {host}\r\nContent-Length: 3\r\n"
                         "Content-Type: application/x-www-form-urlencoded\r\n\r\na=b"),
}


async def answer(stream: trio.SocketStream) -> bytes:
    """One whole answer (every answer here has a Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += await stream.receive_some(4096)
    return head


@pytest.mark.parametrize("request_name", list(REQUESTS))
@pytest.mark.parametrize("trickle", [False, True], ids=["silent", "trickling headers"])
async def test_a_kept_alive_connection_is_closed_when_idle(
        tmp_path: Path, request_name: str, trickle: bool) -> None:
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path,
                                                HTTP_IDLE_TIMEOUT_S="0.5")) as server:
            host = server.url.removeprefix("http://")
            address, port = host.split(":")
            async with await trio.open_tcp_stream(address, int(port)) as stream, \
                    trio.open_nursery() as nursery:
                await stream.send_all(REQUESTS[request_name].format(host=host).encode())
                assert (await answer(stream)).split(b" ")[1] in (b"200", b"403")
                answered = trio.current_time()

                async def headers_a_byte_at_a_time() -> None:
                    try:
                        for byte in f"GET /health HTTP/1.1\r\nHost: {host}\r\nX-A: ".encode():
                            await stream.send_all(bytes([byte]))
                            await trio.sleep(0.1)
                        while True:
                            await stream.send_all(b"a")
                            await trio.sleep(0.1)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return

                if trickle:
                    nursery.start_soon(headers_a_byte_at_a_time)
                closed = False
                with trio.move_on_after(5):
                    try:
                        closed = await stream.receive_some(4096) == b""   # nothing said
                    except trio.BrokenResourceError:    # a reset: a trickled byte unread
                        closed = True
                closed_after = trio.current_time() - answered
                nursery.cancel_scope.cancel()
    assert closed
    assert 0.5 <= closed_after < 5
