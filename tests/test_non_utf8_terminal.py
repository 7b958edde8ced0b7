"""A terminal (or a redirected stdout) whose encoding is not UTF-8 still shows transcripts:
characters it cannot encode are escaped, as Python does on stderr, instead of the command
dying with UnicodeEncodeError at the first 'café' (Windows' cp1252 when redirected, a Latin-1
or ASCII locale)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_transcript_survives_an_ascii_stdout(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path),
           "PYTHONIOENCODING": "ascii"}
    env.pop("CONFIG_DIR", None)
    done = subprocess.run(
        [sys.executable, "-m", "voiceagent", "demo", "--say", "café ☕ please"],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
        check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    out = done.stdout.decode("ascii").splitlines()
    assert "caller: caf\\xe9 \\u2615 please" in out, out
    assert out[-1].startswith("agent: "), out
