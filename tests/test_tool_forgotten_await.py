"""A plugin tool that forgets an ``await`` (``ctx.store.put(...)``, ``ctx.send(...)``): the
write or message never happened, the tool "succeeded", and the only sign was Python's
"coroutine ... was never awaited" on stderr, with no CallSid. Now, through a real call with
the scripted model, the tool fails as any tool error, the log line names the call, the tool
and what to write, and the coroutine is closed so Python's warning does not fire as well."""

from __future__ import annotations

import gc
import logging
import warnings
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.test_tool_plugins import unique, write_module
from voiceagent.app.testing import agent_server
from voiceagent.llm.scripted import APOLOGY
from voiceagent.logs import _ContextFilter

pytestmark = pytest.mark.timeout(60)

TEST_LIMIT_S = 30

FORGETFUL = '''
import trio

from voiceagent.relay.outbound import Hints
from voiceagent.tools import ToolContext, tool


@tool("SaveNote")
async def save_note(ctx: ToolContext, args):
    ctx.store.put({"pk": ctx.call_sid, "sk": "note", "text": "window seat"})
    return {"saved": True}


@tool("SaveNoteProperly")
async def save_note_properly(ctx: ToolContext, args):
    await ctx.store.put({"pk": ctx.call_sid, "sk": "note", "text": "window seat"})
    pending = ctx.store.get(ctx.call_sid, "note")       # awaited later: no mistake
    await ctx.send(Hints(("window seat",)))
    return {"saved": (await pending)["text"]}


@tool("ReadNote")
async def read_note(ctx: ToolContext, args):
    note = ctx.store.get(ctx.call_sid, "note")
    return {"text": note["text"]}          # TypeError: a coroutine is not subscriptable


@tool("SetHints")
async def set_hints(ctx: ToolContext, args):
    ctx.send(Hints(("window seat",)))
    return {"hints": "set"}


@tool("SaveInThread", blocking=True)
def save_in_thread(ctx: ToolContext, args):
    ctx.store.put({"pk": ctx.call_sid, "sk": "note", "text": "window seat"})
    return {"saved": True}
'''

RULES = {"save my note": "SaveNote", "save it properly": "SaveNoteProperly",
         "read my note": "ReadNote", "set the hints": "SetHints",
         "save in a thread": "SaveInThread"}

USE_CASE = "name: notesUseCase\nprompt: You keep notes.\ntools:\n{tools}\nscripted:\n" \
           "  rules:\n{rules}\n"


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    module = unique("forgetful_tools")
    write_module(tmp_path / "plugins", module, FORGETFUL)
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    tools = "\n".join(f"  - name: {name}\n    description: {name}." for name in RULES.values())
    rules = "\n".join(f"    - match: {words}\n      tool: {{name: {name}}}\n"
                      f"      then: Done with {{saved}}."
                      for words, name in RULES.items())
    folder = tmp_path / "config"
    (folder / "usecases").mkdir(parents=True)
    (folder / "usecases" / "notes.yaml").write_text(
        USE_CASE.format(tools=tools, rules=rules), encoding="utf-8")
    return folder, module


async def converse(tmp_path: Path, config: tuple[Path, str], said: str
                   ) -> tuple[Any, str, Any]:
    """One call saying ``said``: its turn, its CallSid and the server's store."""
    folder, module = config
    with trio.fail_after(TEST_LIMIT_S):
        async with agent_server(folder, use_case="notesUseCase", data_dir=tmp_path / "data",
                                TOOLS=module) as agent:
            async with agent.call() as call:
                turn = await call.say(said)
            stored = await agent.runtime.store.get(call.call_sid, "note")
    return turn, call.call_sid, stored


def never_awaited_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "never awaited" in r.getMessage()]


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="actors.tool_executor")
    caplog.handler.addFilter(_ContextFilter())          # the CallSid, as in production
    return caplog


async def test_a_store_write_never_awaited_fails_the_tool_and_says_what_to_write(
        tmp_path: Path, config: tuple[Path, str], logged: pytest.LogCaptureFixture) -> None:
    """Then, in the same call, a tool that awaits (and holds one coroutine a while before
    awaiting it) runs as it always did."""
    folder, module = config
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with trio.fail_after(TEST_LIMIT_S):
            async with agent_server(folder, use_case="notesUseCase", data_dir=tmp_path,
                                    TOOLS=module) as agent:
                async with agent.call() as call:
                    forgot = await call.say("please save my note")
                    after_forgetting = await agent.runtime.store.get(call.call_sid, "note")
                    awaited = await call.say("now save it properly")
        gc.collect()
    run = forgot.tool("SaveNote")
    assert run.status == "error", run
    assert run.result == {"text": "failed: ctx.store.put(...) was never awaited (it did "
                                  "nothing): write `await ctx.store.put(...)`."}
    assert forgot.text == APOLOGY               # the model heard a failure, as any tool's
    assert after_forgetting is None             # nothing was written: hence the failure
    (line,) = never_awaited_lines(logged)
    assert line.getMessage() == ("ctx.store.put(...) was never awaited (it did nothing): "
                                 "write `await ctx.store.put(...)`")
    assert line.levelno == logging.WARNING
    assert (line.call_sid, line.tool) == (call.call_sid, "SaveNote")  # type: ignore[attr-defined]
    # closed, so Python's own "coroutine ... was never awaited" does not also fire
    assert not [w for w in caught if "never awaited" in str(w.message)], \
        [str(w.message) for w in caught]
    run = awaited.tool("SaveNoteProperly")
    assert (run.status, run.result) == ("success", {"saved": "window seat"})
    assert awaited.text == "Done with window seat."


async def test_a_read_never_awaited_is_named_before_the_error_it_caused(
        tmp_path: Path, config: tuple[Path, str], logged: pytest.LogCaptureFixture) -> None:
    turn, _, _ = await converse(tmp_path, config, "read my note")
    run = turn.tool("ReadNote")
    assert run.status == "error", run
    assert run.result is not None
    assert run.result["text"] == (
        "failed: ctx.store.get(...) was never awaited (it did nothing): write "
        "`await ctx.store.get(...)`; it raised TypeError: 'coroutine' object is not "
        "subscriptable")
    assert len(never_awaited_lines(logged)) == 1


async def test_a_send_never_awaited_fails_the_tool(
        tmp_path: Path, config: tuple[Path, str], logged: pytest.LogCaptureFixture) -> None:
    turn, _, _ = await converse(tmp_path, config, "set the hints")
    run = turn.tool("SetHints")
    assert run.status == "error", run
    assert run.result == {"text": "failed: ctx.send(...) was never awaited (it did "
                                  "nothing): write `await ctx.send(...)`."}
    assert not [f for f in turn.frames if f.get("type") == "hints"], turn.frames


async def test_a_blocking_tool_is_told_to_go_through_trio(
        tmp_path: Path, config: tuple[Path, str], logged: pytest.LogCaptureFixture) -> None:
    """A plain def in a thread cannot await: the advice is trio.from_thread.run."""
    turn, _, stored = await converse(tmp_path, config, "save in a thread")
    run = turn.tool("SaveInThread")
    assert run.status == "error", run
    assert run.result == {"text": "failed: ctx.store.put(...) was never awaited (it did "
                                  "nothing): a blocking tool runs in a thread, so write "
                                  "`trio.from_thread.run(ctx.store.put, ...)`."}
    assert stored is None
