"""Which thinking each Claude model takes, and Converse's effort, as Bedrock answers a request
that breaks it (HTTP 400 ValidationException), kept by the local endpoint (``fake_bedrock``).

The rules are the documents', written out here, not taken from ``voiceagent.llm.effort`` (a
test of that module against itself could not fail):

- Bedrock's "Adaptive thinking" page (claude-messages-adaptive-thinking): Claude Opus 4.6 and
  Sonnet 4.6 take ``thinking.type`` "adaptive" and "enabled"; Opus 4.7 and the models after
  it (the Claude 5 models, Mythos, Fable) "only support adaptive thinking": "enabled" with
  budget_tokens "will return a 400 error"; the models before 4.6 take no "adaptive".
- Anthropic's thinking config is a closed shape: ``type``, and for "adaptive" ``display``;
  the effort is not in it but in Converse's ``outputConfig.effort`` (OutputConfig, "Supported
  values are low, medium, high, xhigh, and max"); Anthropic's "Effort" page offers xhigh on
  Opus 4.7 and later but not on Mythos Preview or the 4.6 models.

Bedrock's exact words for these refusals were not captured: the messages say the rule.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_ERRORS = "The model returned the following errors: "
BUDGET_REFUSED = _ERRORS + ("thinking.type.enabled is not supported for this model. Use "
                            "thinking.type.adaptive and output_config.effort to control "
                            "thinking behavior.")
ADAPTIVE_REFUSED = _ERRORS + "thinking.type.adaptive is not supported for this model."
EXTRA_FIELD = _ERRORS + "thinking.{type}.{name}: Extra inputs are not permitted"
BAD_EFFORT = ("1 validation error detected: Value '{effort}' at 'outputConfig.effort' failed "
              "to satisfy constraint: Member must be one of low, medium, high, xhigh, max")
LEVEL_REFUSED = _ERRORS + "output_config.effort: '{effort}' is not supported for this model."
_EFFORTS = ("low", "medium", "high", "xhigh", "max")
_ADAPTIVE_ONLY = re.compile(r"anthropic\.claude-(?:(?:opus|sonnet|haiku)-4-[7-9]|(?:opus|sonnet"
                            r"|haiku)-[5-9]|mythos|fable)(?![0-9])")
_ADAPTIVE_TOO = re.compile(r"anthropic\.claude-(?:opus|sonnet)-4-6(?![0-9])")
_NO_XHIGH = re.compile(r"anthropic\.claude-(?:mythos-preview|(?:opus|sonnet)-4-6(?![0-9]))")
_THINKING_KEYS = {"enabled": {"type", "budget_tokens"}, "adaptive": {"type", "display"},
                  "disabled": {"type"}}


def effort_refusal(model_id: str, body: Mapping[str, Any]) -> str | None:
    """What Bedrock says to ``body`` sent to ``model_id`` for the kind of thinking it asks
    for and its effort, or None when the model takes them."""
    fields = body.get("additionalModelRequestFields") or {}
    thinking = fields.get("thinking") if isinstance(fields, Mapping) else None
    if isinstance(thinking, Mapping):
        kind = str(thinking.get("type"))
        extra = sorted(set(thinking) - _THINKING_KEYS.get(kind, {"type"}))
        if extra:
            return EXTRA_FIELD.format(type=kind, name=extra[0])
        if kind == "enabled" and _ADAPTIVE_ONLY.search(model_id):
            return BUDGET_REFUSED
        if kind == "adaptive" and not (_ADAPTIVE_ONLY.search(model_id)
                                       or _ADAPTIVE_TOO.search(model_id)):
            return ADAPTIVE_REFUSED
    effort = (body.get("outputConfig") or {}).get("effort")
    if effort is None:
        return None
    if effort not in _EFFORTS:
        return BAD_EFFORT.format(effort=effort)
    if effort == "xhigh" and _NO_XHIGH.search(model_id):
        return LEVEL_REFUSED.format(effort=effort)
    return None
