"""docs/build-your-own-agent.md, run: every command of its ``sh`` blocks, in order, in one
shell, offline, and the call transcript it shows checked against what the agent said.

The shell starts in a folder whose ``.venv`` already holds voiceagent installed from its
wheel (the session's ``user_venv``: the tutorial's own ``python3 -m venv .venv`` then finds
it, and ``pip install "$VOICEAGENT"`` finds voiceagent there), with ``VOICEAGENT`` naming
that wheel and pip set to install from the session's wheelhouse only (``PIP_NO_INDEX``,
``PIP_FIND_LINKS``), as if the wheels were all the index there is. Nothing else of this
machine's environment is passed on.

Two conventions keep the page readable as it is: a block that is exactly ``voiceagent serve``
runs in the background (the reader's "first terminal") until the end, once its /health
answers, and must exit 0 on SIGTERM; a ``console`` block is output, each of whose lines must
appear, in order, among the lines the commands printed.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.wheelhouse import WheelVenv

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "docs" / "build-your-own-agent.md"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
SERVER = "voiceagent serve"
HEALTH_WAIT_S = 60

WAIT_FOR_HEALTH = """\
import os, sys, time, urllib.request
port, pid, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + limit
while True:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
        break
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("tutorial: `voiceagent serve` exited before /health answered")
    if time.monotonic() > deadline:
        sys.exit(f"tutorial: no answer on /health after {limit} s")
    time.sleep(0.2)
"""


@dataclass(frozen=True)
class Block:
    language: str
    text: str
    line: int               # where its fence opens in the page

    @property
    def commands(self) -> list[str]:
        return [line for line in self.text.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]


def blocks(markdown: str) -> list[Block]:
    return [Block(m.group(1), m.group(2), markdown.count("\n", 0, m.start()) + 1)
            for m in FENCE.finditer(markdown)]


def script(page: list[Block], *, log: Path) -> str:
    """The page's sh blocks as one bash script, the server block in the background."""
    parts = ["set -eo pipefail", "tutorial_server="]
    for block in page:
        if block.language != "sh":
            continue
        parts.append(f"# ---- {TUTORIAL.name}, line {block.line}")
        if block.commands == [SERVER]:
            parts += [f"{SERVER} > {shlex.quote(str(log))} 2>&1 &",
                      "tutorial_server=$!",
                      'trap \'kill -TERM "$tutorial_server" 2>/dev/null || true\' EXIT',
                      f'"$TUTORIAL_PYTHON" - "$PORT" "$tutorial_server" {HEALTH_WAIT_S} '
                      "<<'TUTORIAL_WAIT'", WAIT_FOR_HEALTH + "TUTORIAL_WAIT"]
        else:
            parts.append(block.text.rstrip("\n"))
    parts += ["# ---- the end: stop the server (it drains on SIGTERM), and keep its exit code",
              'if [ -n "$tutorial_server" ]; then',
              '    kill -TERM "$tutorial_server"',
              '    wait "$tutorial_server"',
              "    trap - EXIT",
              "fi"]
    return "\n".join(parts) + "\n"


def test_the_page_follows_the_conventions() -> None:
    page = blocks(TUTORIAL.read_text())
    sh = [b for b in page if b.language == "sh"]
    assert sh, "no sh blocks"
    assert [b.commands for b in sh].count([SERVER]) == 1
    server = next(i for i, b in enumerate(sh) if b.commands == [SERVER])
    after = "\n".join(b.text for b in sh[server + 1:])
    assert "voiceagent call" in after, "the call comes after the server starts"
    assert not any(SERVER in b.text for i, b in enumerate(sh) if i != server)
    first = "\n".join(b.text for b in sh[:2])
    for step in ("python3 -m venv .venv", '"$VOICEAGENT"', "voiceagent init"):
        assert step in first
    assert any(b.language == "console" for b in page)
    assert not [b.line for b in page if b.language in ("bash", "shell")], (
        "write commands as ```sh (they are run) and output as ```console (it is checked)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_command_of_the_tutorial_runs(user_venv: WheelVenv, tmp_path: Path) -> None:
    page = blocks(TUTORIAL.read_text())
    log = tmp_path / "serve.log"
    bin_dir = tmp_path / "bin"                  # python3 and nothing else from this machine
    bin_dir.mkdir()
    for name in ("python3", "python"):
        (bin_dir / name).symlink_to(os.path.realpath(getattr(sys, "_base_executable",
                                                                  sys.executable)))
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
           "VOICEAGENT": str(user_venv.wheelhouse.wheel), "PORT": str(_free_port()),
           "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(user_venv.wheelhouse.folder),
           "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "PIP_NO_INPUT": "1", "TUTORIAL_PYTHON": sys.executable}
    process = subprocess.Popen(["bash", "-c", script(page, log=log)], cwd=user_venv.folder,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=540)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    served = log.read_text() if log.exists() else "(no server log)"
    assert process.returncode == 0, f"{output[-6000:]}\n--- voiceagent serve:\n{served[-3000:]}"
    assert "Traceback" not in served, served[-3000:]
    # the project's tests as generated (3), with the new tool's two (5), then the Spanish one (6)
    assert re.findall(r"^(\d+) passed in", output, re.MULTILINE) == ["3", "5", "6"], \
        output[-4000:]
    printed = [line.rstrip() for line in output.splitlines()]
    for block in page:
        if block.language != "console":
            continue
        at = 0
        for expected in block.commands:
            assert expected in printed[at:], (
                f"{TUTORIAL.name}, line {block.line}: {expected!r} was not printed (after "
                f"line {at} of the output):\n{output[-4000:]}")
            at = printed.index(expected, at) + 1
    # the code the page adds reads like the code `voiceagent init` writes
    ruff = Path(sys.executable).parent / "ruff"
    linted = subprocess.run(
        [str(ruff), "check", "--no-cache", "--isolated", "--target-version", "py311",
         "--line-length", "100", "--select", "E,F,W,I,B,UP,ASYNC,RUF,SIM,PT", "--ignore",
         "SIM117", "."], cwd=user_venv.folder / "bike-shop", capture_output=True, text=True,
        timeout=60, check=False)
    assert linted.returncode == 0, linted.stdout + linted.stderr
