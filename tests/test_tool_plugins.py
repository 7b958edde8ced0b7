"""Tools from outside voiceagent (issue 18): modules named in TOOLS and installed packages'
``voiceagent.tools`` entry points, the typed ``ToolContext`` they run with, blocking tools in
the runtime's own threads, and every way a plugin can be wrong, as one line from both
``voiceagent serve`` and ``voiceagent config load``.

Plugin modules are written to tmp_path under names of their own (``sys.modules`` keeps what
one test imported) and put on ``sys.path`` (or PYTHONPATH, for a server process).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.dynamodb_support import isolate_env
from tests.fakes import FakeLLM, tool_use, words
from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from voiceagent.app.caller import Reply, open_call
from voiceagent.app.cli import main
from voiceagent.app.runtime import Runtime
from voiceagent.errors import ConfigError, SettingsError
from voiceagent.llm.base import LLMRequest
from voiceagent.settings import Settings
from voiceagent.tools.plugins import build_registry

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).parent.parent
TEST_LIMIT_S = 20

PLUGIN = '''
import threading

import trio

from voiceagent.relay.outbound import Hints, Text
from voiceagent.tools import ToolContext, tool

started = threading.Event()
release = threading.Event()


@tool("LookupBooking", timeout_s=5.0)
async def lookup_booking(ctx: ToolContext, args):
    ctx.log.info("booking looked up", extra={"party": args["party"]})
    await ctx.store.put({"pk": ctx.call_sid, "sk": "booking", "party": args["party"]})
    await ctx.send(Hints(("table for two",)))
    return {"call_sid": ctx.call_sid, "caller": ctx.caller, "called": ctx.called,
            "use_case": ctx.use_case.name, "title": ctx.use_case.title,
            "tool": ctx.tool_name, "tool_use_id": ctx.tool_use_id,
            "settings": type(ctx.settings).__name__,
            "stack_use_case": ctx.settings.stack_use_case,
            "stored": (await ctx.store.get(ctx.call_sid, "booking"))["party"]}


@tool("CountCovers", blocking=True)
def count_covers(ctx: ToolContext, args):
    return {"thread": threading.get_ident(), "covers": args["party"] * 2,
            "use_case": ctx.use_case.name}


@tool("WaitForKitchen", blocking=True, timeout_s=0.5)
def wait_for_kitchen(ctx: ToolContext, args):
    started.set()
    release.wait(30)
    return {"ready": True}


@tool("Announce")
async def announce(ctx: ToolContext, args):
    await ctx.send(Text("Your table is ready!", last=True))
    return {"announced": True}
'''

USE_CASE = '''
name: plugUseCase
title: Plugin Bistro
prompt: You take table bookings.
tools:
{tools}
'''


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def write_module(folder: Path, name: str, source: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")


def write_config(folder: Path, *tools: str) -> Path:
    (folder / "usecases").mkdir(parents=True, exist_ok=True)
    declared = "\n".join(f"  - name: {name}\n    description: {name}." for name in tools)
    (folder / "usecases" / "plugUseCase.yaml").write_text(USE_CASE.format(tools=declared),
                                                         encoding="utf-8")
    return folder


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The plugin module above, importable under a name of its own."""
    name = unique("bistro_tools")
    write_module(tmp_path / "plugins", name, PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    return name


def plugin_settings(tmp_path: Path, module: str, **overrides: Any) -> Settings:
    config = write_config(tmp_path / "config", "LookupBooking", "CountCovers",
                          "WaitForKitchen", "Announce", "endCall")
    return make_settings(tmp_path / "data", CONFIG_DIR=str(config),
                         STACK_USE_CASE="plugUseCase", TOOLS=module, **overrides)


async def call_tool(settings: Settings, name: str, args: dict[str, Any]
                    ) -> tuple[dict[str, Any], Reply, Runtime]:
    """One call through the real server, whose registry it builds from the settings: the
    model calls ``name`` and then says "Done."; returns the tool's result as the model got
    it, the frames the caller got, and the runtime."""
    llm = FakeLLM([tool_use("tu_1", name, args), words("Done.", first_s=0.01, gap_s=0.01)])
    async with running_server(settings, llm=llm) as server:
        async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
            await call.say("a table for two, please")
            reply = await call.read_reply()
            await call.hang_up()
        await server.runtime.calls.wait_idle()
    return tool_result(llm.requests[1]), reply, server.runtime


def tool_result(request: LLMRequest) -> dict[str, Any]:
    (block,) = request.messages[-1]["content"]
    result: dict[str, Any] = block["toolResult"]
    return result


# ------------------------------------------------------------------ TOOLS, through a call


async def test_a_tools_module_serves_a_call_with_the_typed_context(
        tmp_path: Path, plugin: str) -> None:
    settings = plugin_settings(tmp_path, plugin)
    with trio.fail_after(TEST_LIMIT_S):
        result, reply, runtime = await call_tool(settings, "LookupBooking", {"party": 2})
    assert result["status"] == "success", result
    (content,) = result["content"]
    assert content["json"] == {
        "call_sid": content["json"]["call_sid"], "caller": "+15555550100",
        "called": "+15555550199", "use_case": "plugUseCase", "title": "Plugin Bistro",
        "tool": "LookupBooking", "tool_use_id": "tu_1", "settings": "Settings",
        "stack_use_case": "plugUseCase", "stored": 2}
    assert content["json"]["call_sid"].startswith("CA")
    assert reply.text == "Done."
    assert {"type": "hints", "hints": "table for two"} in reply.frames
    assert runtime.registry.get("LookupBooking") is not None
    assert runtime.registry.get("endCall") is not None          # the built-ins are there too


async def test_a_blocking_tool_runs_in_the_runtimes_threads(tmp_path: Path,
                                                           plugin: str) -> None:
    settings = plugin_settings(tmp_path, plugin, TOOL_THREADS=3)
    with trio.fail_after(TEST_LIMIT_S):
        result, reply, runtime = await call_tool(settings, "CountCovers", {"party": 3})
    assert result["status"] == "success", result
    (content,) = result["content"]
    assert content["json"]["covers"] == 6
    assert content["json"]["use_case"] == "plugUseCase"
    assert content["json"]["thread"] != threading.get_ident()    # not on trio's thread
    assert runtime.registry.threads.total_tokens == 3            # TOOL_THREADS, its own
    assert reply.text == "Done."


async def test_a_hung_blocking_tool_times_out_and_the_call_goes_on(tmp_path: Path,
                                                                  plugin: str) -> None:
    module = importlib.import_module(plugin)
    settings = plugin_settings(tmp_path, plugin, TOOL_THREADS=1)
    try:
        with trio.fail_after(TEST_LIMIT_S):
            result, reply, runtime = await call_tool(settings, "WaitForKitchen", {})
        assert module.started.is_set()
        assert runtime.registry.threads.borrowed_tokens == 1    # its thread waits on, holding
    finally:
        module.release.set()
    assert result["status"] == "error"
    assert result["content"][0]["text"].startswith("timed out after 0.5 s")
    assert reply.text == "Done."
    with trio.fail_after(TEST_LIMIT_S):
        async with runtime.registry.threads:       # the token comes back when the thread ends
            pass


async def test_a_tool_sending_text_gets_an_error_result(tmp_path: Path, plugin: str) -> None:
    settings = plugin_settings(tmp_path, plugin)
    with trio.fail_after(TEST_LIMIT_S):
        result, reply, _ = await call_tool(settings, "Announce", {})
    assert result["status"] == "error"
    text = result["content"][0]["text"]
    assert text.startswith("failed: ToolMessageRefused: tool 'Announce': a tool cannot send "
                           "Text: only the model speaks to the caller"), text
    assert reply.text == "Done."                          # the tool's words never went out
    assert [f["token"] for f in reply.frames if f["type"] == "text" and f["token"]] == ["Done."]


# ------------------------------------------------------------------ entry points


def write_distribution(site: Path, module: str, value: str, *, name: str = "demo") -> None:
    """A tiny installed package: its dist-info, with one ``voiceagent.tools`` entry point."""
    info = site / "voiceagent_demo_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: voiceagent-demo-plugin\n"
                                   "Version: 1.0\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[voiceagent.tools]\n{name} = {value}\n",
                                           encoding="utf-8")
    write_module(site, module, '''
        from voiceagent.tools import tool

        @tool("CheckTableAvailability")
        async def check_table(ctx, args):
            return {"free": 3}
        ''')


def test_an_entry_point_module_registers_its_tools(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    module = unique("ep_tools")
    write_distribution(tmp_path / "site", module, module)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    settings = make_settings(tmp_path / "data")
    definition = build_registry(settings).get("CheckTableAvailability")
    assert definition is not None
    assert definition.function.__module__ == module
    config = write_config(tmp_path / "config", "CheckTableAvailability")
    isolate_env(monkeypatch, {"STORE": "sqlite", "DATA_DIR": str(tmp_path / "data"),
                              "CONFIG_DIR": str(config), "TOOLS": ""})
    monkeypatch.chdir(tmp_path)     # config load reads ./.env: not the checkout's
    assert main(["config", "load"]) == 0
    assert "use case plugUseCase: created" in capsys.readouterr().out


def test_an_entry_point_naming_an_attribute_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = unique("ep_tools")
    write_distribution(tmp_path / "site", module, f"{module}:check_table")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(ConfigError) as caught:
        build_registry(make_settings(tmp_path / "data"))
    assert str(caught.value) == (
        f"entry point 'demo' of voiceagent-demo-plugin 1.0 (voiceagent.tools): "
        f"{module}:check_table: names an attribute; a voiceagent.tools entry point names a "
        f"module ({module}) whose @tool functions register when it is imported")


def test_a_tools_module_clashing_with_an_entry_point_names_both(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from_package, mine = unique("ep_tools"), unique("my_tools")
    write_distribution(tmp_path / "site", from_package, from_package)
    write_module(tmp_path / "site", mine, '''
        from voiceagent.tools import tool

        @tool("CheckTableAvailability")
        async def mine(ctx, args):
            return {}
        ''')
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(ConfigError) as caught:
        build_registry(make_settings(tmp_path / "data", TOOLS=mine))
    assert str(caught.value) == (
        f"TOOLS: {mine}: tool 'CheckTableAvailability' is already registered by entry point "
        f"'demo' of voiceagent-demo-plugin 1.0 (voiceagent.tools) module {from_package}; "
        "rename one of them (a tool name is unique in the process)")


# ------------------------------------------------------------------ the TOOLS setting


def test_tools_setting_is_a_comma_separated_list_of_module_names() -> None:
    base = {"TWILIO_AUTH_TOKEN": "not-secret"}
    settings = Settings.from_env({**base, "TOOLS": " my_agent.tools, other ,my_agent.tools"})
    assert settings.tools_modules == ("my_agent.tools", "other")
    assert Settings.from_env(base).tools_modules == ()
    assert Settings.from_env(base).tool_threads == 16
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**base, "TOOLS": "my-agent.tools", "TOOL_THREADS": "0"})
    assert caught.value.problems == [
        "TOOLS: 'my-agent.tools': not a Python module name; list modules to import, "
        "comma-separated (my_agent.tools,other.tools)",
        "TOOL_THREADS: Input should be greater than or equal to 1"]


# ------------------------------------------------------------------ one line per mistake


def broken_setup(kind: str, tmp_path: Path) -> tuple[Path, Path, str, list[str]]:
    """(plugins folder, config folder, TOOLS, what the one line must say) for one mistake."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    config = write_config(tmp_path / "config", "endCall")
    first, second = unique(f"{kind}_a"), unique(f"{kind}_b")
    if kind == "import":
        write_module(plugins, first, 'raise RuntimeError("no kitchen printer configured")\n')
        return plugins, config, first, [
            f"voiceagent: TOOLS: {first}: cannot import it: RuntimeError: no kitchen printer "
            "configured", f" (at {plugins / first}.py:1)"]     # where: no traceback to read
    if kind == "nothing":
        write_module(plugins, first, "async def lookup(ctx, args):\n    return {}\n")
        return plugins, config, first, [
            f"voiceagent: TOOLS: {first}: registers no tools: decorate its tool functions "
            "with @voiceagent.tools.tool(\"ToolName\")"]
    if kind == "duplicate":
        for name in (first, second):
            write_module(plugins, name, '''
                from voiceagent.tools import tool

                @tool("LookupBooking")
                async def lookup(ctx, args):
                    return {}
                ''')
        return plugins, config, f"{first},{second}", [
            f"voiceagent: TOOLS: {second}: tool 'LookupBooking' is already registered by "
            f"TOOLS module {first}; rename one of them"]
    assert kind == "unknown"
    config = write_config(tmp_path / "config", "endCall", "BookTable")
    return plugins, config, "", [
        f"voiceagent: {config / 'usecases' / 'plugUseCase.yaml'}: tools[1].name: no tool "
        "'BookTable' is registered; registered: [", "'endCall'"]


MISTAKES = ["import", "nothing", "duplicate", "unknown"]


@pytest.mark.parametrize("kind", MISTAKES)
def test_serve_stops_with_one_line(kind: str, tmp_path: Path) -> None:
    plugins, config, tools, says = broken_setup(kind, tmp_path)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "STORE": "sqlite",
           "LLM": "scripted", "DATA_DIR": str(tmp_path / "data"), "CONFIG_DIR": str(config),
           "STACK_USE_CASE": "plugUseCase", "HOST": "127.0.0.1", "PORT": "0",
           "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "LOG_FORMAT": "json", "TOOLS": tools,
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(plugins)])}
    done = subprocess.run([sys.executable, "-m", "voiceagent", "serve"], env=env,
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=50)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(says[0]), line
    assert all(part in line for part in says[1:]), line


@pytest.mark.parametrize("kind", MISTAKES)
def test_config_load_stops_with_one_line(kind: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    plugins, config, tools, says = broken_setup(kind, tmp_path)
    monkeypatch.syspath_prepend(str(plugins))
    isolate_env(monkeypatch, {"STORE": "sqlite", "DATA_DIR": str(tmp_path / "data"),
                              "CONFIG_DIR": str(config), "TOOLS": tools})
    monkeypatch.chdir(tmp_path)     # config load reads ./.env: not the checkout's
    assert main(["config", "load"]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(says[0]), line
    assert all(part in line for part in says[1:]), line
    assert not (tmp_path / "data").exists()              # nothing was opened, let alone written
