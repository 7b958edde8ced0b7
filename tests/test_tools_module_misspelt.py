"""TOOLS=dentist.tool (the module is dentist.tools): the line said only "No module named
'dentist.tool'", and ``voiceagent check``'s advice talked about YAML keys and CONFIG_DIR,
though no file had been read. The line now names the close module, and the advice is about
TOOLS and the module."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from tests.check_support import RUN_TIMEOUT_S, base_env, run_check
from tests.test_tool_plugins import unique, write_distribution, write_module
from voiceagent.errors import ConfigError
from voiceagent.settings import Settings
from voiceagent.tools.plugins import build_registry

pytestmark = pytest.mark.timeout(60)

TOOLS_MODULE = '''
from voiceagent.tools import tool


@tool("BookCleaning")
async def book_cleaning(ctx, args):
    return {"booked": True}
'''


def a_package(folder: Path) -> str:
    """A package of its own name holding ``tools.py``; returns the package's name."""
    package = unique("dentist")
    write_module(folder / package, "__init__", "")
    write_module(folder / package, "tools", TOOLS_MODULE)
    return package


def load_error(tools: str) -> str:
    with pytest.raises(ConfigError) as caught:
        build_registry(Settings.model_validate({"TOOLS": tools}))
    return str(caught.value)


def test_a_misspelt_module_gets_the_close_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = a_package(tmp_path / "plugins")
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    assert load_error(f"{package}.tool") == (
        f"TOOLS: {package}.tool: cannot import it: ModuleNotFoundError: No module named "
        f"'{package}.tool'; did you mean {package}.tools?")
    # a typo in the package's own name: the close top-level name, the rest kept
    misspelt = package.replace("dentist", "dentst")
    assert load_error(f"{misspelt}.tools").endswith(f"; did you mean {package}.tools?")
    # missing is what the module imports, not what TOOLS names: nothing to correct in TOOLS
    write_module(tmp_path / "plugins" / package, "tools", "import requestz\n")
    message = load_error(f"{package}.tools")
    assert "No module named 'requestz' (at " in message, message
    assert "did you mean" not in message
    assert "Python path" not in message


def test_a_package_not_on_the_path_says_where_python_looks() -> None:
    missing = unique("frontdesk")
    assert load_error(f"{missing}.tools").endswith(
        f"No module named '{missing}'; no {missing} on the Python path: run from the folder "
        f"holding {missing}/, or add that folder to PYTHONPATH")


async def test_check_says_to_fix_tools_not_yaml_keys(tmp_path: Path) -> None:
    package = a_package(tmp_path / "plugins")
    env = base_env(tmp_path, STORE="sqlite", LLM="scripted", DATA_DIR=str(tmp_path / "data"),
                   TOOLS=f"{package}.tool")
    env["PYTHONPATH"] += os.pathsep + str(tmp_path / "plugins")
    with trio.fail_after(RUN_TIMEOUT_S):
        run = await run_check(env, tmp_path)
    line = run.lines["use cases and tools"]
    assert run.code == 1, run.out + run.err
    assert line.status == "fail"
    assert line.detail.endswith(f"; did you mean {package}.tools?"), line.detail
    (advice,) = line.advice
    assert advice.startswith("fix TOOLS (module names, comma-separated, each importable"), advice
    assert "CONFIG_DIR" not in advice
    assert "config/README.md" not in advice


async def test_check_says_to_fix_the_package_of_a_broken_entry_point(tmp_path: Path) -> None:
    """An installed package's entry point that fails is neither TOOLS nor a YAML file."""
    module = unique("ep_tools")
    write_distribution(tmp_path / "site", module, f"{module}:check_table")
    env = base_env(tmp_path, STORE="sqlite", LLM="scripted", DATA_DIR=str(tmp_path / "data"))
    env["PYTHONPATH"] += os.pathsep + str(tmp_path / "site")
    with trio.fail_after(RUN_TIMEOUT_S):
        run = await run_check(env, tmp_path)
    line = run.lines["use cases and tools"]
    assert (run.code, line.status) == (1, "fail"), run.out + run.err
    assert "entry point 'demo' of voiceagent-demo-plugin 1.0" in line.detail, line.detail
    assert line.advice == ["fix or uninstall the package whose voiceagent.tools entry point it "
                           "is (docs/tools.md, \"Entry points\")"]
