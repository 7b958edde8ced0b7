"""Turns the caller's input, in arrival order, into commands for the llm_streamer.

It decides what interrupts what: an ``interrupt`` becomes a barge-in (with what Twilio says
was heard), a final prompt supersedes the reply in flight, DTMF keys are buffered into entries,
and a silent caller is re-prompted, then bid goodbye. Keeping these decisions in one task, fed
by one ordered channel, is what guarantees an interrupt cancels the turn it was meant for and
never the turn started by the prompt that follows it.

Input is untrusted: prompts are cleaned of control characters and capped in length, and final
prompts that queue up while the model is busy are merged into one turn, so a flood of prompts
costs one model call, not one each.
"""

from __future__ import annotations

import logging
import math
import re
from collections import deque
from contextlib import suppress
from dataclasses import dataclass, field

import trio

from actors.messages import (
    BargeIn,
    Dtmf,
    EndCall,
    Inbound,
    Info,
    Interrupt,
    KeyPressed,
    Prompt,
    RelayErrorReport,
    Reprompt,
    TurnCommand,
    UserSaid,
)
from voiceagent.usecases import DtmfConfig

log = logging.getLogger(__name__)

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
REPROMPT = "Are you still there?"
IDLE_GOODBYE = "I haven't heard from you, so I'll end the call now. Please call back anytime."


@dataclass(frozen=True)
class InputPolicy:
    dtmf: DtmfConfig = field(default_factory=DtmfConfig)
    max_prompt_chars: int = 2000
    idle_reprompt_s: float | None = None        # None: never re-prompt
    max_reprompts: int = 2                      # then end the call
    min_turn_gap_s: float = 0.3                 # at most two turns start in this window


class _KeyBuffer:
    """Keys with a handler act at once; other keys collect into an entry."""

    def __init__(self, config: DtmfConfig) -> None:
        self.config = config
        self.digits = ""
        self.deadline = math.inf

    def press(self, digit: str) -> str | None:
        """The entry to act on now, if this key completes one."""
        if not self.digits and digit in self.config.handlers:
            return digit
        if digit == self.config.terminator:
            return self.take()
        self.digits += digit
        if len(self.digits) >= self.config.max_digits:
            return self.take()
        self.deadline = trio.current_time() + self.config.idle_timeout_s
        return None

    def take(self) -> str | None:
        entry, self.digits, self.deadline = self.digits, "", math.inf
        return entry or None


class _Idle:
    """Silence timer: restarts on any caller input."""

    def __init__(self, policy: InputPolicy) -> None:
        self.policy = policy
        self.reprompts = 0
        self.deadline = math.inf
        self.heard_from_caller()

    def heard_from_caller(self) -> None:
        self.reprompts = 0
        self._arm()

    def _arm(self) -> None:
        after = self.policy.idle_reprompt_s
        self.deadline = trio.current_time() + after if after else math.inf

    def expired(self) -> TurnCommand:
        self.reprompts += 1
        self._arm()
        if self.reprompts > self.policy.max_reprompts:
            self.deadline = math.inf
            return EndCall(IDLE_GOODBYE, "caller-silent")
        return Reprompt(REPROMPT)


def clean_prompt(text: str, limit: int) -> str:
    cleaned = CONTROL.sub(" ", text).strip()
    if len(cleaned) > limit:
        log.warning("prompt truncated", extra={"chars": len(cleaned), "limit": limit})
        cleaned = cleaned[:limit]
    return cleaned


async def run(*, inbound: trio.MemoryReceiveChannel[Inbound],
              commands: trio.MemorySendChannel[TurnCommand],
              policy: InputPolicy | None = None) -> None:
    """Owns ``commands``; returns when ``inbound`` ends (the caller hung up)."""
    policy = policy or InputPolicy()
    keys, idle, turns = _KeyBuffer(policy.dtmf), _Idle(policy), _Turns()
    backlog: deque[Inbound] = deque()
    with inbound, commands:
        while True:
            message: Inbound | None = None
            with trio.move_on_at(min(keys.deadline, idle.deadline)):
                try:
                    message = backlog.popleft() if backlog else await inbound.receive()
                except trio.EndOfChannel:
                    return
            now = trio.current_time()
            if message is None:
                if now >= keys.deadline and (entry := keys.take()):
                    await commands.send(KeyPressed(entry, received_at=now))
                elif now >= idle.deadline:
                    await commands.send(idle.expired())
                continue
            if isinstance(message, Prompt | Dtmf | Interrupt):
                idle.heard_from_caller()
            command = await _command(message, policy, keys, turns, inbound, backlog)
            if command is not None:
                await commands.send(command)


@dataclass
class _Turns:
    """When the last two prompts became turns: a third within ``min_turn_gap_s`` of the
    first is held and merged, so a burst costs at most two model calls per gap while a
    quick correction after a barge-in is never delayed."""

    starts: tuple[float, float] = (-math.inf, -math.inf)


async def _command(message: Inbound, policy: InputPolicy, keys: _KeyBuffer, turns: _Turns,
             inbound: trio.MemoryReceiveChannel[Inbound],
             backlog: deque[Inbound]) -> TurnCommand | None:
    now = trio.current_time()
    match message:
        case Prompt(last=False):
            return None
        case Prompt(text=text, lang=lang, received_at=received_at):
            words = [clean_prompt(text, policy.max_prompt_chars)]
            words += await _queued_prompts(inbound, backlog, policy,
                                           turns.starts[0] + policy.min_turn_gap_s)
            turns.starts = (turns.starts[1], trio.current_time())
            said = clean_prompt(" ".join(w for w in words if w), policy.max_prompt_chars)
            if not said:
                log.info("blank prompt ignored")
                return None
            return UserSaid(said, lang, received_at=now if received_at is None else received_at)
        case Interrupt(heard=heard, duration_ms=duration_ms):
            return BargeIn(heard.strip() if heard is not None else None, duration_ms)
        case Dtmf(digit=digit, received_at=received_at):
            entry = keys.press(digit)
            at = now if received_at is None else received_at
            return KeyPressed(entry, received_at=at) if entry else None
        case Info(name=name):
            log.debug("relay info", extra={"name": name})
        case RelayErrorReport():
            log.warning("twilio rejected a message we sent")
        case _:
            log.warning("unexpected inbound message", extra={"kind": type(message).__name__})
    return None


async def _queued_prompts(inbound: trio.MemoryReceiveChannel[Inbound], backlog: deque[Inbound],
                          policy: InputPolicy, hold_until: float) -> list[str]:
    """Final prompts that are waiting, or that arrive before ``hold_until``, join this one;
    anything else waits its turn in ``backlog``. The hold only bites when prompts come faster
    than a person speaks: a flood costs one model call, not one per frame."""
    merged: list[str] = []
    while not backlog:
        queued: Inbound | None = None
        with trio.move_on_at(hold_until), suppress(trio.WouldBlock, trio.EndOfChannel):
            queued = await inbound.receive() if trio.current_time() < hold_until \
                else inbound.receive_nowait()
        if queued is None:
            break
        if isinstance(queued, Prompt) and queued.last:
            merged.append(clean_prompt(queued.text, policy.max_prompt_chars))
        elif not (isinstance(queued, Prompt) and not queued.last):
            backlog.append(queued)
    if merged:
        log.info("queued prompts merged", extra={"count": len(merged) + 1})
    return merged
