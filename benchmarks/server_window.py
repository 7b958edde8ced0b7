"""The server's own figures over the measured window, read from its ``/metrics``.

The exit line's loop lag and collector pauses cover the process's whole life, and the
longest of them fell outside the window: start-up, the idle phase's hang-ups (every idle call
closed at once), and those calls' end writes draining afterwards. Here each worker's
``/metrics`` is scraped when the window starts and when it ends, and the histograms'
buckets are diffed: what the window alone saw. Percentiles from buckets are the upper bound
of the bucket the sample falls in (a sample of 3 ms is "<= 5 ms"), so they are read as "at
most", never as a measured value.

Between the idle phase and the loaded one, ``wait_drained`` waits (bounded) until every
worker's write-behind queue is empty and its idle calls have ended, so their end writes do
not run into the loaded phase.
"""

from __future__ import annotations

import http.client
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import trio
from prometheus_client.parser import text_string_to_metric_families
from server_process import socket_owner

from voiceagent.threads import run_blocking

LOOP_LAG = "voiceagent_event_loop_lag_seconds"
GC_PAUSE = "voiceagent_gc_pause_seconds"
PENDING = "voiceagent_write_behind_pending"
PENDING_BYTES = "voiceagent_write_behind_pending_bytes"
PENDING_AGE = "voiceagent_write_behind_lag_seconds"
ACTIVE_CALLS = "voiceagent_active_calls"
OVER_S = 0.010                  # the share of samples over 10 ms: lag a caller can hear add up
DRAIN_BOUND_S = 60.0
DRAIN_POLL_S = 0.5
SCRAPE_TIMEOUT_S = 10.0

Buckets = list[tuple[float, float]]     # (upper bound in seconds, cumulative count), sorted
Blocking = Callable[[Callable[[], dict[int, str]]], Awaitable[dict[int, str]]]


# ------------------------------------------------------------------ arithmetic

def histograms(text: str, name: str, by: str | None = None) -> dict[str, tuple[Buckets, float]]:
    """A histogram family of a Prometheus exposition: its cumulative buckets and sum, for
    each value of the label ``by`` ("" when ``by`` is None)."""
    found: dict[str, tuple[dict[float, float], list[float]]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            key = sample.labels.get(by, "") if by else ""
            buckets, total = found.setdefault(key, ({}, [0.0]))
            if sample.name == name + "_bucket":
                buckets[float(sample.labels["le"])] = sample.value
            elif sample.name == name + "_sum":
                total[0] = sample.value
    return {key: (sorted(buckets.items()), total[0])
            for key, (buckets, total) in found.items()}


def diff(before: tuple[Buckets, float] | None,
         after: tuple[Buckets, float]) -> tuple[Buckets, float]:
    """What was observed between two scrapes of one histogram: cumulative counts and sums
    subtract bucket by bucket (a histogram not there before counts from zero)."""
    if before is None:
        return after
    earlier = dict(before[0])
    if sorted(earlier) != [bound for bound, _ in after[0]]:
        raise ValueError("the histogram's buckets changed between the scrapes: "
                         f"{sorted(earlier)} then {[b for b, _ in after[0]]}")
    return ([(bound, count - earlier[bound]) for bound, count in after[0]],
            after[1] - before[1])


def add(a: tuple[Buckets, float] | None, b: tuple[Buckets, float]) -> tuple[Buckets, float]:
    """Two workers' histograms as one (the same buckets)."""
    if a is None:
        return b
    return [(bound, x + y) for (bound, x), (_, y) in zip(a[0], b[0], strict=True)], a[1] + b[1]


def bucket_quantile(buckets: Buckets, q: float) -> float | None:
    """The upper bound (seconds) of the bucket holding the ``q`` quantile's sample (rank
    ceil(q x count)); ``inf`` when it is past the last finite bound; None with no samples."""
    count = buckets[-1][1] if buckets else 0
    if count <= 0:
        return None
    rank = max(1, math.ceil(q * count - 1e-9))
    for bound, cumulative in buckets:
        if cumulative >= rank:
            return bound
    return math.inf


def figures(window: tuple[Buckets, float]) -> dict[str, Any]:
    """Count, p50 and p99 (bucket upper bounds, ms: "at most"), the share over 10 ms and the
    total (ms) of one histogram's window."""
    buckets, total = window
    count = int(buckets[-1][1]) if buckets else 0
    at_10ms = dict(buckets).get(OVER_S)
    if at_10ms is None and count:
        raise ValueError(f"no bucket bound at {OVER_S} s: the share over 10 ms needs one")
    return {"count": count,
            "p50_le_ms": _ms(bucket_quantile(buckets, 0.50)),
            "p99_le_ms": _ms(bucket_quantile(buckets, 0.99)),
            "over_10ms_percent": round(100 * (count - (at_10ms or 0)) / count, 2)
            if count else None,
            "total_ms": round(total * 1000, 1)}


def _ms(seconds: float | None) -> float | str | None:
    if seconds is None:
        return None
    if math.isinf(seconds):
        return "over the last bound"
    return round(seconds * 1000, 3)


def window_figures(before: Mapping[int, str], after: Mapping[int, str]) -> dict[str, Any]:
    """Each worker's scrapes at the window's start and end, diffed and summed over the
    workers scraped both times: the loop lag and, per generation, the collector pauses."""
    pids = sorted(set(before) & set(after))
    lag: tuple[Buckets, float] | None = None
    gc: dict[str, tuple[Buckets, float]] = {}
    for pid in pids:
        old, new = histograms(before[pid], LOOP_LAG), histograms(after[pid], LOOP_LAG)
        if "" in new:
            lag = add(lag, diff(old.get(""), new[""]))
        old_gc = histograms(before[pid], GC_PAUSE, "generation")
        for generation, row in histograms(after[pid], GC_PAUSE, "generation").items():
            gc[generation] = add(gc.get(generation), diff(old_gc.get(generation), row))
    return {"workers_scraped": len(pids),
            "loop_lag": figures(lag) if lag is not None else None,
            "gc_pauses": {g: figures(gc[g]) for g in sorted(gc)}}


def gauge(text: str, name: str) -> float | None:
    for family in text_string_to_metric_families(text):
        if family.name == name and family.samples:
            return float(family.samples[0].value)
    return None


# ------------------------------------------------------------------ scraping

@dataclass(frozen=True)
class Scraper:
    """Reads every worker's ``/metrics``. Workers sharing a port (REUSE_PORT) answer as the
    kernel hashes each connection, so an answer is kept for the worker that holds the
    server side of its connection (its descriptors, in /proc), until each has answered."""

    url: str
    token: str
    pids: tuple[int, ...]

    def __call__(self) -> dict[int, str]:
        answers: dict[int, str] = {}
        for _ in range(20 * len(self.pids)):
            pid, text = self._once()
            if pid is not None:
                answers.setdefault(pid, text)
            if len(answers) == len(self.pids):
                break
        return answers

    def _once(self) -> tuple[int | None, str]:
        parts = urlsplit(self.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        connection = http.client.HTTPConnection(host, port, timeout=SCRAPE_TIMEOUT_S)
        try:
            connection.request("GET", "/metrics",
                               headers={"Authorization": f"Bearer {self.token}"})
            response = connection.getresponse()
            body = response.read().decode()
            if response.status != 200:
                raise RuntimeError(f"GET {self.url}/metrics answered {response.status}: "
                                   f"{body[:200]!r} (is METRICS_TOKEN set on the server?)")
            if len(self.pids) == 1:
                return self.pids[0], body
            assert connection.sock is not None
            return socket_owner(self.pids, port, connection.sock.getsockname()[1]), body
        finally:
            connection.close()


async def measured_window(run: Callable[[], Awaitable[dict[str, Any]]],
                          measure_from_s: float, scrape: Callable[[], dict[int, str]], *,
                          blocking: Blocking | None = None
                          ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``run()`` (the loaded phase), with every worker scraped ``measure_from_s`` after it
    starts (when its measured window opens) and once it has ended: its result, and the
    window's figures. A scrape that fails leaves the figures out and says why, rather than
    losing the level's other figures (minutes of load) to it. ``blocking`` runs a scrape
    (default: in a thread, while the callers go on)."""
    limiter = trio.CapacityLimiter(1)

    async def in_thread(fn: Callable[[], dict[int, str]]) -> dict[int, str]:
        return await run_blocking(fn, limiter=limiter)

    call = blocking or in_thread
    errors: list[str] = []
    before: dict[int, str] = {}

    def scrape_or_note() -> dict[int, str]:
        try:
            return scrape()
        except (OSError, RuntimeError, http.client.HTTPException) as err:
            errors.append(f"{type(err).__name__}: {err}")
            return {}

    async def at_window_start(started: float) -> None:
        await trio.sleep_until(started + measure_from_s)
        before.update(await call(scrape_or_note))

    async with trio.open_nursery() as nursery:
        if measure_from_s > 0:
            nursery.start_soon(at_window_start, trio.current_time())
        else:
            before.update(await call(scrape_or_note))
        result = await run()
    window = window_figures(before, await call(scrape_or_note))
    return result, {**window, "scrape_errors": errors}


def wait_drained(scrape: Callable[[], Mapping[int, str]], *, workers: int = 1,
                 bound_s: float = DRAIN_BOUND_S, poll_s: float = DRAIN_POLL_S,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Until every worker's write-behind queue is empty and it has no call left, or
    ``bound_s``: how long it waited, what was pending when it began, and whether it
    drained (when not, what was still pending, or why it could not be read: a scrape that
    fails, or misses a worker, is tried again until the bound)."""
    started = clock()
    first: dict[str, float] | None = None
    now: dict[str, float] | None = None
    error = ""
    while True:
        try:
            now = _backlog(scrape(), workers)
            first = first or now
        except (OSError, RuntimeError, http.client.HTTPException) as err:
            error = f"{type(err).__name__}: {err}"
        waited = clock() - started
        if now is not None and now["pending"] == 0 and now["active_calls"] == 0:
            return {"drained": True, "waited_s": round(waited, 2), "at_start": first}
        if waited >= bound_s:
            return {"drained": False, "waited_s": round(waited, 2), "at_start": first,
                    "left": now, "error": error}
        sleep(min(poll_s, bound_s - waited))


def _backlog(answers: Mapping[int, str], workers: int) -> dict[str, float]:
    if len(answers) < workers:
        raise RuntimeError(f"{len(answers)} of {workers} workers answered /metrics: cannot "
                           "tell whether the store queue has drained")
    total = {"pending": 0.0, "pending_bytes": 0.0, "oldest_s": 0.0, "active_calls": 0.0}
    for text in answers.values():
        total["pending"] += gauge(text, PENDING) or 0.0
        total["pending_bytes"] += gauge(text, PENDING_BYTES) or 0.0
        total["oldest_s"] = max(total["oldest_s"], round(gauge(text, PENDING_AGE) or 0.0, 2))
        total["active_calls"] += gauge(text, ACTIVE_CALLS) or 0.0
    return total


def drain_line(wait: Mapping[str, Any]) -> str:
    start = wait["at_start"]
    if start is None:
        return (f"!! store queue before the loaded phase: not read in {wait['waited_s']} s "
                f"({wait['error']}); the idle phase's end writes may run into the loaded one")
    began = (f"{start['pending']:g} store writes pending ({start['pending_bytes'] / 1024:.0f}"
             f" KiB, oldest {start['oldest_s']:g} s), {start['active_calls']:g} calls still "
             "up")
    if wait["drained"]:
        return (f"store queue drained before the loaded phase: waited {wait['waited_s']} s; "
                f"at the idle phase's end: {began}")
    left = wait["left"]             # the last reading (a later scrape may have failed)
    failed = f"; then {wait['error']}" if wait["error"] else ""
    return (f"!! store queue NOT drained before the loaded phase after {wait['waited_s']} s "
            f"(at the idle phase's end: {began}; still {left['pending']:g} items pending, "
            f"oldest {left['oldest_s']:g} s, {left['active_calls']:g} calls up{failed}): the "
            "idle phase's end writes run into the loaded phase")
