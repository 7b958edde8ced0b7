"""``voiceagent bench`` in-process against the real server."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from tests.settled_clock import jump_when_settled
from voiceagent.app import cli
from voiceagent.app.bench import BenchOptions, Step, run_bench
from voiceagent.app.bench_report import format_table, percentiles
from voiceagent.app.runtime import CallCounters


async def test_bench_against_the_real_server(tmp_path: Path) -> None:
    script = (Step("say", "what are your hours?"), Step("barge", "tell me a story", 3),
              Step("dtmf", "1"))
    out = tmp_path / "bench.json"
    progress = io.StringIO()
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path)) as server:
            result = await run_bench(BenchOptions(
                url=server.url, calls=4, ramp_s=0.2, script=script, auth_token=AUTH_TOKEN,
                server_pids=(os.getpid(),), json_path=out), stream=progress)
            await server.runtime.calls.wait_idle()
            assert server.runtime.calls.total == 4
    assert json.loads(out.read_text()) == result
    assert result["calls"] == 4
    assert result["calls_completed"] == 4
    assert result["errors"] == 0
    assert result["turns"] == 12
    assert result["latency_ms"]["count"] == 12            # every turn's first token timed
    assert result["barge_in_stop_ms"]["count"] == 4
    assert result["inter_token_ms"]["count"] > 0
    assert result["tokens"] > result["frames"] > 0       # the fixture's replies are chunked
    for key in ("latency_ms", "inter_token_ms", "barge_in_stop_ms"):
        row = result[key]
        assert 0 <= row["p50"] <= row["p95"] <= row["p99"] <= row["max"]
    assert result["latency_ms"]["p50"] >= 20              # the fixture model's first token
    server_figures = result["server"]
    assert server_figures["pids"] == [os.getpid()]
    assert server_figures["rss_kb_peak"] >= server_figures["rss_kb_before"] > 0
    assert server_figures["cpu_s"] > 0
    lines = progress.getvalue().splitlines()
    assert "4/4 calls done" in lines[-1]                 # a line per redraw, not one long
    assert "\r" not in progress.getvalue()               # line of carriage returns
    assert len(result["barge_ins"]) == 4               # CallSid and when, for the endpoint
    assert result["words_after_interrupt"]["count"] == 4
    assert "application latency" in format_table(result)


async def test_failed_relay_sessions_reconnect_and_the_calls_go_on(tmp_path: Path) -> None:
    """``--fail``: each call's socket fails after its first turn; /action hands back a new
    one, whose socket resumes the conversation (the server's reports say so: the second
    socket of each call started from the first one's history, without the greeting)."""
    script = (Step("say", "what are your hours?"), Step("fail", ""),
              Step("say", "when can I pick up my order?"))
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path)) as server:
            result = await run_bench(BenchOptions(
                url=server.url, calls=3, ramp_s=0.1, script=script, auth_token=AUTH_TOKEN,
                progress=False))
            await server.runtime.calls.wait_idle()
            reports = list(server.runtime.calls.reports)
    assert result["errors"] == 0
    assert result["calls_completed"] == 3
    assert result["turns"] == 6
    assert result["reconnect_ms"]["count"] == 3
    assert "reconnect" in format_table(result)
    assert server.runtime.calls.total == 6                  # two sockets a call
    by_call: dict[str, list[list[dict[str, Any]]]] = {}
    for report in reports:
        assert report.history is not None
        by_call.setdefault(report.call_sid, []).append(list(report.history.messages))
    assert len(by_call) == 3
    for first, second in by_call.values():
        assert [m["role"] for m in first] == ["assistant", "user", "assistant"]
        assert second[:3] == first                     # resumed from the first socket's
        assert second[3]["content"] == [{"text": "when can I pick up my order?"}]


async def test_bench_counts_errors(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            result = await run_bench(BenchOptions(
                url=server.url, calls=2, ramp_s=0, auth_token="wrong-token", progress=False))
    assert result["errors"] == 2
    assert result["calls_completed"] == 0
    assert result["server"] is None
    (kind,) = result["error_kinds"]
    assert "403" in kind


def test_percentiles_nearest_rank() -> None:
    values = [i / 1000 for i in range(1, 101)]
    assert percentiles(values) == {"count": 100, "p50": 50.0, "p95": 95.0, "p99": 99.0,
                                   "max": 100.0}
    assert percentiles([])["p99"] is None


def test_cli_registers_bench() -> None:
    args = cli._parser().parse_args(["bench", "http://127.0.0.1:1", "-n", "3", "--say", "hi",
                                     "--barge", "2:tell me a story", "--dtmf", "1", "--fail",
                                     "--say", "again",
                                     "--server-pid", "10", "--server-pid", "11"])
    assert args.calls == 3
    assert args.server_pid == [10, 11]
    assert args.script == [Step("say", "hi"), Step("barge", "tell me a story", 2),
                           Step("dtmf", "1"), Step("fail", ""), Step("say", "again")]
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["bench", "http://x", "--barge", "story"])


async def test_calls_stay_up_together_and_only_the_steady_turns_count(
        tmp_path: Path, mock_clock: trio.testing.MockClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``until_s``: every call plays its script again until then, so all are up at once;
    ``measure_from_s``: the turns of the ramp are not in the figures; ``listen_wpm``: the
    caller hears each reply out before its next turn. On the virtual clock: on the real one a
    loaded machine took the whole 1.5 s over the first turns, and nothing played again."""
    jump_when_settled(mock_clock, monkeypatch)
    most = 0

    async def watch(calls: CallCounters) -> None:
        nonlocal most
        while True:
            most = max(most, calls.active)
            await calls.wait_changed()

    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path)) as server:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch, server.runtime.calls)
                result = await run_bench(BenchOptions(
                    url=server.url, calls=3, ramp_s=0.2, script=(Step("say", "hours?"),),
                    auth_token=AUTH_TOKEN, think_s=0.1, listen_wpm=3000.0, until_s=1.5,
                    measure_from_s=0.5, progress=False))
                nursery.cancel_scope.cancel()
    assert result["errors"] == 0
    assert most == 3                                      # all three were up together
    assert result["turns"] > 3                            # the script played again
    assert 0 < result["latency_ms"]["count"] <= result["turns"] - 3   # not the first turns
    assert result["duration_s"] >= 1.5
    assert result["measured_from_s"] == 0.5


async def test_the_gate_holds_every_first_turn_until_all_calls_are_connected(
        tmp_path: Path) -> None:
    """``gate``: the burst of first turns right after a ramp (issue 20's load shape); a call
    that fails to connect still counts, so the gate never waits for it."""
    seen: dict[str, float] = {}

    async def watch(runtime: Any) -> None:
        while True:
            now = trio.current_time()
            # every setup has reached the server (being looked up, or a call): what the
            # gate promises; ``active`` alone came a store read later, and a caller let go
            # by the gate could be heard first on a loaded machine
            if runtime.calls.active + runtime.calls.lookups == 4:
                seen.setdefault("all_connected", now)
            if any(report.turns.turns for report in runtime.calls.live):
                seen.setdefault("first_turn", now)
            await trio.sleep(0.005)

    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path)) as server:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch, server.runtime)
                result = await run_bench(BenchOptions(
                    url=server.url, calls=4, ramp_s=0.4, script=(Step("say", "hours?"),),
                    auth_token=AUTH_TOKEN, gate=True, spread_s=0.2, progress=False))
                refused = await run_bench(BenchOptions(
                    url=server.url, calls=3, ramp_s=0.1, script=(Step("say", "hours?"),),
                    auth_token="wrong-token", gate=True, progress=False))
                nursery.cancel_scope.cancel()
    assert result["errors"] == 0
    assert result["turns"] == 4
    assert seen["first_turn"] >= seen["all_connected"]
    assert refused["errors"] == 3                         # and the run ended: no gate hang
