"""The fake Bedrock endpoint's event-stream frames: AWS's binary framing (prelude, headers,
payload, two CRC32s) around the ConverseStream events and exceptions a reply is made of, each
with the delay slept before it is sent."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


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
