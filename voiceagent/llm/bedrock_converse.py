"""Converse wire shapes for the Bedrock backend, without I/O: the request body built from an
``LLMRequest`` (the reply is assembled from its events in ``bedrock_reply``).

Everything here is pure and shared by the backend, its tests and the benchmark.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from voiceagent.llm.base import InferenceConfig, LLMRequest, Message
from voiceagent.llm.cache_points import (
    MAX_CACHE_POINTS,
    cache_point,
    count_cache_points,
    messages_min_tokens,
    with_moving_point,
)
from voiceagent.llm.effort import effort_fields
from voiceagent.llm.samplers import fit_samplers
from voiceagent.llm.thinking import thinking_fields

METADATA_LIMIT = 256
UNAVAILABLE_TOOL = ("A tool used earlier in this call. It is not available now; "
                    "do not call it.")
# Bedrock's requestMetadata pattern [a-zA-Z0-9\s:_@$#=/+,-.]{0,256}; botocore does not check it.
_METADATA_DISALLOWED = re.compile(r"[^a-zA-Z0-9 \t\n\r\f\v:_@$#=/+,\-.]")
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# Prompt caching: Claude caches system, messages and tools; Nova caches system and messages.
# Claude: 3.5 Haiku, 3.7 Sonnet, the 4.x models, and the Claude 5 ones (Opus, Sonnet and Haiku
# 5 and 5.5, Fable and Mythos 5, 5.1 and 5.2: each Bedrock model card lists "system, messages,
# and tools"), and every Claude from 6 on (taken to keep to it, as binding.py takes them to
# bind their thinking). Claude 3 Haiku/Sonnet/Opus and 3.5 Sonnet (preview only) have none.
# Claude also gets the moving point in the conversation (``cache_points``); Nova, whose
# caching documents no look-back to an earlier point, would only write it, never read it.
_CLAUDE_CACHING = re.compile(
    r"anthropic\.claude-(?:3-5-haiku|3-7-sonnet|(?:sonnet|opus|haiku)-4|4"
    r"|(?:opus|sonnet|haiku|fable|mythos)-5|[a-z]+-(?:[6-9]|[1-9][0-9]))(?![0-9])")
_NOVA_CACHING = re.compile(r"amazon\.nova-(2-)?(micro|lite|pro|premier)")


@dataclass(frozen=True, slots=True)
class CacheSupport:
    system: bool = False
    tools: bool = False
    messages: bool = False          # the moving point at the end of the conversation


def prompt_caching(model_id: str) -> CacheSupport:
    """Where ``model_id`` (a model id, an inference-profile id or an ARN naming one) accepts
    cachePoint blocks. Unknown ids, such as application-inference-profile ARNs, get none:
    a cachePoint a model does not support fails the whole request."""
    if _CLAUDE_CACHING.search(model_id):
        return CacheSupport(system=True, tools=True, messages=True)
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
            system.insert(1, cache_point())
        body["system"] = system
    tools = tool_config(request.tools, request.messages, cache=caching.tools)
    if tools is not None:
        body["toolConfig"] = tools
    if caching.messages:
        used = count_cache_points(system) + count_cache_points((tools or {}).get("tools", ()))
        body["messages"] = list(with_moving_point(
            body["messages"], room=MAX_CACHE_POINTS - used,
            min_tokens=messages_min_tokens(request.model_id)))
    body["inferenceConfig"] = inference_config(request.inference)
    fit_samplers(body["inferenceConfig"], request.model_id, request.use_case)
    options = request.options
    if options.latency_optimized:
        body["performanceConfig"] = {"latency": "optimized"}
    if options.guardrail_id:
        body["guardrailConfig"] = {
            "guardrailIdentifier": options.guardrail_id,
            "guardrailVersion": options.guardrail_version or "DRAFT",
            "streamProcessingMode": "async",    # sync would hold text back until scanned
        }
    fields = thinking_fields(request.model_id, options.thinking_budget_tokens, request.use_case)
    if fields is not None:
        body["additionalModelRequestFields"] = fields
    adaptive = effort_fields(request.model_id, options.effort, request.use_case)
    if adaptive is not None:            # never with a budget: a use case takes one (at load)
        body["additionalModelRequestFields"], output_config = adaptive
        if output_config is not None:
            body["outputConfig"] = output_config
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
        entries.append(cache_point())
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
