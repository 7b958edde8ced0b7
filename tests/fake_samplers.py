"""What Claude models refuse of the sampling parameters, as Bedrock answers it (HTTP 400
ValidationException, the model's own words relayed), kept by the local endpoint
(``fake_bedrock``) so that a call's requests are shown to carry none a model refuses.

The model lists are written out here, not taken from ``voiceagent.llm.samplers``: a test of
that module against itself could not fail. Claude Opus 4.7 and later (reported on Bedrock for
anthropic.claude-opus-4-7, -4-8 and -5; on Anthropic's API for Sonnet 5 and Fable 5) refuse
any; Opus 4.1 and the 4.5 / 4.6 models refuse temperature with top_p.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_ERRORS = "The model returned the following errors: "
DEPRECATED = _ERRORS + "`{name}` is deprecated for this model."
BOTH = (_ERRORS + "`temperature` and `top_p` cannot both be specified for this model. "
        "Please use only one.")
_NONE = re.compile(r"anthropic\.claude-(?:(?:opus|sonnet|haiku)-4-[7-9]|(?:opus|sonnet|haiku)"
                   r"-[5-9]|mythos|fable)(?![0-9])")
_ONE = re.compile(r"anthropic\.claude-(?:opus-4-[1-6]|(?:sonnet|haiku)-4-[56])(?![0-9])")


def sampler_refusal(model_id: str, body: Mapping[str, Any]) -> str | None:
    """What Bedrock says to ``body`` sent to ``model_id`` for its sampling parameters, or
    None when it takes them."""
    inference = body.get("inferenceConfig") or {}
    fields = body.get("additionalModelRequestFields") or {}
    sent = [name for name, there in (("temperature", "temperature" in inference),
                                     ("top_p", "topP" in inference), ("top_k", "top_k" in fields))
            if there]
    if sent and _NONE.search(model_id):
        return DEPRECATED.format(name=sent[0])
    if "temperature" in sent and "top_p" in sent and _ONE.search(model_id):
        return BOTH
    return None
