"""What Claude models refuse of the sampling parameters (temperature, top_p; Converse has no
top_k but in ``additionalModelRequestFields``, which voiceagent does not send).

Claude Opus 4.1 and the 4.5 and 4.6 families refuse temperature and top_p in one request
("`temperature` and `top_p` cannot both be specified for this model"). Claude Opus 4.7 and
the models after it (Opus 4.8, the Claude 5 models, Mythos, Fable: ``thinking.adaptive_only``)
refuse any of them ("`temperature` is deprecated for this model"); Bedrock relays both as a
ValidationException, not ignoring the parameter, so every turn fails and the caller hears an
apology each time.

A use case file that names such a model with what it refuses is refused at load
(``usecase_model``); the request is changed for the rest: a use case stored before that
check, or one that names no model and runs under such a ``MODEL_IDENTIFIER``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from voiceagent.llm.thinking import adaptive_only
from voiceagent.logs import warn_once

log = logging.getLogger("voiceagent.llm.bedrock")

# The minor version is one digit: claude-opus-4-20250514 is a date, not 4.2.
_ONE_SAMPLER = re.compile(r"anthropic\.claude-(opus-4-[1-9]|(sonnet|haiku)-4-[5-9])(?![0-9])")
_SAMPLERS = ("temperature", "topP")         # inferenceConfig's names


def one_sampler_only(model_id: str) -> bool:
    """Whether ``model_id`` refuses temperature and top_p together."""
    return _ONE_SAMPLER.search(model_id) is not None


def no_samplers(model_id: str) -> bool:
    """Whether ``model_id`` refuses temperature, top_p and top_k altogether. False for an
    application-inference-profile ARN, which does not say which model runs."""
    return adaptive_only(model_id)


def fit_samplers(inference: dict[str, Any], model_id: str, use_case: str) -> None:
    """Take out of a Converse ``inferenceConfig`` the sampling parameters ``model_id`` refuses:
    all of them for a model that takes none, else ``topP`` when it refuses the pair
    (temperature, the setting people tune, is sent)."""
    if no_samplers(model_id):
        dropped = [name for name in _SAMPLERS if inference.pop(name, None) is not None]
        if dropped:
            _warn_once(model_id, "temperature and top_p not sent: the model takes none",
                       use_case, "remove inference.temperature and inference.top_p")
        return
    if "topP" not in inference or "temperature" not in inference:
        return
    if not one_sampler_only(model_id):
        return
    del inference["topP"]
    _warn_once(model_id, "top_p not sent: the model refuses it with temperature", use_case,
               "set only one of inference.temperature and inference.top_p")


def _warn_once(model_id: str, message: str, use_case: str, fix: str) -> None:
    warn_once(log, ("samplers", model_id), message, model_id=model_id, use_case=use_case,
              fix=fix)
