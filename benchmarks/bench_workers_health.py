"""Does a health check see a hung worker? One process per task versus several on one port.

The SAM template runs one ``voiceagent serve`` per task (issue 16). This measures why: with
WORKERS=N processes sharing a port (SO_REUSEPORT), the kernel hands each new health-check
connection to one of them, so a hung worker answers only some checks. A load balancer marks
a target unhealthy after K failures in a row (the template's target group: 3, every 10 s).

    python benchmarks/bench_workers_health.py [--workers 2] [--checks 200]

It starts N real workers on one port, stops one with SIGSTOP (a hung event loop), sends
``--checks`` health checks, each on a new connection, and prints the share that failed and
how long a 3-in-a-row detector takes to notice, in checks and in seconds at 10 s a check.
With one worker, every check fails at once: the hang is seen after 3 checks (30 s).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from server_process import free_port, start_server

UNHEALTHY_THRESHOLD = 3        # the template's UnhealthyThresholdCount
INTERVAL_S = 10                # its HealthCheckIntervalSeconds
TIMEOUT_S = 0.5                # a hung worker never answers; don't wait the ALB's 5 s


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=TIMEOUT_S) as response:
            return bool(response.status == 200)
    except (TimeoutError, urllib.error.URLError, OSError):
        return False


def _first_detection(results: list[bool], threshold: int) -> int | None:
    """The check (1-based) at which ``threshold`` failures in a row first happened."""
    run = 0
    for number, ok in enumerate(results, 1):
        run = 0 if ok else run + 1
        if run >= threshold:
            return number
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="processes on one port")
    parser.add_argument("--checks", type=int, default=200, help="health checks to send")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        port = free_port()
        env = {"STORE": "sqlite", "LLM": "scripted", "DATA_DIR": scratch,
               "TWILIO_AUTH_TOKEN": "bench-not-secret", "LOG_LEVEL": "ERROR",
               "REUSE_PORT": "1" if args.workers > 1 else "0"}
        workers: list[subprocess.Popen[bytes]] = []
        try:
            for number in range(args.workers):
                data = Path(scratch) / f"w{number}"
                process, url = start_server({**env, "DATA_DIR": str(data)}, port=port)
                workers.append(process)
            before = [_healthy(url) for _ in range(20)]
            os.kill(workers[0].pid, signal.SIGSTOP)
            results = [_healthy(url) for _ in range(args.checks)]
        finally:
            for process in workers:
                os.kill(process.pid, signal.SIGCONT)
                process.terminate()
            for process in workers:
                process.wait(timeout=30)
    failed = results.count(False)
    detected = _first_detection(results, UNHEALTHY_THRESHOLD)
    runs = []
    start = 0
    while start < len(results):                  # mean checks until 3 in a row, restarting
        found = _first_detection(results[start:], UNHEALTHY_THRESHOLD)
        if found is None:
            break
        runs.append(found)
        start += found
    mean = sum(runs) / len(runs) if runs else None
    print(f"workers on one port      {args.workers}")
    print(f"healthy before the hang  {sum(before)}/{len(before)}")
    print(f"checks failed after      {failed}/{len(results)} ({100 * failed / len(results):.0f}%)")
    print(f"first {UNHEALTHY_THRESHOLD} failures in a row at check "
          f"{detected if detected is not None else 'never'}")
    if mean is not None:
        print(f"mean checks to notice    {mean:.1f} (= {mean * INTERVAL_S:.0f} s at "
              f"{INTERVAL_S} s a check; {UNHEALTHY_THRESHOLD * INTERVAL_S} s with one worker)")
    else:
        print("mean checks to notice    never in this run")


if __name__ == "__main__":
    main()
