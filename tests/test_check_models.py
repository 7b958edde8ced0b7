"""``voiceagent check`` on the Bedrock models the use cases name: each is asked for one token
the way calls ask it (thinking, effort), against the local endpoint over TLS; a refused or
unknown model fails with what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import yaml

from tests.check_support import (
    DEFAULT_MODEL,
    GOOD,
    REFUSED,
    RUN_TIMEOUT_S,
    UNKNOWN,
    base_env,
    bedrock_env,
    config_dir,
    moto_env,
    one_token_or_refusal,
    run_check,
)
from tests.dynamodb_support import moto_endpoint
from tests.fake_bedrock import HttpError, RecordedRequest, Reply, running_fake_bedrock, text_reply

__all__ = ["moto_endpoint"]          # the fixture, imported so pytest finds it here

pytestmark = pytest.mark.timeout(90)


# ---------------------------------------------------------------------------- models

async def test_refused_and_unknown_models_each_say_what_to_do(moto_endpoint: str,
                                                              tmp_path: Path) -> None:
    config = config_dir(tmp_path / "config", {"frontDesk": GOOD, "vip": REFUSED,
                                               "lab": UNKNOWN})
    with trio.fail_after(RUN_TIMEOUT_S):
        async with running_fake_bedrock(tls=True, responder=one_token_or_refusal) as bedrock:
            env = base_env(tmp_path, STORE="sqlite", DATA_DIR=str(tmp_path / "data"),
                           CONFIG_DIR=str(config), STACK_USE_CASE="frontDesk",
                           **moto_env(moto_endpoint, tmp_path), **bedrock_env(bedrock))
            run = await run_check(env, tmp_path)
    lines = run.lines
    assert run.code == 1
    assert lines[f"Bedrock model {GOOD}"].status == "pass"
    refused = lines[f"Bedrock model {REFUSED}"]
    assert (refused.status, refused.detail) == ("fail",
                                                "access not granted (AccessDeniedException)")
    assert refused.advice[0].startswith(
        f"enable model access in the Bedrock console for {REFUSED} in us-east-1")
    assert refused.advice[1] == ("allow IAM bedrock:InvokeModelWithResponseStream on "
                                 f"arn:aws:bedrock:us-east-1::foundation-model/{REFUSED}")
    unknown = lines[f"Bedrock model {UNKNOWN}"]
    assert (unknown.status, unknown.detail) == (
        "fail", "wrong region or unknown model (ValidationException)")
    assert f"check that {UNKNOWN} (use case lab) is offered in us-east-1" in unknown.said
    assert "set AWS_REGION to the region where the model is enabled" in unknown.said
    assert unknown.advice[-1] == ("Bedrock said: ValidationException: The provided model "
                                  "identifier is invalid.")
    assert sorted(r.model_id for r in bedrock.requests) == sorted([GOOD, REFUSED, UNKNOWN])


async def test_a_model_a_use_case_thinks_with_is_asked_with_thinking(moto_endpoint: str,
                                                                     tmp_path: Path) -> None:
    """1 output token cannot hold a thinking budget: such a model is asked with the smallest
    budget (1024) under maxTokens 1025, and read to its first word only. A model that refuses
    thinking, or a MODEL_IDENTIFIER that cannot think, fails with what to do."""
    thinker, profile = "us.anthropic.claude-sonnet-4-20250514-v1:0", (
        "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3")
    config = tmp_path / "config"
    (config / "usecases").mkdir(parents=True)
    for name, model in {"frontDesk": thinker, "lab": profile, "vip": None}.items():
        data: dict[str, object] = {
            "name": name, "prompt": "You answer in one word.",
            "inference": {"max_tokens": 1400}, "model_options": {"thinking_budget_tokens": 1024}}
        if model is not None:
            data["model"] = model
        (config / "usecases" / f"{name}.yaml").write_text(yaml.safe_dump(data))
    bodies: dict[str, dict[str, object]] = {}

    def respond(request: RecordedRequest) -> Reply:
        bodies[request.model_id] = request.body
        if request.model_id == profile:         # its model cannot think
            return HttpError(400, "ValidationException", "The model returned the following "
                             "errors: thinking: Extra inputs are not permitted")
        return text_reply(["Hi", " there,", " how can I help?"])

    with trio.fail_after(RUN_TIMEOUT_S):
        async with running_fake_bedrock(tls=True, responder=respond) as bedrock:
            env = base_env(tmp_path, STORE="sqlite", DATA_DIR=str(tmp_path / "data"),
                           CONFIG_DIR=str(config), STACK_USE_CASE="frontDesk",
                           **moto_env(moto_endpoint, tmp_path), **bedrock_env(bedrock))
            run = await run_check(env, tmp_path)
    lines = run.lines
    assert run.code == 1
    assert lines[f"Bedrock model {thinker}"].status == "pass"
    assert bodies[thinker]["inferenceConfig"] == {"maxTokens": 1025}
    assert bodies[thinker]["additionalModelRequestFields"] == {
        "thinking": {"type": "enabled", "budget_tokens": 1024}}
    refused = lines[f"Bedrock model {profile}"]
    assert (refused.status, refused.detail) == ("fail",
                                                "refused with thinking on (ValidationException)")
    assert refused.advice[0].startswith("thinking is on in lab (model_options.")
    default = lines[f"Bedrock model {DEFAULT_MODEL}"]
    assert (default.status, default.detail) == ("fail", "cannot think (thinking is on in vip)")
    assert "set MODEL_IDENTIFIER or the use case's model" in default.said
    assert DEFAULT_MODEL not in bodies                  # not asked: it would not think


async def test_a_model_a_use_case_thinks_adaptively_with_is_asked_at_its_effort(
        moto_endpoint: str, tmp_path: Path) -> None:
    """A model with ``model_options.effort`` is asked with adaptive thinking at that effort
    and read to its first word. A model that refuses it, or a MODEL_IDENTIFIER that does not
    think adaptively, fails with what to do."""
    opus, profile = "us.anthropic.claude-opus-4-7", (
        "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3")
    config = tmp_path / "config"
    (config / "usecases").mkdir(parents=True)
    for name, model in {"frontDesk": opus, "lab": profile, "vip": None}.items():
        data: dict[str, object] = {
            "name": name, "prompt": "You answer in one word.",
            "inference": {"max_tokens": 1400}, "model_options": {"effort": "low"}}
        if model is not None:
            data["model"] = model
        (config / "usecases" / f"{name}.yaml").write_text(yaml.safe_dump(data))
    bodies: dict[str, dict[str, object]] = {}

    def respond(request: RecordedRequest) -> Reply:
        bodies[request.model_id] = request.body
        if request.model_id == profile:         # its model does not think adaptively
            return HttpError(400, "ValidationException", "The model returned the following "
                             "errors: thinking.type.adaptive is not supported for this model.")
        return text_reply(["Hi", " there,", " how can I help?"])

    with trio.fail_after(RUN_TIMEOUT_S):
        async with running_fake_bedrock(tls=True, responder=respond) as bedrock:
            env = base_env(tmp_path, STORE="sqlite", DATA_DIR=str(tmp_path / "data"),
                           CONFIG_DIR=str(config), STACK_USE_CASE="frontDesk",
                           **moto_env(moto_endpoint, tmp_path), **bedrock_env(bedrock))
            run = await run_check(env, tmp_path)
    lines = run.lines
    assert run.code == 1
    assert lines[f"Bedrock model {opus}"].status == "pass"
    assert bodies[opus]["additionalModelRequestFields"] == {"thinking": {"type": "adaptive"}}
    assert bodies[opus]["outputConfig"] == {"effort": "low"}
    refused = lines[f"Bedrock model {profile}"]
    assert (refused.status, refused.detail) == (
        "fail", "refused with adaptive thinking on (ValidationException)")
    assert refused.advice[0].startswith("adaptive thinking is on in lab (model_options.effort")
    default = lines[f"Bedrock model {DEFAULT_MODEL}"]
    assert (default.status, default.detail) == (
        "fail", "does not think adaptively (effort is set in vip)")
    assert "set MODEL_IDENTIFIER or the use case's model" in default.said
    assert DEFAULT_MODEL not in bodies                  # not asked: it would not think
