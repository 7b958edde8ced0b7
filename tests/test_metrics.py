"""Metrics: /metrics after real calls through the real server, EMF lines, turn summary logs."""

from __future__ import annotations

import gc
import io
import itertools
import json
import logging
import socket
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from tests.dynamodb_support import aws_env, isolate_env
from tests.server_harness import (
    AUTH_TOKEN,
    RunningServer,
    make_settings,
    running_server,
    until_started,
)
from tests.test_write_behind import FakeStore
from voiceagent.app import heap
from voiceagent.app.caller import CallerError, open_call, post_form
from voiceagent.app.metrics import Metrics
from voiceagent.app.runtime import CallCounters
from voiceagent.app.socket_marks import SOCKET_CLOSED_GRACE_S
from voiceagent.logs import JsonFormatter, _ContextFilter
from voiceagent.settings import Settings
from voiceagent.store.dynamodb import open_dynamodb_store
from voiceagent.store.write_behind import WriteBehind
from voiceagent.tools.registry import ToolRegistry, default_registry

METRICS_TOKEN = "test-metrics-token"


def _scrape(url: str) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    request = urllib.request.Request(url + "/metrics",
                                     headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        content_type = response.headers["Content-Type"]
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return content_type, samples


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _capture_emf(runtime: Any) -> io.StringIO:
    """The server's EMF lines go here instead of stdout."""
    assert runtime.metrics is not None
    stream = io.StringIO()
    runtime.metrics._emf_stream = stream
    return stream


async def test_metrics_after_real_calls(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path,
                                                METRICS_TOKEN=METRICS_TOKEN)) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("what are your hours?")
                assert (await call.read_reply()).closed
                await call.say("when can I pick up my order?")
                assert (await call.read_reply()).text.startswith("Your order will be ready")
                await call.hang_up()
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.send_raw("{broken json")
                await call.send_raw('{"type": "mystery"}')
                await call.say("tell me a story")
                for _ in range(3):
                    assert (await call.receive()) is not None
                await call.interrupt()
                await call.say("what are your hours?")
                reply = await call.read_reply()
                while not reply.text.startswith("We are open"):
                    reply = await call.read_reply()   # the cut story's closer comes first
                await call.hang_up()
            await server.runtime.calls.wait_idle()
            reports = list(server.runtime.calls.reports)
            content_type, samples = await trio.to_thread.run_sync(_scrape, server.url)
    assert content_type.startswith("text/plain; version=0.0.4")
    rejected = {}
    for report in reports:
        for reason, count in report.frames.rejected.items():
            rejected[reason] = rejected.get(reason, 0) + count
    assert sum(rejected.values()) == 2
    for reason, count in rejected.items():
        assert _value(samples, "voiceagent_frames_rejected_total", reason=reason) == count
    assert _value(samples, "voiceagent_calls_total", ended_by="hangup") == 2
    assert _value(samples, "voiceagent_active_calls") == 0
    assert _value(samples, "voiceagent_turns_total") == 4
    assert _value(samples, "voiceagent_turn_latency_seconds_count") == 4
    assert _value(samples, "voiceagent_barge_ins_total") == 1
    frames = sum(r.writer.tokens for r in reports)
    assert frames > 0
    assert _value(samples, "voiceagent_text_frames_total") == frames
    assert _value(samples, "voiceagent_turns_cut_total", reason="barge-in") == 1
    assert _value(samples, "voiceagent_tool_duration_seconds_count",
                  tool="CheckRestaurantPickUpTime") == 1
    assert _value(samples, "voiceagent_tool_errors_total",
                  tool="CheckRestaurantPickUpTime") == 0
    assert _value(samples, "voiceagent_write_behind_pending") == 0
    assert _value(samples, "voiceagent_write_behind_failed_total") == 0
    assert _value(samples, "voiceagent_write_behind_written_total") > 0
    assert _value(samples, "voiceagent_write_behind_undecided_total") == 0     # store decided
    latencies = sum(len(r.turns.latencies_s) for r in reports)
    assert latencies == 4
    bound = max(s for r in reports for s in r.turns.latencies_s)
    assert _value(samples, "voiceagent_turn_latency_seconds_sum") <= bound * 4 + 1e-9


@pytest.mark.timeout(60)    # virtual time below; this bounds the real waits
async def test_reconnects_counted_by_outcome(tmp_path: Path,
                                             mock_clock: trio.testing.MockClock) -> None:
    """Twilio's ``/action`` after failed relay sessions: on one call, asked while its socket
    stays connected (refused once the wait for its end runs out: the call is hung up on);
    on another, three for sessions no socket took, one over the limit, and a replay of the
    first. Two of the three find the session unclaimed: they are counted once the renewal's
    waits are over (``reconnect_outcomes``), FLUSH_TIMEOUT_S after.

    The clock moves only when the test moves it (by the waits above, once the server is
    parked in them): on the real clock a loaded machine let a webhook's flush, or the later
    looks, run out of time before the work they wait for, and the count came out different."""
    settings = make_settings(tmp_path, METRICS_TOKEN=METRICS_TOKEN, FLUSH_TIMEOUT_S=1,
                             METRICS_NAMESPACE="TestNamespace", METRICS_SERVICE_NAME="test-service")
    failed = {"SessionStatus": "failed", "CallStatus": "in-progress", "ErrorCode": "64105"}
    async with running_server(settings) as server:
        calls, sessions = server.runtime.calls, server.runtime.sessions
        stream = _capture_emf(server.runtime)
        async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
            busy_sid = call.identity.call_sid
            await until_started(calls, 1)          # its socket has claimed the call
            busy: list[str] = []

            async def ask() -> None:
                busy.append(await post_form(server.url + "/action", {
                    **failed, "CallSid": busy_sid, "SessionId": call.session_id}, AUTH_TOKEN))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask)
                while busy_sid not in sessions._gone:   # the renewal waits for the socket
                    await trio.testing.wait_all_tasks_blocked(cushion=0.001)
                mock_clock.jump(settings.flush_timeout_s)
            await call.hang_up()
        async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
            call_sid = call.identity.call_sid
            await until_started(calls, 2)
            await call.hang_up()
        await calls.wait_idle()
        answers = [await post_form(server.url + "/action", {
            **failed, "CallSid": call_sid, "SessionId": f"VX{n}"}, AUTH_TOKEN)
            for n in range(4)]
        with pytest.raises(CallerError, match="409"):
            await post_form(server.url + "/action", {
                **failed, "CallSid": call_sid, "SessionId": "VX0"}, AUTH_TOKEN)
        mock_clock.jump(SOCKET_CLOSED_GRACE_S)      # the later looks' time, past the deadline
        await server.runtime.reconnects.settled()
        _, samples = await trio.to_thread.run_sync(_scrape, server.url)
    (busy_answer,) = busy
    assert "<Hangup />" in busy_answer
    assert ["<ConversationRelay" in answer for answer in answers] == [True, True, True, False]
    assert _value(samples, "voiceagent_reconnects_total", outcome="refused_busy") == 1
    assert _value(samples, "voiceagent_reconnects_total", outcome="resumed") == 3
    assert _value(samples, "voiceagent_reconnects_total", outcome="refused_limit") == 1
    assert _value(samples, "voiceagent_reconnects_total", outcome="refused_replay") == 1
    assert _value(samples, "voiceagent_reconnects_total", outcome="resumed_partial") == 0
    documents = [_check_emf(line) for line in stream.getvalue().splitlines()]
    reconnects = [d for d in documents if "Reconnects" in d]
    assert [d["Outcome"] for d in reconnects] == [
        "refused_busy", "resumed", "refused_limit", "refused_replay", "resumed", "resumed"]
    assert [d["CallSid"] for d in reconnects] == [busy_sid] + [call_sid] * 5
    assert all(d["Reconnects"] == 1 for d in reconnects)
    assert [d.get("ReconnectsRefused") for d in reconnects] == [1, None, 1, None, None, None]
    assert not any("ReconnectsPartial" in d for d in reconnects)


async def test_action_answers_an_apology_when_the_store_cannot_give_the_session(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store that times out under a mass reconnect: Twilio gets TwiML it can play (a 500
    would make it play its own application error), and the log says why."""
    from voiceagent.errors import StoreError

    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path,
                                                METRICS_TOKEN=METRICS_TOKEN)) as server:
            async def unreadable(pk: str, sk: str) -> dict[str, Any] | None:
                raise StoreError("dynamodb get: no answer within 4 s")

            monkeypatch.setattr(server.runtime.store, "get", unreadable)
            answer = await post_form(server.url + "/action", {
                "CallSid": "CA" + "6" * 32, "SessionId": "VX1", "SessionStatus": "failed",
                "CallStatus": "in-progress", "ErrorCode": "64105"}, AUTH_TOKEN)
            gone = await post_form(server.url + "/action", {      # the caller hung up: no one
                "CallSid": "CA" + "7" * 32, "SessionId": "VX2", "SessionStatus": "failed",
                "CallStatus": "completed", "ErrorCode": "64105"}, AUTH_TOKEN)
            _, samples = await trio.to_thread.run_sync(_scrape, server.url)
    assert "<Hangup />" in answer
    assert "<Say" in answer
    assert "<Hangup />" in gone
    # the caller hung up on is a refused reconnect: an alarm on refusals sees a store outage
    assert _value(samples, "voiceagent_reconnects_total", outcome="refused_unavailable") == 1


def _check_emf(line: str) -> dict[str, Any]:
    """The EMF specification's rules for one log event."""
    document = json.loads(line)
    aws = document["_aws"]
    assert isinstance(aws["Timestamp"], int)
    (directive,) = aws["CloudWatchMetrics"]
    assert directive["Namespace"] == "TestNamespace"
    assert directive["Dimensions"] == [["ServiceName"]]
    assert document["ServiceName"] == "test-service"
    for metric in directive["Metrics"]:
        assert set(metric) <= {"Name", "Unit", "StorageResolution"}
        value = document[metric["Name"]]
        assert isinstance(value, int | float)
        assert not isinstance(value, bool)
    return document


async def test_emf_lines_per_turn_and_active_calls(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, METRICS_NAMESPACE="TestNamespace",
                             METRICS_SERVICE_NAME="test-service")
    assert settings.emf_enabled
    assert not make_settings(tmp_path).emf_enabled
    assert not make_settings(tmp_path, METRICS_NAMESPACE="x", METRICS_EMF="false").emf_enabled
    with trio.fail_after(20):
        async with running_server(settings) as server:
            stream = _capture_emf(server.runtime)
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("what are your hours?")
                assert (await call.read_reply()).closed
                server.runtime.metrics.emit_active_calls()
                await call.hang_up()
            await server.runtime.calls.wait_idle()
    documents = [_check_emf(line) for line in stream.getvalue().splitlines()]
    turns = [d for d in documents if "Turns" in d]
    active = [d for d in documents if "ActiveCalls" in d]
    assert len(turns) == 1
    assert turns[0]["Turns"] == 1
    assert turns[0]["TurnLatency"] > 0
    assert turns[0]["CallSid"].startswith("CA")
    assert {m["Name"] for m in turns[0]["_aws"]["CloudWatchMetrics"][0]["Metrics"]} == {
        "TurnLatency", "ModelFirstToken", "RelayOverhead", "Turns"}
    assert active == [{**active[0], "ActiveCalls": 1}]


class _TimedLines(io.StringIO):
    """Notes when each line ends; ``third`` is set at the third."""

    def __init__(self) -> None:
        super().__init__()
        self.ended_at: list[float] = []
        self.third = trio.Event()

    def write(self, text: str, /) -> int:
        for _ in range(text.count("\n")):
            self.ended_at.append(trio.current_time())
        if len(self.ended_at) >= 3:
            self.third.set()
        return super().write(text)


async def test_active_calls_emitted_periodically(tmp_path: Path) -> None:
    """Three lines, each at least the interval after the one before (trio.sleep never
    returns early, so the lower bound holds under any load; no upper bound is asserted)."""
    settings = make_settings(tmp_path, METRICS_EMF="true", METRICS_NAMESPACE="TestNamespace",
                             METRICS_SERVICE_NAME="test-service")
    with trio.fail_after(10):
        async with running_server(settings) as server:
            stream = _TimedLines()
            metrics = Metrics(server.runtime, emf_stream=stream)
            async with trio.open_nursery() as nursery:
                await nursery.start(metrics.run_emf, 0.05)
                await stream.third.wait()
                nursery.cancel_scope.cancel()
    documents = [_check_emf(line) for line in stream.getvalue().splitlines()]
    assert len(documents) == 3
    assert all(b - a >= 0.05 for a, b in itertools.pairwise(stream.ended_at))
    assert all(d["ActiveCalls"] == 0 for d in documents)
    assert all(d["StoreWriteFailures"] == 0 for d in documents)     # zeros are points too


@dataclass
class _Observed:
    """The things Metrics reads, around a write-behind queue over a refusing store."""
    settings: Settings
    writer: WriteBehind
    calls: CallCounters = field(default_factory=CallCounters)
    draining: bool = False
    llm: Any = None
    registry: ToolRegistry = field(default_factory=default_registry)
    connections: None = None                # no server around it
    store: Any = None                       # none of DynamoDB's read counts


async def test_emf_counts_write_failures_once_and_model_errors_per_turn(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    store = FakeStore()
    store.refuse.add(("CA1", "chat::0001"))
    writer = WriteBehind(store)
    observed = _Observed(make_settings(tmp_path, METRICS_NAMESPACE="TestNamespace",
                                       METRICS_SERVICE_NAME="test-service"), writer)
    stream = io.StringIO()
    metrics = Metrics(observed, emf_stream=stream)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            metrics.emit_active_calls()
            for index in range(3):
                writer.submit({"pk": "CA1", "sk": f"chat::{index:04d}"}, call_sid="CA1")
            assert await writer.flush("CA1", timeout_s=5)
            metrics.emit_active_calls()
            metrics.emit_active_calls()
            nursery.cancel_scope.cancel(reason="test over")
    metrics.on_turn({"kind": "caller", "latency_ms": 900, "model_error": "throttled",
                     "call_sid": "CA1", "turn": 2})
    metrics.on_turn({"kind": "caller", "latency_ms": 400, "call_sid": "CA1", "turn": 3})
    documents = [_check_emf(line) for line in stream.getvalue().splitlines()]
    assert [d["StoreWriteFailures"] for d in documents[:3]] == [0, 1, 0]
    failed_turn, good_turn = documents[3:]
    assert {m["Name"] for m in failed_turn["_aws"]["CloudWatchMetrics"][0]["Metrics"]} == {
        "TurnLatency", "Turns", "ModelErrors"}
    assert failed_turn["ModelErrors"] == 1
    assert "ModelErrors" not in good_turn



@pytest.mark.timeout(60)
async def test_emf_store_write_lag_grows_while_the_store_refuses_connections(
        tmp_path: Path, autojump_clock: trio.testing.MockClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """DynamoDB down (a port bound, never listening: every connection refused) while a call
    writes: the queue retries and drops nothing, so ``StoreWriteFailures`` stays 0 and only
    ``StoreWriteLag`` says the call's items are not being saved: on each 10 s line, how long
    the first of them has waited."""
    with socket.socket() as refusing:
        refusing.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{refusing.getsockname()[1]}"
        isolate_env(monkeypatch, aws_env(endpoint, tmp_path))
        settings = Settings.from_env(STORE="dynamodb", TABLE_NAME="storeDown",
                                     VALIDATE_SIGNATURES=False,
                                     METRICS_NAMESPACE="TestNamespace",
                                     METRICS_SERVICE_NAME="test-service")
        stream = io.StringIO()
        # opened before the virtual deadline: making the client is a thread's real time, in
        # which the clock jumps (the test's time limit is the timeout mark's)
        async with open_dynamodb_store(settings, limiter=trio.CapacityLimiter(4),
                                       check_table=False) as store, trio.open_nursery(
                                           ) as nursery:
            writer = WriteBehind(store, jitter=lambda: 1.0)
            metrics = Metrics(_Observed(settings, writer), emf_stream=stream)
            with trio.fail_after(300):
                await nursery.start(writer.run)
                metrics.emit_active_calls()                 # nothing pending yet
                writer.submit({"pk": "CA1", "sk": "chat::0001"}, call_sid="CA1")
                await trio.sleep(5)
                writer.submit({"pk": "CA1", "sk": "chat::0002"}, call_sid="CA1")
                for _ in range(12):                         # two minutes of lines
                    await trio.sleep(10)
                    metrics.emit_active_calls()
                down = writer.statistics()
            nursery.cancel_scope.cancel(reason="test over")
    documents = [_check_emf(line) for line in stream.getvalue().splitlines()]
    assert (down.store_down, down.pending, down.failed) == (True, 2, 0)
    assert [d["StoreWriteFailures"] for d in documents] == [0] * 13
    lags = [d["StoreWriteLag"] for d in documents]
    assert lags[0] == 0
    # the oldest item's age (submitted at 0), not the newest's (at 5)
    assert lags[1:] == [pytest.approx(15 + 10 * n, abs=0.2) for n in range(12)]
    assert {"Name": "StoreWriteLag", "Unit": "Seconds"} in documents[0]["_aws"][
        "CloudWatchMetrics"][0]["Metrics"]


async def test_emf_store_write_lag_back_to_zero_once_the_store_takes_the_writes(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """The alarm clears when the backlog is written, not when the first write lands: with
    items still queued, the lag is the oldest one's."""
    store = FakeStore()
    store.down = True
    writer = WriteBehind(store, jitter=lambda: 1.0)
    observed = _Observed(make_settings(tmp_path, METRICS_NAMESPACE="TestNamespace",
                                       METRICS_SERVICE_NAME="test-service"), writer)
    stream = io.StringIO()
    metrics = Metrics(observed, emf_stream=stream)
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            writer.submit({"pk": "CA1", "sk": "chat::0001"}, call_sid="CA1")
            await trio.sleep(90)
            metrics.emit_active_calls()
            store.down = False
            assert await writer.flush(timeout_s=10)
            metrics.emit_active_calls()
            nursery.cancel_scope.cancel(reason="test over")
    documents = [_check_emf(line) for line in stream.getvalue().splitlines()]
    assert [d["StoreWriteLag"] for d in documents] == [90, 0]
    assert store.written == [("CA1", "chat::0001")]


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.addFilter(_ContextFilter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def captured() -> Any:
    handler = _Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


async def test_turn_summary_lines_carry_call_sid_and_turn(tmp_path: Path,
                                                          captured: _Capture) -> None:
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path,
                                                METRICS_TOKEN=METRICS_TOKEN)) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                call_sid = call.identity.call_sid
                await call.say("what are your hours?")
                assert (await call.read_reply()).closed
                await call.say("tell me a story")
                assert (await call.receive()) is not None
                await call.interrupt()
                await call.hang_up()
            await server.runtime.calls.wait_idle()
    entries = [json.loads(line) for line in captured.lines]
    ours = [e for e in entries if e["call_sid"] == call_sid]
    call_lines = [e for e in ours if e["logger"].startswith("actors.")]
    assert any(e["event"] == "call ended" for e in call_lines)
    # every line an actor wrote for this call names it; lines inside a turn name the turn
    actor_lines = [e for e in entries if e["logger"].startswith("actors.")
                   and e["event"] != "message before setup dropped"]
    assert all(e["call_sid"] == call_sid for e in actor_lines)
    summaries = [e for e in ours if e["event"] == "turn done"]
    assert [s["turn"] for s in summaries] == [1, 2]
    first, second = summaries
    assert first["latency_ms"] > 0
    assert first["first_token_ms"] is not None
    assert first["overhead_ms"] is not None
    assert first["stop_reason"] == "end_turn"
    assert first["barge_in"] is False
    assert first["rounds"] == 1
    assert {"input_tokens", "output_tokens", "tools", "model_error"} <= set(first)
    assert second["barge_in"] is True
    assert second["stop_reason"] == "cancelled"


def test_a_partial_reconnect_is_its_own_emf_figure() -> None:
    """The one an alarm wants: a call resumed without the failed socket's last messages."""
    from types import SimpleNamespace

    settings = make_settings(Path("/nonexistent"), METRICS_NAMESPACE="TestNamespace",
                             METRICS_SERVICE_NAME="test-service")
    stream = io.StringIO()
    metrics = Metrics(cast(Any, SimpleNamespace(settings=settings, registry=default_registry())),
                      emf_stream=stream)
    metrics.on_reconnect("resumed_partial", "CA" + "5" * 32)
    (document,) = [_check_emf(line) for line in stream.getvalue().splitlines()]
    assert {m["Name"] for m in document["_aws"]["CloudWatchMetrics"][0]["Metrics"]} == {
        "Reconnects", "ReconnectsPartial"}
    assert (document["ReconnectsPartial"], document["Outcome"]) == (1, "resumed_partial")
    assert "ReconnectsRefused" not in document


def test_per_turn_children_are_bound_once_and_stay_bounded() -> None:
    """``on_turn`` keeps the children it updates every turn instead of asking ``labels()``
    each time: the token series exist (at 0) before any turn, and the tool latency children
    it keeps are the registered names and "unknown" only, whatever names the model made up."""
    registry = default_registry()
    writer = WriteBehind(FakeStore())
    metrics = Metrics(cast(Any, _Observed(make_settings(Path("/nonexistent")), writer,
                                          registry=registry)))
    value = metrics.registry.get_sample_value
    assert value("voiceagent_model_tokens_total", {"kind": "input"}) == 0
    assert value("voiceagent_model_tokens_total", {"kind": "output"}) == 0
    real = sorted(registry.names())[0]
    for n in range(20):
        metrics.on_turn({"kind": "caller", "input_tokens": 10, "output_tokens": n,
                         "tools": [{"tool": f"Invented_{n}", "duration_ms": 5,
                                    "status": "success"},
                                   {"tool": real, "duration_ms": 5, "status": "success"}]})
    assert set(metrics._tool_latency_by_name) == {real, "unknown"}
    assert value("voiceagent_model_tokens_total", {"kind": "input"}) == 200
    assert value("voiceagent_model_tokens_total", {"kind": "output"}) == sum(range(20))
    assert value("voiceagent_tool_duration_seconds_count", {"tool": "unknown"}) == 20
    assert value("voiceagent_tool_duration_seconds_count", {"tool": real}) == 20


def test_bedrock_and_write_behind_figures_sampled_at_scrape() -> None:
    from types import SimpleNamespace

    from voiceagent.llm.bedrock import BedrockStatistics
    from voiceagent.store.dynamodb_calls import ReadCounts
    from voiceagent.store.write_behind import WriteBehindStatistics

    bedrock = BedrockStatistics(
        streams_opened=7, streams_open=1, streams_completed=5, retries=2, cancellations=3,
        errors_by_code={"ThrottlingException": 2}, attempts_open=1,
        cancel_to_closed_s=(0.001, 0.002, 0.003), cancel_to_exit_s=(),
        first_token_s=(0.3,))
    writer = WriteBehindStatistics(pending=4, written=10, failed=1, retries=2,
                                   oldest_pending_age_s=1.5, store_down=False,
                                   pending_bytes=5_000)
    settings = make_settings(Path("/nonexistent"))
    runtime: Any = SimpleNamespace(
        settings=settings, calls=SimpleNamespace(active=2), draining=False,
        writer=SimpleNamespace(statistics=lambda: writer),
        llm=SimpleNamespace(statistics=lambda: bedrock), registry=default_registry(),
        connections=None, store=SimpleNamespace(read_counts=ReadCounts(retried=3, failed=1)))
    text = Metrics(runtime).exposition().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert _value(samples, "voiceagent_active_calls") == 2
    assert _value(samples, "voiceagent_write_behind_pending") == 4
    assert _value(samples, "voiceagent_write_behind_pending_bytes") == 5_000
    assert _value(samples, "voiceagent_write_behind_lag_seconds") == 1.5
    assert _value(samples, "voiceagent_write_behind_failed_total") == 1
    assert _value(samples, "voiceagent_bedrock_cancellations_total") == 3
    assert _value(samples, "voiceagent_bedrock_errors_total", code="ThrottlingException") == 2
    assert _value(samples, "voiceagent_bedrock_cancel_to_closed_seconds",
                  quantile="0.5") == pytest.approx(0.002)
    assert _value(samples, "voiceagent_bedrock_cancel_to_closed_seconds", quantile="1") == 0.003
    assert _value(samples, "voiceagent_bedrock_first_token_seconds", quantile="0.99") == 0.3
    assert _value(samples, "voiceagent_store_read_retries_total") == 3
    assert _value(samples, "voiceagent_store_read_failures_total") == 1


async def test_model_and_tool_errors_by_kind(tmp_path: Path) -> None:
    from tests.fakes import FakeLLM, tool_use, words
    from voiceagent.errors import ModelThrottled

    llm = FakeLLM([[0.001, ModelThrottled("ThrottlingException", "slow down")],
                   tool_use("t1", "NoSuchTool"), words("ok then", 0.001, 0.001)])
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path, METRICS_TOKEN=METRICS_TOKEN),
                                  llm=llm) as server:
            async with open_call(server.url, auth_token=AUTH_TOKEN) as call:
                await call.say("hello")
                assert (await call.read_reply()).text.startswith("Sorry")
                await call.say("hello again")
                assert (await call.read_reply()).text == "ok then"
                await call.hang_up()
            await server.runtime.calls.wait_idle()
            _, samples = await trio.to_thread.run_sync(_scrape, server.url)
    assert _value(samples, "voiceagent_model_errors_total", type="ModelThrottled") == 1
    assert _value(samples, "voiceagent_tool_errors_total", tool="unknown") == 1
    assert _value(samples, "voiceagent_tool_duration_seconds_count", tool="unknown") == 1
    assert _value(samples, "voiceagent_turns_total") == 2
    assert _value(samples, "voiceagent_turn_latency_seconds_count") == 2


def _lag_count(server: RunningServer) -> float:
    """The loop-lag samples the server's sampler has taken so far."""
    return server.runtime.metrics.registry.get_sample_value(
        "voiceagent_event_loop_lag_seconds_count") or 0


async def test_gc_pauses_and_loop_lag_are_exposed(tmp_path: Path) -> None:
    """What every call waits for beyond its own work: collections by generation (once the
    process records them, as ``voiceagent serve`` does) and the event loop's lag."""
    heap.record_gc_pauses()
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path,
                                                METRICS_TOKEN=METRICS_TOKEN)) as server:
            while _lag_count(server) < 2:   # noqa: ASYNC110 - a couple of samples; no event
                await trio.sleep(heap.LAG_INTERVAL_S)
            gc.collect(1)
            _, samples = await trio.to_thread.run_sync(_scrape, server.url)
    assert _value(samples, "voiceagent_gc_pause_seconds_count", generation="1") >= 1
    assert _value(samples, "voiceagent_gc_pause_seconds_sum", generation="1") > 0
    assert _value(samples, "voiceagent_gc_pause_seconds_bucket", generation="1",
                  le="+Inf") == _value(samples, "voiceagent_gc_pause_seconds_count",
                                       generation="1")
    assert _value(samples, "voiceagent_event_loop_lag_seconds_count") >= 2
