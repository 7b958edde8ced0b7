"""A use case naming a tool nobody registered said only that, and listed every tool that is:
a one-letter typo (``checkOpeningHour``) was left to be spotted in the list, and a tool whose
module TOOLS leaves out (or TOOLS unset, a project's .env not read) gave no clue where a
tool's code comes from. The line now ends with the look-alike when there is one, else with
how a tool is registered, and with what TOOLS is: a project module TOOLS leaves out that
mentions the tool is named."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest

from tests.server_harness import make_settings
from voiceagent.errors import ConfigError
from voiceagent.tools.plugins import build_registry
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


def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A project as `voiceagent init` lays it out, under a package name of its own
    (``sys.modules`` keeps what an earlier test imported): the generated tools module, and a
    second module with a tool the use case declares."""
    package = f"clinic_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / package
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    (folder / "tools.py").write_text(textwrap.dedent('''
        from voiceagent.tools import tool

        @tool("checkOpeningHours")
        async def hours(ctx, args):
            return {"hours": "9 to 5"}
        '''))
    (folder / "appointments.py").write_text(textwrap.dedent('''
        from voiceagent.tools import tool

        @tool("cancelAppointment", side_effect=True)
        async def cancel(ctx, args):
            return {"status": "cancelled"}
        '''))
    (folder / "helpers.py").write_text("FORMAT = '%H:%M'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return package


def served_problem(tmp_path: Path, tool_name: str, tools: str) -> str:
    registry = build_registry(make_settings(tmp_path, TOOLS=tools))
    use_case = UseCase.model_validate({"name": "clinic", "prompt": "Hi.", "tools": [
        {"name": tool_name, "description": "Does a thing."}]})
    with pytest.raises(ConfigError) as caught:
        registry.check_use_case(use_case)
    return caught.value.problem


def test_a_module_left_out_of_tools_is_named(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The tool is written in a new file of the project that TOOLS does not name (or that
    .env names and the project's tests, with TOOLS of their own, do not)."""
    package = project(tmp_path, monkeypatch)
    said = served_problem(tmp_path, "cancelAppointment", f"{package}.tools")
    assert said.endswith(
        f"in a module named in TOOLS (TOOLS is {package}.tools; {package}.appointments "
        "mentions 'cancelAppointment' but is not in it: add it to TOOLS), or in a "
        "voiceagent.tools entry point (docs/tools.md)")
    # a tool no file of the project mentions: TOOLS alone, no module blamed
    said = served_problem(tmp_path, "bookAppointment", f"{package}.tools")
    assert said.endswith(f"in a module named in TOOLS (TOOLS is {package}.tools), or in a "
                         "voiceagent.tools entry point (docs/tools.md)")


def test_a_module_imported_by_a_tools_module_but_not_in_tools_is_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing the new file from the TOOLS module does not register its tools (a module's
    tools are its own and its submodules'): the module that defines the tool is named."""
    package = project(tmp_path, monkeypatch)
    (tmp_path / package / "moves.py").write_text(textwrap.dedent('''
        from voiceagent.tools import tool

        @tool("moveAppointment", side_effect=True)
        async def move(ctx, args):
            return {"status": "moved"}
        '''))
    tools = tmp_path / package / "tools.py"
    tools.write_text(f"from {package} import moves  # noqa: F401\n" + tools.read_text())
    said = served_problem(tmp_path, "moveAppointment", f"{package}.tools")
    assert f"(TOOLS is {package}.tools; {package}.moves defines 'moveAppointment' " \
           "but is not in it: add it to TOOLS)" in said


def test_tools_unset_is_said(tmp_path: Path) -> None:
    """A project's .env not read (the server started from another folder): TOOLS unset."""
    said = served_problem(tmp_path, "cancelAppointment", "")
    assert "in a module named in TOOLS (TOOLS is not set), or in a voiceagent.tools" in said
