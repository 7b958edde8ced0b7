"""``format`` in a tool's input_schema (``email``, ``date``, ``date-time``, ``uuid``) is
enforced like every other rule: JSON Schema 2020-12 makes it an annotation unless the
validator is asked to check it, so a schema that loads with it and a model input that ignores
it reached the tool unchecked."""

from __future__ import annotations

from typing import Any

import pytest

from voiceagent.tools.registry import default_registry
from voiceagent.usecases import UseCase


def _use_case(**changes: Any) -> UseCase:
    data: dict[str, Any] = {"name": "demo", "prompt": "Hi.", "tools": [
        {"name": "sendConfirmationSms", "description": "Text.", "input_schema": {
            "type": "object", "properties": {
                "email": {"type": "string", "format": "email"},
                "day": {"type": "string", "format": "date"}}}}]}
    data.update(changes)
    return UseCase.model_validate(data)


def test_an_input_that_breaks_a_format_is_refused_by_field_and_rule() -> None:
    uc = _use_case()
    problems = default_registry().validate_input(uc.tools[0], {"email": "not an address",
                                                               "day": "next tuesday"})
    assert problems == ["day: must be a valid date", "email: must be a valid email"]
    assert default_registry().validate_input(
        uc.tools[0], {"email": "ana@example.com", "day": "2025-06-03"}) == []


def test_a_scripted_input_that_breaks_a_format_is_refused_at_load() -> None:
    from voiceagent.errors import ConfigError

    uc = _use_case(scripted={"rules": [{"match": "text me", "tool": {
        "name": "sendConfirmationSms", "input": {"day": "tomorrow"}}}]})
    with pytest.raises(ConfigError) as caught:
        default_registry().check_use_case(uc)
    assert caught.value.key_path == "scripted.rules[0].tool.input"


def test_a_stored_use_case_whose_fixed_input_breaks_a_format_is_still_served() -> None:
    """Stored before formats were checked: refusing it now would refuse every call of the
    use case (``UnusableUseCase``); the key's tool gets an invalid-input error when pressed."""
    uc = _use_case(dtmf={"handlers": {"5": {"tool": "sendConfirmationSms",
                                            "input": {"day": "tomorrow"}}}})
    default_registry().check_use_case(uc, keywords=False)
    assert default_registry().validate_input(uc.tools[0], {"day": "tomorrow"}) == [
        "day: must be a valid date"]
