"""A process's TCP sockets as Linux's /proc shows them: its descriptors matched by inode with
the kernel's tables (/proc/net/tcp, tcp6), for tests that must see what a socket is doing
rather than trust what the code using it says."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

ESTABLISHED = "01"


@dataclass(frozen=True, slots=True)
class TcpRow:
    local_port: int
    remote_port: int
    state: str              # hex, as the kernel writes it: "01" established
    timer: str              # ``tr``: "01" retransmit, "04" zero-window probe...
    inode: str


def tcp_rows() -> Iterator[TcpRow]:
    """Every TCP socket of this network namespace, IPv4 and IPv6."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                yield TcpRow(int(fields[1].rsplit(":", 1)[1], 16),
                             int(fields[2].rsplit(":", 1)[1], 16), fields[3],
                             fields[5].split(":")[0], fields[9])


def socket_descriptors(pid: int | str = "self") -> dict[str, int]:
    """The process's socket inodes, each with its descriptor. A socket closed there has no
    descriptor, whatever state TCP still keeps it in."""
    found: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue                    # closed while listed (the listing's own, say)
        if target.startswith("socket:["):
            found[target[len("socket:["):-1]] = int(fd)
    return found
