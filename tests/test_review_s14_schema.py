"""Review s14: the unknown-keyword check refuses keywords JSON Schema 2020-12 defines."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.mark.parametrize("keyword", ["minContains", "maxContains"])
def test_schema_keywords_the_validator_enforces_still_load(keyword: str) -> None:
    """minContains/maxContains are 2020-12 validation keywords (jsonschema enforces them
    inside its ``contains`` validator, so they are not keys of VALIDATORS): a schema that
    loaded yesterday is now refused as 'unknown JSON Schema keyword ... a typo'."""
    from voiceagent.tools.registry import default_registry
    from voiceagent.usecases import UseCase

    schema: dict[str, Any] = {"type": "object", "properties": {"toppings": {
        "type": "array", "items": {"type": "string"},
        "contains": {"const": "cheese"}, keyword: 1}}}
    uc = UseCase.model_validate({"name": "demo", "prompt": "Hi.", "tools": [
        {"name": "endCall", "description": "Hang up.", "input_schema": schema}]})
    default_registry().check_use_case(uc)
    validator = default_registry().validator_for(uc.tools[0])
    assert validator.is_valid({"toppings": ["cheese"]})
