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
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext

import trio

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
    """Around a model round, whose stream is opened inside (a stream may hold a nursery of its
    own, which must close before this one's): ``text`` is said if the round's
    ``Cover.begun`` has not come ``HOLD_LINE_AFTER_S`` from now. Nothing at all (no task, no
    timer) when there is no text, or something was said before the round."""
    if text is None or not speaker.quiet:
        return _NOTHING
    return _covering(text, speaker)


class Cover:
    """A round's handle on its hold line (``scope`` None: there is none to say)."""

    __slots__ = ("said", "scope", "speaking")

    def __init__(self, scope: trio.CancelScope | None) -> None:
        self.scope = scope
        self.speaking = False
        self.said = trio.Event()

    async def begun(self) -> None:
        """The model's first event is in: the hold line is not said if it has not begun; if
        it is being handed over, its last words are waited for (no clock: they go at once),
        so the model's words follow it instead of mixing with it."""
        if self.scope is None:
            return
        if self.speaking:
            await self.said.wait()
        self.scope.cancel()


_NOTHING = nullcontext(Cover(None))


@asynccontextmanager
async def _covering(text: str, speaker: Speaker) -> AsyncIterator[Cover]:
    scope = trio.CancelScope()
    cover = Cover(scope)
    leaf: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_say_at, speaker, text, trio.current_time() + HOLD_LINE_AFTER_S,
                               cover, scope)
            try:
                yield cover
            except BaseException:
                scope.cancel()
                raise
            await cover.begun()             # a round that ended without an event
    except BaseExceptionGroup as group:
        # trio wraps even one exception from a nursery; the turn handles each kind (a cut,
        # the model's error, the caller gone) as if there were no nursery here
        leaf = _first_not_cancelled(group)
    if leaf is not None:
        raise leaf


async def _say_at(speaker: Speaker, text: str, due: float, cover: Cover,
                  scope: trio.CancelScope) -> None:
    with scope:
        await trio.sleep_until(due)
        cover.speaking = True
        try:
            await speaker.say_aside(text)
        finally:
            cover.said.set()


def _first_not_cancelled(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """What the round raised (or the hold line: the caller gone); a cut that came with it is
    the same cut. Only cuts: one of them."""
    return next((e for e in group.exceptions if not isinstance(e, trio.Cancelled)),
                group.exceptions[0])
