"""Latency, memory and CPU at 50 to 2000 concurrent calls (issue 8's goals).

A fresh ``voiceagent serve`` process per load level (scripted model with the benchmark use
case in benchmarks/config: 20-40 word replies at 40 tokens/s after a 200 ms first token;
SQLite store; signatures on; JSON logs at INFO), and ``voiceagent bench``'s generator in this
process playing Twilio: each call says hours / barges into the menu after 3 words / specials
/ pickup (a tool round) / presses 1, with ``--think`` seconds between a reply and the next
prompt. Figures per level:

* server overhead: from the server's own "turn done" lines, prompt received -> first token
  handed to the writer, minus the model's time to first token (what the framework adds);
* memory per idle call: RSS growth while N calls sit connected and silent (first phase, on
  the fresh process), divided by N;
* CPU per relayed token: server CPU seconds over the loaded phase / tokens the callers got
  (``us/token``: every cost of the calls, set-up and hang-up included), and the same less the
  idle phase's CPU (``(turns)``: what the turns cost). The scripted model's own pacing (a trio
  timer per token) runs inside the server too; its cost alone, measured in this process
  before and after the run with the price of a bare timer wakeup, is the floor no relay can go
  below on this machine, and shows how fast the machine was while the run lasted.

With ``--baseline URL`` (any ConversationRelay server) or ``--baseline-unchunked`` (ours,
one frame per token), each level is run again against the baseline and the client-side
figures are printed side by side with their ratios.

The client shares the machine's cores with the server, so its own latency figures include
that contention; the goals are checked on the server-side figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import server_process
from bench_floor import wakeups

from voiceagent.bench import BenchOptions, Step, format_table, percentiles, run_bench
from voiceagent.llm.base import LLMRequest, TextDelta
from voiceagent.llm.scripted import ScriptedLLM
from voiceagent.usecases import ScriptedConfig

ROOT = Path(__file__).parent.parent
TOKEN = "bench-token-not-secret"
GOAL_OVERHEAD_P99_MS = {500: 5.0, 2000: 50.0}
GOAL_IDLE_KB = 100.0
THINK_JITTER = 0.5              # pauses vary +-50 %: callers are not in step
GOAL_CPU_PER_TOKEN_US = 30.0
SCRIPT = (Step("say", "what are your hours?"), Step("barge", "what is on the menu?", 3),
          Step("say", "any specials today?"), Step("say", "when can I pick up my order?"),
          Step("dtmf", "1"))


def start_servers(data_dir: Path, log_dir: Path, calls: int, workers: int,
                  extra_env: dict[str, str] | None = None
                  ) -> tuple[list[subprocess.Popen[bytes]], str, list[Path]]:
    """``workers`` server processes on one port (REUSE_PORT, as the container runs them),
    sharing one SQLite file; each logs to its own file."""
    env = {"STORE": "sqlite", "LLM": "scripted", "DATA_DIR": str(data_dir),
           "CONFIG_DIR": str(ROOT / "benchmarks" / "config"),
           "STACK_USE_CASE": "benchUseCase", "TWILIO_AUTH_TOKEN": TOKEN, "LOG_LEVEL": "INFO",
           "LOG_FORMAT": "json", "PING_INTERVAL_S": "0", "MAX_CALLS": "5000",
           "DRAIN_TIMEOUT_S": "2", "IDLE_REPROMPT_S": "0", "METRICS_NAMESPACE": ""}
    env.update(extra_env or {})
    if workers > 1:
        env["REUSE_PORT"] = "1"
    processes: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    port: int | None = None
    url = ""
    for worker in range(workers):
        log_path = log_dir / f"server-{calls}-{worker}{'-baseline' if extra_env else ''}.log"
        with log_path.open("wb") as log_file:
            process, url = server_process.start_server(env, stderr=log_file, port=port)
        port = int(url.rsplit(":", 1)[1])
        processes.append(process)
        logs.append(log_path)
    return processes, url, logs


def server_overheads_ms(log_paths: list[Path]) -> list[float]:
    values = []
    lines = [line for path in log_paths for line in path.read_text().splitlines()]
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        # one model round that streamed text at once: latency - model time is all ours
        if (entry.get("event") == "turn done" and entry.get("latency_ms") is not None
                and entry.get("first_token_ms") is not None and entry.get("rounds") == 1
                and entry.get("stop_reason") == "end_turn"):
            values.append(entry["latency_ms"] - entry["first_token_ms"])
    return values


def model_cpu_per_token_us(streams: int = 200, words: int = 40) -> float:
    """CPU per token of the scripted model alone: ``streams`` concurrent replies drained in
    this process, paced as in the benchmark (25 ms per token)."""
    reply = " ".join(["word"] * words)
    llm = ScriptedLLM({"m": ScriptedConfig(fallback=reply, first_token_delay_ms=0,
                                           token_delay_ms=25)})
    request = LLMRequest(call_sid="CA0", use_case="m", model_id="scripted", system=("x",),
                         messages=({"role": "user", "content": [{"text": "hi"}]},))
    tokens = 0

    async def drain() -> None:
        nonlocal tokens
        async with llm.stream(request) as events:
            async for event in events:
                tokens += isinstance(event, TextDelta)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(streams):
                nursery.start_soon(drain)

    started = time.process_time()
    trio.run(run)
    return round((time.process_time() - started) / tokens * 1e6, 1)


@dataclass(frozen=True)
class Baseline:
    """Another server loaded the same way at each level, for ratios side by side."""

    url: str | None = None              # already running (any ConversationRelay server)
    pids: tuple[int, ...] = ()          # its local processes, for CPU per token
    auth_token: str = TOKEN
    unchunked: bool = False             # ours with TOKEN_HOLD_MS=0, started per level


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        process.wait(timeout=60)


def run_baseline(baseline: Baseline, calls: int, ramp_s: float, scratch: Path,
                 think_s: float, workers: int) -> dict[str, Any]:
    processes: list[subprocess.Popen[bytes]] = []
    url, pids = baseline.url or "", baseline.pids
    if baseline.unchunked:
        processes, url, _ = start_servers(scratch / f"data-{calls}-baseline", scratch, calls,
                                          workers, {"TOKEN_HOLD_MS": "0"})
        pids = tuple(process.pid for process in processes)
    try:
        return trio.run(run_bench, BenchOptions(
            url=url, calls=calls, ramp_s=ramp_s, script=SCRIPT, auth_token=baseline.auth_token,
            server_pids=pids, think_s=think_s, think_jitter=THINK_JITTER, progress=True))
    finally:
        stop(processes)


def machine_speed() -> str:
    return (f"a trio timer wakeup costs {wakeups(1)} us of CPU alone, "
            f"{wakeups(100)} us with 100 sharing; the scripted model alone "
            f"{model_cpu_per_token_us()} us per token")


def run_level(calls: int, ramp_s: float, scratch: Path, think_s: float,
              workers: int, baseline: Baseline | None = None) -> dict[str, Any]:
    processes, url, logs = start_servers(scratch / f"data-{calls}", scratch, calls, workers)
    pids = tuple(process.pid for process in processes)
    try:
        idle = trio.run(run_bench, BenchOptions(
            url=url, calls=calls, ramp_s=ramp_s, script=(), auth_token=TOKEN,
            server_pids=pids, hold_s=3.0, progress=False))
        loaded = trio.run(run_bench, BenchOptions(
            url=url, calls=calls, ramp_s=ramp_s, script=SCRIPT, auth_token=TOKEN,
            server_pids=pids, think_s=think_s, think_jitter=THINK_JITTER, progress=True))
    finally:
        stop(processes)
    overheads = server_overheads_ms(logs)
    idle_server = idle["server"] or {}
    idle_kb = (idle_server.get("rss_kb_peak", 0) - idle_server.get("rss_kb_before", 0)) / calls
    loaded_server = loaded["server"] or {}
    marginal = None
    if loaded_server and idle_server and loaded["tokens"]:
        # the idle phase costs what every call costs without a turn (webhook, handshake,
        # setup, hang-up, flush); what is left is the turns' cost
        turns_cpu_s = loaded_server["cpu_s"] - idle_server["cpu_s"]
        marginal = round(turns_cpu_s / loaded["tokens"] * 1e6, 1)
    return {"calls": calls, "workers": workers, "ramp_s": ramp_s, "think_s": think_s,
            "idle_errors": idle["errors"], "idle_kb_per_call": round(idle_kb, 1),
            "loaded": loaded, "idle_cpu_s": idle_server.get("cpu_s"),
            "cpu_per_token_turns_us": marginal,
            "server_overhead_ms": percentiles([v / 1000 for v in overheads]),
            "baseline": run_baseline(baseline, calls, ramp_s, scratch, think_s, workers)
            if baseline else None}


SIDE_BY_SIDE = (("application latency p50 (ms)", ("latency_ms", "p50")),
                ("application latency p99 (ms)", ("latency_ms", "p99")),
                ("inter-token gap p99 (ms)", ("inter_token_ms", "p99")),
                ("barge-in stop p99 (ms)", ("barge_in_stop_ms", "p99")),
                ("server CPU per token (us)", ("server", "cpu_per_token_us")),
                ("frames per 100 tokens", ("frames_per_100", None)),
                ("errors", ("errors", None)))


def side_by_side(result: dict[str, Any]) -> str:
    """Client-side figures of our server and the baseline, same script, same run."""
    ours, theirs = result["loaded"], result["baseline"]
    lines = [f"{result['calls']} calls, ours vs baseline ({theirs['url']}):",
             f"  {'':<30}{'ours':>10}{'baseline':>10}{'ratio':>8}"]
    for label, (key, sub) in SIDE_BY_SIDE:
        values = []
        for run in (ours, theirs):
            if key == "frames_per_100":
                value = round(100 * run["frames"] / run["tokens"], 1) if run["tokens"] else None
            else:
                value = run.get(key)
                value = (value or {}).get(sub) if sub else value
            values.append(value)
        ratio = (f"{values[0] / values[1]:.2f}" if isinstance(values[0], int | float)
                 and isinstance(values[1], int | float) and values[1] else "-")
        lines.append(f"  {label:<30}{values[0]!s:>10}{values[1]!s:>10}{ratio:>8}")
    return "\n".join(lines)


def check(label: str, value: float | None, goal: float, calls: int) -> str:
    if value is None:
        return f"{label} at {calls} calls: not measured"
    if value <= goal:
        return f"{label} at {calls} calls: {value} <= goal {goal}: met"
    return (f"{label} at {calls} calls: {value} > goal {goal}: missed by "
            f"{value - goal:.1f} ({value / goal:.1f}x)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[50, 200, 500, 1000, 2000])
    parser.add_argument("--ramp-per-call", type=float, default=0.02,
                        help="seconds of ramp per call (default 0.02: 500 calls over 10 s)")
    parser.add_argument("--think", type=float, default=4.0,
                        help="seconds between a reply and the next prompt (default 4; a "
                             "caller first listens to the reply, which takes longer)")
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes sharing the port (REUSE_PORT), as the "
                             "container runs one per core (default 1)")
    parser.add_argument("--baseline", metavar="URL", default=None,
                        help="another ConversationRelay server, already running: loaded the "
                             "same way after ours at each level, ratios printed side by side")
    parser.add_argument("--baseline-pid", type=int, action="append", metavar="PID",
                        help="the baseline's local process(es), for its CPU per token")
    parser.add_argument("--baseline-auth-token", default=TOKEN,
                        help="the baseline's Twilio auth token (to sign as Twilio would)")
    parser.add_argument("--baseline-unchunked", action="store_true",
                        help="baseline: this server with TOKEN_HOLD_MS=0 (one frame per "
                             "token, as relays commonly send), started per level")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    baseline = None
    if args.baseline or args.baseline_unchunked:
        baseline = Baseline(url=args.baseline, pids=tuple(args.baseline_pid or ()),
                            auth_token=args.baseline_auth_token,
                            unchunked=args.baseline_unchunked and not args.baseline)
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-latency-{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    speed_before = machine_speed()
    print(f"machine speed before: {speed_before}")
    results = []
    for calls in args.levels:
        result = run_level(calls, calls * args.ramp_per_call, scratch, args.think,
                           args.workers, baseline)
        results.append(result)
        print(f"\n== {calls} calls ==")
        print(format_table(result["loaded"]))
        print(f"server overhead (ms): {result['server_overhead_ms']}")
        print(f"idle: {result['idle_kb_per_call']} KiB RSS per connected idle call "
              f"({result['idle_errors']} errors)")
        if result["baseline"]:
            print(side_by_side(result))
    print(f"\nmachine: {os.cpu_count()} cpus, {platform.machine()}, "
          f"python {platform.python_version()}; script: {[s.kind for s in SCRIPT]}, "
          f"think {args.think:g} s (+-{THINK_JITTER:.0%}); {args.workers} server "
          f"process(es)")
    print(f"machine speed before: {speed_before}")
    print(f"machine speed after:  {machine_speed()}")
    print(f"{'calls':>6} {'overhead p50':>13} {'p99':>8} {'client p99':>11} "
          f"{'KiB/idle call':>14} {'us/token':>9} {'(turns)':>9} {'cpu %':>6} {'errors':>7}")
    for result in results:
        loaded, overhead = result["loaded"], result["server_overhead_ms"]
        server = loaded["server"] or {}
        print(f"{result['calls']:>6} {overhead['p50']!s:>13} {overhead['p99']!s:>8} "
              f"{loaded['latency_ms']['p99']!s:>11} {result['idle_kb_per_call']:>14} "
              f"{server.get('cpu_per_token_us')!s:>9} "
              f"{result['cpu_per_token_turns_us']!s:>9} {server.get('cpu_percent')!s:>6} "
              f"{loaded['errors'] + result['idle_errors']:>7}")
    by_calls = {r["calls"]: r for r in results}
    for calls, goal in GOAL_OVERHEAD_P99_MS.items():
        if calls in by_calls:
            print(check("p99 server overhead (ms)", by_calls[calls]["server_overhead_ms"]["p99"],
                        goal, calls))
    top = results[-1]
    print(check("memory per idle call (KiB)", top["idle_kb_per_call"], GOAL_IDLE_KB,
                top["calls"]))
    for result in results:
        print(check("CPU per relayed token, turns (us)", result["cpu_per_token_turns_us"],
                    GOAL_CPU_PER_TOKEN_US, result["calls"]))
    for result in results:
        if result["baseline"]:
            print(side_by_side(result))
    if args.json:
        args.json.write_text(json.dumps({"machine_speed_before": speed_before, "levels": results},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
