"""``voiceagent serve`` as a real process on 127.0.0.1, its JSON log lines read as they come:
what an operator runs, with nothing of the test's event loop inside it."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from tests.server_harness import AUTH_TOKEN, FIXTURE_CONFIG


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerProcess:
    def __init__(self, process: trio.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.events: list[dict[str, Any]] = []
        self._buffer = b""

    async def wait_log(self, event: str) -> dict[str, Any]:
        """Read the JSON log lines on stderr until one has this event name."""
        assert self.process.stderr is not None
        while True:
            for entry in self.events:
                if entry.get("event") == event:
                    return entry
            chunk = await self.process.stderr.receive_some(65536)
            if not chunk:
                raise AssertionError(f"server exited before logging {event!r}")
            self._buffer += chunk
            *lines, self._buffer = self._buffer.split(b"\n")
            self.events += [json.loads(line) for line in lines if line.startswith(b"{")]


@asynccontextmanager
async def serve_process(tmp_path: Path, config_dir: Path = FIXTURE_CONFIG, *,
                        open_files: tuple[int, int] | None = None,
                        **env: str) -> AsyncIterator[ServerProcess]:
    """``open_files``: the (soft, hard) RLIMIT_NOFILE the server starts with."""
    port = free_port()
    values = {"PATH": os.environ.get("PATH", ""), "STORE": "sqlite", "LLM": "scripted",
              "DATA_DIR": str(tmp_path / "data"), "CONFIG_DIR": str(config_dir),
              "STACK_USE_CASE": "testUseCase", "HOST": "127.0.0.1", "PORT": str(port),
              "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "LOG_FORMAT": "json", "PING_INTERVAL_S": "0",
              "PYTHONPATH": str(Path(__file__).parent.parent)}
    values.update(env)

    def limit_open_files() -> None:
        assert open_files is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, open_files)

    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "voiceagent", "serve"], env=values,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=limit_open_files if open_files is not None else None)
    server = ServerProcess(process, port)
    try:
        settled = await server.wait_log("heap settled")     # start-up frozen, then it listens
        assert settled["frozen_objects"] > 10_000
        await server.wait_log(f"Running on http://127.0.0.1:{port} (CTRL + C to quit)")
        yield server
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


