"""A real HTTP CONNECT proxy for tests: the ``proxy.py`` package in a process of its own.

    async with running_proxy(basic_auth="user:secret") as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.auth_url)
        ...                                 # the client tunnels through it
    assert proxy.tunnels() == [f"localhost:{fake.port}"]

It listens on 127.0.0.1, an ephemeral port (``--port 0 --port-file``), with one acceptor that
also does the work (light, and its log is in order). Its data and cache directories are a
temporary directory of ours (it would create ``~/.proxy`` otherwise). With ``basic_auth`` a
request without the right ``Proxy-Authorization`` is answered ``407``. Its log (stdout and
stderr) is read line by line into ``log`` as it comes; it writes one access-log line per
connection when that connection closes: ``CONNECT host:port - N bytes`` for a tunnel,
``CONNECT None:None`` after a refused one. It drops a tunnel idle for ``idle_timeout_s``
(``--timeout``, proxy.py's default 10 s). ``stopped()`` SIGSTOPs it for a block: every
connection through it goes half-open (the kernel still accepts and acknowledges, nothing
answers or closes). On exit the whole process group is killed.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from urllib.parse import quote

import trio

_TUNNEL = re.compile(r" - CONNECT (?P<target>\S+:\S+) - (?P<bytes>\d+) bytes - ")


@dataclass(eq=False)
class RunningProxy:
    port: int
    basic_auth: str | None = None       # "user:password"
    pid: int = 0                        # leads its process group
    log: list[str] = field(default_factory=list)
    _logged: trio.lowlevel.ParkingLot = field(default_factory=trio.lowlevel.ParkingLot)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, no credentials."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth_url(self) -> str:
        """``url_with_auth`` with the right user and password, or ``url`` without auth."""
        if self.basic_auth is None:
            return self.url
        user, _, password = self.basic_auth.partition(":")
        return self.url_with_auth(user, password)

    def url_with_auth(self, user: str, password: str) -> str:
        """``http://user:password@127.0.0.1:PORT``, both percent-encoded (right or wrong)."""
        return f"http://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{self.port}"

    def proxy_authorization(self, credentials: str | None = None) -> str:
        """The ``Proxy-Authorization`` value for ``credentials`` (default: the right ones)."""
        user_password = credentials if credentials is not None else self.basic_auth or ""
        return "Basic " + base64.b64encode(user_password.encode()).decode()

    def tunnels(self) -> list[str]:
        """``host:port`` of every CONNECT that reached its target and has closed since."""
        return [m["target"] for line in self.log if (m := _TUNNEL.search(line))
                and not m["target"].startswith("None:")]

    @contextmanager
    def stopped(self) -> Iterator[None]:
        """SIGSTOP for the block, SIGCONT after (whatever happened in it)."""
        os.killpg(self.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            with suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGCONT)

    def auth_failures(self) -> int:
        return sum("ProxyAuthenticationFailed" in line for line in self.log)

    async def wait_log(self, text: str, count: int = 1) -> None:
        """Until ``count`` lines of the log contain ``text``."""
        while sum(text in line for line in self.log) < count:
            await self._logged.park()

    async def wait_tunnels(self, count: int) -> list[str]:
        """Until ``count`` tunnels have closed (their access-log lines come at close)."""
        while len(self.tunnels()) < count:
            await self._logged.park()
        return self.tunnels()

    async def _collect(self, output: trio.abc.ReceiveStream) -> None:
        pending = b""
        async for chunk in output:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            self.log.extend(line.decode(errors="replace") for line in lines)
            self._logged.unpark_all()
        if pending:
            self.log.append(pending.decode(errors="replace"))
            self._logged.unpark_all()


@asynccontextmanager
async def running_proxy(*, basic_auth: str | None = None, idle_timeout_s: int = 10,
                        startup_timeout_s: float = 15.0) -> AsyncIterator[RunningProxy]:
    """``python -m proxy`` until the block ends; ready (accepting) when yielded."""
    with tempfile.TemporaryDirectory(prefix="proxy-py-") as scratch:
        port_file = trio.Path(scratch) / "port"
        command = [sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", "0",
                   "--port-file", str(port_file), "--num-acceptors", "1",
                   "--num-workers", "1", "--log-level", "INFO",
                   "--timeout", str(idle_timeout_s),
                   "--data-dir", os.path.join(scratch, "data"),
                   "--cache-dir", os.path.join(scratch, "cache")]
        if basic_auth is not None:
            command += ["--basic-auth", basic_auth]
        process = await trio.lowlevel.open_process(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            async with trio.open_nursery() as nursery:
                proxy = RunningProxy(0, basic_auth, process.pid)
                assert process.stdout is not None
                nursery.start_soon(proxy._collect, process.stdout)
                try:
                    proxy.port = await _wait_listening(process, port_file, proxy,
                                                       startup_timeout_s)
                    yield proxy
                finally:
                    _kill_group(process)    # its output ends, so does _collect
        finally:
            _kill_group(process)
            with trio.CancelScope(shield=True):
                await process.wait()
                if process.stdout is not None:
                    await process.stdout.aclose()


async def _wait_listening(process: trio.Process, port_file: trio.Path, proxy: RunningProxy,
                          timeout_s: float) -> int:
    """Poll the port file, then the port, until a connection is accepted (bounded)."""
    with trio.move_on_after(timeout_s):
        while process.returncode is None:
            text = await port_file.read_text() if await port_file.exists() else ""
            if text.endswith("\n"):             # written in full
                port = int(text.split()[0])
                with suppress(OSError):
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                    await stream.aclose()
                    return port
            await trio.sleep(0.01)
    log = "\n".join(proxy.log[-20:])
    raise RuntimeError(f"proxy.py did not start (exit {process.poll()}):\n{log}")


def _kill_group(process: trio.Process) -> None:
    """SIGKILL the process group it leads (``start_new_session``): it and its acceptor."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
