"""``voiceagent check``: every model a use case names answers one ConverseStream call.

The call goes through ``BedrockLLM``, the backend the server streams with, so the endpoint,
credentials, TLS (AWS_CA_BUNDLE), proxy and timeout settings are the service's own. Each
distinct model id is asked once, all of them at the same time: one user message, at most one
output token. A model that a use case thinks with (``model_options.thinking_budget_tokens``)
is asked with thinking on, so that a model or profile that refuses it fails here, not on every
turn: Bedrock's smallest budget (1024) under maxTokens 1025, the answer read to its first word
and then cut (a refusal comes before any). A model a use case thinks adaptively with
(``model_options.effort``) is asked so too, at that effort, read the same way. A refusal is
told apart by its error code, so the advice says whether to enable model access, grant an IAM
action, fix the model id or region, wait out throttling, or look at the network.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial

import boto3
import trio
from botocore.exceptions import BotoCoreError

from voiceagent.app.check_steps import (
    CREDENTIALS_ADVICE,
    NETWORK_ADVICE,
    SSO_CODES,
    CheckContext,
    Outcome,
    failed,
    passed,
    skipped,
    sso_advice,
)
from voiceagent.errors import LLMError, ModelThrottled, ModelUnavailable
from voiceagent.llm.base import InferenceConfig, LLMRequest, ModelOptions
from voiceagent.llm.bedrock import BedrockLLM
from voiceagent.llm.bedrock_errors import ACCESS_HINT, CREDENTIALS_HINT
from voiceagent.llm.bedrock_startup import check_bedrock_ready
from voiceagent.llm.effort import ADAPTIVE_MODELS, effort_support, why_no_effort
from voiceagent.llm.thinking import MIN_BUDGET_TOKENS, SUPPORTED, thinking_support, why_not
from voiceagent.settings import Settings
from voiceagent.threads import run_blocking
from voiceagent.usecases import UseCase

MODEL_TIMEOUT_S = 30.0               # connect + first event + Bedrock's own retries, with room
CHECK_CALL_SID = "voiceagent-check"
PROBE = {"role": "user", "content": [{"text": "Hi"}]}
NAME = "Bedrock models"

# system-defined (cross-region) inference profiles: a geography in front of the model id
_PROFILE_ID = re.compile(r"^(us|eu|apac|us-gov|global|jp|au|ca)\.(?P<model>.+)$")
_NETWORK = frozenset({"ConnectTimeout", "ReadTimeout", "DNSError", "ConnectionRefused",
                      "ConnectionClosed", "TLSError", "TLSCertificateError", "ProxyRefused",
                      "InvalidProxyConfiguration", "InvalidEndpointConfiguration"})
_CREDENTIALS = frozenset({"NoCredentials", "ExpiredTokenException", "ExpiredToken",
                          "UnrecognizedClientException", "InvalidSignatureException",
                          "IncompleteSignatureException", "MissingAuthenticationTokenException",
                          "InvalidClientTokenId", "SignatureDoesNotMatch"})
_THROTTLED = frozenset({"ThrottlingException", "ServiceQuotaExceededException",
                        "TooManyRequestsException"})


@dataclass(frozen=True, slots=True)
class _Model:
    model_id: str
    use_cases: tuple[str, ...]      # empty: only MODEL_IDENTIFIER names it
    region: str
    account_id: str | None
    thinks: tuple[str, ...] = ()    # the use cases that turn thinking on with it
    effort: str | None = None       # the effort the first use case thinking adaptively sets
    adapts: tuple[str, ...] = ()    # the use cases that think adaptively with it

    @property
    def named_by(self) -> str:
        if not self.use_cases:
            return "MODEL_IDENTIFIER"
        return f"use case{'s' if len(self.use_cases) > 1 else ''} {', '.join(self.use_cases)}"


async def model_checks(ctx: CheckContext) -> list[Outcome]:
    settings = ctx.settings
    if settings.llm == "scripted":
        return [skipped(NAME, "LLM=scripted: the offline model answers, Bedrock is not called")]
    if ctx.use_cases is None:
        return [skipped(NAME, "needs readable use cases and tools, see above")]
    use_cases, source = ctx.use_cases, ctx.use_cases_from
    problems, region = await run_blocking(partial(_ready, settings), limiter=ctx.limiter)
    if problems:
        return [failed(NAME, "Bedrock cannot be called with these settings", *problems)]
    thinkers = {u.name for u in use_cases if u.model_options.thinking_budget_tokens}
    efforts = {u.name: u.model_options.effort for u in use_cases if u.model_options.effort}
    models = [_Model(model_id, tuple(names), region, ctx.account_id,
                     tuple(n for n in names if n in thinkers),
                     next((efforts[n] for n in names if n in efforts), None),
                     tuple(n for n in names if n in efforts))
              for model_id, names in models_by_id(use_cases, settings).items()]
    outcomes: list[Outcome] = [skipped(NAME, "not checked")] * len(models)
    llm = BedrockLLM.from_settings(settings, max_concurrent_streams=len(models),
                                   check_history=False)
    try:
        async with trio.open_nursery() as nursery:
            for index, model in enumerate(models):
                nursery.start_soon(_ask_into, llm, model, source, outcomes, index)
    finally:
        with trio.CancelScope(shield=True):
            await llm.aclose()
    return outcomes


def models_by_id(use_cases: Iterable[UseCase], settings: Settings) -> dict[str, list[str]]:
    """Each distinct model id and the use cases that use it (MODEL_IDENTIFIER for those that
    name none); with no use case at all, MODEL_IDENTIFIER alone."""
    models: dict[str, list[str]] = {}
    for use_case in use_cases:
        models.setdefault(use_case.model or settings.model_identifier, []).append(use_case.name)
    return models or {settings.model_identifier: []}


def _ready(settings: Settings) -> tuple[list[str], str]:
    """Worker thread: the server's own start-up check, and the region Bedrock is called in."""
    problems = check_bedrock_ready(settings)
    try:
        region = boto3.session.Session(region_name=settings.aws_region).region_name
    except BotoCoreError:               # reported by check_bedrock_ready already
        region = None
    return problems, region or "<region>"


async def _ask_into(llm: BedrockLLM, model: _Model, source: str, outcomes: list[Outcome],
                    index: int) -> None:
    outcomes[index] = await _ask(llm, model, source)


async def _ask(llm: BedrockLLM, model: _Model, source: str) -> Outcome:
    name = f"Bedrock model {model.model_id}"
    use_case = model.use_cases[0] if model.use_cases else CHECK_CALL_SID
    inference, options = InferenceConfig(max_tokens=1), ModelOptions()
    if model.thinks:
        if thinking_support(model.model_id) is False:   # MODEL_IDENTIFIER: sent without it
            return failed(name, f"cannot think (thinking is on in {', '.join(model.thinks)})",
                          f"{why_not(model.model_id)}: the server sends it without thinking",
                          f"set MODEL_IDENTIFIER or the use case's model to one that can "
                          f"({SUPPORTED}), or remove model_options.thinking_budget_tokens")
        inference = InferenceConfig(max_tokens=MIN_BUDGET_TOKENS + 1)
        options = ModelOptions(thinking_budget_tokens=MIN_BUDGET_TOKENS)
    elif model.effort is not None:
        if effort_support(model.model_id) is False:     # MODEL_IDENTIFIER: sent without it
            return failed(name, f"does not think adaptively (effort is set in "
                          f"{', '.join(model.adapts)})",
                          f"{why_no_effort(model.model_id)}: the server sends it without",
                          f"set MODEL_IDENTIFIER or the use case's model to one that does "
                          f"({ADAPTIVE_MODELS}), or remove model_options.effort")
        options = ModelOptions(effort=model.effort)
    request = LLMRequest(call_sid=CHECK_CALL_SID, use_case=use_case, model_id=model.model_id,
                         system=(), messages=(PROBE,), inference=inference, options=options)
    started = trio.current_time()
    try:
        with trio.fail_after(MODEL_TIMEOUT_S):
            async with llm.stream(request) as events:
                async for _ in events:
                    if model.thinks or model.adapts:
                        break           # accepted: the rest of its answer is not paid for
    except trio.TooSlowError:
        return failed(name, f"no answer within {MODEL_TIMEOUT_S:g} s", NETWORK_ADVICE)
    except LLMError as err:
        return _model_failure(name, model, err)
    took = trio.current_time() - started
    return passed(name, f"answers in {model.region} ({took:.1f} s; {model.named_by}, "
                        f"from {source})")


def _model_failure(name: str, model: _Model, err: LLMError) -> Outcome:
    """``err`` as what to do about it, by its code."""
    code, where = err.code, f"{model.model_id} in {model.region}"
    not_bedrock = code in _NETWORK or code in SSO_CODES      # it never answered
    said = ("error: " if not_bedrock else "Bedrock said: ") + str(err).removesuffix(
        f"; {ACCESS_HINT}").removesuffix(f"; {CREDENTIALS_HINT}")[:300]
    if code == "AccessDeniedException":
        return failed(name, f"access not granted ({code})",
                      f"enable model access in the Bedrock console for {where} (Bedrock "
                      "console > Model access; for a cross-region profile, in each region "
                      "it routes to)",
                      f"allow IAM bedrock:InvokeModelWithResponseStream on "
                      f"{' and '.join(_resources(model))}", said)
    if code == "ValidationException" and model.thinks:
        return failed(name, f"refused with thinking on ({code})",
                      f"thinking is on in {', '.join(model.thinks)} "
                      f"(model_options.thinking_budget_tokens); if Bedrock's words are "
                      f"about thinking, {model.model_id} cannot think with a budget: name a "
                      f"model that can ({SUPPORTED}) or remove the key", said)
    if code == "ValidationException" and model.adapts:
        return failed(name, f"refused with adaptive thinking on ({code})",
                      f"adaptive thinking is on in {', '.join(model.adapts)} "
                      f"(model_options.effort: {model.effort}); if Bedrock's words are about "
                      f"thinking or effort, {model.model_id} does not take it: name a model "
                      f"that does ({ADAPTIVE_MODELS}), another effort, or remove the key",
                      said)
    if code in ("ValidationException", "ResourceNotFoundException"):
        return failed(name, f"wrong region or unknown model ({code})",
                      f"check that {model.model_id} ({model.named_by}) is offered in "
                      f"{model.region}: Bedrock console > Model catalog, or Cross-region "
                      "inference for profile ids such as us.<model id>",
                      "some models are invoked only through an inference profile: use its id "
                      "(us.<model id>) or ARN instead of the bare model id",
                      "or set AWS_REGION to the region where the model is enabled", said)
    if isinstance(err, ModelThrottled) or code in _THROTTLED:
        return failed(name, f"throttled ({code}), also after retries",
                      "try again in a minute; if it persists, raise the model's quota: "
                      f"Service Quotas console > Amazon Bedrock, tokens and requests per "
                      f"minute for {where}", said)
    if code in _CREDENTIALS:
        return failed(name, f"AWS refused the credentials ({code})", CREDENTIALS_ADVICE, said)
    if code in SSO_CODES:           # not Bedrock's fault: the profile's sign-in is missing
        return failed(name, f"no AWS credentials: SSO sign-in missing or expired ({code})",
                      sso_advice(), said)
    if code in _NETWORK:
        return failed(name, f"network: cannot reach Bedrock ({code})", NETWORK_ADVICE,
                      "AWS_ENDPOINT_URL_BEDROCK_RUNTIME, when set, must point at a running "
                      "endpoint", said)
    if isinstance(err, ModelUnavailable):
        return failed(name, f"Bedrock is unavailable ({code})",
                      "try again in a minute; the AWS Health Dashboard shows incidents", said)
    return failed(name, f"the call failed ({code})", said)


def _resources(model: _Model) -> list[str]:
    """The ARNs an IAM policy must allow for ``model``."""
    model_id, region = model.model_id, model.region
    if model_id.startswith("arn:"):
        return [model_id]
    profile = _PROFILE_ID.match(model_id)
    if profile is None:
        return [f"arn:aws:bedrock:{region}::foundation-model/{model_id}"]
    return [f"arn:aws:bedrock:{region}:{model.account_id or '<account>'}:inference-profile/"
            f"{model_id}", f"arn:aws:bedrock:*::foundation-model/{profile['model']}"]
