"""Run one benchmark on an earlier revision and on the working tree, in one run, on one machine.

A change's cost is only meaningful against the code it replaced, measured the same way at the
same time (this machine's speed drifts by tens of percent between hours). This checks the
earlier revision out into a temporary git worktree, then runs the same benchmark script with
the same arguments there and here, alternating, ``--rounds`` times, and prints each output
under a heading. The script must exist, with the same options, in both revisions.

    python benchmarks/before_after.py --rev ead1bba --rounds 2 -- \\
        bench_bedrock.py --streams 200 --deltas 100 --no-naive

The earlier revision runs with this checkout's virtual environment (its dependencies must
still be installed) and its own ``tests/`` fakes.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(tree: Path, label: str, script: str, args: Sequence[str]) -> int:
    print(f"\n===== {label}: {tree.name if tree != ROOT else 'working tree'} =====", flush=True)
    started = time.perf_counter()
    code = subprocess.call([sys.executable, str(tree / "benchmarks" / script), *args],
                           cwd=tree)
    print(f"===== {label}: exit {code}, {time.perf_counter() - started:.0f} s =====",
          flush=True)
    return code


def _exit_on_terminate(signum: int, _frame: object) -> None:
    """A ``timeout`` or a closed terminal ends this script with SIGTERM or SIGHUP, whose
    default action skips ``finally``: the earlier revision's worktree then stayed registered
    in this repository (``git worktree list``) after its folder was gone. As an exception,
    the benchmark running is stopped (``subprocess.call`` kills it) and the worktree removed."""
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    for terminate in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(terminate, _exit_on_terminate)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rev", required=True, help="the earlier revision (a commit or tag)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="before/after pairs, alternating (default 1)")
    parser.add_argument("script", help="a script in benchmarks/, e.g. bench_bedrock.py")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments (after --)")
    options = parser.parse_args(argv)
    args = options.args[1:] if options.args[:1] == ["--"] else options.args
    revision = subprocess.check_output(["git", "rev-parse", "--short", options.rev],
                                       cwd=ROOT, text=True).strip()
    with tempfile.TemporaryDirectory(prefix="voiceagent-before-") as folder:
        tree = Path(folder) / f"rev-{revision}"
        subprocess.check_call(["git", "worktree", "add", "--detach", "--quiet", str(tree),
                               revision], cwd=ROOT)
        try:
            failures = 0
            for round_ in range(1, options.rounds + 1):
                failures += run(tree, f"round {round_} BEFORE ({revision})", options.script,
                                args) != 0
                failures += run(ROOT, f"round {round_} AFTER", options.script, args) != 0
        finally:
            subprocess.call(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
