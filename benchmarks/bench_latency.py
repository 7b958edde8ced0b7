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
  (``model us/token``), is the floor no relay can go below on this machine.

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
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import server_process

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


def start_server(data_dir: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = {"STORE": "sqlite", "LLM": "scripted", "DATA_DIR": str(data_dir),
           "CONFIG_DIR": str(ROOT / "benchmarks" / "config"),
           "STACK_USE_CASE": "benchUseCase", "TWILIO_AUTH_TOKEN": TOKEN, "LOG_LEVEL": "INFO",
           "LOG_FORMAT": "json", "PING_INTERVAL_S": "0", "MAX_CALLS": "5000",
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


def run_level(calls: int, ramp_s: float, scratch: Path, think_s: float) -> dict[str, Any]:
    log_path = scratch / f"server-{calls}.log"
    process, url = start_server(scratch / f"data-{calls}", log_path)
    try:
        idle = trio.run(run_bench, BenchOptions(
            url=url, calls=calls, ramp_s=ramp_s, script=(), auth_token=TOKEN,
            server_pid=process.pid, hold_s=3.0, progress=False))
        loaded = trio.run(run_bench, BenchOptions(
            url=url, calls=calls, ramp_s=ramp_s, script=SCRIPT, auth_token=TOKEN,
            server_pid=process.pid, think_s=think_s, think_jitter=THINK_JITTER,
            progress=True))
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
    return {"calls": calls, "ramp_s": ramp_s, "think_s": think_s,
            "idle_errors": idle["errors"], "idle_kb_per_call": round(idle_kb, 1),
            "loaded": loaded, "idle_cpu_s": idle_server.get("cpu_s"),
            "cpu_per_token_turns_us": marginal,
            "server_overhead_ms": percentiles([v / 1000 for v in overheads])}


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
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-latency-{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    model_us = model_cpu_per_token_us()
    print(f"the scripted model alone: {model_us} us of CPU per token (its pacing timer)")
    results = []
    for calls in args.levels:
        result = run_level(calls, calls * args.ramp_per_call, scratch, args.think)
        results.append(result)
        print(f"\n== {calls} calls ==")
        print(format_table(result["loaded"]))
        print(f"server overhead (ms): {result['server_overhead_ms']}")
        print(f"idle: {result['idle_kb_per_call']} KiB RSS per connected idle call "
              f"({result['idle_errors']} errors)")
    print(f"\nmachine: {os.cpu_count()} cpus, {platform.machine()}, "
          f"python {platform.python_version()}; script: {[s.kind for s in SCRIPT]}, "
          f"think {args.think:g} s; model alone {model_us} us/token")
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
    if args.json:
        args.json.write_text(json.dumps({"model_us_per_token": model_us, "levels": results},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
