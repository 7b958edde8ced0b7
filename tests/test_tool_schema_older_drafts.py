"""Keywords of older JSON Schema drafts that 2020-12 (the validator tool inputs are checked
with) ignores: ``dependencies`` (draft 7; now dependentRequired / dependentSchemas) and
``additionalItems`` (now ``items`` after ``prefixItems``). They loaded as if annotations, and
what they said was never enforced: the check that refuses a misspelt keyword exists for
exactly that."""

from __future__ import annotations

from typing import Any

import pytest

from voiceagent.errors import ConfigError
from voiceagent.tools.registry import default_registry
from voiceagent.usecases import UseCase


def _check(schema: dict[str, Any], *, keywords: bool = True) -> None:
    uc = UseCase.model_validate({"name": "demo", "prompt": "Hi.", "tools": [
        {"name": "endCall", "description": "Hang up.", "input_schema": schema}]})
    default_registry().check_use_case(uc, keywords=keywords)


@pytest.mark.parametrize(("schema", "key_path", "hint"), [
    ({"type": "object", "properties": {"delivery": {"type": "boolean"},
                                       "address": {"type": "string"}},
      "dependencies": {"delivery": ["address"]}},
     "tools[0].input_schema.dependencies", "dependentRequired"),
    ({"type": "object", "properties": {"pizzas": {
        "type": "array", "prefixItems": [{"type": "string"}], "additionalItems": False}}},
     "tools[0].input_schema.properties.pizzas.additionalItems", "prefixItems"),
])
def test_an_older_drafts_keyword_that_would_be_ignored_is_refused_with_its_2020_12_form(
        schema: dict[str, Any], key_path: str, hint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _check(schema)
    assert caught.value.key_path == key_path
    assert "would be ignored" in caught.value.problem
    assert hint in caught.value.problem


def test_a_stored_use_case_with_one_is_still_served() -> None:
    """With ``keywords=False`` (a use case already in the store) the older keyword does not
    stop it being served: the same schema a file being loaded is refused for passes."""
    schema = {"type": "object", "dependencies": {"a": ["b"]}}
    with pytest.raises(ConfigError, match="would be ignored"):
        _check(schema)
    _check(schema, keywords=False)
