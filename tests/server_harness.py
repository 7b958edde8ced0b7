"""Start the real server (hypercorn + quart-trio + the relay route) on 127.0.0.1, port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
import yaml

from voiceagent.app.caller import RelayCall
from voiceagent.app.runtime import CallCounters, Runtime
from voiceagent.app.server import open_server
from voiceagent.app.testing import REPORTS_KEPT
from voiceagent.llm.base import LLM
from voiceagent.settings import Settings
from voiceagent.tools.registry import ToolRegistry

FIXTURE_CONFIG = Path(__file__).parent / "fixtures" / "config"
AUTH_TOKEN = "test-auth-token-not-secret"


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings from nothing but what the test says: never the developer's environment."""
    values: dict[str, Any] = {
        "STORE": "sqlite", "LLM": "scripted", "DATA_DIR": str(data_dir),
        "CONFIG_DIR": str(FIXTURE_CONFIG), "STACK_USE_CASE": "testUseCase",
        "HOST": "127.0.0.1", "PORT": "0", "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "LOG_FORMAT": "console", "DRAIN_TIMEOUT_S": "2",
        # hypercorn's ping task outlives its socket by up to one interval, which would hold
        # every shutdown for the graceful timeout; test_quiet_calls_get_pings turns them on.
        "PING_INTERVAL_S": "0"}
    values.update({k: str(v) for k, v in overrides.items()})
    return Settings.from_env(values)


def one_use_case_config(tmp_path: Path, use_case: dict[str, Any],
                        file_name: str | None = None) -> Path:
    """A CONFIG_DIR holding ``use_case`` alone (as ``<name>.yaml``, or ``file_name``) and no
    profiles, under ``tmp_path/config``."""
    folder = tmp_path / "config"
    (folder / "usecases").mkdir(parents=True)
    (folder / "profiles.yaml").write_text("profiles: []\n")
    name = file_name or f"{use_case['name']}.yaml"
    (folder / "usecases" / name).write_text(yaml.safe_dump(use_case))
    return folder


@dataclass
class RunningServer:
    url: str
    runtime: Runtime


@asynccontextmanager
async def running_server(settings: Settings, *, llm: LLM | None = None,
                         registry: ToolRegistry | None = None
                         ) -> AsyncIterator[RunningServer]:
    """The server as ``voiceagent serve`` runs it, but keeping the last REPORTS_KEPT ended
    calls' reports for the test to read (a server keeps none)."""
    async with open_server(settings, llm=llm, registry=registry) as (url, runtime):
        runtime.calls.keep = REPORTS_KEPT
        yield RunningServer(url, runtime)


async def until_started(calls: CallCounters, total: int) -> None:
    """Until ``total`` calls have started here. ``open_call`` returns once setup is sent,
    before the server has read it, and ``wait_idle`` waits only for the calls started and
    those being claimed: a test that hangs up at once and then asks ``/action`` would race
    the socket's claim and its end marks."""
    while calls.total < total:
        await calls.wait_changed()


@dataclass
class BargeIn:
    received: str           # the story's words before the interrupt
    heard: str              # what the interrupt said the caller heard: the first two
    after: list[dict[str, Any]]     # frames that came after it, within half a second


async def barge_in_on_the_story(call: RelayCall) -> BargeIn:
    """The scripted model's long story, cut after its fourth word."""
    await call.say("tell me a story")
    tokens = []
    while len(tokens) < 4:
        frame = await call.receive()
        assert frame is not None
        tokens.append(frame["token"])
    heard = await call.interrupt(heard="".join(tokens[:2]))
    after = []
    with trio.move_on_after(0.5):
        while (frame := await call.receive()) is not None:
            after.append(frame)
    return BargeIn("".join(tokens), heard, after)
