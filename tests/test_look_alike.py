"""Every "did you mean" follows one rule (``voiceagent.look_alike``): difflib's ratio, or else
one slip of the fingers. Only use-case keys had the slip rule; the other sites called difflib
with cut-offs of their own, under which a short word one slip off scores too low (``HSOT``
for ``HOST`` 0.75 under .env's 0.8, ``hlod`` for a tool ``hold`` 0.75 under the registry's
0.8, ``osp`` for a module ``ops`` 0.67 under TOOLS' 0.75, ``nene`` for ``none`` 0.5 as
difflib matches it, under the relay values' 0.6), and the same typo was told its fix in
one file and not in another. Each kind of site is tried here as a user meets it; a relay
attribute's name and a JSON Schema type have no word short enough to miss under their 0.6."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.server_harness import make_settings
from tests.test_tool_plugins import unique, write_module
from voiceagent.app.dotenv_file import misspelt_names
from voiceagent.errors import ConfigError
from voiceagent.look_alike import look_alike
from voiceagent.settings import Settings
from voiceagent.tools.plugins import build_registry
from voiceagent.usecases import UseCase, load_use_case_file


@pytest.mark.parametrize(("written", "meant"), [
    ("sya", "say"),             # two letters swapped
    ("hgih", "high"),
    ("ni", None),               # under three letters: one slip from half the short words
    ("Say", "say"),             # case is no difference; the answer is the spelling to use
    ("SAY", "say"),
    ("sai", "say"),             # one letter wrong
    ("sy_", None),
    ("xyz", None)])
def test_the_rule(written: str, meant: str | None) -> None:
    assert look_alike(written, ["say", "then", "high", "when", "no"], cutoff=0.8) == meant


def test_a_short_relay_value_one_slip_off_is_told_its_fix(tmp_path: Path) -> None:
    path = tmp_path / "desk.yaml"
    path.write_text("name: desk\nprompt: You answer the phone.\n"
                    "relay:\n  interruptible: nene\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_use_case_file(path)
    assert caught.value.key_path == "relay.interruptible"
    assert caught.value.problem.endswith("(did you mean none?)"), caught.value.problem


def test_a_short_setting_name_one_slip_off_in_env_is_told_its_fix(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("HSOT=0.0.0.0\nLMM=scripted\nPROT=3001\nHOST=127.0.0.1\nMY_KEY=x\n")
    assert misspelt_names(env) == [("HSOT", "HOST"), ("LMM", "LLM"), ("PROT", "PORT")]


def _project_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A package with a module ``ops`` registering a tool ``hold``: short names both."""
    package = unique("desk")
    write_module(tmp_path / package, "__init__", "")
    write_module(tmp_path / package, "ops", '''
        from voiceagent.tools import tool

        @tool("hold")
        async def hold(ctx, args):
            return {"held": True}
        ''')
    monkeypatch.syspath_prepend(str(tmp_path))
    return package


def test_a_short_tool_name_one_slip_off_is_told_its_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = _project_tools(tmp_path, monkeypatch)
    registry = build_registry(make_settings(tmp_path, TOOLS=f"{package}.ops"))
    use_case = UseCase.model_validate({"name": "desk", "prompt": "Hi.", "tools": [
        {"name": "hlod", "description": "Puts the caller on hold."}]})
    with pytest.raises(ConfigError) as caught:
        registry.check_use_case(use_case)
    assert caught.value.problem.endswith("; did you mean 'hold'?"), caught.value.problem


def test_a_short_module_name_one_slip_off_in_tools_is_told_its_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = _project_tools(tmp_path, monkeypatch)
    with pytest.raises(ConfigError) as caught:
        build_registry(Settings.model_validate({"TOOLS": f"{package}.osp"}))
    assert str(caught.value).endswith(f"; did you mean {package}.ops?"), str(caught.value)
