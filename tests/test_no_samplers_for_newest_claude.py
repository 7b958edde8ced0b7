"""Claude Opus 4.7 and the models after it (Opus 4.8, the Claude 5 models, Mythos, Fable)
take no temperature, top_p or top_k: Bedrock answers a request with one with a
ValidationException ("`temperature` is deprecated for this model"), it does not ignore it. A
use case naming such a model with temperature (the samples and the scaffold set one) loaded
fine and then cost every turn of every call an apology. A file is refused at load with the
fix in the message; a use case stored earlier, or one that names no model under such a
MODEL_IDENTIFIER, is sent without them, said once in the log; a call works end to end against
the local endpoint, which refuses them as Bedrock does."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from tests.fake_bedrock import FakeBedrock, text_reply
from tests.fake_samplers import BOTH, DEPRECATED, sampler_refusal
from tests.server_harness import (
    AUTH_TOKEN,
    FIXTURE_CONFIG,
    make_settings,
    one_use_case_config,
    running_server,
)
from voiceagent.app.caller import open_call
from voiceagent.errors import ConfigError
from voiceagent.llm.base import InferenceConfig, LLMRequest
from voiceagent.llm.bedrock_converse import build_converse_request
from voiceagent.llm.samplers import no_samplers
from voiceagent.store import config_records
from voiceagent.usecases import UseCase, parse_model

OPUS_4_7 = "us.anthropic.claude-opus-4-7"
PROFILE_ARN = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3"


@pytest.mark.parametrize(("model", "refuses"), [
    ("anthropic.claude-opus-4-7", True),
    (OPUS_4_7, True),
    ("global.anthropic.claude-opus-4-7-v1:0", True),
    ("arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-opus-4-7", True),
    ("us.anthropic.claude-opus-4-8", True),
    ("us.anthropic.claude-opus-5", True),
    ("eu.anthropic.claude-sonnet-5", True),
    ("anthropic.claude-haiku-5-5", True),
    ("anthropic.claude-mythos-preview", True),
    ("global.anthropic.claude-fable-5-1", True),
    ("us.anthropic.claude-opus-4-6-v1", False),
    ("us.anthropic.claude-sonnet-4-6", False),
    ("us.anthropic.claude-opus-4-20250514-v1:0", False),     # "4-2...": a date, not 4.2
    ("global.anthropic.claude-haiku-4-5-20251001-v1:0", False),
    ("us.anthropic.claude-3-7-sonnet-20250219-v1:0", False),
    ("anthropic.claude-3-5-haiku-20241022-v1:0", False),
    ("us.amazon.nova-lite-v1:0", False),
    (PROFILE_ARN, False),                                     # cannot tell: left to Bedrock
])
def test_which_models_take_no_sampling_parameters(model: str, refuses: bool) -> None:
    assert no_samplers(model) is refuses
    sent = {"inferenceConfig": {"maxTokens": 10, "temperature": 0.3}}
    assert (sampler_refusal(model, sent) is not None) is refuses    # the endpoint agrees


# ------------------------------------------------------------------ at load


def _use_case(model: str | None, **inference: Any) -> dict[str, Any]:
    return {"name": "desk", "prompt": "Answer briefly.", "model": model,
            "inference": inference}


@pytest.mark.parametrize(("inference", "key"), [
    ({"temperature": 0.3}, "inference.temperature"),
    ({"top_p": 0.9}, "inference.top_p"),
    ({"temperature": 1, "top_p": 0.9}, "inference.temperature"),
])
def test_a_sampling_parameter_for_a_model_that_takes_none_is_refused_at_load(
        inference: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_model(UseCase, _use_case(OPUS_4_7, **inference), "desk.yaml")
    assert caught.value.key_path == key
    assert OPUS_4_7 in caught.value.problem
    assert "remove inference.temperature and inference.top_p" in caught.value.problem


@pytest.mark.parametrize(("model", "inference"), [
    (OPUS_4_7, {"max_tokens": 200}),
    (PROFILE_ARN, {"temperature": 0.3}),
    (None, {"temperature": 0.3, "top_p": 0.9}),
])
def test_what_the_model_takes_still_loads(model: str | None,
                                          inference: dict[str, Any]) -> None:
    loaded = parse_model(UseCase, _use_case(model, **inference), "desk.yaml")
    assert loaded.inference.temperature == inference.get("temperature")


def test_a_stored_use_case_with_a_temperature_is_still_served_as_stored() -> None:
    item = config_records.use_case_item(UseCase(name="desk", prompt="Hi.", model=OPUS_4_7))
    item["voiceagent"] = {**item["voiceagent"], "inference": {"max_tokens": 200,
                                                              "temperature": 0.3}}
    served = config_records.use_case_from_item(item)
    assert (served.model, served.inference.temperature) == (OPUS_4_7, 0.3)


# ------------------------------------------------------------------ at request time


def test_a_request_to_a_model_that_takes_none_sends_none_and_says_so_once(
        caplog: pytest.LogCaptureFixture) -> None:
    model = "global.anthropic.claude-opus-4-8"
    request = LLMRequest(call_sid="CA" + "0" * 32, use_case="desk", model_id=model,
                         system=("Hi.",), messages=({"role": "user",
                                                      "content": [{"text": "hello"}]},),
                         inference=InferenceConfig(max_tokens=200, temperature=0.3,
                                                   top_p=0.9, stop_sequences=("Bye",)))
    with caplog.at_level(logging.WARNING, logger="voiceagent.llm.bedrock"):
        bodies = [build_converse_request(request) for _ in range(2)]
    for body in bodies:
        assert body["inferenceConfig"] == {"maxTokens": 200, "stopSequences": ["Bye"]}
        assert sampler_refusal(model, body) is None
    warnings = [r for r in caplog.records if "not sent" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].__dict__["model_id"] == model


def test_the_endpoint_refuses_in_bedrocks_words() -> None:
    assert sampler_refusal(OPUS_4_7, {"inferenceConfig": {"topP": 0.9}}) == DEPRECATED.format(
        name="top_p")
    assert sampler_refusal(OPUS_4_7, {"additionalModelRequestFields": {"top_k": 5}}) == (
        DEPRECATED.format(name="top_k"))
    both = {"inferenceConfig": {"temperature": 0.3, "topP": 0.9}}
    assert sampler_refusal("us.anthropic.claude-sonnet-4-5-20250929-v1:0", both) == BOTH
    assert sampler_refusal("us.anthropic.claude-sonnet-4-20250514-v1:0", both) is None


# ------------------------------------------------------------------ a call


async def test_a_call_under_such_a_model_identifier_is_answered(
        fake_bedrock: FakeBedrock, tmp_path: Path) -> None:
    """The test use case names no model and sets a temperature, as the samples do."""
    data = yaml.safe_load((FIXTURE_CONFIG / "usecases" / "testUseCase.yaml").read_text())
    data.pop("model", None)
    data["inference"] = {"max_tokens": 200, "temperature": 0.3, "top_p": 0.9}
    config = one_use_case_config(tmp_path, data, "testUseCase.yaml")
    fake_bedrock.push(text_reply(["Ten minutes", " from now."]))
    settings = make_settings(tmp_path, LLM="bedrock", AWS_REGION="us-east-1",
                             CONFIG_DIR=str(config), MODEL_IDENTIFIER=OPUS_4_7)
    with trio.fail_after(30):
        async with running_server(settings) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("When can I pick up my order?")
                reply = await call.read_reply()
                await call.hang_up()
            await server.runtime.calls.wait_idle()
    assert reply.text == "Ten minutes from now."
    assert fake_bedrock.violations == []
    assert [r.model_id for r in fake_bedrock.requests] == [OPUS_4_7]
