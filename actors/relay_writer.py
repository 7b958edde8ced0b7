"""The only code that sends on the relay socket, so frames never interleave.

It also keeps the talk-cycle rule in one place: a cycle opened by a token is closed by exactly
one ``last: true`` frame, a closing frame with nothing to close is dropped, an ``end`` first
closes an open cycle, and nothing is sent after ``end``.
"""

from __future__ import annotations

import logging

import trio

from actors.messages import End, Outbound, Text
from actors.relay_socket import RelaySocket
from voiceagent.errors import RelayBroken
from voiceagent.relay.protocol import encode

log = logging.getLogger(__name__)


class WriterStats:
    def __init__(self) -> None:
        self.frames = 0
        self.tokens = 0
        self.dropped_after_end = 0
        self.ended = False                # we sent `end`


async def run(*, socket: RelaySocket, outbound: trio.MemoryReceiveChannel[Outbound],
              stats: WriterStats) -> None:
    """Returns when every sender closed its end, or when the peer went away."""
    cycle_open = False
    ended = False
    with outbound:
        async for message in outbound:
            if ended:
                stats.dropped_after_end += 1
                continue
            frames: list[Outbound] = [message]
            match message:
                case Text(token="", last=True) if not cycle_open:
                    continue
                case Text(last=last):
                    cycle_open = not last
                case End() if cycle_open:
                    frames.insert(0, Text("", last=True))
                    cycle_open = False
            try:
                for frame in frames:
                    await socket.send(encode(frame))
                    stats.frames += 1
                    if isinstance(frame, Text) and frame.token:
                        stats.tokens += 1
                        if frame.on_sent is not None:
                            frame.on_sent(trio.current_time())
            except RelayBroken:
                log.info("relay writer stopped: peer gone")
                return
            if isinstance(message, End):
                ended = stats.ended = True
                log.info("end sent", extra={"handoff": message.handoff_data is not None})
