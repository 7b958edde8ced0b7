"""Claude's adaptive thinking at a chosen effort, for the models that think only adaptively
(Claude Opus 4.7 and the models after it: ``thinking.adaptive_only``), which refuse a budget:
Converse's ``additionalModelRequestFields: {"thinking": {"type": "adaptive"}}`` with its own
``outputConfig: {"effort": LEVEL}``.

Bedrock's "Adaptive thinking" page (claude-messages-adaptive-thinking): those models refuse
``thinking.type`` "enabled" and "disabled" (a 400); "Use thinking.type: "adaptive" with
output_config.effort to control thinking behavior". Converse carries the effort in its own
``OutputConfig.effort`` (bedrock-runtime 2023-09-30, botocore 1.44): "Supported values are
low, medium, high, xhigh, and max". Anthropic's "Effort" page: high is the default, the same
as sending none; xhigh is not offered on Claude Mythos Preview.

The lower levels are for voice: at low effort Claude may skip thinking on a simple turn, so
the caller's first word comes sooner; at high and above it almost always thinks first.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from voiceagent.llm.thinking import adaptive_only, thinking_support
from voiceagent.logs import warn_once

log = logging.getLogger("voiceagent.llm.bedrock")

EFFORTS = ("low", "medium", "high", "xhigh", "max")
ADAPTIVE_MODELS = ("Claude Opus 4.7 and later, the Claude 5 models, Mythos and Fable")
_NO_XHIGH = re.compile(r"anthropic\.claude-mythos-preview")   # Anthropic's "Effort" page


def effort_support(model_id: str) -> bool | None:
    """Whether ``model_id`` is offered adaptive thinking with an effort: None when the id
    cannot tell (an application-inference-profile ARN; Bedrock refuses what its model
    cannot take)."""
    if thinking_support(model_id) is None:
        return None
    return adaptive_only(model_id)


def why_no_effort(model_id: str) -> str:
    """Why ``model_id`` is not sent an effort, for an error or a warning."""
    if thinking_support(model_id):
        return (f"{model_id} thinks with a budget: effort is offered for the models that "
                f"think only adaptively ({ADAPTIVE_MODELS})")
    return (f"{model_id} does not think adaptively: effort is offered for "
            f"{ADAPTIVE_MODELS}")


def level_problem(model_id: str, effort: str) -> str | None:
    """What is wrong with ``effort`` for ``model_id`` (a level it does not offer), or None."""
    if effort == "xhigh" and _NO_XHIGH.search(model_id):
        return (f"{model_id} does not offer effort xhigh (Anthropic's effort page lists it "
                "for Claude Opus 4.7 and later, not Mythos Preview); write high or max")
    return None


def effort_fields(model_id: str, effort: str | None, use_case: str
                  ) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
    """The ``additionalModelRequestFields`` and ``outputConfig`` of adaptive thinking at
    ``effort``, or None: no effort, or ``model_id`` known not to take it (then a warning,
    once per model). A level the model does not offer is left out (Claude's default, high),
    with a warning: every turn would be refused otherwise."""
    if effort is None:
        return None
    if effort_support(model_id) is False:
        _warn_once(model_id, effort, "adaptive thinking not sent: the model does not take it",
                   use_case, f"name a model that does ({ADAPTIVE_MODELS}) or remove "
                   "model_options.effort")
        return None
    if level_problem(model_id, effort) is not None:
        _warn_once(model_id, effort, "effort not sent: the model does not offer it", use_case,
                   "write another model_options.effort (high or max)")
        return {"thinking": {"type": "adaptive"}}, None
    return {"thinking": {"type": "adaptive"}}, {"effort": effort}


def _warn_once(model_id: str, effort: str, message: str, use_case: str, fix: str) -> None:
    warn_once(log, ("effort", model_id, effort), message, model_id=model_id,
              use_case=use_case, effort=effort, fix=fix)
