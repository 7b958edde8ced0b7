"""A closed stdout pipe (`... | head -1`) exits 141 without a traceback, for every command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(90)


def test_demo_with_a_closed_stdout_exits_141_without_a_traceback(tmp_path: Path) -> None:
    """`voiceagent demo --say ... | head -1` (or `voiceagent call ... | head -1`): the
    transcript is printed inside trio's nurseries, so the BrokenPipeError reaches cli.main
    wrapped in an ExceptionGroup; `except BrokenPipeError` misses it: a traceback, exit 1."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "voiceagent", "demo", "--say", "When are you open?"],
            stdout=write_end, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            timeout=80, cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.returncode == 141
