"""The ``application/vnd.amazon.eventstream`` body of a ConverseStream reply, decoded.

botocore has a decoder (``EventStreamBuffer``), but its shape-driven event parsing cost more
CPU per delta than everything else on the read path, and ConverseStream events are plain JSON
objects: here the frames are split and checked (both CRC32s, botocore's size limits) and the
payloads decoded with ``json``, which gives the same dicts. The tests check this decoder
against botocore's on the same bytes, however they are chunked.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping
from typing import Any


class ReplyError(Exception):
    """The event stream broke Converse's own rules (the backend reports ModelStreamFailed)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


_PRELUDE = struct.Struct("!III")
_MAX_FRAME = 16 * 1024 * 1024 + 128 * 1024 + 16    # botocore's payload and header limits
_FIXED_SIZE = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}


class FrameDecoder:
    """Splits an ``application/vnd.amazon.eventstream`` body into (headers, payload) messages,
    whatever the chunking. Both CRC32s are checked. Raises ``ReplyError`` on a corrupt frame.

    Runs once per event in a thread that has just woken up, where every bytecode is costly:
    Bedrock repeats the same header block for every event of a type, so parsed header blocks
    are cached (the dicts are shared: read them, never change them).
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[tuple[dict[str, Any], bytes]]:
        if self._buffer:
            data, self._buffer = self._buffer + data, b""
        messages = []
        offset, size = 0, len(data)
        while size - offset >= 12:
            total, headers_size, prelude_crc = _PRELUDE.unpack_from(data, offset)
            if zlib.crc32(data[offset:offset + 8]) != prelude_crc:
                raise ReplyError("CorruptFrame", "event-stream prelude checksum mismatch")
            if total < 16 or total > _MAX_FRAME or headers_size > total - 16:
                raise ReplyError("CorruptFrame", f"event-stream frame of {total} bytes")
            end = offset + total
            if end > size:
                break
            frame = data if offset == 0 and end == size else data[offset:end]
            if zlib.crc32(memoryview(frame)[:-4]) != int.from_bytes(frame[-4:], "big"):
                raise ReplyError("CorruptFrame", "event-stream message checksum mismatch")
            start = 12 + headers_size
            block = frame[12:start]
            headers = _HEADER_CACHE.get(block)
            if headers is None:
                headers = _headers(block, 0, headers_size)
                if len(_HEADER_CACHE) < _HEADER_CACHE_SIZE:
                    _HEADER_CACHE[block] = headers
            messages.append((headers, frame[start:-4]))
            offset = end
        if offset < size:
            self._buffer = data[offset:]
        return messages


_HEADER_CACHE: dict[bytes, dict[str, Any]] = {}
_JSON = json.JSONDecoder()              # raw_decode: no encoding sniffing, straight to C
_HEADER_CACHE_SIZE = 64                 # event and exception types: a few dozen at most


def _headers(data: bytes, offset: int, end: int) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    while offset < end:
        size = data[offset]
        name = data[offset + 1:offset + 1 + size].decode()
        kind = data[offset + 1 + size]
        offset += 2 + size
        if kind in (6, 7):                      # bytes, string: u16 length
            length = int.from_bytes(data[offset:offset + 2], "big")
            raw = data[offset + 2:offset + 2 + length]
            headers[name] = raw.decode() if kind == 7 else raw
            offset += 2 + length
        elif kind in _FIXED_SIZE:
            width = _FIXED_SIZE[kind]
            raw = data[offset:offset + width]
            headers[name] = (kind == 0 if kind < 2 else raw if kind == 9
                             else int.from_bytes(raw, "big", signed=True))
            offset += width
        else:
            raise ReplyError("CorruptFrame", f"event-stream header type {kind}")
    return headers


class StreamFault(Exception):
    """An ``exception`` or ``error`` message inside the event stream. ``code`` is as sent:
    camelCase for modeled exceptions (``throttlingException``), like botocore's
    ``EventStreamError`` code."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


def event_of(headers: Mapping[str, Any], payload: bytes) -> tuple[str, Any]:
    """``(event type, body)`` of an event message; raises ``StreamFault`` for the others."""
    kind = headers.get(":message-type")
    if kind == "event":
        if not payload:
            return str(headers.get(":event-type", "")), {}
        return str(headers.get(":event-type", "")), _JSON.raw_decode(payload.decode())[0]
    if kind == "exception":
        try:
            message = str(json.loads(payload).get("message", ""))
        except (ValueError, AttributeError):
            message = ""
        raise StreamFault(str(headers.get(":exception-type", "unknownException")), message)
    raise StreamFault(str(headers.get(":error-code", "UnknownError")),
                      str(headers.get(":error-message", "")))
