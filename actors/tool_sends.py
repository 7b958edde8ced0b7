"""What one tool call sends the caller through its ``ToolContext``: audio, digits, a
language switch, ``end``, each recorded as it is taken and withheld once the call is over.

Apart from ``tool_executor``, which runs the calls and makes their outcomes: this is the
tool's side of the outbound channel, and what the outcome reads of it (``Sent``: whether the
caller heard something, whether the session ended), so the rules for a tool's late audio and
its ``end`` sit in one place.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from actors.messages import FromTool, ToolCall
from voiceagent.relay.outbound import End, Language, Play, SendDigits
from voiceagent.settings import Settings
from voiceagent.tools.base import ToolContext, ToolDefinition, ToolLog, ToolMessage
from voiceagent.tools.unawaited import Handouts, tracked_store

if TYPE_CHECKING:
    from actors.tool_executor import ToolEnv

log = logging.getLogger("actors.tool_executor")     # as before the split: same logger


class Sent:
    """What one tool call sent the caller, and its cancel scope: once the tool has sent
    ``end`` the session is over, and a barge-in abandoning the turn no longer cuts the tool
    (the rest of its work, a handoff's summary, is the session's last act, and its result
    goes in the history)."""

    __slots__ = ("messages", "over", "scope", "sounded")

    def __init__(self, sounded: trio.Event | None = None) -> None:
        self.messages: list[ToolMessage] = []
        self.scope = trio.CancelScope()
        self.over = False
        self.sounded = sounded          # its batch's (ToolBatch.sounded)

    def finish(self) -> bool:
        """Whether it spoke, fixed as its outcome is made: audio or digits the writer takes
        after this are withheld. A blocking tool's ``send`` runs as a task of its own
        (``trio.from_thread.run``), outside ``scope``, and its thread is abandoned, not
        stopped: its timeout or a barge-in ends the call at once, while a ``play`` is still
        on its way to the writer (handed over in the same scheduler pass, or queued behind
        a busy writer), or is sent later still. Played then, the model would be told the
        tool said nothing and say it again. (An async tool's send waits for the writer in
        the tool's own scope, and the writer answers first.)"""
        self.over = True
        return self.heard

    def add(self, message: ToolMessage) -> None:
        self.messages.append(message)
        if isinstance(message, End):
            self.scope.shield = True
        if isinstance(message, End | Play | SendDigits) and self.sounded is not None:
            self.sounded.set()

    @property
    def ended(self) -> bool:
        """It sent ``end``: whatever it returns, the session is over."""
        return any(isinstance(message, End) for message in self.messages)

    @property
    def heard(self) -> bool:
        """It sent the caller audio or digits."""
        return any(isinstance(message, Play | SendDigits) for message in self.messages)


def tool_context(call: ToolCall, definition: ToolDefinition, env: ToolEnv,
                 sent: Sent, handouts: Handouts | None = None) -> ToolContext:
    """``sent`` collects what the tool sends the caller: a turn whose model then says
    nothing is not silence (``ToolOutcome.spoke``). ``handouts`` holds the coroutines its
    ``store`` and ``send`` return, for the executor to find one never awaited."""
    fields = {"call_sid": env.call_sid, "tool": definition.name,
              "tool_use_id": call.tool_use_id}

    async def send(message: ToolMessage) -> bool:
        if sent.over:
            # an abandoned blocking tool's thread, on after its timeout or the caller's cut:
            # its `end` would hang up on a caller the model went on talking to
            log.info("tool message withheld: its tool call had ended",
                     extra={"tool": definition.name, "kind": type(message).__name__})
            return False
        if not isinstance(message, Play | SendDigits):
            switch = message if isinstance(message, Language) else None
            if (switch is not None and env.language is not None
                    and not env.language.changes(switch)):
                log.info("language already set: not sent again",
                         extra={"tool": definition.name})
                return True
            await env.outbound.send(message)
            sent.add(message)       # no checkpoint between: taken `end` shields at once
            if switch is not None and env.language is not None:
                env.language.note(switch)   # once taken: a send cut short changed nothing
            return True
        told = trio.Event()
        withheld = False

        def taken(cut: bool) -> bool:       # the writer, as it takes it: no await between
            nonlocal withheld
            withheld = cut or sent.over
            if not withheld:
                sent.add(message)           # heard, even if a cancel reaches us first
            elif not cut:
                log.info("tool audio withheld: its tool call had ended",
                         extra={"tool": definition.name, "kind": type(message).__name__})
            told.set()
            return not withheld

        await env.outbound.send(FromTool(message, env.turn, taken))
        await told.wait()
        return not withheld

    return ToolContext(
        call_sid=env.call_sid, caller=env.caller, called=env.called, use_case=env.use_case,
        tool_name=definition.name, tool_use_id=call.tool_use_id,
        store=env.store if handouts is None else tracked_store(env.store, handouts),
        settings=env.settings if env.settings is not None else Settings.model_validate({}),
        log=ToolLog(logging.getLogger(f"voiceagent.tools.{definition.name}"), fields),
        _sender=send, _handouts=handouts)
