"""The only code that sends on the relay socket, so frames never interleave.

It also keeps the talk-cycle rule in one place: a cycle opened by a token is closed by exactly
one ``last: true`` frame, a closing frame with nothing to close is dropped, an ``end`` or a
new turn's first word first closes an open cycle, and nothing is sent after ``end``. And the
barge-in rule: once the relay reader has read an interrupt, no word of the cut turn is sent
(``CutMarks``); its closing frame still is, since it carries no word and closes the cycle.
Nor is a tool's audio or digits (``FromTool``) of that turn or an earlier one: the turn's
tools may run on after it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import assert_never

import trio

from actors.channel import Receives
from actors.messages import (
    Config,
    End,
    FromTool,
    Hints,
    Language,
    Outbound,
    Outgoing,
    Play,
    SendDigits,
    Text,
    Timed,
)
from actors.relay_socket import RelaySocket
from actors.turn_slot import CutMarks
from voiceagent.errors import RelayBroken
from voiceagent.handoff_data import hands_off
from voiceagent.relay.protocol import encode

log = logging.getLogger(__name__)


class WriterStats:
    def __init__(self) -> None:
        self.frames = 0
        self.tokens = 0
        self.dropped_after_end = 0
        self.dropped_after_cut = 0        # words of a turn the caller had cut off
        self.ended = False                # we sent `end`


async def run(*, socket: RelaySocket, outbound: Receives[Outgoing],
              stats: WriterStats, marks: CutMarks | None = None,
              on_end: Callable[[], None] | None = None,
              on_end_taken: Callable[[End], None] | None = None,
              stamp_end: Callable[[End], End] | None = None) -> None:
    """Returns when every sender closed its end, or when the peer went away. ``on_end``: told
    once ``end`` is on the socket (the supervisor then waits a while for Twilio to close).
    ``on_end_taken``: told as ``end`` is taken, before its send, which may fail: the agent
    ended the call either way, and a relay session that then fails must not be resumed.
    ``stamp_end``: the ``end`` sent (and told) in place of the one taken, whoever sent it
    (the language spoken, for ``/action``: ``voiceagent.handoff_language``)."""
    cycle_open = False
    cycle_turn = 0                      # the turn whose word opened the cycle (CutMarks)
    ended = False
    with outbound:
        while True:
            # not ``async for``: its ``__anext__`` is two Python frames more a frame sent
            try:
                outgoing = await outbound.receive()
            except trio.EndOfChannel:
                return
            message: Outbound
            on_sent: Callable[[float], None] | None = None
            if isinstance(outgoing, Timed):
                message, on_sent = outgoing.frame, outgoing.on_sent
            elif isinstance(outgoing, FromTool):
                message = outgoing.frame
                # as for a word: no await between this check and the send
                cut = not ended and marks is not None and marks.cut_off(outgoing.turn)
                # after `end`, dropped below: not played
                wanted = outgoing.on_taken(cut or ended)
                if cut:
                    stats.dropped_after_cut += 1
                    log.info("tool audio withheld: the caller cut its turn off",
                             extra={"kind": type(message).__name__})
                    continue
                if not wanted and not ended:    # its tool's call was over: the tool logs it
                    continue
            else:
                message = outgoing
            if ended:
                stats.dropped_after_end += 1
                if isinstance(message, Text) and message.token and marks is not None:
                    marks.withhold(message.token)   # never sent: never recorded as said
                continue
            if isinstance(message, End) and stamp_end is not None:
                message = stamp_end(message)
            turn: int | None = None         # the word's turn, from the marks (CutMarks)
            if (isinstance(message, Text) and message.token and marks is not None
                    and (turn := marks.speak()) is None):
                # Checked here, with no await between the check and the send (CutMarks).
                # The marks are the newest turn's: a frame is checked in the scheduler pass
                # after the writer takes it, before its turn's end can wake the streamer to
                # start another (two passes at least), so the newest turn is the frame's
                # own. An await between taking a frame and this check would break that.
                stats.dropped_after_cut += 1
                marks.withhold(message.token)
                if not message.last:
                    continue
                message, on_sent = Text("", last=True), None  # the words go, the cycle closes
            # else ``speak`` marked the turn as spoken: from here on, a cut is of this turn
            frames: list[Outbound] = [message]
            match message:
                case Text(token="", last=True) if not cycle_open:
                    continue
                case Text(token=token, last=last):
                    if turn is None:                    # a closer, or no marks
                        turn = marks.turn if marks is not None else 0
                    if token and cycle_open and turn != cycle_turn:
                        # the turn that opened it was cut and its closer dropped (a bounded
                        # send, the writer stuck on a slow Twilio): not in the next reply
                        frames.insert(0, Text("", last=True))
                        log.info("talk cycle closed for the turn before")
                    cycle_open, cycle_turn = not last, turn
                case End() if cycle_open:
                    frames.insert(0, Text("", last=True))
                    cycle_open = False
                case End() | Play() | SendDigits() | Language() | Config() | Hints():
                    pass
                case _:
                    assert_never(message)
            if isinstance(message, End):
                ended = True                    # taken: nothing after it goes out
                if marks is not None:
                    marks.end_taken()
                if on_end_taken is not None:
                    on_end_taken(message)
            try:
                for frame in frames:
                    await socket.send(encode(frame))
                    stats.frames += 1
                    if isinstance(frame, Text) and frame.token:
                        stats.tokens += 1
                    if frame is message and on_sent is not None:
                        on_sent(trio.current_time())
            except RelayBroken:
                log.info("relay writer stopped: peer gone")
                if isinstance(message, Text) and message.token and marks is not None:
                    marks.withhold(message.token)   # taken, never sent: not said
                return
            if isinstance(message, End):
                stats.ended = True
                # a goodbye may carry data too (the language stamp): not a handoff
                log.info("end sent", extra={"handoff": hands_off(message.handoff_data)})
                if on_end is not None:
                    on_end()
