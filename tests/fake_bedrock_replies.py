"""What the fake Bedrock endpoint answers a request with: a stream of frames, an HTTP error,
or a fault a network makes (a hang-up, a stall, a trickle), and the builders tests script
them with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tests.fake_bedrock_frames import Frame, message_end, message_start, text_events


@dataclass(frozen=True, slots=True)
class StreamReply:
    frames: tuple[Frame, ...]
    headers_delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class HttpError:
    status: int
    error_type: str                     # x-amzn-ErrorType, e.g. "ThrottlingException"
    message: str = "scripted"
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Hangup:
    """``200`` headers, the first ``after_frames`` of ``frames`` (their delays kept), then the
    TCP connection closes with no chunked terminator: a FIN (``reset=False``; over TLS without
    a ``close_notify``, as a dying load balancer would) or an RST (``reset=True``: SO_LINGER 0,
    then close). With an RST, bytes still in our send buffer are dropped; frames the client's
    kernel already holds are read before the reset error (small frames on loopback: all)."""
    after_frames: int
    reset: bool = False
    frames: tuple[Frame, ...] = ()
    headers_delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class HangupBeforeHeaders:
    """The request is read, then the connection closes (FIN or RST) without one byte sent."""
    reset: bool = False
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Stall:
    """``200`` headers and ``frames``, then nothing more, the connection held open until the
    client closes it (its read timeout): outcome ``stalled``, then ``client_closed``."""
    frames: tuple[Frame, ...] = ()
    headers_delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Trickle:
    """``200`` headers and ``frames`` whole, then the body of ``trickled`` (chunked, as
    ``StreamReply`` sends it) ``piece_bytes`` at a time, ``gap_s`` apart: bytes keep coming
    and no event is ever whole in time. Held open after the last piece, as ``Stall``."""
    trickled: tuple[Frame, ...]
    frames: tuple[Frame, ...] = ()
    piece_bytes: int = 1
    gap_s: float = 3.0
    headers_delay_s: float = 0.0


Reply = StreamReply | HttpError | Hangup | HangupBeforeHeaders | Stall | Trickle


def stream_reply(*parts: Frame | Sequence[Frame], headers_delay_s: float = 0.0) -> StreamReply:
    frames: list[Frame] = []
    for part in parts:
        frames.extend([part] if isinstance(part, Frame) else part)
    return StreamReply(tuple(frames), headers_delay_s)


def text_reply(deltas: Sequence[str], *, gap_s: float = 0.0, stop_reason: str = "end_turn",
               headers_delay_s: float = 0.0, **usage: Any) -> StreamReply:
    return stream_reply(message_start(), text_events(deltas, gap_s=gap_s),
                        message_end(stop_reason, **usage), headers_delay_s=headers_delay_s)


def burst_reply(deltas: Sequence[str], *, first_delay_s: float, stop_reason: str = "end_turn",
                **usage: Any) -> StreamReply:
    """The first delta ``first_delay_s`` after the headers, every other frame right behind it,
    back to back: over TLS, one record per event arriving in one burst."""
    return stream_reply(message_start(), text_events(deltas, first_delay_s=first_delay_s),
                        message_end(stop_reason, **usage))


def hangup_reply(deltas: Sequence[str], after: int, reset: bool = False, *,
                 gap_s: float = 0.0) -> Hangup:
    """messageStart, the text deltas, contentBlockStop, messageStop and metadata, cut after
    the first ``after`` of those frames (``after=1``: only messageStart arrives)."""
    frames = [message_start(), *text_events(deltas, gap_s=gap_s), *message_end()]
    return Hangup(after, reset, tuple(frames))
