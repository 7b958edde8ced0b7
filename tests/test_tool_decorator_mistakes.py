"""Mistakes in writing ``@tool`` that docs/tools.md says stop start-up: the one line on
stderr must say what to write instead, and where in the developer's own module."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tests.test_tool_plugins import unique, write_module
from voiceagent.errors import ConfigError
from voiceagent.settings import Settings
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.plugins import build_registry


def _load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> ConfigError:
    module = unique("diner_tools")
    write_module(tmp_path / "plugins", module, source)
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    with pytest.raises(ConfigError) as caught:
        build_registry(Settings.model_validate({"TOOLS": module}))
    return caught.value


def test_tool_without_its_name_says_to_give_the_name(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """``@tool`` written bare, as many decorators are: the line read 'TypeError: expected
    string or bytes-like object, got 'function'' (re.match's words), naming neither the
    tool nor what is missing."""
    error = _load(tmp_path, monkeypatch, '''
        from voiceagent.tools import tool

        @tool
        async def book_table(ctx, args):
            return {}
        ''')
    assert "@tool(\"ToolName\")" in error.problem, error.problem
    assert "book_table" in error.problem, error.problem


@pytest.mark.parametrize("decorator", ['@tool("book table")', '@tool("BookTable", blocking=True)'])
def test_a_decorator_mistake_points_at_the_developers_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decorator: str) -> None:
    """The line ends '(at FILE:LINE)' so the developer finds the mistake; for a mistake
    ``@tool`` refuses, it named voiceagent/tools/base.py, where the refusal is raised."""
    error = _load(tmp_path, monkeypatch, f'''
        from voiceagent.tools import tool


        {decorator}
        async def book_table(ctx, args):
            return {{}}
        ''')
    assert "voiceagent/tools/base.py" not in error.problem, error.problem
    assert str(tmp_path / "plugins") in error.problem, error.problem


@pytest.mark.parametrize("parameters", ["args", "ctx, args, extra", "*, ctx, args"])
def test_a_tool_that_cannot_take_the_context_and_input_is_refused_at_import(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parameters: str) -> None:
    """A tool is called as ``function(ctx, args)``. One written ``async def f(args)`` loaded,
    passed `voiceagent check`, and failed every call with 'TypeError: f() takes 1 positional
    argument but 2 were given' (the caller hears an apology each time)."""
    error = _load(tmp_path, monkeypatch, f'''
        from voiceagent.tools import tool

        @tool("BookTable")
        async def book_table({parameters}):
            return {{}}
        ''')
    assert "(ctx, args)" in error.problem, error.problem
    assert "BookTable" in error.problem, error.problem


def test_tools_with_defaults_or_star_args_still_load(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    module = unique("diner_tools")
    write_module(tmp_path / "plugins", module, '''
        from voiceagent.tools import tool

        @tool("BookTable")
        async def book_table(ctx, args, retries=3):
            return {}

        @tool("CountCovers")
        async def count_covers(*parts):
            return {}
        ''')
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    registry = build_registry(Settings.model_validate({"TOOLS": module}))
    assert {"BookTable", "CountCovers"} <= set(registry.names())


@pytest.mark.parametrize(("options", "wanted"), [
    ('timeout_s=os.environ.get("CRM_TIMEOUT_S", "5")', "convert it with float()"),
    ("timeout_s=None", "not None"),
    ("timeout_s=math.inf", "at most 120"),
    ("timeout_s=math.nan", "more than 0"),
    ("timeout_s=0", "more than 0"),
    ('side_effect="no"', "side_effect must be True or False"),
    ("blocking=1", "blocking must be True or False"),
    ('plays_audio="yes"', "plays_audio must be True or False"),
])
def test_an_option_of_the_wrong_kind_says_what_it_must_be(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: str, wanted: str) -> None:
    """A timeout read from the environment is text: the line read "TypeError: '>' not
    supported between instances of 'str' and 'int'", naming neither the tool nor the
    option. ``math.inf`` loaded, and a hung side-effect tool then held its call open for
    good (it runs on, shielded, within its own timeout); the use case's own ``timeout_s``
    stops at 120. ``side_effect="no"`` was taken as True."""
    error = _load(tmp_path, monkeypatch, f'''
        import math
        import os

        from voiceagent.tools import tool

        @tool("BookTable", {options})
        async def book_table(ctx, args):
            return {{}}
        ''')
    assert "BookTable" in error.problem, error.problem
    assert wanted in error.problem, error.problem
    assert str(tmp_path / "plugins") in error.problem, error.problem


def test_an_async_generator_is_told_to_return_its_dict(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """An ``async def`` that yields was told it "is a plain def: make it an async def",
    which it is."""
    error = _load(tmp_path, monkeypatch, '''
        from voiceagent.tools import tool

        @tool("BookTable")
        async def book_table(ctx, args):
            yield {"booked": True}
        ''')
    assert "async generator" in error.problem, error.problem
    assert "plain def" not in error.problem, error.problem


@pytest.mark.parametrize("target", ["functools.partial(book, retries=3)", "Booker()"])
def test_a_partial_or_a_callable_object_is_refused_with_what_to_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    """``tool("BookTable")(functools.partial(...))`` failed with "AttributeError:
    'functools.partial' object has no attribute '__qualname__'"; a callable object with an
    async ``__call__`` was told it "is a plain def"."""
    error = _load(tmp_path, monkeypatch, f'''
        import functools

        from voiceagent.tools import tool


        async def book(ctx, args, retries):
            return {{}}


        class Booker:
            async def __call__(self, ctx, args):
                return {{}}


        tool("BookTable")({target})
        ''')
    assert "BookTable" in error.problem, error.problem
    assert "write a small function that calls it" in error.problem, error.problem


@pytest.mark.parametrize(("options", "wanted"), [
    ({"timeout_s": "5"}, "convert it with float()"),
    ({"timeout_s": math.inf}, "at most 120"),
    ({"timeout_s": 0}, "more than 0"),
    ({"timeout_s": True}, "a number of seconds"),
    ({"side_effect": "no"}, "side_effect must be True or False"),
    ({"ends_turn": 1}, "ends_turn must be True or False"),
    ({"blocking": "yes"}, "blocking must be True or False"),
    ({"plays_audio": 1}, "plays_audio must be True or False"),
])
def test_a_definition_built_directly_gets_the_decorators_checks(
        options: dict[str, Any], wanted: str) -> None:
    """``ToolDefinition`` is exported for registries built by hand, and skipped every check
    ``@tool`` makes of its options: ``side_effect="no"`` ran the tool shielded and once per
    id, ``timeout_s="5"`` failed in the call with "'<=' not supported between instances of
    'str' and ...", ``timeout_s=math.inf`` held a hung side-effect tool's call open for good.
    Found by review (s19)."""
    async def book_table(ctx: Any, args: Any) -> dict[str, Any]:
        return {}

    with pytest.raises((TypeError, ValueError)) as caught:
        ToolDefinition("BookTable", book_table, **options)
    assert "BookTable" in str(caught.value), caught.value
    assert wanted in str(caught.value), caught.value


def test_a_definition_built_directly_with_a_name_bedrock_refuses_is_refused() -> None:
    """The name was first checked when a use case declaring it loaded: "no tool 'book
    table' is registered", about a tool that was."""
    async def book_table(ctx: Any, args: Any) -> dict[str, Any]:
        return {}

    with pytest.raises(ValueError, match="Bedrock's rule"):
        ToolDefinition("book table", book_table)
