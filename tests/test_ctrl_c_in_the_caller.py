"""Ctrl-C in `voiceagent demo` (and `call`) while talking ends the command as a Unix tool's
would: exit code 130, no traceback. The KeyboardInterrupt arrives inside trio's nurseries,
wrapped in exception groups, so the CLI's plain `except KeyboardInterrupt` never saw it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent


async def test_ctrl_c_during_a_demo_call_exits_130_without_a_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    env.pop("CONFIG_DIR", None)
    with trio.fail_after(30):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "voiceagent", "demo"], cwd=tmp_path, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert process.stdout is not None
            assert process.stderr is not None
            printed = b""
            while b"agent: Hi" not in printed:      # the call is up: the greeting is shown
                chunk = await process.stdout.receive_some(4096)
                assert chunk, "voiceagent demo exited before the greeting"
                printed += chunk
            process.send_signal(signal.SIGINT)
            errors = b""
            while chunk := await process.stderr.receive_some(65536):
                errors += chunk
            assert await process.wait() == 130, errors.decode()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert b"Traceback" not in errors, errors.decode()
