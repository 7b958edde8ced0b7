"""Conversation tests for your own use cases, through the real server and the scripted model.

::

    from voiceagent.app.testing import agent_server

    async def test_hours(tmp_path):
        async with agent_server("config", use_case="restaurantOrderingUseCase",
                                data_dir=tmp_path) as agent:
            async with agent.call() as call:
                turn = await call.say("what are your hours?")
                assert "Tuesday" in turn.text
            assert call.history[-1]["role"] == "assistant"

``agent_server`` starts the same server ``voiceagent serve`` runs (hypercorn, the relay route,
the store, the tools) on 127.0.0.1 with a free port, with the scripted model by default; a
``Conversation`` plays Twilio's side (signed webhook and socket) and reads back what was said,
which tools ran with which inputs, and the final history. Every wait is bounded.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from actors.call import CallReport
from voiceagent.app.caller import Identity, RelayCall, open_call, post_form
from voiceagent.app.runtime import Runtime
from voiceagent.app.server import open_server
from voiceagent.llm.base import LLM
from voiceagent.settings import Settings
from voiceagent.tools.registry import ToolRegistry

AUTH_TOKEN = "voiceagent-testing-token"     # signs the test's webhooks; not a real credential
TURN_TIMEOUT_S = 10.0
# ended calls' reports (histories included) the test's server keeps, for ``history`` after a
# call; a server run by ``voiceagent serve`` keeps none (``CallCounters.keep``)
REPORTS_KEPT = 100


@dataclass(frozen=True)
class ToolRun:
    name: str
    input: dict[str, Any]
    result: dict[str, Any] | None = None     # the tool's JSON result (None when not found)
    status: str = "success"


@dataclass
class Turn:
    """What the agent did after one thing the caller said or pressed."""

    text: str
    tools: list[ToolRun] = field(default_factory=list)
    frames: list[dict[str, Any]] = field(default_factory=list)
    ended: dict[str, Any] | None = None      # the ``end`` frame, when the agent ended the call

    def tool(self, name: str) -> ToolRun:
        """The first run of ``name`` in this turn (AssertionError when it did not run)."""
        for run in self.tools:
            if run.name == name:
                return run
        raise AssertionError(f"tool {name!r} did not run; ran: {[t.name for t in self.tools]}")


class Conversation:
    """One call, from the caller's side. ``say`` and ``press`` return the agent's ``Turn``."""

    def __init__(self, call: RelayCall, runtime: Runtime) -> None:
        self._call = call
        self._runtime = runtime
        self.call_sid = call.identity.call_sid
        self.greeting = call.target.greeting
        self.turns: list[Turn] = []
        self.frames: list[dict[str, Any]] = []   # every non-text frame (language, end, ...)
        self._history: tuple[dict[str, Any], ...] = ()

    @property
    def relay(self) -> RelayCall:
        """The underlying Twilio-side session, for anything this class does not cover."""
        return self._call

    async def say(self, text: str, *, lang: str | None = None) -> Turn:
        """Say ``text`` as Twilio reports it: in the language Twilio hears now (the TwiML's,
        or the last switch's), or in ``lang`` (``"es"``, as ``multi`` detects it)."""
        return await self._turn(self._call.say(text, lang=lang))

    async def press(self, digits: str) -> Turn:
        """Press keys one by one (then ``#`` yourself when the use case wants a terminator)."""
        async def keys() -> None:
            for digit in digits:
                await self._call.dtmf(digit)
        return await self._turn(keys())

    async def hang_up(self) -> None:
        await self._call.hang_up()

    @property
    def history(self) -> tuple[dict[str, Any], ...]:
        """The conversation as the model sees it (Bedrock Converse messages)."""
        report = self._report()
        if report is not None and report.history is not None:
            return report.history.messages
        return self._history

    @property
    def tools(self) -> list[ToolRun]:
        """Every tool that ran in the call so far, in order."""
        return tool_runs(self.history)

    def _report(self) -> CallReport | None:
        calls = self._runtime.calls
        for report in (*calls.live, *reversed(calls.reports)):
            if report.call_sid == self.call_sid:
                return report
        return None

    async def _turn(self, action: Any) -> Turn:
        frames: list[dict[str, Any]] = []
        tokens: list[str] = []
        ended: dict[str, Any] | None = None
        with trio.fail_after(TURN_TIMEOUT_S):
            before = len(self.history)
            await action
            # One talk cycle per turn, tool rounds included; the server records the turn in
            # its history before it sends the closing frame, so the history is complete here.
            reply = await self._call.read_reply()
            frames += reply.frames
            tokens += reply.tokens
            ended = reply.ended
            if ended is None and self._ended_call(before):
                # the writer closes the talk cycle, then sends `end`: read that too
                end = await self._call.receive()
                if end is not None:
                    frames.append(end)
                    ended = end if end.get("type") == "end" else None
        self.frames.extend(f for f in frames if f.get("type") != "text")
        turn = Turn(text="".join(tokens), tools=tool_runs(self.history[before:]),
                    frames=frames, ended=ended)
        self.turns.append(turn)
        return turn

    def _ended_call(self, before: int) -> bool:
        """Whether a tool of this turn ends the session (liveAgentHandoff, endCall)."""
        registry = self._runtime.registry
        return any((d := registry.get(run.name)) is not None and d.ends_turn
                   for run in tool_runs(self.history[before:]))

    def _keep(self) -> None:
        self._history = copy.deepcopy(self.history)


def tool_runs(messages: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> list[ToolRun]:
    """The tool calls in Converse messages, each with its result."""
    results: dict[str, dict[str, Any]] = {}
    for message in messages:
        for block in message.get("content", ()):
            result = block.get("toolResult")
            if isinstance(result, dict):
                results[str(result.get("toolUseId"))] = result
    runs = []
    for message in messages:
        for block in message.get("content", ()):
            use = block.get("toolUse")
            if not isinstance(use, dict):
                continue
            result = results.get(str(use.get("toolUseId")))
            data = None
            if result is not None:
                data = next((dict(c["json"]) for c in result.get("content", ())
                             if isinstance(c.get("json"), dict)), None)
                if data is None:
                    data = next(({"text": c["text"]} for c in result.get("content", ())
                                 if isinstance(c.get("text"), str)), None)
            runs.append(ToolRun(str(use.get("name")), dict(use.get("input") or {}), data,
                                str(result.get("status", "success")) if result else "missing"))
    return runs


@dataclass
class AgentServer:
    url: str
    runtime: Runtime
    auth_token: str

    @asynccontextmanager
    async def call(self, *, from_number: str = "+15555550100", to_number: str = "+15555550199",
                   call_sid: str | None = None) -> AsyncIterator[Conversation]:
        """Dial in as Twilio would; on leaving, hang up and wait until the call is over."""
        identity = Identity(from_number=from_number, to_number=to_number,
                            **({"call_sid": call_sid} if call_sid else {}))
        async with open_call(self.url, auth_token=self.auth_token,
                             identity=identity) as call:
            conversation = Conversation(call, self.runtime)
            try:
                yield conversation
            finally:
                with trio.move_on_after(TURN_TIMEOUT_S) as scope:
                    scope.shield = True
                    if call.closed_by_server is None:
                        await call.hang_up()
        with trio.move_on_after(TURN_TIMEOUT_S) as scope:
            scope.shield = True
            while True:               # until the call's teardown (the final flush) is done
                if not any(r.call_sid == conversation.call_sid
                           for r in self.runtime.calls.live):
                    break
                await trio.sleep(0.01)
        conversation._keep()

    async def post(self, path: str, form: Mapping[str, str]) -> str:
        """POST a signed Twilio-style form (``/action``, ``/twiml``); returns the body."""
        return await post_form(self.url + path, dict(form), self.auth_token)


def make_settings(config_dir: str | Path, *, use_case: str | None = None,
                  data_dir: str | Path, **overrides: Any) -> Settings:
    """Settings for a test: nothing from the developer's environment but what is given."""
    values: dict[str, Any] = {
        "STORE": "sqlite", "LLM": "scripted", "DATA_DIR": str(data_dir),
        "CONFIG_DIR": str(config_dir), "HOST": "127.0.0.1", "PORT": "0",
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "LOG_FORMAT": "console", "DRAIN_TIMEOUT_S": "2",
        "PING_INTERVAL_S": "0", "SCRIPTED_FIRST_TOKEN_DELAY_MS": "1",
        "SCRIPTED_TOKEN_DELAY_MS": "0", "IDLE_REPROMPT_S": "0"}
    if use_case:
        values["STACK_USE_CASE"] = use_case
    values.update({k: str(v) for k, v in overrides.items()})
    return Settings.from_env(values)





@asynccontextmanager
async def agent_server(config_dir: str | Path, *, use_case: str | None = None,
                       data_dir: str | Path | None = None, llm: LLM | None = None,
                       registry: ToolRegistry | None = None,
                       **settings: Any) -> AsyncIterator[AgentServer]:
    """The real server on 127.0.0.1 (free port) for ``config_dir``; stopped on leaving.

    ``settings`` are environment names and values (``MAX_TOOL_ROUNDS=2``).
    """
    with tempfile.TemporaryDirectory(prefix="voiceagent-test-") as scratch:
        chosen = make_settings(config_dir, use_case=use_case,
                               data_dir=data_dir or scratch, **settings)
        async with open_server(chosen, llm=llm, registry=registry) as (url, runtime):
            runtime.calls.keep = REPORTS_KEPT       # no call has started yet
            yield AgentServer(url, runtime, chosen.twilio_auth_token or "")
