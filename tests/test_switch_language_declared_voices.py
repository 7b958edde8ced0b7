"""A ``switchLanguage`` whose ``enum`` offers a code with no ``languages`` entry lets the model
switch the call to a language with no declared voice and no lines of its own: refused as the
file loads, with the codes and the fix, where before a caller found it."""

from __future__ import annotations

from typing import Any

import pytest

from voiceagent.errors import ConfigError
from voiceagent.tools.registry import default_registry
from voiceagent.usecases import UseCase, parse_model


def _use_case(codes: list[str], languages: list[str], name: str = "switchLanguage"
              ) -> UseCase:
    tool: dict[str, Any] = {"name": name, "description": "Switch the call's language.",
                            "input_schema": {"type": "object", "required": ["language"],
                                             "properties": {"language": {
                                                 "type": "string", "enum": codes}}}}
    return parse_model(UseCase, {"name": "bilingual", "prompt": "p", "tools": [tool],
                                 "languages": [{"code": code} for code in languages]},
                       "config/bilingual.yaml")


def test_every_code_the_tool_offers_has_a_language_entry() -> None:
    with pytest.raises(ConfigError) as caught:
        default_registry().check_use_case(_use_case(["en-US", "es-es", "fr-FR"],
                                                    ["en-US", "es-ES"]))
    assert caught.value.key_path == "tools[0].input_schema.properties.language.enum"
    assert "['fr-FR']" in caught.value.problem      # es-es is es-ES: codes match case aside
    assert "add one for each" in caught.value.problem
    default_registry().check_use_case(_use_case(["en-US", "es-ES"], ["en-US", "es-ES"]))


def test_a_stored_use_case_is_served_as_it_was() -> None:
    default_registry().check_use_case(_use_case(["fr-FR"], ["en-US"]), keywords=False)


def test_an_enum_less_schema_is_left_to_the_model() -> None:
    use_case = _use_case([], [])
    use_case.tools[0].input_schema["properties"]["language"].pop("enum")
    default_registry().check_use_case(use_case)
