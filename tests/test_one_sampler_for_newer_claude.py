"""Claude Opus 4.1 and the 4.5 / 4.6 families (and later) on Bedrock refuse temperature and
top_p in one request ("`temperature` and `top_p` cannot both be specified for this model"),
so a use case naming such a model with both loaded fine and then cost every turn of every call
a ValidationException and an apology. A file is refused at load with the fix in the message;
a use case already in the table is still served as stored (validation context STORED), and
models that take both (Nova, older Claude, or a model left to MODEL_IDENTIFIER) still load.
At request time, such a model gets temperature alone, whatever the use case holds."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from voiceagent.errors import ConfigError
from voiceagent.llm.base import InferenceConfig, LLMRequest
from voiceagent.llm.bedrock_converse import build_converse_request
from voiceagent.store import config_records
from voiceagent.usecases import UseCase, parse_model

BOTH = {"temperature": 0.3, "top_p": 0.9}


def _use_case(model: str | None, **inference: Any) -> dict[str, Any]:
    return {"name": "desk", "prompt": "Answer briefly.", "model": model,
            "inference": inference}


@pytest.mark.parametrize("model", [
    "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
    "global.anthropic.claude-haiku-4-5-20251001-v1:0",
    "anthropic.claude-opus-4-1-20250805-v1:0",
    "us.anthropic.claude-sonnet-4-6",
    "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-opus-4-6-v1",
])
def test_both_samplers_for_a_model_that_refuses_them_are_refused_at_load(model: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_model(UseCase, _use_case(model, **BOTH), "desk.yaml")
    assert caught.value.key_path == "inference.top_p"
    assert "set only one" in caught.value.problem
    assert model in caught.value.problem


@pytest.mark.parametrize(("model", "inference"), [
    ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", {"temperature": 0.3}),
    ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", {"top_p": 0.9}),
    ("us.amazon.nova-lite-v1:0", BOTH),
    ("us.anthropic.claude-3-7-sonnet-20250219-v1:0", BOTH),
    ("us.anthropic.claude-sonnet-4-20250514-v1:0", BOTH),       # "4-2...": a date, not 4.2
    ("us.anthropic.claude-opus-4-20250514-v1:0", BOTH),
    (None, BOTH),
])
def test_what_the_model_takes_still_loads(model: str | None,
                                          inference: dict[str, Any]) -> None:
    loaded = parse_model(UseCase, _use_case(model, **inference), "desk.yaml")
    assert loaded.inference.to_config().temperature == inference.get("temperature")
    assert loaded.inference.to_config().top_p == inference.get("top_p")


def test_a_stored_use_case_with_both_is_still_served_as_stored() -> None:
    model = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
    item = config_records.use_case_item(UseCase(name="desk", prompt="Answer briefly.", model=model))
    item["voiceagent"] = {**item["voiceagent"], "inference": {"max_tokens": 200, **BOTH}}
    served = config_records.use_case_from_item(item)
    assert served.model == model
    assert (served.inference.temperature, served.inference.top_p) == (0.3, 0.9)
    assert served.inference.max_tokens == 200       # its own settings, not the sample's


# ------------------------------------------------------------------ at request time


def _request(model_id: str, inference: InferenceConfig) -> dict[str, Any]:
    return build_converse_request(LLMRequest(
        call_sid="CA" + "0" * 32, use_case="desk", model_id=model_id, system=("Hi.",),
        messages=({"role": "user", "content": [{"text": "hello"}]},), inference=inference))


def test_a_request_to_a_model_that_refuses_both_sends_temperature_alone(
        caplog: pytest.LogCaptureFixture) -> None:
    """What the load check cannot see (a stored use case, or none named under such a
    MODEL_IDENTIFIER) still reaches the model as a request it takes, said once in the log."""
    model = "us.anthropic.claude-haiku-4-5-20251001-v1:0"
    both = InferenceConfig(max_tokens=200, temperature=0.3, top_p=0.9)
    with caplog.at_level(logging.WARNING, logger="voiceagent.llm.bedrock"):
        first, second = _request(model, both), _request(model, both)
    for body in (first, second):
        assert body["inferenceConfig"] == {"maxTokens": 200, "temperature": 0.3}
    warnings = [r for r in caplog.records if "top_p not sent" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].__dict__["model_id"] == model


@pytest.mark.parametrize(("model", "inference", "sent"), [
    ("us.amazon.nova-lite-v1:0", InferenceConfig(temperature=0.3, top_p=0.9),
     {"temperature": 0.3, "topP": 0.9}),
    ("us.anthropic.claude-opus-4-20250514-v1:0", InferenceConfig(temperature=0.3, top_p=0.9),
     {"temperature": 0.3, "topP": 0.9}),
    ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", InferenceConfig(top_p=0.9),
     {"topP": 0.9}),
])
def test_a_request_the_model_takes_is_sent_as_set(model: str, inference: InferenceConfig,
                                                   sent: dict[str, Any]) -> None:
    body = _request(model, inference)["inferenceConfig"]
    assert {k: v for k, v in body.items() if k != "maxTokens"} == sent
