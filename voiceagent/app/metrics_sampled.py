"""The figures ``GET /metrics`` reads from the parts at scrape time: active calls, open
connections, the write-behind queue, garbage-collection pauses, Bedrock's streams and
cancel -> closed times.

Apart from ``metrics.py``, which counts what the calls report as they happen (and prints the
EMF lines): this side keeps no bookkeeping of its own, it only turns each part's
``statistics()`` into metric families when Prometheus asks.
"""

from __future__ import annotations

import math
import statistics as stats
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from voiceagent.app import heap

if TYPE_CHECKING:
    from voiceagent.app.metrics import Observed


class Sampled(Collector):
    """Figures read from the parts at scrape time (no bookkeeping on the call path)."""

    def __init__(self, runtime: Observed) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        runtime = self.runtime
        yield _gauge("voiceagent_active_calls", "Calls in progress", runtime.calls.active)
        yield _gauge("voiceagent_draining", "1 while the process drains", int(runtime.draining))
        connections = runtime.connections          # None: no server around it
        if connections is not None:
            yield _gauge("voiceagent_open_connections", "TCP connections open (the cap counts "
                         "them before any request is read)", connections.open)
            yield _gauge("voiceagent_open_connections_limit", "The cap on open connections",
                         connections.limit)
            over_cap = CounterMetricFamily(
                "voiceagent_connections_over_cap",
                "Connections accepted with open connections at their cap, by outcome: refused "
                "(answered 503 and closed: every open one was a call or a relay socket "
                "waiting for its setup), closed_idle, closed_body (another closed to make "
                "room: idle, or its request body still arriving, answered 503)",
                labels=["outcome"])
            for outcome in ("refused", "closed_idle", "closed_body"):
                over_cap.add_metric([outcome], connections.over_cap[outcome])
            yield over_cap
        writer = runtime.writer.statistics()
        yield _gauge("voiceagent_write_behind_pending", "History items not yet written",
                     writer.pending)
        yield _gauge("voiceagent_write_behind_pending_bytes",
                     "About the memory the items not yet written hold",
                     writer.pending_bytes)
        yield _gauge("voiceagent_write_behind_lag_seconds",
                     "Age of the oldest pending history item", writer.oldest_pending_age_s)
        yield _gauge("voiceagent_write_behind_store_down", "1 while the store refuses writes",
                     int(writer.store_down))
        for name, text, total in (
                ("written", "History items written", writer.written),
                ("failed", "History items refused permanently and dropped", writer.failed),
                ("retries", "Write attempts repeated", writer.retries),
                ("undecided", "Session claims (mints, renewals) the store did not decide in "
                 "time: served on this process's word, written later", writer.undecided)):
            yield _counter(f"voiceagent_write_behind_{name}", text, total)
        reads = getattr(runtime.store, "read_counts", None)     # DynamoDB's: the loop's reads
        if reads is not None:
            yield _counter("voiceagent_store_read_retries",
                           "Store reads tried a second time (throttled, a 5xx, the connection "
                           "lost or silent)", reads.retried)
            yield _counter("voiceagent_store_read_failures",
                           "Store reads failed in a way that may pass, after their second try "
                           "or with the retry quota spent", reads.failed)
        pauses = heap.gc_pauses()
        if pauses is not None:
            gc_family = HistogramMetricFamily(
                "voiceagent_gc_pause_seconds",
                "Cyclic garbage collections, by generation: the event loop stops for each",
                labels=["generation"])
            for generation, counts in pauses.counts.items():
                cumulative, buckets = 0, []
                for bound, count in zip((*pauses.buckets, math.inf), counts, strict=True):
                    cumulative += count
                    buckets.append(("+Inf" if bound == math.inf else str(bound), cumulative))
                gc_family.add_metric([str(generation)], buckets, pauses.sums[generation])
            yield gc_family
        sample: Callable[[], Any] | None = getattr(runtime.llm, "statistics", None)
        if sample is None:
            return
        bedrock = sample()
        if not hasattr(bedrock, "cancel_to_closed_s"):      # not BedrockLLM's figures
            return
        yield _gauge("voiceagent_bedrock_streams_open", "ConverseStream calls open",
                     bedrock.streams_open)
        yield _counter("voiceagent_bedrock_streams", "ConverseStream calls opened",
                       bedrock.streams_opened)
        yield _counter("voiceagent_bedrock_cancellations",
                       "Streams left before their end (barge-in, hang-up)",
                       bedrock.cancellations)
        yield _counter("voiceagent_bedrock_retries", "Bedrock calls retried", bedrock.retries)
        errors = CounterMetricFamily("voiceagent_bedrock_errors",
                                     "Upstream errors (retried or not), by code",
                                     labels=["code"])
        for code, count in sorted(bedrock.errors_by_code.items()):
            errors.add_metric([code], count)
        yield errors
        for name, window, text in (
                ("voiceagent_bedrock_cancel_to_closed_seconds", bedrock.cancel_to_closed_s,
                 "Cancel -> upstream connection shut down, over the last 100 cancels"),
                ("voiceagent_bedrock_first_token_seconds", bedrock.first_token_s,
                 "Stream opened -> first content, over the last 100 streams")):
            family = GaugeMetricFamily(name, text, labels=["quantile"])
            for q, value in _quantiles(window).items():
                family.add_metric([q], value)
            yield family


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=value)


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, text, value=value)


def _quantiles(window: tuple[float, ...]) -> dict[str, float]:
    if not window:
        return {}
    if len(window) == 1:
        return {"0.5": window[0], "0.99": window[0], "1": window[0]}
    cuts = stats.quantiles(window, n=100, method="inclusive")
    return {"0.5": cuts[49], "0.99": cuts[98], "1": max(window)}
