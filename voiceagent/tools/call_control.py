"""Built-in tools that act on the call itself: play an audio file, press keys down the line
(an extension after a transfer), and change the session's hints mid-call.

They reach Twilio the way every tool does, by asking the relay writer to send a message
(``ToolContext.send``); the input is checked against the use case's schema first, and again
here against what Twilio accepts, so a model's bad argument becomes an error result it can
act on, never a frame Twilio drops.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from voiceagent.relay.outbound import Hints, Play, SendDigits, play_source_problem
from voiceagent.tools.base import ToolContext, ToolResult, tool

MAX_LOOP = 10                   # Twilio allows 1000 (loop=0); a model should never need that
# ctx.send said no: the caller cut in before it went out (see ToolContext.send)
WITHHELD = "not sent: the caller interrupted first; ask before trying again"


class ToolInputError(ValueError):
    """The model's input breaks one of Twilio's rules: the message says which."""


@tool("playAudio", timeout_s=5.0, plays_audio=True)
async def play_audio(ctx: ToolContext, args: Mapping[str, Any]) -> ToolResult:
    source = str(args.get("url", ""))
    if not source.lower().startswith("https://"):
        raise ToolInputError("url: must be an https:// URL of an audio file Twilio can fetch")
    if (problem := play_source_problem(source)) is not None:      # no host, too long, ...
        raise ToolInputError(f"url: {problem}")
    loop = int(args.get("loop", 1))
    if not 1 <= loop <= MAX_LOOP:
        raise ToolInputError(f"loop: must be 1 to {MAX_LOOP}")
    if not await ctx.send(Play(source, loop=loop,
                               interruptible=bool(args.get("interruptible", True)))):
        return {"playing": False, "withheld": WITHHELD}
    return {"playing": True, "loop": loop}


# A key pressed cannot be taken back: it runs once per toolUseId and a barge-in does not cut it
# (keys the writer still holds when the caller cuts in are withheld, and the result says so).
@tool("sendDigits", side_effect=True, timeout_s=5.0, plays_audio=True)
async def send_digits(ctx: ToolContext, args: Mapping[str, Any]) -> ToolResult:
    digits = str(args.get("digits", ""))
    try:
        message = SendDigits(digits)
    except ValueError:
        raise ToolInputError("digits: only 0-9, *, # and w (a half-second pause), "
                             "at least one") from None
    if not await ctx.send(message):
        return {"sent": 0, "withheld": WITHHELD}
    return {"sent": len(digits)}


@tool("setSpeechHints", timeout_s=5.0, instant=True)
async def set_hints(ctx: ToolContext, args: Mapping[str, Any]) -> ToolResult:
    phrases = tuple(str(p).strip() for p in args.get("phrases", ()))
    try:
        message = Hints(phrases)
    except ValueError:
        raise ToolInputError("phrases: one or more words or phrases, none blank and none "
                             "containing a comma") from None
    await ctx.send(message)
    return {"hints": len(phrases)}
