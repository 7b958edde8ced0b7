"""A local Bedrock Runtime endpoint that speaks the real ConverseStream wire format, so the real
boto3 client parses real frames.

HTTP/1.1 with keep-alive on 127.0.0.1; ``POST /model/{modelId}/converse-stream`` answers
``200`` with ``Transfer-Encoding: chunked`` and one event-stream frame per chunk (a
``Content-Length`` body would make urllib3 read everything at the end). Each request takes the
next scripted reply (``push``), else asks ``responder``. Replies are event frames with delays,
exception frames mid-stream, HTTP errors with ``x-amzn-ErrorType``, or delayed headers.

Faults a network can make are replies too: ``Hangup`` (the connection closes mid-stream, FIN
or RST), ``HangupBeforeHeaders`` (closed after the request, not one byte answered) and
``Stall`` (headers and some frames, then silence until the client gives up), and ``Trickle``
(bytes keep coming, a few seconds apart, and never make a whole event).

Every request body is recorded and checked against Converse's rules; problems collect in
``violations`` so a test asserts there are none. A request that leaves out (or changes) the
reasoning a reply sent with its tool use is answered as Bedrock answers it for a Claude model
thinking with tools, HTTP 400 ValidationException (``fake_reasoning``), and is a violation;
so is one with a sampling parameter the model refuses (``fake_samplers``), or a kind of
thinking or an effort it does not take (``fake_effort``), or one that sends a reasoning block
back after what came before it changed, to a model that binds its thinking to the
conversation (``fake_binding``), or that puts a cache point where the model takes none
(``fake_caching``), or offers a tool spec Bedrock or the model refuses (``fake_tools``).
Every connection records when the client closed it, from a reader that watches the socket
while the reply is being written.

    async with running_fake_bedrock() as fake:
        fake.push(text_reply(["Hello", " there"]))
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", fake.endpoint_url)

With ``tls=True`` it serves HTTPS with a certificate for ``localhost`` and ``127.0.0.1`` from
a private CA (``trustme``): ``endpoint_url`` is ``https://localhost:{port}`` and
``ca_bundle`` the CA's PEM file, for ``AWS_CA_BUNDLE`` or ``verify=``. Each frame is still
one ``send_all``, so one TLS record. With ``accepted_keys`` it answers a SigV4 signature
from any other access key id as an expired token (403 ``ExpiredTokenException``).

``python -m tests.fake_bedrock`` serves the benchmark script (model id ``bench.d{N}.g{MS}``:
N text deltas MS milliseconds apart; see ``bench_reply``) and ``GET /stats`` until interrupted;
with ``--scripted CONFIG_DIR`` it answers as the use cases there script it, at the pace
``--first-token-ms`` and ``--token-ms`` give (the latency benchmarks' model).
"""

from __future__ import annotations

import argparse
import http
import json
import math
import re
import socket
import ssl
import struct
import sys
import tempfile
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import trio

from tests.fake_binding import BindingRule
from tests.fake_caching import caching_refusal
from tests.fake_effort import effort_refusal
from tests.fake_reasoning import ReasoningRule
from tests.fake_samplers import sampler_refusal
from tests.fake_tools import tool_refusal
from tests.http_requests import parse_request
from voiceagent.catalog import read_config_dir
from voiceagent.errors import ModelRejected
from voiceagent.llm.base import LLMRequest, TextDelta, ToolUseRequest, Usage
from voiceagent.llm.converse import converse_problems
from voiceagent.llm.scripted import ScriptedLLM
from voiceagent.tools.registry import default_registry

if TYPE_CHECKING:
    import trustme

ERROR_TYPE_SUFFIX = ":http://internal.amazon.com/coral/com.amazon.bedrock/"
_PATH = re.compile(r"^/model/(?P<model>[^/]+)/converse-stream$")
_METADATA = re.compile(r"^[a-zA-Z0-9 \t\n\r\f\v:_@$#=/+,\-.]{0,256}$")
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_BENCH_MODEL = re.compile(
    r"^bench\.d(?P<deltas>\d+)\.g(?P<gap_ms>\d+)(\.h(?P<headers_ms>\d+))?$")
_CREDENTIAL = re.compile(r"Credential=(?P<key>[^/,\s]+)/")
EXPIRED_TOKEN_MESSAGE = "The security token included in the request is expired"


# ---------------------------------------------------------------------------- frames

def encode_frame(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One event-stream message: prelude (total length, headers length, CRC32), headers
    (all type 7, string), payload, CRC32 of everything before it. Big-endian throughout."""
    encoded = b"".join(_header(name, value) for name, value in headers.items())
    prelude = struct.pack("!II", 16 + len(encoded) + len(payload), len(encoded))
    message = prelude + struct.pack("!I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack("!I", zlib.crc32(message))


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    return (struct.pack("!B", len(raw_name)) + raw_name
            + struct.pack("!BH", 7, len(raw_value)) + raw_value)


@dataclass(frozen=True, slots=True)
class Frame:
    data: bytes
    delay_s: float = 0.0                # slept before this frame is sent
    # (event type, body) of an event, for the endpoint's own rules (``fake_reasoning``)
    parsed: tuple[str, Any] | None = field(default=None, compare=False)


def event(event_type: str, body: Mapping[str, Any], *, delay_s: float = 0.0) -> Frame:
    headers = {":message-type": "event", ":event-type": event_type,
               ":content-type": "application/json"}
    return Frame(encode_frame(headers, json.dumps(body).encode()), delay_s, (event_type, body))


def exception(exception_type: str, message: str = "scripted", *, delay_s: float = 0.0,
              **fields: Any) -> Frame:
    """A modeled error inside the stream, e.g. ``throttlingException`` (camelCase)."""
    headers = {":message-type": "exception", ":exception-type": exception_type,
               ":content-type": "application/json"}
    return Frame(encode_frame(headers, json.dumps({"message": message, **fields}).encode()),
                 delay_s)


def error(code: str, message: str = "scripted", *, delay_s: float = 0.0) -> Frame:
    """An unmodeled error: ``:message-type error`` with code and message headers."""
    headers = {":message-type": "error", ":error-code": code, ":error-message": message}
    return Frame(encode_frame(headers, b""), delay_s)


def message_start() -> Frame:
    return event("messageStart", {"role": "assistant"})


def text_events(deltas: Iterable[str], *, index: int = 0, gap_s: float = 0.0,
                first_delay_s: float | None = None, stop: bool = True) -> list[Frame]:
    frames = []
    for n, text in enumerate(deltas):
        delay = gap_s if n or first_delay_s is None else first_delay_s
        frames.append(event("contentBlockDelta", {"contentBlockIndex": index,
                                                  "delta": {"text": text}}, delay_s=delay))
    if stop:
        frames.append(event("contentBlockStop", {"contentBlockIndex": index}))
    return frames


def tool_events(index: int, tool_use_id: str, name: str, fragments: Iterable[str], *,
                gap_s: float = 0.0) -> list[Frame]:
    """A toolUse block: start (id and name), the input JSON in fragments, stop."""
    frames = [event("contentBlockStart", {"contentBlockIndex": index, "start": {
        "toolUse": {"toolUseId": tool_use_id, "name": name}}})]
    frames += [event("contentBlockDelta", {"contentBlockIndex": index,
                                           "delta": {"toolUse": {"input": fragment}}},
                     delay_s=gap_s) for fragment in fragments]
    frames.append(event("contentBlockStop", {"contentBlockIndex": index}))
    return frames


def reasoning_events(index: int, texts: Iterable[str], *,
                     signature: str | None = "c2lnbmF0dXJl") -> list[Frame]:
    """A reasoning block: its text in deltas, then (as Claude sends it) its signature."""
    frames = [event("contentBlockDelta", {"contentBlockIndex": index, "delta": {
        "reasoningContent": {"text": text}}}) for text in texts]
    if signature is not None:
        frames.append(event("contentBlockDelta", {"contentBlockIndex": index, "delta": {
            "reasoningContent": {"signature": signature}}}))
    frames.append(event("contentBlockStop", {"contentBlockIndex": index}))
    return frames


def redacted_events(index: int, blob: str) -> list[Frame]:
    """A redacted reasoning block: the encrypted blob, base64 as the wire carries it."""
    return [event("contentBlockDelta", {"contentBlockIndex": index, "delta": {
        "reasoningContent": {"redactedContent": blob}}}),
        event("contentBlockStop", {"contentBlockIndex": index})]


def message_end(stop_reason: str = "end_turn", *, input_tokens: int = 12,
                output_tokens: int = 5, cache_read: int | None = None,
                cache_write: int | None = None) -> list[Frame]:
    usage: dict[str, int] = {"inputTokens": input_tokens, "outputTokens": output_tokens,
                             "totalTokens": input_tokens + output_tokens}
    if cache_read is not None:
        usage["cacheReadInputTokens"] = cache_read
    if cache_write is not None:
        usage["cacheWriteInputTokens"] = cache_write
    return [event("messageStop", {"stopReason": stop_reason}),
            event("metadata", {"usage": usage, "metrics": {"latencyMs": 42}, "p": "abcdef"})]


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


# ---------------------------------------------------------------------------- replies

@dataclass(frozen=True, slots=True)
class StreamReply:
    frames: tuple[Frame, ...]
    headers_delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class HttpError:
    status: int
    error_type: str                     # x-amzn-ErrorType, e.g. "ThrottlingException"
    message: str = "scripted"
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Hangup:
    """``200`` headers, the first ``after_frames`` of ``frames`` (their delays kept), then the
    TCP connection closes with no chunked terminator: a FIN (``reset=False``; over TLS without
    a ``close_notify``, as a dying load balancer would) or an RST (``reset=True``: SO_LINGER 0,
    then close). With an RST, bytes still in our send buffer are dropped; frames the client's
    kernel already holds are read before the reset error (small frames on loopback: all)."""
    after_frames: int
    reset: bool = False
    frames: tuple[Frame, ...] = ()
    headers_delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class HangupBeforeHeaders:
    """The request is read, then the connection closes (FIN or RST) without one byte sent."""
    reset: bool = False
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Stall:
    """``200`` headers and ``frames``, then nothing more, the connection held open until the
    client closes it (its read timeout): outcome ``stalled``, then ``client_closed``."""
    frames: tuple[Frame, ...] = ()
    headers_delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Trickle:
    """``200`` headers and ``frames`` whole, then the body of ``trickled`` (chunked, as
    ``StreamReply`` sends it) ``piece_bytes`` at a time, ``gap_s`` apart: bytes keep coming
    and no event is ever whole in time. Held open after the last piece, as ``Stall``."""
    trickled: tuple[Frame, ...]
    frames: tuple[Frame, ...] = ()
    piece_bytes: int = 1
    gap_s: float = 3.0
    headers_delay_s: float = 0.0


Reply = StreamReply | HttpError | Hangup | HangupBeforeHeaders | Stall | Trickle


def stream_reply(*parts: Frame | Sequence[Frame], headers_delay_s: float = 0.0) -> StreamReply:
    frames: list[Frame] = []
    for part in parts:
        frames.extend([part] if isinstance(part, Frame) else part)
    return StreamReply(tuple(frames), headers_delay_s)


def text_reply(deltas: Sequence[str], *, gap_s: float = 0.0, stop_reason: str = "end_turn",
               headers_delay_s: float = 0.0, **usage: Any) -> StreamReply:
    return stream_reply(message_start(), text_events(deltas, gap_s=gap_s),
                        message_end(stop_reason, **usage), headers_delay_s=headers_delay_s)


def burst_reply(deltas: Sequence[str], *, first_delay_s: float, stop_reason: str = "end_turn",
                **usage: Any) -> StreamReply:
    """The first delta ``first_delay_s`` after the headers, every other frame right behind it,
    back to back: over TLS, one record per event arriving in one burst."""
    return stream_reply(message_start(), text_events(deltas, first_delay_s=first_delay_s),
                        message_end(stop_reason, **usage))


def hangup_reply(deltas: Sequence[str], after: int, reset: bool = False, *,
                 gap_s: float = 0.0) -> Hangup:
    """messageStart, the text deltas, contentBlockStop, messageStop and metadata, cut after
    the first ``after`` of those frames (``after=1``: only messageStart arrives)."""
    frames = [message_start(), *text_events(deltas, gap_s=gap_s), *message_end()]
    return Hangup(after, reset, tuple(frames))


# ---------------------------------------------------------------------------- records

@dataclass(eq=False)
class ConnectionRecord:
    id: int
    opened_at: float                    # time.perf_counter()
    closed_at: float | None = None      # when the client closed (EOF or reset)
    requests: int = 0
    closed: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)   # ends the handler
    hung_up_at: float | None = None     # when this side closed it on purpose (Hangup...)
    server_closed: trio.Event = field(default_factory=trio.Event)   # this side's socket closed
    tls: bool = False                   # the handshake was done (tls=True)


@dataclass(eq=False)
class RecordedRequest:
    index: int
    model_id: str
    body: dict[str, Any]
    headers: dict[str, str]
    connection: ConnectionRecord
    received_at: float
    frames_sent: int = 0
    # complete | client_closed | http_error | hangup | reset | stalled (still held open)
    outcome: str = "pending"
    first_late_s: float | None = None   # the first paced frame went out this late (our lag)
    done: trio.Event = field(default_factory=trio.Event)
    path: str = ""                      # as sent, percent-encoding included
    raw_body: bytes = b""               # as sent (kept with keep_bodies)
    access_key: str | None = None       # Credential=AKID/... of the SigV4 Authorization

    @property
    def call_sid(self) -> str:
        return str((self.body.get("requestMetadata") or {}).get("callSid", ""))


def request_problems(body: Mapping[str, Any]) -> list[str]:
    """What ConverseStream would refuse in ``body``, beyond what botocore checks locally."""
    tool_config = body.get("toolConfig")
    tools = tool_config.get("tools", []) if isinstance(tool_config, Mapping) else []
    problems = converse_problems(body.get("messages") or [], tools_configured=bool(tools))
    if tool_config is not None and not tools:
        problems.append("toolConfig.tools: empty")
    for n, tool in enumerate(tools):
        spec = tool.get("toolSpec")
        if spec is not None and not _TOOL_NAME.match(str(spec.get("name", ""))):
            problems.append(f"toolConfig.tools[{n}]: bad name")
        if spec is not None and "json" not in (spec.get("inputSchema") or {}):
            problems.append(f"toolConfig.tools[{n}]: no inputSchema.json")
    for n, block in enumerate(body.get("system") or []):
        if "text" in block and not str(block["text"]).strip():
            problems.append(f"system[{n}]: blank text")
    metadata = body.get("requestMetadata") or {}
    if len(metadata) > 16:
        problems.append("requestMetadata: more than 16 entries")
    for key, value in metadata.items():
        if not key or not _METADATA.match(key) or not _METADATA.match(str(value)):
            problems.append(f"requestMetadata[{key!r}]: outside the allowed pattern")
    if (body.get("inferenceConfig") or {}).get("maxTokens", 1) < 1:
        problems.append("inferenceConfig.maxTokens: below 1")
    return problems


# ---------------------------------------------------------------------------- the server

_Parsed = tuple[str, str, dict[str, str], bytes]     # method, path, headers, body

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
            nursery.start_soon(self._read, stream, record, send, nursery.cancel_scope)
            async with receive:
                async for method, path, headers, body in receive:
                    await self._respond(stream, raw, record, method, path, headers, body)
                    if record.hung_up_at is not None:
                        break
            nursery.cancel_scope.cancel()

    async def _read(self, stream: trio.abc.Stream, record: ConnectionRecord,
                    send: trio.MemorySendChannel[_Parsed], writer: trio.CancelScope) -> None:
        """Parses requests, and notes the moment the client closes, even mid-reply."""
        buffer = bytearray()
        with send:
            while True:
                try:
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
                buffer += data
                while (request := parse_request(buffer)) is not None:
                    await send.send(request)

    async def _respond(self, stream: trio.abc.Stream, raw: trio.SocketStream,
                       record: ConnectionRecord, method: str, path: str,
                       headers: dict[str, str], body: bytes) -> None:
        if method == "GET" and path == "/stats":
            await _send_json(stream, 200, self.stats())
            return
        match = _PATH.match(path)
        if method != "POST" or match is None:
            await _send_json(stream, 404, {"message": f"fake: no route {method} {path}"},
                             error_type="UnknownOperationException")
            return
        request = self._record(unquote(match["model"]), headers, body, record)
        request.path = path
        request.access_key = _access_key(headers)
        if self.keep_bodies:
            request.raw_body = body
        try:
            if self.accepted_keys is not None and request.access_key not in self.accepted_keys:
                request.outcome = "http_error"
                await _send_json(stream, 403, {"message": EXPIRED_TOKEN_MESSAGE},
                                 error_type="ExpiredTokenException")
                return
            model_id = self.profiles.get(request.model_id, request.model_id)
            cache_refusal = caching_refusal(model_id, request.body)
            if cache_refusal is not None:
                status, error_type, message = cache_refusal
                self.violations.append(f"request {request.index}: {message}")
                request.outcome = "http_error"
                await _send_json(stream, status, {"message": message}, error_type=error_type)
                return
            refusal = (tool_refusal(model_id, request.body)
                       or sampler_refusal(model_id, request.body)
                       or effort_refusal(model_id, request.body)
                       or self.reasoning.refusal(request.body)
                       or self.binding.refusal(model_id, request.body))
            if refusal is not None:
                self.violations.append(f"request {request.index}: {refusal}")
                request.outcome = "http_error"      # no scripted reply taken, as Bedrock's
                await _send_json(stream, 400, {"message": refusal},
                                 error_type="ValidationException")
                return
            reply = self._next_reply(request)
            asked = self.binding.asked(request.body)
            if not self.keep_bodies:
                request.body = {"requestMetadata": request.body.get("requestMetadata", {})}
            if isinstance(reply, HttpError):
                await trio.sleep(reply.delay_s)
                request.outcome = "http_error"
                await _send_json(stream, reply.status, {"message": reply.message},
                                 error_type=reply.error_type)
                return
            if isinstance(reply, HangupBeforeHeaders):
                await trio.sleep(reply.delay_s)
                request.outcome = _hang_up(raw, record, reset=reply.reset)
                return
            # what a reply sends is issued before it is sent: a client in this process may
            # ask again before this task runs again
            if isinstance(reply, Hangup):
                self.reasoning.issued(reply.frames[:reply.after_frames])
                self.binding.issued(asked, reply.frames[:reply.after_frames])
                await _send_stream(stream, request, reply.frames[:reply.after_frames],
                                   reply.headers_delay_s, end=False)
                request.outcome = _hang_up(raw, record, reset=reply.reset)
                return
            self.reasoning.issued(reply.frames)
            self.binding.issued(asked, reply.frames)
            if isinstance(reply, Stall | Trickle):
                await _send_stream(stream, request, reply.frames,
                                   reply.headers_delay_s, end=False)
                request.outcome = "stalled"
                if isinstance(reply, Trickle):
                    await _trickle(stream, reply)
                await trio.sleep_forever()      # until the reader sees the client close
            await _send_stream(stream, request, reply.frames, reply.headers_delay_s, end=True)
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
        try:
            body = json.loads(raw, parse_constant=_not_json)    # NaN, Infinity: as Bedrock
        except ValueError:
            body = {}
            self.violations.append(f"request {len(self.requests)}: body is not JSON")
        index = len(self.requests)
        self.violations.extend(f"request {index}: {p}" for p in request_problems(body))
        request = RecordedRequest(index, model_id, body, headers, connection,
                                  time.perf_counter())
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
                          "frames_sent": r.frames_sent, "outcome": r.outcome,
                          "first_late_s": r.first_late_s, "access_key": r.access_key}
                         for r in self.requests],
            "violations": self.violations[:20],
            "tls_failures": self.tls_failures,
        }


def _access_key(headers: Mapping[str, str]) -> str | None:
    match = _CREDENTIAL.search(headers.get("authorization", ""))
    return match["key"] if match else None


async def _send_stream(stream: trio.abc.Stream, request: RecordedRequest,
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
        request.frames_sent += 1    # before the send: a client in this process may
                                    # read the frame before this task runs again
        await stream.send_all(b"%x\r\n%b\r\n" % (len(frame.data), frame.data))
        if frame.delay_s and request.first_late_s is None:
            request.first_late_s = trio.current_time() - due    # this side's lag
    if end:
        await stream.send_all(b"0\r\n\r\n")


async def _trickle(stream: trio.abc.Stream, reply: Trickle) -> None:
    body = b"".join(b"%x\r\n%b\r\n" % (len(f.data), f.data) for f in reply.trickled)
    for at in range(0, len(body), reply.piece_bytes):
        await trio.sleep(reply.gap_s)
        await stream.send_all(body[at:at + reply.piece_bytes])


def _hang_up(raw: trio.SocketStream, record: ConnectionRecord, *, reset: bool) -> str:
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


async def _send_json(stream: trio.abc.Stream, status: int, body: Any, *,
                     error_type: str | None = None) -> None:
    data = json.dumps(body).encode()
    head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}",
            "Content-Type: application/json", f"Content-Length: {len(data)}"]
    if error_type is not None:
        head.append(f"x-amzn-ErrorType: {error_type}{ERROR_TYPE_SUFFIX}")
    await stream.send_all(("\r\n".join(head) + "\r\n\r\n").encode() + data)


@asynccontextmanager
async def running_fake_bedrock(*, ca_dir: Path | None = None,
                               **options: Any) -> AsyncIterator[FakeBedrock]:
    """The fake, served for the duration of the block, then stopped by cancelling it. With
    ``tls=True`` the CA's PEM goes to ``ca_dir`` (else a temporary directory removed on exit)
    and its path is ``fake.ca_bundle``."""
    fake = FakeBedrock(**options)
    with ExitStack() as files:
        if fake.tls:
            directory = ca_dir if ca_dir is not None else Path(files.enter_context(
                tempfile.TemporaryDirectory(prefix="fake-bedrock-ca-")))
            fake.write_ca_bundle(directory / "fake-bedrock-ca.pem")
        async with trio.open_nursery() as nursery:
            await nursery.start(fake.serve)
            yield fake
            nursery.cancel_scope.cancel()


def fake_bedrock_env(fake: FakeBedrock, tmp_path: Path) -> dict[str, str]:
    """The AWS environment that points boto3 at ``fake`` and at nothing else: static dummy
    keys, one region, no AWS files or instance metadata, the fake's endpoint and, over TLS,
    its private CA. NO_PROXY is emptied over TLS so a developer's list naming localhost
    cannot make a proxy test skip its proxy. For a subprocess's env, or ``monkeypatch``."""
    env = {"AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "not-a-secret",
           "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
           "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": fake.endpoint_url}
    if fake.ca_bundle is not None:
        env.update({"AWS_CA_BUNDLE": fake.ca_bundle, "NO_PROXY": ""})
    return env


# ---------------------------------------------------------------------------- benchmark mode

def bench_reply(request: RecordedRequest) -> Reply:
    """``bench.d{N}.g{MS}[.h{MS}]``: N word deltas MS milliseconds apart (the first after MS),
    optionally the headers only after ``h`` milliseconds."""
    match = _BENCH_MODEL.match(request.model_id)
    if match is None:
        return HttpError(400, "ValidationException", "fake: model id is not bench.dN.gMS")
    deltas, gap_s = int(match["deltas"]), int(match["gap_ms"]) / 1000
    headers_delay_s = int(match["headers_ms"] or 0) / 1000
    return text_reply([f" w{n}" for n in range(deltas)], gap_s=gap_s,
                      output_tokens=deltas, headers_delay_s=headers_delay_s)


def scripted_responder(llm: ScriptedLLM, *, first_token_s: float | None = None,
                       token_s: float | None = None,
                       times: int = 1) -> Callable[[RecordedRequest], Reply]:
    """Replies from the use cases' ``scripted`` sections (what ``LLM=scripted`` says in
    process), streamed as ConverseStream events: text deltas, then a toolUse block when a
    rule calls a tool, then messageStop and metadata. ``first_token_s`` (request received ->
    first delta) and ``token_s`` (between deltas) override the use cases' own pace; ``times``
    says each text that many times over (longer replies for the same turns: what one more
    token costs). A history Converse would refuse gets the service's answer, HTTP 400
    ValidationException."""
    def respond(request: RecordedRequest) -> Reply:
        body = request.body
        metadata = body.get("requestMetadata") or {}
        tools = (body.get("toolConfig") or {}).get("tools") or []
        asked = LLMRequest(
            call_sid=str(metadata.get("callSid", "")), use_case=str(metadata.get("useCase", "")),
            model_id=request.model_id,
            system=tuple(str(b["text"]) for b in body.get("system") or () if "text" in b),
            messages=tuple(body.get("messages") or ()),
            tools=tuple(t for t in tools if "toolSpec" in t))
        try:
            reply = llm.reply(asked)
        except ModelRejected as err:
            return HttpError(400, "ValidationException", str(err))
        first = reply.first_token_delay_s if first_token_s is None else first_token_s
        gap = reply.token_delay_s if token_s is None else token_s
        texts = [e.text for e in reply.events if isinstance(e, TextDelta)] * times
        frames: list[Frame] = [message_start()]
        if texts:
            frames += text_events(texts, gap_s=gap, first_delay_s=first)
        for n, tool in enumerate(e for e in reply.events if isinstance(e, ToolUseRequest)):
            frames += tool_events(n + 1, tool.tool_use_id, tool.name,
                                  [json.dumps(dict(tool.input))], gap_s=gap if texts else first)
        usage = reply.end.usage or Usage()
        frames += message_end(reply.end.stop_reason, input_tokens=usage.input_tokens,
                              output_tokens=usage.output_tokens)
        return StreamReply(tuple(frames))

    return respond


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port-file", help="write the port here once listening")
    parser.add_argument("--scripted", metavar="CONFIG_DIR", type=Path,
                        help="answer as the use cases in CONFIG_DIR script it (their "
                             "`scripted` rules), instead of the bench.dN.gMS model ids")
    parser.add_argument("--first-token-ms", type=float, default=None,
                        help="with --scripted: request received -> first delta, overriding "
                             "the use cases' first_token_delay_ms")
    parser.add_argument("--token-ms", type=float, default=None,
                        help="with --scripted: between deltas, overriding token_delay_ms")
    parser.add_argument("--reply-times", type=int, default=1, metavar="K",
                        help="with --scripted: say each reply K times over (default 1)")
    parser.add_argument("--tls", metavar="CA_FILE", type=Path, default=None,
                        help="serve TLS (https://localhost:PORT) with a new private CA, its "
                             "certificate written to CA_FILE (point AWS_CA_BUNDLE at it)")
    args = parser.parse_args(argv)
    responder: Callable[[RecordedRequest], Reply] = bench_reply
    if args.scripted is not None:
        use_cases = read_config_dir(args.scripted, default_registry()).use_cases
        responder = scripted_responder(
            ScriptedLLM.from_use_cases(use_cases),
            first_token_s=None if args.first_token_ms is None else args.first_token_ms / 1000,
            token_s=None if args.token_ms is None else args.token_ms / 1000,
            times=max(1, args.reply_times))
    fake = FakeBedrock(responder=responder, keep_bodies=False, tls=args.tls is not None)
    if args.tls is not None:
        fake.write_ca_bundle(args.tls)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(fake.serve)
            print(fake.port, flush=True)
            if args.port_file:
                with open(args.port_file, "w") as out:  # noqa: ASYNC230 - once, at start-up
                    out.write(str(fake.port))
    with suppress(KeyboardInterrupt):
        trio.run(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
