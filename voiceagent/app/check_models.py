"""``voiceagent check``: every model a use case names answers one ConverseStream call.

The call goes through ``BedrockLLM``, the backend the server streams with, so the endpoint,
credentials, TLS (AWS_CA_BUNDLE), proxy and timeout settings are the service's own. Each
distinct model id is asked, all of them at the same time: one user message, at most one
output token. The request carries what a call of the use case sends, built by the same code:
its ``inference`` and ``model_options`` as the call path turns them into the request (the
backend then takes out what a model it can name refuses), and its tools as the call offers
them (toolChoice left to the model, as a call leaves it), only shorter. So a deployment whose
every turn Bedrock would refuse fails here: a temperature sent to a model behind an
application-inference-profile ARN that takes none, a guardrail that does not exist, the cache
point of prompt caching (after a one-line system prompt) to a model that takes none, a tool
schema the model refuses (``check_refused_tools`` names the tool). A model that use cases ask
with different settings or tools is asked once per distinct set. With thinking on
(``model_options.thinking_budget_tokens``) it is asked with Bedrock's smallest budget (1024)
under maxTokens 1025, the answer read to its first word and then cut (a refusal comes before
any); with adaptive thinking (``model_options.effort``) it is asked at that effort, read the
same way. A refusal is told apart by its error code and words, so the advice says which key to
remove (prompt caching's 403 has the code of a model never enabled, but not its words),
whether to enable model access, grant an IAM action, fix the model id or region, wait out
throttling, or look at the network.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import boto3
import trio
from botocore.exceptions import BotoCoreError

from voiceagent.app.check_api_key import api_key_outcomes
from voiceagent.app.check_refused_tools import refused_tool_outcome
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
from voiceagent.llm.bedrock_errors import (
    ACCESS_HINT,
    CACHING_HINT,
    CREDENTIALS_HINT,
    refuses_caching,
)
from voiceagent.llm.bedrock_startup import check_bedrock_ready
from voiceagent.llm.effort import ADAPTIVE_MODELS, effort_support, why_no_effort
from voiceagent.llm.thinking import MIN_BUDGET_TOKENS, SUPPORTED, thinking_support, why_not
from voiceagent.settings import Settings
from voiceagent.threads import run_blocking
from voiceagent.usecases import UseCase

MODEL_TIMEOUT_S = 30.0               # connect + first event + Bedrock's own retries, with room
CHECK_CALL_SID = "voiceagent-check"
PROBE = {"role": "user", "content": [{"text": "Hi"}]}
# with prompt caching on, a call's cache point follows its static prompt: the probe has one
# too, so a model that takes none refuses here and not on every turn
PROBE_SYSTEM = ("You answer in one word.",)
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
# Bedrock's words when a model refuses a sampling parameter ("`temperature` is deprecated for
# this model", "`temperature` and `top_p` cannot both be specified for this model")
_SAMPLER_WORDS = re.compile(r"temperature|top_?p|top_?k", re.IGNORECASE)
_NOT_BOTH = re.compile(r"cannot both be specified", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class _Probe:
    """One request to ask a model: the settings and tools of the use cases that send them."""

    inference: InferenceConfig
    options: ModelOptions
    use_cases: tuple[str, ...]      # empty: only MODEL_IDENTIFIER names the model
    tools: tuple[Mapping[str, Any], ...] = ()   # the use cases' toolSpecs, in their order

    @property
    def thinks(self) -> bool:
        return self.options.thinking_budget_tokens is not None

    @property
    def adapts(self) -> bool:
        """Adaptive thinking at an effort (``model_options.effort``)."""
        return self.options.effort is not None

    @property
    def samplers(self) -> tuple[str, ...]:
        """The sampling keys these use cases set, as their files name them."""
        return tuple(f"inference.{key}" for key, value in (
            ("temperature", self.inference.temperature), ("top_p", self.inference.top_p))
            if value is not None)

    @property
    def settings(self) -> tuple[str, ...]:
        """The other keys that change what Bedrock is sent, and that it may refuse."""
        options = self.options
        return tuple(key for key, there in (
            ("inference.stop_sequences", bool(self.inference.stop_sequences)),
            ("model_options.latency_optimized", options.latency_optimized),
            ("model_options.guardrail_id", options.guardrail_id is not None)) if there)

    @property
    def named_by(self) -> str:
        return _named_by(self.use_cases)


@dataclass(frozen=True, slots=True)
class _Model:
    model_id: str
    probes: tuple[_Probe, ...]      # one per distinct set of settings the use cases send
    region: str
    account_id: str | None

    @property
    def use_cases(self) -> tuple[str, ...]:
        return tuple(name for probe in self.probes for name in probe.use_cases)

    @property
    def thinks(self) -> tuple[str, ...]:
        """The use cases that turn thinking on with it."""
        return tuple(name for probe in self.probes if probe.thinks for name in probe.use_cases)

    @property
    def adapts(self) -> tuple[str, ...]:
        """The use cases that think adaptively with it."""
        return tuple(name for probe in self.probes if probe.adapts for name in probe.use_cases)

    @property
    def named_by(self) -> str:
        return _named_by(self.use_cases)


def _named_by(use_cases: tuple[str, ...]) -> str:
    if not use_cases:
        return "MODEL_IDENTIFIER"
    return f"use case{'s' if len(use_cases) > 1 else ''} {', '.join(use_cases)}"


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
    models = [_Model(model_id, probes, region, ctx.account_id)
              for model_id, probes in probes_by_model(use_cases, settings).items()]
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
    return [*api_key_outcomes(), *outcomes]


def probes_by_model(use_cases: Iterable[UseCase], settings: Settings
                    ) -> dict[str, tuple[_Probe, ...]]:
    """Each distinct model id (MODEL_IDENTIFIER for the use cases that name none) and the
    distinct requests its use cases send, tools included (a tool schema Bedrock refuses
    fails every turn as surely as a setting does); with no use case at all,
    MODEL_IDENTIFIER alone, with the default settings and no tools."""
    models: dict[str, dict[tuple[InferenceConfig, ModelOptions, str], list[str]]] = {}
    tools: dict[str, tuple[Mapping[str, Any], ...]] = {}
    for use_case in use_cases:
        # what actors.model_round puts in every request of the use case's calls
        inference, options = probe_settings(use_case.inference.to_config(),
                                             use_case.model_options.to_options())
        specs = use_case.tool_specs()
        tools_key = json.dumps(specs, sort_keys=True, default=str)
        tools.setdefault(tools_key, specs)
        model_id = use_case.model or settings.model_identifier
        models.setdefault(model_id, {}).setdefault(
            (inference, options, tools_key), []).append(use_case.name)
    if not models:
        return {settings.model_identifier: (
            _Probe(*probe_settings(InferenceConfig(), ModelOptions()), ()),)}
    return {model_id: tuple(_Probe(inference, options, tuple(names), tools[tools_key])
                            for (inference, options, tools_key), names in shapes.items())
            for model_id, shapes in models.items()}


def probe_settings(inference: InferenceConfig, options: ModelOptions
                   ) -> tuple[InferenceConfig, ModelOptions]:
    """A call's request settings, only shorter: one output token, or with thinking on
    Bedrock's smallest budget under maxTokens one above it. The rest (samplers, stop
    sequences, latency, guardrail, thinking) is sent as the call sends it: any of it can be
    what Bedrock refuses on every turn."""
    if options.thinking_budget_tokens is None:
        return replace(inference, max_tokens=1), options
    return (replace(inference, max_tokens=MIN_BUDGET_TOKENS + 1),
            replace(options, thinking_budget_tokens=MIN_BUDGET_TOKENS))


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
    if model.thinks and thinking_support(model.model_id) is False:
        # MODEL_IDENTIFIER: the server sends it without thinking, so asking proves nothing
        return failed(name, f"cannot think (thinking is on in {', '.join(model.thinks)})",
                      f"{why_not(model.model_id)}: the server sends it without thinking",
                      f"set MODEL_IDENTIFIER or the use case's model to one that can "
                      f"({SUPPORTED}), or remove model_options.thinking_budget_tokens")
    if model.adapts and effort_support(model.model_id) is False:
        # MODEL_IDENTIFIER: the server sends it without the effort, so asking proves nothing
        return failed(name, f"does not think adaptively (effort is set in "
                      f"{', '.join(model.adapts)})",
                      f"{why_no_effort(model.model_id)}: the server sends it without",
                      f"set MODEL_IDENTIFIER or the use case's model to one that does "
                      f"({ADAPTIVE_MODELS}), or remove model_options.effort")
    started = trio.current_time()
    for probe in model.probes:
        use_case = probe.use_cases[0] if probe.use_cases else CHECK_CALL_SID
        request = LLMRequest(call_sid=CHECK_CALL_SID, use_case=use_case,
                             model_id=model.model_id, messages=(PROBE,),
                             system=PROBE_SYSTEM if probe.options.prompt_caching else (),
                             tools=probe.tools, inference=probe.inference,
                             options=probe.options)
        try:
            with trio.fail_after(MODEL_TIMEOUT_S):
                async with llm.stream(request) as events:
                    async for _ in events:
                        if probe.thinks or probe.adapts:
                            break       # accepted: the rest of its answer is not paid for
        except trio.TooSlowError:
            return failed(name, f"no answer within {MODEL_TIMEOUT_S:g} s", NETWORK_ADVICE)
        except LLMError as err:
            return _model_failure(name, model, probe, err)
    took = trio.current_time() - started
    return passed(name, f"answers in {model.region} ({took:.1f} s; {model.named_by}, "
                        f"from {source})")


def _model_failure(name: str, model: _Model, probe: _Probe, err: LLMError) -> Outcome:
    """``err`` as what to do about it, by its code (and, for a refused request, its words:
    which of the use cases' keys Bedrock refused)."""
    code, where = err.code, f"{model.model_id} in {model.region}"
    not_bedrock = code in _NETWORK or code in SSO_CODES      # it never answered
    said = ("error: " if not_bedrock else "Bedrock said: ") + str(err).removesuffix(
        f"; {ACCESS_HINT}").removesuffix(f"; {CREDENTIALS_HINT}").removesuffix(
        f"; {CACHING_HINT}")[:300]
    if (code == "AccessDeniedException" and probe.options.prompt_caching
            and refuses_caching(str(err))):
        return _caching_refused(name, model, probe, code, said)
    if code == "ValidationException" and probe.tools and (refused := refused_tool_outcome(
            name, str(err), probe.tools, probe.use_cases, said)) is not None:
        return refused
    if code == "AccessDeniedException":
        return failed(name, f"access not granted ({code})",
                      f"enable model access in the Bedrock console for {where} (Bedrock "
                      "console > Model access; for a cross-region profile, in each region "
                      "it routes to)",
                      f"allow IAM bedrock:InvokeModelWithResponseStream on "
                      f"{' and '.join(_resources(model))}", said)
    if code == "ValidationException" and probe.samplers and _SAMPLER_WORDS.search(str(err)):
        return _samplers_refused(name, model, probe, code, said, both=bool(
            _NOT_BOTH.search(str(err))))
    if code == "ValidationException" and probe.thinks:
        return failed(name, f"refused with thinking on ({code})",
                      f"thinking is on in {', '.join(probe.use_cases)} "
                      f"(model_options.thinking_budget_tokens); if Bedrock's words are "
                      f"about thinking, {model.model_id} cannot think with a budget: name a "
                      f"model that can ({SUPPORTED}) or remove the key", said)
    if code == "ValidationException" and probe.adapts:
        return failed(name, f"refused with adaptive thinking on ({code})",
                      f"adaptive thinking is on in {', '.join(probe.use_cases)} "
                      f"(model_options.effort: {probe.options.effort}); if Bedrock's words "
                      f"are about thinking or effort, {model.model_id} does not take it: name "
                      f"a model that does ({ADAPTIVE_MODELS}), another effort, or remove the "
                      "key", said)
    if code in ("ValidationException", "ResourceNotFoundException"):
        return failed(name, f"wrong region or unknown model ({code})",
                      f"check that {model.model_id} ({model.named_by}) is offered in "
                      f"{model.region}: Bedrock console > Model catalog, or Cross-region "
                      "inference for profile ids such as us.<model id>",
                      "some models are invoked only through an inference profile: use its id "
                      "(us.<model id>) or ARN instead of the bare model id",
                      "or set AWS_REGION to the region where the model is enabled",
                      *_settings_advice(probe), said)
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


def _samplers_refused(name: str, model: _Model, probe: _Probe, code: str, said: str, *,
                      both: bool) -> Outcome:
    """A sampling parameter the model refuses, sent because the id cannot say which model
    runs (an application-inference-profile ARN): every turn of these use cases fails."""
    where = f"use case {', '.join(probe.use_cases)}" if probe.use_cases else "MODEL_IDENTIFIER"
    if both:
        fix = (f"set only one of inference.temperature and inference.top_p in {where} "
               f"(usually temperature): {model.model_id} refuses the two together")
    else:
        fix = (f"remove {' and '.join(probe.samplers)} from {where}: the model behind "
               f"{model.model_id} takes no sampling parameters (Claude Opus 4.7 and later)")
    return failed(name, f"refuses the sampling parameters of {probe.named_by} ({code}): "
                        "every turn would fail", fix,
                  "the server sends what the use case sets when the model id does not say "
                  "which model runs (an application-inference-profile ARN)", said)


def _caching_refused(name: str, model: _Model, probe: _Probe, code: str, said: str
                     ) -> Outcome:
    """A cache point sent to a model that takes none: Bedrock answers 403, as for a model
    never enabled, but enabling access or granting IAM actions changes nothing."""
    advice = [f"turn model_options.prompt_caching off in {probe.named_by}: Bedrock takes no "
              f"cache points from {model.model_id} in {model.region}"]
    if model.model_id.startswith("arn:"):
        advice.append("or name the model by its model id (or inference-profile id) instead "
                      "of the ARN, if it is one that takes them")
    return failed(name, f"refuses prompt caching ({code}): every turn would fail", *advice,
                  "model access and IAM are not the cause: Bedrock's words are about "
                  "prompt caching", said)


def _settings_advice(probe: _Probe) -> list[str]:
    """For a refused request that carried use case settings: they may be what was refused."""
    if not probe.settings:
        return []
    return [f"or Bedrock refused a setting {probe.named_by} sends with every request "
            f"({', '.join(probe.settings)}): if its words are about one, fix or remove it"]


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
