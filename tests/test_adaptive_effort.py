"""``model_options.effort`` turns on Claude's adaptive thinking at that effort for the models
that think only adaptively (Opus 4.7 and later), which refuse a budget: every request carries
``additionalModelRequestFields: {"thinking": {"type": "adaptive"}}`` and Converse's
``outputConfig: {"effort": LEVEL}``. What Bedrock refuses with it on every turn is refused at
load, with the key and the fix; the local endpoint refuses the same requests, and a thinking
tool turn at low effort works end to end.
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
from tests.fake_effort import (
    ADAPTIVE_REFUSED,
    BAD_EFFORT,
    BUDGET_REFUSED,
    EXTRA_FIELD,
    LEVEL_REFUSED,
)
from tests.server_harness import (
    AUTH_TOKEN,
    FIXTURE_CONFIG,
    make_settings,
    one_use_case_config,
    running_server,
)
from voiceagent.app.caller import open_call
from voiceagent.errors import ConfigError
from voiceagent.llm.base import InferenceConfig, LLMRequest, ModelOptions, TextDelta
from voiceagent.llm.bedrock import BedrockLLM
from voiceagent.llm.bedrock_converse import build_converse_request
from voiceagent.store import config_records
from voiceagent.usecases import UseCase, parse_model

OPUS = "us.anthropic.claude-opus-4-7"
ADAPTIVE = {"thinking": {"type": "adaptive"}}
SIGNATURE = "RXFBc2lnbmVkYnlDbGF1ZGU="
PROFILE_ARN = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3"


def _use_case(model: str | None = OPUS, **options: Any) -> dict[str, Any]:
    return {"name": "desk", "prompt": "Answer briefly.", "model": model,
            "inference": {"max_tokens": 2000},
            "model_options": {"effort": "low", **options}}


# ------------------------------------------------------------------ at load

@pytest.mark.parametrize(("data", "at", "says"), [
    (_use_case(effort="fast"), "model_options.effort",
     "one of low, medium, high, xhigh, max"),
    (_use_case(effort="LOW"), "model_options.effort", "one of low, medium, high, xhigh, max"),
    (_use_case("us.amazon.nova-lite-v1:0"), "model_options.effort",
     "does not think adaptively"),
    (_use_case("anthropic.claude-3-5-haiku-20241022-v1:0"), "model_options.effort",
     "does not think adaptively"),
    (_use_case("us.anthropic.claude-sonnet-4-6"), "model_options.effort",
     "thinks with a budget"),
    (_use_case("us.anthropic.claude-sonnet-4-20250514-v1:0"), "model_options.effort",
     "thinks with a budget"),
    (_use_case("anthropic.claude-mythos-preview", effort="xhigh"), "model_options.effort",
     "does not offer effort xhigh"),
    (_use_case(PROFILE_ARN, thinking_budget_tokens=1024), "model_options.effort",
     "a model takes one of them"),
    (_use_case(thinking_budget_tokens=1024), "model_options.thinking_budget_tokens",
     "write model_options.effort"),
])
def test_what_bedrock_refuses_with_an_effort_is_refused_at_load(
        data: dict[str, Any], at: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_model(UseCase, data, "desk.yaml")
    assert caught.value.key_path == at
    assert says in caught.value.problem


@pytest.mark.parametrize("data", [
    _use_case(),
    _use_case(effort="max"),
    _use_case("global.anthropic.claude-fable-5-1", effort="xhigh"),
    _use_case("eu.anthropic.claude-sonnet-5", effort="medium"),
    _use_case("anthropic.claude-mythos-preview", effort="high"),
    _use_case(None),                                    # MODEL_IDENTIFIER: not known here
    _use_case(PROFILE_ARN, effort="xhigh"),
])
def test_an_effort_a_model_takes_loads(data: dict[str, Any]) -> None:
    loaded = parse_model(UseCase, data, "desk.yaml")
    assert loaded.model_options.to_options().effort == data["model_options"]["effort"]


def test_the_effort_is_stored_and_read_back_and_older_items_load_without_it() -> None:
    loaded = parse_model(UseCase, _use_case(effort="medium"), "desk.yaml")
    item = config_records.use_case_item(loaded)
    assert item["voiceagent"]["model_options"]["effort"] == "medium"
    assert config_records.use_case_from_item(item) == loaded
    del item["voiceagent"]["model_options"]["effort"]       # an older release's item
    assert config_records.use_case_from_item(item).model_options.effort is None
    off = _use_case()
    del off["model_options"]
    item = config_records.use_case_item(parse_model(UseCase, off, "desk.yaml"))
    assert "effort" not in item["voiceagent"]["model_options"]  # older releases read it


# ------------------------------------------------------------------ the request

def _request(model_id: str = OPUS, effort: str | None = "low", *,
             messages: tuple[dict[str, Any], ...] = ({"role": "user",
                                                      "content": [{"text": "hello"}]},),
             budget: int | None = None) -> LLMRequest:
    return LLMRequest(call_sid="CA" + "0" * 32, use_case="desk", model_id=model_id,
                      system=("Hi.",), messages=messages,
                      tools=({"name": "hours", "inputSchema": {"json": {"type": "object"}}},),
                      inference=InferenceConfig(max_tokens=2000),
                      options=ModelOptions(thinking_budget_tokens=budget, effort=effort))


def test_every_request_carries_adaptive_thinking_and_its_effort() -> None:
    for model in (OPUS, PROFILE_ARN, "anthropic.claude-fable-5-1"):
        body = build_converse_request(_request(model, "medium"))
        assert body["additionalModelRequestFields"] == ADAPTIVE
        assert body["outputConfig"] == {"effort": "medium"}
    body = build_converse_request(_request(effort=None))
    assert "additionalModelRequestFields" not in body
    assert "outputConfig" not in body


def test_a_model_that_does_not_take_it_gets_none_and_one_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    """A use case that names no model, under a MODEL_IDENTIFIER that does not take it."""
    model = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
    with caplog.at_level(logging.WARNING, logger="voiceagent.llm.bedrock"):
        bodies = [build_converse_request(_request(model)) for _ in range(2)]
        preview = build_converse_request(_request("anthropic.claude-mythos-preview", "xhigh"))
    assert all("additionalModelRequestFields" not in b and "outputConfig" not in b
               for b in bodies)
    assert preview["additionalModelRequestFields"] == ADAPTIVE   # its default effort, high
    assert "outputConfig" not in preview
    warned = [(r.getMessage(), r.__dict__["model_id"]) for r in caplog.records]
    assert warned == [("adaptive thinking not sent: the model does not take it", model),
                      ("effort not sent: the model does not offer it",
                       "anthropic.claude-mythos-preview")]


# ------------------------------------------------------------------ the local endpoint

async def collect(backend: BedrockLLM, request: LLMRequest) -> list[Any]:
    async with backend.stream(request) as events:
        return [event async for event in events]


def test_the_request_is_one_converse_takes() -> None:
    """The Converse API's own model (botocore's, the pinned release) takes the body: an
    ``outputConfig.effort`` it did not know would be refused here."""
    import botocore.session
    from botocore.validate import validate_parameters

    shape = botocore.session.get_session().get_service_model(
        "bedrock-runtime").operation_model("ConverseStream").input_shape
    validate_parameters(build_converse_request(_request(effort="xhigh")), shape)


async def test_what_is_sent_is_taken_by_the_endpoint(fake_bedrock: FakeBedrock) -> None:
    requests = [_request(), _request(effort="max"),
                _request("us.anthropic.claude-sonnet-4-5-20250929-v1:0"),   # sent without it
                _request("anthropic.claude-mythos-preview", "xhigh")]      # without effort
    fake_bedrock.push(*(text_reply(["Nine to five."]) for _ in requests))
    backend = BedrockLLM(region="us-east-1")
    try:
        with trio.fail_after(20):
            answers = [await collect(backend, request) for request in requests]
    finally:
        await backend.aclose()
    assert all(TextDelta("Nine to five.") in answer for answer in answers)
    assert fake_bedrock.violations == []
    assert [r.body.get("outputConfig") for r in fake_bedrock.requests] == [
        {"effort": "low"}, {"effort": "max"}, None, None]


async def test_the_endpoint_answers_a_refused_effort_as_bedrock_does(
        fake_bedrock: FakeBedrock) -> None:
    """A body the code never sends, through boto3's own client: HTTP 400, a violation."""
    import boto3
    from botocore.exceptions import ClientError

    body = build_converse_request(_request("anthropic.claude-mythos-preview", "high"))
    body["outputConfig"] = {"effort": "xhigh"}

    def send() -> str:
        client = boto3.client("bedrock-runtime", region_name="us-east-1")
        try:
            client.converse_stream(**body)
        except ClientError as err:
            return f"{err.response['Error']['Code']}: {err.response['Error']['Message']}"
        finally:
            client.close()
        return "taken"

    with trio.fail_after(20):
        said = await trio.to_thread.run_sync(send)
    assert said == "ValidationException: " + LEVEL_REFUSED.format(effort="xhigh")
    assert len(fake_bedrock.violations) == 1


@pytest.mark.parametrize(("model", "fields", "output", "refusal"), [
    (OPUS, {"thinking": {"type": "enabled", "budget_tokens": 1024}}, None, BUDGET_REFUSED),
    (OPUS, {"thinking": {"type": "adaptive", "effort": "low"}}, None,
     EXTRA_FIELD.format(type="adaptive", name="effort")),
    (OPUS, ADAPTIVE, {"effort": "fast"}, BAD_EFFORT.format(effort="fast")),
    ("anthropic.claude-mythos-preview", ADAPTIVE, {"effort": "xhigh"},
     LEVEL_REFUSED.format(effort="xhigh")),
    ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", ADAPTIVE, {"effort": "low"},
     ADAPTIVE_REFUSED),
    ("us.anthropic.claude-sonnet-4-6", ADAPTIVE, {"effort": "low"}, None),
    (OPUS, ADAPTIVE, {"effort": "low"}, None),
])
def test_the_endpoint_keeps_the_documented_shape(
        model: str, fields: dict[str, Any], output: dict[str, Any] | None,
        refusal: str | None) -> None:
    from tests.fake_effort import effort_refusal
    body: dict[str, Any] = {"additionalModelRequestFields": fields}
    if output is not None:
        body["outputConfig"] = output
    assert effort_refusal(model, body) == refusal


# ------------------------------------------------------------------ a call

def _config_dir(tmp_path: Path) -> Path:
    """The test use case, adaptive thinking at low effort with Claude Opus 4.7."""
    data = yaml.safe_load((FIXTURE_CONFIG / "usecases" / "testUseCase.yaml").read_text())
    data.update(model=OPUS, inference={"max_tokens": 2000}, model_options={"effort": "low"})
    return one_use_case_config(tmp_path, data, "testUseCase.yaml")


async def test_a_tool_turn_thinking_adaptively_works_end_to_end(fake_bedrock: FakeBedrock,
                                                                tmp_path: Path) -> None:
    """The thinking comes as Opus 4.7 sends it by default (display omitted): a reasoning
    block with a signature and no text, which goes back unchanged with the tool round."""
    def respond(request: RecordedRequest) -> Reply:
        last = request.body["messages"][-1]["content"][-1]
        if "toolResult" in last:
            return stream_reply(message_start(),
                                text_events(["It will be", " ready soon."], index=0),
                                message_end())
        return stream_reply(message_start(), reasoning_events(0, [], signature=SIGNATURE),
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
    assert fake_bedrock.violations == []
    assert reply.text == "It will be ready soon."
    assert [(r.body["additionalModelRequestFields"], r.body["outputConfig"])
            for r in fake_bedrock.requests] == [(ADAPTIVE, {"effort": "low"})] * 2
    tool_round = fake_bedrock.requests[1].body["messages"][-2]["content"]
    assert tool_round[0] == {"reasoningContent": {"reasoningText": {
        "text": "", "signature": SIGNATURE}}}
    assert [next(iter(block)) for block in tool_round] == ["reasoningContent", "toolUse"]
