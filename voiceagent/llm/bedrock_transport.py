"""The thread side of the Bedrock backend: one HTTP attempt per worker thread, the hand-off of
its events to trio, and a connection tracker that lets the trio thread stop it at once.

Reading. botocore signs and sends the request and parses the headers (HTTP errors included);
the worker then reads the body's chunks from urllib3 and decodes the event-stream frames
itself (``FrameDecoder``, ``ReplyAssembler``), since botocore's shape-driven event parser was
the larger part of the CPU spent per delta.

Hand-off. Every worker posts its ``LLMEvent`` values to one ``Mailbox`` per trio run. Only the
first post after a drain wakes trio (a non-blocking ``run_sync_soon``), and that one drain
delivers what every stream posted meanwhile, so a busy loop takes many events per hop and no
worker ever waits for trio.

Stopping. ``Attempt.abort`` (trio thread, non-blocking) shuts the attempt's socket down: the
worker's blocked read returns at once and Bedrock gets the FIN that stops generation. The
connection is tracked from the moment the pool hands it out until it goes back, under a lock
held only for non-blocking calls, so an abort also lands while connecting, sending, or waiting
for the headers, and never on a connection already back in the pool for another call. The
worker closes the response itself: closing it from trio would block the loop until the next
chunk. The tracked pools are installed on the backend's client only.
"""

from __future__ import annotations

import contextvars
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import outcome
import trio
import urllib3.exceptions
from botocore.awsrequest import (
    AWSHTTPConnection,
    AWSHTTPConnectionPool,
    AWSHTTPSConnection,
    AWSHTTPSConnectionPool,
)
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EventStreamError,
    HTTPClientError,
    ParamValidationError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import ReadTimeoutError as BotoReadTimeoutError

from voiceagent.llm.base import LLMEvent
from voiceagent.llm.bedrock_converse import (
    FrameDecoder,
    ReplyAssembler,
    ReplyError,
    StreamFault,
    event_of,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- connection tracking

class AttemptCancelled(Exception):
    """Raised inside urllib3 when a cancelled attempt asks the pool for a connection."""


class ConnectionTracker:
    """The connection one attempt holds, shared by its worker thread and the trio thread."""

    __slots__ = ("_connection", "_lock", "_released", "cancelled", "closed_at")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connection: Any = None
        self._released = False
        self.cancelled = False
        self.closed_at: float | None = None     # perf_counter() when the shutdown was issued

    def acquired(self, connection: Any) -> bool:
        """Worker: the pool handed out ``connection``. False: cancelled, do not send."""
        with self._lock:
            if self.cancelled:
                return False
            self._connection, self._released = connection, False
            return True

    def connected(self, connection: Any) -> None:
        """Worker: the socket is up; an abort that came while connecting lands now."""
        with self._lock:
            if self.cancelled and connection is self._connection and not self._released:
                self._shutdown()

    def released(self) -> None:
        """Worker: the connection is going back to the pool and is no longer ours."""
        with self._lock:
            self._released = True

    def attach(self, raw_response: Any) -> bool:
        """Worker, once the headers are in. Without pool tracking (an unexpected botocore)
        the connection becomes known only now. False: cancelled meanwhile."""
        with self._lock:
            if self._connection is None and not self._released:
                self._connection = getattr(raw_response, "_connection", None)
            return not self.cancelled

    def abort(self) -> None:
        """Trio thread, non-blocking: stop the attempt wherever it is."""
        with self._lock:
            self.cancelled = True
            if self._connection is not None and not self._released:
                self._shutdown()

    def _shutdown(self) -> None:
        sock = getattr(self._connection, "sock", None)
        if sock is not None:
            if self.closed_at is None:      # stamped before: the syscall gives up the GIL
                self.closed_at = time.perf_counter()
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)     # wakes a blocked recv; the peer sees FIN


_TRACKER: contextvars.ContextVar[ConnectionTracker | None] = contextvars.ContextVar(
    "bedrock_tracker", default=None)


class _TrackedHTTPConnection(AWSHTTPConnection):  # type: ignore[misc]  # botocore is untyped
    def connect(self) -> None:
        super().connect()
        if (tracker := _TRACKER.get()) is not None:
            tracker.connected(self)


class _TrackedHTTPSConnection(AWSHTTPSConnection):  # type: ignore[misc]  # botocore is untyped
    def connect(self) -> None:
        super().connect()
        if (tracker := _TRACKER.get()) is not None:
            tracker.connected(self)


class _TrackedPoolMixin:
    def _get_conn(self, timeout: float | None = None) -> Any:
        connection = super()._get_conn(timeout)  # type: ignore[misc]  # urllib3's pool method
        tracker = _TRACKER.get()
        if tracker is not None and not tracker.acquired(connection):
            connection.close()              # urlopen's cleanup returns the slot as None
            raise AttemptCancelled
        return connection

    def _put_conn(self, connection: Any) -> None:
        if (tracker := _TRACKER.get()) is not None:
            tracker.released()
        super()._put_conn(connection)  # type: ignore[misc]  # urllib3's pool method


class _TrackedHTTPPool(_TrackedPoolMixin, AWSHTTPConnectionPool):  # type: ignore[misc]  # untyped
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSPool(_TrackedPoolMixin, AWSHTTPSConnectionPool):  # type: ignore[misc]  # untyped
    ConnectionCls = _TrackedHTTPSConnection


def install_tracking(client: Any) -> bool:
    """Use the tracked pools for ``client`` only. Its HTTP session's class map is shared by
    its pool managers, so every pool created later (direct or through a proxy) uses them."""
    try:
        classes = client._endpoint.http_session._pool_classes_by_scheme
    except AttributeError:
        return False
    if not isinstance(classes, dict) or classes.get("http") is not AWSHTTPConnectionPool \
            or classes.get("https") is not AWSHTTPSConnectionPool:
        return False
    classes["http"], classes["https"] = _TrackedHTTPPool, _TrackedHTTPSPool
    return True


def open_connection(client: Any) -> None:
    """Blocking: put one connected socket into ``client``'s pool without sending a request.
    Uses botocore's HTTP-session internals, so any surprise only skips the warm-up."""
    url = client.meta.endpoint_url
    started = time.perf_counter()
    try:
        session = client._endpoint.http_session
        manager = session._get_connection_manager(url, session._proxy_config.proxy_url_for(url))
        pool = manager.connection_from_url(url)
        session._setup_ssl_cert(pool, url, session._verify)
        connection = pool._get_conn()
        try:
            connection.connect()
        finally:
            pool._put_conn(connection)
    except Exception as err:
        log.warning("bedrock warm-up could not connect", extra={"error": type(err).__name__})
        return
    log.info("bedrock connection warmed",
             extra={"connect_ms": round((time.perf_counter() - started) * 1000, 1)})


# ---------------------------------------------------------------- errors

@dataclass(frozen=True, slots=True)
class Failure:
    code: str                      # PascalCase, as in the HTTP error type
    message: str
    kind: str                      # throttled | unavailable | rejected | stream | bug
    retryable: bool                # before any content, trying again may help
    cause: BaseException


_KINDS: dict[str, tuple[str, bool]] = {
    "ThrottlingException": ("throttled", True),
    "ServiceUnavailableException": ("unavailable", True),
    "InternalServerException": ("unavailable", True),
    "ModelNotReadyException": ("unavailable", True),
    "ModelTimeoutException": ("unavailable", False),
    "ModelStreamErrorException": ("stream", True),
    "ModelErrorException": ("stream", False),
    "ValidationException": ("rejected", False),
    "AccessDeniedException": ("rejected", False),
    "ResourceNotFoundException": ("rejected", False),
}


def classify(exc: BaseException) -> Failure:
    """What went wrong in the worker, in the terms of the retry policy and the runtime.
    Faults inside the event stream carry camelCase codes and map like their HTTP twins."""
    if isinstance(exc, StreamFault):
        return _by_code(exc.code, exc.message, 0, exc, in_stream=True)
    if isinstance(exc, ReplyError):
        return Failure(exc.code, exc.message, "stream", True, exc)
    if isinstance(exc, ClientError):       # EventStreamError too
        error = exc.response.get("Error") or {}
        status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0
        return _by_code(str(error.get("Code") or "Unknown"), str(error.get("Message") or exc),
                        status, exc, in_stream=isinstance(exc, EventStreamError))
    if isinstance(exc, ParamValidationError):
        return Failure("ParamValidationError", str(exc), "rejected", False, exc)
    if isinstance(exc, BotoReadTimeoutError | urllib3.exceptions.ReadTimeoutError):
        return Failure("ReadTimeout", str(exc), "unavailable", False, exc)
    if isinstance(exc, BotoConnectionError | HTTPClientError | urllib3.exceptions.HTTPError
                  | OSError):
        return Failure("ConnectionError", str(exc), "unavailable", True, exc)
    if isinstance(exc, BotoCoreError):      # no credentials, bad configuration
        return Failure(type(exc).__name__, str(exc), "unavailable", False, exc)
    return Failure(type(exc).__name__, str(exc), "bug", False, exc)


def failure_for(code: str, message: str, status: int, exc: BaseException) -> Failure:
    """An HTTP error answer (before the stream), by its x-amzn-ErrorType code and status."""
    return _by_code(code, message, status, exc, in_stream=False)


def _by_code(raw_code: str, message: str, status: int, exc: BaseException, *,
             in_stream: bool) -> Failure:
    code = raw_code[:1].upper() + raw_code[1:]
    if code in _KINDS:
        kind, retryable = _KINDS[code]
    elif status == 429:
        kind, retryable = "throttled", True
    elif status >= 500 and not in_stream:
        kind, retryable = "unavailable", True
    else:
        kind, retryable = ("stream" if in_stream else "rejected"), False
    return Failure(code, message, kind, retryable, exc)


# ---------------------------------------------------------------- one HTTP attempt

Item = LLMEvent | Failure


class Mailbox:
    """The hand-off from every worker thread of one trio run to the trio thread."""

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self.token = token
        self._lock = threading.Lock()
        self._pending: list[tuple[Attempt, Sequence[Item] | None, float]] = []
        self._scheduled = False

    def post(self, attempt: Attempt, items: Sequence[Item] | None,
             exited_at: float = 0.0) -> None:
        """Worker thread: ``items`` for ``attempt``, or None once its thread is done."""
        with self._lock:
            self._pending.append((attempt, items, exited_at))
            if self._scheduled:
                return                      # the pending drain takes these too
            self._scheduled = True
        with suppress(trio.RunFinishedError):   # the process is exiting
            self.token.run_sync_soon(self._drain)

    def _drain(self) -> None:
        """Trio thread (a run_sync_soon callback: it must never raise)."""
        with self._lock:
            pending, self._pending = self._pending, []
            self._scheduled = False
        for attempt, items, exited_at in pending:
            try:
                if items is None:
                    attempt.finished(exited_at)
                else:
                    attempt.deliver(items)
            except Exception:
                log.exception("bedrock hand-off failed")


class Attempt:
    """One HTTP request and its worker thread. The worker calls ``post`` and ``thread_done``;
    everything else runs on the trio thread. ``inbox`` yields the items in order and ends
    once the thread has finished (its response closed)."""

    def __init__(self, mailbox: Mailbox,
                 on_finished: Callable[[Attempt, float], None]) -> None:
        self.tracker = ConnectionTracker()
        self._mailbox = mailbox
        self._on_finished = on_finished
        self._send, self.inbox = trio.open_memory_channel[Item](math.inf)
        self._closed = False
        self.cancelled_at: float | None = None

    # -- worker thread

    def post(self, items: Sequence[Item]) -> None:
        self._mailbox.post(self, items)

    def thread_done(self, result: outcome.Outcome[None]) -> None:
        """Called by trio in the worker thread once ``run_attempt`` has returned."""
        if isinstance(result, outcome.Error):
            log.error("bedrock worker crashed", exc_info=result.error)
        self._mailbox.post(self, None, time.perf_counter())

    # -- trio thread

    async def receive(self) -> Item:
        """The next item in order; ``EndOfChannel`` once the thread is done."""
        return await self.inbox.receive()

    async def take_ready(self) -> list[Item]:
        """The items the worker has posted so far, without waiting."""
        await trio.lowlevel.checkpoint()
        items: list[Item] = []
        with suppress(trio.WouldBlock, trio.EndOfChannel):
            while True:
                items.append(self.inbox.receive_nowait())
        return items

    @property
    def closed_at(self) -> float | None:
        return self.tracker.closed_at

    def deliver(self, items: Sequence[Item]) -> None:
        if not self._closed:
            for item in items:
                self._send.send_nowait(item)

    def finished(self, exited_at: float) -> None:
        self._send.close()
        self._on_finished(self, exited_at)

    def abort(self) -> None:
        self.cancelled_at = time.perf_counter()
        self.tracker.abort()

    def close(self) -> None:
        """Stop listening. The thread finishes on its own, aborted or not."""
        self._closed = True
        self.inbox.close()


def run_attempt(client: Any, payload: dict[str, Any], attempt: Attempt,
                started_at: float) -> None:
    """Worker thread: one ConverseStream call from request to end of body. Every outcome is
    posted, except after an abort (nobody listens any more). Closes the response itself."""
    tracker = attempt.tracker
    reset = _TRACKER.set(tracker)
    response = None
    try:
        response = client.converse_stream(**payload)
        raw = response["stream"]._raw_stream        # urllib3's response: the chunked body
        if not tracker.attach(raw):
            return
        decoder = FrameDecoder()
        assembler = ReplyAssembler(started_at)
        batch: list[LLMEvent] = []
        for chunk in raw.stream():
            for headers, payload_bytes in decoder.feed(chunk):
                event_type, body = event_of(headers, payload_bytes)
                assembler.feed_event(event_type, body, batch)
            if batch:
                attempt.post(batch)
                batch = []
            if tracker.cancelled:
                return
        if decoder.pending:
            raise ReplyError("IncompleteStream", "the body ended inside an event frame")
        assembler.finish(batch)
        attempt.post(batch)
    except Exception as exc:
        if not tracker.cancelled:
            attempt.post([classify(exc)])
    finally:
        if response is not None:
            with suppress(Exception):
                response["stream"].close()
        _TRACKER.reset(reset)
