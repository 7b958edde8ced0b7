"""Ctrl-C in `voiceagent demo` (and `call`) while talking ends the command as a Unix tool's
would: exit code 130, no traceback. In `call` the KeyboardInterrupt arrives inside trio's
nurseries, wrapped in exception groups, so the CLI's plain `except KeyboardInterrupt` never
saw it; the demo, whose server a KeyboardInterrupt could land in, receives the signal
instead (voiceagent/app/ctrl_c.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

from voiceagent.app.ctrl_c import signals_stop

ROOT = Path(__file__).resolve().parent.parent

# Ctrl-C landing while the demo's server runs a call's code, every time: Python runs the
# SIGINT handler at the tool's next bytecode, in the call's task.
CTRL_C_TOOL = '''
import signal

from voiceagent.tools import ToolContext, tool


@tool("PressCtrlC")
async def press_ctrl_c(ctx: ToolContext, args):
    signal.raise_signal(signal.SIGINT)
    return {"pressed": True}
'''
USE_CASE = r'''
name: ctrlCUseCase
prompt: You answer the phone.
relay:
  welcomeGreeting: Hi, the Ctrl-C line.
tools:
  - name: PressCtrlC
    description: Press Ctrl-C in the server.
scripted:
  rules:
    - match: "\\bstop\\b"
      tool:
        name: PressCtrlC
      then: Stopped.
'''
PROFILES = '''
profiles:
  - phone: "+15555550100"
    use_case: ctrlCUseCase
'''


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


async def test_ctrl_c_landing_inside_the_demos_server_still_ends_the_demo(
        tmp_path: Path) -> None:
    """trio raises KeyboardInterrupt in whatever code runs when SIGINT lands; in a request's
    or a call's task hypercorn logged it as 'Error in ASGI Framework' and served on, so the
    demo (piped stdin, no --say) waited for its caller for ever; with --say, as here, the
    script went on and the demo exited 0."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "ctrl_c_tools.py").write_text(CTRL_C_TOOL, encoding="utf-8")
    (tmp_path / "config" / "usecases").mkdir(parents=True)
    (tmp_path / "config" / "usecases" / "ctrlCUseCase.yaml").write_text(
        USE_CASE, encoding="utf-8")
    (tmp_path / "config" / "profiles.yaml").write_text(PROFILES, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path / "plugins")]),
           "HOME": str(tmp_path), "CONFIG_DIR": str(tmp_path / "config"),
           "TOOLS": "ctrl_c_tools"}
    with trio.fail_after(30):
        done = await trio.run_process(
            [sys.executable, "-m", "voiceagent", "demo", "--say", "please stop",
             "--say", "are you still there"],
            cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_stdout=True,
            capture_stderr=True, check=False)
    said = (done.stdout + done.stderr).decode()
    assert "caller: please stop" in said, said
    assert done.returncode == 130, said
    assert "Traceback" not in said, said


async def test_a_second_ctrl_c_ends_what_the_first_one_left_running() -> None:
    """The first ends the conversation and lets the server drain; a drain stuck on a call
    would keep the demo up for DRAIN_TIMEOUT_S (90 s), so the second one ends it all."""
    with trio.fail_after(10):
        async with signals_stop() as stopping:
            with stopping.talking():
                signal.raise_signal(signal.SIGINT)
                await trio.sleep_forever()
            assert stopping.exit_code == 130
            signal.raise_signal(signal.SIGINT)      # the drain, say, stuck on a call
            await trio.sleep_forever()
    assert stopping.exit_code == 130
