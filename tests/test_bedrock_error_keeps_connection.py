"""An HTTP error answer (429 throttling, 503, 400) read to its end leaves its connection in the
pool, as urllib3 does: the retry goes out on it at once. It used to be closed, so each retry
after a throttle paid a new TCP (and, in production, TLS) handshake."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from tests.fake_bedrock import FakeBedrock, HttpError, text_reply
from voiceagent.errors import ModelRejected
from voiceagent.llm.base import LLMEvent, LLMRequest, TextDelta
from voiceagent.llm.bedrock import BedrockLLM


@pytest.fixture
def fake(fake_bedrock: FakeBedrock) -> FakeBedrock:
    return fake_bedrock


@pytest.fixture
async def llm(fake: FakeBedrock) -> AsyncIterator[BedrockLLM]:
    backend = BedrockLLM(region="us-east-1", retry_base_delay_s=0.01)
    yield backend
    await backend.aclose()


def request() -> LLMRequest:
    return LLMRequest(call_sid="CA0123456789abcdef0123456789abcdef", use_case="reuse",
                      model_id="us.amazon.nova-lite-v1:0", system=("You are a host.",),
                      messages=({"role": "user", "content": [{"text": "Open?"}]},))


async def collect(llm: BedrockLLM) -> list[LLMEvent]:
    async with llm.stream(request()) as stream:
        return [item async for item in stream]


async def test_retries_after_error_answers_reuse_the_connection(
        fake: FakeBedrock, llm: BedrockLLM) -> None:
    fake.push(HttpError(429, "ThrottlingException", "Too many requests"),
              HttpError(503, "ServiceUnavailableException"), text_reply(["We open."]))
    with trio.fail_after(10):
        events = await collect(llm)
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["We open."]
    assert llm.statistics().errors_by_code == {"ThrottlingException": 1,
                                               "ServiceUnavailableException": 1}
    assert [r.connection.id for r in fake.requests] == [0, 0, 0]
    assert len(fake.connections) == 1
    assert llm.statistics().connections_reused == 2


async def test_a_refused_request_leaves_its_connection_for_the_next_call(
        fake: FakeBedrock, llm: BedrockLLM) -> None:
    fake.push(HttpError(400, "ValidationException", "bad history"), text_reply(["Fine."]))
    with trio.fail_after(10):
        with pytest.raises(ModelRejected):
            await collect(llm)
        after = await collect(llm)
    assert [e.text for e in after if isinstance(e, TextDelta)] == ["Fine."]
    assert [r.connection.id for r in fake.requests] == [0, 0]
    assert fake.connections[0].closed_at is None        # still open, idle in the pool
