"""``benchmarks/server_window.py``: the server's loop lag and collector pauses over the load
benchmark's measured window, from two scrapes of its /metrics, and the bounded wait for its
store queue to drain between the idle and loaded phases. The benchmark itself runs for
minutes; these check the arithmetic that turns two scrapes into the printed figures (a wrong
diff would print the process's whole life as the window's, with no error) and that the wait
ends at its bound, on a /metrics served from 127.0.0.1."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from tests.http_server_support import serving

ROOT = Path(__file__).resolve().parent.parent

sys.path.insert(0, str(ROOT / "benchmarks"))

from server_window import (  # noqa: E402
    Scraper,
    bucket_quantile,
    diff,
    drain_line,
    histograms,
    measured_window,
    wait_drained,
    window_figures,
)

from voiceagent.app.heap import PAUSE_BUCKETS  # noqa: E402
from voiceagent.app.metrics import LAG_BUCKETS  # noqa: E402

TOKEN = "test-metrics-token"
NO_SUCH_PID = 4_194_305             # past Linux's largest pid_max (2**22)


def gc_text(counts: dict[str, list[int]], sums: dict[str, float]) -> str:
    """The gc family as the server's collector writes it: cumulative buckets per generation
    (``counts`` per bucket, not cumulative, the last one past every bound)."""
    lines = ["# HELP voiceagent_gc_pause_seconds Cyclic garbage collections",
             "# TYPE voiceagent_gc_pause_seconds histogram"]
    for generation, per_bucket in counts.items():
        cumulative = 0
        for bound, count in zip((*PAUSE_BUCKETS, math.inf), per_bucket, strict=True):
            cumulative += count
            le = "+Inf" if bound == math.inf else str(bound)
            lines.append(f'voiceagent_gc_pause_seconds_bucket{{generation="{generation}",'
                         f'le="{le}"}} {cumulative}')
        lines.append(f'voiceagent_gc_pause_seconds_count{{generation="{generation}"}} '
                     f'{cumulative}')
        lines.append(f'voiceagent_gc_pause_seconds_sum{{generation="{generation}"}} '
                     f'{sums[generation]}')
    return "\n".join(lines) + "\n"


def test_the_window_is_what_the_second_scrape_adds_to_the_first() -> None:
    """Start-up's three half-second stalls are in both scrapes, so not in the window; of the
    window's 100 samples, 90 are under 0.5 ms, 8 at 4 ms, 2 at 30 ms."""
    registry = CollectorRegistry()
    lag = Histogram("voiceagent_event_loop_lag_seconds", "lag", buckets=LAG_BUCKETS,
                    registry=registry)
    for _ in range(3):
        lag.observe(0.5)
    before = generate_latest(registry).decode()
    for value, times in ((0.0003, 90), (0.004, 8), (0.03, 2)):
        for _ in range(times):
            lag.observe(value)
    after = generate_latest(registry).decode()

    window = window_figures({7: before}, {7: after})

    assert window["workers_scraped"] == 1
    assert window["loop_lag"] == {"count": 100, "p50_le_ms": 0.5, "p99_le_ms": 50.0,
                                  "over_10ms_percent": 2.0, "total_ms": 119.0}
    assert window["gc_pauses"] == {}


def test_collections_by_generation_are_diffed_and_summed_over_the_workers() -> None:
    zero = [0] * (len(PAUSE_BUCKETS) + 1)
    # worker 1: generation 0 had 50 collections <= 0.5 ms before; 10 more, one of 20 ms
    w1_before = gc_text({"0": [50, *zero[1:]], "2": zero}, {"0": 0.01, "2": 0.0})
    w1_after = gc_text({"0": [59, 0, 0, 0, 0, 1, *zero[6:]], "2": zero},
                       {"0": 0.01 + 0.0025 + 0.02, "2": 0.0})
    # worker 2: nothing before (its family shows zeros); a full collection of 300 ms after
    w2_before = gc_text({"0": zero, "2": zero}, {"0": 0.0, "2": 0.0})
    w2_after = gc_text({"0": [10, *zero[1:]], "2": [*zero[:9], 1, 0]},
                       {"0": 0.002, "2": 0.3})

    window = window_figures({1: w1_before, 2: w2_before}, {1: w1_after, 2: w2_after})

    young, full = window["gc_pauses"]["0"], window["gc_pauses"]["2"]
    assert young["count"] == 20
    assert young["p50_le_ms"] == 0.5
    assert young["p99_le_ms"] == 25.0
    assert young["over_10ms_percent"] == 5.0
    assert young["total_ms"] == pytest.approx(24.5)
    assert full == {"count": 1, "p50_le_ms": 1000.0, "p99_le_ms": 1000.0,
                    "over_10ms_percent": 100.0, "total_ms": 300.0}
    assert window["workers_scraped"] == 2
    assert window["loop_lag"] is None


def test_a_worker_scraped_only_once_is_left_out() -> None:
    text = gc_text({"0": [5] + [0] * len(PAUSE_BUCKETS)}, {"0": 0.001})
    window = window_figures({1: text}, {1: text, 2: text})
    assert window["workers_scraped"] == 1
    assert window["gc_pauses"]["0"]["count"] == 0
    assert window["gc_pauses"]["0"]["p99_le_ms"] is None


def test_quantiles_are_the_upper_bound_of_the_samples_bucket() -> None:
    buckets = [(0.001, 50.0), (0.01, 99.0), (0.1, 99.0), (math.inf, 100.0)]
    assert bucket_quantile(buckets, 0.5) == 0.001       # the 50th sample
    assert bucket_quantile(buckets, 0.51) == 0.01
    assert bucket_quantile(buckets, 0.99) == 0.01       # the 99th
    assert bucket_quantile(buckets, 1.0) == math.inf    # past the last finite bound
    assert bucket_quantile([(0.001, 0.0), (math.inf, 0.0)], 0.5) is None
    past = window_figures({1: gc_text({"1": [0] * 11}, {"1": 0.0})},
                          {1: gc_text({"1": [0] * 10 + [1]}, {"1": 2.0})})
    assert past["gc_pauses"]["1"]["p99_le_ms"] == "over the last bound"


def test_buckets_that_changed_between_scrapes_are_refused() -> None:
    with pytest.raises(ValueError, match="buckets changed"):
        diff(([(0.001, 1.0), (math.inf, 1.0)], 0.0), ([(0.002, 1.0), (math.inf, 2.0)], 0.0))
    parsed = histograms(gc_text({"0": [1] + [0] * 10}, {"0": 0.0}),
                        "voiceagent_gc_pause_seconds", "generation")
    assert parsed["0"][0][0] == (0.0005, 1.0)
    assert parsed["0"][0][-1] == (math.inf, 1.0)


# ------------------------------------------------------------------ the drain wait

def backlog_text(pending: int, calls: int) -> str:
    return (f"# TYPE voiceagent_write_behind_pending gauge\n"
            f"voiceagent_write_behind_pending {pending}\n"
            f"# TYPE voiceagent_write_behind_pending_bytes gauge\n"
            f"voiceagent_write_behind_pending_bytes {pending * 2048}\n"
            f"# TYPE voiceagent_write_behind_lag_seconds gauge\n"
            f"voiceagent_write_behind_lag_seconds {4.5 if pending else 0.0}\n"
            f"# TYPE voiceagent_active_calls gauge\n"
            f"voiceagent_active_calls {calls}\n")


@contextmanager
def fake_metrics(answers: list[tuple[int, int]]) -> Iterator[tuple[str, list[str]]]:
    """/metrics on 127.0.0.1: ``answers`` in turn (pending, calls), the last one for ever;
    401 without the token. Keep-alive, as the server's, so the answering socket is still
    open when the scraper looks for its owner."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            asked.append(self.path)
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                status, body = 401, b"unauthorized"
            else:
                pending, calls = answers[min(len(asked), len(answers)) - 1]
                status, body = 200, backlog_text(pending, calls).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return None

    with serving(Handler) as url:
        yield url, asked


class FakeTime:
    """The wait's clock, moved only by its sleeps: the bound is reached without waiting."""

    def __init__(self) -> None:
        self.now = 100.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds


@pytest.mark.timeout(60)
def test_the_drain_wait_gives_up_at_its_bound_and_says_what_was_left() -> None:
    fake = FakeTime()
    with fake_metrics([(489, 500), (489, 12)]) as (url, asked):
        wait = wait_drained(Scraper(url, TOKEN, (os.getpid(),)), bound_s=60.0, poll_s=0.5,
                            clock=fake.clock, sleep=fake.sleep)
    assert wait["drained"] is False
    assert wait["waited_s"] == 60.0
    assert len(asked) == 121                # at 0, 0.5, ..., 60 s
    assert wait["at_start"] == {"pending": 489, "pending_bytes": 489 * 2048, "oldest_s": 4.5,
                                "active_calls": 500}
    assert wait["left"]["pending"] == 489
    assert wait["left"]["active_calls"] == 12
    assert "NOT drained" in drain_line(wait)
    assert "489 items pending" in drain_line(wait)


@pytest.mark.timeout(60)
def test_the_drain_wait_ends_when_the_queue_is_empty_and_the_calls_gone() -> None:
    fake = FakeTime()
    with fake_metrics([(30, 4), (2, 0), (0, 1), (0, 0)]) as (url, asked):
        wait = wait_drained(Scraper(url, TOKEN, (os.getpid(),)), bound_s=60.0, poll_s=0.5,
                            clock=fake.clock, sleep=fake.sleep)
    assert wait["drained"] is True
    assert wait["waited_s"] == 1.5
    assert len(asked) == 4
    assert wait["at_start"]["pending"] == 30
    assert drain_line(wait).startswith("store queue drained before the loaded phase: waited "
                                       "1.5 s; at the idle phase's end: 30 store writes")


@pytest.mark.timeout(60)
def test_a_scrape_without_the_token_says_what_to_set() -> None:
    with fake_metrics([(0, 0)]) as (url, _):
        with pytest.raises(RuntimeError, match=r"answered 401.*METRICS_TOKEN"):
            Scraper(url, "wrong", (os.getpid(),))()


@pytest.mark.timeout(60)
def test_workers_on_one_port_are_told_apart_by_who_holds_the_connection() -> None:
    """Two pids: the answer is this process's (the fake server runs here), found by the
    socket's owner in /proc; the other never answers and is left out, after its tries."""
    with fake_metrics([(3, 1)]) as (url, asked):
        answers = Scraper(url, TOKEN, (NO_SUCH_PID, os.getpid()))()
    assert list(answers) == [os.getpid()]
    assert "voiceagent_write_behind_pending 3" in answers[os.getpid()]
    assert len(asked) == 40


# ------------------------------------------------------------------ the window's scrapes

def lag_text(samples: int) -> str:
    registry = CollectorRegistry()
    lag = Histogram("voiceagent_event_loop_lag_seconds", "lag", buckets=LAG_BUCKETS,
                    registry=registry)
    for _ in range(samples):
        lag.observe(0.0002)
    return generate_latest(registry).decode()


async def inline(fn: Callable[[], dict[int, str]]) -> dict[int, str]:
    """The scrape run in trio's thread: a worker thread would let the virtual clock jump
    past every deadline while trio waits for it."""
    await trio.lowlevel.checkpoint()
    return fn()


async def test_the_window_opens_at_its_start_not_the_runs(
        autojump_clock: trio.testing.MockClock) -> None:
    """The steady shape measures from the ramp's end: its first scrape waits for that, the
    second follows the run's end, and the figures are the difference of the two."""
    scraped_at: list[float] = []

    def scrape() -> dict[int, str]:
        scraped_at.append(trio.current_time())
        return {1: lag_text(3 if len(scraped_at) == 1 else 10)}

    async def run() -> dict[str, Any]:
        started = trio.current_time()
        await trio.sleep(30)
        return {"ran_s": trio.current_time() - started}

    with trio.fail_after(120):
        result, window = await measured_window(run, 12.0, scrape, blocking=inline)
    assert result == {"ran_s": 30.0}
    assert len(scraped_at) == 2
    assert scraped_at == [12.0, 30.0]
    assert window["loop_lag"]["count"] == 7
    assert window["scrape_errors"] == []


async def test_a_failed_scrape_loses_the_window_not_the_run(
        autojump_clock: trio.testing.MockClock) -> None:
    def scrape() -> dict[int, str]:
        raise ConnectionRefusedError(111, "Connection refused")

    async def run() -> dict[str, Any]:
        await trio.sleep(5)
        return {"turns": 300}

    with trio.fail_after(120):
        result, window = await measured_window(run, 0.0, scrape, blocking=inline)
    assert result == {"turns": 300}
    assert window["workers_scraped"] == 0
    assert window["loop_lag"] is None
    assert window["scrape_errors"] == ["ConnectionRefusedError: [Errno 111] Connection "
                                       "refused"] * 2


@pytest.mark.timeout(60)
def test_a_drain_wait_that_cannot_read_the_queue_ends_at_its_bound_and_says_why() -> None:
    fake = FakeTime()
    with fake_metrics([(0, 0)]) as (url, asked):
        wait = wait_drained(Scraper(url, "wrong", (os.getpid(),)), bound_s=10.0, poll_s=0.5,
                            clock=fake.clock, sleep=fake.sleep)
    assert wait["drained"] is False
    assert wait["waited_s"] == 10.0
    assert len(asked) == 21
    assert "answered 401" in wait["error"]
    assert "not read in 10.0 s" in drain_line(wait)
    assert "METRICS_TOKEN" in drain_line(wait)


@pytest.mark.timeout(60)
def test_a_drain_wait_does_not_call_a_queue_drained_that_a_worker_did_not_report() -> None:
    """Of two workers only one (this process) answers, with nothing pending: the other's
    queue is unknown, so the wait goes on to its bound."""
    fake = FakeTime()
    with fake_metrics([(0, 0)]) as (url, _):
        wait = wait_drained(Scraper(url, TOKEN, (NO_SUCH_PID, os.getpid())), workers=2,
                            bound_s=1.0, poll_s=0.5, clock=fake.clock, sleep=fake.sleep)
    assert wait["drained"] is False
    assert "1 of 2 workers answered" in wait["error"]
