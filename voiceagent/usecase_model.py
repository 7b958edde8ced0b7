"""A use case's model settings: ``inference`` (Converse's inferenceConfig) and
``model_options`` (latency, prompt caching, a guardrail), checked against what Bedrock
accepts, so a value it refuses fails at load instead of on every turn of every call.

Split from ``usecases``, which re-exports them.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, ValidationInfo, field_validator, model_validator

from voiceagent.llm.base import InferenceConfig, ModelOptions
from voiceagent.llm.samplers import one_sampler_only
from voiceagent.usecase_relay import Strict, key_problem, stored

# Bedrock's patterns (GuardrailStreamConfiguration): anything else fails every request
GUARDRAIL_ID = re.compile(r"^([a-z0-9]+|arn:aws(-[^:]+)?:bedrock:[a-z0-9-]{1,20}:[0-9]{12}:"
                          r"guardrail/[a-z0-9]+)$")
GUARDRAIL_VERSION = re.compile(r"^([1-9][0-9]{0,7}|DRAFT)$")


class InferenceSettings(Strict):
    max_tokens: int = Field(default=300, ge=1, le=8192)
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop_sequences: tuple[Annotated[str, Field(min_length=1)], ...] = ()   # Bedrock: 1+

    def to_config(self) -> InferenceConfig:
        return InferenceConfig(self.max_tokens, self.temperature, self.top_p,
                               self.stop_sequences)


def check_samplers(model: str | None, inference: InferenceSettings) -> None:
    """Refuse (``key_problem``) temperature with top_p for a model that refuses the pair: it
    would fail every turn. A use case that names no model gets MODEL_IDENTIFIER, which is
    not known here."""
    both = inference.temperature is not None and inference.top_p is not None
    if both and model is not None and one_sampler_only(model):
        raise key_problem(("inference", "top_p"), f"{model} refuses temperature and top_p "
                          "together (a ValidationException on every turn); set only one of "
                          "them, usually temperature")


class ModelOptionSettings(Strict):
    latency_optimized: bool = False
    prompt_caching: bool = False
    guardrail_id: str | None = None
    guardrail_version: str | None = None

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

    def to_options(self) -> ModelOptions:
        return ModelOptions(self.latency_optimized, self.prompt_caching, self.guardrail_id,
                            self.guardrail_version)
