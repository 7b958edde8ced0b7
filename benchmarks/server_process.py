"""Start ``voiceagent serve`` in its own process for a benchmark, on 127.0.0.1 only."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TypeVar

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(env: dict[str, str], *, stderr: IO[bytes] | int = subprocess.DEVNULL,
                 start_timeout_s: float = 30.0, port: int | None = None,
                 cpus: set[int] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """The server with ``env`` over this environment (HOST, PORT and PYTHONPATH are set here);
    returns the process and its base URL once the port accepts connections. ``port``: join
    the workers already on it (they and this one need REUSE_PORT=1 in ``env``). ``cpus``:
    the only cores it may run on."""
    port = port if port is not None else free_port()
    full = {**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(port),
            "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "voiceagent", "serve"], env=full,
                               stdout=subprocess.DEVNULL, stderr=stderr)
    if cpus:
        os.sched_setaffinity(process.pid, cpus)
    wait_for(lambda: _listening(process.pid, port) if env.get("REUSE_PORT") else accepts(port),
             process, start_timeout_s, "the server")
    return process, f"http://127.0.0.1:{port}"


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _listening(pid: int, port: int) -> bool:
    """Whether ``pid`` itself listens on ``port`` (a sibling worker may already accept on
    it, so a connection proves nothing)."""
    return socket_owner((pid,), port) == pid


def socket_owner(pids: tuple[int, ...], local_port: int,
                 remote_port: int | None = None) -> int | None:
    """Which of ``pids`` holds this machine's TCP socket on ``local_port``: the listening
    one, or with ``remote_port`` the one connected to it (read from /proc: Linux only)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) != local_port:
                continue
            if (fields[3] == "0A" if remote_port is None
                    else int(fields[2].rsplit(":", 1)[1], 16) == remote_port):
                inodes.add(f"socket:[{fields[9]}]")
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return pid
            except OSError:
                continue
    return None


def wait_for(probe: Callable[[], T], process: subprocess.Popen[bytes], timeout_s: float,
             what: str) -> T:
    """``probe()``'s first truthy answer (errors count as not yet), while ``process`` lives."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if answer := probe():
                return answer
        except OSError:
            pass
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with code {process.returncode} at start-up")
        time.sleep(0.05)
    process.kill()
    raise SystemExit(f"{what} did not start within {timeout_s:g} s")


def stop(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """Terminate and reap ``process``; killed if it does not go within ``timeout_s``."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout_s)


@contextmanager
def profiling(folder: Path | None, pids: tuple[int, ...], name: str) -> Iterator[None]:
    """py-spy samples each server process while the block runs (``--nonblocking``: it reads
    the process's memory without stopping it, so the figures stay the server's own) and
    writes a flame graph per process; ``*.gil.svg`` only the samples holding the GIL, where
    a thread of boto3's shows up against the event loop; ``*.txt`` the same samples as
    collapsed stacks, one line per stack, to sum with a script."""
    if folder is None:
        yield
        return
    if shutil.which("py-spy") is None:
        raise SystemExit("--profile needs py-spy on PATH: pip install 'voiceagent[profile]'")
    folder.mkdir(parents=True, exist_ok=True)
    spies = []
    for n, pid in enumerate(pids):
        for suffix, form, extra in (("svg", "flamegraph", []), ("gil.svg", "flamegraph", ["--gil"]),
                                    ("txt", "raw", [])):
            out = folder / f"flame-{name}-{n}.{suffix}"
            spies.append(subprocess.Popen(
                ["py-spy", "record", "--pid", str(pid), "--nonblocking", "--threads",
                  "--rate", "200", "--format", form, "--output", str(out), *extra],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    try:
        yield
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)      # py-spy writes its file on SIGINT
        for spy in spies:
            _, err = spy.communicate(timeout=60)
            if spy.returncode not in (0, -signal.SIGINT):
                print(f"py-spy: {err.decode()[-300:]}", file=sys.stderr)
        print(f"flame graphs: {folder}/flame-{name}-*.svg", file=sys.stderr)
