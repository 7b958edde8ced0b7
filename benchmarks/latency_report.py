"""bench_latency.py's printed figures: one level's table, the side-by-side against a
baseline, and the goals each run is checked against."""

from __future__ import annotations

from typing import Any

import helper_peaks

from voiceagent.app.bench_report import format_table, percentiles

GATE_GOAL_CPU_RATIO = 2.0       # issue 20: server CPU at 500 calls / the minimal server's
GATE_GOAL_RSS_MB_AT_2000 = 200.0


SIDE_BY_SIDE = (("application latency p50 (ms)", ("latency_ms", "p50")),
                ("application latency p99 (ms)", ("latency_ms", "p99")),
                ("inter-token gap p99 (ms)", ("inter_token_ms", "p99")),
                ("barge-in stop p99 (ms)", ("barge_in_stop_ms", "p99")),
                ("server CPU per token (us)", ("server", "cpu_per_token_us")),
                ("server CPU (% of a core)", ("server", "cpu_percent")),
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


def p_(row: dict[str, Any] | None, q: str) -> str:
    value = (row or {}).get(q)
    return "-" if value is None else f"{value:.2f}"


def print_level(result: dict[str, Any]) -> None:
    print(f"\n== {result['calls']} calls ==")
    print(format_table(result["loaded"]))
    print(f"server overhead (ms), minus the model's delay as the endpoint delivered it: "
          f"{result['overhead_ms']}")
    print(f"server overhead (ms), minus the configured {result['first_token_ms']:g} ms only: "
          f"{result['overhead_vs_configured_ms']}")
    print(f"keypad replies, no model (ms): {result['keypad_latency_ms']}")
    print(f"endpoint's own lag sending first tokens (ms): {result['endpoint_lag_ms']}")
    print("endpoint's hold beyond the configured delay, request arrived -> first token out "
          f"(ms; taken off the server overhead): {result.get('endpoint_hold_ms')}")
    print("  of which the endpoint reading the request late, arrival (kernel stamp) -> read "
          f"(ms): {result.get('endpoint_read_late_ms')}")
    print(f"interrupt sent -> upstream closed at the endpoint (ms): "
          f"{result['upstream_closed_ms']}")
    print(f"idle: {result['idle_kb_per_call']} KiB RSS per connected idle call "
          f"({result['idle_errors']} errors); helpers' CPU: {result['helpers_cpu_percent']}, "
          f"busiest {helper_peaks.SPAN_S:g} s: {result.get('helpers_busiest_percent')}")
    print(f"server's collections over its life (idle phase included) and longest loop lag: "
          f"{result['server_pauses']}")
    print(window_lines(result.get("server_window")))
    if result["endpoint_violations"]:
        print(f"!! the endpoint saw requests Converse would refuse: "
              f"{result['endpoint_violations'][:3]}")
    if result["baseline"]:
        print(side_by_side(result))


def window_lines(window: dict[str, Any] | None) -> str:
    """The server's loop lag and collections over the measured window alone."""
    if not window or not window["workers_scraped"]:
        return ("server's loop lag over the measured window: not scraped "
                f"{(window or {}).get('scrape_errors') or ''}")
    lag = window["loop_lag"] or {}
    lines = [f"server's event-loop lag over the measured window ({window['workers_scraped']} "
             f"worker(s), /metrics diffed; p50/p99 are bucket upper bounds, \"at most\"): "
             f"{lag.get('count')} samples, p50 <= {lag.get('p50_le_ms')} ms, p99 <= "
             f"{lag.get('p99_le_ms')} ms, {lag.get('over_10ms_percent')} % over 10 ms"]
    for generation, row in window["gc_pauses"].items():
        lines.append(f"  collections of generation {generation} in the window: " + (
            f"{row['count']}, {row['total_ms']} ms in all, p50 <= {row['p50_le_ms']} ms, p99 "
            f"<= {row['p99_le_ms']} ms, {row['over_10ms_percent']} % over 10 ms"
            if row["count"] else "none"))
    return "\n".join(lines)


def print_gate_goals(results: list[dict[str, Any]]) -> None:
    """Issue 20's other goals: CPU against the minimal server, RSS at 2000 calls."""
    for r in results:
        server, base = r["loaded"]["server"] or {}, r["baseline"]
        if base and str(base.get("url", "")).startswith("minimal_server"):
            theirs = (base["server"] or {}).get("cpu_percent")
            if server.get("cpu_percent") and theirs:
                print(check("server CPU / the minimal server's", round(
                    server["cpu_percent"] / theirs, 2), GATE_GOAL_CPU_RATIO, r["calls"]))
        if r["calls"] == 2000 and server.get("rss_kb_peak"):
            print(check("server RSS peak (MB)", round(server["rss_kb_peak"] / 1024, 1),
                        GATE_GOAL_RSS_MB_AT_2000, r["calls"]))


def print_levels(results: list[dict[str, Any]]) -> None:
    """A row a level: the server's overhead, the callers' p99, barge-in, memory, CPU, errors."""
    print(f"{'calls':>6} | {'overhead p50':>12} {'p95':>7} {'p99':>7} | {'client p99':>10} | "
          f"{'barge stop':>10} {'upstream':>8} | {'KiB/idle':>8} | {'us/token':>8} "
          f"{'cpu %':>6} {'helpers %':>14} | {'lag p99<=':>9} {'>10ms %':>7} | {'errors':>6}")
    for r in results:
        loaded = r["loaded"]
        server = loaded["server"] or {}
        helpers = "+".join(f"{v:g}" for v in r["helpers_cpu_percent"].values()) or "-"
        lag = (r.get("server_window") or {}).get("loop_lag") or {}
        print(f"{r['calls']:>6} | {p_(r['overhead_ms'], 'p50'):>12} "
              f"{p_(r['overhead_ms'], 'p95'):>7} {p_(r['overhead_ms'], 'p99'):>7} | "
              f"{p_(r['client_overhead_ms'], 'p99'):>10} | "
              f"{p_(loaded['barge_in_stop_ms'], 'p99'):>10} "
              f"{p_(r['upstream_closed_ms'], 'p99'):>8} | {r['idle_kb_per_call']:>8} | "
              f"{server.get('cpu_per_token_us')!s:>8} {server.get('cpu_percent')!s:>6} "
              f"{helpers:>14} | {lag.get('p99_le_ms')!s:>9} {lag.get('over_10ms_percent')!s:>7} | "
              f"{loaded['errors'] + r['idle_errors']:>6}")
    print("(overhead: server side, prompt frame in -> first token frame out, minus the "
          "model's first-token delay as the endpoint delivered it; client p99: the callers' "
          "latency minus the configured delay; barge stop: "
          "interrupt sent -> closer received; upstream: interrupt sent -> the endpoint saw "
          "the stream close; helpers: endpoint+DynamoDB; lag: the server's event-loop lag "
          "over the measured window, p99 as a bucket's upper bound (ms) and the share of "
          "samples over 10 ms)")


def print_reconnects(results: list[dict[str, Any]]) -> None:
    for r in results:
        if r["loaded"]["reconnect_ms"]["count"] or r["reconnects"]["outcomes"]:
            waited = r["reconnects"]["waited_ms"]
            print(f"reconnects at {r['calls']} calls: relay session failed -> new socket set "
                  f"up (ms) {r['loaded']['reconnect_ms']}; /action answered "
                  f"{r['reconnects']['outcomes']}; waited for the failed socket's last "
                  f"messages {len(waited)} times (ms): {percentiles([w / 1000 for w in waited])}")
