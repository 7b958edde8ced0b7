"""The figures of a ``voiceagent bench`` run: percentiles, and the table printed at the end."""

from __future__ import annotations

import math
from typing import Any


def percentiles(values: list[float], scale: float = 1000.0) -> dict[str, float | int | None]:
    """count, p50/p95/p99 (nearest rank) and max, in ms by default."""
    if not values:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)] * scale, 3)

    return {"count": len(ordered), "p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99),
            "max": round(ordered[-1] * scale, 3)}


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{result['calls']} calls over {result['ramp_s']:g} s ramp, "
             f"{result['turns']} turns, {result['tokens']} tokens in {result['frames']} frames, "
             f"{result['errors']} errors, "
             f"{result['duration_s']:.1f} s",
             f"{'(ms)':<24}{'count':>8}{'p50':>10}{'p95':>10}{'p99':>10}{'max':>10}"]
    for key, label in (("latency_ms", "application latency"),
                       ("inter_token_ms", "inter-token gap"),
                       ("barge_in_stop_ms", "barge-in stop"),
                       ("reconnect_ms", "reconnect")):
        row = result.get(key)
        if row is None or (key == "reconnect_ms" and not row["count"]):
            continue
        cells = "".join("         -" if row[q] is None else f"{row[q]:>10.2f}"
                        for q in ("p50", "p95", "p99", "max"))
        lines.append(f"{label:<24}{row['count']:>8}{cells}")
    late = result.get("words_after_interrupt") or {}
    if late.get("count"):
        lines.append(f"words received after an interrupt was sent (in flight): p50 "
                     f"{late['p50']:g}, p99 {late['p99']:g}, max {late['max']:g}")
    if result["server"]:
        server = result["server"]
        pids = ",".join(str(pid) for pid in server["pids"])
        lines.append(f"server pid {pids}: cpu {server['cpu_s']:.2f} s "
                     f"({server['cpu_percent']}%), {server['cpu_per_token_us']} us/token, "
                     f"rss {server['rss_kb_before']:.0f} -> peak {server['rss_kb_peak']:.0f} "
                     f"KiB")
    lines.append(f"load generator (this process): cpu {result['client_cpu_percent']}%")
    for kind, count in sorted(result["error_kinds"].items()):
        lines.append(f"error x{count}: {kind}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- the command
