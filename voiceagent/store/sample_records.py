"""Use-case items as the original Node sample wrote them, read as voiceagent's use cases.

``config_records.use_case_from_item`` falls back on these when an item has no ``voiceagent``
attribute (a table the sample filled): ``tools`` and ``dtmfHandlers`` are JSON *strings*,
``conversationRelayParams`` a map, the prompt ``JSON.stringify``-ed. Apart from
config_records.py so that the mapping of today's items stays short.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from voiceagent.errors import ConfigError
from voiceagent.store.base import Item
from voiceagent.usecases import RELAY_BUILDER_ATTRIBUTES

log = logging.getLogger("voiceagent.store.records")    # as before the split: same logger


def sample_use_case(item: Item, source: str) -> dict[str, Any]:
    """The use case's fields as ``UseCase`` takes them, from the sample's attributes."""
    name = item["pk"]
    data: dict[str, Any] = {
        "name": name, "title": item.get("title", ""), "description": item.get("description", ""),
        "prompt": _decode_prompt(item.get("prompt", "")),
        "relay": _sample_relay(name, item.get("conversationRelayParams")),
        "tools": _sample_tools(item.get("tools"), source),
    }
    if item.get("llmModel"):
        data["model"] = item["llmModel"]
    declared = {t.get("name") for t in data["tools"]}
    data["dtmf"] = {"handlers": _sample_dtmf(name, item.get("dtmfHandlers"), declared, source)}
    return data


def _decode_prompt(prompt: Any) -> Any:
    """The sample stored ``JSON.stringify(text)``: a string inside quotes, escapes and all."""
    if isinstance(prompt, str) and len(prompt) >= 2 and prompt[0] == prompt[-1] == '"':
        try:
            decoded = json.loads(prompt)
        except ValueError:
            return prompt
        if isinstance(decoded, str):
            return decoded
    return prompt


def _parse_json_text(value: Any, source: str, attribute: str) -> Any:
    if not isinstance(value, str):
        return value
    if not value.strip():
        return None
    try:
        return json.loads(value)
    except ValueError as err:
        raise ConfigError(source, attribute, f"not valid JSON text: {err}") from None


def _sample_tools(value: Any, source: str) -> list[dict[str, Any]]:
    specs = _parse_json_text(value, source, "tools") or []
    if not isinstance(specs, list):
        raise ConfigError(source, "tools", "must be a JSON list of toolSpec objects")
    tools = []
    for spec in specs:
        inner = spec.get("toolSpec", spec) if isinstance(spec, Mapping) else {}
        tool: dict[str, Any] = {"name": inner.get("name"),
                                "description": inner.get("description")}
        schema = inner.get("inputSchema")
        if isinstance(schema, Mapping):
            tool["input_schema"] = schema.get("json", schema)
        tools.append(tool)
    return tools


def _sample_dtmf(name: str, value: Any, declared: set[Any],
                 source: str) -> dict[str, dict[str, Any]]:
    """The sample's digit -> {replyWithText, replyText, replyWithFunction, replyFunction}.
    Its items map digits to tools no use case declares; those keys keep their reply only."""
    raw = _parse_json_text(value, source, "dtmfHandlers") or {}
    if not isinstance(raw, Mapping):
        raise ConfigError(source, "dtmfHandlers", "must be a JSON object keyed by digit")
    handlers: dict[str, dict[str, Any]] = {}
    undeclared: list[str] = []
    for digit, spec in raw.items():
        if not isinstance(spec, Mapping):
            continue
        handler: dict[str, Any] = {}
        if spec.get("replyWithText") and spec.get("replyText"):
            handler["reply"] = spec["replyText"]
        tool = spec.get("replyFunction")
        if spec.get("replyWithFunction") and tool:
            if tool in declared:
                handler["tool"] = tool
            else:
                undeclared.append(str(digit))
        if handler:
            handlers[str(digit)] = handler
    if undeclared:
        log.warning("use case dtmf handlers name undeclared tools; their tool is dropped",
                    extra={"use_case": name, "digits": undeclared})
    return handlers


def _sample_relay(name: str, value: Any) -> dict[str, Any]:
    params = dict(value) if isinstance(value, Mapping) else {}
    dropped = sorted(key for key, v in params.items()
                     if key not in RELAY_BUILDER_ATTRIBUTES
                     or not isinstance(v, str | bool | int | float))
    if dropped:
        log.warning("use case relay attributes dropped: not named by the twilio builder, or "
                    "not a scalar", extra={"use_case": name, "attributes": dropped})
    return {key: v for key, v in params.items() if key not in dropped}
