"""The Bedrock backend against a local endpoint that speaks the ConverseStream wire format.

The real boto3 client is used, pointed at the fake through AWS_ENDPOINT_URL_BEDROCK_RUNTIME,
with dummy credentials and no AWS config files. These are real-socket, real-thread tests: no
autojump clock, a time limit on each. Every request the fake receives is checked against the
Converse history rules, and each test asserts the fake saw no violation.
"""

from __future__ import annotations

import binascii
import logging
import struct
import time
import zlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import trio
import trio.testing
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.eventstream import EventStreamBuffer

from actors.history import History
from tests.fake_bedrock import (
    FakeBedrock,
    HttpError,
    encode_frame,
    error,
    event,
    exception,
    message_end,
    message_start,
    reasoning_events,
    running_fake_bedrock,
    scripted_responder,
    stream_reply,
    text_events,
    text_reply,
    tool_events,
)
from voiceagent.aws_http import IDLE_MAX_S
from voiceagent.catalog import read_config_dir
from voiceagent.errors import (
    ModelRejected,
    ModelStreamFailed,
    ModelThrottled,
    ModelUnavailable,
)
from voiceagent.llm.base import (
    HeldReads,
    LLMEvent,
    LLMRequest,
    ModelOptions,
    StreamEnd,
    TextDelta,
    ToolUseRequest,
    Usage,
    tool_specs,
)
from voiceagent.llm.bedrock import BedrockLLM
from voiceagent.llm.bedrock_converse import (
    build_converse_request,
    history_shape,
    metadata_value,
    prompt_caching,
)
from voiceagent.llm.bedrock_errors import BedrockHTTPError, classify
from voiceagent.llm.bedrock_reply import CUT_OFF, ThinkingFilter
from voiceagent.llm.bedrock_startup import check_bedrock_ready, open_bedrock_llm
from voiceagent.llm.eventstream import FrameDecoder, ReplyError, StreamFault, event_of
from voiceagent.llm.scripted import ScriptedLLM
from voiceagent.net import proxy_for, redact_url
from voiceagent.settings import Settings
from voiceagent.tools.registry import default_registry

CALL_SID = "CA0123456789abcdef0123456789abcdef"
NOVA = "us.amazon.nova-lite-v1:0"
CLAUDE = "us.anthropic.claude-3-7-sonnet-20250219-v1:0"
LOOKUP = {"name": "lookup_hours", "description": "Opening hours for a date.",
          "inputSchema": {"json": {"type": "object",
                                   "properties": {"date": {"type": "string"}}}}}
BOOK = {"name": "book_table", "description": "Book a table.",
        "inputSchema": {"json": {"type": "object",
                                 "properties": {"time": {"type": "string"}}}}}


@pytest.fixture
def fake(fake_bedrock: FakeBedrock) -> FakeBedrock:
    return fake_bedrock


@pytest.fixture
async def llm(fake: FakeBedrock) -> AsyncIterator[BedrockLLM]:
    backend = BedrockLLM(region="us-east-1", max_concurrent_streams=250,
                         retry_base_delay_s=0.02)
    yield backend
    await backend.aclose()


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"text": text}]}


def request(messages: Sequence[dict[str, Any]] = (user("When do you open?"),), *,
            model_id: str = NOVA, **fields: Any) -> LLMRequest:
    values: dict[str, Any] = {"call_sid": CALL_SID, "use_case": "testUseCase",
                              "model_id": model_id, "system": ("You are a host.",),
                              "messages": tuple(messages)}
    values.update(fields)
    return LLMRequest(**values)


async def collect(llm: BedrockLLM, llm_request: LLMRequest) -> list[LLMEvent]:
    async with llm.stream(llm_request) as events:
        return [item async for item in events]


def without_end(events: list[LLMEvent]) -> list[LLMEvent]:
    assert isinstance(events[-1], StreamEnd)
    return events[:-1]


async def wait_attempts_done(llm: BedrockLLM) -> float:
    """Poll until every HTTP exchange has given its limiter token back; returns how long
    that took."""
    started = time.perf_counter()
    while llm.statistics().attempts_open:       # noqa: ASYNC110 - the backend has no event
        await trio.sleep(0.001)
    return time.perf_counter() - started


# ---------------------------------------------------------------------------- the fake itself

def test_encoder_reproduces_the_public_vector() -> None:
    frame = encode_frame({}, b'{"foo": "bar"}')
    assert binascii.hexlify(frame[:12], " ").decode() == "00 00 00 1e 00 00 00 00 ba f2 f6 8a"
    assert binascii.hexlify(frame[-4:], " ").decode() == "ae 72 58 e4"
    assert len(frame) == 30


def test_botocore_decodes_the_encoders_frames() -> None:
    buffer = EventStreamBuffer()
    buffer.add_data(event("contentBlockDelta", {"contentBlockIndex": 0,
                                                "delta": {"text": "Hi"}}).data
                    + exception("throttlingException", "slow down").data
                    + error("InternalFailure", "boom").data)
    first, second, third = list(buffer)
    assert first.headers == {":message-type": "event", ":event-type": "contentBlockDelta",
                             ":content-type": "application/json"}
    assert first.payload == b'{"contentBlockIndex": 0, "delta": {"text": "Hi"}}'
    assert second.headers[":exception-type"] == "throttlingException"
    assert third.headers[":error-code"] == "InternalFailure"
    assert third.payload == b""


def test_decoder_agrees_with_botocore_however_the_body_is_chunked() -> None:
    body = b"".join(f.data for f in [
        *text_events(["Hi", " there"]), exception("throttlingException", "slow"),
        error("InternalFailure", "boom")])
    reference = [(m.headers, m.payload) for m in _botocore_messages(body)]
    for cut in range(1, len(body)):
        decoder = FrameDecoder()
        got = decoder.feed(body[:cut]) + decoder.feed(body[cut:])
        assert [(dict(h), p) for h, p in got] == reference, cut
        assert decoder.pending == 0


def test_decoder_reads_every_header_type() -> None:
    headers = (_raw_header(b"t", 0, b"") + _raw_header(b"f", 1, b"")
               + _raw_header(b"b", 2, b"\xff") + _raw_header(b"s", 3, b"\x01\x02")
               + _raw_header(b"i", 4, struct.pack("!i", -7))
               + _raw_header(b"l", 5, struct.pack("!q", 2**40))
               + _raw_header(b"by", 6, struct.pack("!H", 3) + b"abc")
               + _raw_header(b"ts", 8, struct.pack("!q", 1_700_000_000_000))
               + _raw_header(b"u", 9, bytes(range(16))))
    prelude = struct.pack("!II", 16 + len(headers) + 2, len(headers))
    message = prelude + struct.pack("!I", zlib.crc32(prelude)) + headers + b"{}"
    frame = message + struct.pack("!I", zlib.crc32(message))
    ((decoded, payload),) = FrameDecoder().feed(frame)
    (reference,) = _botocore_messages(frame)
    assert payload == b"{}"
    assert decoded["t"] is True
    assert decoded["f"] is False
    assert decoded["by"] == b"abc"
    assert decoded["u"] == bytes(range(16))
    for name in ("b", "s", "i", "l"):
        assert decoded[name] == reference.headers[name]
    assert decoded["ts"] == 1_700_000_000_000


def test_decoder_refuses_a_corrupt_frame() -> None:
    frame = bytearray(event("messageStop", {"stopReason": "end_turn"}).data)
    frame[-6] ^= 1
    with pytest.raises(ReplyError, match="CorruptFrame"):
        FrameDecoder().feed(bytes(frame))


def test_exception_and_error_messages_raise_with_their_codes() -> None:
    ((headers, payload),) = FrameDecoder().feed(exception("throttlingException", "x").data)
    with pytest.raises(StreamFault) as caught:
        event_of(headers, payload)
    assert caught.value.code == "throttlingException"
    ((headers, payload),) = FrameDecoder().feed(error("InternalFailure", "y").data)
    with pytest.raises(StreamFault, match="InternalFailure: y"):
        event_of(headers, payload)


@pytest.mark.parametrize("text", [
    "<thinking>plan</thinking>\n\nWe open at nine.",
    "We open <thinking>a<b</thinking>at nine. <th> stays, a < b stays",
    "Ends inside <thinking>never closed",
    "<thinking></thinking><thinking>x</thinking>Hi",
])
def test_thinking_is_dropped_wherever_the_deltas_split(text: str) -> None:
    expected = _think_once(text)
    assert "thinking>" not in expected
    for first in range(len(text)):
        for second in range(first, len(text)):
            parts = [text[:first], text[first:second], text[second:]]
            thinking = ThinkingFilter()
            got = "".join(thinking.feed(part) for part in parts) + thinking.flush()
            assert got == expected, (first, second)


def _think_once(text: str) -> str:
    thinking = ThinkingFilter()
    return thinking.feed(text) + thinking.flush()


def test_request_metadata_values_are_made_acceptable() -> None:
    assert metadata_value("CA12 ok:_@$#=/+,-.") == "CA12 ok:_@$#=/+,-."
    assert metadata_value("a?b<c>é") == "a_b_c__"
    assert len(metadata_value("x" * 300)) == 256


def test_prompt_caching_support_by_model_id() -> None:
    assert prompt_caching("anthropic.claude-3-7-sonnet-20250219-v1:0").tools
    assert prompt_caching("global.anthropic.claude-sonnet-4-5-20250929-v1:0").tools
    nova = prompt_caching("eu.amazon.nova-pro-v1:0")
    assert nova.system
    assert not nova.tools
    assert not prompt_caching("anthropic.claude-3-haiku-20240307-v1:0").system
    assert not prompt_caching("arn:aws:bedrock:us-east-1:1:application-inference-profile/x").system


def test_history_shape_has_kinds_and_counts_only() -> None:
    messages = [user("secret words"),
                {"role": "assistant", "content": [
                    {"text": "more secret"}, {"toolUse": {"toolUseId": "a", "name": "n",
                                                          "input": {}}},
                    {"toolUse": {"toolUseId": "b", "name": "n", "input": {}}}]}]
    assert history_shape(messages) == ["user:text", "assistant:text+toolUse*2"]


@pytest.mark.parametrize(("code", "kind", "retryable"), [
    ("throttlingException", "throttled", True),
    ("serviceUnavailableException", "unavailable", True),
    ("internalServerException", "unavailable", True),
    ("modelStreamErrorException", "stream", True),
    ("validationException", "rejected", False),
    ("somethingNewException", "stream", False),
])
def test_errors_inside_the_stream_map_like_their_http_twins(code: str, kind: str,
                                                            retryable: bool) -> None:
    """An exception frame (camelCase code) classifies as the HTTP answer of the same name,
    except that an unknown one inside a stream is the stream's fault, not the request's."""
    pascal = code[0].upper() + code[1:]
    failure = classify(StreamFault(code, "m"))
    assert (failure.code, failure.kind, failure.retryable) == (pascal, kind, retryable)
    assert failure.message == "m"
    http = classify(BedrockHTTPError(400, pascal, "m"))
    assert http.code == pascal
    if kind != "stream" or pascal == "ModelStreamErrorException":
        assert (http.kind, http.retryable) == (kind, retryable)


def _botocore_messages(data: bytes) -> list[Any]:
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    return list(buffer)


def _raw_header(name: bytes, kind: int, value: bytes) -> bytes:
    return struct.pack("!B", len(name)) + name + struct.pack("!B", kind) + value


# ---------------------------------------------------------------------------- replies

async def test_plain_text_streams_each_delta_as_it_arrives(
        fake: FakeBedrock, llm: BedrockLLM) -> None:
    """No buffering into sentences: each delta is received before the next one is sent."""
    deltas = ["We open", " at nine", " every day."]
    fake.push(text_reply(deltas, gap_s=0.15, cache_read=7, cache_write=3))
    received: list[tuple[LLMEvent, int]] = []
    with trio.fail_after(5):
        async with llm.stream(request()) as events:
            async for item in events:
                received.append((item, fake.requests[0].frames_sent))
    texts = [item for item, _ in received if isinstance(item, TextDelta)]
    assert texts == [TextDelta(d) for d in deltas]
    # frames sent when each text was received: messageStart + the deltas so far (the frames
    # after the last delta follow it without a pause)
    assert [sent for item, sent in received if isinstance(item, TextDelta)][:2] == [2, 3]
    end = received[-1][0]
    assert isinstance(end, StreamEnd)
    assert end.stop_reason == "end_turn"
    assert end.usage == Usage(input_tokens=12, output_tokens=5, cache_read_tokens=7,
                              cache_write_tokens=3)
    assert end.first_token_s is not None
    assert end.first_token_s >= 0.15                    # the pause before the first delta
    assert fake.violations == []


async def test_request_body_carries_system_config_and_sanitised_metadata(
        fake: FakeBedrock, llm: BedrockLLM) -> None:
    fake.push(text_reply(["Hi."]))
    with trio.fail_after(5):
        await collect(llm, request(call_sid="CA1?<x>", use_case="pizza shop!"))
    sent = fake.requests[0]
    assert sent.model_id == NOVA
    assert sent.body["system"] == [{"text": "You are a host."}]
    assert sent.body["inferenceConfig"] == {"maxTokens": 300}
    assert sent.body["requestMetadata"] == {"callSid": "CA1__x_", "useCase": "pizza shop_"}
    assert "toolConfig" not in sent.body
    assert "performanceConfig" not in sent.body
    assert sent.headers["authorization"].startswith("AWS4-HMAC-SHA256 ")
    assert "/us-east-1/bedrock/aws4_request" in sent.headers["authorization"]
    assert fake.violations == []


async def test_options_caching_latency_guardrail_and_arn_model_id(
        fake: FakeBedrock, llm: BedrockLLM) -> None:
    options = ModelOptions(latency_optimized=True, prompt_caching=True,
                           guardrail_id="gr-123", guardrail_version="2")
    arn = ("arn:aws:bedrock:us-east-1:123456789012:inference-profile/"
           "us.anthropic.claude-3-5-haiku-20241022-v1:0")
    fake.push(text_reply(["a"]), text_reply(["b"]), text_reply(["c"]))
    with trio.fail_after(5):
        await collect(llm, request(model_id=arn, system=("static", "today is Monday"),
                                   tools=(LOOKUP,), options=options))
        await collect(llm, request(model_id=NOVA, tools=tool_specs([LOOKUP]),
                                   options=options))
        await collect(llm, request(model_id="meta.llama3-70b-instruct-v1:0",
                                   tools=(LOOKUP,), options=options))
    claude, nova, llama = (r.body for r in fake.requests)
    assert fake.requests[0].model_id == arn
    cache = {"cachePoint": {"type": "default"}}
    assert claude["system"] == [{"text": "static"}, cache, {"text": "today is Monday"}]
    assert claude["toolConfig"]["tools"] == [{"toolSpec": LOOKUP}, cache]
    assert claude["performanceConfig"] == {"latency": "optimized"}
    assert claude["guardrailConfig"] == {"guardrailIdentifier": "gr-123",
                                         "guardrailVersion": "2",
                                         "streamProcessingMode": "async"}
    assert nova["system"] == [{"text": "You are a host."}, cache]
    assert nova["toolConfig"]["tools"] == [{"toolSpec": LOOKUP}]     # Nova: no tool caching
    assert "cachePoint" not in str(llama)
    assert fake.violations == []


async def test_tool_call_as_the_first_block(fake: FakeBedrock, llm: BedrockLLM) -> None:
    fragments = ["", '{"date": "2025', '-06-01", "dur', 'ation_min": 30}']
    fake.push(stream_reply(message_start(), tool_events(0, "tooluse_a1", "lookup_hours",
                                                        fragments),
                           message_end("tool_use")))
    with trio.fail_after(5):
        events = await collect(llm, request(tools=(LOOKUP,)))
    assert without_end(events) == [
        ToolUseRequest("tooluse_a1", "lookup_hours", {"date": "2025-06-01",
                                                      "duration_min": 30})]
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.stop_reason == "tool_use"
    assert fake.requests[0].body["toolConfig"] == {"tools": [{"toolSpec": LOOKUP}]}
    assert fake.violations == []


async def test_parallel_tool_calls_and_text_spoken_before_them(
        fake: FakeBedrock, llm: BedrockLLM) -> None:
    """The text is yielded at once, while the tool blocks are still streaming."""
    fake.push(stream_reply(
        message_start(), text_events(["Let me check", " both."]),
        tool_events(1, "tooluse_1", "lookup_hours", ['{"date": ', '"today"}'], gap_s=0.1),
        tool_events(2, "tooluse_2", "book_table", ['{"time": "19:00"}']),
        message_end("tool_use")))
    received: list[tuple[LLMEvent, int]] = []
    with trio.fail_after(5):
        async with llm.stream(request(tools=(LOOKUP, BOOK))) as events:
            async for item in events:
                received.append((item, fake.requests[0].frames_sent))
    assert without_end([item for item, _ in received]) == [
        TextDelta("Let me check"), TextDelta(" both."),
        ToolUseRequest("tooluse_1", "lookup_hours", {"date": "today"}),
        ToolUseRequest("tooluse_2", "book_table", {"time": "19:00"})]
    total = 1 + 3 + 4 + 3 + 2
    assert received[1][1] < total - 5       # " both." arrived before the first tool finished
    assert fake.violations == []


async def test_three_tool_rounds_with_a_growing_history(
        fake: FakeBedrock, llm: BedrockLLM) -> None:
    """The runtime's loop, by hand: each round's request is a valid Converse history, and
    every round reuses the one kept-alive connection."""
    fake.push(
        stream_reply(message_start(), text_events(["Checking."]),
                     tool_events(1, "tooluse_r1", "lookup_hours", ['{"date": "today"}']),
                     message_end("tool_use")),
        stream_reply(message_start(),
                     tool_events(0, "tooluse_r2a", "lookup_hours", ['{"date": "mon"}']),
                     tool_events(1, "tooluse_r2b", "book_table", ['{"time": "19:00"}']),
                     message_end("tool_use")),
        stream_reply(message_start(),
                     tool_events(0, "tooluse_r3", "book_table", ['{"time": "20:00"}']),
                     message_end("tool_use")),
        text_reply(["All booked", " for eight."]))
    history = History()
    history.add_user_text("Book me a table.")
    with trio.fail_after(10):
        for _ in range(3):
            events = await collect(llm, request(history.for_request(), tools=(LOOKUP, BOOK)))
            text = "".join(e.text for e in events if isinstance(e, TextDelta))
            uses = [e for e in events if isinstance(e, ToolUseRequest)]
            assert uses
            history.add_assistant(text, [{"toolUseId": u.tool_use_id, "name": u.name,
                                          "input": dict(u.input)} for u in uses])
            history.add_tool_results([{"toolResult": {
                "toolUseId": u.tool_use_id, "status": "success",
                "content": [{"json": {"ok": True}}]}} for u in uses])
        events = await collect(llm, request(history.for_request(), tools=(LOOKUP, BOOK)))
    assert without_end(events) == [TextDelta("All booked"), TextDelta(" for eight.")]
    assert len(fake.requests) == 4
    assert [len(r.body["messages"]) for r in fake.requests] == [1, 3, 5, 7]
    assert all("toolConfig" in r.body for r in fake.requests)
    assert {r.connection.id for r in fake.requests} == {0}
    assert fake.violations == []


async def test_a_tool_input_number_json_cannot_hold_never_reaches_the_next_request(
        fake: FakeBedrock, llm: BedrockLLM) -> None:
    """``1e999`` is JSON text that Python reads as infinity. The call comes with null in its
    place and a problem for the tool's error result, so the history stays JSON and the next
    request is one Bedrock can read (the fake refuses ``Infinity`` as Bedrock would)."""
    fake.push(stream_reply(message_start(),
                           tool_events(0, "tooluse_n", "book_table", ['{"time": 1e99', '9}']),
                           message_end("tool_use")),
              text_reply(["What time would you like?"]))
    history = History()
    history.add_user_text("Book the table for a very late time.")
    with trio.fail_after(5):
        events = await collect(llm, request(history.for_request(), tools=(BOOK,)))
        [use] = [e for e in events if isinstance(e, ToolUseRequest)]
        assert use.input == {"time": None}
        assert "not finite" in (use.input_problem or "")
        history.add_assistant("", [{"toolUseId": use.tool_use_id, "name": use.name,
                                    "input": dict(use.input)}])
        history.add_tool_results([{"toolResult": {
            "toolUseId": use.tool_use_id, "status": "error",
            "content": [{"text": f"invalid input: {use.input_problem}"}]}}])
        events = await collect(llm, request(history.for_request(), tools=(BOOK,)))
    assert without_end(events) == [TextDelta("What time would you like?")]
    assert fake.requests[1].body["messages"][1]["content"] == [{"toolUse": {
        "toolUseId": "tooluse_n", "name": "book_table", "input": {"time": None}}}]
    assert fake.violations == []


async def test_a_tool_input_cut_off_by_max_tokens_is_not_retried(
        fake: FakeBedrock, llm: BedrockLLM) -> None:
    """It would be cut off again on every try (each a whole generation, the caller waiting):
    one request, the words before it stand, and the call comes with the reason for the
    tool's error result, so the model is told."""
    fake.push(*[stream_reply(message_start(), text_events(["One moment."]),
                             tool_events(1, "tooluse_c", "book_table", ['{"time": "19', ':0']),
                             message_end("max_tokens"))] * 3)
    with trio.fail_after(5):
        events = await collect(llm, request(tools=(BOOK,)))
    assert without_end(events) == [
        TextDelta("One moment."), ToolUseRequest("tooluse_c", "book_table", {}, CUT_OFF)]
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.stop_reason == "max_tokens"
    assert len(fake.requests) == 1
    assert llm.statistics().retries == 0
    assert llm.statistics().errors_by_code == {}


async def test_a_history_json_cannot_hold_is_refused_here_not_sent(
        fake: FakeBedrock, llm: BedrockLLM) -> None:
    """Should a NaN reach the history some other way, the request is a ``ModelRejected``
    (the turn apologises and logs its code) before anything is sent: never a body with
    ``NaN`` in it."""
    poisoned = [user("Book it."),
                {"role": "assistant", "content": [{"toolUse": {
                    "toolUseId": "tooluse_1", "name": "book_table",
                    "input": {"time": float("nan")}}}]},
                {"role": "user", "content": [{"toolResult": {
                    "toolUseId": "tooluse_1", "status": "success",
                    "content": [{"json": {"booked": float("inf")}}]}}]}]
    with trio.fail_after(5), pytest.raises(ModelRejected) as caught:
        await collect(llm, request(poisoned, tools=(BOOK,)))
    assert caught.value.code == "InvalidRequestBody"
    assert "not sent" in str(caught.value)
    assert fake.requests == []
    stats = llm.statistics()
    assert (stats.streams_opened, stats.streams_open, stats.cancellations) == (0, 0, 0)


async def test_tool_blocks_in_history_get_a_tool_config_without_tools(
        fake: FakeBedrock, llm: BedrockLLM) -> None:
    history = History()
    history.add_user_text("Hours?")
    history.add_assistant("", [{"toolUseId": "dtmf_1_lookup_hours", "name": "lookup_hours",
                                "input": {}}])
    history.add_tool_results([{"toolResult": {"toolUseId": "dtmf_1_lookup_hours",
                                              "status": "success",
                                              "content": [{"text": "9 to 5"}]}}])
    fake.push(text_reply(["Nine to five."]))
    with trio.fail_after(5):
        await collect(llm, request(history.for_request(), tools=()))
    tools = fake.requests[0].body["toolConfig"]["tools"]
    assert [t["toolSpec"]["name"] for t in tools] == ["lookup_hours"]
    assert fake.violations == []


async def test_reasoning_and_thinking_spans_never_reach_the_caller(
        fake: FakeBedrock, llm: BedrockLLM) -> None:
    fake.push(stream_reply(
        message_start(), reasoning_events(0, ["The user wants", " hours."]),
        text_events(["<thin", "king>plan: say nine</thi", "nking>\n\nWe open", " at nine.",
                     " <thinking>x</thinking> Bye."], index=1),
        event("someFutureEvent", {"x": 1}),
        message_end()))
    with trio.fail_after(5):
        events = await collect(llm, request())
    spoken = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert spoken == "We open at nine.  Bye."
    assert all(e.text for e in events if isinstance(e, TextDelta))
    assert fake.violations == []


# ---------------------------------------------------------------------------- errors

async def test_throttling_before_the_first_token_is_retried(
        fake: FakeBedrock, llm: BedrockLLM) -> None:
    fake.push(HttpError(429, "ThrottlingException", "Too many requests"),
              stream_reply(message_start(), exception("throttlingException", delay_s=0.01)),
              text_reply(["Finally."]))
    with trio.fail_after(5):
        events = await collect(llm, request())
    assert without_end(events) == [TextDelta("Finally.")]
    assert len(fake.requests) == 3
    stats = llm.statistics()
    assert stats.retries == 2
    assert stats.errors_by_code == {"ThrottlingException": 2}
    assert fake.violations == []


async def test_a_reply_cut_short_before_content_is_retried(
        fake: FakeBedrock, llm: BedrockLLM) -> None:
    fake.push(stream_reply(message_start()), text_reply(["Whole."]))
    with trio.fail_after(5):
        events = await collect(llm, request())
    assert without_end(events) == [TextDelta("Whole.")]
    assert llm.statistics().errors_by_code == {"IncompleteStream": 1}
    assert len(fake.requests) == 2


async def test_retries_are_bounded(fake: FakeBedrock, llm: BedrockLLM) -> None:
    fake.push(*[HttpError(503, "ServiceUnavailableException")] * 3)
    with trio.fail_after(5), pytest.raises(ModelUnavailable) as caught:
        await collect(llm, request())
    assert caught.value.code == "ServiceUnavailableException"
    assert len(fake.requests) == 3                  # the first try and two retries


async def test_retries_stop_at_the_latency_budget(fake: FakeBedrock) -> None:
    llm = BedrockLLM(region="us-east-1", retry_budget_s=0.2, retry_base_delay_s=0.5)
    fake.push(HttpError(429, "ThrottlingException"))
    try:
        with trio.fail_after(5), pytest.raises(ModelThrottled):
            await collect(llm, request())
    finally:
        await llm.aclose()
    assert len(fake.requests) == 1


async def test_error_mid_stream_after_text_is_not_retried(
        fake: FakeBedrock, llm: BedrockLLM) -> None:
    fake.push(stream_reply(message_start(), text_events(["We open", " at"], stop=False),
                           exception("modelStreamErrorException", "model broke",
                                     delay_s=0.05, originalStatusCode=500)))
    received: list[LLMEvent] = []

    async def turn() -> None:
        async with llm.stream(request()) as events:
            async for item in events:
                received.append(item)

    with trio.fail_after(5), pytest.raises(ModelStreamFailed) as caught:
        await turn()
    assert received == [TextDelta("We open"), TextDelta(" at")]
    assert caught.value.after_tokens is True
    assert caught.value.code == "ModelStreamErrorException"
    assert len(fake.requests) == 1


async def test_unmodeled_error_frame_after_text(fake: FakeBedrock, llm: BedrockLLM) -> None:
    fake.push(stream_reply(message_start(), text_events(["Hi"], stop=False),
                           error("InternalFailure", "boom")))
    with trio.fail_after(5), pytest.raises(ModelStreamFailed) as caught:
        await collect(llm, request())
    assert caught.value.after_tokens is True
    assert caught.value.code == "InternalFailure"


async def test_validation_exception_is_rejected_without_retry_and_logs_only_shape(
        fake: FakeBedrock, llm: BedrockLLM, caplog: pytest.LogCaptureFixture) -> None:
    fake.push(HttpError(400, "ValidationException",
                        "A conversation must alternate between user and assistant roles."))
    secret = "my card number is 4111"
    with (caplog.at_level(logging.INFO), trio.fail_after(5),
          pytest.raises(ModelRejected) as caught):
        await collect(llm, request([user(secret)]))
    assert caught.value.code == "ValidationException"
    assert len(fake.requests) == 1
    failures = [r for r in caplog.records if r.getMessage() == "bedrock call failed"]
    assert len(failures) == 1
    assert failures[0].__dict__["history_shape"] == ["user:text"]
    assert all(secret not in str(r.__dict__) for r in caplog.records)


async def test_validation_exception_inside_the_stream(fake: FakeBedrock,
                                                      llm: BedrockLLM) -> None:
    fake.push(stream_reply(message_start(), exception("validationException", "bad")))
    with trio.fail_after(5), pytest.raises(ModelRejected):
        await collect(llm, request())
    assert len(fake.requests) == 1


# ---------------------------------------------------------------------------- cancellation

async def test_cancel_mid_stream_closes_the_upstream(fake: FakeBedrock,
                                                     llm: BedrockLLM) -> None:
    """Five words, then the model pauses for 30 s: a cancel in that pause returns and the
    endpoint sees the connection closed within the test's 15 s (half the pause: a loaded CI
    machine can take seconds to connect), so neither waited for the next event (no
    wall-clock assertion: the pause is the bound)."""
    fake.push(stream_reply(message_start(), text_events([f" w{n}" for n in range(5)]),
                           text_events([" later"] * 100, first_delay_s=30.0, index=1)))
    received = 0
    with trio.fail_after(15):
        with trio.CancelScope() as scope:
            async with llm.stream(request()) as events:
                async for _ in events:
                    received += 1
                    if received == 5:
                        scope.cancel(reason="barge-in")
        sent = fake.requests[0]
        await sent.connection.closed.wait()
        await sent.done.wait()
        await wait_attempts_done(llm)
    assert sent.outcome == "client_closed"
    assert sent.frames_sent == 1 + 5 + 1                # start, 5 words, stop: no more
    assert llm.limiter.borrowed_tokens == 0
    stats = llm.statistics()
    assert stats.cancellations == 1
    assert stats.streams_open == 0
    assert len(stats.cancel_to_closed_s) == 1


async def test_cancel_before_the_headers_closes_the_upstream(
        fake: FakeBedrock, llm: BedrockLLM) -> None:
    """The model answers only after 30 s: the connection is closed now, not when it does
    (within the test's 15 s, half that wait: a loaded machine can take seconds to connect)."""
    fake.push(text_reply(["late"], headers_delay_s=30))
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            async def turn() -> None:
                await collect(llm, request())

            nursery.start_soon(turn)
            (sent,) = await fake.wait_requests(1)
            nursery.cancel_scope.cancel(reason="barge-in")
        await sent.connection.closed.wait()
        await wait_attempts_done(llm)
    assert sent.connection.closed_at is not None
    assert sent.frames_sent == 0
    assert llm.limiter.borrowed_tokens == 0
    assert llm.statistics().cancellations == 1


async def test_a_cancelled_stream_does_not_break_the_next(
        fake: FakeBedrock, llm: BedrockLLM) -> None:
    fake.push(text_reply(["a"] * 50, gap_s=0.02), text_reply(["Next", " turn."]))
    with trio.fail_after(5):
        async with llm.stream(request()) as events:
            await events.receive()
        events_after = await collect(llm, request())
    assert without_end(events_after) == [TextDelta("Next"), TextDelta(" turn.")]
    assert fake.requests[1].connection is not fake.requests[0].connection
    assert fake.violations == []


# ---------------------------------------------------------------------------- capacity

async def test_200_concurrent_streams_all_complete(fake: FakeBedrock,
                                                   llm: BedrockLLM) -> None:
    deltas = 20

    def reply(sent: Any) -> Any:
        sid = sent.call_sid
        return text_reply([f" {sid}-{n}" for n in range(deltas)], gap_s=0.01)

    fake.responder = reply
    results: dict[str, list[LLMEvent]] = {}

    async def one(n: int) -> None:
        sid = f"CA{n:03d}"
        results[sid] = await collect(llm, request(call_sid=sid))

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for n in range(200):
                nursery.start_soon(one, n)
    assert len(results) == 200
    for sid, events in results.items():
        assert without_end(events) == [TextDelta(f" {sid}-{n}") for n in range(deltas)]
    assert llm.statistics().streams_completed == 200
    assert llm.limiter.borrowed_tokens == 0
    assert fake.violations == []


# ---------------------------------------------------------------------------- start-up

def _settings(**env: str) -> Settings:
    return Settings.from_env({"TWILIO_AUTH_TOKEN": "test-token", **env})


def test_check_ready_names_what_to_set(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION",
                 "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name)
    problems = check_bedrock_ready(_settings())
    assert len(problems) == 2
    assert problems[0].startswith("AWS_REGION:")
    assert problems[1].startswith("AWS credentials:")
    assert all("voiceagent demo" in p for p in problems)


def test_check_ready_accepts_the_standard_chain(aws_env: None) -> None:
    assert check_bedrock_ready(_settings(AWS_REGION="us-east-1")) == []


async def test_open_bedrock_llm_warms_a_connection_the_first_call_reuses(
        fake: FakeBedrock) -> None:
    settings = _settings(AWS_REGION="us-east-1", MAX_CONCURRENT_TURNS="8")
    fake.push(text_reply(["Hello."]))
    with trio.fail_after(5):
        async with open_bedrock_llm(settings) as llm:
            assert llm.limiter.total_tokens == 8
            while not fake.connections:     # noqa: ASYNC110 - the fake accepts in its own time
                await trio.sleep(0.001)
            assert fake.requests == []      # connected, nothing sent
            events = await collect(llm, request())
    assert without_end(events) == [TextDelta("Hello.")]
    assert len(fake.connections) == 1
    assert fake.requests[0].connection.id == 0


# ------------------------------------------------- the benchmarks' endpoint (scripted replies)

BENCH_CONFIG = Path(__file__).resolve().parent.parent / "benchmarks" / "config"


async def test_the_scripted_endpoint_says_what_the_scripted_model_says(
        aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The latency benchmarks' model: the benchmark use case's rules, streamed over the real
    wire format at the pace given, tool round included, so the real backend relays the same
    words the in-process scripted model says."""
    use_cases = read_config_dir(BENCH_CONFIG, default_registry()).use_cases
    scripted = ScriptedLLM.from_use_cases(use_cases)
    (bench,) = use_cases
    responder = scripted_responder(scripted, first_token_s=0.05, token_s=0.002)
    async with running_fake_bedrock(responder=responder) as server:
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", server.endpoint_url)
        backend = BedrockLLM(region="us-east-1", retry_base_delay_s=0.02)
        try:
            asked = request([user("what are your hours?")], use_case=bench.name,
                            tools=bench.tool_specs())
            with trio.fail_after(10):
                started = trio.current_time()
                events = await collect(backend, asked)
                waited = trio.current_time() - started
                pickup = request([user("when can I pick up my order?")], use_case=bench.name,
                                 tools=bench.tool_specs())
                tool_round = await collect(backend, pickup)
        finally:
            await backend.aclose()
    expected = scripted.reply(asked)
    assert [e.text for e in events if isinstance(e, TextDelta)] == [
        e.text for e in expected.events if isinstance(e, TextDelta)]
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert end.stop_reason == "end_turn"
    assert end.usage is not None
    assert expected.end.usage is not None
    assert end.usage.output_tokens == expected.end.usage.output_tokens
    assert waited >= 0.05 + 0.002 * (len(events) - 2)   # paced: the deltas after the first
    (tool,) = [e for e in tool_round if isinstance(e, ToolUseRequest)]
    assert tool.name == "CheckRestaurantPickUpTime"
    last = tool_round[-1]
    assert isinstance(last, StreamEnd)
    assert last.stop_reason == "tool_use"
    assert server.violations == []


async def test_the_scripted_endpoint_refuses_a_history_converse_would(
        aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    scripted = ScriptedLLM.from_use_cases(
        read_config_dir(BENCH_CONFIG, default_registry()).use_cases)
    async with running_fake_bedrock(responder=scripted_responder(scripted)) as server:
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", server.endpoint_url)
        backend = BedrockLLM(region="us-east-1", retry_base_delay_s=0.02)
        try:
            with trio.fail_after(10), pytest.raises(ModelRejected):
                await collect(backend, request([{"role": "assistant",
                                                 "content": [{"text": "hi"}]}]))
        finally:
            await backend.aclose()


# ------------------------------------------------- the transport's own promises

def _resign(sent: Any, secret: str = "not-a-secret") -> str:
    """The signature botocore computes for what the endpoint received (the Host header and
    the path as they came), at the request's own X-Amz-Date."""
    headers = sent.headers
    names = [n.strip() for n in headers["authorization"].split("SignedHeaders=")[1]
             .split(",")[0].split(";")]
    signed = AWSRequest(method="POST", url=f"http://{headers['host']}{sent.path}",
                        data=sent.raw_body,
                        headers={n: headers[n] for n in names if n != "host"})
    signed.context["timestamp"] = headers["x-amz-date"]
    auth = SigV4Auth(Credentials("AKIDEXAMPLE", secret), "bedrock", "us-east-1")
    canonical = auth.canonical_request(signed)
    return str(auth.signature(auth.string_to_sign(signed, canonical), signed))


@pytest.mark.parametrize("model_id", [NOVA, "arn:aws:bedrock:us-east-1:123456789012:"
                                            "application-inference-profile/a1b2 c3"])
async def test_requests_are_signed_as_botocore_signs_them(
        fake: FakeBedrock, model_id: str) -> None:
    """What reaches the endpoint verifies: path, Host and body are the ones signed (a
    mismatch is a 403 on every call in production), and path and body are the ones boto3
    itself sends for the same call."""
    fake.push(text_reply(["Hi."]), text_reply(["Hi."]))
    backend = BedrockLLM(region="us-east-1")
    try:
        with trio.fail_after(10):
            await collect(backend, request(model_id=model_id))
            await trio.to_thread.run_sync(_converse_with_boto3, request(model_id=model_id))
    finally:
        await backend.aclose()
    ours, boto = fake.requests
    assert ours.path == boto.path
    assert unquote(ours.path.split("/")[2]) == model_id
    assert ours.body == boto.body
    authorization = ours.headers["authorization"]
    assert "Credential=AKIDEXAMPLE/" in authorization
    assert "/us-east-1/bedrock/aws4_request" in authorization
    assert "host" in authorization.split("SignedHeaders=")[1]
    assert f"Signature={_resign(ours)}" in authorization
    assert f"Signature={_resign(ours, 'another-secret')}" not in authorization
    assert ours.headers["user-agent"].startswith("voiceagent/")


def _converse_with_boto3(llm_request: LLMRequest) -> None:
    """The reference: boto3's own client, sending the same operation input."""
    import boto3

    client = boto3.client("bedrock-runtime", region_name="us-east-1")
    try:
        response = client.converse_stream(**build_converse_request(llm_request))
        for _ in response["stream"]:
            pass
    finally:
        client.close()


async def test_kept_alive_connections_are_reused(fake: FakeBedrock) -> None:
    fake.push(*(text_reply(["Hi."]) for _ in range(3)))
    llm = BedrockLLM(region="us-east-1")
    try:
        with trio.fail_after(5):
            for _ in range(3):
                await collect(llm, request())
    finally:
        await llm.aclose()
    assert len({r.connection.id for r in fake.requests}) == 1
    stats = llm.statistics()
    assert (stats.connections_opened, stats.connections_reused) == (1, 2)


@pytest.mark.timeout(20)          # virtual time below; this bounds the real waits
async def test_connections_a_burst_left_idle_are_closed_once_expired(
        fake: FakeBedrock, mock_clock: trio.testing.MockClock) -> None:
    """Three streams at once open three connections; the traffic after them reuses only the
    newest, so the other two would sit idle (and, against AWS, half-closed) for the life of
    the process. Past IDLE_MAX_S the pool closes them on its next use."""
    fake.push(*(text_reply(["Hi."]) for _ in range(5)))
    llm = BedrockLLM(region="us-east-1")
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(collect, llm, request())
        mock_clock.jump(IDLE_MAX_S - 10)
        await collect(llm, request())               # the newest, idle 20 s: reused
        mock_clock.jump(15)
        await collect(llm, request())               # the other two, idle 35 s: closed
        stats = llm.statistics()
        assert (stats.connections_opened, stats.connections_reused) == (3, 2)
        assert stats.connections_expired == 2
        used_late = {r.connection.id for r in fake.requests[3:]}
        assert len(used_late) == 1
        for connection in fake.connections:
            if connection.id not in used_late:
                await connection.closed.wait()      # the client's FIN reached the endpoint
        assert [c.closed_at is None for c in fake.connections].count(True) == 1
    finally:
        await llm.aclose()


async def test_a_kept_alive_connection_the_server_dropped_is_replaced_unseen(
        fake: FakeBedrock) -> None:
    """The endpoint closed an idle connection: the next stream goes out on a new one, with
    no retry and no error."""
    fake.push(text_reply(["One."]), text_reply(["Two."]))
    llm = BedrockLLM(region="us-east-1")
    try:
        with trio.fail_after(5):
            await collect(llm, request())
            await fake.requests[0].done.wait()      # the fake's side of the reply ended too
            assert fake.drop_idle_connections() == 1
            await fake.connections[0].server_closed.wait()     # its FIN is ours now
            events = await collect(llm, request())
    finally:
        await llm.aclose()
    assert without_end(events) == [TextDelta("Two.")]
    assert len(fake.connections) == 2
    assert llm.statistics().retries == 0
    assert llm.statistics().errors_by_code == {}


async def test_silence_past_the_read_timeout_ends_the_attempt(fake: FakeBedrock) -> None:
    """Before any content: the attempt is retried at its first-event timeout (here the read
    timeout's, the shorter) and the next one answers; after content: the stream failed after
    tokens, and the runtime apologises."""
    fake.push(stream_reply(message_start(), text_events(["late"], first_delay_s=1.0)),
              text_reply(["On time."]),
              stream_reply(message_start(), text_events(["Early", " then"], gap_s=1.0,
                                                        first_delay_s=0.0)))
    llm = BedrockLLM(region="us-east-1", read_timeout_s=0.2, retry_base_delay_s=0.01)
    received: list[LLMEvent] = []

    async def second() -> None:
        async with llm.stream(request()) as events:
            async for item in events:
                received.append(item)

    try:
        with trio.fail_after(5):
            retried = await collect(llm, request())
            with pytest.raises(ModelStreamFailed) as after:
                await second()
            await fake.requests[2].done.wait()
    finally:
        await llm.aclose()
    assert without_end(retried) == [TextDelta("On time.")]
    assert llm.statistics().errors_by_code == {"FirstEventTimeout": 1, "ReadTimeout": 1}
    assert after.value.code == "ReadTimeout"
    assert after.value.after_tokens
    assert received == [TextDelta("Early")]
    assert len(fake.requests) == 3
    assert [r.outcome for r in fake.requests] == ["client_closed", "complete",
                                                  "client_closed"]


def test_the_proxy_comes_from_https_proxy_unless_no_proxy_excludes_the_host(
        aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    url = "https://bedrock-runtime.us-east-1.amazonaws.com"
    assert proxy_for(url) is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert proxy_for(url) == "http://proxy.internal:3128"
    monkeypatch.setenv("NO_PROXY", ".amazonaws.com")
    assert proxy_for(url) is None


@pytest.mark.parametrize(("url", "redacted"), [
    ("http://s3cr3t-token@proxy.internal:3128", "http://***@proxy.internal:3128"),
    ("http://agent:s3cr3t-token@proxy.internal:3128/", "http://***@proxy.internal:3128/"),
    ("http://agent:s3cr3t@token@proxy.internal:3128", "http://***@proxy.internal:3128"),
    ("s3cr3t-token@proxy.internal:3128", "***@proxy.internal:3128"),      # no scheme
    ("http://proxy.internal:3128", "http://proxy.internal:3128"),
    ("http://proxy.internal:3128/a@b", "http://proxy.internal:3128/a@b"),
])
def test_a_proxy_url_is_logged_without_its_user_name_or_password(url: str,
                                                                 redacted: str) -> None:
    """A proxy or gateway often takes its token as the user name alone."""
    assert redact_url(url) == redacted


async def test_the_proxy_named_at_start_up_shows_no_credential(
        fake: FakeBedrock, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://s3cr3t-token@127.0.0.1:9")     # nobody there
    monkeypatch.setenv("NO_PROXY", "")
    llm = BedrockLLM(region="us-east-1")
    try:
        with caplog.at_level(logging.INFO), trio.fail_after(5):
            await llm.warm_up()                 # a connection refused is only logged
    finally:
        await llm.aclose()
    [named] = [r for r in caplog.records if r.getMessage() == "bedrock reached through a proxy"]
    assert named.__dict__["proxy"] == "http://***@127.0.0.1:9"
    assert all("s3cr3t" not in str(r.__dict__) for r in caplog.records)


async def warm_up_refused() -> ModelUnavailable:
    """A backend set up from the environment as it stands: what its warm-up raised."""
    llm = BedrockLLM(region="us-east-1")
    try:
        with trio.fail_after(5), pytest.raises(ModelUnavailable) as caught:
            await llm.warm_up()
    finally:
        await llm.aclose()
    return caught.value


async def test_an_https_proxy_url_is_refused_with_what_to_set(
        fake: FakeBedrock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "https://user:pw@proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "")
    caught = await warm_up_refused()
    assert "only http:// proxies" in str(caught)
    assert "pw" not in str(caught)


async def test_a_ca_bundle_that_cannot_be_read_is_a_model_error_that_names_it(
        aws_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Not a FileNotFoundError from a worker thread: the setting, the path, and the service."""
    missing = tmp_path / "no-such-ca.pem"
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", "https://127.0.0.1:9")
    monkeypatch.setenv("AWS_CA_BUNDLE", str(missing))
    caught = await warm_up_refused()
    assert caught.code == "InvalidCABundle"
    assert "AWS_CA_BUNDLE" in str(caught)
    assert str(missing) in str(caught)
    assert "Bedrock" in str(caught)


async def test_a_bedrock_api_key_is_sent_as_a_bearer_token(
        fake: FakeBedrock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", "bedrock-api-key-example")
    fake.push(text_reply(["Hi."]))
    llm = BedrockLLM(region="us-east-1")
    try:
        with trio.fail_after(5):
            await collect(llm, request())
    finally:
        await llm.aclose()
    assert fake.requests[0].headers["authorization"] == "Bearer bedrock-api-key-example"
    assert "x-amz-date" not in fake.requests[0].headers


async def test_a_bedrock_api_key_never_goes_over_plain_http(
        aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", "bedrock-api-key-example")
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", "http://bedrock.example.internal")
    assert "only over https" in str(await warm_up_refused())


async def test_take_ready_hands_over_what_arrived_without_waiting(
        fake: FakeBedrock, llm: BedrockLLM) -> None:
    """A turn holding text reads the stream once per window: everything that came since,
    in order, and nothing is waited for."""
    deltas = [f" w{n}" for n in range(12)]
    fake.push(text_reply(deltas, gap_s=0.02))
    with trio.fail_after(5):
        async with llm.stream(request()) as events:
            assert isinstance(events, HeldReads)        # turns read it once per window
            first = await events.receive()
            await fake.requests[0].done.wait()          # the rest sent: in our socket
            batch = await events.take_ready()  # type: ignore[attr-defined]
    assert first == TextDelta(deltas[0])
    *texts, end = batch
    assert texts == [TextDelta(d) for d in deltas[1:]]
    assert isinstance(end, StreamEnd)
    assert end.stop_reason == "end_turn"


async def test_take_ready_returns_at_once_when_nothing_has_arrived(
        fake: FakeBedrock, llm: BedrockLLM, mock_clock: trio.testing.MockClock) -> None:
    """Nothing arrived: an empty batch now, not a wait for the next event. The clock is
    virtual and jumps as soon as everything waits: a wait would show as time passed, the
    fake's next event being 2.5 s away. (It jumps only once the setup's worker thread is
    done, or it would jump past every deadline while the thread runs.)"""
    fake.push(stream_reply(message_start(), text_events(["Hi", " there"], gap_s=2.5,
                                                        first_delay_s=0.0)))
    with trio.fail_after(600):
        async with llm.stream(request()) as events:
            assert await events.receive() == TextDelta("Hi")
            mock_clock.autojump_threshold = 0
            before = trio.current_time()
            assert await events.take_ready() == []  # type: ignore[attr-defined]
            assert trio.current_time() == before
            assert await events.receive() == TextDelta(" there")
            assert trio.current_time() - before == pytest.approx(2.5, abs=0.1)


async def test_take_ready_gives_the_events_before_a_failure_first(
        fake: FakeBedrock, llm: BedrockLLM) -> None:
    fake.push(stream_reply(message_start(), text_events(["Sure,", " we"], gap_s=0.01,
                                                        stop=False),
                           exception("throttlingException", delay_s=0.01)))
    with trio.fail_after(5):
        async with llm.stream(request()) as events:
            assert await events.receive() == TextDelta("Sure,")
            await fake.requests[0].done.wait()          # " we" and the exception sent
            assert await events.take_ready() == [TextDelta(" we")]  # type: ignore[attr-defined]
            with pytest.raises(ModelStreamFailed) as failed:
                await events.receive()
    assert failed.value.after_tokens


async def test_reads_work_past_selects_1024_descriptors() -> None:
    """A busy server's sockets have descriptors past 1024, where ``select`` gives up: an idle
    connection must still read as empty-and-alive, and one with bytes waiting, readable."""
    import os
    import resource
    import socket as stdlib_socket

    from voiceagent.net import Link

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048 <= hard or (soft < 2048 and hard == resource.RLIM_INFINITY):
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    left, right = stdlib_socket.socketpair()
    link = Link(stdlib_socket.socket(fileno=os.dup2(left.fileno(), 1500)))
    left.close()
    try:
        assert link.receive_nowait() is None      # idle and alive: the pool would reuse it
        right.send(b"x")
        assert link.receive_nowait() == b"x"
        right.close()
        assert link.receive_nowait() == b""       # the peer's FIN
    finally:
        link.close_now()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_no_credentials_is_unavailable_and_says_what_to_check(
        fake: FakeBedrock, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    llm = BedrockLLM(region="us-east-1")
    try:
        with trio.fail_after(10), pytest.raises(ModelUnavailable) as caught:
            await collect(llm, request())
    finally:
        await llm.aclose()
    assert caught.value.code == "NoCredentials"
    assert "AWS_PROFILE" in str(caught.value)
    assert fake.requests == []
