"""A tool input schema written the way a newcomer writes it is refused at load with what JSON
Schema wants instead: ``type: str`` (Python's name) was "'str' is not valid under any of the
given schemas", ``required: true`` on a property (OpenAPI 2's way) "True is not of type
'array'", and ``required: day`` "'day' is not of type 'array'"."""

from __future__ import annotations

from typing import Any

import pytest

from voiceagent.errors import ConfigError
from voiceagent.tools.registry import default_registry
from voiceagent.usecases import UseCase


def refusal(schema: dict[str, Any]) -> ConfigError:
    use_case = UseCase.model_validate({"name": "dentist", "prompt": "Hi.", "tools": [
        {"name": "endCall", "description": "Hang up.", "input_schema": schema}]})
    with pytest.raises(ConfigError) as caught:
        default_registry().check_use_case(use_case)
    return caught.value


@pytest.mark.parametrize(("written", "meant"), [
    ("str", "string"), ("int", "integer"), ("float", "number"), ("bool", "boolean"),
    ("dict", "object"), ("list", "array"), ("String", "string"), ("strng", "string")])
def test_a_type_named_as_python_names_it_gets_json_schemas_name(written: str,
                                                                meant: str) -> None:
    err = refusal({"type": "object", "properties": {"day": {"type": written}}})
    assert err.key_path == "tools[0].input_schema.properties.day.type"
    assert err.problem == (
        f"{written!r} is not a JSON Schema type (did you mean {meant}?); the types are "
        "array, boolean, integer, null, number, object, string")


def test_a_list_of_types_names_the_one_that_is_not_a_type() -> None:
    err = refusal({"type": "object", "properties": {"day": {"type": ["str", "null"]}}})
    assert err.problem.startswith("'str' is not a JSON Schema type (did you mean string?)")
    # a property called "type" whose schema is not a schema is not the keyword: jsonschema's
    # words stand
    err = refusal({"type": "object", "properties": {"type": 5}})
    assert err.key_path == "tools[0].input_schema.properties.type"
    assert err.problem.startswith("not a valid JSON schema: ")


def test_required_as_a_flag_on_a_property_says_where_required_goes() -> None:
    err = refusal({"type": "object", "properties": {
        "day": {"type": "string", "required": True}}})
    assert err.key_path == "tools[0].input_schema.properties.day.required"
    assert err.problem == (
        "required is not a flag on a property in JSON Schema: remove it here and list the "
        "property by name in its object, beside properties: required: [day]")
    err = refusal({"type": "object", "properties": {
        "day": {"type": "string", "required": False}}})
    assert err.problem.startswith("required is not a flag on a property in JSON Schema: "
                                  "remove it (a property is optional")


def test_a_single_name_where_a_list_belongs_says_to_write_a_list() -> None:
    err = refusal({"type": "object", "properties": {"day": {"type": "string"}},
                   "required": "day"})
    assert err.key_path == "tools[0].input_schema.required"
    assert err.problem == "required takes a list, not a single value: write required: [day]"



def test_required_one_level_too_deep_says_where_it_goes() -> None:
    """``required: [day]`` inside the string property ``day``: valid JSON Schema, so it was
    taken, and ignored (required only constrains objects): ``day`` was never required."""
    err = refusal({"type": "object", "properties": {
        "day": {"type": "string", "required": ["day"]}}})
    assert err.key_path == "tools[0].input_schema.properties.day.required"
    assert err.problem == (
        "required only applies to an object, and day is a string, so it would be ignored "
        "here: remove it here and list the property by name in its object, beside "
        "properties: required: [day]")
    err = refusal({"type": "object", "properties": {"slots": {"type": "array", "items": {
        "type": ["integer", "null"], "required": ["start", "end"]}}}})
    assert err.key_path == "tools[0].input_schema.properties.slots.items.required"
    assert err.problem.startswith("required only applies to an object, and this is an "
                                  "integer or null, so it would be ignored")


@pytest.mark.parametrize("where", [
    {"type": "object", "properties": {"day": {"type": "string"}}, "required": ["day"]},
    {"type": "object", "properties": {"when": {"type": ["object", "null"], "properties": {
        "day": {"type": "string"}}, "required": ["day"]}}},
    {"type": "object", "properties": {"when": {"properties": {}, "required": ["day"]}}},
])
def test_required_on_an_object_is_not_flagged(where: dict[str, Any]) -> None:
    use_case = UseCase.model_validate({"name": "dentist", "prompt": "Hi.", "tools": [
        {"name": "endCall", "description": "Hang up.", "input_schema": where}]})
    default_registry().check_use_case(use_case)
