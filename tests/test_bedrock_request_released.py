"""A reply streams for seconds, and the request it answers is not needed once content has
reached the caller: no attempt follows then (``ModelStream._retry_delay``). The stream, its
attempt and ``BedrockLLM.stream``'s frame used to hold the request body (and the dicts it was
written from) for the reply's whole length: with a production prompt and tools, tens of KB a
turn in flight, at every call speaking at once. Measured with tracemalloc against the local
endpoint: what our code still holds once the first words arrived."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator

import pytest
import trio

from tests.fake_bedrock import FakeBedrock, Stall, message_start, text_events
from voiceagent.llm.base import LLMRequest, Message, TextDelta
from voiceagent.llm.bedrock import BedrockLLM

PROMPT_CHARS = 300_000
TURNS = 200


@pytest.fixture
async def llm(fake_bedrock: FakeBedrock) -> AsyncIterator[BedrockLLM]:
    backend = BedrockLLM(region="us-east-1")
    await backend.warm_up()
    yield backend
    await backend.aclose()


def long_request() -> LLMRequest:
    messages: list[Message] = []
    for n in range(TURNS):
        messages.append({"role": "user", "content": [{"text": f"question {n}"}]})
        messages.append({"role": "assistant", "content": [{"text": f"answer {n}"}]})
    messages.append({"role": "user", "content": [{"text": "And now?"}]})
    return LLMRequest(call_sid="CA0123456789abcdef0123456789abcdef", use_case="held",
                      model_id="us.amazon.nova-lite-v1:0", system=("p" * PROMPT_CHARS,),
                      messages=tuple(messages))


def held_by_our_code(baseline: tracemalloc.Snapshot) -> tuple[int, list[str]]:
    """Bytes allocated by voiceagent's code since ``baseline`` and still held, and where."""
    ours = [tracemalloc.Filter(True, "*/voiceagent/*")]
    now = tracemalloc.take_snapshot().filter_traces(ours)
    stats = now.compare_to(baseline.filter_traces(ours), "lineno")
    return sum(stat.size_diff for stat in stats), [str(stat) for stat in stats[:3]]


async def test_a_streaming_reply_holds_no_copy_of_its_request(
        fake_bedrock: FakeBedrock, llm: BedrockLLM) -> None:
    fake_bedrock.push(Stall(frames=(message_start(), *text_events([" We"], stop=False))))
    request = long_request()
    tracemalloc.start()
    try:
        baseline = tracemalloc.take_snapshot()
        with trio.fail_after(10):
            async with llm.stream(request) as stream:
                first = await stream.receive()
                while not isinstance(first, TextDelta):
                    first = await stream.receive()
                held, where = held_by_our_code(baseline)
    finally:
        tracemalloc.stop()
    assert first.text == " We"
    assert fake_bedrock.requests[0].body["system"][0]["text"] == "p" * PROMPT_CHARS
    # the prompt alone is 300 KB; what is left is the stream's own state
    assert held < 40_000, f"{held} bytes held by voiceagent's code while the reply streams: {where}"
