"""Start ``voiceagent serve`` in its own process for a benchmark, on 127.0.0.1 only."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(env: dict[str, str], *, stderr: IO[bytes] | int = subprocess.DEVNULL,
                 start_timeout_s: float = 30.0) -> tuple[subprocess.Popen[bytes], str]:
    """The server with ``env`` over this environment (HOST, PORT and PYTHONPATH are set here);
    returns the process and its base URL once the port accepts connections."""
    port = free_port()
    full = {**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(port),
            "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "voiceagent", "serve"], env=full,
                               stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + start_timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process, f"http://127.0.0.1:{port}"
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"the server did not start within {start_timeout_s:g} s")
