"""The fake Bedrock endpoint's server: HTTP/1.1 with keep-alive on 127.0.0.1 (over TLS from a
private CA when asked), each request recorded, checked and answered with the next scripted
reply; see ``tests.fake_bedrock`` for what it is for and how a test runs it."""

from __future__ import annotations

import json
import math
import re
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import trio

from tests.fake_bedrock_replies import (
    Hangup,
    HangupBeforeHeaders,
    HttpError,
    Reply,
    Stall,
    Trickle,
)
from tests.fake_bedrock_requests import (
    ConnectionRecord,
    RecordedRequest,
    access_key,
    not_json,
    request_problems,
)
from tests.fake_bedrock_wire import hang_up, send_json, send_stream, trickle
from tests.fake_binding import BindingRule
from tests.fake_caching import caching_refusal
from tests.fake_effort import effort_refusal
from tests.fake_reasoning import ReasoningRule
from tests.fake_samplers import sampler_refusal
from tests.fake_tools import tool_refusal
from tests.http_requests import parse_request
from tests.kernel_arrival import receive_stamped, stamp_arrivals, stamping_on

if TYPE_CHECKING:
    import trustme

_PATH = re.compile(r"^/model/(?P<model>[^/]+)/converse-stream$")
EXPIRED_TOKEN_MESSAGE = "The security token included in the request is expired"


# method, path, headers, body, and when its first bytes arrived (``kernel_arrival``)
_Parsed = tuple[str, str, dict[str, str], bytes, float | None]

class FakeBedrock:
    """Scripted replies in arrival order (``push``), then ``responder``, else an HTTP 500.

    ``tls``: serve HTTPS, certificate for localhost and 127.0.0.1 from ``ca`` (a new
    ``trustme.CA`` unless given). ``accepted_keys``: when a set, a request signed with an
    access key id outside it is answered 403 ``ExpiredTokenException`` (and takes no scripted
    reply); the set is kept, not copied, so a test changes it in place. ``profiles``: the
    model each application-inference-profile ARN runs, whose refusals (its sampling
    parameters) the ARN gets, as Bedrock's own: the ARN does not say which model it is."""

    def __init__(self, *, responder: Callable[[RecordedRequest], Reply] | None = None,
                 keep_bodies: bool = True, tls: bool = False, ca: trustme.CA | None = None,
                 accepted_keys: set[str] | None = None,
                 profiles: Mapping[str, str] | None = None) -> None:
        self.responder = responder
        self.profiles = dict(profiles or {})
        self.keep_bodies = keep_bodies
        self.port = 0
        self._stamped = False               # its connections' reads carry arrival stamps
        self.requests: list[RecordedRequest] = []
        self.connections: list[ConnectionRecord] = []
        self.violations: list[str] = []
        self.reasoning = ReasoningRule()
        self.binding = BindingRule()
        self.accepted_keys = accepted_keys
        self.tls = tls
        self.ca: trustme.CA | None = None
        if tls:
            import trustme  # only here: the benchmark mode runs without it

            self.ca = ca or trustme.CA()
        self.ca_bundle: str | None = None   # the CA's PEM file (running_fake_bedrock writes it)
        self.tls_failures = 0               # handshakes that failed (client distrusts us...)
        self.tls_errors: list[str] = []
        self._ssl_context: ssl.SSLContext | None = None
        if self.ca is not None:
            self._ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ca.issue_cert("localhost", "127.0.0.1").configure_cert(self._ssl_context)
        self._script: deque[Reply] = deque()
        self._arrived = trio.lowlevel.ParkingLot()
        self._tls_failed = trio.lowlevel.ParkingLot()

    @property
    def endpoint_url(self) -> str:
        if self.tls:
            return f"https://localhost:{self.port}"
        return f"http://127.0.0.1:{self.port}"

    def write_ca_bundle(self, path: Path) -> str:
        """The CA certificate as PEM at ``path``; sets and returns ``ca_bundle``."""
        if self.ca is None:
            raise RuntimeError("FakeBedrock: no CA without tls=True")
        self.ca.cert_pem.write_to_path(str(path))
        self.ca_bundle = str(path)
        return self.ca_bundle

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this fake's CA (and nothing else)."""
        if self.ca is None:
            raise RuntimeError("FakeBedrock: no CA without tls=True")
        context = ssl.create_default_context()
        context.load_verify_locations(cadata=self.ca.cert_pem.bytes().decode())
        return context

    async def wait_tls_failures(self, count: int) -> None:
        while self.tls_failures < count:
            await self._tls_failed.park()

    def push(self, *replies: Reply) -> None:
        self._script.extend(replies)

    async def wait_requests(self, count: int) -> list[RecordedRequest]:
        while len(self.requests) < count:
            await self._arrived.park()
        return self.requests[:count]

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Listen on 127.0.0.1, an ephemeral port, until cancelled."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        # on the listener, which its connections inherit: a request sent as the connection
        # opened reaches the socket before this side accepts it, and would go unstamped;
        # and on in the kernel before the first request can come (``stamping_on``)
        self._stamped = stamp_arrivals(listeners[0].socket) and await stamping_on()
        task_status.started(self.endpoint_url)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, raw: trio.SocketStream) -> None:
        opened_at = time.perf_counter()
        stream: trio.abc.Stream = raw
        record: ConnectionRecord | None = None
        try:
            if self._ssl_context is not None:
                stream = await self._handshake(raw)
                if stream is raw:
                    return
            record = ConnectionRecord(len(self.connections), opened_at,
                                      tls=self._ssl_context is not None)
            self.connections.append(record)
            send, receive = trio.open_memory_channel[_Parsed](math.inf)
            with record.scope:
                await self._serve_connection(stream, raw, record, send, receive)
        finally:
            with trio.CancelScope(shield=True):
                if record is None or record.hung_up_at is not None or stream is raw:
                    await raw.aclose()
                else:
                    with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await stream.aclose()   # close_notify, then the socket
                    await raw.aclose()
                if record is not None:
                    record.server_closed.set()

    async def _handshake(self, raw: trio.SocketStream) -> trio.abc.Stream:
        """The TLS stream, or ``raw`` itself when the handshake failed (then counted)."""
        assert self._ssl_context is not None
        tls = trio.SSLStream(raw, self._ssl_context, server_side=True)
        try:
            await tls.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as err:
            self.tls_failures += 1
            self.tls_errors.append(repr(err.__cause__ or err))
            self._tls_failed.unpark_all()
            return raw
        return tls

    def drop_idle_connections(self) -> int:
        """Close every connection with no reply in flight, as a server's keep-alive timeout
        does, without telling the client; returns how many."""
        busy = {r.connection.id for r in self.requests if not r.done.is_set()}
        idle = [c for c in self.connections if c.closed_at is None and c.id not in busy]
        for connection in idle:
            connection.scope.cancel()
        return len(idle)

    async def _serve_connection(self, stream: trio.abc.Stream, raw: trio.SocketStream,
                                record: ConnectionRecord,
                                send: trio.MemorySendChannel[_Parsed],
                                receive: trio.MemoryReceiveChannel[_Parsed]) -> None:
        async with trio.open_nursery() as nursery:
            stamped = raw if stream is raw and self._stamped else None
            nursery.start_soon(self._read, stream, stamped, record, send,
                               nursery.cancel_scope)
            async with receive:
                async for method, path, headers, body, arrived_at in receive:
                    await self._respond(stream, raw, record, method, path, headers, body,
                                        arrived_at)
                    if record.hung_up_at is not None:
                        break
            nursery.cancel_scope.cancel()

    async def _read(self, stream: trio.abc.Stream, stamped: trio.SocketStream | None,
                    record: ConnectionRecord, send: trio.MemorySendChannel[_Parsed],
                    writer: trio.CancelScope) -> None:
        """Parses requests, and notes the moment the client closes, even mid-reply.
        ``stamped``: the plain TCP stream whose reads carry the kernel's arrival stamps."""
        buffer = bytearray()
        arrived_at: float | None = None         # of the buffered request's first bytes
        with send:
            while True:
                stamp = None
                try:
                    if stamped is not None:
                        data, stamp = await receive_stamped(stamped, 65536)
                    else:
                        data = await stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if record.hung_up_at is not None:
                    return                      # this side closed it, not the client
                if not data:
                    record.closed_at = time.perf_counter()
                    record.closed.set()
                    writer.cancel()             # stop writing a reply nobody reads
                    return
                if not buffer:
                    arrived_at = stamp
                buffer += data
                while (request := parse_request(buffer)) is not None:
                    await send.send((*request, arrived_at))
                    arrived_at = stamp          # a pipelined one behind it came with this read

    async def _respond(self, stream: trio.abc.Stream, raw: trio.SocketStream,
                       record: ConnectionRecord, method: str, path: str,
                       headers: dict[str, str], body: bytes, arrived_at: float | None) -> None:
        if method == "GET" and path == "/stats":
            await send_json(stream, 200, self.stats())
            return
        match = _PATH.match(path)
        if method != "POST" or match is None:
            await send_json(stream, 404, {"message": f"fake: no route {method} {path}"},
                             error_type="UnknownOperationException")
            return
        request = self._record(unquote(match["model"]), headers, body, record)
        request.arrived_at = arrived_at
        request.path = path
        request.access_key = access_key(headers)
        if self.keep_bodies:
            request.raw_body = body
        try:
            if self.accepted_keys is not None and request.access_key not in self.accepted_keys:
                request.outcome = "http_error"
                await send_json(stream, 403, {"message": EXPIRED_TOKEN_MESSAGE},
                                 error_type="ExpiredTokenException")
                return
            model_id = self.profiles.get(request.model_id, request.model_id)
            cache_refusal = caching_refusal(model_id, request.body)
            if cache_refusal is not None:
                status, error_type, message = cache_refusal
                self.violations.append(f"request {request.index}: {message}")
                request.outcome = "http_error"
                await send_json(stream, status, {"message": message}, error_type=error_type)
                return
            refusal = (tool_refusal(model_id, request.body)
                       or sampler_refusal(model_id, request.body)
                       or effort_refusal(model_id, request.body)
                       or self.reasoning.refusal(request.body)
                       or self.binding.refusal(model_id, request.body))
            if refusal is not None:
                self.violations.append(f"request {request.index}: {refusal}")
                request.outcome = "http_error"      # no scripted reply taken, as Bedrock's
                await send_json(stream, 400, {"message": refusal},
                                 error_type="ValidationException")
                return
            reply = self._next_reply(request)
            asked = self.binding.asked(request.body)
            if not self.keep_bodies:
                request.body = {"requestMetadata": request.body.get("requestMetadata", {})}
            if isinstance(reply, HttpError):
                await trio.sleep(reply.delay_s)
                request.outcome = "http_error"
                await send_json(stream, reply.status, {"message": reply.message},
                                 error_type=reply.error_type)
                return
            if isinstance(reply, HangupBeforeHeaders):
                await trio.sleep(reply.delay_s)
                request.outcome = hang_up(raw, record, reset=reply.reset)
                return
            # what a reply sends is issued before it is sent: a client in this process may
            # ask again before this task runs again
            if isinstance(reply, Hangup):
                self.reasoning.issued(reply.frames[:reply.after_frames])
                self.binding.issued(asked, reply.frames[:reply.after_frames])
                await send_stream(stream, request, reply.frames[:reply.after_frames],
                                   reply.headers_delay_s, end=False)
                request.outcome = hang_up(raw, record, reset=reply.reset)
                return
            self.reasoning.issued(reply.frames)
            self.binding.issued(asked, reply.frames)
            if isinstance(reply, Stall | Trickle):
                await send_stream(stream, request, reply.frames,
                                   reply.headers_delay_s, end=False)
                request.outcome = "stalled"
                if isinstance(reply, Trickle):
                    await trickle(stream, reply)
                await trio.sleep_forever()      # until the reader sees the client close
            await send_stream(stream, request, reply.frames, reply.headers_delay_s, end=True)
            request.outcome = "complete"
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            request.outcome = "client_closed"
        finally:
            if request.outcome == "pending" or (request.outcome == "stalled"
                                                and record.closed.is_set()):
                request.outcome = "client_closed"
            request.done.set()

    def _record(self, model_id: str, headers: dict[str, str], raw: bytes,
                connection: ConnectionRecord) -> RecordedRequest:
        received_at = time.perf_counter()       # before this side's own work on it
        try:
            body = json.loads(raw, parse_constant=not_json)    # NaN, Infinity: as Bedrock
        except ValueError:
            body = {}
            self.violations.append(f"request {len(self.requests)}: body is not JSON")
        index = len(self.requests)
        self.violations.extend(f"request {index}: {p}" for p in request_problems(body))
        request = RecordedRequest(index, model_id, body, headers, connection, received_at)
        connection.requests += 1
        self.requests.append(request)
        self._arrived.unpark_all()
        return request

    def _next_reply(self, request: RecordedRequest) -> Reply:
        if self._script:
            return self._script.popleft()
        if self.responder is not None:
            return self.responder(request)
        return HttpError(500, "InternalServerException", "fake: no scripted reply")

    def stats(self) -> dict[str, Any]:
        return {
            "connections": [{"id": c.id, "opened_at": c.opened_at, "closed_at": c.closed_at,
                             "hung_up_at": c.hung_up_at, "requests": c.requests}
                            for c in self.connections],
            "requests": [{"index": r.index, "call_sid": r.call_sid,
                          "connection": r.connection.id, "received_at": r.received_at,
                          "arrived_at": r.arrived_at,
                          "frames_sent": r.frames_sent, "outcome": r.outcome,
                          "first_late_s": r.first_late_s, "first_sent_at": r.first_sent_at,
                          "access_key": r.access_key}
                         for r in self.requests],
            "violations": self.violations[:20],
            "tls_failures": self.tls_failures,
        }
