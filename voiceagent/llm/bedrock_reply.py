"""The Converse reply assembled from its stream's events (decoded by ``eventstream``): text
passed on delta by delta without thinking spans, each toolUse joined into one call, the
reasoning blocks kept whole for the history, the end with its stop reason and usage.

Apart from ``bedrock_converse``, which builds what goes to Bedrock: this module reads what
comes back, on the turn's own task as the body's chunks are read, so the turn only ever sees
finished ``LLMEvent`` values. Pure like it, and shared by the backend and its tests.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from voiceagent import jsonlimits
from voiceagent.llm.base import (
    LLMEvent,
    Reasoning,
    StreamEnd,
    TextDelta,
    ToolUseRequest,
    Usage,
)
from voiceagent.llm.eventstream import ReplyError

log = logging.getLogger("voiceagent.llm.bedrock")

CUT_OFF = ("input: cut off, the reply reached its token limit (maxTokens) before the input "
           "was complete, so the tool did not run; call it again with a shorter input")


class ThinkingFilter:
    """Drops ``<thinking>...</thinking>`` spans from streamed text, also when a tag is split
    across deltas (a possible tag start at the end of a delta is held back until the next).
    A reply that opens with a span loses the whitespace after it."""

    OPEN = "<thinking>"
    CLOSE = "</thinking>"
    __slots__ = ("_held", "_inside", "_spoken", "_strip")

    def __init__(self) -> None:
        self._inside = False
        self._held = ""
        self._strip = False
        self._spoken = False

    def feed(self, text: str) -> str:
        if not (self._inside or self._held or self._strip) and "<" not in text:
            self._spoken = self._spoken or bool(text)
            return text
        data = self._held + text
        self._held = ""
        out: list[str] = []
        while data:
            tag = self.CLOSE if self._inside else self.OPEN
            at = data.find(tag)
            if at < 0:
                keep = _partial_tag(data, tag)
                if not self._inside:
                    out.append(data[:len(data) - keep])
                self._held = data[len(data) - keep:] if keep else ""
                break
            if self._inside:
                self._strip = not self._spoken
            else:
                out.append(data[:at])
            data = data[at + len(tag):]
            self._inside = not self._inside
        return self._emit("".join(out))

    def flush(self) -> str:
        """At the end of a text block: a held partial tag was text after all."""
        held, self._held = self._held, ""
        return "" if self._inside else self._emit(held)

    def _emit(self, text: str) -> str:
        if self._strip and text:
            text = text.lstrip()
            self._strip = not text
        if text:
            self._spoken = True
        return text


def _partial_tag(data: str, tag: str) -> int:
    """Length of the longest end of ``data`` that could begin ``tag``."""
    for size in range(min(len(tag) - 1, len(data)), 0, -1):
        if data.endswith(tag[:size]):
            return size
    return 0


@dataclass(slots=True)
class _PendingTool:
    tool_use_id: str
    name: str
    parts: list[str]


@dataclass(slots=True)
class _PendingReasoning:
    parts: list[str]
    signature: str | None = None
    redacted: str | None = None         # base64, as the wire carries it

    def add(self, delta: Mapping[str, Any]) -> None:
        if (text := delta.get("text")) is not None:
            self.parts.append(str(text))
        if (signature := delta.get("signature")) is not None:
            self.signature = str(signature)
        if (redacted := delta.get("redactedContent")) is not None:
            self.redacted = (base64.b64encode(redacted).decode("ascii")
                             if isinstance(redacted, bytes) else str(redacted))

    def block(self) -> dict[str, Any] | None:
        if self.redacted is not None:
            return {"reasoningContent": {"redactedContent": self.redacted}}
        text = "".join(self.parts)
        if not text and self.signature is None:
            return None
        # the signature covers the text as sent; only a lone surrogate (which no store can
        # write) is replaced, as in spoken text
        reasoning: dict[str, Any] = {"text": jsonlimits.valid_text(text)}
        if self.signature is not None:
            reasoning["signature"] = self.signature
        return {"reasoningContent": {"reasoningText": reasoning}}


class ReplyAssembler:
    """ConverseStream events in, ``LLMEvent`` values out, for one HTTP attempt.

    Text is passed on delta by delta (minus thinking spans); a toolUse block becomes one
    ``ToolUseRequest`` when it stops, its input joined from the streamed JSON fragments;
    reasoning blocks are joined and yielded as one ``Reasoning`` at the end; citations and
    unknown deltas are dropped. ``finish`` adds the ``Reasoning`` and the ``StreamEnd``,
    after any toolUse whose input is not JSON: only the stop reason, which comes after the
    blocks, says whether maxTokens cut it off. Owned by the task that reads the reply.
    """

    __slots__ = ("_filter", "_reasoning", "_started_at", "_stop_reason", "_tools",
                 "_unparsed", "_usage", "first_content_at", "in_words", "stopped")

    def __init__(self, started_at: float) -> None:
        self._started_at = started_at       # perf_counter() when the stream was opened
        self._filter = ThinkingFilter()
        self._tools: dict[int, _PendingTool] = {}
        self._unparsed: list[_PendingTool] = []     # input not a JSON object; see finish
        self._reasoning: dict[int, _PendingReasoning] = {}  # by block index, in arrival order
        self._stop_reason: str | None = None
        self._usage: Usage | None = None
        self.first_content_at: float | None = None
        # the last event was a text delta: the model is speaking, and its next event is due
        # within milliseconds (known here as the event is read, not looked up again after)
        self.in_words = False
        # ``messageStop`` came: the reply is whole, whatever follows (usage, the body's end).
        # An attribute set with the stop reason, not a property: the exchange reads it once
        # per read of the body, and a property is a call each time
        self.stopped = False

    def feed(self, event: Mapping[str, Any], out: list[LLMEvent]) -> None:
        """``event`` shaped as botocore's iterator yields it: ``{event_type: body}``."""
        for event_type, body in event.items():
            self.feed_event(event_type, body, out)

    def feed_event(self, event_type: str, body: Any, out: list[LLMEvent]) -> None:
        """Append what one event yields to ``out``. Unknown event types are skipped."""
        if event_type == "contentBlockDelta":
            delta = body["delta"]
            text = delta.get("text")
            self.in_words = "text" in delta
            if text is not None:
                self._text(self._filter.feed(text), out)
            elif "toolUse" in delta:
                pending = self._tools.get(body.get("contentBlockIndex", -1))
                if pending is not None:
                    pending.parts.append(delta["toolUse"].get("input", ""))
            elif "reasoningContent" in delta:
                index = body.get("contentBlockIndex", -1)
                reasoning = self._reasoning.get(index)
                if reasoning is None:
                    reasoning = self._reasoning[index] = _PendingReasoning([])
                reasoning.add(delta["reasoningContent"])
            return
        self.in_words = False
        if event_type == "contentBlockStart":
            use = body.get("start", {}).get("toolUse")
            if use is not None:
                self._tools[body.get("contentBlockIndex", -1)] = _PendingTool(
                    use["toolUseId"], use["name"], [])
        elif event_type == "contentBlockStop":
            pending = self._tools.pop(body.get("contentBlockIndex", -1), None)
            if pending is None:
                self._text(self._filter.flush(), out)
            else:
                self._tool(pending, out)
        elif event_type == "messageStop":
            self._stop_reason = str(body.get("stopReason") or "end_turn")
            self.stopped = True
        elif event_type == "metadata":
            usage = body.get("usage") or {}
            self._usage = Usage(input_tokens=usage.get("inputTokens", 0),
                                output_tokens=usage.get("outputTokens", 0),
                                cache_read_tokens=usage.get("cacheReadInputTokens", 0),
                                cache_write_tokens=usage.get("cacheWriteInputTokens", 0))

    def finish(self, out: list[LLMEvent]) -> None:
        """At the end of the HTTP body. Raises ``ReplyError`` if the reply never stopped."""
        self._text(self._filter.flush(), out)
        for index in sorted(self._tools):
            self._tool(self._tools.pop(index), out)
        if self._stop_reason is None:
            raise ReplyError("IncompleteStream", "the event stream ended before messageStop")
        for pending in self._unparsed:
            self._unparsed_tool(pending, out)
        blocks = tuple(b for r in self._reasoning.values() if (b := r.block()) is not None)
        if blocks:
            out.append(Reasoning(blocks))
        first = (None if self.first_content_at is None
                 else self.first_content_at - self._started_at)
        out.append(StreamEnd(self._stop_reason, usage=self._usage, first_token_s=first))

    def _text(self, text: str, out: list[LLMEvent]) -> None:
        if text:
            if self.first_content_at is None:
                self.first_content_at = time.perf_counter()
            # a lone surrogate (an escape whose pair never came) would go on to the history,
            # where the store cannot write it as UTF-8 and the next request carries it
            # (nearly every delta is ASCII, which cannot hold one: no call for those)
            out.append(TextDelta(text if text.isascii() else jsonlimits.valid_text(text)))

    def _tool(self, pending: _PendingTool, out: list[LLMEvent]) -> None:
        value, problem = _tool_input(pending)
        if not isinstance(value, dict):
            self._unparsed.append(pending)
            return
        if self.first_content_at is None:
            self.first_content_at = time.perf_counter()
        out.append(ToolUseRequest(pending.tool_use_id, pending.name, value, problem))

    def _unparsed_tool(self, pending: _PendingTool, out: list[LLMEvent]) -> None:
        """A toolUse whose input is not a JSON object. Cut off by maxTokens, it would be cut
        off again on every try: the call goes on with an empty input (the history needs one)
        and ``CUT_OFF`` as its problem, so the tool does not run and the model reads why.
        Otherwise the model garbled it, which a new try may not repeat."""
        if self._stop_reason != "max_tokens":
            raise ReplyError("MalformedToolInput",
                             f"tool {pending.name!r}: the input is not a JSON object")
        log.warning("tool input cut off by maxTokens: not run, the model is told", extra={
            "tool": pending.name, "stop_reason": self._stop_reason,
            "input_chars": sum(len(part) for part in pending.parts)})
        if self.first_content_at is None:
            self.first_content_at = time.perf_counter()
        out.append(ToolUseRequest(pending.tool_use_id, pending.name, {}, CUT_OFF))


def _tool_input(pending: _PendingTool) -> tuple[Any, str | None]:
    """The input as parsed (None if it is not JSON), and why it cannot be used as sent. A
    number JSON has no value for becomes null: the history must stay JSON for the model
    request, and the problem becomes the tool's error result. One the store cannot hold
    becomes its text alike (DynamoDB would refuse the history item)."""
    raw = "".join(pending.parts).strip() or "{}"
    try:
        return jsonlimits.loads(raw, storable=True), None
    except jsonlimits.TooDeep:
        raise ReplyError("MalformedToolInput", f"tool {pending.name!r}: the input nests "
                         f"deeper than {jsonlimits.MAX_DEPTH} levels") from None
    except (jsonlimits.NotFinite, jsonlimits.NotStorable) as err:
        try:
            value, _ = jsonlimits.plain(jsonlimits.loads(raw, finite=False))
        except ValueError:                  # malformed further on as well
            return None, None
        return value, f"input: {err}"
    except ValueError:
        return None, None
