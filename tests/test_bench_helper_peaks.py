"""``benchmarks/helper_peaks.py``: the helpers' busiest seconds beside their average. The load
benchmark runs for minutes; these check the arithmetic on samples given here: a helper at a
full core through a burst in a phase it mostly idles through must read as saturated, not as
its average (which hid moto's saturation in the reconnect burst, issue 20)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from helper_peaks import Peaks, busiest_percent, sampling  # noqa: E402


def _series(shares: list[float], period_s: float = 1.0) -> list[tuple[float, float]]:
    """(time, CPU seconds) read every ``period_s``, the share of each period given."""
    samples, cpu = [(0.0, 0.0)], 0.0
    for n, share in enumerate(shares, start=1):
        cpu += share * period_s
        samples.append((n * period_s, cpu))
    return samples


def test_a_burst_reads_as_saturated_where_the_average_does_not() -> None:
    shares = [0.1] * 20 + [1.0] * 10 + [0.1] * 20       # a 10 s burst in a 50 s phase
    samples = _series(shares)
    average = 100 * samples[-1][1] / samples[-1][0]
    assert average == pytest.approx(28.0)
    assert busiest_percent(samples, span_s=5.0) == 100.0


def test_the_stretch_is_the_shortest_long_enough_not_the_whole_phase() -> None:
    # a 5 s burst at 90 %: a stretch longer than 5 s would average it with the quiet
    samples = _series([0.0] * 10 + [0.9] * 5 + [0.0] * 10)
    assert busiest_percent(samples, span_s=5.0) == 90.0
    assert busiest_percent(samples, span_s=10.0) == 45.0


def test_uneven_sampling_divides_by_the_time_that_passed() -> None:
    # a late reading (the sampler held up): 3 CPU s over 6 s is 50 %, not 60 % over "5 s"
    assert busiest_percent([(0.0, 0.0), (6.0, 3.0)], span_s=5.0) == 50.0


def test_no_stretch_long_enough_is_none() -> None:
    assert busiest_percent([], span_s=5.0) is None
    assert busiest_percent([(0.0, 0.0), (4.0, 4.0)], span_s=5.0) is None


def test_each_helper_its_own_busiest() -> None:
    peaks = Peaks()
    for at, (moto, bedrock) in enumerate([(0.0, 0.0), (1.0, 0.1), (2.0, 0.2), (3.0, 0.3),
                                          (4.0, 0.4), (5.0, 0.5), (5.5, 0.6)]):
        peaks.add(float(at), {"dynamodb": moto, "bedrock": bedrock})
    assert peaks.busiest() == {"dynamodb": 100.0, "bedrock": 10.0}


def test_sampling_reads_at_entry_and_at_exit() -> None:
    readings = iter([{"dynamodb": 1.0}, {"dynamodb": 4.0}])
    with sampling(lambda: next(readings), period_s=3600.0) as peaks:
        pass
    assert [cpu for _, cpu in peaks.samples["dynamodb"]] == [1.0, 4.0]
