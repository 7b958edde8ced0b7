"""One turn in flight: each turn runs in its own cancel scope, and starting the next one first
cancels the current one and waits for it to finish recording what the caller heard.

Waiting matters: the cancelled turn writes its partial reply (and its side-effect tool calls, a
stand-in result for one still running: ``settling``) to the history in its cleanup, and the
next turn must see that history, not race it. Only the
llm_streamer task calls ``restart`` and ``cancel_and_wait``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from voiceagent.llm.base import ClosesNow
from voiceagent.logs import turn_var

log = logging.getLogger(__name__)

MAX_PENDING_CUTS = 64   # interrupts read but not yet taken by the streamer; the channels
                        # between them hold far fewer. Past it the oldest go, and a barge-in
                        # then cuts a newer turn: the behaviour before turns were numbered.

Turn = Callable[[], Awaitable[None]]
TURN_TASK = "turn"      # each turn task's name: a constant, not a string trio formats per turn


class CutMarks:
    """Which turn is speaking, and whether the caller has cut it off.

    An interrupt travels reader -> interrupt handler -> streamer before the turn is
    cancelled; meanwhile a token already handed to the writer would still go out. So the
    relay reader marks the cut the moment it reads the interrupt (``cut``), before anything
    else runs, and the writer checks the mark right before each send (``speaking_cut``):
    once the reader has read an interrupt, no text of the cut turn leaves the writer. The
    same moment cancels the speaking turn's scope and closes its model stream (``upstream``:
    a stream that can be closed from here, ``ClosesNow``), so Bedrock gets the FIN before
    any other task runs: not after the interrupt has passed through the handler and the
    streamer, nor a pass later when the cut turn's task runs its cleanup (each a pass of the
    scheduler, milliseconds at 1000 calls). The streamer's barge-in then finds the turn
    cancelled and waits for its cleanup as before. The slot counts turns (``turn_started``),
    so the next turn speaks freely; each cut remembers the turn it cut (``take_cut``), since
    a goodbye may start before the barge-in arrives and must not be taken for the turn cut.
    When the socket lets the reader look at a frame where it arrives (``LooksFirst``), an
    interrupt that is the next frame the reader will read is cut there (``cut_ahead``), a
    pass before the reader reads it, which then does not cut again (``cut_read``).
    Plain attributes, no locks: everything runs in one trio thread and nothing here awaits.
    """

    __slots__ = ("_ahead", "_cut_through", "_cuts", "_earlier", "_ended", "_recorded",
                 "_scope", "_silent_goodbye", "_turn", "_upstream", "withheld")

    def __init__(self) -> None:
        self._turn = 0                  # turns started so far; the newest may be speaking
        self._cut_through = -1          # the newest turn the caller cut off
        # per cut, the turn it cut, oldest first: a list, since an empty deque is 760 bytes
        # (a block allocated up front) in every call, and a call has a cut or two pending
        self._cuts: list[int] = []
        self._scope: trio.CancelScope | None = None     # the newest turn's
        self._upstream: ClosesNow | None = None         # its model stream, while open
        self.withheld = ""              # the speaking turn's words the writer did not send
        self._recorded = 0              # of ``withheld``, what ``sent_part`` took off
        self._earlier: dict[int, str] = {}  # a cut turn's unrecorded words, once superseded
        self._silent_goodbye = False    # the newest turn is a goodbye not a word of which is out
        self._ended = False             # the writer took `end`: nothing more is sent
        self._ahead = 0                 # interrupts cut before the reader read them

    def turn_started(self, scope: trio.CancelScope | None = None, *,
                     goodbye: bool = False) -> int:
        """Returns the new turn's number. Words withheld from the turn before, which it had
        recorded (``take_unrecorded``), are kept for its barge-in: a goodbye can start
        between the reader's cut and the barge-in that records it."""
        if unrecorded := self.withheld[self._recorded:]:
            self._earlier[self._turn] = unrecorded
        self._turn += 1
        self._scope = scope
        self._upstream = None
        self._silent_goodbye = goodbye
        self.withheld = ""
        self._recorded = 0
        return self._turn

    def turn_ended(self, scope: trio.CancelScope) -> None:
        """The turn is done: a cut has nothing left to cancel, so let its scope go."""
        if self._scope is scope:
            self._scope = self._upstream = None

    def upstream(self, stream: object) -> None:
        """The newest turn opened ``stream`` (a model round): a cut closes it at once, if it
        can be closed from another task (``ClosesNow``)."""
        self._upstream = stream if isinstance(stream, ClosesNow) else None

    def upstream_done(self, stream: object) -> None:
        if self._upstream is stream:
            self._upstream = None

    def cut(self) -> None:
        """An interrupt is about the speech Twilio plays: a goodbye that has not sent a word
        yet is not what the caller cut (the reply before it is), and goes out whole after
        it, so the caller learns why the call ends. Any other turn stops: the caller is
        speaking, and a new prompt follows."""
        through = self._turn - 1 if self._silent_goodbye else self._turn
        self._cut_through = through
        if len(self._cuts) >= MAX_PENDING_CUTS:
            del self._cuts[0]                           # as a full deque(maxlen) drops
        self._cuts.append(through)
        if self._scope is not None and through == self._turn:   # a finished turn's: ignored
            self._scope.cancel(reason="barge-in")       # first: a read under way ends cut
            if (upstream := self._upstream) is not None:
                self._upstream = None
                named = turn_var.set(self._turn)        # its lines are the cut turn's
                try:
                    upstream.close_now()
                finally:
                    turn_var.reset(named)

    def cut_ahead(self) -> None:
        """``cut``, for an interrupt the reader has yet to read, which must then not cut
        again (``cut_read``): each cut is paired with one barge-in (``take_cut``)."""
        self.cut()
        self._ahead += 1

    def cut_read(self) -> None:
        """The reader read an interrupt: cut, unless it was cut ahead (``cut_ahead``)."""
        if self._ahead:
            self._ahead -= 1
        else:
            self.cut()

    def end_taken(self) -> None:
        """The writer took ``end`` (whoever sent it: a goodbye, the endCall or handoff tool):
        no frame after it is sent, so no turn may start and no word after it is said."""
        self._ended = True

    @property
    def ended(self) -> bool:
        return self._ended

    def spoke(self) -> None:
        """The writer sent a word of the newest turn."""
        self._silent_goodbye = False

    def take_cut(self) -> int:
        """The turn the oldest barge-in not yet taken cut off: the one speaking when the
        reader read its interrupt, which the barge-in reaches after a hop through the
        handler, by when a goodbye or a re-prompt may have started (those went out after
        the interrupt: heard, not cut). A barge-in the reader never marked cuts the newest
        turn."""
        return self._cuts.pop(0) if self._cuts else self._turn

    @property
    def turn(self) -> int:
        """The newest turn's number (0 before the first: the greeting Twilio speaks)."""
        return self._turn

    def withhold(self, text: str) -> None:
        """The writer dropped ``text`` of the cut turn: never heard, so never in history."""
        self.withheld += text

    def sent_part(self, segment: str) -> str:
        """``segment`` (what the speaking turn handed the writer, in order) less the words
        the writer withheld, which are always its end."""
        if self.withheld and segment.endswith(self.withheld):
            self._recorded = len(self.withheld)
            return segment[:len(segment) - len(self.withheld)]
        return segment

    def take_unrecorded(self, turn: int) -> str:
        """Words the writer withheld from ``turn`` after the turn recorded what it said (the
        turn's last frame was handed over, the turn ended and recorded it, and only then did
        the writer check the frame against a cut the reader had just marked), each returned
        once. They were never heard: the streamer takes
        them off the history when Twilio does not say what was heard."""
        if turn == self._turn:
            unrecorded, self._recorded = self.withheld[self._recorded:], len(self.withheld)
        else:
            unrecorded = self._earlier.get(turn, "")
        for older in [t for t in self._earlier if t <= turn]:
            del self._earlier[older]
        return unrecorded

    def take_all_unrecorded(self) -> list[str]:
        """At the end of the call: every turn's unrecorded words (``take_unrecorded``), the
        newest turn's first; an earlier turn's are there when no barge-in took them (the
        socket broke, and a prompt already read started another turn)."""
        earlier = [self._earlier[t] for t in sorted(self._earlier, reverse=True)
                   if t < self._turn]
        return [w for w in (self.take_unrecorded(self._turn), *earlier) if w]

    @property
    def turn_running(self) -> bool:
        """A turn is in flight (the model, a tool): the silence is ours, not the caller's."""
        return self._scope is not None

    def cut_off(self, turn: int) -> bool:
        """The caller has cut ``turn`` off, or a turn after it: Twilio dropped everything
        queued at that interrupt, so nothing of ``turn`` is to start after it."""
        return turn <= self._cut_through

    @property
    def speaking_cut(self) -> bool:
        return self._cut_through == self._turn

    def speak(self) -> int | None:
        """The writer is about to send a word, with no await before the send: None when the
        caller has cut the newest turn off (``speaking_cut``: the word is withheld), else the
        turn's number, and the turn has spoken (``spoke``). One call where there were three,
        on the path every word takes."""
        if self._cut_through == self._turn:
            return None
        self._silent_goodbye = False
        return self._turn


class TurnSlot:
    """The streamer's handle on the turn in flight. A finished turn's scope and event are let
    go at once: at thousands of idle calls, keeping each call's last ones adds up."""

    __slots__ = ("_done", "_marks", "_nursery", "_scope")

    def __init__(self, nursery: trio.Nursery, marks: CutMarks | None = None) -> None:
        self._nursery = nursery
        self._marks = marks or CutMarks()
        self._scope: trio.CancelScope | None = None
        self._done: trio.Event | None = None

    @property
    def busy(self) -> bool:
        return self._done is not None and not self._done.is_set()

    async def restart(self, turn: Turn, *, reason: str = "superseded",
                      goodbye: bool = False) -> int:
        """Returns the new turn's number (``CutMarks.turn_started``)."""
        await self.cancel_and_wait(reason=reason)
        self._scope, self._done = trio.CancelScope(), trio.Event()
        number = self._marks.turn_started(self._scope, goodbye=goodbye)
        self._nursery.start_soon(self._run_scoped, turn, self._scope, self._done,
                                 name=TURN_TASK)
        return number

    async def cancel_and_wait(self, *, reason: str) -> None:
        """Cancel the turn in flight (if any) and wait until its cleanup has run."""
        if self._scope is not None and self._done is not None and not self._done.is_set():
            # logged from the streamer's task, whose context says turn 0: named for the
            # turn it cuts, as that turn's own "turn done" is
            named = turn_var.set(self._marks.turn)
            try:
                log.info("turn cancelled", extra={"reason": reason})
            finally:
                turn_var.reset(named)
            self._scope.cancel(reason=reason)
            await self._done.wait()
        self._scope = None

    async def _run_scoped(self, turn: Turn, scope: trio.CancelScope, done: trio.Event) -> None:
        """The scope is made before the task starts, so a cancel that comes first (a
        barge-in before the turn ran) ends the turn at its first checkpoint."""
        try:
            with scope:
                await turn()
        finally:
            done.set()
            if self._scope is scope:        # not superseded: nothing else refers to it
                self._scope = self._done = None
            self._marks.turn_ended(scope)
