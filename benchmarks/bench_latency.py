"""Latency, memory and CPU at 50/200/500 concurrent calls (issue 8's goals).

A fresh ``voiceagent serve`` process per load level (scripted model, the test fixture use
case: 20 ms first token, 5 ms per token; SQLite store; signatures on; JSON logs at INFO), and
``voiceagent bench``'s generator in this process playing Twilio. Three figures per level:

* server overhead: from the server's own "turn done" lines, prompt received -> first token
  handed to the writer, minus the model's time to first token (what the framework adds);
* memory per idle call: RSS growth while N calls sit connected and silent (first phase, on
  the fresh process), divided by N;
* CPU per relayed token: server CPU seconds over the loaded phase / tokens the callers got
  (``us/token``, every cost of the calls included) and the same less the idle phase's CPU
  (``(turns)``: what the turns cost, call set-up and tear-down taken out).

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
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import server_process

from voiceagent.bench import BenchOptions, Step, format_table, percentiles, run_bench

ROOT = Path(__file__).parent.parent
TOKEN = "bench-token-not-secret"
GOAL_OVERHEAD_P99_MS = 5.0
GOAL_IDLE_KB = 100.0
GOAL_CPU_PER_TOKEN_US = 30.0
SCRIPT = (Step("say", "what are your hours?"), Step("barge", "tell me a story", 3),
          Step("say", "are you open on Sunday?"), Step("say", "when can I pick up my order?"),
          Step("dtmf", "1"))
STORY = Step("say", "tell me a story")      # --story: one long reply (~170 tokens) per call


def start_server(data_dir: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = {"STORE": "sqlite", "LLM": "scripted", "DATA_DIR": str(data_dir),
           "CONFIG_DIR": str(ROOT / "tests" / "fixtures" / "config"),
           "STACK_USE_CASE": "testUseCase", "TWILIO_AUTH_TOKEN": TOKEN, "LOG_LEVEL": "INFO",
           "LOG_FORMAT": "json", "PING_INTERVAL_S": "0", "MAX_CALLS": "2000",
           "DRAIN_TIMEOUT_S": "2", "IDLE_REPROMPT_S": "0", "METRICS_NAMESPACE": ""}
    with log_path.open("wb") as log_file:
        return server_process.start_server(env, stderr=log_file)


def server_overheads_ms(log_path: Path) -> list[float]:
    values = []
    for line in log_path.read_text().splitlines():
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


def run_level(calls: int, ramp_s: float, scratch: Path,
              script: tuple[Step, ...] = SCRIPT, think_s: float = 0.5) -> dict[str, Any]:
    log_path = scratch / f"server-{calls}.log"
    process, url = start_server(scratch / f"data-{calls}", log_path)
    try:
        idle = trio.run(run_bench, BenchOptions(
            url=url, calls=calls, ramp_s=ramp_s, script=(), auth_token=TOKEN,
            server_pid=process.pid, hold_s=3.0, progress=False))
        loaded = trio.run(run_bench, BenchOptions(
            url=url, calls=calls, ramp_s=ramp_s, script=script, auth_token=TOKEN,
            server_pid=process.pid, think_s=think_s, progress=True))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    overheads = server_overheads_ms(log_path)
    idle_server = idle["server"] or {}
    idle_kb = (idle_server.get("rss_kb_peak", 0) - idle_server.get("rss_kb_before", 0)) / calls
    loaded_server = loaded["server"] or {}
    marginal = None
    if loaded_server and idle_server and loaded["tokens"]:
        # the idle phase costs what every call costs without a turn (webhook, handshake,
        # setup, hang-up, flush); what is left is the turns' cost
        turns_cpu_s = loaded_server["cpu_s"] - idle_server["cpu_s"]
        marginal = round(turns_cpu_s / loaded["tokens"] * 1e6, 1)
    return {"calls": calls, "ramp_s": ramp_s, "idle_errors": idle["errors"],
            "idle_kb_per_call": round(idle_kb, 1), "loaded": loaded,
            "idle_cpu_s": idle_server.get("cpu_s"), "cpu_per_token_turns_us": marginal,
            "server_overhead_ms": percentiles([v / 1000 for v in overheads])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[50, 200, 500])
    parser.add_argument("--ramp-per-call", type=float, default=0.02,
                        help="seconds of ramp per call (default 0.02: 500 calls over 10 s)")
    parser.add_argument("--story", action="store_true",
                        help="add a long reply (~170 tokens at 5 ms) to every call's script")
    parser.add_argument("--think", type=float, default=0.5,
                        help="seconds between a reply and the next prompt (default 0.5; a "
                             "real caller takes several)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    script = (*SCRIPT[:2], STORY, *SCRIPT[2:]) if args.story else SCRIPT
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-latency-{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    results = []
    for calls in args.levels:
        result = run_level(calls, calls * args.ramp_per_call, scratch, script, args.think)
        results.append(result)
        print(f"\n== {calls} calls ==")
        print(format_table(result["loaded"]))
        print(f"server overhead (ms): {result['server_overhead_ms']}")
        print(f"idle: {result['idle_kb_per_call']} KiB RSS per connected idle call "
              f"({result['idle_errors']} errors)")
    print(f"\nmachine: {os.cpu_count()} cpus, {platform.machine()}, "
          f"python {platform.python_version()}; script: {[s.kind for s in script]}, "
          f"think {args.think:g} s")
    print(f"{'calls':>6} {'overhead p50':>13} {'p99':>8} {'client p99':>11} "
          f"{'KiB/idle call':>14} {'us/token':>9} {'(turns)':>9} {'errors':>7}")
    for result in results:
        loaded, overhead = result["loaded"], result["server_overhead_ms"]
        per_token = (loaded["server"] or {}).get("cpu_per_token_us")
        print(f"{result['calls']:>6} {overhead['p50']!s:>13} {overhead['p99']!s:>8} "
              f"{loaded['latency_ms']['p99']!s:>11} {result['idle_kb_per_call']:>14} "
              f"{per_token!s:>9} {result['cpu_per_token_turns_us']!s:>9} "
              f"{loaded['errors']:>7}")
    top = results[-1]
    checks = (("p99 server overhead (ms)", top["server_overhead_ms"]["p99"],
               GOAL_OVERHEAD_P99_MS),
              ("memory per idle call (KiB)", top["idle_kb_per_call"], GOAL_IDLE_KB),
              ("CPU per relayed token (us)",
               top["cpu_per_token_turns_us"], GOAL_CPU_PER_TOKEN_US))
    for label, value, goal in checks:
        if value is None:
            print(f"{label}: not measured")
        elif value <= goal:
            print(f"{label} at {top['calls']} calls: {value} <= goal {goal}: met")
        else:
            print(f"{label} at {top['calls']} calls: {value} > goal {goal}: missed by "
                  f"{value - goal:.1f} ({value / goal:.1f}x)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
