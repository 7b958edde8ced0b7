"""One call = one nursery: the supervisor that wires the actors and owns teardown.

    relay_reader -> interrupt_handler -> llm_streamer -> tool_executor
                                              |               |
                                              v               v
                                         relay_writer  <------+

The tool executor has no task of its own: each batch the streamer submits runs as a task in
this nursery (``tool_executor.ToolExecutor``).

The reader returning (the caller hung up, Twilio closed after our ``end``, or we gave up
waiting for that: ``END_CLOSE_S``) starts an orderly cascade: each actor closes its channel
ends and the next one finishes. A deadline bounds the cascade; only a side-effect tool,
shielded, may run to its own timeout. Whatever happens, sealed history is handed to the
write-behind queue and flushed within a bound.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from actors import interrupt_handler, llm_streamer, relay_reader, relay_writer, tool_executor
from actors.channel import Channel
from actors.context import CallContext, TurnStats
from actors.end_signal import EndSignal
from actors.history import History
from actors.messages import End, Inbound, Outgoing, Setup, TurnCommand
from actors.relay_control import RelayControl
from actors.relay_reader import FrameStats
from actors.relay_socket import RelaySocket
from actors.relay_writer import WriterStats
from actors.session_language import SessionLanguage
from actors.tool_steps import ToolBlocking
from voiceagent import handoff_language
from voiceagent.errors import RelayBroken
from voiceagent.llm.base import LLM, Message
from voiceagent.logs import call_sid_var
from voiceagent.relay.protocol import Rejected, parse_frame
from voiceagent.settings import Settings
from voiceagent.store.base import Store
from voiceagent.tools.registry import ToolRegistry
from voiceagent.usecases import UseCase

log = logging.getLogger(__name__)

TEARDOWN_S = 2.0                 # hang-up -> every actor finished (side-effect tools aside)
# `end` sent -> we close the socket ourselves if Twilio has not (it does within ~90 ms): a
# peer that is gone without a FIN (a dead NAT, a crashed proxy) would otherwise hold the
# call, its MAX_CALLS slot and its session until TCP gives up, ~15 minutes later
END_CLOSE_S = 10.0
MAX_FRAMES_BEFORE_SETUP = 20
INBOUND_BUFFER = 16              # absorbs a burst of frames while a barge-in is processed
FLUSH_MARGIN_S = 1.0             # past FLUSH_TIMEOUT_S: the flush times itself out first


class CallRejected(Exception):
    """The socket's setup does not belong to a call we prepared (bad token, unknown call)."""


class CallUnavailable(Exception):
    """The call may well be ours, but loading it failed (the store throttled or down, its
    use case gone): closed 1011, a failure of ours, which Twilio reports to ``action``,
    whose answer may reconnect the call once the store is back."""


@dataclass(frozen=True)
class CallPlan:
    """What the edges prepared for this call during ``/twiml``, or rebuilt at connect."""

    call_sid: str
    use_case: UseCase
    system_prompt: str
    model_id: str
    greeting: str | None = None
    caller: str = ""
    called: str = ""
    history: tuple[Message, ...] = ()       # a resumed conversation (reconnect)
    history_meta: tuple[dict[str, Any], ...] = ()   # its stored facts, at_ms included
    history_after_ms: int = 0   # the last chat item stored, marks too: stamp new ones after
    generation: int = 0         # the call's relay sessions before this one (reconnects)
    started_at: float = 0.0     # epoch seconds the call was prepared at (0: not known)


@dataclass
class CallServices:
    """Process-wide parts every call uses."""

    llm: LLM
    store: Store
    registry: ToolRegistry
    persist: Callable[[str, int, Message, dict[str, Any]], None]   # write-behind, never awaits
    flush: Callable[[str, float], Awaitable[bool]]
    settings: Settings | None = None
    max_tool_rounds: int = 4
    max_frame_bytes: int = 64 * 1024
    setup_timeout_s: float = 10.0
    flush_timeout_s: float = 5.0
    max_call_duration_s: float = 4 * 3600.0      # Twilio's own limit; set lower in settings
    max_history_messages: int = 200
    max_history_chars: int | None = 100_000
    max_prompt_chars: int = 2000
    idle_reprompt_s: float | None = None
    max_reprompts: int = 2
    end_calls: EndSignal = field(default_factory=EndSignal)   # set: end calls politely
    log_content: bool = False
    token_hold_s: float = 0.0
    on_turn: Callable[[dict[str, Any]], None] | None = None   # each turn's summary (metrics)
    # the agent ended the call (`end` taken, with its handoff data): marked in the store at
    # once, so that a relay session failing after it is answered by that end, not resumed
    relay_ended: Callable[[str, str | None], None] | None = None


# eq=False: a report is one call's, found by identity; the runtime takes a finished call's
# out of its list of live ones, and compared every field of each before it (at 2000 calls)
@dataclass(eq=False)
class CallReport:
    call_sid: str = ""
    via: str = "twilio"              # or "phone-page": the browser phone's socket
    ended_by: str = "hangup"
    frames: FrameStats = field(default_factory=FrameStats)
    writer: WriterStats = field(default_factory=WriterStats)
    turns: TurnStats = field(default_factory=TurnStats)
    tool_blocking: ToolBlocking = field(default_factory=ToolBlocking)   # tools that held the loop
    flushed: bool = True
    history: History | None = None


Resolve = Callable[[Setup], Awaitable[CallPlan]]


async def run_call(socket: RelaySocket, *, resolve: Resolve, services: CallServices,
                   report: CallReport | None = None) -> CallReport:
    """Serve one ConversationRelay session until it ends. Never raises for the caller's or
    Twilio's behaviour; a bug in an actor ends this call (1011) and no other."""
    report = report if report is not None else CallReport()
    opened_at = trio.current_time()
    setup = await _wait_setup(socket, services, report.frames)
    if setup is None:
        report.ended_by = "no-setup"
        await socket.close(1008, "setup expected")
        return report
    report.call_sid = setup.call_sid
    call_sid_var.set(setup.call_sid)
    if setup.problem is not None:       # a descriptive field, taken as absent: once a call
        report.frames.count_rejected("setup_field", "setup field unusable, taken as absent",
                                     problem=setup.problem)
    try:
        plan = await resolve(setup)
    except CallRejected as err:
        log.warning("call rejected", extra={"reason": str(err)})
        report.ended_by = "rejected"
        await socket.close(1008, "unknown session")
        return report
    except CallUnavailable as err:
        log.error("call could not be loaded", extra={"reason": str(err)[:300]})
        report.ended_by = "unavailable"
        await socket.close(1011, "call unavailable")
        return report
    _log_connected(setup, plan, report, setup_s=trio.current_time() - opened_at)
    history = (History.resumed(plan.history, plan.history_meta or [{} for _ in plan.history])
               if plan.history else History())
    history.keep_after(plan.history_after_ms)
    if plan.greeting and not plan.history:
        history.add_assistant(plan.greeting)        # Twilio speaks it; the model must know
        history.annotate(kind="greeting")
    report.history = history
    try:
        await _supervise(socket, plan, history, services, report)
    except Exception:
        report.ended_by = "error"
        log.exception("call failed")
        await socket.close(1011, "internal error")
    except BaseException:
        # the process stopping under the call (a peer still there past END_GRACE_S, a
        # Ctrl-C in a program embedding the server): not the caller hanging up, and the
        # call's "call ended" line must still be written, or its CallSid's story stops
        report.ended_by = "cancelled"
        raise
    finally:
        # the flush's own timeout decides, and logs "store flush timed out" under this
        # CallSid; a bound equal to it fired first, hiding both that line and the outcome
        with trio.move_on_after(services.flush_timeout_s + FLUSH_MARGIN_S,
                                shield=True) as bound:
            report.flushed = await _persist_all(plan.call_sid, history, services)
        if bound.cancelled_caught:
            report.flushed = False
        _log_ended(report)
    return report


def _log_connected(setup: Setup, plan: CallPlan, report: CallReport, *,
                   setup_s: float) -> None:
    """The call's first line on its socket: without it, a call whose story stopped at
    "session prepared" could be Twilio never connecting or a caller who said nothing. It
    names the relay session as Twilio's console does (``session_id``) and which of the
    call's sockets this is (``generation``: 0, or the reconnect's number, with the messages
    it resumes); no number, the caller's is in "session prepared", masked."""
    log.info("call connected", extra={
        "via": report.via, "session_id": setup.session_id, "generation": plan.generation,
        "resumed_messages": len(plan.history), "use_case": plan.use_case.name,
        "model_id": plan.model_id, "direction": setup.direction,
        "call_status": setup.call_status, "setup_ms": round(setup_s * 1000, 1),
        "frames_before_setup": report.frames.received - 1})


def _log_ended(report: CallReport) -> None:
    """The call's last line: how it ended, and whether its transcript reached the store
    (``flushed`` false: still queued here, written later or lost with the process)."""
    extra = {"ended_by": report.ended_by, "turns": report.turns.turns,
             "barge_ins": report.turns.barge_ins,
             "frames_rejected": sum(report.frames.rejected.values()),
             "flushed": report.flushed}
    if not_logged := report.frames.not_logged():     # a flood's lines, counted instead
        extra["lines_not_logged"] = not_logged
    log.info("call ended", extra=extra)


async def _supervise(socket: RelaySocket, plan: CallPlan, history: History,
                     services: CallServices, report: CallReport) -> None:
    out_send, out_recv = Channel[Outgoing](0).ends()     # trio's semantics, a fifth the memory
    in_send, in_recv = Channel[Inbound](INBOUND_BUFFER).ends()
    cmd_send, cmd_recv = Channel[TurnCommand](0).ends()
    language = SessionLanguage.for_use_case(plan.use_case)    # tools switch it too
    stamps = handoff_language.needed(plan.use_case)     # the end, for /action's words
    env = tool_executor.ToolEnv(
        call_sid=plan.call_sid, use_case=plan.use_case, registry=services.registry,
        store=services.store, outbound=out_send.clone(), caller=plan.caller,
        called=plan.called, settings=services.settings, language=language,
        blocking=report.tool_blocking)

    def persist(sealed: list[tuple[int, Message, dict[str, Any]]]) -> None:
        for index, message, meta in sealed:
            services.persist(plan.call_sid, index, message, meta)

    async with trio.open_nursery() as nursery:
        ctx = CallContext(
            call_sid=plan.call_sid, use_case=plan.use_case, model_id=plan.model_id,
            system_prompt=plan.system_prompt, llm=services.llm, history=history,
            outbound=out_send.clone(), tools=tool_executor.ToolExecutor(nursery, env),
            max_tool_rounds=services.max_tool_rounds,
            tool_wait_s=_longest_tool_timeout(plan.use_case, services.registry),
            max_history_messages=services.max_history_messages,
            max_history_chars=services.max_history_chars, stats=report.turns,
            log_content=services.log_content, token_hold_s=services.token_hold_s,
            on_turn=services.on_turn, relay=RelayControl.for_use_case(plan.use_case, language))
        marks = ctx.marks                            # reader marks, slot counts, writer obeys
        out_send.close()                             # each actor now holds its own clone
        reading = trio.CancelScope()

        def after_end() -> None:
            reading.deadline = min(reading.deadline, trio.current_time() + END_CLOSE_S)

        def end_taken(end: End) -> None:
            if services.relay_ended is not None:
                services.relay_ended(plan.call_sid, end.handoff_data)

        def stamp_end(end: End) -> End:
            """The language spoken now and the use case, for ``/action``'s words, when it
            has its own (``voiceagent.handoff_language``)."""
            if not stamps:
                return end
            return End(handoff_language.stamped(end.handoff_data, language.tts,
                                                plan.use_case.name))

        nursery.start_soon(partial(relay_writer.run, socket=socket, outbound=out_recv,
                                   stats=report.writer, marks=marks, on_end=after_end,
                                   on_end_taken=end_taken, stamp_end=stamp_end),
                           name="relay_writer")
        nursery.start_soon(partial(llm_streamer.run, commands=cmd_recv, ctx=ctx,
                                   persist=persist), name="llm_streamer")
        policy = interrupt_handler.InputPolicy(
            dtmf=plan.use_case.dtmf, max_prompt_chars=services.max_prompt_chars,
            idle_reprompt_s=services.idle_reprompt_s, max_reprompts=services.max_reprompts,
            max_call_s=_call_time_left(plan, services.max_call_duration_s), lines=ctx.lines)
        nursery.start_soon(partial(interrupt_handler.run, inbound=in_recv, commands=cmd_send,
                                   policy=policy, ending=services.end_calls, marks=marks,
                                   stats=report.frames), name="interrupt_handler")
        with reading:
            await relay_reader.run(socket=socket, inbound=in_send, stats=report.frames,
                                   max_frame_bytes=services.max_frame_bytes, marks=marks)
        if reading.cancelled_caught:
            log.warning("twilio did not close the socket after end; closing it",
                        extra={"waited_s": END_CLOSE_S})
            await socket.close(1000, "session ended")
        if report.frames.abusive:
            report.ended_by = "bad-frames"
            await socket.close(1008, "too many unusable frames")
        nursery.cancel_scope.deadline = trio.current_time() + TEARDOWN_S
        ctx.tools.tear_down_by(nursery.cancel_scope.deadline)   # a tool past its `end` too
    llm_streamer.drop_unsent_at_end(ctx)
    if report.writer.ended and report.ended_by == "hangup":
        report.ended_by = "end"
    elif report.frames.dropped and report.ended_by == "hangup":
        report.ended_by = "dropped"     # the relay session failed: /action may reconnect


def _call_time_left(plan: CallPlan, max_call_s: float) -> float:
    """MAX_CALL_DURATION_S counts from the call's start, not from this socket's: a reconnect
    started it again, so a call that reconnected (up to three times) ran several times the
    limit, and outlived its session item (SESSION_TTL_S, checked against the limit). A
    reconnect past it hears the goodbye at once. Another process's clock may differ by a
    little, nothing next to the limit."""
    if plan.started_at <= 0:
        return max_call_s
    return max(0.0, max_call_s - max(0.0, time.time() - plan.started_at))


async def _wait_setup(socket: RelaySocket, services: CallServices,
                      stats: FrameStats) -> Setup | None:
    """The first useful frame must be ``setup``; anything before it is counted and dropped."""
    with trio.move_on_after(services.setup_timeout_s):
        for _ in range(MAX_FRAMES_BEFORE_SETUP):
            try:
                frame = await socket.receive()
            except RelayBroken:
                return None
            stats.received += 1
            message = parse_frame(frame, max_bytes=services.max_frame_bytes)
            if isinstance(message, Setup):
                return message
            if isinstance(message, Rejected):
                stats.reject(message)
            else:
                stats.count_rejected("before_setup", "message before setup dropped",
                                     kind=type(message).__name__)
    log.warning("no setup received", extra={"frames": stats.received})
    return None


async def _persist_all(call_sid: str, history: History, services: CallServices) -> bool:
    for index, message, meta in history.take_sealed(final=True):
        services.persist(call_sid, index, message, meta)
    return await services.flush(call_sid, services.flush_timeout_s)


def _longest_tool_timeout(use_case: UseCase, registry: ToolRegistry) -> float:
    longest = 0.0
    for declaration in use_case.tools:
        definition = registry.get(declaration.name)
        if definition is not None:
            longest = max(longest, declaration.timeout_s or definition.timeout_s)
    return longest + 1.0
