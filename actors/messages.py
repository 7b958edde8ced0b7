"""The frozen values that travel between the actors of one call.

Who sends what:

    relay_reader      -> interrupt_handler : Inbound (typed ConversationRelay messages)
    interrupt_handler -> llm_streamer      : TurnCommand
    llm_streamer      -> tool_executor     : ToolBatch (submitted; each runs as its own task)
    tool_executor     -> llm_streamer      : ToolOutcome (on the batch's own results channel)
    anyone            -> relay_writer      : Outbound (the writer is the only socket sender)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import trio

from voiceagent.llm.base import ToolUseRequest
from voiceagent.relay.protocol import (
    Config,
    ConfigUpdated,
    Dtmf,
    End,
    Hints,
    Inbound,
    Info,
    Interrupt,
    Language,
    Outbound,
    Play,
    Prompt,
    RelayErrorReport,
    SendDigits,
    Setup,
    SpeakerEvent,
    Text,
    TokensPlayed,
)

__all__ = [
    "BargeIn",
    "Config",
    "ConfigUpdated",
    "Dtmf",
    "End",
    "EndCall",
    "FromTool",
    "Hints",
    "Inbound",
    "Info",
    "Interrupt",
    "KeyPressed",
    "Language",
    "Outbound",
    "Outgoing",
    "Play",
    "Prompt",
    "RelayErrorReport",
    "Reprompt",
    "SendDigits",
    "Setup",
    "SpeakerEvent",
    "Text",
    "Timed",
    "TokensPlayed",
    "ToolBatch",
    "ToolCall",
    "ToolOutcome",
    "TurnCommand",
    "UserSaid",
]


# ------------------------------------------------------ anyone -> relay_writer


@dataclass(frozen=True, slots=True)
class Timed:
    """A text frame whose sender wants to know when it went out on the socket (the first
    word of a reply: Twilio measures latency to it). The writer sends ``frame`` and calls
    ``on_sent`` with the trio time; the hook never reaches the wire type."""

    frame: Text
    on_sent: Callable[[float], None] = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class FromTool:
    """Audio or digits a tool sends, with the turn whose tool round sent them. A tool runs on
    past its turn (a side effect is shielded from the barge-in), so the writer cannot take
    the newest turn for the frame's own, as it does for text: ``turn`` says. The writer
    withholds the frame when the caller has cut that turn off (Twilio dropped what was
    queued then; sent now, it would start over the caller's words) and tells ``on_taken``
    whether it did, before sending (after ``end`` it drops it too, and says so): the tool
    learns whether the caller gets it. ``on_taken`` answers False when the frame is no longer
    wanted (its tool's call ended before the writer took it, and its outcome said nothing
    played): the writer drops it."""

    frame: Play | SendDigits
    turn: int
    # given True: withheld; answers False: not wanted any more
    on_taken: Callable[[bool], bool] = field(compare=False, repr=False)


Outgoing = Outbound | Timed | FromTool      # what the relay writer's channel carries


# ------------------------------------------------------ interrupt_handler -> llm_streamer


@dataclass(frozen=True, slots=True)
class UserSaid:
    """A final transcript: starts a turn, superseding any turn in flight."""

    text: str
    lang: str = ""
    received_at: float | None = None      # trio.current_time() when the prompt arrived

    def __post_init__(self) -> None:
        if not self.text.strip():
            raise ValueError("UserSaid needs non-blank text")


@dataclass(frozen=True, slots=True)
class KeyPressed:
    """DTMF input, after buffering: one key, or a multi-digit entry ended by its terminator."""

    digits: str
    received_at: float | None = None

    def __post_init__(self) -> None:
        if not self.digits:
            raise ValueError("KeyPressed needs at least one digit")

    def as_words(self) -> str:
        """How the entry reaches the history and the model."""
        return f"(The caller pressed {self.digits} on the keypad.)"


@dataclass(frozen=True, slots=True)
class BargeIn:
    """The caller cut into our speech. ``heard`` is what Twilio says was played (stripped),
    or None when Twilio did not say: then ``played``, what tokensPlayed reported, from the
    record's start and from each later turn start (``actors.played``), stands in for it, and
    with none of those fitting a reply, what we sent is what counts.

    ``duration_ms`` (durationUntilInterruptMs: how long the agent's audio played) is not
    turned into words heard: that needs the voice's speaking rate, which differs by provider,
    voice, language (some have no spaces to count) and SSML, a spoken-out number takes longer
    than its digits, and Twilio does not say where the duration starts when a reply queued
    behind another. An estimate wrong either way corrupts the history (too short and the
    model repeats what the caller heard), where what was sent errs one way only. It says
    only whether audio played when ``heard`` is empty: a tool's ``play``, whose words before
    it were then heard (``actors.heard_audio``)."""

    heard: str | None
    duration_ms: int | None = None
    played: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Reprompt:
    """The caller has been silent too long: ask whether they are still there."""

    text: str


@dataclass(frozen=True, slots=True)
class EndCall:
    """End the session politely: say ``text``, then send ``end`` with ``reason``."""

    text: str
    reason: str


TurnCommand = UserSaid | KeyPressed | BargeIn | Reprompt | EndCall


# ------------------------------------------------------ llm_streamer <-> tool_executor


# What the model asks for is what the executor runs: one type, not a copy of it.
ToolCall = ToolUseRequest


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    tool_use_id: str
    name: str
    status: Literal["success", "error"]
    content: Mapping[str, Any] | str       # a JSON object on success, a reason on error
    side_effect: bool = False
    duration_s: float = 0.0
    ends_call: bool = False
    spoke: bool = False             # it sent the caller something itself (audio, digits)

    def __post_init__(self) -> None:
        if self.status == "error" and not (isinstance(self.content, str) and self.content):
            raise ValueError("an error outcome needs a non-empty reason")

    def to_block(self) -> dict[str, Any]:
        """The Converse ``toolResult`` block for this outcome."""
        content: list[dict[str, Any]]
        if isinstance(self.content, str):
            content = [{"text": self.content}]
        else:
            content = [{"json": dict(self.content)}]
        return {"toolResult": {"toolUseId": self.tool_use_id, "content": content,
                               "status": self.status}}


@dataclass(frozen=True, slots=True, eq=False)
class ToolBatch:
    """The tool uses of one model reply. The executor runs them concurrently and sends one
    outcome per call on ``results`` (buffered to ``len(calls)`` so it never blocks). Setting
    ``abandoned`` (the turn was cancelled) cancels the calls without side effects; side-effect
    calls, and calls that already sent ``end``, run on, shielded, and still report."""

    calls: tuple[ToolCall, ...]
    results: trio.MemorySendChannel[ToolOutcome]
    abandoned: trio.Event = field(default_factory=trio.Event)
    turn: int = 0                   # the turn that asked (CutMarks' number): see FromTool
    # set once the writer has taken a call's audio, digits or ``end``: the caller is not
    # waiting in silence (or the session is over), so no filler is said (actors.tool_filler)
    sounded: trio.Event = field(default_factory=trio.Event)
