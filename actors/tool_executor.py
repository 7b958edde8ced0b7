"""Runs the tool calls of one model reply: concurrently, schema-checked, each with a timeout.

Tools run in the executor's nursery, not in the turn's cancel scope, because a barge-in must
not cut a tool that changes the world halfway. A batch the turn abandons is cancelled, except
for side-effect tools, and tools that already sent ``end`` (the session is over), which run on
shielded and still report. Side-effect tools run at most
once per toolUseId. Every failure becomes an ``error`` outcome with a reason the model can
act on; nothing a tool does can raise into the call.

Every tool gets a ``ToolContext`` (voiceagent/tools/base.py). An async tool runs on trio; a
blocking one in a worker thread from the registry's limiter (TOOL_THREADS), under the same
timeout: when it expires the thread is abandoned, not stopped, and runs on to its end. An
async tool that blocks the loop anyway is named in a warning (``tool_steps``).

The executor has no standing task: the streamer hands it a batch (``submit``) and the batch
runs as its own task in the call's nursery. Most turns call no tool, and a task waiting on a
channel for batches cost every call ~6 KiB (the task, its nursery, the channel) and a fresh
await chain for the young collections after each batch (issue 20). Each batch holds its own
clone of the outbound channel, so the writer still ends only when the streamer has closed the
executor and the last batch is done.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType

import trio

from actors import tool_failures, tool_steps
from actors.channel import Sends
from actors.messages import Outgoing, ToolBatch, ToolCall, ToolOutcome
from actors.session_language import SessionLanguage
from actors.tool_sends import Sent, tool_context
from voiceagent import jsonlimits
from voiceagent.settings import Settings
from voiceagent.store.base import Store
from voiceagent.tools import unawaited
from voiceagent.tools.base import ToolDefinition
from voiceagent.tools.registry import ToolRegistry
from voiceagent.tools.unawaited import Handouts
from voiceagent.usecases import UseCase

log = logging.getLogger(__name__)

CANCELLED = "cancelled: the caller interrupted before this finished"
ENDED = "cut: the call ended before this finished"      # the teardown deadline (tear_down_by)
# A result goes to the model on every request after it, and one round's results are stored
# as one item (DynamoDB's limit: 400 KB): past this, it was dropped by the store, and a
# reconnect then found the conversation broken and started it afresh (helper-25)
MAX_RESULT_BYTES = 32 * 1024
# ... and so at most this many calls of one reply run (with the caller's next words, their
# results stay well within that item); the rest are answered, not run
MAX_CALLS_PER_ROUND = 8
TOO_MANY_CALLS = (f"not run: one reply may call at most {MAX_CALLS_PER_ROUND} tools; call it "
                  "again in the next")


@dataclass
class ToolEnv:
    call_sid: str
    use_case: UseCase
    registry: ToolRegistry
    store: Store
    outbound: Sends[Outgoing]
    caller: str = ""
    called: str = ""
    settings: Settings | None = None
    done: dict[str, ToolOutcome] = field(default_factory=dict)     # side effects, by id
    running: dict[str, trio.Event] = field(default_factory=dict)
    # the call's teardown deadline, once it is set, and the tool calls it must reach: one
    # that sent `end` is shielded from a barge-in, not from the end of the call
    teardown: list[float] = field(default_factory=lambda: [math.inf])
    live: set[Sent] = field(default_factory=set)
    # shared with the automatic switch (RelayControl): a tool's switch is its switch too
    language: SessionLanguage | None = None
    turn: int = 0                   # the batch's turn: its audio and digits are that turn's
    blocking: tool_steps.ToolBlocking = field(default_factory=tool_steps.ToolBlocking)


class ToolExecutor:
    """Starts each batch in the call's nursery (not the turn's cancel scope: see above)."""

    def __init__(self, nursery: trio.Nursery, env: ToolEnv) -> None:
        self._nursery = nursery
        self._env = env
        self._closed = False

    def submit(self, batch: ToolBatch) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the tool executor is closed: the call is ending")
        # the same ``done`` and ``running`` (side effects run once per call), its own outbound
        batch_env = replace(self._env, outbound=self._env.outbound.clone(), turn=batch.turn)
        self._nursery.start_soon(_run_batch, batch, batch_env, name="tool batch")

    def ends_call(self, name: str) -> bool:
        """Whether the tool ``name`` ends the call (``ends_turn``: endCall, a handoff)."""
        definition = self._env.registry.get(name)
        return definition is not None and definition.ends_turn

    def side_effect(self, name: str) -> bool:
        """Whether the tool ``name`` runs on when its turn is cut (``side_effect``)."""
        definition = self._env.registry.get(name)
        return definition is not None and definition.side_effect

    def tear_down_by(self, deadline: float) -> None:
        """The call is ending: every tool call still running (one that sent ``end`` too, which
        a barge-in no longer cuts) is cut at ``deadline``; side effects stay shielded."""
        self._env.teardown[0] = min(self._env.teardown[0], deadline)
        for sent in self._env.live:
            sent.scope.deadline = min(sent.scope.deadline, deadline)

    def close(self) -> None:
        """No batch after this; the executor's outbound clone goes (running batches hold
        their own until they are done)."""
        if not self._closed:
            self._closed = True
            self._env.outbound.close()

    def __enter__(self) -> ToolExecutor:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


async def _run_batch(batch: ToolBatch, env: ToolEnv) -> None:
    with env.outbound:
        await _run_calls(batch, env)


async def _run_calls(batch: ToolBatch, env: ToolEnv) -> None:
    async with trio.open_nursery() as watcher:
        async def abandon_when_told() -> None:
            await batch.abandoned.wait()
            calls.cancel_scope.cancel(reason="turn abandoned")

        async with trio.open_nursery() as calls:
            watcher.start_soon(abandon_when_told)
            for n, call in enumerate(batch.calls):
                if n < MAX_CALLS_PER_ROUND:
                    calls.start_soon(_run_one, call, batch, env)
                else:
                    _deliver(batch.results, _error(call, TOO_MANY_CALLS))
        watcher.cancel_scope.cancel()


async def _run_one(call: ToolCall, batch: ToolBatch, env: ToolEnv) -> None:
    results = batch.results
    definition = env.registry.get(call.name)
    side_effect = definition is not None and definition.side_effect
    sent = Sent(batch.sounded)
    sent.scope.deadline = env.teardown[0]
    env.live.add(sent)
    outcome: ToolOutcome | None = None
    try:
        with sent.scope:
            outcome = await _outcome(call, definition, env, sent)
    except BaseException as err:
        spoke = sent.finish()
        # grouped too (a nursery of the tool's): unreported, the cut turn waited the longest
        # tool timeout for it; what it already sent the caller stays in the history with it.
        # A Ctrl-C raised in the tool (a program embedding the server) cuts the turn as well.
        if tool_failures.holds(err, trio.Cancelled) or tool_failures.holds(
                err, KeyboardInterrupt):
            _deliver(results, ToolOutcome(call.tool_use_id, call.name, "error", CANCELLED,
                                          spoke=spoke, ends_call=sent.ended))
        raise
    finally:
        env.live.discard(sent)
    spoke = sent.finish()
    if outcome is None:                 # the call's teardown deadline cut it (tear_down_by)
        outcome = ToolOutcome(call.tool_use_id, call.name, "error", ENDED,
                              spoke=spoke, ends_call=sent.ended)
    elif spoke:
        outcome = replace(outcome, spoke=True)
    _deliver(results, outcome)
    if side_effect:
        env.done[call.tool_use_id] = outcome


def _deliver(results: trio.MemorySendChannel[ToolOutcome], outcome: ToolOutcome) -> None:
    try:
        results.send_nowait(outcome)       # buffered to the batch size: never blocks
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        log.info("tool outcome had no listener", extra={"tool": outcome.name})


async def _outcome(call: ToolCall, definition: ToolDefinition | None,
                   env: ToolEnv, sent: Sent) -> ToolOutcome:
    declaration = env.use_case.tool(call.name)
    if definition is None or declaration is None:
        return _error(call, f"unknown tool {call.name!r}; available: "
                            f"{[t.name for t in env.use_case.tools]}")
    problems = ([call.input_problem] if call.input_problem is not None
                else env.registry.validate_input(declaration, call.input))
    if problems:
        log.info("tool input invalid", extra={"tool": call.name, "problems": len(problems)})
        return _error(call, "invalid input: " + "; ".join(problems))
    if definition.side_effect:
        # asked again (a retried model round): its one outcome, which sent nothing this time
        if call.tool_use_id in env.done:
            return replace(env.done[call.tool_use_id], spoke=False)
        if (running := env.running.get(call.tool_use_id)) is not None:
            await running.wait()
            done = env.done.get(call.tool_use_id)
            return replace(done, spoke=False) if done else _error(call, "duplicate call failed")
        env.running[call.tool_use_id] = trio.Event()
        try:
            with trio.CancelScope(shield=True):
                return await _invoke(call, definition, declaration.timeout_s, env, sent)
        finally:
            env.running.pop(call.tool_use_id).set()
    return await _invoke(call, definition, declaration.timeout_s, env, sent)


async def _invoke(call: ToolCall, definition: ToolDefinition, timeout_s: float | None,
                  env: ToolEnv, sent: Sent) -> ToolOutcome:
    started = trio.current_time()
    outcome = await _run(call, definition, timeout_s, env, sent)
    if outcome.status == "error":       # timed too: a timeout is the slowest call of all
        outcome = replace(outcome, duration_s=trio.current_time() - started)
    if sent.ended:                      # failed or timed out after its `end` went out
        outcome = replace(outcome, ends_call=True)
    return outcome


async def _run(call: ToolCall, definition: ToolDefinition, timeout_s: float | None,
               env: ToolEnv, sent: Sent) -> ToolOutcome:
    limit_s = timeout_s or definition.timeout_s
    started = trio.current_time()
    # move_on_after, not fail_after: a TooSlowError the tool raises itself (its own
    # trio.fail_after around a slow API) is the tool's failure, not this limit expiring
    limit = trio.move_on_after(limit_s)
    handouts = Handouts()
    try:
        with limit:
            # its own copy: the input is the history's toolUse (or a DTMF handler's, shared
            # by every call), which a tool's ``args.pop(...)`` must not rewrite
            running = definition.call(tool_context(call, definition, env, sent, handouts),
                                      copy.deepcopy(dict(call.input)),
                                      threads=env.registry.threads)
            # an async tool's steps are timed: one that blocks stalls every call
            result = await (running if definition.blocking else
                            tool_steps.timed(running, call.name, env.blocking))
    except BaseException as err:
        failure, rest = tool_failures.split(err)
        try:
            forgotten = handouts.settle()
            if failure is not None:
                log.warning("tool failed", extra={
                    "tool": call.name, "error": type(failure).__name__,
                    "at": tool_failures.raised_at(failure)})
            if rest is err:
                raise
            if rest is not None:        # a Cancelled or Ctrl-C, which the failures came beside
                raise rest from None
            # failed as its limit cut it (a client's close raising as it was cancelled): it
            # timed out, and the model must hear that a side effect may have run
            if limit.cancel_called:
                return _timed_out(call, definition, limit_s)
            described = tool_failures.described(err)
            if forgotten:               # the likely cause: a coroutine where a value was due
                described = (f"{_never_awaited(call, definition, forgotten)}; "
                             f"it raised {described}")
            return _error(call, f"failed: {described}"[:300], definition)
        finally:
            # the tool's error holds this frame (its traceback), and these would hold the
            # error: a cycle keeping the call's tool environment until a middle collection,
            # minutes apart under load (voiceagent.app.heap); ``err`` Python deletes itself
            del failure, rest
    forgotten = handouts.settle()       # closed either way; timed out, not yet reached is no
    if limit.cancelled_caught:          # mistake (nor in a cut or Ctrl-C above)
        return _timed_out(call, definition, limit_s)
    elapsed = trio.current_time() - started
    # the tool did its work: say so, or the model may run a side effect again
    ran = " The tool did run: check before repeating it." if definition.side_effect else ""
    if forgotten:
        return _error(call, f"failed: {_never_awaited(call, definition, forgotten)}.{ran}",
                      definition)
    if not isinstance(result, Mapping):
        kind = type(result).__name__
        log.warning("tool result is not a dict; return a JSON object",
                    extra={"tool": call.name, "returned": kind})
        return _error(call, f"returned {kind}, not a JSON object.{ran}", definition)
    try:            # dict() first: a MappingProxyType or ChainMap would be dumped as text
        result, changed = jsonlimits.plain(dict(result))
    except ValueError as err:
        log.warning("tool result cannot be JSON", extra={"tool": call.name,
                                                         "problem": str(err)[:200]})
        return _error(call, f"returned a result JSON cannot hold: {str(err)[:200]}.{ran}",
                      definition)
    if changed:
        log.warning("tool result changed to fit JSON; return text, numbers, lists and dicts",
                    extra={"tool": call.name, "changed": sorted(set(changed))[:10]})
    size = len(json.dumps(result, ensure_ascii=False, separators=(",", ":")).encode())
    if size > MAX_RESULT_BYTES:
        log.warning("tool result too large, dropped; return only what the model needs",
                    extra={"tool": call.name, "bytes": size, "limit": MAX_RESULT_BYTES})
        return replace(_error(call, f"its result was {size} bytes, over the "
                                    f"{MAX_RESULT_BYTES}-byte limit, so it was dropped.{ran}",
                              definition), ends_call=definition.ends_turn)  # it did its work
    log.info("tool done", extra={"tool": call.name, "duration_ms": round(elapsed * 1000)})
    return ToolOutcome(call.tool_use_id, call.name, "success", dict(result),
                       side_effect=definition.side_effect, duration_s=elapsed,
                       ends_call=definition.ends_turn)


def _never_awaited(call: ToolCall, definition: ToolDefinition, forgotten: list[str]) -> str:
    """A forgotten ``await`` (a write or a message that never happened), logged with the
    call and the tool and said to the model as the tool's failure."""
    advice = unawaited.advice(forgotten, blocking=definition.blocking)
    log.warning(advice, extra={"tool": call.name, "never_awaited": forgotten})
    return advice


def _timed_out(call: ToolCall, definition: ToolDefinition, limit_s: float) -> ToolOutcome:
    log.warning("tool timed out", extra={"tool": call.name, "timeout_s": limit_s})
    # a side effect cut mid-way may have happened (a request sent, its answer not in), and a
    # blocking tool's thread runs on: asked again, the model would book twice
    maybe = (" It may still have taken effect: check before repeating it."
             if definition.side_effect else "")
    return _error(call, f"timed out after {limit_s:g} s; tell the caller and offer another "
                        f"way.{maybe}", definition)


def _error(call: ToolCall, reason: str, definition: ToolDefinition | None = None
           ) -> ToolOutcome:
    return ToolOutcome(call.tool_use_id, call.name, "error", jsonlimits.valid_text(reason),
                       side_effect=definition is not None and definition.side_effect)
