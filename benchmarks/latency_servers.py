"""The server side of the latency benchmarks: our workers and the minimal server started on
the local stack (pinned to their own cores when one is left for the callers), stopped with
the drain a deployment gives them, and the helpers' CPU read around a run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import server_process
from local_stack import Stack

from voiceagent.app.procstat import read_process

# /metrics answers only with this (the benchmark reads the loop lag and collector pauses of
# the measured window, and the store queue before the loaded phase, from it)
METRICS_TOKEN = "bench-metrics-not-secret"
# the cores of the server's workers, once ``pin_layout`` has chosen them; None: no pinning
PINNED: list[set[int]] | None = None


def pin_layout(workers: int, pin: bool) -> list[set[int]] | None:
    """With ``pin`` and a core to spare: worker n on core n, and this process (the callers)
    with everything it starts (the fakes) on the cores left, so the server's figures are
    its own and not its load generator's. None: no pinning. Kept in ``PINNED`` for the
    servers started next."""
    global PINNED
    cores = sorted(os.sched_getaffinity(0))
    PINNED = None
    if pin and len(cores) > workers:
        os.sched_setaffinity(0, set(cores[workers:]))
        PINNED = [{core} for core in cores[:workers]]
    return PINNED


def start_servers(stack: Stack, log_dir: Path, name: str, workers: int,
                  extra_env: dict[str, str] | None = None
                  ) -> tuple[list[subprocess.Popen[bytes]], str, list[Path]]:
    """``workers`` server processes on one port (REUSE_PORT, as the container runs them);
    each logs JSON lines to its own file."""
    env = {**stack.env, "LOG_LEVEL": "INFO", "LOG_FORMAT": "json", "PING_INTERVAL_S": "0",
           "MAX_CALLS": "5000", "MAX_CONCURRENT_TURNS": "5000", "DRAIN_TIMEOUT_S": "2",
           "IDLE_REPROMPT_S": "0", "METRICS_NAMESPACE": "",
           "METRICS_TOKEN": METRICS_TOKEN}
    env.update(extra_env or {})
    if workers > 1:
        env["REUSE_PORT"] = "1"
    processes: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    port: int | None = None
    url = ""
    for worker in range(workers):
        log_path = log_dir / f"server-{name}-{worker}.log"
        with log_path.open("wb") as log_file:
            process, url = server_process.start_server(
                env, stderr=log_file, port=port,
                cpus=PINNED[worker % len(PINNED)] if PINNED else None)
        port = int(url.rsplit(":", 1)[1])
        processes.append(process)
        logs.append(log_path)
    return processes, url, logs


def start_minimal(stack: Stack, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The floor to compare with (issue 20): ``minimal_server.py`` on the same model
    endpoint and core as ours, keeping history in memory, signing and storing nothing."""
    port = server_process.free_port()
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).parent / "minimal_server.py"), "--port",
             str(port)], env={**os.environ, **stack.env}, stdout=subprocess.DEVNULL,
            stderr=log_file)
    if PINNED:
        os.sched_setaffinity(process.pid, PINNED[0])
    server_process.wait_for(lambda: server_process.accepts(port), process, 30.0,
                            "the minimal server")
    return process, f"http://127.0.0.1:{port}"


def stop_servers(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()                  # SIGTERM: the server drains
    for process in processes:
        server_process.stop(process, timeout_s=60)


def helper_cpu_s(stack: Stack) -> dict[str, float]:
    cpu = {}
    for name, pid in stack.helper_pids.items():
        figures = read_process(pid)
        if figures is not None:
            cpu[name] = figures["cpu_s"]
    return cpu
