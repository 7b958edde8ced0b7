"""WebSocket frames in -> typed messages out, in arrival order.

A frame we cannot use is counted and logged (reason, type, size; never content) and dropped:
one bad frame must not end the call. The reader returns when the peer closes the socket,
which is how a hang-up reaches the supervisor.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import replace
from typing import assert_never

import trio

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
from actors.relay_socket import RelaySocket
from actors.turn_slot import CutMarks
from voiceagent.errors import RelayBroken
from voiceagent.relay.protocol import Rejected, parse_frame

log = logging.getLogger(__name__)


LOGGABLE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,40}")
MAX_CONSECUTIVE_REJECTS = 10     # Twilio's own rule for what it receives: then it hangs up
# Only frames that are not ConversationRelay at all count toward that limit. Twilio adds
# message types (and fields) over time: a type or a field we do not know is counted and
# ignored, whatever the number, and never ends a call.
WARN_REJECTS_PER_REASON = 5     # per call; more are counted, logged at DEBUG
MALFORMED = frozenset({"binary", "too_large", "too_deep", "bad_json", "not_object",
                       "missing_type"})


class FrameStats:
    """Per-call frame counters; the metrics layer sums them across calls."""

    def __init__(self) -> None:
        self.received = 0
        self.rejected: Counter[str] = Counter()
        self.consecutive_rejects = 0
        self.abusive = False            # closed for sending junk only
        self.dropped = False            # the socket was lost, not closed: RelayBroken.dropped
        # info events this release has no type for, by name (Twilio adds them over time)
        self.other_info: Counter[str] = Counter()

    def reject(self, rejected: Rejected) -> None:
        self.rejected[rejected.reason] += 1
        if rejected.reason in MALFORMED:
            self.consecutive_rejects += 1
        # the first few of each reason say what is wrong; the rest are only counted (the
        # "call ended" line sums them), or a message type Twilio adds, sent a few times a
        # second, would be thousands of warnings per call
        seen = self.rejected[rejected.reason]
        level = logging.WARNING if seen <= WARN_REJECTS_PER_REASON else logging.DEBUG
        log.log(level, "frame rejected", extra={
            "reason": rejected.reason, "frame_type": rejected.frame_type,
            "size": rejected.size, "problem": rejected.problem,
            "more_counted_only": seen == WARN_REJECTS_PER_REASON})


def _loggable(name: str) -> str:
    return name if LOGGABLE_NAME.fullmatch(name) else "<unprintable>"


async def run(*, socket: RelaySocket, inbound: trio.MemorySendChannel[Inbound],
              stats: FrameStats, max_frame_bytes: int, marks: CutMarks | None = None) -> None:
    """Owns ``inbound``: closing it tells the interrupt handler there is no more input."""
    with inbound:
        while True:
            try:
                frame = await socket.receive()
            except RelayBroken as err:
                stats.dropped = err.dropped
                log.info("relay closed by peer", extra={"frames": stats.received,
                                                        "dropped": err.dropped})
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
                    log.warning("second setup ignored")
                case Interrupt():
                    if marks is not None:
                        marks.cut()             # before anything else runs: see CutMarks
                    if message.problem is not None:
                        stats.rejected["interrupt_field"] += 1
                        log.warning("interrupt field unusable, taken as absent",
                                    extra={"problem": message.problem})
                    await inbound.send(message)
                case Prompt(last=True) | Dtmf():
                    await inbound.send(replace(message, received_at=received_at))
                case Info(name=name):
                    stats.other_info[_loggable(name)] += 1       # counted, then passed on
                    await inbound.send(message)
                case (Prompt() | SpeakerEvent() | TokensPlayed() | ConfigUpdated()
                      | RelayErrorReport()):
                    await inbound.send(message)
                case _:
                    assert_never(message)
            stats.consecutive_rejects = 0
