"""A short sentence said when the model is slow to begin, so the caller does not sit in dead air.

When Bedrock's first event is late the caller heard nothing: the first attempt waits the
first-event timeout (3 s), a patient retry up to the read timeout (10 s), and only then the
apology. On a phone a silence past a second or two makes callers say "hello?", which barges in
and cancels the turn. So a use case with a ``hold_line`` has it said once in a turn, when the
model has sent nothing a fixed moment (``HOLD_LINE_AFTER_S``) after a round was asked of it,
and the caller has heard nothing in the turn yet (a keypad handler's reply, a tool's filler,
the line itself). A model that begins in time is heard as before. A round after a fast tool
is covered as the first is: the model went straight to the tool, the tool was too quick for
its filler, and the caller has been waiting since their words; a timer from the round's own
request, not the turn's, so a healthy second round's words are not queued behind the line.

The line is said as a filler is (``actors.tool_filler``): through the turn's speaker, so a
barge-in cuts it as any reply and the history keeps it as far as it was sent (or heard), as
the start of the assistant's words: the model sees it was said. It is a timer of its own
beside the request, not a deadline on it: opening the stream (a wait for a slot, a connect)
and a retry inside it must not be cancelled to say it, and it must not wait for them either.
Once the first event is in, the timer is gone: nothing is added per token.

The timer costs a turn almost nothing, since the model nearly always begins in time: one
task per trio run (``HoldTimer``) sleeps until the soonest round's deadline, and a round only
files its deadline there (a heap push) and marks it done at its first event. The line's own
task is started only once a deadline has passed, and the round waits for it, so it never
outlives the round. Not a nursery, a task and a cancel every turn (~200 Python frames).
"""

from __future__ import annotations

import contextvars
import heapq
import math
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext

import trio
from trio.lowlevel import RunVar

from actors.speaker import Speaker

# From the request to the hold line. A healthy model's first words are in well before it:
# the shipped latency alarm calls a p99 over 2 s (prompt in -> first words out) unhealthy,
# and a reused connection adds ~1 ms to the model's own time (bedrock-trio-facts.md), so
# a line said sooner would mostly queue in front of answers already on their way. And it is
# before the caller gives up on the silence: the backend takes a turn cut after half its
# 3 s first-event timeout for a stall, the caller having said "hello?" into it
# (``bedrock_http.ABORTED_STALL_SHARE``). A tool's filler waits less (1 s,
# ``FILLER_AFTER_S``) since the caller already waited for the model's round before it.
HOLD_LINE_AFTER_S = 1.5


def covering(text: str | None, speaker: Speaker) -> AbstractAsyncContextManager[Cover]:
    """Around a model round, whose stream is opened inside: ``text`` is said if the round's
    ``Cover.begun`` has not come ``HOLD_LINE_AFTER_S`` from now. Nothing at all (no timer)
    when there is no text, or something was said before the round."""
    if text is None or not speaker.quiet:
        return _NOTHING
    return _covering(text, speaker)


class Cover:
    """A round's handle on its hold line (``text`` None: there is none to say)."""

    __slots__ = ("body", "context", "done", "due", "error", "line", "said", "speaker", "text")

    def __init__(self, text: str | None = None, speaker: Speaker | None = None,
                 body: trio.CancelScope | None = None, due: float = math.inf) -> None:
        self.text, self.speaker, self.body, self.due = text, speaker, body, due
        self.done = False                   # begun, or the round is over: not to be said
        self.line: trio.CancelScope | None = None   # the line's, once it is being said
        self.said: trio.Event | None = None         # set when the line's task is over
        self.error: Exception | None = None         # what saying it raised (the caller gone)
        self.context: contextvars.Context | None = None

    async def begun(self) -> None:
        """The model's first event is in: the hold line is not said if it has not begun; if
        it is being handed over, its last words are waited for (no clock: they go at once),
        so the model's words follow it instead of mixing with it."""
        self.done = True
        if self.said is not None:
            await self.said.wait()

    def start(self) -> None:
        """The deadline passed before the first event: the line is said by a task of its own,
        beside the round (whose stream may be opening: it is not cancelled for the line)."""
        assert self.text is not None          # only a cover with a line is armed
        assert self.speaker is not None
        assert self.body is not None
        self.line, self.said = trio.CancelScope(), trio.Event()
        trio.lowlevel.spawn_system_task(_say, self, self.speaker, self.text, self.line,
                                        self.said, self.body, name="hold line",
                                        context=self.context)


_NOTHING = nullcontext(Cover())


@asynccontextmanager
async def _covering(text: str, speaker: Speaker) -> AsyncIterator[Cover]:
    with trio.CancelScope() as body:
        cover = Cover(text, speaker, body, trio.current_time() + HOLD_LINE_AFTER_S)
        cover.context = contextvars.copy_context()    # the call's log fields, for the line
        _timer().arm(cover)
        try:
            yield cover
        except BaseException:
            cover.done = True
            if cover.line is not None:      # cut short: a cut turn's line stops with it
                cover.line.cancel()
            raise
        finally:
            cover.done = True
            if cover.said is not None:      # the round waits for its line, as for a child
                with trio.CancelScope(shield=True):
                    await cover.said.wait()
    if cover.error is not None:             # saying the line failed: the round ends with it
        raise cover.error


async def _say(cover: Cover, speaker: Speaker, text: str, line: trio.CancelScope,
               said: trio.Event, body: trio.CancelScope) -> None:
    try:
        with line:
            await speaker.say_aside(text)
    except Exception as err:                # as a child's error would, it cuts the round
        cover.error = err
        body.cancel()
    finally:
        said.set()


class HoldTimer:
    """The deadlines of the rounds of one trio run, and the one task that waits for the
    soonest. A round done before its deadline is dropped when the task next wakes."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, Cover]] = []
        self._filed = 0
        self._wake = trio.CancelScope()

    def arm(self, cover: Cover) -> None:
        self._filed += 1
        heapq.heappush(self._due, (cover.due, self._filed, cover))
        if cover.due < self._wake.deadline:
            self._wake.deadline = cover.due

    async def run(self) -> None:
        while True:
            with self._wake:
                await trio.sleep_forever()
            now = trio.current_time()
            while self._due and self._due[0][0] <= now:
                cover = heapq.heappop(self._due)[2]
                if not cover.done:
                    cover.start()
            self._wake = trio.CancelScope(deadline=self._due[0][0] if self._due else math.inf)


_TIMER: RunVar[HoldTimer] = RunVar("hold_timer")


def _timer() -> HoldTimer:
    try:
        return _TIMER.get()
    except LookupError:
        timer = HoldTimer()
        _TIMER.set(timer)
        trio.lowlevel.spawn_system_task(timer.run, name="hold line timer")
        return timer
