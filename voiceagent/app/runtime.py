"""Everything one server process shares across calls, opened and closed in one place.

Store, model, tool registry, write-behind queue, catalog and sessions are created here once;
calls get them through ``CallServices``. Nothing lives at module level, so tests can open as
many runtimes as they like, each with its own fakes passed in.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

import voiceagent.store.records as records
from actors.call import CallServices
from actors.end_signal import EndSignal
from voiceagent.app import heap
from voiceagent.app.call_counters import CallCounters
from voiceagent.app.memory_budget import backlog_budget_bytes
from voiceagent.app.metrics import Metrics
from voiceagent.app.open_backends import open_llm, open_store, shared_aws_session
from voiceagent.app.reconnect_outcomes import ReconnectOutcomes
from voiceagent.app.relay_answers import RelayAnswers
from voiceagent.app.sessions import Sessions
from voiceagent.app.stop_budget import Stop, flushes_end, log_dropped
from voiceagent.app.task_protection import AgentEndpoint, Policy, hold_while_busy
from voiceagent.catalog import Catalog, read_config_dir, write_config
from voiceagent.llm.base import LLM
from voiceagent.log_episodes import Episode
from voiceagent.settings import Settings
from voiceagent.store.base import Store
from voiceagent.store.write_behind import WriteBehind
from voiceagent.tools.plugins import build_registry
from voiceagent.tools.registry import ToolRegistry

if TYPE_CHECKING:
    from voiceagent.app.open_connections import OpenConnections

log = logging.getLogger(__name__)

SIGNATURE_CHECK = (
    "if Twilio sent it, every call fails here (Twilio's debugger shows HTTP 403 for its "
    "CallSid): TWILIO_AUTH_TOKEN must be the account's current auth token (rotated?), and "
    "checked_url the very URL the number's webhook (or WS_URL) names, scheme and host "
    "included (PUBLIC_URL, or the proxy's forwarded headers with TRUST_PROXY_HEADERS)")

WRITE_LINGER_S = 0.05     # write-behind: a batch waits this long for company (see WriteBehind)


@dataclass
class Runtime:
    settings: Settings
    store: Store
    llm: LLM
    registry: ToolRegistry
    writer: WriteBehind
    catalog: Catalog
    sessions: Sessions
    relay_answers: RelayAnswers
    reconnects: ReconnectOutcomes               # counted once known (web.py's /action)
    calls: CallCounters = field(default_factory=CallCounters)
    draining: bool = False                       # /health fails, /twiml refuses new calls
    stop: Stop | None = None                     # from the signal on: the stop's one budget
    end_calls: EndSignal = field(default_factory=EndSignal)     # live calls end politely
    # relay sockets accepted whose setup is not resolved yet, oldest first (web.py)
    sockets_waiting: dict[Any, None] = field(default_factory=dict)
    metrics: Metrics | None = None
    # the cap on open connections, while a server serves this runtime (server.serve): its
    # figures are read at scrape time (metrics_sampled)
    connections: OpenConnections | None = None
    backlog_bytes_max: int = 0                   # see memory_budget; set in __post_init__
    # requests refused before any work (a bad signature, a body too large or too slow):
    # anyone can send them, at any rate, so the log counts them (web.py, server.py)
    edge_refusals: Episode = field(default_factory=lambda: Episode(
        logging.getLogger("voiceagent.app.web"), lasts="requests still refused at the edge",
        ended="requests no longer refused at the edge"))
    # calls turned away at /twiml (the store down, at MAX_CALLS, draining): each one is
    # counted in the metrics; the log says why once, then how many (web.py)
    call_refusals: Episode = field(default_factory=lambda: Episode(
        logging.getLogger("voiceagent.app.web"), lasts="calls still refused",
        ended="calls taken again"))
    # the write-behind drainer's scope: at a stop, its attempts end with the stop's flushes
    drainer: trio.CancelScope = field(default_factory=trio.CancelScope)

    def __post_init__(self) -> None:
        if not self.backlog_bytes_max:
            self.backlog_bytes_max = backlog_budget_bytes(self.settings)

    def call_services(self) -> CallServices:
        settings = self.settings
        return CallServices(
            llm=self.llm, store=self.store, registry=self.registry, persist=self._persist,
            flush=self._flush, settings=settings, max_tool_rounds=settings.max_tool_rounds,
            max_frame_bytes=settings.max_frame_bytes, setup_timeout_s=settings.setup_timeout_s,
            flush_timeout_s=settings.flush_timeout_s,
            max_call_duration_s=settings.max_call_duration_s,
            max_history_messages=settings.max_history_messages,
            max_history_chars=settings.max_history_chars,
            max_prompt_chars=settings.max_prompt_chars,
            idle_reprompt_s=settings.idle_reprompt_s or None,
            max_reprompts=settings.max_reprompts, end_calls=self.end_calls,
            log_content=settings.log_content,
            token_hold_s=settings.token_hold_ms / 1000,
            on_turn=self.metrics.on_turn if self.metrics is not None else None,
            relay_ended=self.relay_answers.agent_ended)

    def begin_stop(self) -> Stop:
        """The stop starts now (the drain): its budget bounds every flush from here on,
        and the drainer's write in flight, which would otherwise run its read timeout."""
        if self.stop is None:
            self.stop = Stop.starting_now(self.settings)
            self.drainer.deadline = self.stop.flushes_end
        self.draining = True
        return self.stop

    async def flush_writes(self, call_sid: str | None = None, *, timeout_s: float) -> bool:
        """``WriteBehind.flush`` within what is left of a stop's budget: whether the writes
        were all taken. A flush the budget cuts short ends with it, without a "store flush
        timed out" line of its own: the stop's time is spent, not the store's, and the
        dropped-writes lines say what was lost."""
        return await self.writer.flush(call_sid, timeout_s=timeout_s,
                                       until=flushes_end(self.stop))

    @property
    def at_capacity(self) -> bool:
        """Sockets whose calls are being looked up (at the first read) are calls to come."""
        return (self.calls.active + self.calls.claims >= self.settings.max_calls
                or self.writer.pending >= self.settings.write_backlog_max
                or self.writer.pending_bytes >= self.backlog_bytes_max)

    def signature_refused(self, kind: str, event: str, *, checked_url: str,
                          **fields: Any) -> None:
        """A request whose X-Twilio-Signature does not check. Anyone can send one, so the
        log has the first of an episode in full and counts the rest; but when it is Twilio's
        (a rotated auth token, PUBLIC_URL or WS_URL not the address Twilio calls) every call
        fails before any other figure moves, so each is counted for the alarms too
        (``BadSignatures``), and the line says what to compare."""
        self.edge_refusals.note(kind, event, checked_url=checked_url[:300],
                                what_to_check=SIGNATURE_CHECK, **fields)
        if self.metrics is not None:
            self.metrics.on_bad_signature()

    def refuse_call(self, reason: str, call_sid: str) -> bool:
        """Count a call turned away at ``/twiml`` (``Metrics.on_call_refused`` says the
        reasons); whether it goes to Twilio's fallback URL (OVER_CAPACITY=503) rather than
        hearing the apology: an overload may be served elsewhere, a use case this process
        cannot serve gets the apology whatever the setting."""
        if self.metrics is not None:
            self.metrics.on_call_refused(reason, call_sid)
        return reason != "use_case" and self.settings.over_capacity == "503"

    def _persist(self, call_sid: str, index: int, message: dict[str, Any],
                 meta: dict[str, Any]) -> None:
        at_ms = int(meta.get("at_ms", 0))
        item = records.chat_item(call_sid, at_ms, index, message, meta,
                                 self.settings.session_ttl_s)
        self.writer.submit(item, call_sid=call_sid)

    def persist_stuck_calls(self) -> int:
        """Hand the histories of calls that did not end in time to the write-behind queue
        (a peer that stopped reading can hold a call past every deadline)."""
        count = 0
        for report in self.calls.live:
            if report.history is not None:
                for index, message, meta in report.history.take_sealed(final=True):
                    self._persist(report.call_sid, index, message, meta)
                    count += 1
        return count

    async def _flush(self, call_sid: str, timeout_s: float) -> bool:
        """The call's socket handed over its last messages: mark its end behind them (a
        reconnect on another process waits for the mark), then wait for the writes, within
        what is left of a stop's budget."""
        with trio.move_on_at(flushes_end(self.stop)):
            await self.sessions.socket_ended(call_sid)
            return await self.flush_writes(call_sid, timeout_s=timeout_s)
        return False


@asynccontextmanager
async def open_runtime(settings: Settings, *, llm: LLM | None = None,
                       store: Store | None = None,
                       registry: ToolRegistry | None = None) -> AsyncIterator[Runtime]:
    """Open the process's parts; on exit, flush pending writes (bounded) and close them.

    Without ``registry``, the tools are built from the settings (built-ins, entry points,
    TOOLS), and with the embedded store config/ is read and checked against them, both before
    anything is opened: a bad tool module or use case raises ``ConfigError`` first."""
    registry = registry or build_registry(settings)
    config = (read_config_dir(settings.resolved_config_dir, registry)
              if settings.store == "sqlite" else None)
    log.info("tools registered", extra={"tools": len(registry.names()),
                                        "from": sorted(set(registry.origins.values()))})
    async with AsyncExitStack() as stack:
        aws = shared_aws_session(settings, store_given=store is not None,
                                 llm_given=llm is not None)
        if store is None:
            store = await stack.enter_async_context(open_store(settings, aws=aws))
        if config is not None:
            changes = await write_config(store, config)
            log.info("config loaded into the embedded store",
                     extra={"changed": sum(v != "unchanged" for v in changes.values())})
        catalog = Catalog(store, registry)
        if llm is None:
            llm = await stack.enter_async_context(open_llm(settings, catalog, aws=aws))
        if aws is not None:
            aws.release()           # both clients exist: botocore's data files can go
        writer = WriteBehind(store, linger_s=WRITE_LINGER_S)
        runtime = Runtime(settings=settings, store=store, llm=llm, registry=registry,
                          writer=writer, catalog=catalog,
                          sessions=Sessions(settings=settings, store=store, catalog=catalog,
                                            writer=writer),
                          relay_answers=RelayAnswers(settings=settings, store=store,
                                                     writer=writer),
                          reconnects=ReconnectOutcomes(store))
        runtime.metrics = Metrics(runtime)
        runtime.calls.on_finished = runtime.metrics.on_call_finished
        # The drainer outlives a cancel of what embeds the runtime until the flush below:
        # cancelled with the rest, every shielded flush waited FLUSH_TIMEOUT_S for writes
        # nobody would make (a healthy store, the transcripts lost).
        draining = runtime.drainer
        draining.shield = True
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(_drain_until_closed, writer, draining)
                await _start_services(nursery, runtime)
                try:
                    yield runtime
                finally:
                    with trio.CancelScope(shield=True):     # bounded by itself
                        await runtime.flush_writes(timeout_s=settings.flush_timeout_s)
                    draining.cancel(reason="runtime closing")
                    nursery.cancel_scope.cancel(reason="runtime closing")
                    runtime.edge_refusals.close()   # the counts since their last summary lines
                    runtime.call_refusals.close()
                    runtime.sessions.close()
                    catalog.close()
        finally:        # the drainer has ended: what is still queued is lost with the process
            log_dropped(writer.unwritten(), why="the store did not take them in time"
                        if runtime.stop is not None else "the runtime closed before them")


async def _start_services(nursery: trio.Nursery, runtime: Runtime) -> None:
    """The runtime's own tasks, besides the drainer: they end with it."""
    settings, metrics = runtime.settings, runtime.metrics
    assert metrics is not None
    await nursery.start(runtime.sessions.run)
    await nursery.start(runtime.reconnects.run)
    sweep = getattr(runtime.store, "sweep_expired", None)   # SQLite: DynamoDB's TTL does it
    if sweep is not None:
        await nursery.start(sweep)
    await nursery.start(partial(heap.watch_loop_lag, metrics.observe_loop_lag))
    if metrics.emf_enabled:
        await nursery.start(metrics.run_emf)
    if settings.task_protection == "auto" and settings.ecs_agent_uri:
        await nursery.start(partial(
            hold_while_busy, runtime.calls, runtime.writer,
            AgentEndpoint(settings.ecs_agent_uri),
            Policy(idle_release_s=settings.task_protection_idle_s,
                   max_hold_minutes=settings.task_protection_max_minutes,
                   shared=settings.reuse_port)))


async def _drain_until_closed(writer: WriteBehind, scope: trio.CancelScope, *,
                              task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                              ) -> None:
    """``writer``'s drainer, cancelled by ``scope`` alone (see ``open_runtime``)."""
    with scope:
        await writer.run(task_status=task_status)
