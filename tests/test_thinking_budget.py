"""``model_options.thinking_budget_tokens`` turns on Claude's extended thinking
(``additionalModelRequestFields.thinking``). What Bedrock refuses with it on every turn is
refused at load, with the key and the fix: a model that cannot think, a budget below 1024 or
not below max_tokens, a temperature other than 1, a top_p below 0.95, and a keypad handler's
tool (its round has no thinking, so the model's answer to it is refused). The local endpoint
refuses the same requests in Bedrock's words, and a thinking tool turn works end to end.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from tests.fake_bedrock import (
    FakeBedrock,
    RecordedRequest,
    Reply,
    message_end,
    message_start,
    reasoning_events,
    stream_reply,
    text_events,
    text_reply,
    tool_events,
)
from tests.fake_reasoning import (
    BUDGET_OVER_MAX,
    FORCED_TOOL,
    LOW_BUDGET,
    MISSING_THINKING,
    TEMPERATURE,
    TOP_P,
    thinking_refusal,
)
from tests.server_harness import (
    AUTH_TOKEN,
    FIXTURE_CONFIG,
    make_settings,
    one_use_case_config,
    running_server,
)
from voiceagent.app.caller import open_call
from voiceagent.errors import ConfigError, ModelRejected
from voiceagent.llm.base import InferenceConfig, LLMRequest, ModelOptions, TextDelta
from voiceagent.llm.bedrock import BedrockLLM
from voiceagent.llm.bedrock_converse import build_converse_request
from voiceagent.llm.thinking import thinking_support, why_not
from voiceagent.store import config_records
from voiceagent.usecases import UseCase, parse_model

SONNET = "us.anthropic.claude-sonnet-4-20250514-v1:0"
THINKING = {"thinking": {"type": "enabled", "budget_tokens": 1024}}
SIGNATURE = "RXFBc2lnbmVkYnlDbGF1ZGU="
PROFILE_ARN = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3"


def _use_case(model: str | None = SONNET, *, budget: int = 1024, max_tokens: int = 1400,
              **more: Any) -> dict[str, Any]:
    return {"name": "desk", "prompt": "Answer briefly.", "model": model,
            "inference": {"max_tokens": max_tokens, **more.pop("inference", {})},
            "model_options": {"thinking_budget_tokens": budget}, **more}


def _refused(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_model(UseCase, data, "desk.yaml")
    return caught.value


# ------------------------------------------------------------------ at load

@pytest.mark.parametrize(("model", "supported"), [
    ("anthropic.claude-3-7-sonnet-20250219-v1:0", True),
    (SONNET, True),                                     # 4-2025...: a date, not 4.2
    ("us.anthropic.claude-opus-4-20250514-v1:0", True),
    ("anthropic.claude-opus-4-1-20250805-v1:0", True),
    ("global.anthropic.claude-haiku-4-5-20251001-v1:0", True),
    ("us.anthropic.claude-sonnet-4-6", True),
    ("arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-opus-4-6-v1", True),
    ("us.anthropic.claude-opus-4-7", False),            # adaptive thinking only
    ("anthropic.claude-3-5-haiku-20241022-v1:0", False),
    ("us.amazon.nova-lite-v1:0", False),
    ("arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-pro-v1:0", False),
    (PROFILE_ARN, None),                                # which model: Bedrock knows
])
def test_which_models_take_a_thinking_budget(model: str, supported: bool | None) -> None:
    assert thinking_support(model) is supported


# Bedrock's "Adaptive thinking" page (claude-messages-adaptive-thinking): Opus 4.7, the Claude
# 5 models, Mythos and Fable refuse thinking.type "enabled" with budget_tokens (a 400)
@pytest.mark.parametrize(("model", "says"), [
    ("us.anthropic.claude-opus-4-7", "thinks only adaptively"),
    ("anthropic.claude-opus-5", "thinks only adaptively"),
    ("eu.anthropic.claude-sonnet-5", "thinks only adaptively"),
    ("anthropic.claude-haiku-5-5", "thinks only adaptively"),
    ("anthropic.claude-mythos-preview", "thinks only adaptively"),
    ("global.anthropic.claude-fable-5-1", "thinks only adaptively"),
    ("anthropic.claude-3-5-haiku-20241022-v1:0", "has no extended thinking"),
    ("anthropic.claude-3-5-sonnet-20241022-v2:0", "has no extended thinking"),
    ("anthropic.claude-3-haiku-20240307-v1:0", "has no extended thinking"),
    ("anthropic.claude-instant-v1", "has no extended thinking"),
    ("anthropic.claude-v2:1", "has no extended thinking"),
    ("us.amazon.nova-lite-v1:0", "not a Claude model"),
])
def test_why_a_model_takes_no_budget(model: str, says: str) -> None:
    assert thinking_support(model) is False
    assert says in why_not(model)


@pytest.mark.parametrize(("data", "at", "says"), [
    (_use_case(budget=1000), "model_options.thinking_budget_tokens", "1024 or more"),
    (_use_case(max_tokens=300), "inference.max_tokens", "write max_tokens: 1324"),
    (_use_case(max_tokens=1024), "inference.max_tokens", "counts the thinking too"),
    (_use_case(inference={"temperature": 0.5}), "inference.temperature",
     "remove inference.temperature"),
    (_use_case(inference={"top_p": 0.9}), "inference.top_p", "between 0.95 and 1"),
    (_use_case("us.amazon.nova-lite-v1:0"), "model_options.thinking_budget_tokens",
     "not a Claude model"),
    (_use_case("us.anthropic.claude-opus-4-7"), "model_options.thinking_budget_tokens",
     "thinks only adaptively"),
    (_use_case("anthropic.claude-mythos-5"), "model_options.thinking_budget_tokens",
     "thinks only adaptively"),
    (_use_case("anthropic.claude-3-5-haiku-20241022-v1:0"),
     "model_options.thinking_budget_tokens", "has no extended thinking"),
    (_use_case(tools=[{"name": "hours", "description": "Opening hours"}],
               relay={"dtmfDetection": True},
               dtmf={"handlers": {"1": {"tool": "hours", "reply": "One moment."}}}),
     "dtmf.handlers.1.tool", "to_model: true"),
])
def test_what_bedrock_refuses_with_thinking_is_refused_at_load(
        data: dict[str, Any], at: str, says: str) -> None:
    refused = _refused(data)
    assert refused.key_path == at
    assert says in refused.problem


@pytest.mark.parametrize("data", [
    _use_case(),
    _use_case(None),                                    # MODEL_IDENTIFIER: not known here
    _use_case(PROFILE_ARN),
    _use_case(inference={"temperature": 1}),
    _use_case(inference={"top_p": 0.95}),
    _use_case(budget=8191, max_tokens=8192),
    _use_case(tools=[{"name": "hours", "description": "Opening hours"}],
              relay={"dtmfDetection": True},
              dtmf={"handlers": {"1": {"to_model": True, "reply": "One moment."}}}),
])
def test_what_bedrock_takes_with_thinking_loads(data: dict[str, Any]) -> None:
    loaded = parse_model(UseCase, data, "desk.yaml")
    assert loaded.model_options.to_options().thinking_budget_tokens == (
        data["model_options"]["thinking_budget_tokens"])


def test_the_budget_is_stored_and_read_back_and_older_items_load_without_it() -> None:
    loaded = parse_model(UseCase, _use_case(budget=2048, max_tokens=2400), "desk.yaml")
    item = config_records.use_case_item(loaded)
    assert item["voiceagent"]["model_options"]["thinking_budget_tokens"] == 2048
    assert config_records.use_case_from_item(item) == loaded
    del item["voiceagent"]["model_options"]["thinking_budget_tokens"]    # an older release's
    assert config_records.use_case_from_item(item).model_options.thinking_budget_tokens is None


def test_a_use_case_without_thinking_is_stored_as_older_releases_read_it() -> None:
    """No ``thinking_budget_tokens`` key when thinking is off: a release from before it reads
    the item's ``voiceagent`` attribute strictly, and ``thinking_budget_tokens: null`` made it
    refuse the whole attribute (a rolling deploy, a rollback) and serve every use case from
    the sample attributes alone, without its inference, model options or languages."""
    data = _use_case()
    del data["model_options"]
    item = config_records.use_case_item(parse_model(UseCase, data, "desk.yaml"))
    assert set(item["voiceagent"]["model_options"]) == {
        "latency_optimized", "prompt_caching", "guardrail_id", "guardrail_version"}
    assert config_records.use_case_from_item(item).model_options.thinking_budget_tokens is None


# ------------------------------------------------------------------ the request

def _request(model_id: str = SONNET, budget: int | None = 1024, *, max_tokens: int = 1400,
             messages: tuple[dict[str, Any], ...] = ({"role": "user",
                                                      "content": [{"text": "hello"}]},),
             **inference: Any) -> LLMRequest:
    return LLMRequest(call_sid="CA" + "0" * 32, use_case="desk", model_id=model_id,
                      system=("Hi.",), messages=messages,
                      tools=({"name": "hours", "inputSchema": {"json": {"type": "object"}}},),
                      inference=InferenceConfig(max_tokens=max_tokens, **inference),
                      options=ModelOptions(thinking_budget_tokens=budget))


def test_thinking_goes_in_additional_model_request_fields_only_when_on() -> None:
    assert build_converse_request(_request())["additionalModelRequestFields"] == THINKING
    assert build_converse_request(_request(PROFILE_ARN))["additionalModelRequestFields"] == (
        THINKING)
    assert "additionalModelRequestFields" not in build_converse_request(_request(budget=None))


def test_a_model_that_cannot_think_gets_no_thinking_and_one_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    """A use case that names no model, under a MODEL_IDENTIFIER that cannot think."""
    model = "us.amazon.nova-micro-v1:0"
    with caplog.at_level(logging.WARNING, logger="voiceagent.llm.bedrock"):
        bodies = [build_converse_request(_request(model)) for _ in range(2)]
    assert all("additionalModelRequestFields" not in body for body in bodies)
    warnings = [r for r in caplog.records if "thinking not sent" in r.getMessage()]
    assert [r.__dict__["model_id"] for r in warnings] == [model]


# ------------------------------------------------------------------ the local endpoint

async def collect(backend: BedrockLLM, request: LLMRequest) -> list[Any]:
    async with backend.stream(request) as events:
        return [event async for event in events]


async def test_the_endpoint_refuses_what_bedrock_refuses_with_thinking(
        fake_bedrock: FakeBedrock) -> None:
    question = {"role": "user", "content": [{"text": "Hours?"}]}
    keypad_round = (question, {"role": "assistant", "content": [{"toolUse": {
        "toolUseId": "dtmf_1_hours", "name": "hours", "input": {}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "dtmf_1_hours",
                                                     "content": [{"text": "9 to 5"}]}}]})
    refused = [
        (_request(budget=1000), LOW_BUDGET),
        (_request(max_tokens=1024), BUDGET_OVER_MAX),
        (_request(temperature=0.5), TEMPERATURE),
        (_request(top_p=0.9), TOP_P),
        (_request(messages=keypad_round), MISSING_THINKING.format(at=1, found="tool_use")),
    ]
    backend = BedrockLLM(region="us-east-1")
    try:
        with trio.fail_after(20):
            for request, refusal in refused:
                with pytest.raises(ModelRejected) as caught:
                    await collect(backend, request)
                assert refusal in str(caught.value)
            fake_bedrock.push(text_reply(["Nine to five."]), text_reply(["Nine to five."]))
            thought = await collect(backend, _request(temperature=1, top_p=0.95))
            unthinking = await collect(backend, _request(budget=None, messages=keypad_round))
    finally:
        await backend.aclose()
    assert TextDelta("Nine to five.") in thought
    assert TextDelta("Nine to five.") in unthinking     # the round is fine without thinking
    assert len(fake_bedrock.violations) == len(refused)


def test_the_endpoint_refuses_a_forced_tool_choice_with_thinking() -> None:
    body = build_converse_request(_request())
    body["toolConfig"]["toolChoice"] = {"any": {}}
    assert thinking_refusal(body) == FORCED_TOOL
    body["toolConfig"]["toolChoice"] = {"auto": {}}
    assert thinking_refusal(body) is None


# ------------------------------------------------------------------ a call

def _config_dir(tmp_path: Path) -> Path:
    """The test use case, thinking on with Claude."""
    data = yaml.safe_load((FIXTURE_CONFIG / "usecases" / "testUseCase.yaml").read_text())
    data.update(model=SONNET, inference={"max_tokens": 1400},
                model_options={"thinking_budget_tokens": 1024})
    return one_use_case_config(tmp_path, data, "testUseCase.yaml")


async def test_a_thinking_tool_turn_works_end_to_end(fake_bedrock: FakeBedrock,
                                                     tmp_path: Path) -> None:
    def respond(request: RecordedRequest) -> Reply:
        last = request.body["messages"][-1]["content"][-1]
        if "toolResult" in last:
            return stream_reply(message_start(), reasoning_events(0, ["Say it."],
                                                                  signature=SIGNATURE),
                                text_events(["It will be", " ready soon."], index=1),
                                message_end())
        return stream_reply(message_start(),
                            reasoning_events(0, ["The caller", " wants a time."],
                                             signature=SIGNATURE),
                            tool_events(1, "tu_1", "CheckRestaurantPickUpTime", ["{}"]),
                            message_end("tool_use"))

    fake_bedrock.responder = respond
    settings = make_settings(tmp_path, LLM="bedrock", AWS_REGION="us-east-1",
                             CONFIG_DIR=str(_config_dir(tmp_path)))
    with trio.fail_after(30):
        async with running_server(settings) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("When can I pick up my order?")
                reply = await call.read_reply()
                await call.hang_up()
            await server.runtime.calls.wait_idle()
    assert reply.text == "It will be ready soon."       # the thinking is never said
    assert fake_bedrock.violations == []
    assert [r.model_id for r in fake_bedrock.requests] == [SONNET, SONNET]
    assert [r.body["additionalModelRequestFields"] for r in fake_bedrock.requests] == [
        THINKING, THINKING]
    tool_round = fake_bedrock.requests[1].body["messages"][-2]["content"]
    assert [next(iter(block)) for block in tool_round] == ["reasoningContent", "toolUse"]
