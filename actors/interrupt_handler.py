"""Turns the caller's input, in arrival order, into commands for the llm_streamer.

It decides what interrupts what: an ``interrupt`` becomes a barge-in (with what Twilio says
was heard), a final prompt supersedes the reply in flight, and DTMF keys are buffered into
entries. Keeping these decisions in one task, fed by one ordered channel, is what guarantees
an interrupt cancels the turn it was meant for and never the turn started by the prompt that
follows it.
"""

from __future__ import annotations

import logging
import math

import trio

from actors.messages import (
    BargeIn,
    Dtmf,
    Inbound,
    Info,
    Interrupt,
    KeyPressed,
    Prompt,
    RelayErrorReport,
    TurnCommand,
    UserSaid,
)
from voiceagent.usecases import DtmfConfig

log = logging.getLogger(__name__)


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


async def run(*, inbound: trio.MemoryReceiveChannel[Inbound],
              commands: trio.MemorySendChannel[TurnCommand], dtmf: DtmfConfig) -> None:
    """Owns ``commands``; returns when ``inbound`` ends (the caller hung up)."""
    keys = _KeyBuffer(dtmf)
    partials = 0
    with inbound, commands:
        while True:
            message: Inbound | None = None
            with trio.move_on_at(keys.deadline):
                try:
                    message = await inbound.receive()
                except trio.EndOfChannel:
                    return
            if message is None:                            # the entry's idle timeout passed
                if entry := keys.take():
                    await commands.send(KeyPressed(entry, received_at=trio.current_time()))
                continue
            match message:
                case Prompt(last=False):
                    partials += 1
                case Prompt(text=text, lang=lang) if text.strip():
                    await commands.send(UserSaid(text, lang, received_at=trio.current_time()))
                case Prompt():
                    log.info("blank prompt ignored")
                case Interrupt(heard=heard, duration_ms=duration_ms):
                    heard_text = heard.strip() if heard is not None else None
                    await commands.send(BargeIn(heard_text, duration_ms))
                case Dtmf(digit=digit):
                    if entry := keys.press(digit):
                        await commands.send(KeyPressed(entry, received_at=trio.current_time()))
                case Info(name=name):
                    log.debug("relay info", extra={"name": name})
                case RelayErrorReport():
                    log.warning("twilio rejected a message we sent")
                case _:
                    log.warning("unexpected inbound message",
                                extra={"kind": type(message).__name__})
