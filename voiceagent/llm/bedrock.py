"""Amazon Bedrock ConverseStream backend: one per process, two ways to carry a stream, and
cancellation that closes the HTTP connection at once.

Transports (``BEDROCK_TRANSPORT``). ``native`` (the default where no proxy applies):
``bedrock_native`` speaks HTTP/1.1 on trio sockets, signs with botocore, and the turn's own
task reads the reply: no thread and no hand-off per event, so a loaded process does not wait
on the GIL behind streaming threads. ``threads``: boto3 in a worker thread per HTTP attempt
(``bedrock_transport``), for endpoints reached through a proxy. Either way an attempt holds a
token of the backend's own ``CapacityLimiter`` (MAX_CONCURRENT_TURNS, never trio's shared
default) until it has really finished.

Cancellation. Leaving a stream's context before its end aborts the attempt without blocking:
its socket is closed (native) or shut down under the worker's read (threads), and Bedrock
gets the FIN that stops generation, also when the headers are still pending.

Resilience. Throttling, unavailability and model-stream errors that arrive before any content
reached the caller are retried (bounded, jittered, within a latency budget) inside the stream;
botocore's own retries are off so that one budget governs them. After content, any error
raises ``ModelStreamFailed(after_tokens=True)`` and the runtime apologises.
"""

from __future__ import annotations

import collections
import contextvars
import logging
import os
import random
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal
from urllib.parse import urlsplit

import boto3
import botocore
import botocore.session
import trio
from botocore.config import Config
from botocore.exceptions import BotoCoreError
from botocore.httpsession import get_cert_path

from actors.history import converse_problems
from voiceagent import __version__
from voiceagent.errors import (
    LLMError,
    ModelRejected,
    ModelStreamFailed,
    ModelThrottled,
    ModelUnavailable,
    SettingsError,
)
from voiceagent.llm.base import LLMEvent, LLMRequest, StreamEnd
from voiceagent.llm.bedrock_converse import build_converse_request, history_shape
from voiceagent.llm.bedrock_native import (
    ConnectionPool,
    Endpoint,
    NativeAttempt,
    ReadWatchdog,
    Signer,
    classify_native,
    request_body,
    ssl_context,
)
from voiceagent.llm.bedrock_transport import (
    Attempt,
    Failure,
    Item,
    Mailbox,
    install_tracking,
    open_connection,
    run_attempt,
)
from voiceagent.settings import Settings
from voiceagent.threads import run_blocking

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 10.0               # longest silence between events, first one included
MAX_RETRIES = 2
RETRY_BUDGET_S = 2.5                # no retry starts later than this after the stream opened
RETRY_BASE_DELAY_S = 0.2            # retry n waits base * 2**n, half of it jittered
RECENT = 100                        # durations kept for statistics()
OFFLINE_HINT = "or run `voiceagent demo` for an offline try-out"
Transport = Literal["auto", "native", "threads"]
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})     # local fakes: plain http is fine
AnyAttempt = Attempt | NativeAttempt


@dataclass(frozen=True, slots=True)
class BedrockStatistics:
    streams_opened: int
    streams_open: int
    streams_completed: int           # ended with StreamEnd
    retries: int
    cancellations: int               # left before their end (barge-in, superseded, hang-up)
    errors_by_code: dict[str, int]   # every upstream error, retried or not
    threads_busy: int                # attempts not yet finished (limiter tokens held)
    cancel_to_closed_s: tuple[float, ...]   # cancel -> upstream socket shut down, last 100
    cancel_to_exit_s: tuple[float, ...]     # cancel -> attempt done, token back
    first_token_s: tuple[float, ...]        # stream opened -> first content, last 100
    transport: str = "threads"              # native | threads
    connections_opened: int = 0             # native: new connections (the rest reused)
    connections_reused: int = 0


def _llm_error(failure: Failure, *, after_tokens: bool) -> LLMError:
    if after_tokens:
        return ModelStreamFailed(failure.code, failure.message, after_tokens=True)
    if failure.kind == "throttled":
        return ModelThrottled(failure.code, failure.message)
    if failure.kind == "unavailable":
        return ModelUnavailable(failure.code, failure.message)
    if failure.kind == "rejected":
        return ModelRejected(failure.code, failure.message)
    return ModelStreamFailed(failure.code, failure.message, after_tokens=False)


# ---------------------------------------------------------------- the stream a turn sees

class _ModelStream(trio.abc.ReceiveChannel[LLMEvent]):
    """The events of one model call, across its retries. Raises ``LLMError`` subclasses."""

    def __init__(self, backend: BedrockLLM, request: LLMRequest,
                 payload: dict[str, Any]) -> None:
        self._backend = backend
        self._request = request
        self._payload = payload
        self._opened_at = trio.current_time()
        self._started_at = time.perf_counter()
        self._attempt: AnyAttempt | None = None
        self._ready: collections.deque[Item] = collections.deque()   # taken, not yet handed
        self._retries = 0
        self._content = False               # content reached the caller: no more retries
        self._ended = False
        self._closed = False

    async def start(self) -> None:
        self._attempt = await self._backend._start_attempt(self._payload, self._started_at)

    async def receive(self) -> LLMEvent:
        while True:
            attempt = self._attempt
            if attempt is None or self._closed:
                raise trio.ClosedResourceError("the model stream was closed")
            if self._ready:
                item = self._ready.popleft()
            else:
                try:
                    item = await attempt.receive()
                except trio.EndOfChannel:
                    self._ended = True
                    raise
            if isinstance(item, Failure):
                await self._after_failure(attempt, item)
                continue
            return self._note(item)

    async def take_ready(self) -> list[LLMEvent]:
        """What has arrived, without waiting for more: a turn holding text reads once per
        hold window instead of once per token. A failure after events is met at the next
        read, so the events before it are spoken first."""
        out: list[LLMEvent] = []
        while True:
            attempt = self._attempt
            if attempt is None or self._closed:
                raise trio.ClosedResourceError("the model stream was closed")
            items = [*self._ready, *await attempt.take_ready()]
            self._ready.clear()
            for at, item in enumerate(items):
                if isinstance(item, Failure):
                    if out:
                        self._ready.extend(items[at:])
                        return out
                    await self._after_failure(attempt, item)    # raises, or tries again
                    break
                out.append(self._note(item))
            else:
                return out

    def _note(self, item: LLMEvent) -> LLMEvent:
        if isinstance(item, StreamEnd):
            self._ended = True
            self._backend._stream_completed(item)
        else:
            self._content = True
        return item

    async def _after_failure(self, attempt: AnyAttempt, failure: Failure) -> None:
        """Start the next attempt, or raise."""
        backend = self._backend
        backend._counts.errors[failure.code] += 1
        delay = self._retry_delay(failure)
        if delay is None:
            self._ended = True
            if failure.kind == "bug":
                raise failure.cause
            self._log_failure(failure)
            raise _llm_error(failure, after_tokens=self._content) from failure.cause
        attempt.close()
        self._attempt = None
        self._retries += 1
        backend._counts.retries += 1
        log.info("bedrock call retried", extra={"code": failure.code, "retry": self._retries,
                                                "delay_ms": round(delay * 1000)})
        await trio.sleep(delay)
        self._attempt = await backend._start_attempt(self._payload, self._started_at)

    def _retry_delay(self, failure: Failure) -> float | None:
        backend = self._backend
        if self._content or not failure.retryable or self._retries >= backend.max_retries:
            return None
        base = backend.retry_base_delay_s * 2.0 ** self._retries
        delay = base / 2 + random.uniform(0, base / 2)
        if trio.current_time() - self._opened_at + delay > backend.retry_budget_s:
            return None
        return delay

    def _log_failure(self, failure: Failure) -> None:
        extra: dict[str, Any] = {"code": failure.code, "kind": failure.kind,
                                 "after_tokens": self._content, "retries": self._retries}
        if failure.kind == "rejected":
            extra["history_shape"] = history_shape(self._request.messages)
            extra["model_id"] = self._request.model_id
        log.warning("bedrock call failed", extra=extra)

    def close(self) -> None:
        """Sync and non-blocking, so it is safe in ``finally`` when cancelled."""
        if self._closed:
            return
        self._closed = True
        attempt = self._attempt
        if not self._ended:
            self._backend._counts.cancellations += 1
            if attempt is not None:
                attempt.abort()
        if attempt is not None:
            attempt.close()
        self._backend._counts.streams_open -= 1

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


# ---------------------------------------------------------------- the backend

@dataclass
class _Counts:
    streams_opened: int = 0
    streams_open: int = 0
    streams_completed: int = 0
    retries: int = 0
    cancellations: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    cancel_to_closed_s: collections.deque[float] = field(
        default_factory=partial(collections.deque, maxlen=RECENT))
    cancel_to_exit_s: collections.deque[float] = field(
        default_factory=partial(collections.deque, maxlen=RECENT))
    first_token_s: collections.deque[float] = field(
        default_factory=partial(collections.deque, maxlen=RECENT))


class BedrockLLM:
    """The production ``LLM``: one instance (one boto3 client and connection pool) per process.

    The constructor does no I/O; the client is created in a thread by ``warm_up`` or by the
    first ``stream``. ``max_concurrent_streams`` sizes both the attempt limiter and the
    connection pool: a stream past it waits for a slot. ``transport``: see the module
    docstring (``auto`` is native unless a proxy applies to the endpoint).
    """

    name = "bedrock"

    def __init__(self, *, region: str | None = None, max_concurrent_streams: int = 400,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 read_timeout_s: float = READ_TIMEOUT_S, max_retries: int = MAX_RETRIES,
                 retry_budget_s: float = RETRY_BUDGET_S,
                 retry_base_delay_s: float = RETRY_BASE_DELAY_S,
                 check_history: bool = True, transport: Transport = "auto") -> None:
        self.region = region
        self.transport: Transport = transport
        self.max_concurrent_streams = max_concurrent_streams
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_retries = max_retries
        self.retry_budget_s = retry_budget_s
        self.retry_base_delay_s = retry_base_delay_s
        self._check_history = check_history
        self._limiter = trio.CapacityLimiter(max_concurrent_streams)
        self._setup_limiter = trio.CapacityLimiter(1)
        self._client: Any = None
        self._client_lock = trio.Lock()
        self._mailbox: Mailbox | None = None
        self._pool: ConnectionPool | None = None         # native transport
        self._signer: Signer | None = None
        self._watchdog = ReadWatchdog()
        self._counts = _Counts()

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> BedrockLLM:
        options: dict[str, Any] = {"region": settings.aws_region,
                                   "max_concurrent_streams": settings.max_concurrent_turns,
                                   "transport": settings.bedrock_transport}
        options.update(overrides)
        return cls(**options)

    @property
    def limiter(self) -> trio.CapacityLimiter:
        return self._limiter

    # -- lifecycle

    async def warm_up(self) -> None:
        """Create the client (model files, endpoint resolution) in a thread and open one
        connection to the endpoint, so the first caller does not pay for either. A failed
        connection is only logged: the first call connects again."""
        client = await self._ready_client()
        if self._pool is not None:
            await self._warm_native(self._pool)
            return
        await run_blocking(partial(open_connection, client), limiter=self._setup_limiter)

    async def _warm_native(self, pool: ConnectionPool) -> None:
        started = time.perf_counter()
        try:
            connection, _ = await pool.acquire(fresh=True)
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as err:   # TLS failed
            log.warning("bedrock warm-up could not connect",
                        extra={"error": type(err).__name__})
            return
        pool.keep_idle(connection)
        log.info("bedrock connection warmed",
                 extra={"connect_ms": round((time.perf_counter() - started) * 1000, 1)})

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._client is not None:
            client, self._client = self._client, None
            await run_blocking(client.close, limiter=self._setup_limiter)

    def statistics(self) -> BedrockStatistics:
        counts = self._counts
        return BedrockStatistics(
            streams_opened=counts.streams_opened, streams_open=counts.streams_open,
            streams_completed=counts.streams_completed, retries=counts.retries,
            cancellations=counts.cancellations, errors_by_code=dict(counts.errors),
            threads_busy=self._limiter.borrowed_tokens,
            cancel_to_closed_s=tuple(counts.cancel_to_closed_s),
            cancel_to_exit_s=tuple(counts.cancel_to_exit_s),
            first_token_s=tuple(counts.first_token_s),
            transport="native" if self._pool is not None else "threads",
            connections_opened=self._pool.opened if self._pool is not None else 0,
            connections_reused=self._pool.reused if self._pool is not None else 0)

    # -- streams

    @asynccontextmanager
    async def stream(self, request: LLMRequest) -> AsyncIterator[trio.abc.ReceiveChannel[
            LLMEvent]]:
        """One ConverseStream call. Entering sends the request; leaving before the end shuts
        the connection down at once, without blocking. Raises ``LLMError`` subclasses from
        entering or iterating (after retries, see the module docstring)."""
        payload = build_converse_request(request)
        if self._check_history:
            self._warn_on_history(request, "toolConfig" in payload)
        await self._ready_client()
        model_stream = _ModelStream(self, request, payload)
        self._counts.streams_opened += 1
        self._counts.streams_open += 1
        try:
            await model_stream.start()
            yield model_stream
        finally:
            model_stream.close()

    async def _start_attempt(self, payload: dict[str, Any], started_at: float) -> AnyAttempt:
        if self._pool is not None and self._signer is not None:
            return await self._start_native(self._pool, self._signer, payload, started_at)
        token = trio.lowlevel.current_trio_token()
        if self._mailbox is None or self._mailbox.token is not token:
            self._mailbox = Mailbox(token)
        attempt = Attempt(self._mailbox, self._attempt_finished)
        await self._limiter.acquire_on_behalf_of(attempt)
        try:
            context = contextvars.copy_context()      # the CallSid follows into the thread
            trio.lowlevel.start_thread_soon(
                partial(context.run, run_attempt, self._client, payload, attempt, started_at),
                attempt.thread_done, name="bedrock stream")
        except BaseException:
            self._limiter.release_on_behalf_of(attempt)
            raise
        return attempt

    async def _start_native(self, pool: ConnectionPool, signer: Signer,
                            payload: dict[str, Any], started_at: float) -> NativeAttempt:
        """Sign, connect (or reuse) and send; a failure to do so is the attempt's first item,
        as on the thread side, so retries and errors follow one path."""
        model_id, body = request_body(payload)
        target, headers, failure = "", list[tuple[str, str]](), None
        try:
            target, headers = await signer.request(model_id, body)
        except Exception as err:            # no credentials, a refresh that failed
            failure = classify_native(err)
        attempt = NativeAttempt(pool, target, headers, body, started_at=started_at,
                                read_timeout_s=self.read_timeout_s,
                                on_finished=self._attempt_finished, watchdog=self._watchdog)
        await self._limiter.acquire_on_behalf_of(attempt)
        try:
            if failure is not None:
                attempt.fail(failure)
            else:
                await attempt.open()
        except BaseException:
            attempt.close()                 # gives the limiter token back
            raise
        return attempt

    def _attempt_finished(self, attempt: AnyAttempt, exited_at: float) -> None:
        self._limiter.release_on_behalf_of(attempt)
        if attempt.cancelled_at is not None:
            closed_at = attempt.closed_at or exited_at
            self._counts.cancel_to_closed_s.append(max(closed_at - attempt.cancelled_at, 0.0))
            self._counts.cancel_to_exit_s.append(exited_at - attempt.cancelled_at)

    def _stream_completed(self, end: StreamEnd) -> None:
        self._counts.streams_completed += 1
        if end.first_token_s is not None:
            self._counts.first_token_s.append(end.first_token_s)

    def _warn_on_history(self, request: LLMRequest, tools_configured: bool) -> None:
        """Sent anyway (the service decides), but a history the local rules refuse is logged
        by shape, so a ValidationException that follows can be traced."""
        problems = converse_problems(request.messages, tools_configured=tools_configured)
        if problems:
            log.warning("history breaks Converse rules", extra={
                "problems": problems[:3], "count": len(problems),
                "history_shape": history_shape(request.messages)})

    async def _ready_client(self) -> Any:
        if self._client is None:
            async with self._client_lock:
                if self._client is None:
                    self._client = await run_blocking(self._create_client,
                                                      limiter=self._setup_limiter)
        return self._client

    def _create_client(self) -> Any:
        """Worker thread. Endpoints come from AWS_ENDPOINT_URL(_BEDROCK_RUNTIME), which boto3
        reads itself; botocore's retries are off (see the module docstring). The native
        transport takes the client's resolved endpoint and region, and the session's
        credentials and CA bundle, so both transports reach the same place the same way."""
        config = Config(connect_timeout=self.connect_timeout_s,
                        read_timeout=self.read_timeout_s,
                        retries={"mode": "standard", "total_max_attempts": 1},
                        max_pool_connections=self.max_concurrent_streams,
                        tcp_keepalive=True, user_agent_appid="voiceagent")
        try:
            core = botocore.session.Session()
            session = boto3.session.Session(botocore_session=core, region_name=self.region)
            client = session.client("bedrock-runtime", config=config)
        except BotoCoreError as err:
            raise ModelUnavailable(type(err).__name__,
                                   f"cannot create the Bedrock client: {err}") from err
        url = client.meta.endpoint_url
        proxy = proxy_for(url)
        if self.transport == "native" or (self.transport == "auto" and proxy is None):
            self._setup_native(core, url, client.meta.region_name)
            return client
        if proxy is not None:
            log.info("bedrock streams use worker threads: a proxy applies to the endpoint",
                     extra={"proxy_scheme": urlsplit(proxy).scheme})
        if not install_tracking(client):
            log.warning("bedrock connection tracking unavailable: a cancel before the "
                        "response headers waits for them")
        return client

    def _setup_native(self, core: botocore.session.Session, url: str, region: str) -> None:
        """Worker thread: the endpoint, the signer and the connection pool."""
        endpoint = Endpoint.from_url(url, region)
        context = None
        if endpoint.scheme == "https":
            context = ssl_context(core.get_config_variable("ca_bundle") or get_cert_path(True))
        try:
            credentials = core.get_credentials()
        except BotoCoreError as err:
            raise ModelUnavailable(type(err).__name__, f"AWS credentials: {err}") from err
        bearer = os.environ.get("AWS_BEARER_TOKEN_BEDROCK") or None
        if bearer and endpoint.scheme != "https" and endpoint.host not in LOOPBACK:
            raise ModelUnavailable("InvalidEndpointConfiguration",
                                   "AWS_BEARER_TOKEN_BEDROCK is sent only over https; the "
                                   f"Bedrock endpoint is {url}")
        user_agent = f"voiceagent/{__version__} trio-native botocore/{botocore.__version__}"
        self._signer = Signer(endpoint, credentials, bearer, user_agent, self._setup_limiter)
        self._pool = ConnectionPool(endpoint, connect_timeout_s=self.connect_timeout_s,
                                    max_idle=self.max_concurrent_streams, ssl_context=context)


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url`` (HTTPS_PROXY etc., unless NO_PROXY
    excludes the host), as botocore would use it."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]  # no stub
    if not proxy or bypass(parts.hostname or "", proxies):
        return None
    return proxy


# ---------------------------------------------------------------- start-up

def check_bedrock_ready(settings: Settings) -> list[str]:
    """What stops the Bedrock backend from working, as messages that say what to set; empty
    when a region and credentials resolve through boto3's standard chain. Blocking: call it
    before the event loop starts."""
    try:
        session = boto3.session.Session(region_name=settings.aws_region)
    except BotoCoreError as err:            # e.g. AWS_PROFILE names no profile
        return [f"AWS configuration: {err}; fix AWS_PROFILE or ~/.aws/config, {OFFLINE_HINT}"]
    problems = []
    if not session.region_name:
        problems.append("AWS_REGION: not set, and no region in the AWS config; set it to the "
                        f"Bedrock region (for example us-east-1), {OFFLINE_HINT}")
    if not os.environ.get("AWS_BEARER_TOKEN_BEDROCK"):
        try:
            credentials = session.get_credentials()
            detail = ""
        except BotoCoreError as err:
            credentials, detail = None, f" ({err})"
        if credentials is None:
            problems.append(
                f"AWS credentials: none found{detail} (environment, AWS_PROFILE and ~/.aws, "
                "SSO, container or instance role); set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
                f"AWS_SECRET_ACCESS_KEY, or AWS_BEARER_TOKEN_BEDROCK, {OFFLINE_HINT}")
    if not settings.model_identifier.strip():
        problems.append("MODEL_IDENTIFIER: empty; set a Bedrock model id, inference profile "
                        "id or ARN")
    return problems


@asynccontextmanager
async def open_bedrock_llm(settings: Settings) -> AsyncIterator[BedrockLLM]:
    """The backend for ``settings``, warmed up; its client is closed on exit. A client that
    cannot be created (no region, bad profile) raises ``SettingsError``."""
    llm = BedrockLLM.from_settings(settings)
    try:
        try:
            await llm.warm_up()
        except ModelUnavailable as err:
            raise SettingsError([f"Bedrock: {err}; {OFFLINE_HINT}"]) from err
        yield llm
    finally:
        with trio.move_on_after(settings.flush_timeout_s, shield=True):
            await llm.aclose()
