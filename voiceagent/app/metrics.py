"""Process metrics: Prometheus (``GET /metrics``) and CloudWatch Embedded Metric Format.

One ``Metrics`` per ``Runtime``, each with its own ``CollectorRegistry`` (nothing global, so
tests can run many runtimes side by side). The actors know nothing of Prometheus; figures
arrive three ways:

* per turn, from the turn summary (``CallServices.on_turn``): turns, application latency,
  model time to first token, relay overhead, tokens, tool latency/errors, model errors;
* per call, from the ``CallReport`` when the call ends (``CallCounters.on_finished``): calls,
  barge-ins, frames rejected by reason, tools that held the event loop; and calls turned
  away at ``/twiml``, by why (``on_call_refused``: no socket, so no report); from
  ``/action``, reconnects and handoffs to a person, by outcome (``on_reconnect``,
  ``on_handoff``);
* at scrape time, from the parts' own ``statistics()`` (``metrics_sampled``): active calls,
  open connections and those accepted at their cap, write-behind queue, Bedrock streams and
  cancel -> upstream-closed times.

With ``METRICS_EMF`` on, every turn also prints one EMF JSON line on stdout (CloudWatch Logs
turns it into metrics), and ``run_emf`` prints ``ActiveCalls``, ``StoreWriteFailures``,
``StoreWriteLag`` (how long the oldest write not yet in the store has waited),
``BadSignatures`` (requests refused for their signature since the last line),
``OpenConnections`` and ``ConnectionsRefused`` (answered 503 at the cap since the last line)
every 10 s: the metrics the SAM template's autoscaling policy and alarms read (namespace
``METRICS_NAMESPACE``, dimension ``ServiceName`` = ``METRICS_SERVICE_NAME``). A turn that
ended on a model error adds ``ModelErrors`` to its line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, TextIO

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from voiceagent.app.metrics_sampled import Sampled

if TYPE_CHECKING:
    from actors.call import CallReport
    from voiceagent.app.open_connections import OpenConnections
    from voiceagent.llm.base import LLM
    from voiceagent.settings import Settings
    from voiceagent.store.base import Store
    from voiceagent.store.write_behind import WriteBehind
    from voiceagent.tools.registry import ToolRegistry

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)
TOOL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# ActiveCalls and the figures with it: the scaling policy needs a point a minute, and the
# "ActiveCalls missing" alarm counts 30 points per task in five minutes to see a silent task
EMF_ACTIVE_CALLS_INTERVAL_S = 10.0


class _Calls(Protocol):
    @property
    def active(self) -> int: ...


class Observed(Protocol):
    """What the metrics read from the process, sampled at scrape time: the runtime passes
    itself, and metrics need nothing else of it (so neither module imports the other)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def calls(self) -> _Calls: ...
    @property
    def draining(self) -> bool: ...
    @property
    def writer(self) -> WriteBehind: ...
    @property
    def store(self) -> Store: ...
    @property
    def llm(self) -> LLM: ...
    @property
    def registry(self) -> ToolRegistry: ...
    @property
    def connections(self) -> OpenConnections | None: ...


class Metrics:
    def __init__(self, runtime: Observed, *, emf_stream: TextIO | None = None) -> None:
        self.runtime = runtime
        settings = runtime.settings
        self.emf_enabled = bool(settings.emf_enabled)
        self.namespace = settings.metrics_namespace_or_default
        self.service_name = settings.metrics_service_name
        self._emf_stream = emf_stream
        self._failed_reported = 0            # write-behind failures already in an EMF line
        self._bad_signatures = 0             # since the last EMF line
        self._refused_reported = 0           # connections refused at the cap, in a line
        self._tool_names = frozenset(runtime.registry.names())
        self.registry = CollectorRegistry()
        r = self.registry
        self.calls = Counter(
            "voiceagent_calls",
            "Relay sockets ended, by how: hangup (the caller), dropped (the socket lost or "
            "closed with an error: the relay session failed, and /action may reconnect the "
            "call on a new socket, see voiceagent_reconnects), end (the agent sent end: a "
            "goodbye or a handoff), error, bad-frames, cancelled (the server stopped under it: a "
            "peer still there past END_GRACE_S); and sockets that never became calls: "
            "rejected, unavailable, evicted, no-setup", ["ended_by"], registry=r)
        self.turns = Counter("voiceagent_turns", "Turns (prompts and keypresses answered)",
                             registry=r)
        self.latency = Histogram(
            "voiceagent_turn_latency_seconds",
            "Application latency: prompt frame received -> first token frame sent",
            buckets=LATENCY_BUCKETS, registry=r)
        self.first_token = Histogram(
            "voiceagent_model_first_token_seconds",
            "Model time to first token (request sent -> first delta), per model round",
            buckets=LATENCY_BUCKETS, registry=r)
        self.overhead = Histogram(
            "voiceagent_relay_overhead_seconds",
            "First model delta received -> handed to the relay writer",
            buckets=OVERHEAD_BUCKETS, registry=r)
        self.tokens = Counter("voiceagent_model_tokens", "Model tokens", ["kind"], registry=r)
        # every turn adds to both: ``labels()`` builds a tuple of str() and takes a lock
        # each time, so the two children are looked up once (a series each from the start)
        self._input_tokens = self.tokens.labels("input")
        self._output_tokens = self.tokens.labels("output")
        self.refused = Counter(
            "voiceagent_calls_refused",
            "Calls turned away at the call webhook, by reason: draining, capacity (MAX_CALLS, "
            "or the write backlog's limits), store (the call's session could not be written), "
            "use_case (missing, or not servable by this process)", ["reason"], registry=r)
        self.reconnects = Counter(
            "voiceagent_reconnects",
            "Reconnects Twilio asked for after a failed relay session, by outcome: resumed, "
            "resumed_partial (the failed socket's last messages may be missing), refused_busy, "
            "refused_limit, refused_unavailable (the store, the session or its use case "
            "could not be had), refused_replay, ended_by_agent (the agent had sent end: "
            "answered with that end's handoff or goodbye)", ["outcome"], registry=r)
        self.bad_signatures = Counter(
            "voiceagent_bad_signatures",
            "Webhooks and relay upgrades refused because their X-Twilio-Signature does not "
            "check: forged, or Twilio's own when the auth token or the public URL is wrong "
            "(then every call fails)", registry=r)
        self.handoffs = Counter(
            "voiceagent_handoffs",
            "Calls the agent handed to a person, as /action answered them, by outcome: "
            "enqueue, dial (to the use case's handoff target), no_target (its handoff mode "
            "is none: the caller heard that no one is available), unavailable (the call's "
            "session or use case could not be had: the caller heard goodbye)", ["outcome"],
            registry=r)
        self.barge_ins = Counter("voiceagent_barge_ins", "Barge-ins (interrupt frames acted on)",
                                 registry=r)
        self.cut_turns = Counter("voiceagent_turns_cut", "Turns cancelled before their end",
                                 ["reason"], registry=r)
        self.tool_latency = Histogram("voiceagent_tool_duration_seconds",
                                      "Tool run time, by tool", ["tool"],
                                      buckets=TOOL_BUCKETS, registry=r)
        # by tool, as each first runs: a registered name or "unknown", so bounded by the
        # registry (the rarer labelled updates, errors and cuts, look theirs up each time)
        self._tool_latency_by_name: dict[str, Histogram] = {}
        self.tool_errors = Counter("voiceagent_tool_errors", "Tool error outcomes, by tool",
                                   ["tool"], registry=r)
        self.tool_stalls = Counter(
            "voiceagent_tool_loop_stalls", "Async tool runs that held the event loop over 100 "
            "ms at once, stalling every call, by tool (at the call's end)", ["tool"], registry=r)
        self.model_errors = Counter("voiceagent_model_errors",
                                    "Model errors that reached a caller, by type", ["type"],
                                    registry=r)
        self.text_frames = Counter("voiceagent_text_frames",
                                   "Text frames sent to the relay (a frame may carry several "
                                   "tokens, see TOKEN_HOLD_MS)", registry=r)
        self.frames_rejected = Counter("voiceagent_frames_rejected",
                                       "Relay frames dropped, by reason", ["reason"], registry=r)
        self.info_other = Counter(
            "voiceagent_relay_info_other",
            "Relay info events of a name this release has no type for (Twilio adds them): "
            "passed on and logged at debug level", registry=r)
        self.loop_lag = Histogram(
            "voiceagent_event_loop_lag_seconds",
            "How late the event loop ran a timer (sampled every 100 ms): latency every call "
            "pays, whatever its cause", buckets=LAG_BUCKETS, registry=r)
        self.loop_lag_longest = 0.0
        r.register(Sampled(runtime))

    # ------------------------------------------------------------------ feeding

    def on_turn(self, summary: Mapping[str, Any]) -> None:
        """One finished turn (the dict ``actors.turn`` logs as "turn done")."""
        if summary.get("kind") == "caller":           # not re-prompts or goodbyes
            self.turns.inc()
        if (latency_ms := summary.get("latency_ms")) is not None:
            self.latency.observe(latency_ms / 1000)
        for first_token_ms in summary.get("first_token_ms_by_round", ()):
            self.first_token.observe(first_token_ms / 1000)
        if (overhead_ms := summary.get("overhead_ms")) is not None:
            self.overhead.observe(overhead_ms / 1000)
        self._input_tokens.inc(summary.get("input_tokens", 0))
        self._output_tokens.inc(summary.get("output_tokens", 0))
        if summary.get("cut_by"):
            self.cut_turns.labels(summary["cut_by"]).inc()
        for tool in summary.get("tools", ()):
            # a label per registered tool only: the name comes from the model, and one it
            # made up (or a caller talked it into) would be a new series for ever
            name = tool["tool"] if tool["tool"] in self._tool_names else "unknown"
            latency = self._tool_latency_by_name.get(name)
            if latency is None:
                latency = self._tool_latency_by_name[name] = self.tool_latency.labels(name)
            latency.observe(tool["duration_ms"] / 1000)
            if tool["status"] != "success":
                self.tool_errors.labels(name).inc()
        if summary.get("model_error"):
            self.model_errors.labels(summary["model_error"]).inc()
        if self.emf_enabled:
            self.emit_turn(summary)

    def on_call_finished(self, report: CallReport) -> None:
        self.calls.labels(report.ended_by).inc()
        self.barge_ins.inc(report.turns.barge_ins)
        self.text_frames.inc(report.writer.tokens)
        for reason, count in report.frames.rejected.items():
            self.frames_rejected.labels(reason).inc(count)
        self.info_other.inc(sum(report.frames.other_info.values()))
        for tool, runs in report.tool_blocking.runs.items():
            self.tool_stalls.labels(tool if tool in self._tool_names else "unknown").inc(runs)

    def on_call_refused(self, reason: str, call_sid: str) -> None:
        """A caller turned away before any socket (the apology, or Twilio's fallback URL):
        invisible to ``voiceagent_calls_total``, which counts sockets, yet what says a
        service is too small or its store down. The EMF line names the call: the log says
        why only for the first refusal of an outage (``log_episodes``), so for the others
        it is the one line a grep for the CallSid Twilio shows finds."""
        self.refused.labels(reason).inc()
        if self.emf_enabled:
            self._emit([{"Name": "CallsRefused", "Unit": "Count"}],
                       {"CallsRefused": 1, "Reason": reason, "CallSid": call_sid})

    def on_bad_signature(self) -> None:
        """Counted, not printed one by one: anyone can send them, at any rate; the 10 s line
        carries how many (``BadSignatures``)."""
        self.bad_signatures.inc()
        self._bad_signatures += 1

    def on_reconnect(self, outcome: str, call_sid: str) -> None:
        self.reconnects.labels(outcome).inc()
        if self.emf_enabled:
            self.emit_reconnect(outcome, call_sid)

    def on_handoff(self, outcome: str, call_sid: str) -> None:
        """``Handoffs`` for each, and ``HandoffsFailed`` for those that reached no one."""
        self.handoffs.labels(outcome).inc()
        if self.emf_enabled:
            metrics = [{"Name": "Handoffs", "Unit": "Count"}]
            if outcome not in ("enqueue", "dial"):
                metrics.append({"Name": "HandoffsFailed", "Unit": "Count"})
            self._emit(metrics, {"Handoffs": 1, "HandoffsFailed": 1, "Outcome": outcome,
                                 "CallSid": call_sid})

    def observe_loop_lag(self, lag_s: float) -> None:
        self.loop_lag.observe(lag_s)
        self.loop_lag_longest = max(self.loop_lag_longest, lag_s)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # ------------------------------------------------------------------ EMF

    def emit_turn(self, summary: Mapping[str, Any]) -> None:
        values = {"TurnLatency": summary.get("latency_ms"),
                  "ModelFirstToken": summary.get("first_token_ms"),
                  "RelayOverhead": summary.get("overhead_ms")}
        present = {k: v for k, v in values.items() if v is not None}
        metrics = [{"Name": name, "Unit": "Milliseconds"} for name in present]
        if summary.get("kind") == "caller":      # as voiceagent_turns: not re-prompts
            metrics.append({"Name": "Turns", "Unit": "Count"})
        if summary.get("barge_in"):
            metrics.append({"Name": "BargeIns", "Unit": "Count"})
        if summary.get("model_error"):
            metrics.append({"Name": "ModelErrors", "Unit": "Count"})
        if not metrics:
            return
        self._emit(metrics, {**present, "Turns": 1, "BargeIns": 1, "ModelErrors": 1,
                             "CallSid": summary.get("call_sid", ""),
                             "Turn": summary.get("turn", 0),
                             "StopReason": summary.get("stop_reason", "")})

    def emit_reconnect(self, outcome: str, call_sid: str) -> None:
        """``Reconnects`` for each, and ``ReconnectsPartial`` or ``ReconnectsRefused`` for
        those: the figures an alarm on calls that lost context or were hung up on needs."""
        metrics = [{"Name": "Reconnects", "Unit": "Count"}]
        if outcome == "resumed_partial":
            metrics.append({"Name": "ReconnectsPartial", "Unit": "Count"})
        elif outcome not in ("resumed", "refused_replay", "ended_by_agent"):
            # a replay hangs up on nobody; an agent's end is answered as it asked
            metrics.append({"Name": "ReconnectsRefused", "Unit": "Count"})
        self._emit(metrics, {"Reconnects": 1, "ReconnectsPartial": 1, "ReconnectsRefused": 1,
                             "Outcome": outcome, "CallSid": call_sid})

    def emit_active_calls(self) -> None:
        """Every figure every interval, zeros included: the alarms tell "no failures" from
        "no reports" by the points' count. ``StoreWriteLag`` is what a store outage (or
        throttling, or a role that may no longer write) shows: the write-behind queue retries
        those writes for ever and drops none, so ``StoreWriteFailures`` stays 0 while no
        transcript is saved. The age of the oldest pending write says that directly; the
        ``store_down`` flag does not (a throttled store fails every other batch, and the
        flag is 0 at each success), nor does the backlog's size (it grows with the calls)."""
        writer = self.runtime.writer.statistics()
        connections = self.runtime.connections
        refused = connections.over_cap["refused"] if connections is not None else 0
        self._emit([{"Name": "ActiveCalls", "Unit": "Count"},
                    {"Name": "StoreWriteFailures", "Unit": "Count"},
                    {"Name": "StoreWriteLag", "Unit": "Seconds"},
                    {"Name": "BadSignatures", "Unit": "Count"},
                    {"Name": "OpenConnections", "Unit": "Count"},
                    {"Name": "ConnectionsRefused", "Unit": "Count"}],
                   {"ActiveCalls": self.runtime.calls.active,
                    "StoreWriteFailures": writer.failed - self._failed_reported,
                    "StoreWriteLag": round(writer.oldest_pending_age_s, 1),
                    "BadSignatures": self._bad_signatures,
                    "OpenConnections": connections.open if connections is not None else 0,
                    "ConnectionsRefused": refused - self._refused_reported})
        self._failed_reported = writer.failed
        self._bad_signatures = 0
        self._refused_reported = refused

    def _emit(self, metrics: list[dict[str, str]], values: Mapping[str, Any]) -> None:
        names = {m["Name"] for m in metrics}
        document = {
            "_aws": {"Timestamp": int(time.time() * 1000),
                     "CloudWatchMetrics": [{"Namespace": self.namespace,
                                            "Dimensions": [["ServiceName"]],
                                            "Metrics": metrics}]},
            "ServiceName": self.service_name,
            **{k: v for k, v in values.items() if k in names or not _is_metric_name(k)}}
        stream = self._emf_stream or sys.stdout
        stream.write(json.dumps(document, separators=(",", ":")) + "\n")
        stream.flush()

    async def run_emf(self, interval_s: float = EMF_ACTIVE_CALLS_INTERVAL_S, *,
                      task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Print ``ActiveCalls`` now and every ``interval_s`` until cancelled."""
        task_status.started()
        while True:
            self.emit_active_calls()
            await trio.sleep(interval_s)


def _is_metric_name(key: str) -> bool:
    return key in {"TurnLatency", "ModelFirstToken", "RelayOverhead", "Turns", "BargeIns",
                   "ModelErrors", "ActiveCalls", "StoreWriteFailures", "StoreWriteLag",
                   "Reconnects", "ReconnectsPartial", "ReconnectsRefused", "CallsRefused",
                   "Handoffs", "HandoffsFailed", "BadSignatures", "OpenConnections",
                   "ConnectionsRefused"}
