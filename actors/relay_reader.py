"""WebSocket frames in -> typed messages out, in arrival order.

A frame we cannot use is counted and logged (reason, type, size; never content) and dropped:
one bad frame must not end the call. Lines about frames are budgeted per call (``FrameStats``):
the first few of each kind, the rest counted in the "call ended" line. The reader returns
when the peer closes the socket, which is how a hang-up reaches the supervisor.
"""

from __future__ import annotations

import contextvars
import logging
import re
from collections import Counter
from dataclasses import replace
from typing import assert_never

import trio

from actors.channel import Sends
from actors.messages import (
    ConfigUpdated,
    Dtmf,
    Inbound,
    Info,
    Interrupt,
    Prompt,
    RelayErrorReport,
    Setup,
    SpeakerEvent,
    TokensPlayed,
)
from actors.relay_socket import LooksFirst, RelaySocket
from actors.turn_slot import CutMarks
from voiceagent.errors import RelayBroken
from voiceagent.relay.protocol import Rejected, parse_frame

log = logging.getLogger(__name__)


LOGGABLE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,40}")
MAX_CONSECUTIVE_REJECTS = 10     # Twilio's own rule for what it receives: then it hangs up
# Only frames that are not ConversationRelay at all count toward that limit. Twilio adds
# message types (and fields) over time: a type or a field we do not know is counted and
# ignored, whatever the number, and never ends a call.
WARN_REJECTS_PER_REASON = 5     # lines per call and kind; more are counted, logged at DEBUG
MALFORMED = frozenset({"binary", "too_large", "too_deep", "bad_json", "not_object",
                       "missing_type"})


class FrameStats:
    """Per-call frame counters; the metrics layer sums them across calls. Also the call's
    budget of lines about frames: a peer sends frames at wire speed, and a line per frame,
    each saying the same thing, was ~550 lines a second from one socket (measured)."""

    def __init__(self) -> None:
        self.received = 0
        self.rejected: Counter[str] = Counter()
        self.noted: Counter[str] = Counter()     # frames used, or ignored, with a line
        self.consecutive_rejects = 0
        self.abusive = False            # closed for sending junk only
        self.dropped = False            # the socket was lost, not closed: RelayBroken.dropped
        # info events this release has no type for, by name (Twilio adds them over time)
        self.other_info: Counter[str] = Counter()

    def reject(self, rejected: Rejected) -> None:
        if rejected.reason in MALFORMED:
            self.consecutive_rejects += 1
        # lines for the first few of each reason only: a message type Twilio adds, sent a
        # few times a second, would be thousands of warnings per call
        self.count_rejected(rejected.reason, "frame rejected", reason=rejected.reason,
                            frame_type=rejected.frame_type, size=rejected.size,
                            problem=rejected.problem)

    def count_rejected(self, reason: str, event: str, /, **fields: object) -> None:
        """A frame (or a field of one) we cannot use, counted by ``reason`` (the metrics'
        label), with a line for the first few of each reason in this call."""
        self.rejected[reason] += 1
        _budgeted(self.rejected[reason], logging.WARNING, event, fields)

    def note(self, kind: str, event: str, /, *, level: int = logging.WARNING,
             logger: logging.Logger = log, **fields: object) -> None:
        """A line about a frame (a second setup, an error Twilio reported): the first few of
        each ``kind`` in this call, the rest counted (the "call ended" line sums them)."""
        self.noted[kind] += 1
        _budgeted(self.noted[kind], level, event, fields, logger)

    def not_logged(self) -> dict[str, int]:
        """Lines about frames left out of the log (at DEBUG only), by reason or kind."""
        return {kind: count - WARN_REJECTS_PER_REASON
                for counts in (self.rejected, self.noted) for kind, count in counts.items()
                if count > WARN_REJECTS_PER_REASON}


def _budgeted(seen: int, level: int, event: str, fields: dict[str, object],
              logger: logging.Logger = log) -> None:
    """The first few of a kind say what is wrong; the rest are counted, logged at DEBUG."""
    logger.log(level if seen <= WARN_REJECTS_PER_REASON else logging.DEBUG, event,
               extra={**fields, "more_counted_only": seen == WARN_REJECTS_PER_REASON},
               stacklevel=3)


def _count_unusable_ts(stats: FrameStats,
                       event: SpeakerEvent | TokensPlayed | ConfigUpdated | Info) -> None:
    """An info event whose ``ts`` could not be read is passed on without it, and counted."""
    if event.problem is not None:
        stats.count_rejected("info_field", "info field unusable, taken as absent",
                             problem=event.problem)


def _loggable(name: str) -> str:
    return name if LOGGABLE_NAME.fullmatch(name) else "<unprintable>"


async def run(*, socket: RelaySocket, inbound: Sends[Inbound],
              stats: FrameStats, max_frame_bytes: int, marks: CutMarks | None = None) -> None:
    """Owns ``inbound``: closing it tells the interrupt handler there is no more input."""
    if marks is None or not isinstance(socket, LooksFirst):
        await _read(socket, inbound, stats, max_frame_bytes, marks)
        return
    cuts, context = marks, contextvars.copy_context()

    def look(text: str) -> None:
        # in the call's context: the cut's lines carry its CallSid, in hypercorn's task too
        context.run(_cut_ahead, cuts, max_frame_bytes, text)

    socket.look_first(look)
    try:
        await _read(socket, inbound, stats, max_frame_bytes, marks)
    finally:
        socket.look_first(None)


def _cut_ahead(marks: CutMarks, max_frame_bytes: int, text: str) -> None:
    """An interrupt cut where it arrived, before the reader reads it (``LooksFirst``)."""
    if "interrupt" in text and type(parse_frame(text, max_bytes=max_frame_bytes)) is Interrupt:
        marks.cut_ahead()


async def _read(socket: RelaySocket, inbound: Sends[Inbound],
                stats: FrameStats, max_frame_bytes: int, marks: CutMarks | None) -> None:
    with inbound:
        while True:
            try:
                frame = await socket.receive()
            except RelayBroken as err:
                stats.dropped = err.dropped
                log.info("relay closed by peer", extra={"frames": stats.received,
                                                        "dropped": err.dropped,
                                                        "close_code": err.code})
                return
            received_at = trio.current_time()
            stats.received += 1
            message = parse_frame(frame, max_bytes=max_frame_bytes)
            match message:
                case Rejected():
                    stats.reject(message)
                    if stats.consecutive_rejects >= MAX_CONSECUTIVE_REJECTS:
                        log.warning("closing: only unusable frames",
                                    extra={"consecutive": stats.consecutive_rejects})
                        stats.abusive = True
                        return
                    continue
                case Setup():
                    stats.note("second_setup", "second setup ignored")
                case Interrupt():
                    if marks is not None:
                        marks.cut_read()        # before anything else runs: see CutMarks
                    if message.problem is not None:
                        stats.count_rejected("interrupt_field", "interrupt field unusable, "
                                             "taken as absent", problem=message.problem)
                    await inbound.send(message)
                case Prompt(last=True) | Dtmf():
                    await inbound.send(replace(message, received_at=received_at))
                case Info(name=name):
                    stats.other_info[_loggable(name)] += 1       # counted, then passed on
                    _count_unusable_ts(stats, message)
                    await inbound.send(message)
                case SpeakerEvent() | TokensPlayed() | ConfigUpdated():
                    _count_unusable_ts(stats, message)
                    await inbound.send(message)
                case Prompt() | RelayErrorReport():
                    await inbound.send(message)
                case _:
                    assert_never(message)
            stats.consecutive_rejects = 0
