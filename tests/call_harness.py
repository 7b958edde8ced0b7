"""Run one call's nursery against a MemorySocket, with the test playing Twilio."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from actors.call import CallPlan, CallReport, CallServices, run_call
from actors.messages import Setup
from tests.fakes import FakeLLM, MemorySocket, MemoryStore, RecordingWriter, setup_frame
from voiceagent.llm.base import LLM
from voiceagent.tools.registry import ToolRegistry
from voiceagent.usecases import UseCase

GREETING = "Hello, thanks for calling Test Pizza."
CALL_SID = "CA" + "1" * 32
CALL_LIMIT_S = 300


def plain_use_case(**changes: Any) -> UseCase:
    data: dict[str, Any] = {"name": "test", "prompt": "You are a test agent.",
                            "relay": {"welcomeGreeting": GREETING}}
    data.update(changes)
    return UseCase.model_validate(data)


@dataclass
class TestCall:
    socket: MemorySocket
    report: CallReport
    writer: RecordingWriter
    llm: LLM
    store: MemoryStore
    done: trio.Event
    services: CallServices

    def say(self, text: str) -> None:
        self.socket.push({"type": "prompt", "voicePrompt": text, "lang": "en-US", "last": True})

    def interrupt(self, heard: str | None, duration_ms: int = 300) -> None:
        frame: dict[str, Any] = {"type": "interrupt", "durationUntilInterruptMs": duration_ms}
        if heard is not None:
            frame["utteranceUntilInterrupt"] = heard
        self.socket.push(frame)

    def dtmf(self, digit: str) -> None:
        self.socket.push({"type": "dtmf", "digit": digit})

    async def frame(self) -> dict[str, Any]:
        return await self.socket.out.receive()

    async def reply(self) -> tuple[str, list[dict[str, Any]]]:
        """Frames up to and including the one that closes the talk cycle (or an end)."""
        frames: list[dict[str, Any]] = []
        while True:
            frame = await self.frame()
            frames.append(frame)
            if frame["type"] == "end" or (frame["type"] == "text" and frame["last"]):
                text = "".join(f.get("token", "") for f in frames if f["type"] == "text")
                return text, frames

    async def until_end(self, within_s: float = 5) -> list[dict[str, Any]]:
        """Frames up to and including ``end`` (an ending tool's, a goodbye's), which must
        come within ``within_s`` (virtual time under autojump_clock)."""
        frames: list[dict[str, Any]] = []
        with trio.fail_after(within_s):
            while not frames or frames[-1]["type"] != "end":
                frames.append(await self.frame())
        return frames

    @property
    def history(self) -> tuple[dict[str, Any], ...]:
        assert self.report.history is not None
        return self.report.history.messages

    async def hang_up(self) -> None:
        self.socket.hang_up()
        with trio.fail_after(10):
            await self.done.wait()


@asynccontextmanager
async def open_test_call(llm: FakeLLM | LLM, *, use_case: UseCase | None = None,
                         registry: ToolRegistry | None = None,
                         store: MemoryStore | None = None,
                         resolve: Any = None,
                         services_changes: dict[str, Any] | None = None,
                         socket: MemorySocket | None = None
                         ) -> AsyncIterator[TestCall]:
    socket, writer, store = socket or MemorySocket(), RecordingWriter(), store or MemoryStore()
    use_case = use_case or plain_use_case()
    plan = CallPlan(call_sid=CALL_SID, use_case=use_case, system_prompt=use_case.prompt,
                    model_id="test-model", greeting=use_case.welcome_greeting,
                    caller="+15555550100", called="+15555550199")

    async def default_resolve(setup: Setup) -> CallPlan:
        return plan

    parts: dict[str, Any] = {"persist": writer.persist, "flush": writer.flush}
    parts.update(services_changes or {})          # a real write-behind's, say
    services = CallServices(llm=llm, store=store, registry=registry or ToolRegistry(), **parts)
    report, done = CallReport(), trio.Event()

    async def run() -> None:
        try:
            await run_call(socket, resolve=resolve or default_resolve, services=services,
                           report=report)
        finally:
            done.set()

    # A deadlock fails fast: on the virtual clock this deadline is reached at once.
    with trio.fail_after(CALL_LIMIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            socket.push(setup_frame(CALL_SID))
            call = TestCall(socket, report, writer, llm, store, done, services)
            yield call
            if not done.is_set():
                await call.hang_up()
