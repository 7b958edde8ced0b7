"""Prompt caching on the Claude 5 models: a use case with ``prompt_caching`` on sends their
requests with cache points after the static system prompt and after the tools, as their
Bedrock model cards allow ("Fields that accept prompt cache checkpoints: `system`,
`messages`, and `tools`"), and the local endpoint (``fake_caching``) refuses a cache point
where a model takes none, as Bedrock does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from tests.fake_bedrock import FakeBedrock, HttpError, text_reply
from tests.fake_caching import EXTRANEOUS, NO_CACHING
from voiceagent.errors import LLMError
from voiceagent.llm import bedrock_converse
from voiceagent.llm.base import LLMRequest, ModelOptions
from voiceagent.llm.bedrock import BedrockLLM
from voiceagent.llm.bedrock_converse import CacheSupport, prompt_caching
from voiceagent.llm.bedrock_errors import ACCESS_HINT, CACHING_HINT
from voiceagent.llm.cache_points import messages_min_tokens

LOOKUP = {"name": "lookup_hours", "description": "Opening hours for a date.",
          "inputSchema": {"json": {"type": "object", "properties": {}}}}
CACHE = {"cachePoint": {"type": "default"}}
CLAUDE_5 = ["anthropic.claude-opus-5", "us.anthropic.claude-opus-5-5",
            "anthropic.claude-sonnet-5", "eu.anthropic.claude-sonnet-5-5",
            "global.anthropic.claude-haiku-5-5", "anthropic.claude-fable-5",
            "global.anthropic.claude-fable-5-1", "us.anthropic.claude-fable-5-2",
            "anthropic.claude-mythos-5", "us.anthropic.claude-mythos-5-1",
            "anthropic.claude-mythos-5-2"]


@pytest.fixture
async def llm(fake_bedrock: FakeBedrock) -> AsyncIterator[BedrockLLM]:
    backend = BedrockLLM(region="us-east-1")
    yield backend
    await backend.aclose()


def cached(model_id: str) -> LLMRequest:
    return LLMRequest(call_sid="CA1", use_case="test", model_id=model_id,
                      system=("You are a host.", "The caller speaks es-ES."),
                      messages=({"role": "user", "content": [{"text": "Hours?"}]},),
                      tools=(LOOKUP,), options=ModelOptions(prompt_caching=True))


async def ask(llm: BedrockLLM, request: LLMRequest) -> None:
    async with llm.stream(request) as events:
        async for _ in events:
            pass


@pytest.mark.parametrize("model_id", [*CLAUDE_5, "anthropic.claude-opus-6",
                                      "anthropic.claude-opus-4-8",
                                      "anthropic.claude-sonnet-4-20250514-v1:0"])
def test_the_claude_5_models_and_later_cache_system_and_tools(model_id: str) -> None:
    assert prompt_caching(model_id) == CacheSupport(system=True, tools=True, messages=True)


@pytest.mark.parametrize("model_id", [
    "anthropic.claude-3-haiku-20240307-v1:0", "anthropic.claude-3-5-sonnet-20240620-v1:0",
    "anthropic.claude-instant-v1", "meta.llama3-70b-instruct-v1:0",
    "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc"])
def test_models_without_caching_get_no_cache_point(model_id: str) -> None:
    assert prompt_caching(model_id) == CacheSupport()


# "Min tokens per cache checkpoint", written out from the documents: Anthropic's "Cache
# limitations" (October 2026), Bedrock's table and model cards; Opus 4.7 and 4.8, 2,048 and
# 1,024 on Anthropic's page but 4,096 on OpenRouter's, take the larger; a Claude none lists
# (Fable and Mythos 5.2, Opus 6), the largest of all.
@pytest.mark.parametrize(("model_id", "tokens"), [
    ("us.anthropic.claude-opus-5", 512), ("anthropic.claude-opus-5-5", 512),
    ("eu.anthropic.claude-sonnet-5-5", 512), ("global.anthropic.claude-haiku-5-5", 512),
    ("anthropic.claude-fable-5", 512), ("global.anthropic.claude-fable-5-1", 512),
    ("anthropic.claude-mythos-5", 512), ("us.anthropic.claude-mythos-5-1", 512),
    ("anthropic.claude-sonnet-5", 1_024), ("anthropic.claude-3-7-sonnet-20250219-v1:0", 1_024),
    ("anthropic.claude-sonnet-4-20250514-v1:0", 1_024),
    ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", 1_024),
    ("anthropic.claude-sonnet-4-6", 1_024), ("anthropic.claude-opus-4-20250514-v1:0", 1_024),
    ("anthropic.claude-opus-4-1-20250805-v1:0", 1_024),
    ("anthropic.claude-3-5-haiku-20241022-v1:0", 2_048),
    ("anthropic.claude-haiku-4-5-20251001-v1:0", 4_096),
    ("global.anthropic.claude-opus-4-5-20251101-v1:0", 4_096),
    ("anthropic.claude-opus-4-6-v1", 4_096), ("anthropic.claude-opus-4-7", 4_096),
    ("anthropic.claude-opus-4-8", 4_096), ("global.anthropic.claude-fable-5-2", 4_096),
    ("anthropic.claude-mythos-5-2", 4_096), ("anthropic.claude-opus-6", 4_096),
    ("anthropic.claude-sonnet-4-7", 4_096)])
def test_each_claude_caches_its_conversation_from_its_own_minimum(model_id: str,
                                                                  tokens: int) -> None:
    assert messages_min_tokens(model_id) == tokens


@pytest.mark.parametrize("model_id", CLAUDE_5)
async def test_a_claude_5_request_carries_cache_points_after_the_prompt_and_the_tools(
        fake_bedrock: FakeBedrock, llm: BedrockLLM, model_id: str) -> None:
    fake_bedrock.push(text_reply(["Nine to five."]))
    with trio.fail_after(10):
        await ask(llm, cached(model_id))
    body = fake_bedrock.requests[0].body
    assert body["system"] == [{"text": "You are a host."}, CACHE,
                              {"text": "The caller speaks es-ES."}]
    assert body["toolConfig"]["tools"] == [{"toolSpec": LOOKUP}, CACHE]
    assert fake_bedrock.violations == []


@pytest.mark.parametrize(("model_id", "refused"), [
    ("us.amazon.nova-pro-v1:0", EXTRANEOUS.format(path="toolConfig/tools/1")),
    ("meta.llama3-70b-instruct-v1:0", NO_CACHING)])
async def test_the_endpoint_refuses_a_cache_point_where_the_model_takes_none(
        fake_bedrock: FakeBedrock, llm: BedrockLLM, monkeypatch: pytest.MonkeyPatch,
        model_id: str, refused: str) -> None:
    """What a wrong model pattern would cost: the whole request, every turn."""
    monkeypatch.setattr(bedrock_converse, "prompt_caching",
                        lambda model_id: CacheSupport(system=True, tools=True))
    with trio.fail_after(10), pytest.raises(LLMError) as failed:
        await ask(llm, cached(model_id))
    assert refused in str(failed.value)
    assert len(fake_bedrock.violations) == 1


async def test_a_model_that_refuses_caching_is_told_apart_from_one_without_access(
        fake_bedrock: FakeBedrock, llm: BedrockLLM, caplog: pytest.LogCaptureFixture) -> None:
    """A later Claude, which the server guesses takes cache points, that Bedrock offers
    without them (the endpoint answers for it as for Claude 3 Haiku): Bedrock's 403 has the
    code of a model never enabled, but its words are about prompt caching, and so are the
    hint and the log line; the permissions hint would send the operator the wrong way."""
    later = "us.anthropic.claude-opus-6-v1:0"
    fake_bedrock.profiles[later] = "anthropic.claude-3-haiku-20240307-v1:0"
    with trio.fail_after(10), pytest.raises(LLMError) as failed:
        await ask(llm, cached(later))
    said = str(failed.value)
    assert failed.value.code == "AccessDeniedException"
    assert said.startswith(f"AccessDeniedException: {NO_CACHING}; "), said
    assert "turn it off in that use case" in said
    assert "model_options.prompt_caching" in said
    assert ACCESS_HINT not in said
    logged = [r for r in caplog.records if r.name.startswith("voiceagent")
              and r.levelname == "ERROR"]
    assert [r.getMessage() for r in logged] == ["bedrock refused the request's prompt caching"]
    assert logged[0].what_to_check == f"{NO_CACHING}; {CACHING_HINT}"
    assert logged[0].model_id == later


async def test_a_model_without_access_still_gets_the_permissions_hint(
        fake_bedrock: FakeBedrock, llm: BedrockLLM, caplog: pytest.LogCaptureFixture) -> None:
    fake_bedrock.push(HttpError(403, "AccessDeniedException",
                                "You don't have access to the model with the specified model "
                                "ID."))
    with trio.fail_after(10), pytest.raises(LLMError) as failed:
        await ask(llm, cached("anthropic.claude-opus-5"))
    assert str(failed.value).endswith(f"; {ACCESS_HINT}")
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "bedrock refused our credentials"]
