"""A developer's own tools, written as docs/tools.md says: what they and the model see when
something goes wrong. Each test is one defect found by following the docs literally."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from tests.server_harness import make_settings
from tests.test_tool_plugins import (
    TEST_LIMIT_S,
    call_tool,
    unique,
    write_module,
)

pytestmark = pytest.mark.timeout(60)

DELIVERY = '''
import trio

from voiceagent.tools import ToolContext, tool


async def slow_partner_api():
    await trio.sleep(30)


@tool("CheckDeliveryTime", timeout_s=5.0)
async def check_delivery_time(ctx: ToolContext, args):
    with trio.fail_after(0.2):           # the tool's own limit on a slow partner API
        await slow_partner_api()
    return {"minutes": 40}


@tool("BookTable", side_effect=True, timeout_s=5.0)
async def book_table(ctx: ToolContext, args):
    await ctx.store.put({"pk": ctx.call_sid, "sk": "booking", "party": 4})
    # forgot `return {...}`: the booking is written, the function returns None
'''

USE_CASE = '''
name: diner
title: Diner
prompt: You book tables.
tools:
  - name: CheckDeliveryTime
    description: How long a delivery takes.
  - name: BookTable
    description: Books a table.
'''


def diner_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    module = unique("diner_tools")
    write_module(tmp_path / "plugins", module, DELIVERY)
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    (tmp_path / "config" / "usecases").mkdir(parents=True)
    (tmp_path / "config" / "usecases" / "diner.yaml").write_text(USE_CASE, encoding="utf-8")
    return make_settings(tmp_path / "data", CONFIG_DIR=str(tmp_path / "config"),
                         STACK_USE_CASE="diner", TOOLS=module)


async def test_a_tools_own_timeout_is_not_reported_as_the_tool_timeout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tool's own ``trio.fail_after(0.2)`` around a slow API fired after 0.2 s; the model
    (and the log, and `voiceagent calls show`) are told 'timed out after 5 s', the tool's
    limit, which never expired. It is an exception the tool raised (TooSlowError)."""
    settings = diner_settings(tmp_path, monkeypatch)
    with trio.fail_after(TEST_LIMIT_S):
        started = trio.current_time()
        result, _, _ = await call_tool(settings, "CheckDeliveryTime", {})
        elapsed = trio.current_time() - started
    assert elapsed < 5                                  # the 5 s limit never expired
    assert result["status"] == "error"
    text = result["content"][0]["text"]
    assert not text.startswith("timed out after 5 s"), text
    assert "TooSlowError" in text, text


async def test_a_side_effect_tool_returning_none_says_what_it_returned_and_that_it_ran(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """``BookTable`` wrote the booking and forgot its ``return``. The model is told only
    'returned something that is not a JSON object': not what it returned (None), and not that
    the side effect happened, so a real model asks again and books a second table (the
    oversize path says 'The tool did run: check before repeating it'). Nothing is logged, so
    the developer sees no warning in the server log either."""
    settings = diner_settings(tmp_path, monkeypatch)
    with trio.fail_after(TEST_LIMIT_S):
        result, _, _runtime = await call_tool(settings, "BookTable", {})
    assert result["status"] == "error"
    text = result["content"][0]["text"]
    assert "NoneType" in text, text                     # what it returned
    assert "did run" in text, text                      # the booking exists
    assert any(r.name == "actors.tool_executor" and r.levelname == "WARNING"
               for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_a_tool_declared_twice_in_a_use_case_is_refused_at_load(tmp_path: Path) -> None:
    """Two declarations of one name load without a word: the model request carries both
    toolSpecs (Bedrock refuses a toolConfig whose tool names repeat) and the call uses the
    first (``UseCase.tool``), so the second's schema and timeout_s are silently ignored."""
    from voiceagent.errors import ConfigError
    from voiceagent.tools.registry import default_registry
    from voiceagent.usecases import load_use_case_file

    path = tmp_path / "diner.yaml"
    path.write_text('''
name: diner
prompt: You end calls.
tools:
  - name: endCall
    description: Hang up.
  - name: endCall
    description: Hang up when the caller says goodbye.
    timeout_s: 1
''', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        default_registry().check_use_case(load_use_case_file(path))
    assert caught.value.key_path == "tools[1].name"


@pytest.mark.parametrize(("key_path", "changes"), [
    ("scripted.rules[0].tool.input", {"scripted": {"rules": [
        {"match": "book", "tool": {"name": "PlaceOrderFunction",
                                   "input": {"order_type": "carryout"}}}]}}),
    ("dtmf.handlers.2.input", {"dtmf": {"handlers": {"2": {"tool": "PlaceOrderFunction"}}}}),
])
def test_a_fixed_tool_input_that_fails_the_schema_is_refused_at_load(
        key_path: str, changes: dict[str, Any]) -> None:
    """A scripted rule's or a DTMF handler's ``input`` is fixed in the file, yet it is only
    checked against the tool's input_schema when a caller says the words or presses the key:
    `config load` and `serve` accept it, and the call hears 'Sorry, I couldn't get that done'
    (calls show: 'invalid input: ...')."""
    from voiceagent.errors import ConfigError
    from voiceagent.tools.registry import default_registry
    from voiceagent.usecases import UseCase

    data: dict[str, Any] = {"name": "demo", "prompt": "Hi.", "tools": [{
        "name": "PlaceOrderFunction", "description": "Order.", "input_schema": {
            "type": "object", "required": ["order_type"],
            "properties": {"order_type": {"type": "string", "enum": ["pickup", "delivery"]}}}}]}
    data.update(changes)
    with pytest.raises(ConfigError) as caught:
        default_registry().check_use_case(UseCase.model_validate(data))
    assert caught.value.key_path == key_path


@pytest.mark.parametrize(("schema", "key_path"), [
    ({"type": "object", "properties": {"party_size": {"type": "integer"}},
      "requried": ["party_size"]}, "tools[0].input_schema.requried"),
    ({"type": "object", "properties": {"party_size": {"type": "integer", "minimun": 1}}},
     "tools[0].input_schema.properties.party_size.minimun"),
    ({"type": "object", "propertes": {"party_size": {"type": "integer"}}},
     "tools[0].input_schema.propertes"),
])
def test_a_misspelt_schema_keyword_is_refused_at_load(schema: dict[str, Any],
                                                      key_path: str) -> None:
    """config/README.md: files are read strictly, 'so a typo fails at load time'. In an
    input_schema a misspelt keyword is accepted and ignored: with 'requried' the model may
    leave party_size out and the tool fails with KeyError on the call; with 'minimun' a party
    of 0 reaches the tool; with 'propertes' the model is shown no fields at all."""
    from voiceagent.errors import ConfigError
    from voiceagent.tools.registry import default_registry
    from voiceagent.usecases import UseCase

    uc = UseCase.model_validate({"name": "demo", "prompt": "Hi.", "tools": [
        {"name": "endCall", "description": "Hang up.", "input_schema": schema}]})
    with pytest.raises(ConfigError) as caught:
        default_registry().check_use_case(uc)
    assert caught.value.key_path == key_path


def test_schema_annotations_and_vendor_keywords_still_load() -> None:
    """Only misspellings are refused: what JSON Schema defines as annotations, and vendor
    ``x-`` extensions, which it reserves for this, load (``check_use_case`` raises no
    ConfigError), and the schema around them still checks the tool's input."""
    from voiceagent.tools.registry import default_registry
    from voiceagent.usecases import UseCase

    schema = {"type": "object", "title": "Hang up", "x-owner": "ops", "$comment": "why",
              "properties": {"reason": {"type": "string", "examples": ["done"],
                                        "x-ui": {"anything": True}}}}
    uc = UseCase.model_validate({"name": "demo", "prompt": "Hi.", "tools": [
        {"name": "endCall", "description": "Hang up.", "input_schema": schema}]})
    registry = default_registry()
    registry.check_use_case(uc)
    assert registry.validate_input(uc.tools[0], {"reason": "done"}) == []
    assert registry.validate_input(uc.tools[0], {"reason": 5}) == [
        "reason: must be of type string"]



async def test_check_with_the_scripted_model_fails_a_config_serve_refuses(
        tmp_path: Path) -> None:
    """docs/tools.md: `voiceagent check` checks the use cases against the same tools as
    serve. With LLM=scripted (what `voiceagent init` writes) it never reads them: a use case
    naming a tool nobody registered, or a TOOLS module that does not import, gets 'all 2
    checks passed' and exit 0, while `voiceagent serve` exits 2 on the same settings."""
    from tests.check_support import RUN_TIMEOUT_S, base_env, run_check

    (tmp_path / "config" / "usecases").mkdir(parents=True)
    (tmp_path / "config" / "usecases" / "diner.yaml").write_text(
        "name: diner\nprompt: Hi.\ntools:\n  - name: bookTable\n    description: Book.\n")
    env = base_env(tmp_path, STORE="sqlite", LLM="scripted", DATA_DIR=str(tmp_path / "data"),
                   CONFIG_DIR=str(tmp_path / "config"), STACK_USE_CASE="diner",
                   TOOLS="diner_tools_that_do_not_exist")
    with trio.fail_after(RUN_TIMEOUT_S):
        run = await run_check(env, tmp_path)
    assert run.code == 1, run.out + run.err
    assert "diner_tools_that_do_not_exist" in run.out, run.out


def test_tools_naming_the_package_says_its_tools_module_was_not_imported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/tools.md: 'Registering a module means importing it: its @tool functions, and
    those of its submodules (a package may spread its tools over files), register
    themselves.' So a developer sets TOOLS=diner for the `voiceagent init` project (package
    diner, tools in diner/tools.py). Importing a package does not import its submodules, and
    the one line says to decorate functions that are decorated: it should say that
    diner.tools was never imported (name it in TOOLS, or import it in diner/__init__.py)."""
    from voiceagent.errors import ConfigError
    from voiceagent.settings import Settings
    from voiceagent.tools.plugins import build_registry

    package = unique("diner")
    write_module(tmp_path / "plugins" / package, "__init__", '"""Diner."""\n')
    write_module(tmp_path / "plugins" / package, "tools", '''
        from voiceagent.tools import tool

        @tool("BookTable")
        async def book_table(ctx, args):
            return {}
        ''')
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    with pytest.raises(ConfigError) as caught:
        build_registry(Settings.model_validate({"TOOLS": package}))
    assert f"{package}.tools" in str(caught.value), str(caught.value)


async def test_a_tool_failing_in_its_own_nursery_tells_the_model_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/tools.md: 'To fail, raise: the model gets failed: <ExceptionType>: <message>', so
    write messages the model can act on. A trio tool that asks two APIs at once (a nursery)
    and whose one child raises such a message gets, under trio's strict exception groups,
    'failed: ExceptionGroup: Exceptions from Trio nursery (1 sub-exception)': the message
    the developer wrote for the model is lost."""
    module = unique("nursery_tools")
    write_module(tmp_path / "plugins", module, '''
        import trio
        from voiceagent.tools import tool

        async def ask_partner():
            raise ValueError("a delivery needs a postcode: ask the caller for it")

        @tool("CheckDeliveryTime")
        async def check_delivery_time(ctx, args):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask_partner)
                nursery.start_soon(trio.sleep, 1)
            return {}
        ''')
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    (tmp_path / "config" / "usecases").mkdir(parents=True)
    (tmp_path / "config" / "usecases" / "diner.yaml").write_text(USE_CASE, encoding="utf-8")
    (tmp_path / "config" / "usecases" / "diner.yaml").write_text(
        "name: diner\nprompt: Hi.\ntools:\n  - name: CheckDeliveryTime\n"
        "    description: How long.\n", encoding="utf-8")
    settings = make_settings(tmp_path / "data", CONFIG_DIR=str(tmp_path / "config"),
                             STACK_USE_CASE="diner", TOOLS=module)
    with trio.fail_after(TEST_LIMIT_S):
        result, _, _ = await call_tool(settings, "CheckDeliveryTime", {})
    text = result["content"][0]["text"]
    assert "ask the caller for it" in text, text
