"""The helpers' busiest seconds in the loaded phase, beside their average over it.

Why: in `--shape gate-fail --levels 200 --workers 2` the DynamoDB stand-in averaged 56-59 %
of a core over the loaded phase, which read as "not saturated"; read every second it was at
90-100 % for the 15-25 s of the reconnect burst (its one thread takes one request at a time,
so that is all it can give), each request waiting ~1 s for it, and reconnects took 5-6 s. The
average over a phase that is mostly turns apart hides the helper that is the bottleneck in
the seconds that matter; the busiest ``SPAN_S`` shows it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

PERIOD_S = 1.0      # how often the helpers' CPU is read
SPAN_S = 5.0        # the busiest stretch this long is reported


def busiest_percent(samples: Sequence[tuple[float, float]], span_s: float = SPAN_S
                    ) -> float | None:
    """The highest CPU share (percent of one core) over any stretch of at least ``span_s``
    between two ``(monotonic time, CPU seconds)`` samples; None with no such stretch. The
    shortest stretch that is long enough is taken for each end, so a burst is not averaged
    with the quiet around it more than the sampling period makes it."""
    best: float | None = None
    start = 0
    for end in range(len(samples)):
        # move the start up while the stretch after it would still be long enough
        while start + 1 < end and samples[end][0] - samples[start + 1][0] >= span_s:
            start += 1
        elapsed = samples[end][0] - samples[start][0]
        if elapsed >= span_s:
            share = 100 * (samples[end][1] - samples[start][1]) / elapsed
            best = share if best is None else max(best, share)
    return None if best is None else round(best, 1)


class Peaks:
    """Samples of each helper's CPU seconds, read by a thread while the load runs."""

    def __init__(self) -> None:
        self.samples: dict[str, list[tuple[float, float]]] = {}

    def add(self, at: float, cpu_s: dict[str, float]) -> None:
        for name, seconds in cpu_s.items():
            self.samples.setdefault(name, []).append((at, seconds))

    def busiest(self) -> dict[str, float | None]:
        return {name: busiest_percent(series) for name, series in self.samples.items()}


@contextmanager
def sampling(read: Callable[[], dict[str, float]], period_s: float = PERIOD_S
             ) -> Iterator[Peaks]:
    """Read ``read()`` (helper name -> CPU seconds) every ``period_s`` in a thread, from
    entry to exit (a last reading at exit); the load's own event loop is not touched."""
    peaks, stop = Peaks(), threading.Event()

    def run() -> None:
        while True:
            peaks.add(time.monotonic(), read())
            if stop.wait(period_s):
                return

    thread = threading.Thread(target=run, name="helper-peaks", daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        stop.set()
        thread.join()
        peaks.add(time.monotonic(), read())
