"""What one turn says: tokens go to the relay writer, and the speaker remembers exactly what
was handed over, because that (not what the model generated) is what the caller can have heard.

A reply's first clause, or its first ``STREAMED_CHARS`` characters (and the same after a tool
round), streams token by token: it is the latency the caller notices, whatever the TTS needs
before it starts speaking (tokens that had arrived together go in one frame: ``say_together``).
Later tokens are held briefly and sent together, at the end of a clause or when ``hold_s`` has
passed, whichever comes first (or, when the model's stream can hand over what has arrived,
everything that came in the window at its end: ``hold``). The caller is by then listening to
the first clause, and ConversationRelay speaks clause by clause, so the hold is not heard; it
cuts the frames (and their CPU, here and at Twilio).
Held text that was never sent is dropped on a cut and is not in ``segment``: the history
keeps only what could have been heard.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import trio

from actors.channel import Sends
from actors.messages import Outgoing, Text, Timed
from actors.relay_control import ReplyFlags

SPLIT = " "
CLAUSE_ENDS = (".", ",", "!", "?", ";", ":", "\n")
SENTENCE_ENDS = (".", "!", "?", "\u2026", "\u3002", "\uff01", "\uff1f")   # ... and CJK . ! ?
CLOSERS = "\"')]\u00bb\u201d\u2019"        # a quote or bracket after a sentence's end
STREAMED_CHARS = 60         # a first clause longer than this is held from here on
MAX_HELD_CHARS = 400        # keep frames small: Twilio's frame size limit is not documented


class Speaker:
    def __init__(self, outbound: Sends[Outgoing], hold_s: float = 0.0) -> None:
        self._outbound = outbound
        self._hold_s = hold_s
        self._segment: list[str] = []       # text sent since the last tool round
        self._clause_sent = False           # the segment's first clause is out: hold now
        self._sent_chars = 0
        self._held: list[str] = []          # received, not yet sent
        self._held_chars = 0
        self._flush_at = math.inf
        self._closed = False
        self._apart = False                 # a fixed sentence meets other words: a space
        self._aside = 0                     # of ``_segment``, the parts a hold line sent
        self._timed = True                  # the next frame with text is the reply's first
        self.spoke = False
        self.first_token_at: float | None = None        # handed to the writer
        self.first_token_sent_at: float | None = None   # on the socket (the writer says)
        # interruptible/preemptible on the frames sent from now on (a use case's reply
        # controls: an order confirmation the caller cannot cut, a filler a reply may)
        self.flags = ReplyFlags()

    @property
    def segment(self) -> str:
        return "".join(self._segment)

    @property
    def mid_sentence(self) -> bool:
        """What was said since the last tool round (held text too) stops inside a sentence."""
        said = "".join(self._segment + self._held).rstrip().rstrip(CLOSERS)
        return bool(said) and not said.endswith(SENTENCE_ENDS)

    @property
    def quiet(self) -> bool:
        """Nothing sent or held since the last tool round (or the turn's start) but a hold
        line: the model has not spoken in this round."""
        return not self._held and len(self._segment) == self._aside

    @property
    def flush_at(self) -> float:
        """When held text must go out even if no more tokens come (``inf``: nothing held)."""
        return self._flush_at

    def new_segment(self) -> None:
        self._segment = []
        self._aside = 0
        self._clause_sent = False
        self._sent_chars = 0

    async def say(self, token: str) -> None:
        """Send or hold one token. A cancel while sending means it was not sent."""
        if not token:
            return
        first_of_segment = not self._segment and not self._held
        if ((first_of_segment and self.spoke) or self._apart) and not token[0].isspace():
            token = " " + token             # a new segment after a tool round: keep words apart
        self._apart = False
        if not self._clause_sent or self._hold_s <= 0:
            await self._send(token)
            self._sent_chars += len(token)
            self._clause_sent = _ends_clause(token) or self._sent_chars >= STREAMED_CHARS
            return
        self._add_held(token)
        if (_ends_clause(token) or self._held_chars >= MAX_HELD_CHARS
                or trio.current_time() >= self._flush_at):
            await self.flush()

    async def say_together(self, tokens: Sequence[str]) -> None:
        """Tokens that arrived together, said as ``say`` would say them one by one, but a
        clause's worth in one call: the streamed ones go in one frame, not one each. Split
        after each clause end, so what follows the first clause is held as ever, and at
        ``MAX_HELD_CHARS``, so a frame is no larger than a held one."""
        run: list[str] = []
        chars = 0
        for token in tokens:
            run.append(token)
            chars += len(token)
            if _ends_clause(token) or chars >= MAX_HELD_CHARS:
                await self.say("".join(run))
                run, chars = [], 0
        if run:
            await self.say("".join(run))

    async def hold(self, tokens: Iterable[str]) -> None:
        """Add tokens to what the next ``flush`` sends (a held window read all at once, in
        one call: not a call and a coroutine per token); only the size cap sends early."""
        for token in tokens:
            if token:
                # ``_add_held``, inline: a call less for each token of each window
                if not self._held:
                    self._flush_at = trio.current_time() + self._hold_s
                self._held.append(token)
                self._held_chars += len(token)
                if self._held_chars >= MAX_HELD_CHARS:
                    await self.flush()

    def _add_held(self, token: str) -> None:
        if not self._held:
            self._flush_at = trio.current_time() + self._hold_s
        self._held.append(token)
        self._held_chars += len(token)

    async def say_text(self, text: str) -> None:
        """Speak a fixed sentence (a fallback or a DTMF reply): it is whole, so nothing of it
        is left held. Words before or after it (the model's) are kept apart from it."""
        self._apart = bool(self._segment or self._held)
        for token in split_tokens(text):
            await self.say(token)
        await self.flush()
        self._apart = True

    async def say_aside(self, text: str) -> None:
        """Say a hold line before the model's reply (``actors.hold_line``): the reply is still
        to come, so the round stays ``quiet``, the reply's first clause then streams token by
        token as if nothing had been said (those are the words the caller waits for), and
        its first frame, not this, is the turn's first token for its latency: a hold line
        must not hide a slow model from the latency alarm. With the TwiML's flags, as a
        filler: a tool's ``reply`` controls are for the model's reply."""
        timed, self._timed = self._timed, False
        flags, self.flags = self.flags, ReplyFlags()
        try:
            await self.say_text(text)
        finally:
            self._timed = timed
            self.flags = flags
            self._aside = len(self._segment)
            self._clause_sent = False
            self._sent_chars = 0

    async def flush(self) -> None:
        """Send what is held now (the hold expired, a tool round starts, an apology follows)."""
        if self._held:
            await self._send("".join(self._held))

    async def finish(self) -> None:
        """The reply is complete: send what is held with ``last: true`` (one frame instead of
        two), or close the talk cycle. The writer drops a closer when nothing was spoken."""
        if self._closed:
            return
        text = "".join(self._held)
        await self._send(text, last=True)
        self._closed = True

    async def close(self) -> None:
        """Close the talk cycle after a cut or an error; held text is dropped, never sent."""
        if self._closed:
            return
        self._drop_held()
        await self._outbound.send(Text("", last=True))
        self._closed = True

    async def _send(self, text: str, *, last: bool = False) -> None:
        first = bool(text) and self._timed
        frame = Text(text, last=last, interruptible=self.flags.interruptible,
                     preemptible=self.flags.preemptible)
        await self._outbound.send(Timed(frame, self._first_sent) if first else frame)
        self._drop_held()
        if text:
            self._segment.append(text)
            self.spoke = True
            if first:
                self._timed = False
                self.first_token_at = trio.current_time()

    def _first_sent(self, at: float) -> None:
        self.first_token_sent_at = at

    def _drop_held(self) -> None:
        self._held.clear()
        self._held_chars = 0
        self._flush_at = math.inf


def _ends_clause(token: str) -> bool:
    return token.rstrip(" ").endswith(CLAUSE_ENDS)


def split_tokens(text: str) -> list[str]:
    """'We open at nine' -> ['We', ' open', ' at', ' nine']: spaces lead, as models stream."""
    words = text.split(SPLIT)
    return [words[0], *(SPLIT + w for w in words[1:])] if text else []
