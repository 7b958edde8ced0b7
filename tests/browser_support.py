"""Debian's Chromium driven by Playwright, and the real server in a thread of its own.

Playwright's sync API runs its own event loop and blocks while it waits for the browser, so
the server cannot share the test's thread: ``server_thread`` runs it under its own
``trio.run`` and hands back its URL, its runtime and a way to run code in its loop. Playwright
never downloads a browser here: it launches /usr/bin/chromium (``apt-get install chromium``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import trio

from tests.server_harness import make_settings, running_server
from voiceagent.app.runtime import CallCounters, Runtime
from voiceagent.llm.base import LLM
from voiceagent.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")
# as python.md's probe starts it, as root on a machine with a closed network; Playwright
# gives every launch a fresh, temporary --user-data-dir of its own
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
START_TIMEOUT_S = 20.0

T = TypeVar("T")


@dataclass
class ServerThread:
    url: str
    runtime: Runtime
    token: trio.lowlevel.TrioToken
    stop: trio.Event

    def run(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` in the server's trio loop and return what it returns."""
        return trio.from_thread.run(fn, trio_token=self.token)

    def wait_for(self, predicate: Callable[[CallCounters], bool],
                 timeout_s: float = 10.0) -> None:
        """Until ``predicate(runtime.calls)`` holds, checked in the server's own thread each
        time a call starts or ends."""
        async def wait() -> None:
            calls = self.runtime.calls
            with trio.fail_after(timeout_s):
                while not predicate(calls):
                    await calls.wait_changed()
        self.run(wait)


@contextmanager
def server_thread(settings: Settings, *, llm: LLM | None = None) -> Iterator[ServerThread]:
    """The real server (hypercorn, quart-trio, the relay route) on 127.0.0.1 in a thread;
    stopped, drained and joined on the way out, whatever happened in the test."""
    ready: queue.Queue[ServerThread | BaseException] = queue.Queue()
    failures: list[BaseException] = []

    async def main() -> None:
        stop = trio.Event()
        async with running_server(settings, llm=llm) as server:
            ready.put(ServerThread(server.url, server.runtime,
                                   trio.lowlevel.current_trio_token(), stop))
            await stop.wait()

    def thread_main() -> None:
        try:
            trio.run(main)
        except BaseException as err:        # handed to the test's thread
            failures.append(err)
            ready.put(err)

    thread = threading.Thread(target=thread_main, name="voiceagent-server", daemon=True)
    thread.start()
    started = ready.get(timeout=START_TIMEOUT_S)
    if isinstance(started, BaseException):
        thread.join(timeout=START_TIMEOUT_S)
        raise started
    try:
        yield started
    finally:
        with suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(started.stop.set, trio_token=started.token)
        thread.join(timeout=START_TIMEOUT_S)
        assert not thread.is_alive(), "the server thread did not stop"
    if failures:
        raise failures[0]


def phone_settings(data_dir: Path, **overrides: Any) -> Settings:
    """The test server with the phone page on (it binds 127.0.0.1, as the setting needs)."""
    return make_settings(data_dir, PHONE_PAGE="true", **overrides)


def launch_chromium(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS,
                                      headless=True)
