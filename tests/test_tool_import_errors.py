"""A TOOLS module that fails on import names the file and line it failed at."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_tool_plugins import unique, write_module


def _import_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> str:
    from voiceagent.errors import ConfigError
    from voiceagent.settings import Settings
    from voiceagent.tools.plugins import build_registry

    module = unique("keyed_tools")
    write_module(tmp_path / "plugins", module, source)
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    with pytest.raises(ConfigError) as caught:
        build_registry(Settings.model_validate({"TOOLS": module}))
    return f"{module}|{caught.value}"


def test_a_missing_environment_variable_names_the_tool_modules_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """plugins._where's own example: 'a KeyError from a missing environment variable names
    neither'. os.environ[...] raises inside the frozen os module, and the last frame is
    taken: the message says '(at <frozen os>:679)', not the tool module's line 3."""
    monkeypatch.delenv("REVIEW_S14_NOT_SET", raising=False)
    module, message = _import_error(tmp_path, monkeypatch, '''
        import os
        API_KEY = os.environ["REVIEW_S14_NOT_SET"]
        ''').split("|", 1)
    assert f"{module}.py:3)" in message, message


def test_a_module_that_does_not_exist_names_no_frozen_frame(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """TOOLS naming a module that is not there (a typo): '(at <frozen
    importlib._bootstrap>:1140)' points at Python's import machinery, not anything to fix."""
    from voiceagent.errors import ConfigError
    from voiceagent.settings import Settings
    from voiceagent.tools.plugins import build_registry

    with pytest.raises(ConfigError) as caught:
        build_registry(Settings.model_validate({"TOOLS": unique("no_such_tools")}))
    assert "<frozen" not in str(caught.value), str(caught.value)
