"""Whether a server in another process is stuck sending to a peer that stopped reading, read
from Linux's /proc: the in-process test counts trio's tasks waiting to write
(``tasks_waiting_write``), which another process's trio does not show.

Two facts, both the kernel's: the process's epoll set asks to be told when the socket can take
more (EPOLLOUT: trio registers it only while a task waits to write on that descriptor), and the
socket runs its zero-window probe timer (the peer advertised no room and data waits to go).
Together they mean the send can only go on when the peer reads again. Guessing instead how
much a reply must be to fill both socket buffers fails both ways: autotuning grows them, and a
loaded machine's reply is cut by the drain before they fill."""

from __future__ import annotations

import os
import sys

import pytest
import trio

from tests.proc_sockets import ESTABLISHED, socket_descriptors, tcp_rows

EPOLLOUT = 0x4
ZERO_WINDOW_PROBE = "04"            # /proc/net/tcp's ``tr``: ICSK_TIME_PROBE0


def _epoll_write_waits(pid: int) -> set[int]:
    """Descriptors some epoll set of the process watches for room to write."""
    waits: set[int] = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:[eventpoll]":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                lines = info.read().splitlines()
        except OSError:
            continue
        for line in lines:                      # "tfd:  9 events:  1d data: ..."
            fields = line.split()
            if fields[:1] == ["tfd:"] and int(fields[3], 16) & EPOLLOUT:
                waits.add(int(fields[1]))
    return waits


def _probing_zero_window(port: int) -> set[str]:
    """Inodes of established sockets on local ``port`` whose peer's window is shut."""
    return {row.inode for row in tcp_rows()
            if row.local_port == port and row.state == ESTABLISHED
            and row.timer == ZERO_WINDOW_PROBE}


def waits_to_send(pid: int, port: int) -> bool:
    """Whether process ``pid`` waits to send on a connection it accepted on ``port`` that
    only the peer's reading can unblock."""
    sockets = socket_descriptors(pid)
    shut = {sockets[inode] for inode in _probing_zero_window(port) if inode in sockets}
    return bool(shut & _epoll_write_waits(pid))


async def until_it_waits_to_send(pid: int, port: int) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("reads Linux's /proc to see another process wait to send")
    while not waits_to_send(pid, port):     # noqa: ASYNC110 - no event across processes
        await trio.sleep(0.01)
