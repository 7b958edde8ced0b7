"""``$ref`` in a tool's input_schema: one that points at nothing in the schema (a misspelt
``$defs`` name, a URL: nothing is fetched) loaded, and the first call of the tool raised out
of the schema check and took the call down; it is refused at load, at its key path."""

from __future__ import annotations

from typing import Any

import pytest

from tests.call_harness import plain_use_case
from voiceagent.errors import ConfigError
from voiceagent.tools.registry import default_registry
from voiceagent.usecases import UseCase


def _schema(ref: str) -> dict[str, Any]:
    return {"type": "object", "$defs": {"reason": {"type": "string", "maxLength": 80}},
            "properties": {"reason": {"$ref": ref}}}


def _use_case(schema: dict[str, Any]) -> UseCase:
    return plain_use_case(tools=[{"name": "endCall", "description": "Hang up.",
                                  "input_schema": schema}])


@pytest.mark.parametrize("ref", ["#/$defs/reasons", "https://schemas.example.com/reason.json",
                                 "#/properties/nothing"])
def test_a_ref_that_points_at_nothing_is_refused_at_load(ref: str) -> None:
    with pytest.raises(ConfigError) as caught:
        default_registry().check_use_case(_use_case(_schema(ref)))
    assert caught.value.key_path == "tools[0].input_schema.properties.reason.$ref"
    assert ref in caught.value.problem


def test_a_stored_use_case_with_one_is_served_and_its_tool_gets_an_error() -> None:
    """Stored by a release before the check: refusing it now would refuse every call of the
    use case; the one tool whose input cannot be checked gets an error result instead, and
    the reference error no longer escapes the input check (it took the call's tools down)."""
    uc = _use_case(_schema("#/$defs/reasons"))
    registry = default_registry()
    registry.check_use_case(uc, keywords=False)
    [problem] = registry.validate_input(uc.tools[0], {"reason": "done"})
    assert problem.startswith("input_schema: cannot be checked")


@pytest.mark.parametrize("ref", ["#/$defs/reason", "#/properties/other", "#"])
def test_refs_into_the_schema_itself_load_and_validate(ref: str) -> None:
    schema = _schema(ref)
    schema["properties"]["other"] = {"type": "string"}
    uc = _use_case(schema)
    default_registry().check_use_case(uc)
    assert default_registry().validate_input(uc.tools[0], {"reason": "done"}) == (
        [] if ref != "#" else ["reason: must be of type object"])

