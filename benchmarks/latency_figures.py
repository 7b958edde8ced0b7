"""bench_latency.py's figures from what the server and the endpoint recorded: the server's
"turn done" and "server stopped" log lines, and the local Bedrock endpoint's own timings of
each request and connection (its /stats)."""

from __future__ import annotations

import json
import ssl
import urllib.request
from pathlib import Path
from typing import Any

from local_stack import Stack


def exit_lines(log_paths: list[Path]) -> list[dict[str, Any]]:
    """Each worker's "server stopped" line: its collections and its longest loop lag."""
    found = []
    for path in log_paths:
        for line in path.read_text().splitlines():
            if '"server stopped"' in line:
                found.append(json.loads(line))
    return found


def reconnects(log_paths: list[Path]) -> dict[str, Any]:
    """What the servers' ``/action`` answered each reconnect, by outcome (their "reconnect
    answered" lines: ``resumed``, ``resumed_partial``, ``refused_busy``, ``refused_limit``),
    and how long the waits for a failed socket's last messages were, where there were any."""
    counts: dict[str, int] = {}
    waited_ms: list[float] = []
    for path in log_paths:
        for line in path.read_text().splitlines():
            if '"reconnect answered"' not in line and "after waiting" not in line:
                continue
            entry = json.loads(line)
            if entry.get("event") == "reconnect answered":
                outcome = str(entry.get("outcome"))
                counts[outcome] = counts.get(outcome, 0) + 1
            elif "waited_ms" in entry and "previous socket" in str(entry.get("event")):
                waited_ms.append(float(entry["waited_ms"]))
    return {"outcomes": counts, "waited_ms": waited_ms}


def pauses(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """Collections summed over the workers, by generation, and the longest loop lag."""
    total: dict[str, dict[str, float]] = {}
    for line in lines:
        for generation, row in (line.get("gc_pauses") or {}).items():
            into = total.setdefault(generation, {"count": 0, "total_ms": 0.0,
                                                 "longest_ms": 0.0, "longest_cpu_ms": 0.0,
                                                 "longest_collected": 0})
            into["count"] += row["count"]
            into["total_ms"] = round(into["total_ms"] + row["total_ms"], 1)
            if row["longest_ms"] > into["longest_ms"]:
                # the CPU the longest took: a pause far longer than its CPU was the
                # collector waiting for a core, not walking
                into["longest_ms"] = row["longest_ms"]
                into["longest_cpu_ms"] = row.get("longest_cpu_ms", 0.0)
                into["longest_collected"] = row.get("longest_collected", 0)
    return {"gc": total, "loop_lag_longest_ms": max(
        (line.get("loop_lag_longest_ms") or 0.0 for line in lines), default=None)}


def turn_summaries(log_paths: list[Path]) -> list[dict[str, Any]]:
    turns = []
    for path in log_paths:
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") == "turn done" and entry.get("kind") == "caller":
                turns.append(entry)
    return turns


def steady(turns: list[dict[str, Any]], loaded: dict[str, Any]) -> list[dict[str, Any]]:
    """The turns that ended after the ramp, when every call was up."""
    since = loaded["started_at"] + loaded["measured_from_s"]
    return [t for t in turns if t.get("ts", 0) >= since]


def server_overheads_ms(turns: list[dict[str, Any]], first_token_ms: float,
                        lags_ms: dict[tuple[str, int], float] | None = None) -> list[float]:
    """Caller turns the model answered: application latency minus the model's delay, and
    minus the endpoint's own lag for that turn's request when ``lags_ms`` has it."""
    values = []
    for t in turns:
        if t.get("latency_ms") is None or t.get("rounds", 0) < 1:
            continue
        lag = 0.0 if lags_ms is None else lags_ms.get((t.get("call_sid", ""), t["turn"]))
        if lag is not None:
            values.append(t["latency_ms"] - first_token_ms - lag)
    return values


def lags_by_turn(turns: list[dict[str, Any]], stats: dict[str, Any],
                 first_token_ms: float) -> dict[tuple[str, int], float]:
    """The endpoint's own part of each turn's first request, beyond the configured delay
    (``endpoint_hold_ms``): a call's requests in order against its turns in order, each
    turn taking as many requests as it had model rounds (a call whose counts do not match is
    left out)."""
    requests: dict[str, list[dict[str, Any]]] = {}
    for request in stats["requests"]:
        requests.setdefault(request["call_sid"], []).append(request)
    by_call: dict[str, list[dict[str, Any]]] = {}
    for t in turns:
        by_call.setdefault(t.get("call_sid", ""), []).append(t)
    lags = {}
    for call_sid, call_turns in by_call.items():
        queue = sorted(requests.get(call_sid, ()), key=lambda r: r["index"])
        ordered = sorted(call_turns, key=lambda t: t["turn"])
        if sum(t.get("rounds", 0) for t in ordered) != len(queue):
            continue
        at = 0
        for t in ordered:
            rounds = t.get("rounds", 0)
            if rounds and (held := endpoint_hold_ms(queue[at], first_token_ms)) is not None:
                lags[(call_sid, t["turn"])] = held
            at += rounds
    return lags


def endpoint_hold_ms(request: dict[str, Any], first_token_ms: float) -> float | None:
    """How much longer than the configured delay the endpoint held a request: from the
    moment the request reached its socket (the kernel's stamp, ``arrived_at``; on loopback,
    when the server sent it) to the moment it handed the first paced frame to its socket.
    Its lateness in reading the request and in starting the delay counts here too, not only
    its lateness in sending (``first_late_s``, what an endpoint that records neither stamp
    gives). Without ``arrived_at`` (TLS, or a platform with no stamps) the hold starts when
    it had the whole request, and how late it read it stays in the server's figure."""
    if request.get("first_sent_at") is not None:
        start = request.get("arrived_at") or request["received_at"]
        return float(request["first_sent_at"] - start) * 1000 - first_token_ms
    if request.get("first_late_s") is not None:
        return float(request["first_late_s"]) * 1000
    return None


def keypad_latencies_ms(turns: list[dict[str, Any]]) -> list[float]:
    """Keypad handler replies (no model): application latency is all ours."""
    return [t["latency_ms"] for t in turns
            if t.get("latency_ms") is not None and t.get("rounds", 0) == 0]


# ------------------------------------------------------------------ the endpoint's side

def endpoint_stats(stack: Stack) -> dict[str, Any] | None:
    url = stack.env.get("AWS_ENDPOINT_URL_BEDROCK_RUNTIME")
    if url is None:
        return None
    ca_bundle = stack.env.get("AWS_CA_BUNDLE")
    context = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else None
    with urllib.request.urlopen(url + "/stats", timeout=30, context=context) as response:
        stats: dict[str, Any] = json.loads(response.read())
        return stats


def upstream_closed_ms(barge_ins: list[dict[str, Any]], stats: dict[str, Any]) -> list[float]:
    """Per barge-in: interrupt sent (the caller's clock) -> the endpoint saw the stream's
    connection close. Both are CLOCK_MONOTONIC readings (``time.monotonic`` and
    ``time.perf_counter`` on Linux), shared by every process of the machine."""
    closed_at = {c["id"]: c["closed_at"] for c in stats["connections"]}
    by_call: dict[str, list[dict[str, Any]]] = {}
    for request in stats["requests"]:
        by_call.setdefault(request["call_sid"], []).append(request)
    figures = []
    for barge in barge_ins:
        sent = barge["sent_at_monotonic"]
        cut = [r for r in by_call.get(barge["call_sid"], ())
               if r["outcome"] == "client_closed" and r["received_at"] <= sent
               and (closed_at.get(r["connection"]) or 0) >= sent]
        if cut:
            figures.append(min(closed_at[r["connection"]] for r in cut) - sent)
    return figures


def endpoint_lag_ms(stats: dict[str, Any], since_monotonic: float) -> list[float]:
    return [r["first_late_s"] for r in stats["requests"]
            if r.get("first_late_s") is not None and r["received_at"] >= since_monotonic]


def endpoint_read_late_s(stats: dict[str, Any], since_monotonic: float) -> list[float]:
    """How late the endpoint read each request since: its arrival (the kernel's stamp) ->
    the endpoint having it whole. Part of ``endpoint_hold_ms``, shown apart: the stand-in
    sharing the machine's cores, not the server."""
    return [r["received_at"] - r["arrived_at"] for r in stats["requests"]
            if r.get("arrived_at") is not None and r["received_at"] >= since_monotonic]


def endpoint_holds_s(stats: dict[str, Any], since_monotonic: float,
                     first_token_ms: float) -> list[float]:
    """``endpoint_hold_ms`` of every request since, in seconds (as ``percentiles`` wants)."""
    return [held / 1000 for r in stats["requests"] if r["received_at"] >= since_monotonic
            and (held := endpoint_hold_ms(r, first_token_ms)) is not None]
