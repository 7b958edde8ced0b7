"""Claude's extended thinking with a token budget (Converse ``additionalModelRequestFields``:
``{"thinking": {"type": "enabled", "budget_tokens": N}}``), and which model ids take it.

Anthropic and Bedrock document it for Claude 3.7 Sonnet, Sonnet 4, Opus 4 and 4.1, and the 4.5
and 4.6 models (deprecated on 4.6, still accepted); Claude Opus 4.7 and the models after it
(the Claude 5 models, Mythos, Fable) think only adaptively and refuse a budget with a 400
(Bedrock's "Adaptive thinking" page), as does every model that is not Claude. The budget
is at least 1024 tokens and below maxTokens, which counts the thinking too; thinking refuses a
temperature other than 1, a top_p below 0.95 and a forced tool choice.

A use case file that names a model which cannot think is refused at load (``usecase_model``).
A request to one (a use case that names no model and runs under such a ``MODEL_IDENTIFIER``)
goes without thinking, with a warning: every turn of every call would fail otherwise.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

from voiceagent.logs import warn_once

log = logging.getLogger("voiceagent.llm.bedrock")

MIN_BUDGET_TOKENS = 1024                # Anthropic's minimum
MIN_TOP_P = 0.95                        # the lowest top_p thinking accepts
SUPPORTED = ("Claude 3.7 Sonnet, Claude Sonnet 4, 4.5 and 4.6, Claude Opus 4, 4.1, 4.5 and 4.6, "
             "Claude Haiku 4.5")
# family and minor version: the minor is one digit (claude-opus-4-20250514 is a date, not 4.2)
_CLAUDE = re.compile(r"anthropic\.claude-(?:(?P<old>3-7-sonnet)|(?P<family>opus|sonnet|haiku)"
                     r"-4(?:-(?P<minor>[0-9]))?)(?![0-9])")
_ANY_CLAUDE = re.compile(r"anthropic\.claude-")
# Claude models from before thinking (2.x, Instant, 3 and 3.5); a Claude id that is neither
# one of these nor one that takes a budget is from Opus 4.7 on, which thinks only adaptively
_BEFORE_THINKING = re.compile(
    r"anthropic\.claude-(?:v[0-9]|instant|3-(?:5-)?(?:haiku|sonnet|opus))")
# ARNs that name a model (directly or through a system inference profile); others (an
# application inference profile, a provisioned or custom model) hide which model runs
_NAMING_ARN = re.compile(r"^arn:[^:]+:bedrock:[^:]*:[^:]*:(foundation-model|inference-profile)/")


def thinking_support(model_id: str) -> bool | None:
    """Whether ``model_id`` takes a thinking budget: None when the id cannot tell (an
    application-inference-profile ARN; Bedrock refuses the request if its model cannot)."""
    if model_id.startswith("arn:") and not _NAMING_ARN.match(model_id):
        return None
    found = _CLAUDE.search(model_id)
    if found is None:
        return False
    if found["old"]:
        return True
    minor = int(found["minor"] or 0)            # no Claude Haiku 4 before 4.5
    return minor <= 6 and (found["family"] != "haiku" or minor >= 5)


@functools.lru_cache(maxsize=64)     # asked per model request (samplers): a few ids a process
def adaptive_only(model_id: str) -> bool:
    """Whether ``model_id`` is a Claude model from Opus 4.7 on, which thinks only adaptively
    and refuses sampling parameters too (``samplers``). A Claude id not known to be older
    counts as newer: lists of the new ones broke with every release. False when the id cannot
    tell (an application-inference-profile ARN)."""
    if thinking_support(model_id) is not False or not _ANY_CLAUDE.search(model_id):
        return False
    found = _CLAUDE.search(model_id)
    return _BEFORE_THINKING.search(model_id) is None and not (
        found is not None and found["family"] == "haiku" and int(found["minor"] or 0) < 5)


def why_not(model_id: str) -> str:
    """Why ``model_id`` cannot take a budget, for an error or a warning."""
    if adaptive_only(model_id):
        return (f"{model_id} thinks only adaptively (as Claude Opus 4.7 and later do) and "
                "refuses a thinking budget (a ValidationException on every turn)")
    if _ANY_CLAUDE.search(model_id):
        return f"{model_id} has no extended thinking (a ValidationException on every turn)"
    return (f"{model_id} is not a Claude model: only Claude takes a thinking budget "
            "(a ValidationException on every turn)")


def thinking_fields(model_id: str, budget_tokens: int | None, use_case: str
                    ) -> dict[str, Any] | None:
    """The ``additionalModelRequestFields`` that turn thinking on, or None: thinking off, or
    ``model_id`` known not to take it (then a warning, once per model)."""
    if budget_tokens is None:
        return None
    if thinking_support(model_id) is False:
        warn_once(log, ("thinking", model_id),
                  "thinking not sent: the model cannot think with a budget",
                  model_id=model_id, use_case=use_case,
                  fix=f"name a model that can ({SUPPORTED}) or remove "
                      "model_options.thinking_budget_tokens")
        return None
    return {"thinking": {"type": "enabled", "budget_tokens": budget_tokens}}
