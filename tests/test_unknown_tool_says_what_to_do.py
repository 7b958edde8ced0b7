"""A use case naming a tool nobody registered said only that, and listed every tool that is:
a one-letter typo (``checkOpeningHour``) was left to be spotted in the list, and a tool whose
module TOOLS leaves out (or TOOLS unset, a project's .env not read) gave no clue where a
tool's code comes from. The line now ends with the look-alike when there is one, else with
how a tool is registered."""

from __future__ import annotations

import pytest

from voiceagent.errors import ConfigError
from voiceagent.tools.registry import default_registry
from voiceagent.usecases import UseCase


def problem(tool_name: str) -> str:
    use_case = UseCase.model_validate({"name": "shop", "prompt": "Hi.", "tools": [
        {"name": tool_name, "description": "Does a thing."}]})
    with pytest.raises(ConfigError) as caught:
        default_registry().check_use_case(use_case)
    assert caught.value.key_path == "tools[0].name"
    return caught.value.problem


def test_a_typo_gets_the_look_alike() -> None:
    said = problem("PlaceOrderFuncton")
    assert said.startswith("no tool 'PlaceOrderFuncton' is registered; registered: [")
    assert said.endswith("; did you mean 'PlaceOrderFunction'?")


def test_a_tool_with_no_code_gets_where_code_comes_from() -> None:
    said = problem("checkOpeningHours")
    assert said.endswith("; its code is a function decorated with "
                         "@voiceagent.tools.tool('checkOpeningHours') in a module named in "
                         "TOOLS, or in a voiceagent.tools entry point (docs/tools.md)")
