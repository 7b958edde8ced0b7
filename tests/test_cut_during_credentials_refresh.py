"""A barge-in (or a hang-up) that comes while the model's request waits for credentials.

Temporary credentials (a Fargate task's, from the container endpoint) are fetched again
before signing once they near expiry: blocking I/O, in a worker thread. botocore gives a
hanging endpoint ``ContainerMetadataFetcher.TIMEOUT_SECONDS`` a try, three tries with a
second between them. A turn cut meanwhile has nothing to wait for (no request went out), and
the next turn waits for the cut one: the cut must not wait for the fetch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
from botocore.utils import ContainerMetadataFetcher

from tests.aws_credentials_server import running_credentials_server
from tests.fake_bedrock import FakeBedrock, running_fake_bedrock, text_reply
from voiceagent.llm.base import LLMRequest, TextDelta
from voiceagent.llm.bedrock import BedrockLLM

CALL_SID = "CA0123456789abcdef0123456789abcdef"


@pytest.fixture
async def fake(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeBedrock]:
    async with running_fake_bedrock() as server:
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", server.endpoint_url)
        monkeypatch.setenv("NO_PROXY", "")
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(name)
        yield server


async def said(llm: BedrockLLM) -> list[str]:
    request = LLMRequest(call_sid=CALL_SID, use_case="testUseCase",
                         model_id="us.amazon.nova-lite-v1:0", system=("You are a host.",),
                         messages=({"role": "user", "content": [{"text": "Hello?"}]},))
    async with llm.stream(request) as events:
        return [event.text async for event in events if isinstance(event, TextDelta)]


async def test_a_cut_while_credentials_are_fetched_ends_the_turn_at_once(
        fake: FakeBedrock, monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_credentials_server(expires_in_s=300) as credentials:
        monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", credentials.url)
        fake.push(text_reply(["One."]), text_reply(["Two."]))
        llm = BedrockLLM(region="us-east-1")
        try:
            with trio.fail_after(30):
                assert await said(llm) == ["One."]
                credentials.answers_held = trio.Event()
                fetches = credentials.requests
                async with trio.open_nursery() as turn:
                    turn.start_soon(said, llm)
                    await credentials.wait_requests(fetches + 1)    # the fetch hangs
                    turn.cancel_scope.cancel(reason="barge-in")
                    cut_at = trio.current_time()
                cut_took_s = trio.current_time() - cut_at
                credentials.answers_held.set()
                credentials.answers_held = None
                assert await said(llm) == ["Two."]          # the next turn is answered
        finally:
            await llm.aclose()
    assert cut_took_s < ContainerMetadataFetcher.TIMEOUT_SECONDS / 2
    assert len(fake.requests) == 2                  # the cut turn sent nothing
    assert llm.statistics().attempts_open == 0
