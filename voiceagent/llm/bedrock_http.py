"""ConverseStream over HTTP/1.1 on trio: the request signed, a pool of kept-alive connections,
and one exchange read by the turn's own task.

Why on the event loop and not a thread per stream: with boto3, every stream was a worker
thread that woke for each event and needed the GIL; at 500 concurrent calls the trio thread
queued behind ~100 of them (p99 overhead 177 ms, interrupt -> upstream closed 116 ms). Here an
event costs one read, h11's chunk parse and the frame decoder, with no hand-off; a cancel
closes the socket at once (Bedrock gets the FIN that stops generation) because the read that
waits for it is our own. What the reads bring is parsed by ``bedrock_answer.Answer``; this
module owns the connection, the reads and the read deadline.

Libraries, each through its public API: h11 parses HTTP/1.1 (the parser under httpx and
hypercorn); the standard library's ``ssl`` does TLS with certificate and host-name checks
(``net.Link``); botocore's ``SigV4Auth`` signs, or a Bedrock API key is sent as a bearer token,
as botocore prefers when one is set; boto3's credential chain supplies credentials, refreshed
in a worker thread when they near expiry (the refresh may do I/O).

The request: ConverseStream is rest-json, so the body is the operation's input as JSON minus
``modelId``, which goes in the path, percent-encoded as botocore does.

Connections (``voiceagent.aws_http``, shared with the store's writes): one LIFO pool of
kept-alive connections per endpoint, through the proxy that
HTTPS_PROXY / NO_PROXY name, if any. An idle connection with anything to read (the server
closed it) or older than ``IDLE_MAX_S`` is dropped before reuse; a request whose reused
connection dies before any response byte is sent again once on a new connection, as urllib3
does. Only an exchange that completed cleanly (an error answer read to its end included) goes
back to the pool. A stall also closes the idle connections not heard from since the stalled
one was (``ConnectionPool.close_idle_since``): a path that dies sends no FIN. So does a cancel
into a long silence (``ABORTED_STALL_SHARE``): a caller in dead air speaks before it times out.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import h11
import trio

from voiceagent.aws_http import Connection, ConnectionPool, ConnectTimeout
from voiceagent.llm.base import LLMEvent
from voiceagent.llm.bedrock_answer import Answer, Item
from voiceagent.llm.bedrock_errors import (
    Failure,
    FirstEventTimeout,
    ReadTimeout,
    ReplyTooSlow,
    classify,
)
from voiceagent.llm.bedrock_reply import ReplyAssembler
from voiceagent.llm.bedrock_watchdog import ReadWatchdog
from voiceagent.llm.eventstream import ReplyError, StreamFault

log = logging.getLogger(__name__)

# After messageStop the reply is whole; only metadata (its usage) and the body's end follow,
# at once on a healthy stream. Past this the reply ends as whole without them (see
# ``_end_whole``), instead of holding its tools and last frame for the read timeout.
WHOLE_GRACE_S = 1.0
# An exchange cancelled (the caller spoke, or hung up) after this share of the silence that
# would end it as a stall is taken for the stall: a caller in dead air says "hello?" before
# the timeout fires, and the kept connections on a dead path would stall the next turn. A
# healthy model begins well inside the first-event timeout and streams many events a second,
# so a barge-in while it talks is silent for milliseconds; a wrong guess costs a handshake for
# each connection closed, a dead one kept the next turn's first-event timeout.
ABORTED_STALL_SHARE = 0.5
# A silence is Bedrock's only when nothing it sent waits unread. Under CPU overload a turn's
# task waits its turn longer than the silence allowed, and the watchdog took a stream whose
# answer had arrived for a stalled one: it was cut, its answer thrown away and the request
# sent again, more load on a process already behind (121 of 1055 first-event timeouts in a
# 2000-call burst on one core had the answer waiting in the socket). Such a read gets this
# much more, as often as the answer still waits, within the reply's whole deadline. Short:
# bytes that came at the very moment the deadline passed (a trickle's) are read within it,
# and the silence then ends the read as before.
LATE_READ_GRACE_S = 0.1


# ---------------------------------------------------------------- one exchange

class Attempt:
    """One HTTP request and its streamed reply, read by whoever calls ``receive``.

    ``receive`` is cancel-safe: it waits only for the socket to be readable, which consumes
    nothing, and everything after a read is done synchronously. ``abort`` and ``close``
    never block: they may run in a ``finally`` of a cancelled turn. Every fault becomes a
    ``Failure`` item; nothing raises out of ``receive`` but ``EndOfChannel``.
    """

    def __init__(self, pool: ConnectionPool, target: str, headers: list[tuple[str, str]],
                 body: bytes, *, started_at: float, read_timeout_s: float,
                 on_finished: Callable[[Attempt, float], None],
                 watchdog: ReadWatchdog, first_event_timeout_s: float | None = None,
                 words_gap_s: float | None = None, pace_s: float = math.inf,
                 first_event_setting: str = "BEDROCK_FIRST_EVENT_TIMEOUT_S") -> None:
        self._pool = pool
        self._watchdog = watchdog
        self._target = target
        self._headers = headers
        self._body = body
        self._read_timeout_s = read_timeout_s
        self._first_event_timeout_s = (read_timeout_s if first_event_timeout_s is None
                                       else min(first_event_timeout_s, read_timeout_s))
        # the silence allowed after a text delta (see ``_progressed``)
        self._words_gap_s = (read_timeout_s if words_gap_s is None
                             else min(words_gap_s, read_timeout_s))
        # the reply is whole by its first-event timeout plus this after the request is sent
        self._pace_s = pace_s
        self._deadline = math.inf           # trio time: set when the request is on the wire
        self._first_event_setting = first_event_setting     # named when it expires
        self._on_finished = on_finished
        self._assembler = ReplyAssembler(started_at)        # its state moves the deadline
        self._answer = Answer(self._assembler)
        self._items: list[Item] = []      # a list: an empty deque costs ~600 B a turn
        self._connection: Connection | None = None
        self._parsed: list[Any] = []        # h11's events from the last read, not yet taken
        self._reused = False
        self._ended = False                 # nothing more will be queued
        self._unheard = False               # events read, the deadline not yet moved for
        self._closed = False
        self._timed_out: Exception | None = None
        self.read_deadline = math.inf       # the watchdog ends the read past this
        self.heard_at = math.inf            # trio time: request sent, or the last whole event
        self.cancelled_at: float | None = None      # perf_counter() at abort
        self.closed_at: float | None = None         # perf_counter() when the socket closed

    async def open(self, *, fresh: bool = False) -> None:
        """Connect (or reuse) and send the request. A failure to do so is queued as the
        attempt's first item, like an error answer."""
        try:
            self._connection, self._reused = await self._pool.acquire(fresh=fresh)
            state = self._connection.h11
            data = state.send(h11.Request(method="POST", target=self._target,
                                          headers=self._headers)) or b""
            data += state.send(h11.Data(data=self._body)) or b""
            data += state.send(h11.EndOfMessage()) or b""
            with trio.fail_after(self._pool.connect_timeout_s):
                await self._connection.link.send_all(data)
        except Exception as err:
            reused = self._reused
            self._drop_connection()
            if reused and not fresh:
                await self.open(fresh=True)         # the server had closed a kept-alive one
                return
            if isinstance(err, trio.TooSlowError):
                err = ConnectTimeout(f"could not send the request within "
                                     f"{self._pool.connect_timeout_s:g} s")
            self.fail(classify(err))
        except BaseException:
            self._drop_connection()
            raise
        if not self._ended:
            # From here, not from when the stream was opened: the wait for a limiter slot,
            # signing and connecting are not the model's pace (under load a reply was judged
            # too slow, or cut mid-sentence, for time it spent queued before it was sent).
            self.heard_at = trio.current_time()
            self.read_deadline = self.heard_at + self._first_event_timeout_s
            self._deadline = self.read_deadline + self._pace_s
            self._watchdog.watch(self)

    async def receive(self) -> Item:
        """The next event or failure; ``EndOfChannel`` after the last."""
        while not self._items:
            if self._ended:
                raise trio.EndOfChannel
            await self._step()
        if self._unheard:
            self._progressed()
        return self._items.pop(0)

    async def take_ready(self) -> list[Item]:
        """Everything that has already arrived (in the socket, the TLS layer or the parser),
        without waiting for more; when nothing has (``_parse``), one read and no h11 call.
        The read stays even right after ``receive`` read: skipping it saves ~3 frames a probe
        (~37 a turn, under 1 %), and only the caller knows whether it yielded since (a turn's
        first token waits for its hold line); one that had would leave a backlog unread."""
        while not self._ended and await self._step(wait=False):
            pass
        items, self._items = self._items, []
        if self._unheard:
            self._progressed()
        return items

    async def _step(self, *, wait: bool = True) -> bool:
        """Take one h11 event, or read once. False (``wait`` off): nothing has arrived."""
        connection = self._connection
        if connection is None:
            self.fail(classify(ConnectionResetError("the connection is gone")))
            return True
        try:
            if not self._parsed:
                if wait and self._unheard:      # before the wait the watchdog bounds
                    self._progressed()
                data = await connection.link.receive() if wait else connection.link.receive_nowait()
                if data is None:
                    return False
                self._parse(connection.h11, data)
                return True
            event = self._parsed.pop(0)
            if isinstance(event, h11.RemoteProtocolError):
                await self._failed(event)   # in its place among the events, not raised
                return True
            if type(event) is h11.Response:
                # the answer has begun: this attempt sends its request no more (a resend is
                # for a kept-alive connection that closed before it), so it lets it go
                self._body, self._headers = b"", []
            if self._answer.take(event, self._items):
                self._unheard = True
            elif self._answer.complete:     # read to its end: the connection is reusable
                self._ended = True
                self._watchdog.forget(self)
        except Exception as err:
            await self._failed(err)
        return True

    async def _failed(self, err: Exception) -> None:
        """The exchange met ``err``. Handled here, not in ``_step``'s frame: its traceback
        holds that frame, and a local there that kept it would be a cycle (see
        ``bedrock_errors.classify``)."""
        fault: Exception = err
        if self._timed_out is not None:
            fault = self._timed_out
        elif (self._reused and self._answer.status is None and not self.cancelled_at
              and not isinstance(err, ReplyError)):
            # a kept-alive connection the server had closed: the request never ran
            self._drop_connection()
            await self.open(fresh=True)
            return
        if self._assembler.stopped and not isinstance(err, ReplyError | StreamFault):
            self._end_whole(fault)
            return
        self.fail(classify(fault))

    def _parse(self, state: h11.Connection, data: bytes) -> None:
        """A read split into h11's events at once: whether more has come is then a read, not
        a call into h11 too. ``_step`` takes them one at a time, h11's error in its place.
        That error is kept without its traceback: h11 re-raises it from a frame that holds
        it, a cycle that would keep this connection until a middle collection."""
        state.receive_data(data)
        try:
            while (event := state.next_event()) is not h11.NEED_DATA and event is not h11.PAUSED:
                self._parsed.append(event)
        except h11.RemoteProtocolError as err:
            self._parsed.append(err.with_traceback(None))

    def _end_whole(self, fault: Exception) -> None:
        """The connection failed after ``messageStop``: the caller has heard the whole reply,
        so it ends as one (no usage if ``metadata`` was lost), not as a failure with an
        apology after a complete answer. The connection is not kept."""
        log.info("bedrock reply whole, its connection lost before the end",
                 extra={"code": classify(fault).code})
        out: list[LLMEvent] = []
        try:
            self._assembler.finish(out)
        except ReplyError as err:
            self.fail(classify(err))
            return
        self._items.extend(out)
        self._ended = True
        self._drop_connection()
        self._watchdog.forget(self)

    def _progressed(self) -> None:
        """A whole event came: the read timeout starts again, once the model has begun to
        answer (the headers and ``messageStart`` leave the first-event deadline where it
        is: they say the request arrived, not that the model is answering it). Bytes alone
        do not move it: a peer that trickles a byte every few seconds and never completes an
        event (a sick front end, a middlebox) would hold the turn, in silence, for ever. The
        reply's deadline bounds it all; after ``messageStop``, WHOLE_GRACE_S does.

        After a text delta the silence allowed is the words gap (the first-event timeout):
        a healthy model's words come tens of milliseconds apart, so a stream silent for
        seconds mid-sentence is dead, and the caller, half a sentence heard, waited the read
        timeout for the apology. A healthy stream's long silences come before its first
        event, while it reasons, and inside a toolUse block (Anthropic's models on Bedrock
        buffer its input after its ``contentBlockStart``): any other event gives the read
        timeout back. Once per read, before the exchange waits or hands its events over, not
        once per event: the events of one read came at once (a held window reads several)."""
        self._unheard = False
        if self._ended:                     # the watchdog has forgotten it
            return
        now = self.heard_at = trio.current_time()
        if self._assembler.stopped:
            was = self.read_deadline
            self.read_deadline = min(now + min(WHOLE_GRACE_S, self._read_timeout_s),
                                     self._deadline)
            if self.read_deadline < was:    # earlier: the watchdog may sleep past it
                self._watchdog.watch(self)
        elif self._answer.answering:
            was = self.read_deadline
            self.read_deadline = min(now + self._silence_allowed(), self._deadline)
            if self.read_deadline < was:    # words after a long wait: see above
                self._watchdog.watch(self)

    def _silence_allowed(self) -> float:
        """How long the exchange may now go without a whole event."""
        if not self._answer.answering:
            return self._first_event_timeout_s
        return self._words_gap_s if self._assembler.in_words else self._read_timeout_s

    def fail(self, failure: Failure) -> None:
        """End the attempt with ``failure`` as its next item (signing failed, say)."""
        self._items.append(failure)
        self._ended = True
        self._drop_connection()
        self._watchdog.forget(self)

    def _drop_connection(self) -> None:
        if self._connection is not None:
            self._connection.link.close_now()
            self._connection = None
            self._parsed.clear()

    def time_out(self) -> None:
        """The watchdog's: the read has waited too long; closing the socket ends it, unless
        what it waits for has arrived and the reader is late (``LATE_READ_GRACE_S``)."""
        now = trio.current_time()
        if now < self._deadline and self._answer_waits():
            self.read_deadline = min(now + LATE_READ_GRACE_S, self._deadline)
            self._watchdog.watch(self)
            return
        if now >= self._deadline:
            self._timed_out = ReplyTooSlow("the reply was not whole by its deadline (its "
                                           "maxTokens at the pace speech is heard)")
        elif self._assembler.stopped:
            self._timed_out = ReadTimeout(f"nothing from Bedrock for {WHOLE_GRACE_S:g} s after "
                                          "messageStop (the reply is whole)")
        elif not self._answer.answering:
            self._timed_out = FirstEventTimeout(
                f"the model said nothing within {self._first_event_timeout_s:g} s of the "
                f"request ({self._first_event_setting})")
            self._drop_quiet_idle("timeout")
        elif self._assembler.in_words:
            self._timed_out = ReadTimeout(
                f"no event from Bedrock for {self._words_gap_s:g} s after its last words "
                "(BEDROCK_FIRST_EVENT_TIMEOUT_S: a stream silent that long mid-sentence is "
                "taken for dead)")
            self._drop_quiet_idle("timeout")
        else:
            self._timed_out = ReadTimeout(f"no event from Bedrock for "
                                          f"{self._read_timeout_s:g} s")
            self._drop_quiet_idle("timeout")
        if self._connection is not None:
            self._connection.link.close_now()

    def _answer_waits(self) -> bool:
        """Bedrock's bytes are here, parsed or not, and not yet taken by the reader."""
        connection = self._connection
        return bool(self._parsed) or (connection is not None and connection.link.unread())

    def _drop_quiet_idle(self, found_by: str) -> None:
        """A stall (seconds of silence, not a slow pace): the pool's idle connections not
        heard from since this one was are closed too. If its path died, each of them would
        stall a later turn the same way; if it did not, each costs one handshake, and LIFO
        reuse reaches them last."""
        dropped = self._pool.close_idle_since(self.heard_at)
        if dropped:
            log.info("bedrock stall: closed the idle connections not heard from since",
                     extra={"connections": dropped, "found_by": found_by,
                            "silent_s": round(trio.current_time() - self.heard_at, 3)})

    def abort(self) -> None:
        """Stop now, wherever the exchange is: the socket is closed from here. Cancelled into
        a long silence, it also closes what a stall would (``ABORTED_STALL_SHARE``)."""
        self.cancelled_at = time.perf_counter()
        if self._connection is not None:
            self._drop_connection()
            self.closed_at = time.perf_counter()
            waiting = not (self._ended or self._assembler.stopped) and self._timed_out is None
            silent_s = trio.current_time() - self.heard_at
            if waiting and silent_s >= ABORTED_STALL_SHARE * self._silence_allowed():
                self._drop_quiet_idle("abort")
        self._ended = True

    def close(self) -> None:
        """Done with it: a completed exchange gives its connection back to the pool; any
        other is closed (a cancelled or failed exchange never carries another request)."""
        if self._closed:
            return
        self._closed = True
        self._watchdog.forget(self)
        connection, self._connection = self._connection, None
        if connection is not None:
            if self._answer.complete:       # finished cleanly: reusable
                self._pool.release(connection)
            else:
                connection.link.close_now()
        self._on_finished(self, time.perf_counter())

