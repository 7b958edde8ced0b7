"""The one interface every model backend implements, and the events a model stream yields.

Backends: ``bedrock`` (production, ConverseStream) and ``scripted`` (offline, deterministic).
Actors see only this module. A stream is an async context manager around a receive channel so
that leaving the turn (done, cancelled by a barge-in, or failed) closes the upstream at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import trio

# A Converse message: {"role": "user"|"assistant", "content": [block, ...]}. Blocks are
# {"text": str}, {"toolUse": {"toolUseId", "name", "input"}},
# {"toolResult": {"toolUseId", "content": [{"json": {...}} | {"text": str}], "status"}} or,
# first in an assistant message, {"reasoningContent": {"reasoningText": {"text", "signature"?}}
# | {"redactedContent": base64 str}} (the wire's own form of the blob, so it stays JSON).
Message = dict[str, Any]


@dataclass(frozen=True, slots=True)
class InferenceConfig:
    max_tokens: int = 300               # spoken replies are short; long ones cost latency
    temperature: float | None = None
    top_p: float | None = None
    stop_sequences: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelOptions:
    """Per-use-case switches that only some backends or models honour."""

    latency_optimized: bool = False     # performanceConfig.latency = "optimized"
    prompt_caching: bool = False        # cachePoint after the static system prompt and tools
    guardrail_id: str | None = None
    guardrail_version: str | None = None
    thinking_budget_tokens: int | None = None   # Claude's extended thinking (``thinking``)
    effort: str | None = None           # Claude's adaptive thinking at this effort (``effort``)


@dataclass(frozen=True, slots=True)
class LLMRequest:
    call_sid: str
    use_case: str
    model_id: str
    system: tuple[str, ...]             # system prompt text blocks, static part first
    messages: tuple[Message, ...]       # a valid Converse history ending in a user message
    tools: tuple[Mapping[str, Any], ...] = ()   # Bedrock toolSpec objects
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    options: ModelOptions = field(default_factory=ModelOptions)
    # the language Twilio speaks now (None: the relay's own): Bedrock reads it in ``system``'s
    # note; the offline model answers its fallback in it
    language: str | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolUseRequest:
    tool_use_id: str
    name: str
    input: Mapping[str, Any]            # assembled from the streamed JSON fragments
    # Why the input as the model sent it cannot be used (it is then the nearest JSON object,
    # for the history): the tool is not run, and its error result tells the model why.
    input_problem: str | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


@dataclass(frozen=True, slots=True)
class StreamEnd:
    stop_reason: str                    # end_turn, tool_use, max_tokens, ...
    usage: Usage | None = None
    first_token_s: float | None = None  # request sent -> first delta, when the backend knows


@dataclass(frozen=True, slots=True)
class Reasoning:
    """The reply's reasoning blocks (Converse ``reasoningContent``), whole and verbatim, in
    the order the model sent them; yielded once, just before ``StreamEnd``, so a stream that
    fails or is retried never hands on a part. Never spoken. A model with extended thinking
    and tools (Anthropic's) refuses the next request unless the blocks of a round that asked
    for tools come back, unchanged, first in its assistant message."""

    blocks: tuple[Mapping[str, Any], ...]


LLMEvent = TextDelta | ToolUseRequest | Reasoning | StreamEnd


@runtime_checkable
class HeldReads(Protocol):
    """A model stream that can hand over everything that has arrived without waiting."""

    async def take_ready(self) -> list[LLMEvent]:
        """Every event that has arrived (in the socket, the TLS layer or the parser), without
        waiting for more; a failure after events is raised by the next read, so the events
        before it are spoken first."""
        ...


@runtime_checkable
class ClosesNow(Protocol):
    """A model stream whose upstream can be closed synchronously, from any task of the call:
    a barge-in closes it the moment the relay reader reads the interrupt (``CutMarks``),
    not a scheduler pass later, when the cut turn's task runs again (at a thousand busy
    calls each pass of the run queue is milliseconds). A stream closed under a read that
    was already under way ends that read with the turn's cancel, never with an error."""

    def close_now(self) -> None:
        """Close the upstream now (idempotent; never blocks, never raises)."""
        ...


class LLM(Protocol):
    """A model backend. One instance per process, shared by every call."""

    name: str

    def stream(self, request: LLMRequest) -> AbstractAsyncContextManager[
        trio.abc.ReceiveChannel[LLMEvent]
    ]:
        """Open one model call. Leaving the context closes the upstream stream, in bounded
        time, without blocking the event loop. Raises ``LLMError`` subclasses, from entering
        or from iterating. ``receive`` must lose nothing when cancelled (as trio's memory
        channels): a turn waits on it under the deadline of its held text.

        A stream may also be a ``HeldReads``: a turn holding text then reads it once per hold
        window instead of once per token; both built-in backends' streams are. Bedrock's is
        also a ``ClosesNow``."""
        ...

    async def aclose(self) -> None:
        """Release pools and threads at process exit."""
        ...


def tool_specs(tools: Sequence[Mapping[str, Any]]) -> tuple[Mapping[str, Any], ...]:
    """Bedrock wants ``{"toolSpec": {...}}`` wrappers; use cases store the inner objects."""
    return tuple({"toolSpec": dict(spec)} for spec in tools)
