"""Ctrl-C while `voiceagent` is still importing (right after `voiceagent serve` starts, the
imports take a second or more) exits 130 with one line, no traceback; an import that fails
keeps its traceback. The import is held, at the module the command imports first, by a
finder that says so on stdout and waits on stdin: the SIGINT lands there every time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import trio

ROOT = Path(__file__).resolve().parent.parent

HOLD_IMPORT = '''
import os
import sys
from importlib.abc import MetaPathFinder


class HoldImport(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "voiceagent.app.cli":
            if os.environ.get("BREAK_IMPORT"):
                raise ImportError("voiceagent.app.cli is broken here")
            print("importing", flush=True)
            sys.stdin.readline()
        return None


sys.meta_path.insert(0, HoldImport())
'''


def installed_script() -> str:
    """What the `voiceagent` script pip writes from pyproject.toml runs."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["voiceagent"].split(":")
    return f"import sys; from {module} import {function}; sys.exit({function}())"


LAUNCHES = {"python -m voiceagent": "import runpy; runpy.run_module('voiceagent', "
                                    "run_name='__main__', alter_sys=True)",
            "the installed script": installed_script()}


def command(tmp_path: Path, launch: str) -> tuple[list[str], dict[str, str]]:
    (tmp_path / "hold_import.py").write_text(HOLD_IMPORT, encoding="utf-8")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    return [sys.executable, "-c", f"import hold_import; {LAUNCHES[launch]}", "serve"], env


@pytest.mark.parametrize("launch", sorted(LAUNCHES))
async def test_ctrl_c_while_importing_exits_130_in_one_line(tmp_path: Path,
                                                             launch: str) -> None:
    argv, env = command(tmp_path, launch)
    with trio.fail_after(30):
        process = await trio.lowlevel.open_process(
            argv, cwd=tmp_path, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        try:
            assert process.stdout is not None
            assert process.stderr is not None
            printed = b""
            while b"importing" not in printed:
                chunk = await process.stdout.receive_some(4096)
                assert chunk, "the command exited before importing the CLI"
                printed += chunk
            process.send_signal(signal.SIGINT)
            errors = b""
            while chunk := await process.stderr.receive_some(65536):
                errors += chunk
            code = await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert (code, errors.decode()) == (130, "voiceagent: interrupted\n")


async def test_an_import_that_fails_keeps_its_traceback(tmp_path: Path) -> None:
    argv, env = command(tmp_path, "python -m voiceagent")
    with trio.fail_after(30):
        done = await trio.run_process(argv, cwd=tmp_path, env={**env, "BREAK_IMPORT": "1"},
                                      stdin=subprocess.DEVNULL, capture_stdout=True,
                                      capture_stderr=True, check=False)
    errors = done.stderr.decode()
    assert done.returncode == 1, errors
    assert "Traceback" in errors, errors
    assert "voiceagent.app.cli is broken here" in errors, errors
