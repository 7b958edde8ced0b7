"""Application latency, barge-in, memory and CPU at 50 to 2000 concurrent calls (issue 8).

Each level runs on a fresh local stack (``local_stack.py``): the local Bedrock endpoint and
local DynamoDB in their own processes, and ``voiceagent serve`` (signatures on, JSON logs at
INFO, the benchmark use case: 20-40 word replies, one tool, one keypad handler). The load is
``voiceagent bench``'s generator in this process, playing Twilio. Per level, N calls are
started over N x 20 ms and then all stay up together:

1. idle: every call connects, sets up and stays silent until all have been up for 3 s;
   memory per idle call is the server's RSS growth divided by N;
2. loaded: every call plays hours / barging into the menu after 3 words / specials / pickup
   (a tool round) / pressing 1, again and again until all have been up together for
   ``--window`` seconds (30). A caller hears each reply out at TTS pace (``--listen-wpm``,
   150) and takes ``--think`` seconds (1.5, +-50 %) to answer, as on a real call. The
   figures come from the turns of that window, when all N calls are up.

Figures:

* application latency overhead, server side: from the server's own "turn done" lines, prompt
  frame received -> first token frame sent (Twilio's "application latency"), minus the
  model's first-token delay as the endpoint delivered it (from the moment it had the whole
  request to the moment it handed the first token to its socket, which it records: the
  configured delay plus its own work and lateness; how late it read the request off its
  socket it cannot see, and that stays in); the figure minus the configured delay only is
  printed beside it;
* the same seen by the callers (client side: their own scheduling included);
* barge-in: interrupt sent -> the cut reply's closer received (client), and interrupt sent ->
  the upstream ConverseStream connection closed, as the Bedrock endpoint saw it (the shared
  monotonic clock of this machine; an upper bound for the server's cancel -> closed);
* CPU per relayed token, all in (every cost of the calls over the loaded phase, set-up and
  hang-up included, divided by the words the callers received); ``bench_token_cpu.py``
  measures what one more token costs;
* the server's event-loop lag and collector pauses over the measured window (its /metrics
  scraped at the window's start and end, histograms diffed: ``server_window.py``), and over
  its whole life (its "server stopped" line), and the CPU of the endpoint and of DynamoDB.

Between the two phases the benchmark waits (60 s at most) for the server's store queue to
drain and the idle calls to end, so their end writes do not run into the loaded phase.

When a core is left over (one worker on two cores), the worker runs on core 0 and the callers
and fakes on the rest (``--no-pin`` to let them mix): the server's figures are then its own,
not its load generator's.

With ``--baseline URL`` (any ConversationRelay server, already running) or
``--baseline-unchunked`` (ours with TOKEN_HOLD_MS=0: one frame per token), each level is run
again against the baseline and the client-side figures are printed side by side.

    python benchmarks/bench_latency.py --levels 50 200 500 1000
    python benchmarks/bench_latency.py --levels 2000 --workers 2
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import helper_peaks
import latency_args
import latency_servers
import server_process
from latency_figures import (
    endpoint_holds_s,
    endpoint_lag_ms,
    endpoint_read_late_s,
    endpoint_stats,
    exit_lines,
    keypad_latencies_ms,
    lags_by_turn,
    pauses,
    reconnects,
    server_overheads_ms,
    steady,
    turn_summaries,
    upstream_closed_ms,
)
from latency_report import check, print_gate_goals, print_level, print_levels, print_reconnects
from latency_servers import helper_cpu_s, pin_layout, start_minimal, start_servers, stop_servers
from local_stack import TOKEN, Stack, StackOptions, local_stack
from server_window import Scraper, drain_line, measured_window, wait_drained

from voiceagent.app.bench import FAIL_STEP, BenchOptions, Step, run_bench
from voiceagent.app.bench_report import percentiles

GOAL_OVERHEAD_P99_MS = {500: 5.0, 2000: 50.0}          # issue 8, the steady shape
GATE_GOAL_OVERHEAD_P99_MS = {500: 8.0, 2000: 50.0}     # issue 20, the gate shapes
GOAL_IDLE_KB = 100.0
GOAL_UPSTREAM_CLOSED_P99_MS = 10.0
THINK_JITTER = 0.5              # pauses vary +-50 %: callers are not in step
IDLE_HOLD_S = 3.0               # every call connected and silent this long: memory
LISTEN_WPM = 150.0              # a caller hears the reply out at TTS pace before answering
WINDOW_S = 30.0                 # every call up at once this long after the ramp
SCRIPT = (Step("say", "what are your hours?"), Step("barge", "what is on the menu?", 3),
          Step("say", "any specials today?"), Step("say", "when can I pick up my order?"),
          Step("dtmf", "1"))
# --shape gate (issue 20): callers connect at GATE_RATE calls/s; only when all are connected
# does each wait uniform(0, GATE_SPREAD_S), then speak three turns 4-12 s apart
GATE_RATE = 50.0
GATE_SPREAD_S = 8.0
GATE_THINK_S = 8.0               # x uniform(0.5, 1.5): 4-12 s
GATE_SCRIPT = (Step("say", "what are your hours?"), Step("say", "any specials today?"),
               Step("say", "when can I pick up my order?"))
# --shape gate-barge: the same, but the second turn barges into the menu after 3 words, for
# interrupt -> upstream closed under the gate's bursts
GATE_BARGE_SCRIPT = (GATE_SCRIPT[0], Step("barge", "what is on the menu?", 3), GATE_SCRIPT[2])
# --shape gate-fail: the relay session fails after the second turn (Twilio's /action, a new
# socket with the history resumed): with --workers 2, the failed socket, /action and the new
# socket land where the kernel puts them, as a balancer does
GATE_FAIL_SCRIPT = (GATE_SCRIPT[0], GATE_SCRIPT[1], FAIL_STEP, GATE_SCRIPT[2])
GATE_SCRIPTS = {"gate": GATE_SCRIPT, "gate-barge": GATE_BARGE_SCRIPT,
                "gate-fail": GATE_FAIL_SCRIPT}


# ------------------------------------------------------------------ one level

@dataclass(frozen=True)
class Baseline:
    """Another server loaded the same way at each level, for ratios side by side."""

    url: str | None = None              # already running (any ConversationRelay server)
    pids: tuple[int, ...] = ()          # its local processes, for CPU per token
    auth_token: str = TOKEN
    unchunked: bool = False             # ours with TOKEN_HOLD_MS=0, on the same stack
    minimal: bool = False               # benchmarks/minimal_server.py, on the same stack


@dataclass(frozen=True)
class Plan:
    stack: StackOptions
    workers: int
    think_s: float
    ramp_per_call_s: float
    scratch: Path
    listen_wpm: float = LISTEN_WPM
    window_s: float = WINDOW_S
    shape: str = "steady"              # or "gate": see GATE_SCRIPT
    profile: Path | None = None        # py-spy flame graphs of the loaded phase go here
    server_env: tuple[tuple[str, str], ...] = ()    # --server-env: what does X cost?


def loaded_run(url: str, calls: int, plan: Plan, pids: tuple[int, ...],
               auth_token: str = TOKEN, scrape: Scraper | None = None) -> dict[str, Any]:
    """Every call up at once for ``plan.window_s`` after the ramp; figures from then on. With
    ``shape="gate"``: every turn counts, the first ones in a burst right after the ramp.
    With ``scrape``: the server's loop lag and collector pauses over that window
    (``server_window``), from its /metrics at the window's start and end."""
    if plan.shape.startswith("gate"):
        script = GATE_SCRIPTS[plan.shape]
        options = BenchOptions(
            url=url, calls=calls, ramp_s=calls / GATE_RATE, script=script,
            auth_token=auth_token, server_pids=pids, think_s=GATE_THINK_S,
            think_jitter=THINK_JITTER, gate=True, spread_s=GATE_SPREAD_S, progress=True)
    else:
        ramp_s = calls * plan.ramp_per_call_s
        options = BenchOptions(
            url=url, calls=calls, ramp_s=ramp_s, script=SCRIPT, auth_token=auth_token,
            server_pids=pids, think_s=plan.think_s, think_jitter=THINK_JITTER,
            listen_wpm=plan.listen_wpm, until_s=ramp_s + plan.window_s,
            measure_from_s=ramp_s, progress=True)
    if scrape is None:
        return trio.run(run_bench, options)
    result, window = trio.run(measured_window, partial(run_bench, options),
                              options.measure_from_s, scrape)
    result["server_window"] = window
    return result


def run_level(calls: int, plan: Plan, baseline: Baseline | None) -> dict[str, Any]:
    scratch = plan.scratch / f"level-{calls}"
    for n in range(2, 100):
        if not scratch.exists():
            break
        scratch = plan.scratch / f"level-{calls}-{n}"       # a repeat keeps its own logs
    with local_stack(plan.stack, scratch) as stack:
        processes, url, logs = start_servers(stack, scratch, f"{calls}", plan.workers,
                                             dict(plan.server_env))
        pids = tuple(process.pid for process in processes)
        try:
            ramp_s = calls * plan.ramp_per_call_s
            idle = trio.run(run_bench, BenchOptions(
                url=url, calls=calls, ramp_s=ramp_s, script=(), auth_token=TOKEN,
                server_pids=pids, until_s=ramp_s + IDLE_HOLD_S, progress=False))
            scrape = Scraper(url, latency_servers.METRICS_TOKEN, pids)
            drain = wait_drained(scrape, workers=len(pids))
            print(drain_line(drain))
            helpers_before = helper_cpu_s(stack)
            with server_process.profiling(plan.profile, pids, f"{calls}-calls"), \
                    helper_peaks.sampling(partial(helper_cpu_s, stack)) as peaks:
                loaded = loaded_run(url, calls, plan, pids, scrape=scrape)
            helpers_after = helper_cpu_s(stack)
            stats = endpoint_stats(stack)
        finally:
            stop_servers(processes)
        base = run_baseline(baseline, stack, calls, plan, scratch) if baseline else None
    turns = steady(turn_summaries(logs), loaded)
    since = loaded["started_at_monotonic"] + loaded["measured_from_s"]
    lags = (lags_by_turn(turn_summaries(logs), stats, plan.stack.first_token_ms) if stats
            else None)
    idle_server = idle["server"] or {}
    idle_kb = (idle_server.get("rss_kb_peak", 0) - idle_server.get("rss_kb_before", 0)) / calls
    duration = loaded["duration_s"] or 1.0
    helpers = {name: round(100 * (helpers_after[name] - helpers_before.get(name, 0.0))
                           / duration, 1) for name in helpers_after}
    return {
        "calls": calls, "workers": plan.workers, "stack": plan.stack.describe(),
        "first_token_ms": plan.stack.first_token_ms,
        "think_s": plan.think_s, "ramp_s": calls * plan.ramp_per_call_s,
        "idle_errors": idle["errors"], "idle_kb_per_call": round(idle_kb, 1),
        "store_drain_before_loaded": drain,
        "loaded": loaded,
        "overhead_ms": percentiles([v / 1000 for v in server_overheads_ms(
            turns, plan.stack.first_token_ms, lags)]),
        "overhead_vs_configured_ms": percentiles([v / 1000 for v in server_overheads_ms(
            turns, plan.stack.first_token_ms)]),
        "keypad_latency_ms": percentiles([v / 1000 for v in keypad_latencies_ms(turns)]),
        "client_overhead_ms": _minus(loaded["latency_ms"], plan.stack.first_token_ms),
        "upstream_closed_ms": percentiles(upstream_closed_ms(loaded["barge_ins"], stats))
        if stats else None,
        "endpoint_lag_ms": percentiles(endpoint_lag_ms(stats, since)) if stats else None,
        "endpoint_hold_ms": percentiles(endpoint_holds_s(
            stats, since, plan.stack.first_token_ms)) if stats else None,
        "endpoint_read_late_ms": percentiles(endpoint_read_late_s(stats, since))
        if stats else None,
        "endpoint_violations": stats["violations"] if stats else None,
        "helpers_cpu_percent": helpers,
        "helpers_busiest_percent": peaks.busiest(),     # over helper_peaks.SPAN_S
        "server_pauses": pauses(exit_lines(logs)),          # over the process's life
        "server_window": loaded.pop("server_window", None),  # over the measured window
        "reconnects": reconnects(logs),
        "baseline": base}


def run_baseline(baseline: Baseline, stack: Stack, calls: int, plan: Plan,
                 scratch: Path) -> dict[str, Any]:
    if baseline.url:
        return loaded_run(baseline.url, calls, plan, baseline.pids, baseline.auth_token)
    if baseline.minimal:
        process, url = start_minimal(stack, scratch / f"minimal-{calls}.log")
        try:
            result = loaded_run(url, calls, plan, (process.pid,))
            result["url"] = "minimal_server.py: history in memory, no signatures, no store"
            return result
        finally:
            stop_servers([process])
    processes, url, _ = start_servers(stack, scratch, f"{calls}-baseline", plan.workers,
                                      {"TOKEN_HOLD_MS": "0"})
    try:
        result = loaded_run(url, calls, plan, tuple(p.pid for p in processes))
        result["url"] = "ours, TOKEN_HOLD_MS=0 (one frame per token)"
        return result
    finally:
        stop_servers(processes)


def _minus(row: dict[str, Any], ms: float) -> dict[str, Any]:
    return {k: (round(v - ms, 3) if k != "count" and v is not None else v)
            for k, v in row.items()}


# ------------------------------------------------------------------ report

def print_summary(results: list[dict[str, Any]], plan: Plan) -> None:
    pinning = (f"server worker(s) pinned to {latency_servers.PINNED}, callers and fakes to "
               f"{sorted(os.sched_getaffinity(0))}" if latency_servers.PINNED else "no pinning")
    if plan.shape.startswith("gate"):
        shape = (f"{plan.shape} shape: calls connect at {GATE_RATE:g}/s, then each waits 0-"
                 f"{GATE_SPREAD_S:g} s and says {len(GATE_SCRIPT)} turns "
                 f"{GATE_THINK_S * (1 - THINK_JITTER):g}-{GATE_THINK_S * (1 + THINK_JITTER):g} "
                 "s apart, every turn counted"
                 + (", the relay session failing after the second (reconnected)"
                    if plan.shape == "gate-fail" else ""))
    else:
        shape = (f"script: {[s.kind for s in SCRIPT]} played until every call has been up "
                 f"for {plan.window_s:g} s, each reply heard at {plan.listen_wpm:g} wpm, then "
                 f"{plan.think_s:g} s (+-{THINK_JITTER:.0%})")
    print(f"\nmachine: {os.cpu_count()} cpus, {platform.machine()}, python "
          f"{platform.python_version()}; {plan.stack.describe()}; {shape}; "
          f"{plan.workers} server process(es), {pinning}")
    print_levels(results)
    goals = GATE_GOAL_OVERHEAD_P99_MS if plan.shape.startswith("gate") else GOAL_OVERHEAD_P99_MS
    for calls, goal in goals.items():
        runs = [r["overhead_ms"]["p99"] for r in results
                if r["calls"] == calls and r["overhead_ms"]["p99"] is not None]
        if runs:
            label = ("p99 application latency overhead (ms)" if len(runs) == 1 else
                     f"p99 application latency overhead (ms), median of {len(runs)} runs "
                     f"{sorted(runs)}")
            print(check(label, statistics.median(runs), goal, calls))
    if plan.shape.startswith("gate"):
        print_gate_goals(results)
    for r in results:
        answered = r["loaded"]["calls_completed"]
        print(f"calls answered at {r['calls']} calls: {answered} of {r['calls']}"
              f" ({'met' if answered == r['calls'] else 'missed'})")
    print_reconnects(results)
    top = results[-1]
    print(check("memory per idle call (KiB)", top["idle_kb_per_call"], GOAL_IDLE_KB,
                top["calls"]))
    for r in results:
        if r["upstream_closed_ms"] and r["upstream_closed_ms"]["count"]:
            print(check("interrupt sent -> upstream closed p99 (ms)",
                        r["upstream_closed_ms"]["p99"], GOAL_UPSTREAM_CLOSED_P99_MS,
                        r["calls"]))


def main() -> int:
    args = latency_args.parser(__doc__.splitlines()[0], tuple(GATE_SCRIPTS),
                               listen_wpm=LISTEN_WPM, window_s=WINDOW_S).parse_args()
    pin_layout(args.workers, args.pin)
    baseline = None
    if args.baseline or args.baseline_unchunked or args.baseline_minimal:
        baseline = Baseline(url=args.baseline, pids=tuple(args.baseline_pid or ()),
                            auth_token=args.baseline_auth_token,
                            unchunked=args.baseline_unchunked and not args.baseline,
                            minimal=args.baseline_minimal and not args.baseline)
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-latency-{os.getpid()}"
    plan = Plan(StackOptions(llm=args.llm, store=args.store,
                             first_token_ms=args.first_token_ms, token_ms=args.token_ms,
                             tls=args.tls, moto=args.moto),
                workers=args.workers, think_s=args.think,
                ramp_per_call_s=args.ramp_per_call, scratch=scratch,
                listen_wpm=args.listen_wpm, window_s=args.window, shape=args.shape,
                profile=args.profile, server_env=tuple(
                    tuple(pair.split("=", 1)) for pair in args.server_env))
    started = time.monotonic()
    results = []
    for calls in args.levels:
        for _ in range(args.repeat):
            results.append(run_level(calls, plan, baseline))
            print_level(results[-1])
    print_summary(results, plan)
    print(f"done in {time.monotonic() - started:.0f} s; logs under {scratch}")
    if args.json:
        args.json.write_text(json.dumps({"levels": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
