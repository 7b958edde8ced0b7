"""How the fake Bedrock endpoint writes a reply on the connection: chunked event-stream frames
at their pace, an error as JSON with ``x-amzn-ErrorType``, bytes trickled, or the TCP
connection closed under any TLS layer (FIN or RST)."""

from __future__ import annotations

import http
import json
import socket
import struct
import time
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

import trio

from tests.fake_bedrock_frames import Frame
from tests.fake_bedrock_replies import Trickle
from tests.fake_bedrock_requests import ConnectionRecord, RecordedRequest

ERROR_TYPE_SUFFIX = ":http://internal.amazon.com/coral/com.amazon.bedrock/"


async def send_stream(stream: trio.abc.Stream, request: RecordedRequest,
                       frames: Sequence[Frame], headers_delay_s: float, *, end: bool) -> None:
    """``200`` headers, then each frame as one chunk (one ``send_all``, so one TLS record),
    and with ``end`` the chunked terminator."""
    # Each delay counts from when the frame before it was due, not from when it went out:
    # under load the pace stays the model's, as a real endpoint's would.
    due = trio.current_time() + headers_delay_s
    await trio.sleep_until(due)
    await stream.send_all(b"HTTP/1.1 200 OK\r\n"
                          b"Content-Type: application/vnd.amazon.eventstream\r\n"
                          b"Transfer-Encoding: chunked\r\n"
                          b"x-amzn-RequestId: fake-%d\r\n\r\n" % request.index)
    for frame in frames:
        if frame.delay_s:
            due += frame.delay_s
            await trio.sleep_until(due)
        if frame.delay_s and request.first_sent_at is None:
            request.first_sent_at = time.perf_counter()
        request.frames_sent += 1    # before the send: a client in this process may
                                    # read the frame before this task runs again
        await stream.send_all(b"%x\r\n%b\r\n" % (len(frame.data), frame.data))
        if frame.delay_s and request.first_late_s is None:
            request.first_late_s = trio.current_time() - due    # this side's lag
    if end:
        await stream.send_all(b"0\r\n\r\n")


async def trickle(stream: trio.abc.Stream, reply: Trickle) -> None:
    body = b"".join(b"%x\r\n%b\r\n" % (len(f.data), f.data) for f in reply.trickled)
    for at in range(0, len(body), reply.piece_bytes):
        await trio.sleep(reply.gap_s)
        await stream.send_all(body[at:at + reply.piece_bytes])


def hang_up(raw: trio.SocketStream, record: ConnectionRecord, *, reset: bool) -> str:
    """Close the TCP connection under any TLS layer (no close_notify): FIN, or RST with
    ``reset``. Synchronous, so the connection's reader sees ``hung_up_at`` before it runs
    again. Returns the outcome to record."""
    record.hung_up_at = time.perf_counter()
    sock = raw.socket
    with suppress(OSError):         # the client may be gone already
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            sock.shutdown(socket.SHUT_WR)
    sock.close()
    return "reset" if reset else "hangup"


async def send_json(stream: trio.abc.Stream, status: int, body: Any, *,
                     error_type: str | None = None) -> None:
    data = json.dumps(body).encode()
    head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}",
            "Content-Type: application/json", f"Content-Length: {len(data)}"]
    if error_type is not None:
        head.append(f"x-amzn-ErrorType: {error_type}{ERROR_TYPE_SUFFIX}")
    await stream.send_all(("\r\n".join(head) + "\r\n\r\n").encode() + data)
