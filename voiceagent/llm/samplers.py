"""Claude models that refuse ``temperature`` and ``top_p`` in one request ("`temperature` and
`top_p` cannot both be specified for this model"): Opus 4.1, the 4.5 and 4.6 families, and
later (Anthropic's migration guides). Sent both, they fail every turn with a
ValidationException, and the caller hears an apology each time.

A use case file that names such a model with both is refused at load (``usecase_model``);
the request is changed for the rest: a use case stored before that check, or one that names
no model and runs under such a ``MODEL_IDENTIFIER``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger("voiceagent.llm.bedrock")

# The minor version is one digit: claude-opus-4-20250514 is a date, not 4.2.
_ONE_SAMPLER = re.compile(r"anthropic\.claude-(opus-4-[1-9]|(sonnet|haiku)-4-[5-9])(?![0-9])")
_warned: set[str] = set()           # model ids told about, once per process


def one_sampler_only(model_id: str) -> bool:
    """Whether ``model_id`` refuses temperature and top_p together."""
    return _ONE_SAMPLER.search(model_id) is not None


def one_sampler(inference: dict[str, Any], model_id: str, use_case: str) -> None:
    """Take ``topP`` out of a Converse ``inferenceConfig`` that also has ``temperature``,
    when ``model_id`` refuses the pair; temperature, the setting people tune, is sent."""
    if "topP" not in inference or "temperature" not in inference:
        return
    if not one_sampler_only(model_id):
        return
    del inference["topP"]
    if model_id not in _warned:
        _warned.add(model_id)
        log.warning("top_p not sent: the model refuses it with temperature", extra={
            "model_id": model_id, "use_case": use_case,
            "fix": "set only one of inference.temperature and inference.top_p"})
