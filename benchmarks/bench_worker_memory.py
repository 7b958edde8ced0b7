"""What N server workers on one port cost in memory: started apart, as the container starts
them (``docker/entrypoint.sh``), or forked from one process that imported the server first.

Forked children share their parent's pages until they write to them, so the modules every
worker imports (their objects ~45 MB by tracemalloc's count; a worker's RSS at start is ~84 MB)
could be held once per task instead of once per worker. Whether that survives calls
(CPython writes reference counts into the objects it uses, copying their pages) decides
whether a pre-forking launcher is worth its supervision code, so both are measured at start
and after a load. Memory is the sum of the processes' PSS (proportional set size: a page
shared by n processes counts 1/n in each), the launcher included, as the task's memory limit
sees it; RSS counts a shared page in each process.

    python benchmarks/bench_worker_memory.py --workers 3 --calls 300
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import local_stack
import server_process

SETTLE_S = 8.0                  # after start: the clients made, the start-up collection done
# A gentle ramp: with several workers each socket that reaches another process than its
# /twiml claims its session in the store, and moto on these two cores decides claims too late
# (4 s) past ~20 calls a second, which refuses the socket (the calls' memory is what counts)
CALLS_A_SECOND = 10
HELD_S = 20.0                   # all the calls up together, playing their turns again


def _rollup(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup in KiB (Linux only)."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB":
            fields[parts[0].rstrip(":")] = int(parts[1])
    return fields


def _pss_mb(pids: Sequence[int]) -> float:
    return sum(_rollup(pid)["Pss"] for pid in pids) / 1024


def _report(label: str, pids: Sequence[int]) -> float:
    rows = [_rollup(pid) for pid in pids]
    pss = sum(row["Pss"] for row in rows) / 1024
    rss = sum(row["Rss"] for row in rows) / 1024
    each = ", ".join(f"{row['Rss'] / 1024:.1f}" for row in rows)
    print(f"  {label:<34} PSS {pss:6.1f} MB   RSS {rss:6.1f} MB (each: {each})", flush=True)
    return pss


def _load(url: str, calls: int, pids: Sequence[int], env: dict[str, str]) -> None:
    """``voiceagent bench`` against the workers; prints the PSS sum's peak while it runs."""
    ramp_s = calls / CALLS_A_SECOND
    with tempfile.NamedTemporaryFile(suffix=".json") as figures, \
            tempfile.TemporaryFile("w+") as said:
        bench = subprocess.Popen(
            [sys.executable, "-m", "voiceagent", "bench", url, "-n", str(calls),
             "-r", str(ramp_s), "--say", "What are your hours?",
             "--say", "Do you have a table for two tonight?", "--think", "2",
             "--duration", str(ramp_s + HELD_S), "--auth-token", local_stack.TOKEN,
             "--json", figures.name, "-q"], env=env, stdout=subprocess.DEVNULL,
            stderr=said)
        peak = 0.0
        while bench.poll() is None:
            peak = max(peak, _pss_mb(pids))
            time.sleep(1.0)
        text = Path(figures.name).read_text()
        if not text:
            said.seek(0)
            raise SystemExit(f"voiceagent bench failed: {said.read().strip()}")
        result = json.loads(text)
    print(f"  {calls} calls, errors: {result.get('errors')} {result.get('error_kinds', '')}; "
          f"PSS peak under the load {peak:.1f} MB", flush=True)


def _measure(label: str, url: str, calls: int, pids: Sequence[int],
             env: dict[str, str]) -> tuple[float, float]:
    print(f"{label}:", flush=True)
    time.sleep(SETTLE_S)
    at_start = _report("at start", pids)
    _load(url, calls, pids, env)
    return at_start, _report("after the load", pids)


def launch(workers: int) -> int:
    """The pre-forking launcher (``--launch``): imports what ``serve`` imports, freezes it out
    of the collector's walks (which would write to every page), forks the workers and waits;
    SIGTERM is passed on to them."""
    from voiceagent.app import check_steps, cli, heap, open_files, server  # noqa: F401
    from voiceagent.llm import bedrock_startup  # noqa: F401

    gc.collect()
    gc.freeze()
    children: list[int] = []
    for index in range(workers):
        pid = os.fork()
        if pid == 0:
            os.environ["WORKER_INDEX"] = str(index)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)   # stdout: the pids' pipe alone
            os._exit(cli.main(["serve"]))
        children.append(pid)

    def pass_on(signum: int, _frame: object) -> None:
        for child in children:
            os.kill(child, signum)

    signal.signal(signal.SIGTERM, pass_on)
    print(" ".join(map(str, children)), flush=True)
    for pid in children:
        os.waitpid(pid, 0)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--calls", type=int, default=300,
                        help=f"calls in the load, {CALLS_A_SECOND} a second")
    parser.add_argument("--launch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.launch:
        return launch(args.launch)
    with tempfile.TemporaryDirectory() as scratch, local_stack.local_stack(
            local_stack.StackOptions(), Path(scratch)) as stack:
        port = server_process.free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, **stack.env, "HOST": "127.0.0.1", "PORT": str(port),
               "REUSE_PORT": "1", "WORKERS": str(args.workers),
               "PYTHONPATH": str(local_stack.ROOT)}
        apart = [server_process.start_server({**stack.env, "REUSE_PORT": "1",
                                              "WORKERS": str(args.workers)}, port=port)[0]
                 for _ in range(args.workers)]
        try:
            before = _measure(f"{args.workers} workers started apart", url, args.calls,
                              [p.pid for p in apart], env)
        finally:
            for process in apart:
                server_process.stop(process, timeout_s=60)
        launcher = subprocess.Popen([sys.executable, __file__, "--launch", str(args.workers)],
                                    env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True)
        try:
            assert launcher.stdout is not None
            children = [int(pid) for pid in launcher.stdout.readline().split()]
            if len(children) != args.workers:
                raise SystemExit("the launcher did not start its workers")
            after = _measure(f"{args.workers} workers forked from one import", url, args.calls,
                             [launcher.pid, *children], env)
        finally:
            launcher.terminate()
            launcher.wait(timeout=60)
    for when, apart_mb, forked_mb in zip(("at start", "after the load"), before, after,
                                         strict=True):
        print(f"{when}: forked / apart {forked_mb / apart_mb:.2f} "
              f"({forked_mb - apart_mb:+.1f} MB for {args.workers} workers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
