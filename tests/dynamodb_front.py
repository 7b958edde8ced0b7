"""A front for moto on 127.0.0.1 that passes DynamoDB's requests through, or misbehaves on
cue for the next request of an operation: the real table decides every condition, and the
client meets what DynamoDB's network does to it now and then.

``fake_dynamodb`` answers writes itself and evaluates no condition; a conditional write
whose answer is lost needs the real decision behind it. Each request the front takes goes
to moto on a connection of its own (HTTP/1.1, parsed with h11 both ways) unless a fault
waits for its operation (``front.faults["PutItem"].append(Fault.LOSE_ANSWER)``):

* ``THROTTLE``: answered 400 ProvisionedThroughputExceededException, never sent on, as
  DynamoDB refuses a write over the table's capacity;
* ``LOSE_ANSWER``: sent on and applied (moto's answer read whole), then the client's
  connection is reset instead of answered: a timeout or a reset on the way back. On a
  kept-alive connection the store's client sends it again on a new one (``dynamodb_http``);
  with ``keep_alive`` off, every request comes on a new connection, which it does not;
* ``LATE``: held ``late_s``, then sent on and applied (``landed_late`` set), the client
  having given up on it by then: a write DynamoDB applies after its caller's deadline.

    async with running_front(moto_endpoint) as front:
        ...          # a store whose AWS_ENDPOINT_URL_DYNAMODB is front.url
"""

from __future__ import annotations

import enum
import json
import socket
import struct
import zlib
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import h11
import trio

HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length"}


class Fault(enum.Enum):
    THROTTLE = "throttle"
    LOSE_ANSWER = "lose_answer"
    LATE = "late"


class Front:
    def __init__(self, upstream: str, *, keep_alive: bool = True) -> None:
        parts = urlsplit(upstream)
        self._keep_alive = keep_alive
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.faults: defaultdict[str, deque[Fault]] = defaultdict(deque)
        self.seen: list[tuple[str, Fault | None]] = []      # operation, fault met
        self.late_s = 3.0
        self.landed_late = trio.Event()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        state = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await _read_request(client, state)
                if request is None:
                    return
                target = dict(request.headers).get(b"x-amz-target", b"").decode()
                operation = target.rpartition(".")[2]
                queue = self.faults[operation]
                fault = queue.popleft() if queue else None
                self.seen.append((operation, fault))
                if fault is Fault.THROTTLE:
                    status, headers, answer = _throttled()
                else:
                    if fault is Fault.LATE:
                        await trio.sleep(self.late_s)
                    status, headers, answer = await self._pass_on(request, body)
                    if fault is Fault.LATE:
                        self.landed_late.set()
                if fault is Fault.LOSE_ANSWER:      # applied; the client never hears of it
                    client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                             struct.pack("ii", 1, 0))
                    client.socket.close()
                    return
                headers = [*headers, (b"content-length", str(len(answer)).encode())]
                if not self._keep_alive:
                    headers.append((b"connection", b"close"))
                await client.send_all(
                    (state.send(h11.Response(status_code=status, headers=headers)) or b"")
                    + (state.send(h11.Data(data=answer)) or b"")
                    + (state.send(h11.EndOfMessage()) or b""))
                if not self._keep_alive:
                    return
                state.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError,
                h11.ProtocolError):
            return
        finally:
            with trio.CancelScope(shield=True):
                await client.aclose()

    async def _pass_on(self, request: h11.Request, body: bytes
                       ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """The request to moto on a connection of its own; its answer, read whole."""
        stream = await trio.open_tcp_stream(*self._upstream)
        async with stream:
            state = h11.Connection(h11.CLIENT)
            headers = [(name, value) for name, value in request.headers
                       if name.lower() not in HOP_BY_HOP]
            headers += [(b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")]
            await stream.send_all(
                (state.send(h11.Request(method=request.method, target=request.target,
                                        headers=headers)) or b"")
                + (state.send(h11.Data(data=body)) or b"")
                + (state.send(h11.EndOfMessage()) or b""))
            status, answer_headers, chunks = 0, [], []
            while True:
                event = state.next_event()
                if event is h11.NEED_DATA:
                    state.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    answer_headers = [(name, value) for name, value in event.headers
                                      if name.lower() not in HOP_BY_HOP]
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    return status, answer_headers, b"".join(chunks)


async def _read_request(stream: trio.SocketStream, state: h11.Connection
                        ) -> tuple[h11.Request | None, bytes]:
    request, body = None, bytearray()
    while True:
        event = state.next_event()
        if event is h11.NEED_DATA:
            state.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return request, bytes(body)
        else:                                   # the client closed its connection
            return None, b""


def _throttled() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    answer = json.dumps({
        "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
        "message": "The level of configured provisioned throughput for the table was "
                   "exceeded. Consider increasing your provisioning level with the "
                   "UpdateTable API."}).encode()
    return 400, [(b"content-type", b"application/x-amz-json-1.0"),
                 (b"x-amz-crc32", str(zlib.crc32(answer)).encode())], answer


@asynccontextmanager
async def running_front(upstream: str, *, keep_alive: bool = True) -> AsyncIterator[Front]:
    """Served for the block, then stopped (every connection closed)."""
    front = Front(upstream, keep_alive=keep_alive)
    async with trio.open_nursery() as nursery:
        await nursery.start(front.serve)
        try:
            yield front
        finally:
            nursery.cancel_scope.cancel()
