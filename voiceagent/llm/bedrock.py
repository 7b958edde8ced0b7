"""Amazon Bedrock ConverseStream backend: one per process, streams read by the turn's own task,
and cancellation that closes the HTTP connection at once.

Carrying a stream. ``bedrock_http`` speaks HTTP/1.1 on trio sockets (TLS, a CONNECT proxy if
HTTPS_PROXY names one), signs with botocore, and the turn's own task reads the reply: no
thread and no hand-off per event, so a loaded process never waits on the GIL behind streaming
threads. An attempt holds a token of the backend's own ``CapacityLimiter``
(MAX_CONCURRENT_TURNS) until it has finished. boto3 is used once, in a thread, to resolve the
endpoint, the region, the credentials and the CA bundle exactly as any boto3 client would.

Cancellation. Leaving a stream's context before its end aborts the attempt without blocking:
its socket is closed, and Bedrock gets the FIN that stops generation, also when the headers
are still pending.

Resilience. Every fault (HTTP errors, errors inside the stream, and every network fault) is a
``Failure`` (``bedrock_errors``). Those that may pass and arrive before any content reached the
caller are retried inside the stream: bounded, jittered, within a latency budget, and within
the process's retry quota. After content, any error raises ``ModelStreamFailed(after_tokens=
True)`` and the turn apologises after what was said, except a lost connection once the reply
was whole (``messageStop``): it ends as a reply. No fault escapes as a library exception.

Silence. The model must begin to answer within the first-event timeout of the request
(``FirstEventTimeout``: tried again once, past the latency budget too, and given the read
timeout to begin that time), then send an event at least every read timeout, or every
first-event timeout after a text delta (``ReadTimeout``: a healthy model's words come
milliseconds apart, its long silences are its start, its reasoning and a toolUse's input),
and the reply must be whole by its
first-event timeout plus its maxTokens at the pace speech is heard (``ReplyTooSlow``), all
counted from the request sent: a wait for a slot of the limiter is not the model's.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio
from botocore.exceptions import BotoCoreError

from voiceagent.aws_http import (
    USER_AGENT,
    ConnectionPool,
    Endpoint,
    LinkSettingsError,
    link_settings,
    resolve_credentials,
)
from voiceagent.aws_session import StartupSession, session_from
from voiceagent.errors import (
    ModelUnavailable,
)
from voiceagent.llm.base import LLMEvent, LLMRequest, StreamEnd
from voiceagent.llm.bedrock_converse import build_converse_request, history_shape
from voiceagent.llm.bedrock_errors import classify
from voiceagent.llm.bedrock_http import Attempt
from voiceagent.llm.bedrock_signing import BedrockSigner, request_body
from voiceagent.llm.bedrock_stream import ModelStream
from voiceagent.llm.bedrock_watchdog import ReadWatchdog
from voiceagent.llm.binding import ThinkingBindings, binds_thinking
from voiceagent.llm.converse import converse_problems
from voiceagent.log_episodes import Episode
from voiceagent.retry_quota import RetryBudget
from voiceagent.settings import Settings
from voiceagent.threads import run_blocking

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 10.0               # longest silence between events once the model answers
# (after a text delta: the first-event timeout, the model's words come milliseconds apart)
# request sent -> the model's first output event (never more than the read timeout). Past
# it the attempt is closed and tried again once, whatever RETRY_BUDGET_S: 1.5 times the p99
# the shipped turn-latency alarm calls unhealthy (2 s), and a caller who has heard 3 s of
# silence is still on the line; at 10 s (the read timeout) many have hung up.
FIRST_EVENT_TIMEOUT_S = 3.0
MAX_RETRIES = 2
RETRY_BUDGET_S = 2.5                # no retry starts later than this after the stream opened
RETRY_BASE_DELAY_S = 0.2            # retry n waits base * 2**n, half of it jittered
RECENT = 100                        # durations kept for statistics()
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})     # local fakes: plain http is fine


@dataclass(frozen=True, slots=True)
class BedrockStatistics:
    streams_opened: int
    streams_open: int
    streams_completed: int           # ended with StreamEnd
    retries: int
    cancellations: int               # left before their end (barge-in, superseded, hang-up)
    errors_by_code: dict[str, int]   # every upstream error, retried or not
    attempts_open: int               # HTTP exchanges not yet finished (limiter tokens held)
    cancel_to_closed_s: tuple[float, ...]   # cancel -> upstream socket closed, last 100
    cancel_to_exit_s: tuple[float, ...]     # cancel -> attempt done, token back
    first_token_s: tuple[float, ...]        # stream opened -> first content, last 100
    connections_opened: int = 0             # new connections (the rest reused)
    connections_reused: int = 0
    connections_expired: int = 0            # closed after idling past IDLE_MAX_S
    connections_dropped: int = 0            # idle ones closed after a stall on their path
    retry_quota: int = 0                    # what is left of the process's retry quota


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


@dataclass(frozen=True, slots=True)
class _Setup:
    """What boto3 resolved, once, in a thread."""

    pool: ConnectionPool
    signer: BedrockSigner


class BedrockLLM:
    """The production ``LLM``: one instance (one connection pool) per process.

    The constructor does no I/O; the endpoint, credentials and pool are set up in a thread by
    ``warm_up`` or by the first ``stream``. ``max_concurrent_streams`` sizes both the attempt
    limiter and the pool: a stream past it waits for a slot.
    """

    name = "bedrock"

    def __init__(self, *, region: str | None = None, max_concurrent_streams: int = 400,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 read_timeout_s: float = READ_TIMEOUT_S,
                 first_event_timeout_s: float = FIRST_EVENT_TIMEOUT_S,
                 max_retries: int = MAX_RETRIES,
                 retry_budget_s: float = RETRY_BUDGET_S,
                 retry_base_delay_s: float = RETRY_BASE_DELAY_S,
                 check_history: bool = True,
                 session: StartupSession | None = None, log_content: bool = False) -> None:
        self.region = region
        self.log_content = log_content  # LOG_CONTENT: Bedrock's refusals logged whole
        self._session = session         # the runtime's, shared with the store; else our own
        self.max_concurrent_streams = max_concurrent_streams
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.first_event_timeout_s = min(first_event_timeout_s, read_timeout_s)
        self.max_retries = max_retries
        self.retry_budget_s = retry_budget_s
        self.retry_base_delay_s = retry_base_delay_s
        self.retry_quota = RetryBudget()
        self._check_history = check_history
        self._limiter = trio.CapacityLimiter(max_concurrent_streams)
        self._setup_limiter = trio.CapacityLimiter(1)
        self._setup: _Setup | None = None
        self._setup_lock = trio.Lock()
        self._watchdog = ReadWatchdog()
        self._counts = _Counts()
        self._bindings = ThinkingBindings()     # what each reasoning block was signed under
        # throttling or an outage fails every turn of every call with the same fact: logged
        # in full once per code, then counted (bedrock_stream), ended by a stream that works
        self.failing = Episode(log, lasts="bedrock calls still failing",
                               ended="bedrock calls recovered", state=lambda: {
                                   "retry_quota": self.retry_quota.available})
        # a refused API key does not come back by itself (it is read once, at start): its
        # episode ends only when a stream works, so a quiet night is not a new one each call
        self.key_refused = Episode(log, lasts="bedrock API key still refused",
                                   ended="bedrock API key accepted again", quiet_s=0)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> BedrockLLM:
        options: dict[str, Any] = {"region": settings.aws_region,
                                   "max_concurrent_streams": settings.max_concurrent_turns,
                                   "connect_timeout_s": settings.bedrock_connect_timeout_s,
                                   "read_timeout_s": settings.bedrock_read_timeout_s,
                                   "first_event_timeout_s":
                                       settings.bedrock_first_event_timeout_s,
                                   "log_content": settings.log_content}
        options.update(overrides)
        return cls(**options)

    @property
    def limiter(self) -> trio.CapacityLimiter:
        return self._limiter

    # -- lifecycle

    async def warm_up(self) -> None:
        """Resolve the endpoint and credentials (in a thread) and open one connection, so the
        first caller pays for neither. A failed connection is only logged: the first call
        connects again."""
        pool = (await self._ready()).pool
        started = time.perf_counter()
        try:
            connection, _ = await pool.acquire(fresh=True)
        except Exception as err:
            failure = classify(err)
            log.warning("bedrock warm-up could not connect",
                        extra={"error": failure.message, "code": failure.code})
            return
        pool.keep_idle(connection)
        log.info("bedrock connection warmed",
                 extra={"connect_ms": round((time.perf_counter() - started) * 1000, 1)})

    async def aclose(self) -> None:
        self.failing.close()
        self.key_refused.close()
        if self._setup is not None:
            self._setup.pool.close()
        await trio.lowlevel.checkpoint()

    def statistics(self) -> BedrockStatistics:
        counts = self._counts
        pool = self._setup.pool if self._setup is not None else None
        return BedrockStatistics(
            streams_opened=counts.streams_opened, streams_open=counts.streams_open,
            streams_completed=counts.streams_completed, retries=counts.retries,
            cancellations=counts.cancellations, errors_by_code=dict(counts.errors),
            attempts_open=self._limiter.borrowed_tokens,
            cancel_to_closed_s=tuple(counts.cancel_to_closed_s),
            cancel_to_exit_s=tuple(counts.cancel_to_exit_s),
            first_token_s=tuple(counts.first_token_s),
            connections_opened=pool.opened if pool is not None else 0,
            connections_reused=pool.reused if pool is not None else 0,
            connections_expired=pool.expired if pool is not None else 0,
            connections_dropped=pool.dropped if pool is not None else 0,
            retry_quota=self.retry_quota.available)

    # -- streams

    @asynccontextmanager
    async def stream(self, request: LLMRequest) -> AsyncIterator[trio.abc.ReceiveChannel[
            LLMEvent]]:
        """One ConverseStream call. Entering sends the request; leaving before the end closes
        the connection at once, without blocking. Raises ``LLMError`` subclasses from entering
        or iterating (after retries, see the module docstring)."""
        payload = build_converse_request(request)
        if self._check_history:
            self._warn_on_history(request, "toolConfig" in payload)
        # a model that binds its thinking to the conversation refuses a block whose prefix
        # changed (a trimmed history, a cut answer, a new system note): left out (binding)
        prefix = (self._bindings.fit(payload) if binds_thinking(request.model_id) else None)
        model_id, body = request_body(payload)     # once for every attempt; ModelRejected
        await self._ready()
        model_stream = ModelStream(self, request, model_id, body,
                                   signed=prefix.signed if prefix is not None else None)
        # this frame lasts the reply: the stream lets the body go once content arrived
        # (no attempt follows then), and the dicts it was written from are not needed
        del payload, body
        self._counts.streams_opened += 1
        self._counts.streams_open += 1
        try:
            await model_stream.start()
            yield model_stream
        finally:
            model_stream.close()

    async def _start_attempt(self, model_id: str, body: bytes, started_at: float,
                             pace_s: float, *, patient: bool = False) -> Attempt:
        """Sign, connect (or reuse) and send; a failure to do so is the attempt's first item,
        so retries and errors follow one path. ``patient``: after a stalled start, the model
        is given the read timeout to begin, on a new connection: a kept-alive one from
        before the stall shares its path (see ``bedrock_stream``)."""
        setup = await self._ready()
        target, headers, failure = "", list[tuple[str, str]](), None
        try:
            target, headers = await setup.signer.request(model_id, body)
        except Exception as err:            # no credentials, a refresh that failed
            failure = classify(err)
        attempt = Attempt(setup.pool, target, headers, body, started_at=started_at,
                          read_timeout_s=self.read_timeout_s,
                          first_event_timeout_s=(self.read_timeout_s if patient
                                                 else self.first_event_timeout_s),
                          words_gap_s=self.first_event_timeout_s,
                          pace_s=pace_s, on_finished=self._attempt_finished,
                          watchdog=self._watchdog,
                          first_event_setting=("BEDROCK_READ_TIMEOUT_S, the retry's after a "
                                               "stalled start" if patient
                                               else "BEDROCK_FIRST_EVENT_TIMEOUT_S"))
        await _acquire(self._limiter, attempt)
        try:
            if failure is not None:
                attempt.fail(failure)
            else:
                await attempt.open(fresh=patient)
        except BaseException:
            attempt.close()                 # gives the limiter token back
            raise
        return attempt

    def _attempt_finished(self, attempt: Attempt, exited_at: float) -> None:
        self._limiter.release_on_behalf_of(attempt)
        if attempt.cancelled_at is not None:
            closed_at = attempt.closed_at or exited_at
            self._counts.cancel_to_closed_s.append(max(closed_at - attempt.cancelled_at, 0.0))
            self._counts.cancel_to_exit_s.append(exited_at - attempt.cancelled_at)

    def _stream_completed(self, end: StreamEnd, quota_taken: int) -> None:
        self._counts.streams_completed += 1
        self.retry_quota.succeeded(quota_taken)
        self.failing.succeeded()
        self.key_refused.succeeded()
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

    async def _ready(self) -> _Setup:
        if self._setup is None:
            async with self._setup_lock:
                if self._setup is None:
                    self._setup = await run_blocking(self._resolve,
                                                     limiter=self._setup_limiter)
        return self._setup

    def _resolve(self) -> _Setup:
        """Worker thread. A botocore client (what a boto3 client wraps) resolves the endpoint
        (AWS_ENDPOINT_URL(_BEDROCK_RUNTIME), FIPS and dual-stack settings, the region) as any
        boto3 client would; the session gives the credentials (its standard chain) and the CA
        bundle (AWS_CA_BUNDLE or the profile's ca_bundle, else botocore's own). The client
        itself sends nothing. The session is the runtime's when the store shares it, and
        nothing here keeps it once this returns (``voiceagent.aws_session``)."""
        try:
            core = session_from(self._session)
            client = core.create_client("bedrock-runtime", region_name=self.region)
            url, region = client.meta.endpoint_url, client.meta.region_name
            client.close()
        except BotoCoreError as err:
            raise ModelUnavailable(type(err).__name__,
                                   f"cannot set up the Bedrock client: {err}") from err
        endpoint = Endpoint.from_url(url, region)
        try:
            link = link_settings(endpoint, url, service="Bedrock", session=core)
        except LinkSettingsError as err:
            code = ("InvalidProxyConfiguration" if err.setting == "proxy"
                    else "InvalidCABundle")
            raise ModelUnavailable(code, str(err)) from err
        bearer = os.environ.get("AWS_BEARER_TOKEN_BEDROCK") or None
        if bearer and endpoint.scheme != "https" and endpoint.host not in LOOPBACK:
            raise ModelUnavailable("InvalidEndpointConfiguration",
                                   "AWS_BEARER_TOKEN_BEDROCK is sent only over https; the "
                                   f"Bedrock endpoint is {url}")
        if link.proxy_url is not None:
            log.info("bedrock reached through a proxy", extra={"proxy": link.proxy_url})
        try:
            signer = BedrockSigner(endpoint, resolve_credentials, bearer, USER_AGENT)
        except BotoCoreError as err:
            raise ModelUnavailable(type(err).__name__, f"AWS credentials: {err}") from err
        pool = ConnectionPool(endpoint, connect_timeout_s=self.connect_timeout_s,
                              max_idle=self.max_concurrent_streams,
                              ssl_context=link.ssl_context, proxy=link.proxy)
        return _Setup(pool, signer)


async def _acquire(limiter: trio.CapacityLimiter, borrower: object) -> None:
    """A slot of ``limiter`` for ``borrower``, without a trip through the scheduler when one
    is free: trio's ``acquire_on_behalf_of`` yields even then, and under load every call's
    runnable work runs before the turn gets on to send its request (one batch more on each
    turn's first word, ``bench_token_calls.py --hops``). Cancellation is still seen here."""
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        limiter.acquire_on_behalf_of_nowait(borrower)
    except trio.WouldBlock:
        await limiter.acquire_on_behalf_of(borrower)
