"""``benchmarks/before_after.py`` stopped by SIGTERM (a ``timeout`` around a long comparison)
or SIGHUP (its terminal closed) leaves no worktree of the earlier revision behind and no
benchmark running: before, the signal skipped its cleanup, and ``git worktree list`` kept
naming a folder that was gone."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Says where it runs and that it has started, then waits for its stdin to close: no sleep, and
# a copy the signal failed to stop is found (and ended) by the test.
WAITER = """\
import os, sys
print(os.getpid(), os.getcwd(), flush=True)
sys.stdin.read()
"""


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                          text=True, timeout=30).stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminated_comparison_removes_its_worktree_and_stops_the_benchmark(
        tmp_path: Path, stop: signal.Signals) -> None:
    repo = tmp_path / "repo"
    (repo / "benchmarks").mkdir(parents=True)
    shutil.copy(ROOT / "benchmarks" / "before_after.py", repo / "benchmarks")
    (repo / "benchmarks" / "waiter.py").write_text(WAITER)
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "x")
    waiter_pid, worktree = None, None
    with subprocess.Popen(
            [sys.executable, str(repo / "benchmarks" / "before_after.py"), "--rev", "HEAD",
             "--", "waiter.py"], cwd=repo, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True) as comparison:
        assert comparison.stdout is not None
        try:
            for line in comparison.stdout:      # the BEFORE heading, then the waiter's line
                first, _, rest = line.strip().partition(" ")
                if first.isdigit():
                    waiter_pid, worktree = int(first), Path(rest)
                    break
            assert worktree is not None
            assert worktree.is_dir()
            assert worktree != repo
            assert str(worktree) in _git(repo, "worktree", "list")
            comparison.send_signal(stop)
            code = comparison.wait(timeout=30)
            assert _git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
            assert not worktree.exists()
            assert not _alive(waiter_pid)
            assert code == 128 + stop           # as a shell reports it, not a crash
        finally:
            if waiter_pid is not None and _alive(waiter_pid):
                os.kill(waiter_pid, signal.SIGKILL)
            comparison.kill()
