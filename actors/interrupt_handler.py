"""Turns the caller's input, in arrival order, into commands for the llm_streamer.

It decides what interrupts what: an ``interrupt`` becomes a barge-in (with what Twilio says was
heard; the relay reader has already cancelled the speaking turn when it read it, see
``CutMarks``, so the barge-in waits for that turn's cleanup and records what was heard), a
final prompt supersedes the reply in flight, DTMF keys are buffered into entries, a silent
caller is re-prompted, then bid goodbye, and the call is ended politely at its maximum length
or when the server drains (``EndSignal``). Keeping these decisions in one task, fed by one
ordered channel, is what guarantees an interrupt cancels the turn it was meant for and never
the turn started by the prompt that follows it.

Input is untrusted: prompts are cleaned of control characters and capped in length, and at
most two turns start per ``min_turn_gap_s`` whatever starts them. A prompt or a completed key
entry that would start a third is held until the gap has passed, and the caller's input that
is waiting or arrives meanwhile (prompts, keys, or both) joins it: a flood of either costs at
most two model calls per gap, and is read as fast as it comes, so nothing is left to work
through after the caller has gone.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import assert_never

import trio

from actors.call_timers import Idle, Limits
from actors.channel import Receives, Sends
from actors.end_signal import EndSignal
from actors.messages import (
    BargeIn,
    ConfigUpdated,
    Dtmf,
    Inbound,
    Info,
    Interrupt,
    KeyPressed,
    Prompt,
    RelayErrorReport,
    Setup,
    SpeakerEvent,
    TokensPlayed,
    TurnCommand,
    UserSaid,
)
from actors.played import Played
from actors.relay_reader import FrameStats
from actors.spoken_lines import SpokenLines
from actors.turn_slot import CutMarks
from voiceagent.usecases import DtmfConfig

log = logging.getLogger(__name__)

_ERROR_CODE = re.compile(r"\b6\d{4}\b")                       # 64107 and its kin
_DROPPED_TYPE = re.compile(r'"type"\s*:\s*"([A-Za-z]{1,20})"')

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
MAX_DETAIL_CHARS = 500           # of a configUpdated payload, in the log


@dataclass(frozen=True)
class InputPolicy:
    dtmf: DtmfConfig = field(default_factory=DtmfConfig)
    max_prompt_chars: int = 2000
    idle_reprompt_s: float | None = None        # None: never re-prompt
    max_reprompts: int = 2                      # then end the call
    min_turn_gap_s: float = 0.3                 # at most two turns start in this window
    max_call_s: float = math.inf                # then end the call
    # the re-prompt and the goodbyes, in the language spoken when they are said
    lines: SpokenLines = field(default_factory=SpokenLines)


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


def clean_prompt(text: str, limit: int, stats: FrameStats) -> str:
    cleaned = CONTROL.sub(" ", text).strip()
    if len(cleaned) > limit:
        stats.note("prompt_truncated", "prompt truncated", logger=log, chars=len(cleaned),
                   limit=limit)
        cleaned = cleaned[:limit]
    return cleaned


async def run(*, inbound: Receives[Inbound], commands: Sends[TurnCommand],
              policy: InputPolicy | None = None, ending: EndSignal | None = None,
              marks: CutMarks | None = None, stats: FrameStats | None = None) -> None:
    """Owns ``commands``; returns when ``inbound`` ends (the caller hung up). ``ending``: the
    server's signal to end its calls (draining). ``marks``: whether a turn is in flight; the
    silence of a caller waiting for a slow tool or model is not theirs to be re-prompted for
    (nor, three times over, hung up on)."""
    policy = policy or InputPolicy()
    keys, idle = _KeyBuffer(policy.dtmf), Idle(policy)
    limits = Limits(policy, ending or EndSignal())
    gate = _Gate(policy, keys, idle, inbound, commands, stats or FrameStats())
    with inbound, commands:
        while True:
            if (goodbye := limits.reached()) is not None:
                await commands.send(goodbye)
            message: Inbound | None = None
            with trio.move_on_at(min(keys.deadline, idle.deadline, limits.deadline)) as waiting:
                limits.wake(waiting)
                try:
                    message = await inbound.receive()
                except trio.EndOfChannel:
                    return
                finally:
                    limits.done(waiting)
            now = trio.current_time()
            if message is not None:
                idle.saw(message)
                await gate.take(message)
            elif now >= keys.deadline and (entry := keys.take()):
                await gate.start(_Held(policy, received_at=now, entry=entry))
            elif now >= idle.deadline:
                if marks is not None and marks.turn_running:
                    idle.waiting_for_agent()
                else:
                    await commands.send(idle.expired())


@dataclass
class _Held:
    """The caller's input for the next turn, gathered while that turn waits at the gate.

    Prompts join as words. A key entry replaces one held before it: started one after the
    other, the newer turn would have superseded the older at once. Once keys and words meet,
    the keys are told to the model in words (their handlers skipped: one turn cannot both run
    a handler and answer what was said), except keys the use case keeps from the model.
    """

    policy: InputPolicy
    received_at: float
    lang: str = ""
    words: list[str] = field(default_factory=list)
    chars: int = 0
    entry: str | None = None
    replaced: int = 0               # entries a newer entry replaced, for the log

    def add_words(self, text: str, lang: str) -> None:
        if not text:
            return
        if self.entry is not None:
            entry, self.entry = self.entry, None
            self._add_entry_words(entry)
        self.lang = self.lang or lang
        if self.chars <= self.policy.max_prompt_chars:     # a flood stops growing the list
            self.words.append(text)
            self.chars += len(text) + 1

    def add_entry(self, entry: str) -> None:
        if self.words:
            self._add_entry_words(entry)
            return
        self.replaced += self.entry is not None
        self.entry = entry

    def _add_entry_words(self, entry: str) -> None:
        dtmf = self.policy.dtmf
        if entry in dtmf.handlers or dtmf.default_to_model:
            self.add_words(KeyPressed(entry).as_words(), "")

    def command(self, stats: FrameStats) -> UserSaid | KeyPressed | None:
        if self.entry is not None:
            return KeyPressed(self.entry, received_at=self.received_at)
        said = clean_prompt(" ".join(self.words), self.policy.max_prompt_chars, stats)
        return UserSaid(said, self.lang, received_at=self.received_at) if said else None


class _Gate:
    """Where every turn starts, whatever starts it: at most two in ``min_turn_gap_s``. A turn
    that would be a third is held until the gap has passed (a person never speaks or keys
    that fast, and a quick correction after a barge-in is the second, never delayed), and the
    caller's input that is waiting or arrives meanwhile joins it.

    An interrupt that arrives while a turn is held is about the speech already playing (the
    held turn has said nothing yet), so it goes on at once as a barge-in, ahead of the held
    turn; other messages start nothing (they still move the silence timer). So the gathering
    never stops early, and a flood of anything is read as fast as it comes."""

    def __init__(self, policy: InputPolicy, keys: _KeyBuffer, idle: Idle,
                 inbound: Receives[Inbound], commands: Sends[TurnCommand],
                 stats: FrameStats) -> None:
        self.policy = policy
        self.stats = stats          # lines about frames: a few of each kind per call
        self.keys = keys
        self.inbound = inbound
        self.commands = commands
        self.idle = idle
        self.starts = (-math.inf, -math.inf)       # when the last two turns started
        # tokensPlayed: what the caller heard, for an interrupt that does not say
        self.played = Played()

    async def take(self, message: Inbound) -> None:
        """One message in arrival order; a turn if it is words or completes a key entry."""
        at = message.received_at if isinstance(message, Prompt | Dtmf) else None
        held = _Held(self.policy, received_at=trio.current_time() if at is None else at)
        await self._join(message, held)
        if held.entry is not None or held.words:
            await self.start(held)
        elif isinstance(message, Prompt) and message.last:
            self.stats.note("blank_prompt", "blank prompt ignored", level=logging.INFO,
                            logger=log)

    async def start(self, held: _Held) -> None:
        """Starts the held turn once the gate opens: at once unless two turns started in the
        last gap. The caller hanging up ends the gathering, not the wait."""
        hold_until = self.starts[0] + self.policy.min_turn_gap_s
        joined, ended = 0, False
        while True:
            queued: Inbound | None = None
            try:
                if trio.current_time() < hold_until:
                    with trio.move_on_at(hold_until):
                        queued = await self.inbound.receive()
                else:                       # open (nearly every turn): no deadline to set
                    queued = self.inbound.receive_nowait()
            except trio.WouldBlock:
                pass
            except trio.EndOfChannel:
                ended = True
            if queued is None:
                break
            self.idle.saw(queued)
            await self._join(queued, held)
            joined += 1
        if ended:
            await trio.sleep_until(hold_until)
        if joined:
            log.info("queued input merged", extra={"frames": joined + 1,
                                                   "entries_replaced": held.replaced})
        command = held.command(self.stats)
        if command is not None:
            self.starts = (self.starts[1], trio.current_time())
            self.played.turn_started()
            await self.commands.send(command)

    async def _join(self, message: Inbound, held: _Held) -> None:
        match message:
            case Prompt(last=False):
                pass
            case Prompt(text=text, lang=lang):
                said = clean_prompt(text, self.policy.max_prompt_chars, self.stats)
                # keys typed just before, their entry unfinished, go with the words and
                # ahead of them: left to end on their timeout, they started a turn that cut
                # this one's reply, and the history had them after the words
                if said and self.keys.digits and (entry := self.keys.take()) is not None:
                    held.add_entry(entry)
                held.add_words(said, lang)
            case Dtmf(digit=digit):
                if (entry := self.keys.press(digit)) is not None:
                    held.add_entry(entry)
            case Interrupt(heard=heard, duration_ms=duration_ms):
                # nothing said of the item playing: what played before it still was heard
                played = self.played.heard() if not (heard or "").strip() else ()
                self.played.clear()
                await self.commands.send(BargeIn(heard.strip() if heard is not None else None,
                                                 duration_ms, played))
            case TokensPlayed(text=text):
                self.played.add(text)
            case ConfigUpdated(detail=detail):
                self.stats.note("config_updated", "relay configuration updated",
                                level=logging.INFO, logger=log,
                                detail=detail[:MAX_DETAIL_CHARS])
            case SpeakerEvent(who=who, speaking=speaking):
                log.debug("speaker event", extra={"who": who, "speaking": speaking})
                if who == "agent" and not speaking:
                    self.played.clear()         # all of it played: a new record begins
            case Info(name=name):
                log.debug("relay info", extra={"info_name": name[:40]})
            case RelayErrorReport(description=description):
                # Twilio's description quotes the frame it dropped (agent words included):
                # only its error code and that frame's type reach the log
                code = _ERROR_CODE.search(description)
                dropped = _DROPPED_TYPE.search(description)
                self.stats.note("twilio_error", "twilio reported an error", logger=log,
                                error_code=code.group(0) if code else None,
                                dropped_type=dropped.group(1) if dropped else None)
            case Setup():                               # the reader drops these already
                self.stats.note("second_setup", "second setup ignored", logger=log)
            case _:
                assert_never(message)
