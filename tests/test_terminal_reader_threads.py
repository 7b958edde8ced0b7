"""The terminal's reads of the person's lines run on a thread of their own
(``terminal.reader_limiter``), not on trio's default limiter, which a process embedding the
server (the demo) shares with tools' blocking work sent there by ``trio.to_thread.run_sync``.
A read is abandoned when its call ends and holds its thread until the next line comes."""

from __future__ import annotations

import os
from typing import TextIO

import trio
import trio.testing

from voiceagent.app.terminal import piped_lines, reader_limiter


def _pipe() -> tuple[TextIO, int]:
    """A pipe's read end, as the terminal reads stdin, and its write end (a descriptor)."""
    read_fd, write_fd = os.pipe()
    return open(read_fd, encoding="utf-8"), write_fd      # a pipe's open never blocks


async def _read_into(source: TextIO, send: trio.MemorySendChannel[str]) -> None:
    async with send:
        async for line in piped_lines(source):
            await send.send(line)


async def test_a_read_abandoned_mid_line_holds_none_of_trios_default_threads() -> None:
    default = trio.to_thread.current_default_thread_limiter()
    source, write_fd = _pipe()
    try:
        with trio.fail_after(10):
            send, receive = trio.open_memory_channel[str](1)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_read_into, source, send)
                os.write(write_fd, b"hello\n")
                assert await receive.receive() == "hello"
                await trio.testing.wait_all_tasks_blocked()    # waiting for the next line
                assert default.borrowed_tokens == 0
                assert reader_limiter().borrowed_tokens == 1
                nursery.cancel_scope.cancel()                  # the call ended
            assert default.borrowed_tokens == 0                # abandoned, on its own thread
            os.close(write_fd)                                 # the line comes: it ends
            write_fd = -1
            async with reader_limiter():                       # and gives its thread back
                pass
    finally:
        if write_fd != -1:
            os.close(write_fd)
        source.close()


async def test_lines_are_read_while_trios_default_threads_are_all_taken() -> None:
    default = trio.to_thread.current_default_thread_limiter()
    holders = [object() for _ in range(int(default.total_tokens))]
    for holder in holders:                  # slow blocking tools, say, on every thread
        default.acquire_on_behalf_of_nowait(holder)
    source, write_fd = _pipe()
    try:
        os.write(write_fd, b"what are your hours?\n")
        os.close(write_fd)
        send, receive = trio.open_memory_channel[str](1)
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_read_into, source, send)
                assert [line async for line in receive] == ["what are your hours?"]
    finally:
        for holder in holders:
            default.release_on_behalf_of(holder)
        source.close()
