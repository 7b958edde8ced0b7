"""What one turn says: tokens go to the relay writer as they arrive, and the speaker remembers
exactly what was handed over, because that (not what the model generated) is what the caller
can have heard.
"""

from __future__ import annotations

import trio

from actors.messages import Outbound, Text

SPLIT = " "


class Speaker:
    def __init__(self, outbound: trio.MemorySendChannel[Outbound]) -> None:
        self._outbound = outbound
        self._segment: list[str] = []       # text since the last tool round
        self.spoke = False
        self.first_token_at: float | None = None

    @property
    def segment(self) -> str:
        return "".join(self._segment)

    def new_segment(self) -> None:
        self._segment = []

    async def say(self, token: str) -> None:
        """Hand one token to the writer. A cancel while waiting means it was not sent."""
        if not token:
            return
        if not self._segment and self.spoke and not token[0].isspace():
            token = " " + token             # a new segment after a tool round: keep words apart
        await self._outbound.send(Text(token))
        self._segment.append(token)
        if not self.spoke:
            self.spoke = True
            self.first_token_at = trio.current_time()

    async def say_text(self, text: str) -> None:
        """Speak a fixed sentence (a fallback or a DTMF reply) as word tokens."""
        for token in split_tokens(text):
            await self.say(token)

    async def close(self) -> None:
        """Close the talk cycle. The writer drops it when nothing was spoken."""
        await self._outbound.send(Text("", last=True))


def split_tokens(text: str) -> list[str]:
    """'We open at nine' -> ['We', ' open', ' at', ' nine']: spaces lead, as models stream."""
    words = text.split(SPLIT)
    return [words[0], *(SPLIT + w for w in words[1:])] if text else []
