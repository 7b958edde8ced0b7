"""``voiceagent check`` asks each model with what a call of the use case sends: a temperature
set in a use case whose model is an application-inference-profile ARN running Claude Opus 4.7
(which takes no sampling parameter) passed the check, whose probe sent none, and then every
turn of every call failed ("`temperature` is deprecated for this model", Bedrock's words for
such an ARN, cline/cline#10572). The local Bedrock endpoint refuses for the ARN what its model
refuses; the probe's settings are compared with the request the call path builds."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import yaml

from tests.check_support import RUN_TIMEOUT_S, base_env, bedrock_env, moto_env, run_check
from tests.dynamodb_support import moto_endpoint
from tests.fake_bedrock import RecordedRequest, Reply, running_fake_bedrock, text_reply
from tests.fake_caching import NO_CACHING
from tests.fake_samplers import BOTH, DEPRECATED
from voiceagent.llm.base import LLMRequest
from voiceagent.llm.bedrock_converse import build_converse_request
from voiceagent.usecases import UseCase

__all__ = ["moto_endpoint"]          # the fixture, imported so pytest finds it here

pytestmark = pytest.mark.timeout(90)

ACCOUNT_ARN = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile"
NO_SAMPLERS = f"{ACCOUNT_ARN}/opus47"       # runs Claude Opus 4.7: no temperature, no top_p
ONE_SAMPLER = f"{ACCOUNT_ARN}/opus46"       # runs Claude Opus 4.6: not both
GOOD = "acme.good-v1:0"
USE_CASES: dict[str, dict[str, object]] = {
    "frontDesk": {"model": NO_SAMPLERS, "inference": {"temperature": 0.3}},
    "orders": {"model": NO_SAMPLERS},
    "lab": {"model": ONE_SAMPLER, "inference": {"temperature": 0.3, "top_p": 0.9}},
    "billing": {"model": GOOD, "inference": {"temperature": 0.5, "stop_sequences": ["Bye"]},
                "model_options": {"latency_optimized": True}},
}


def one_token(request: RecordedRequest) -> Reply:
    return text_reply(["Hi"], stop_reason="max_tokens", output_tokens=1)


def call_request(use_case: UseCase) -> dict[str, object]:
    """What a call of ``use_case`` sends, as ``actors.model_round`` builds it."""
    return build_converse_request(LLMRequest(
        call_sid="CA" + "0" * 32, use_case=use_case.name, model_id=str(use_case.model),
        system=("You answer.",), messages=({"role": "user", "content": [{"text": "Hi"}]},),
        inference=use_case.inference.to_config(),
        options=use_case.model_options.to_options()))


async def test_the_probe_sends_the_use_cases_settings_and_names_the_key_to_remove(
        moto_endpoint: str, tmp_path: Path) -> None:
    config = tmp_path / "config"
    (config / "usecases").mkdir(parents=True)
    for name, extra in USE_CASES.items():
        (config / "usecases" / f"{name}.yaml").write_text(yaml.safe_dump(
            {"name": name, "prompt": "You answer in one word.", **extra}))
    with trio.fail_after(RUN_TIMEOUT_S):
        async with running_fake_bedrock(tls=True, responder=one_token, profiles={
                NO_SAMPLERS: "anthropic.claude-opus-4-7",
                ONE_SAMPLER: "anthropic.claude-opus-4-6-v1"}) as bedrock:
            env = base_env(tmp_path, STORE="sqlite", DATA_DIR=str(tmp_path / "data"),
                           CONFIG_DIR=str(config), STACK_USE_CASE="frontDesk",
                           **moto_env(moto_endpoint, tmp_path), **bedrock_env(bedrock))
            run = await run_check(env, tmp_path)
    lines = run.lines
    assert run.code == 1, run.out + run.err

    refused = lines[f"Bedrock model {NO_SAMPLERS}"]
    assert (refused.status, refused.detail) == (
        "fail", "refuses the sampling parameters of use case frontDesk (ValidationException): "
                "every turn would fail"), run.out
    assert refused.advice[0] == (
        f"remove inference.temperature from use case frontDesk: the model behind "
        f"{NO_SAMPLERS} takes no sampling parameters (Claude Opus 4.7 and later)")
    assert refused.advice[-1] == "Bedrock said: ValidationException: " + DEPRECATED.format(
        name="temperature")

    pair = lines[f"Bedrock model {ONE_SAMPLER}"]
    assert (pair.status, pair.detail) == (
        "fail", "refuses the sampling parameters of use case lab (ValidationException): "
                "every turn would fail"), run.out
    assert pair.advice[0].startswith("set only one of inference.temperature and "
                                     "inference.top_p in use case lab (usually temperature)")
    assert pair.advice[-1] == f"Bedrock said: ValidationException: {BOTH}"

    assert lines[f"Bedrock model {GOOD}"].status == "pass", run.out

    # each request carries what the use case's calls send, only one token long; a model
    # its use cases ask differently is asked once per set of settings, the refused one first
    sent = [(r.model_id, r.body) for r in bedrock.requests]
    assert sorted(model for model, _ in sent) == sorted([NO_SAMPLERS, ONE_SAMPLER, GOOD])
    by_model = dict(sent)
    for name, extra in USE_CASES.items():
        if name == "orders":    # not asked: the model refused frontDesk's settings first
            continue
        use_case = UseCase.model_validate({"name": name, "prompt": "You answer.", **extra})
        call = call_request(use_case)
        body = by_model[str(use_case.model)]
        assert body["inferenceConfig"] == {**call["inferenceConfig"], "maxTokens": 1}, name
        for key in ("performanceConfig", "additionalModelRequestFields", "guardrailConfig"):
            assert body.get(key) == call.get(key), (name, key)
    assert by_model[GOOD]["inferenceConfig"] == {
        "maxTokens": 1, "temperature": 0.5, "stopSequences": ["Bye"]}
    assert by_model[GOOD]["performanceConfig"] == {"latency": "optimized"}


async def test_a_model_its_use_cases_ask_differently_is_asked_once_per_set(
        moto_endpoint: str, tmp_path: Path) -> None:
    """Two use cases on one model, one with a temperature: both requests are asked (the one
    without first would pass alone), and the model passes only when both are accepted."""
    config = tmp_path / "config"
    (config / "usecases").mkdir(parents=True)
    for name, extra in {"orders": {}, "frontDesk": {"inference": {"temperature": 0.3}},
                        "billing": {}}.items():
        (config / "usecases" / f"{name}.yaml").write_text(yaml.safe_dump(
            {"name": name, "prompt": "You answer in one word.", "model": NO_SAMPLERS,
             **extra}))
    with trio.fail_after(RUN_TIMEOUT_S):
        async with running_fake_bedrock(tls=True, responder=one_token, profiles={
                NO_SAMPLERS: "anthropic.claude-opus-4-7"}) as bedrock:
            env = base_env(tmp_path, STORE="sqlite", DATA_DIR=str(tmp_path / "data"),
                           CONFIG_DIR=str(config), STACK_USE_CASE="orders",
                           **moto_env(moto_endpoint, tmp_path), **bedrock_env(bedrock))
            run = await run_check(env, tmp_path)
    line = run.lines[f"Bedrock model {NO_SAMPLERS}"]
    assert run.code == 1, run.out + run.err
    assert line.detail.startswith("refuses the sampling parameters of use case frontDesk "), \
        run.out
    assert [r.body["inferenceConfig"] for r in bedrock.requests] == [
        {"maxTokens": 1}, {"maxTokens": 1, "temperature": 0.3}]


async def test_a_model_that_refuses_prompt_caching_is_told_to_turn_it_off(
        moto_endpoint: str, tmp_path: Path) -> None:
    """A use case with prompt caching on, whose model Bedrock offers without it: the probe
    carries the cache point a call sends after its prompt, and Bedrock's 403 (the code of a
    model never enabled, the words of prompt caching) is advised as what it is, not as model
    access or IAM."""
    later = "us.anthropic.claude-opus-6-v1:0"    # guessed to take cache points; here, not
    config = tmp_path / "config"
    (config / "usecases").mkdir(parents=True)
    for name, extra in {"frontDesk": {"model_options": {"prompt_caching": True}},
                        "orders": {}}.items():
        (config / "usecases" / f"{name}.yaml").write_text(yaml.safe_dump(
            {"name": name, "prompt": "You answer in one word.", "model": later, **extra}))
    with trio.fail_after(RUN_TIMEOUT_S):
        async with running_fake_bedrock(tls=True, responder=one_token, profiles={
                later: "anthropic.claude-3-haiku-20240307-v1:0"}) as bedrock:
            env = base_env(tmp_path, STORE="sqlite", DATA_DIR=str(tmp_path / "data"),
                           CONFIG_DIR=str(config), STACK_USE_CASE="orders",
                           **moto_env(moto_endpoint, tmp_path), **bedrock_env(bedrock))
            run = await run_check(env, tmp_path)
    line = run.lines[f"Bedrock model {later}"]
    assert run.code == 1, run.out + run.err
    assert (line.status, line.detail) == (
        "fail", "refuses prompt caching (AccessDeniedException): every turn would fail"), run.out
    assert line.advice[0] == ("turn model_options.prompt_caching off in use case frontDesk: "
                              f"Bedrock takes no cache points from {later} in us-east-1")
    assert not any("IAM bedrock:" in a or "enable model access" in a for a in line.advice)
    assert line.advice[-1] == f"Bedrock said: AccessDeniedException: {NO_CACHING}"
    # frontDesk's request, with the cache point its calls send; refused, orders' is not asked
    assert [r.body.get("system") for r in bedrock.requests] == [
        [{"text": "You answer in one word."}, {"cachePoint": {"type": "default"}}]]
