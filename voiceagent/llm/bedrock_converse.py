"""Converse wire shapes for the Bedrock backend, without I/O: the request body built from an
``LLMRequest``, and the reply assembled from its events (decoded by ``eventstream``).

``ReplyAssembler`` runs on the turn's own task as the body's chunks are read, so the turn only
ever sees finished ``LLMEvent`` values. Everything here is pure and shared by the backend, its
tests and the benchmark.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from voiceagent import jsonlimits
from voiceagent.llm.base import (
    InferenceConfig,
    LLMEvent,
    LLMRequest,
    Message,
    StreamEnd,
    TextDelta,
    ToolUseRequest,
    Usage,
)
from voiceagent.llm.eventstream import ReplyError
from voiceagent.llm.samplers import one_sampler

log = logging.getLogger("voiceagent.llm.bedrock")

CACHE_POINT_TYPE = "default"
METADATA_LIMIT = 256
UNAVAILABLE_TOOL = ("A tool used earlier in this call. It is not available now; "
                    "do not call it.")
CUT_OFF = ("input: cut off, the reply reached its token limit (maxTokens) before the input "
           "was complete, so the tool did not run; call it again with a shorter input")
# Bedrock's requestMetadata pattern [a-zA-Z0-9\s:_@$#=/+,-.]{0,256}; botocore does not check it.
_METADATA_DISALLOWED = re.compile(r"[^a-zA-Z0-9 \t\n\r\f\v:_@$#=/+,\-.]")
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# Prompt caching: Claude caches system, messages and tools; Nova caches system and messages.
_CLAUDE_CACHING = re.compile(r"anthropic\.claude-(3-5-haiku|3-7-sonnet|(sonnet|opus|haiku)-4|4)")
_NOVA_CACHING = re.compile(r"amazon\.nova-(2-)?(micro|lite|pro|premier)")


@dataclass(frozen=True, slots=True)
class CacheSupport:
    system: bool = False
    tools: bool = False


def prompt_caching(model_id: str) -> CacheSupport:
    """Where ``model_id`` (a model id, an inference-profile id or an ARN naming one) accepts
    cachePoint blocks. Unknown ids, such as application-inference-profile ARNs, get none:
    a cachePoint a model does not support fails the whole request."""
    if _CLAUDE_CACHING.search(model_id):
        return CacheSupport(system=True, tools=True)
    if _NOVA_CACHING.search(model_id):
        return CacheSupport(system=True)
    return CacheSupport()


def build_converse_request(request: LLMRequest) -> dict[str, Any]:
    """The keyword arguments of ``client.converse_stream`` for ``request``.

    ``toolConfig`` is present whenever tools are offered or the history holds tool blocks
    (Converse refuses tool blocks without it); see ``tool_config``.
    """
    caching = (prompt_caching(request.model_id) if request.options.prompt_caching
               else CacheSupport())
    body: dict[str, Any] = {"modelId": request.model_id, "messages": list(request.messages)}
    system: list[dict[str, Any]] = [{"text": text} for text in request.system if text.strip()]
    if system:
        if caching.system:               # after the static part, which comes first
            system.insert(1, {"cachePoint": {"type": CACHE_POINT_TYPE}})
        body["system"] = system
    tools = tool_config(request.tools, request.messages, cache=caching.tools)
    if tools is not None:
        body["toolConfig"] = tools
    body["inferenceConfig"] = inference_config(request.inference)
    one_sampler(body["inferenceConfig"], request.model_id, request.use_case)
    options = request.options
    if options.latency_optimized:
        body["performanceConfig"] = {"latency": "optimized"}
    if options.guardrail_id:
        body["guardrailConfig"] = {
            "guardrailIdentifier": options.guardrail_id,
            "guardrailVersion": options.guardrail_version or "DRAFT",
            "streamProcessingMode": "async",    # sync would hold text back until scanned
        }
    body["requestMetadata"] = {"callSid": metadata_value(request.call_sid),
                               "useCase": metadata_value(request.use_case)}
    return body


def tool_config(tools: Sequence[Mapping[str, Any]], messages: Sequence[Message], *,
                cache: bool = False) -> dict[str, Any] | None:
    """The offered tools (bare specs are wrapped in ``toolSpec``), plus a placeholder spec for
    every tool the history used that is not offered now, so a history with tool blocks is
    always accepted and keeps its structure. None when there is neither."""
    entries = [_tool_entry(tool) for tool in tools]
    declared = {entry["toolSpec"].get("name") for entry in entries if "toolSpec" in entry}
    names, has_tool_blocks = _history_tools(messages)
    for name in names:
        if name not in declared and _TOOL_NAME.match(name):
            entries.append(_placeholder(name))
            declared.add(name)
    if has_tool_blocks and not any("toolSpec" in e or "systemTool" in e for e in entries):
        entries.append(_placeholder("unavailable_tool"))   # results whose toolUse was pruned
    if not entries:
        return None
    if cache:
        entries.append({"cachePoint": {"type": CACHE_POINT_TYPE}})
    return {"tools": entries}


def inference_config(config: InferenceConfig) -> dict[str, Any]:
    body: dict[str, Any] = {"maxTokens": config.max_tokens}
    if config.temperature is not None:
        body["temperature"] = config.temperature
    if config.top_p is not None:
        body["topP"] = config.top_p
    if config.stop_sequences:
        body["stopSequences"] = list(config.stop_sequences)
    return body


def metadata_value(value: str) -> str:
    """``value`` made acceptable to requestMetadata: other characters become ``_``."""
    return _METADATA_DISALLOWED.sub("_", value)[:METADATA_LIMIT]


def history_shape(messages: Sequence[Message]) -> list[str]:
    """Roles and block kinds with counts, e.g. ``["user:text", "assistant:text+toolUse*2"]``:
    enough to see why Converse refused a history, with no content."""
    shape = []
    for message in messages:
        kinds: list[list[Any]] = []
        for block in message.get("content") or ():
            kind = next(iter(block), "?") if isinstance(block, Mapping) else "?"
            if kinds and kinds[-1][0] == kind:
                kinds[-1][1] += 1
            else:
                kinds.append([kind, 1])
        blocks = "+".join(k if n == 1 else f"{k}*{n}" for k, n in kinds) or "empty"
        shape.append(f"{message.get('role')}:{blocks}")
    return shape


def _tool_entry(tool: Mapping[str, Any]) -> dict[str, Any]:
    if {"toolSpec", "systemTool", "cachePoint"} & tool.keys():
        return dict(tool)
    return {"toolSpec": dict(tool)}


def _placeholder(name: str) -> dict[str, Any]:
    return {"toolSpec": {"name": name, "description": UNAVAILABLE_TOOL,
                         "inputSchema": {"json": {"type": "object", "properties": {}}}}}


def _history_tools(messages: Sequence[Message]) -> tuple[list[str], bool]:
    names: list[str] = []
    has_blocks = False
    for block in _blocks(messages):
        if "toolResult" in block:
            has_blocks = True
        use = block.get("toolUse")
        if isinstance(use, Mapping):
            has_blocks = True
            name = use.get("name")
            if isinstance(name, str) and name not in names:
                names.append(name)
    return names, has_blocks


def _blocks(messages: Sequence[Message]) -> Iterator[Mapping[str, Any]]:
    for message in messages:
        for block in message.get("content") or ():
            if isinstance(block, Mapping):
                yield block


# ---------------------------------------------------------------------------- the reply

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


class ReplyAssembler:
    """ConverseStream events in, ``LLMEvent`` values out, for one HTTP attempt.

    Text is passed on delta by delta (minus thinking spans); a toolUse block becomes one
    ``ToolUseRequest`` when it stops, its input joined from the streamed JSON fragments;
    reasoning, citations and unknown deltas are dropped. ``finish`` adds the ``StreamEnd``,
    after any toolUse whose input is not JSON: only the stop reason, which comes after the
    blocks, says whether maxTokens cut it off. Owned by the task that reads the reply.
    """

    __slots__ = ("_filter", "_started_at", "_stop_reason", "_tools", "_unparsed", "_usage",
                 "first_content_at")

    def __init__(self, started_at: float) -> None:
        self._started_at = started_at       # perf_counter() when the stream was opened
        self._filter = ThinkingFilter()
        self._tools: dict[int, _PendingTool] = {}
        self._unparsed: list[_PendingTool] = []     # input not a JSON object; see finish
        self._stop_reason: str | None = None
        self._usage: Usage | None = None
        self.first_content_at: float | None = None

    @property
    def stopped(self) -> bool:
        """``messageStop`` came: the reply is whole, whatever follows (usage, the body's end)."""
        return self._stop_reason is not None

    def feed(self, event: Mapping[str, Any], out: list[LLMEvent]) -> None:
        """``event`` shaped as botocore's iterator yields it: ``{event_type: body}``."""
        for event_type, body in event.items():
            self.feed_event(event_type, body, out)

    def feed_event(self, event_type: str, body: Any, out: list[LLMEvent]) -> None:
        """Append what one event yields to ``out``. Unknown event types are skipped."""
        if event_type == "contentBlockDelta":
            delta = body["delta"]
            text = delta.get("text")
            if text is not None:
                self._text(self._filter.feed(text), out)
            elif "toolUse" in delta:
                pending = self._tools.get(body.get("contentBlockIndex", -1))
                if pending is not None:
                    pending.parts.append(delta["toolUse"].get("input", ""))
            return
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
        first = (None if self.first_content_at is None
                 else self.first_content_at - self._started_at)
        out.append(StreamEnd(self._stop_reason, usage=self._usage, first_token_s=first))

    def _text(self, text: str, out: list[LLMEvent]) -> None:
        if text:
            if self.first_content_at is None:
                self.first_content_at = time.perf_counter()
            # a lone surrogate (an escape whose pair never came) would go on to the history,
            # where the store cannot write it as UTF-8 and the next request carries it
            out.append(TextDelta(jsonlimits.valid_text(text)))

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
