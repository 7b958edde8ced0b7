"""What Twilio says it played (``tokensPlayed``), kept for an interrupt that does not say what
the caller heard (``utteranceUntilInterrupt`` left out).

A turn's start does not end what plays: with ``reportInputDuringAgentSpeech`` a "mhm" starts
a turn while a reply plays, and the new reply queues behind the rest of it. So the record is
kept from the last interrupt, or from Twilio saying the agent stopped speaking, and split
where each turn started: the heard words are all of it, or failing that (an earlier reply's
text Twilio reported other than we sent it) what played since a later turn's start. The
streamer fits them to the turns that may still be playing (``llm_streamer._Playing``).
"""

from __future__ import annotations

MAX_PLAYED_CHARS = 8000     # kept in all (a reply is far shorter); the oldest turns' go first
MAX_PLAYED_TURNS = 8        # as many turn starts as the streamer keeps (MAX_PLAYING)


class Played:
    __slots__ = ("_chars", "_turns")

    def __init__(self) -> None:
        self._turns: list[list[str]] = [[]]     # per turn start, what played after it
        self._chars = 0

    def add(self, text: str) -> None:
        text = text.strip()
        if not text:
            return
        self._turns[-1].append(text)
        self._chars += len(text) + 1
        while self._chars > MAX_PLAYED_CHARS and len(self._turns) > 1:
            self._forget_oldest()
        if self._chars > MAX_PLAYED_CHARS:      # one turn's flood: it stops growing
            self._chars -= len(self._turns[-1].pop()) + 1

    def turn_started(self) -> None:
        if self._turns[-1]:
            self._turns.append([])
        if len(self._turns) > MAX_PLAYED_TURNS:
            self._forget_oldest()

    def clear(self) -> None:
        """An interrupt (what played is now cut), or Twilio says the agent stopped speaking
        (everything queued has played)."""
        self._turns, self._chars = [[]], 0

    def heard(self) -> tuple[str, ...]:
        """What played since the record began, then since each later turn start: the longest
        first, each one once. Empty: nothing played."""
        options: list[str] = []
        for first in range(len(self._turns)):
            text = " ".join(t for turn in self._turns[first:] for t in turn)
            if text and text not in options:
                options.append(text)
        return tuple(options)

    def _forget_oldest(self) -> None:
        self._chars -= sum(len(t) + 1 for t in self._turns.pop(0))
