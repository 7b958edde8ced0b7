"""The conversation in a terminal: a person (or a list of lines) plays the caller.

Lines starting with ``/`` are commands: ``/interrupt`` barges in and reports what was heard,
``/dtmf 1`` presses keys, ``/lang es`` speaks another language (the ``lang`` the prompts
report, as Twilio's transcription would), ``/hangup`` ends the call, ``/help`` lists them.
"""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from contextlib import aclosing
from typing import TextIO

import trio
from trio.lowlevel import RunVar

from voiceagent.app.caller import RelayCall, Reply
from voiceagent.threads import run_blocking

HELP = ("Type what the caller says and press Enter. Commands: /interrupt (barge in), "
        "/dtmf 123 (press keys), /lang es (speak another language), /hangup, /help")
REPLY_TIMEOUT_S = 30.0
KEYS = frozenset("0123456789*#ABCD")       # what the server takes in a dtmf frame
DTMF_USAGE = "[usage: /dtmf 123 (keys 0-9, * and #); nothing was pressed]"
# a BCP-47 tag as Twilio reports one (en-US; under multi the primary subtag alone: es)
LANGUAGE_TAG = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*")
LANG_USAGE = ("[usage: /lang es-US (a language code, as Twilio reports the caller's: es "
              "under transcriptionLanguage multi), or /lang alone to speak the language "
              "Twilio hears again]")
_READER: RunVar[trio.CapacityLimiter] = RunVar("voiceagent_terminal_reader")


def reader_limiter() -> trio.CapacityLimiter:
    """The one thread that reads the terminal. A read is abandoned when its call ends, and
    holds its thread until Enter is pressed: on trio's default limiter it held one of the
    threads that a process embedding the server (the demo) shares with tools' blocking work
    (``trio.to_thread.run_sync``), and with those all taken by tools, the person's lines
    waited for one. Of one: a second reader waits for the abandoned one (which takes the next line)
    rather than race it for lines. One per trio run, as trio's default limiter is: a
    reader abandoned by a run that has ended never gives its token back."""
    try:
        return _READER.get()
    except LookupError:
        limiter = trio.CapacityLimiter(1)
        _READER.set(limiter)
        return limiter


def _keys(line: str) -> str | None:
    """The keys a ``/dtmf`` line presses (spaces between them allowed), or None when it is
    not one, or names no key or one a keypad does not have."""
    if not line.startswith("/dtmf"):
        return None
    keys = "".join(line.removeprefix("/dtmf").split())
    return keys if keys and set(keys) <= KEYS else None


class Transcript:
    """Prints the conversation, tokens as they arrive."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.open = False

    def agent_token(self, token: str) -> None:
        if not self.open:
            self.out.write("agent: ")
            self.open = True
        self.out.write(token)
        self.out.flush()

    def line(self, text: str) -> None:
        self.end_reply()
        self.out.write(text + "\n")
        self.out.flush()

    def end_reply(self) -> None:
        if self.open:
            self.out.write("\n")
            self.open = False


def _show(frame: dict[str, object], transcript: Transcript) -> bool:
    """Print one server frame; True when the server ended the session."""
    kind = frame.get("type")
    if kind == "text":
        if frame.get("token"):
            transcript.agent_token(str(frame["token"]))
        if frame.get("last"):
            transcript.end_reply()
    elif kind == "end":
        transcript.line(f"[the agent ended the session; handoffData={frame.get('handoffData')}]")
        return True
    elif kind == "play":
        transcript.line(f"[play {frame.get('source')}]")
    elif kind == "sendDigits":
        transcript.line(f"[sendDigits {frame.get('digits')}]")
    elif kind == "language":
        transcript.line(f"[language tts={frame.get('ttsLanguage')} "
                        f"stt={frame.get('transcriptionLanguage')}]")
    return False


async def piped_lines(stream: TextIO | None = None) -> AsyncGenerator[str, None]:
    """The lines of a pipe, read as they come: ``echo hello | voiceagent call`` should wait
    for the answer to each line, as ``--say`` does, not hang up at end of input while the
    agent is still thinking. Read one at a time so a slow producer still drives the call."""
    source = stream or sys.stdin
    while line := await run_blocking(source.readline, limiter=reader_limiter(),
                                     abandon_on_cancel=True):
        yield line.strip()          # as typed lines are (interactive): '/hangup ' hangs up


async def _each(lines: Iterable[str]) -> AsyncGenerator[str, None]:
    for line in lines:
        yield line


async def scripted(call: RelayCall, lines: Iterable[str] | AsyncGenerator[str, None],
                   transcript: Transcript) -> None:
    """Say each line, wait for the whole reply, print both. For the README, CI and pipes."""
    if call.target.greeting:
        transcript.line(f"agent: {call.target.greeting}")
    said = lines if isinstance(lines, AsyncGenerator) else _each(lines)
    async with aclosing(said):
        await _say_each(call, said, transcript)


async def _say_each(call: RelayCall, lines: AsyncIterator[str], transcript: Transcript) -> None:
    async for raw in lines:
        if not (line := raw.strip()):       # as typed input is: "/hangup " hangs up
            continue
        transcript.line(f"caller: {line}")
        if not await _command(call, line, transcript):
            return
        if line.startswith("/") and _keys(line) is None:
            continue                    # nothing was sent: there is no reply to wait for
        with trio.move_on_after(REPLY_TIMEOUT_S) as waited:
            reply = await _print_reply(call, transcript)
        if waited.cancelled_caught:
            transcript.line("[no reply within 30 s]")
            return
        if not reply.closed:            # ended by the agent, or the socket closed
            return
    await call.hang_up()


async def _print_reply(call: RelayCall, transcript: Transcript) -> Reply:
    reply = Reply()
    while (frame := await call.receive()) is not None:
        reply.frames.append(frame)
        if _show(frame, transcript):
            reply.ended = frame
            return reply
        if frame.get("type") == "text" and frame.get("last"):
            reply.closed = True
            return reply
    transcript.line("[the server closed the call]")
    return reply


async def _command(call: RelayCall, line: str, transcript: Transcript) -> bool:
    """Act on one input line; False when the call is over."""
    if line == "/hangup":
        await call.hang_up()
        transcript.line("[you hung up]")
        return False
    if line == "/interrupt":
        heard = await call.interrupt()
        transcript.line(f"[you barged in; the caller had heard: {heard!r}]")
    elif line.startswith("/dtmf"):
        keys = _keys(line)
        if keys is None:                # the server would drop the frame, and the caller
            transcript.line(DTMF_USAGE) # would wait for the idle re-prompt to hear anything
        for key in keys or ():
            await call.dtmf(key)
    elif line == "/lang" or line.startswith("/lang "):
        _speak(call, line.removeprefix("/lang").strip(), transcript)
    elif line == "/help":
        transcript.line(HELP)
    elif line.startswith("/"):
        transcript.line(f"[unknown command {line}; {HELP}]")
    elif line.strip():
        await call.say(line)
    return True


def _speak(call: RelayCall, code: str, transcript: Transcript) -> None:
    """``/lang``: a multi-language use case tried from the terminal. The language is what the
    caller's prompts report from now on (the use case answers in it when it switches
    automatically); alone, back to the language Twilio hears, which follows the server."""
    if code and not LANGUAGE_TAG.fullmatch(code):
        transcript.line(LANG_USAGE)
        return
    call.speaking = code or None
    transcript.line(f"[your words now report lang {call.prompt_language()}]")


async def interactive(call: RelayCall, transcript: Transcript) -> None:
    """A person types; replies stream in as they arrive, so barge-in can be tried live."""
    transcript.line(HELP)
    if call.target.greeting:
        transcript.line(f"agent: {call.target.greeting}")
    async with trio.open_nursery() as nursery:
        async def listen() -> None:
            while (frame := await call.receive()) is not None:
                if _show(frame, transcript):
                    break
            transcript.line("[call ended]")
            nursery.cancel_scope.cancel()

        nursery.start_soon(listen)
        while True:
            try:
                line = await run_blocking(input, limiter=reader_limiter(),
                                          abandon_on_cancel=True)
            except EOFError:
                line = "/hangup"
            if not await _command(call, line.strip(), transcript):
                nursery.cancel_scope.cancel()
                return
