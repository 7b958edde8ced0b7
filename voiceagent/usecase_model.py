"""A use case's model settings: ``inference`` (Converse's inferenceConfig) and
``model_options`` (latency, prompt caching, a guardrail, extended thinking), checked against
what Bedrock accepts, so a value it refuses fails at load instead of on every turn of every
call.

Split from ``usecases``, which re-exports them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from voiceagent.llm.base import InferenceConfig, ModelOptions
from voiceagent.llm.effort import (
    ADAPTIVE_MODELS,
    EFFORTS,
    effort_support,
    level_problem,
    why_no_effort,
)
from voiceagent.llm.samplers import no_samplers, one_sampler_only
from voiceagent.llm.thinking import (
    MIN_BUDGET_TOKENS,
    MIN_TOP_P,
    SUPPORTED,
    thinking_support,
    why_not,
)
from voiceagent.usecase_relay import Strict, key_problem, stored

# Bedrock's patterns (GuardrailStreamConfiguration): anything else fails every request
GUARDRAIL_ID = re.compile(r"^([a-z0-9]+|arn:aws(-[^:]+)?:bedrock:[a-z0-9-]{1,20}:[0-9]{12}:"
                          r"guardrail/[a-z0-9]+)$")
GUARDRAIL_VERSION = re.compile(r"^([1-9][0-9]{0,7}|DRAFT)$")
MAX_TOKENS = 8192
THINKING = ("model_options", "thinking_budget_tokens")
EFFORT = ("model_options", "effort")


class InferenceSettings(Strict):
    max_tokens: int = Field(default=300, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop_sequences: tuple[Annotated[str, Field(min_length=1)], ...] = ()   # Bedrock: 1+

    def to_config(self) -> InferenceConfig:
        return InferenceConfig(self.max_tokens, self.temperature, self.top_p,
                               self.stop_sequences)


def check_samplers(model: str | None, inference: InferenceSettings) -> None:
    """Refuse (``key_problem``) a sampling parameter for a model that takes none, and
    temperature with top_p for a model that refuses the pair: either would fail every turn.
    A use case that names no model gets MODEL_IDENTIFIER, which is not known here."""
    if model is not None and no_samplers(model):
        key = "temperature" if inference.temperature is not None else "top_p"
        if getattr(inference, key) is not None:
            raise key_problem(("inference", key), f"{model} takes no sampling parameters "
                              "(Claude Opus 4.7 and the models after it refuse temperature, "
                              "top_p and top_k: a ValidationException on every turn); remove "
                              "inference.temperature and inference.top_p")
        return
    both = inference.temperature is not None and inference.top_p is not None
    if both and model is not None and one_sampler_only(model):
        raise key_problem(("inference", "top_p"), f"{model} refuses temperature and top_p "
                          "together (a ValidationException on every turn); set only one of "
                          "them, usually temperature")


def check_thinking(model: str | None, inference: InferenceSettings,
                   options: ModelOptionSettings, keypad_tools: Mapping[str, str]) -> None:
    """Refuse (``key_problem``) what Bedrock refuses with a thinking budget, on every turn:
    a model that cannot think, a budget not below max_tokens, a temperature other than 1, a
    top_p below 0.95; and a keypad handler's tool (``keypad_tools``: keys -> tool), whose
    round has no thinking, so the model's next round is refused. A model the id cannot tell
    (an application-inference-profile ARN, or none: MODEL_IDENTIFIER) is left to Bedrock."""
    budget = options.thinking_budget_tokens
    if budget is None:
        return
    if model is not None and thinking_support(model) is False:
        instead = ("; to think with it, write model_options.effort (adaptive thinking) "
                   "instead" if effort_support(model) else "")
        raise key_problem(THINKING, f"{why_not(model)}; name a model that can think "
                          f"({SUPPORTED}) or remove thinking_budget_tokens{instead}")
    if inference.max_tokens <= budget:
        raise key_problem(("inference", "max_tokens"), "max_tokens counts the thinking too, "
                          f"so it must be above model_options.thinking_budget_tokens ({budget})"
                          f"; write max_tokens: {min(budget + 300, MAX_TOKENS)} (the budget "
                          "plus the spoken reply's tokens) or lower the budget")
    if inference.temperature is not None and inference.temperature != 1:
        raise key_problem(("inference", "temperature"), "with thinking on "
                          "(model_options.thinking_budget_tokens) Bedrock refuses any "
                          "temperature but 1; remove inference.temperature")
    if inference.top_p is not None and inference.top_p < MIN_TOP_P:
        raise key_problem(("inference", "top_p"), "with thinking on "
                          "(model_options.thinking_budget_tokens) top_p must be between "
                          f"{MIN_TOP_P} and 1; remove inference.top_p or raise it")
    if keypad_tools:
        keys, tool = next(iter(keypad_tools.items()))
        raise key_problem(("dtmf", "handlers", keys, "tool"), f"a keypad handler's tool "
                          f"({tool}) runs without the model's thinking, and with thinking on "
                          "(model_options.thinking_budget_tokens) Bedrock refuses the "
                          "model's answer to its result (a tool round must start with the "
                          "model's thinking); let the model call the tool instead (to_model: "
                          "true, and say in the prompt what the key is for), or turn "
                          "thinking off")


def check_effort(model: str | None, options: ModelOptionSettings) -> None:
    """Refuse (``key_problem``) an effort Bedrock refuses on every turn: with a budget (a
    request thinks one way), for a model that does not think adaptively, or at a level the
    model does not offer. A model the id cannot tell is left to Bedrock, as for a budget."""
    effort = options.effort
    if effort is None:
        return
    if options.thinking_budget_tokens is not None:
        raise key_problem(EFFORT, "effort turns on adaptive thinking, and "
                          "thinking_budget_tokens thinking with a budget: a model takes one "
                          f"of them; keep effort for {ADAPTIVE_MODELS}, "
                          "thinking_budget_tokens for the models before them")
    if model is not None and effort_support(model) is False:
        raise key_problem(EFFORT, f"{why_no_effort(model)}; name one of them or remove "
                          "effort (a budget, thinking_budget_tokens, is how the others think)")
    if model is not None and (problem := level_problem(model, effort)) is not None:
        raise key_problem(EFFORT, problem)


class ModelOptionSettings(Strict):
    latency_optimized: bool = False
    prompt_caching: bool = False
    guardrail_id: str | None = None
    guardrail_version: str | None = None
    # off by default: the model thinks before its first word, which the caller waits through
    thinking_budget_tokens: int | None = Field(default=None, le=MAX_TOKENS - 1)
    # adaptive thinking (the models that think only so): off unless set; low is the fastest
    effort: str | None = None

    @field_validator("effort")
    @classmethod
    def _effort_ok(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not stored(info) and value not in EFFORTS:
            raise ValueError(f"effort is one of {', '.join(EFFORTS)} (Converse's "
                             "outputConfig.effort): low for the fastest first word, or leave "
                             "effort out")
        return value

    @field_validator("thinking_budget_tokens")
    @classmethod
    def _budget_ok(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and not stored(info) and value < MIN_BUDGET_TOKENS:
            raise ValueError(f"Bedrock's smallest thinking budget is {MIN_BUDGET_TOKENS} "
                             f"tokens: write {MIN_BUDGET_TOKENS} or more, or leave "
                             "thinking_budget_tokens out (no thinking, the fastest for voice)")
        return value

    @field_validator("guardrail_id")
    @classmethod
    def _guardrail_id_ok(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not stored(info) and not GUARDRAIL_ID.match(value):
            raise ValueError("not a Bedrock guardrail id (lower-case letters and digits) "
                             "or guardrail ARN")
        return value

    @field_validator("guardrail_version")
    @classmethod
    def _guardrail_version_ok(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not stored(info) and not GUARDRAIL_VERSION.match(value):
            raise ValueError("a guardrail version is a number such as \"1\" (quoted) or DRAFT")
        return value

    @model_validator(mode="after")
    def _version_needs_id(self, info: ValidationInfo) -> ModelOptionSettings:
        if self.guardrail_version is not None and self.guardrail_id is None and not stored(
                info):
            raise key_problem(("guardrail_version",), "a guardrail version needs "
                               "guardrail_id (which guardrail)")
        return self

    @model_serializer(mode="wrap")
    def _without_unset_thinking(self, handler: SerializerFunctionWrapHandler
                                ) -> dict[str, Any]:
        """No ``thinking_budget_tokens`` or ``effort`` key when it is off: a release from
        before it (a rolling deploy, a rollback) reads the stored item as it always did, where
        a ``null`` made its strict schema refuse the item's whole ``voiceagent`` attribute."""
        data: dict[str, Any] = handler(self)
        for key in ("thinking_budget_tokens", "effort"):
            if getattr(self, key) is None:
                data.pop(key, None)
        return data

    def to_options(self) -> ModelOptions:
        return ModelOptions(self.latency_optimized, self.prompt_caching, self.guardrail_id,
                            self.guardrail_version, self.thinking_budget_tokens, self.effort)
