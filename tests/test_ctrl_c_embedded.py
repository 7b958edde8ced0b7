"""Ctrl-C in a program that embeds the server (``voiceagent.app.testing``, ``open_server``)
and leaves SIGINT to trio, which raises KeyboardInterrupt in whatever code runs when it lands.
Landing in the server's code, hypercorn lost it: in a call's task it was logged as "Error in
ASGI Framework" and the program waited for its caller; in hypercorn's own tasks (here: the
shutdown trigger, which drains) it was taken for a shutdown and the program went on as if
nothing had been pressed. Now it reaches the program, bare: ``except KeyboardInterrupt``
sees it. And a shutdown stuck on a peer that stopped reading no longer exits such a
program 0, which would pass a test run that never finished.

Each Ctrl-C is a real SIGINT to a real process, sent when it says (on stdout) that it waits on
stdin where the signal should land."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.test_drain import bulk_config

ROOT = Path(__file__).resolve().parent.parent

HOLD_TOOL = '''
import sys

from voiceagent.tools import ToolContext, tool


@tool("Hold")
async def hold(ctx: ToolContext, args):
    print("waiting", flush=True)
    sys.stdin.readline()
    return {"held": True}
'''
USE_CASE = r'''
name: holdUseCase
prompt: You answer the phone.
relay:
  welcomeGreeting: Hi.
tools:
  - name: Hold
    description: Hold the line.
    timeout_s: 60
scripted:
  rules:
    - match: "\\bhold\\b"
      tool:
        name: Hold
      then: Held.
'''
# argv: config folder, where the Ctrl-C lands ("call", "drain") or "stuck"
EMBEDDER = '''
import logging
import sys

import trio

from voiceagent.app.caller import Identity, open_call
from voiceagent.app.testing import agent_server


class WaitWhenDraining(logging.Handler):
    def emit(self, record):
        if record.getMessage() == "draining":
            print("waiting", flush=True)
            sys.stdin.readline()


async def stop_reading(url, token, task_status):
    async with open_call(url, auth_token=token, identity=Identity()) as call:
        await call.say("read me everything")
        await call.receive()
        task_status.started()
        await trio.sleep_forever()


async def until_the_server_waits_to_send():
    """Until a send in this process waits for room: the server's, to the peer that stopped
    reading (which sends nothing more), with its buffer and the peer's full. Drained sooner,
    a loaded machine's reply is cut before they fill, the call ends, and nothing is stuck."""
    with trio.fail_after(20):
        while trio.lowlevel.current_statistics().io_statistics.tasks_waiting_write == 0:
            await trio.sleep(0.01)


async def main(config, where):
    if where == "stuck":
        async with trio.open_nursery() as outside:
            async with agent_server(config, use_case="bulkUseCase", TOOLS="hold_tool",
                                    DRAIN_TIMEOUT_S="0.5",
                                    END_GRACE_S="0.5") as agent:
                await outside.start(stop_reading, agent.url, agent.auth_token)
                await until_the_server_waits_to_send()
            outside.cancel_scope.cancel()
    else:
        if where == "drain":
            server_log = logging.getLogger("voiceagent.app.server")
            server_log.setLevel(logging.INFO)
            server_log.addHandler(WaitWhenDraining())
        async with agent_server(config, use_case="holdUseCase", TOOLS="hold_tool") as agent:
            if where == "call":
                async with agent.call() as call:
                    await call.say("please hold")
    print("left the server", flush=True)


try:
    trio.run(main, sys.argv[1], sys.argv[2])
except KeyboardInterrupt:
    print("Ctrl-C reached the program", flush=True)
    sys.exit(130)
'''


async def run_embedder(tmp_path: Path, where: str, *, ctrl_c: bool) -> tuple[int, str, str]:
    """The embedding program's exit code, stdout and stderr; ``ctrl_c``: sent once it
    waits."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "hold_tool.py").write_text(HOLD_TOOL, encoding="utf-8")
    (tmp_path / "plugins" / "embedder.py").write_text(EMBEDDER, encoding="utf-8")
    config = bulk_config(tmp_path / "config")
    (config / "usecases" / "hold.yaml").write_text(USE_CASE, encoding="utf-8")
    # TMPDIR: the stuck shutdown's watchdog ends the process before agent_server removes
    # its scratch folder, which would be left in the machine's /tmp after every run
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path / "plugins")])}
    process = await trio.lowlevel.open_process(
        [sys.executable, str(tmp_path / "plugins" / "embedder.py"), str(config), where],
        cwd=tmp_path, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    printed = errors = b""
    try:
        assert process.stdout is not None
        assert process.stderr is not None

        async def read_errors() -> None:
            nonlocal errors
            assert process.stderr is not None
            while chunk := await process.stderr.receive_some(65536):
                errors += chunk

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_errors)
            while chunk := await process.stdout.receive_some(4096):
                printed += chunk
                if ctrl_c and printed.endswith(b"waiting\n"):
                    process.send_signal(signal.SIGINT)
        code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return code, printed.decode(), errors.decode()


@pytest.mark.parametrize("where", ["call", "drain"])
async def test_ctrl_c_landing_in_an_embedded_server_reaches_the_program(
        tmp_path: Path, where: str) -> None:
    with trio.fail_after(30):          # the held tool's own timeout is 60 s
        code, printed, errors = await run_embedder(tmp_path, where, ctrl_c=True)
    assert printed == "waiting\nCtrl-C reached the program\n", errors
    assert code == 130, errors
    assert "Error in ASGI Framework" not in errors


@pytest.mark.slow
async def test_a_stuck_shutdown_does_not_exit_an_embedding_program_0(tmp_path: Path) -> None:
    """The watchdog ends a process whose shutdown a peer that stopped reading holds: exit 0
    there was a test run passed that never got to its end. The drain starts once the
    server's send waits for room, which trio's kqueue (macOS, BSD) does not tell apart."""
    if not hasattr(trio.lowlevel.current_statistics().io_statistics, "tasks_waiting_write"):
        pytest.skip("this I/O backend does not count tasks waiting to write")
    with trio.fail_after(60):          # drain 0.5 + goodbye 0.5 + hypercorn 2 + watchdog 10,
                                       # and a start on a loaded machine
        code, printed, errors = await run_embedder(tmp_path, "stuck", ctrl_c=False)
    assert "shutdown stuck on a connection that stopped reading" in errors, errors
    assert (code, printed) == (1, "")
