"""The stream a turn sees for one Bedrock call: its events across retries, and the decision,
after each failure, to try again or to raise.

Retries happen only while nothing reached the caller: bounded in number, jittered, within a
latency budget and within the process's retry quota (``retry_quota.RetryBudget``). A start
that stalled (no output within the first-event timeout) is tried again once although the
budget is spent, on a new connection, and that attempt is given the whole read timeout to
begin: a lost request or a stuck host answers at once then, while a model that is merely
slow to start (a long prompt: a call's history grows with every turn) still answers, late,
instead of the apology on every turn once its first token passes the timeout. Each attempt
has its deadline (``SPOKEN_TOKENS_PER_S``) from when its request is sent, that patience
included; the retries before it are bounded by the budget and the one restart. Once
per stream, credentials refused as expired or unknown are found anew through the chain and
the request is sent again. What cannot be retried raises an ``LLMError`` subclass, and
nothing else: a library exception here would end the call instead of an apology. A failure
that is Bedrock's state (throttling, an outage, credentials) is the same for every call: it
goes to the backend's ``failing`` episode (``log_episodes``), logged in full once per code;
so does a refusal of the use case's tools (``tool_refusals``: every request that offers them
is refused, in every call), once per use case and model, naming the tool and what to change.
A refused request (its history's shape) and a bug are logged each time.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import trio

from voiceagent.errors import (
    LLMError,
    ModelRejected,
    ModelStreamFailed,
    ModelThrottled,
    ModelToolsRefused,
    ModelUnavailable,
)
from voiceagent.llm.base import LLMEvent, LLMRequest, Reasoning, StreamEnd, TextDelta
from voiceagent.llm.bedrock_answer import Item
from voiceagent.llm.bedrock_api_key import SETTING, key_refusal
from voiceagent.llm.bedrock_converse import history_shape, tool_config
from voiceagent.llm.bedrock_errors import (
    BedrockHTTPError,
    Failure,
    logged_message,
    refuses_caching,
)
from voiceagent.llm.bedrock_http import Attempt
from voiceagent.llm.eventstream import StreamFault
from voiceagent.llm.tool_refusals import CHECK_ADVICE, ToolRefusal, refused_tool

if TYPE_CHECKING:
    from voiceagent.llm.bedrock import BedrockLLM

log = logging.getLogger("voiceagent.llm.bedrock")

# A reply must end by its first-event timeout plus its maxTokens at the pace they are heard
# spoken (~150-180 words a minute, ~1.3 tokens a word), counted from its request sent, not
# from a wait for a limiter slot. A healthy model writes 20-100 tokens a second and is 5-25
# times inside it; events dripping just under the read timeout apart no longer hold a turn
# for maxTokens x 10 s.
SPOKEN_TOKENS_PER_S = 4.0

RENEWABLE = frozenset({"ExpiredTokenException", "ExpiredToken", "UnrecognizedClientException",
                       "InvalidClientTokenId", "InvalidSignatureException"})


def _llm_error(failure: Failure, *, after_tokens: bool, tools_refused: bool) -> LLMError:
    """The error a turn sees. Bedrock's words are held as the LOG_CONTENT line has them
    (numbers masked, cut to a few thousand characters with the length they had): a refusal
    can quote the whole request, and an exception holding tens of kilobytes travels whole
    through every traceback and error page that shows it."""
    message = logged_message(failure, content=True)
    if after_tokens:
        return ModelStreamFailed(failure.code, message, after_tokens=True)
    if failure.kind == "throttled":
        return ModelThrottled(failure.code, message)
    if failure.kind in ("unavailable", "credentials"):
        return ModelUnavailable(failure.code, message)
    if failure.kind == "rejected":
        return (ModelToolsRefused if tools_refused else ModelRejected)(failure.code, message)
    return ModelStreamFailed(failure.code, message, after_tokens=False)


def _bounded(name: str) -> str:
    """A tool's name as the log holds it: a name refused for its length can be any length."""
    return name if len(name) <= 80 else f"{name[:80]}…"


def _chained(cause: BaseException) -> BaseException | None:
    """What an error raised for ``cause`` chains to: not Bedrock's own answer, whose code
    and words the error holds (bounded), where a traceback would print them whole."""
    return None if isinstance(cause, BedrockHTTPError | StreamFault) else cause


# ---------------------------------------------------------------- the stream a turn sees

class ModelStream(trio.abc.ReceiveChannel[LLMEvent]):
    """The events of one model call, across its retries. Raises ``LLMError`` subclasses and
    nothing else."""

    def __init__(self, backend: BedrockLLM, request: LLMRequest, model_id: str,
                 body: bytes, *,
                 signed: Callable[[Sequence[Mapping[str, Any]]], None] | None = None) -> None:
        self._backend = backend
        self._signed = signed               # told the reply's reasoning blocks (binding)
        self._request = request
        self._model_id = model_id
        # the request as sent, every attempt; let go once content reached the caller (no
        # attempt follows then): a production prompt and tools are tens of KB a turn, held
        # for the reply's whole length otherwise
        self._body = body
        self._opened_at = trio.current_time()
        # each attempt is whole by its first-event timeout plus this, from its request sent
        self._pace_s = request.inference.max_tokens / SPOKEN_TOKENS_PER_S
        self._started_at = time.perf_counter()
        self._attempt: Attempt | None = None
        self._ready: list[Item] = []        # taken, not yet handed (rarely any)
        self._retries = 0
        self._quota_taken = 0               # the last retry's cost, given back on success
        self._renewed = False               # credentials found anew once already
        self._restarted = False             # a stalled start tried again once already
        self._content = False               # content reached the caller: no more retries
        self._ended = False
        self._closed = False

    async def start(self) -> None:
        self._attempt = await self._backend._start_attempt(self._model_id, self._body,
                                                           self._started_at, self._pace_s)

    async def receive(self) -> LLMEvent:
        while True:
            attempt = self._attempt
            if self._closed:
                await self._closed_under_us()
            if attempt is None:
                raise trio.ClosedResourceError("the model stream was closed")
            if self._ready:
                item = self._ready.pop(0)
            else:
                try:
                    item = await attempt.receive()
                except trio.EndOfChannel:
                    if self._closed:
                        await self._closed_under_us()
                    self._ended = True
                    raise
                if self._closed:
                    await self._closed_under_us()
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
            if self._closed:
                await self._closed_under_us()
            if attempt is None:
                raise trio.ClosedResourceError("the model stream was closed")
            items = [*self._ready, *await attempt.take_ready()]
            if self._closed:
                await self._closed_under_us()
            self._ready.clear()
            for at, item in enumerate(items):
                if type(item) is TextDelta:     # most of a window: nothing to note but content
                    self._content, self._body = True, b""
                    out.append(item)
                    continue
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
        if isinstance(item, Reasoning) and self._signed is not None:
            self._signed(item.blocks)
        if isinstance(item, StreamEnd):
            self._ended = True
            self._backend._stream_completed(item, self._quota_taken)
        else:
            self._content, self._body = True, b""
        return item

    async def _after_failure(self, attempt: Attempt, failure: Failure) -> None:
        """Start the next attempt, or raise."""
        backend = self._backend
        backend._counts.errors[failure.code] += 1
        failure = self._as_key_refusal(failure)
        delay = self._retry_delay(failure)
        if delay is None and await self._renewed_credentials(failure):
            delay = 0.0
        if delay is None:
            self._ended = True
            refusal = self._tools_refused(failure)
            self._log_failure(failure, refusal)
            if failure.kind == "bug":
                raise ModelStreamFailed("InternalError", f"{type(failure.cause).__name__}: "
                                        f"{failure.message}", after_tokens=self._content
                                        ) from failure.cause
            raise _llm_error(failure, after_tokens=self._content,
                             tools_refused=refusal is not None) from _chained(failure.cause)
        attempt.close()
        self._attempt = None
        self._retries += 1
        backend._counts.retries += 1
        backend.failing.note(f"{failure.code} retried", "bedrock call retried",
                             level=logging.INFO, code=failure.code, retry=self._retries,
                             delay_ms=round(delay * 1000))
        await trio.sleep(delay)
        self._attempt = await backend._start_attempt(self._model_id, self._body,
                                                     self._started_at, self._pace_s,
                                                     patient=self._restarted)

    def _as_key_refusal(self, failure: Failure) -> Failure:
        """With an API key, a refusal of who we are is the key's: said as such."""
        setup = self._backend._setup
        key = setup.signer.api_key if setup is not None else None
        return failure if not key else key_refusal(failure, key, time.time())

    async def _renewed_credentials(self, failure: Failure) -> bool:
        """Credentials refused as expired or unknown, before any content: found anew through
        the chain, once per stream; True if the attempt should be made again."""
        if (self._content or self._renewed or failure.code not in RENEWABLE
                or self._backend._setup is None):
            return False
        self._renewed = True
        signer = self._backend._setup.signer
        if signer.uses_bearer_token:
            return False
        try:
            await signer.renew()
        except Exception as err:            # the chain itself fails now: say so, once
            self._backend.failing.note("credentials not renewed",
                                       "bedrock credentials could not be renewed",
                                       level=logging.ERROR,
                                       error=f"{type(err).__name__}: {err}")
            return False
        self._backend.failing.note(f"{failure.code} renewed",
                                   "bedrock refused our credentials: renewed them through the "
                                   "chain", code=failure.code)
        return True

    def _retry_delay(self, failure: Failure) -> float | None:
        backend = self._backend
        if self._content or not failure.retryable or self._retries >= backend.max_retries:
            return None
        base = backend.retry_base_delay_s * 2.0 ** self._retries
        delay = base / 2 + random.uniform(0, base / 2)
        # a start that stalled is tried again once although it has spent the budget: that
        # is what its deadline is for, and a new connection most often answers at once
        restart = failure.code == "FirstEventTimeout" and not self._restarted
        if (not restart
                and trio.current_time() - self._opened_at + delay > backend.retry_budget_s):
            return None
        cost = backend.retry_quota.take(throttled=failure.kind == "throttled")
        if not cost:
            backend.failing.note("retry quota spent", "bedrock retry quota spent: not retried",
                                 code=failure.code)
            return None
        self._quota_taken = cost
        if restart:
            self._restarted = True
        return delay

    def _tools_refused(self, failure: Failure) -> ToolRefusal | None:
        """Bedrock's refusal of the offered tools (a ValidationException about them), which
        no retry and no other turn can get past."""
        if failure.code != "ValidationException" or failure.kind != "rejected":
            return None
        return refused_tool(failure.message, with_history=True)

    def _log_failure(self, failure: Failure, refusal: ToolRefusal | None) -> None:
        extra: dict[str, Any] = {"code": failure.code, "kind": failure.kind,
                                 "after_tokens": self._content, "retries": self._retries}
        if refusal is not None:
            self._log_tools_refused(refusal, extra,
                                    logged_message(failure, content=self._backend.log_content))
            return
        if failure.kind == "rejected":
            extra["history_shape"] = history_shape(self._request.messages)
            extra["model_id"] = self._request.model_id
        error = logged_message(failure, content=self._backend.log_content)
        if failure.kind == "bug":
            log.error("bedrock call failed: a bug in voiceagent", extra=extra,
                      exc_info=failure.cause)
        elif failure.kind == "rejected":        # this request's own: its shape, each time
            log.warning("bedrock call failed", extra={**extra, "error": error})
        elif failure.api_key:                   # once until a stream works again
            self._backend.key_refused.note(
                "api key refused", f"bedrock refused the API key ({SETTING})",
                level=logging.ERROR, **extra, model_id=self._request.model_id,
                what_to_do=failure.message)
        elif failure.kind == "credentials":
            refused = ("bedrock refused the request's prompt caching"
                       if failure.code == "AccessDeniedException"
                       and refuses_caching(failure.message)
                       else "bedrock refused our credentials")
            self._backend.failing.note(
                failure.code, refused, level=logging.ERROR,
                **extra, model_id=self._request.model_id, what_to_check=failure.message)
        else:                                   # Bedrock's state: the same for every call
            self._backend.failing.note(failure.code, "bedrock call failed", **extra,
                                       error=error)

    def _log_tools_refused(self, refusal: ToolRefusal, extra: dict[str, Any],
                           error: str) -> None:
        """Once per episode for the use case and its model: every turn of its calls meets the
        same refusal until its tools are fixed. The tool is named by its place in the
        ``toolConfig`` sent: the use case's tools in their order, then placeholders for the
        tools its history used that it no longer offers."""
        request = self._request
        where = f"use case {request.use_case}"
        config = tool_config(request.tools, request.messages) or {"tools": []}
        tool, fix = refusal.fix([_bounded(str((entry.get("toolSpec") or {}).get("name", "?")))
                                 for entry in config["tools"]], where)
        if tool is not None and refusal.place is not None and refusal.place >= len(request.tools):
            fix = (f"tool {tool} is one the call's history used and {where} offers no more "
                   "(voiceagent sends a placeholder spec for it): report it as a bug")
        self._backend.failing.note(
            f"{extra['code']} tools {request.use_case} {request.model_id}",
            "bedrock refused the use case's tools", level=logging.ERROR, **extra,
            model_id=request.model_id, use_case=request.use_case, tool=tool,
            what_to_do=f"{fix}; {CHECK_ADVICE}", error=error)

    async def _closed_under_us(self) -> NoReturn:
        """A read met the stream closed. A barge-in closes it from the relay reader's task
        (``close_now``) with the turn's scope already cancelled, and the turn's task may have
        been woken before that (its socket readable, a hold window over): this checkpoint
        raises the turn's cancel, so the cut is a cut, not a model error (the closed socket's
        failure) nor a writer gone (``ClosedResourceError``) in the turn's summary."""
        await trio.lowlevel.checkpoint()
        raise trio.ClosedResourceError("the model stream was closed")

    def close_now(self) -> None:
        """``base.ClosesNow``: the barge-in's, from another task of the call."""
        self.close()

    def close(self) -> None:
        """Sync and non-blocking, so it is safe in ``finally`` when cancelled. Again after
        ``close_now`` it closes an attempt a retry opened meanwhile: the turn's task may
        have been inside ``_start_attempt`` when the reader closed the stream."""
        attempt, self._attempt = self._attempt, None
        if not self._closed:
            self._closed = True
            self._backend._counts.streams_open -= 1
            if not self._ended:
                self._backend._counts.cancellations += 1
        if attempt is not None:
            if not self._ended:
                attempt.abort()
            attempt.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()
