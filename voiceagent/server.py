"""Serve the app on hypercorn's trio worker: one port for webhooks and the relay socket."""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import hypercorn.trio
import trio
from hypercorn.config import Config

from voiceagent.llm.base import LLM
from voiceagent.runtime import Runtime, open_runtime
from voiceagent.settings import Settings
from voiceagent.tools.registry import ToolRegistry
from voiceagent.web import create_app

log = logging.getLogger(__name__)

GRACEFUL_S = 2.0                   # after our own drain, hypercorn's last grace
WATCHDOG_S = 10.0                  # a peer that stopped reading can hold a shielded send
HARD_FRAME_LIMIT = 1024 * 1024     # hypercorn closes the socket (1009) beyond this; the
                                   # reader drops frames over MAX_FRAME_BYTES before that


def hypercorn_config(host: str, port: int, *, ping_interval_s: float = 20.0,
                     reuse_port: bool = False) -> Config:
    config = Config()
    if reuse_port:
        # One trio process per core (docker/entrypoint.sh starts them): hypercorn 0.18 sets
        # SO_REUSEPORT only for its own multi-worker mode, so bind here and hand it the fd.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.create_server((host, port), family=family, reuse_port=True)
        config.bind = [f"fd://{listener.detach()}"]
    else:
        config.bind = [f"{host}:{port}"]
    config.websocket_max_message_size = HARD_FRAME_LIMIT
    # Twilio sends nothing on a quiet call and the ALB cuts idle connections (60 s default):
    # WebSocket pings keep the path alive without a frame Twilio would reject.
    config.websocket_ping_interval = ping_interval_s or None
    config.graceful_timeout = GRACEFUL_S
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


async def serve(runtime: Runtime, *, host: str, port: int,
                shutdown: trio.Event | None = None,
                task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until ``shutdown`` is set (by default: until SIGINT/SIGTERM). ``task_status``
    gets the bound URLs (port 0 picks a free port: tests and the demo use that)."""
    stop = shutdown if shutdown is not None else trio.Event()

    async def trigger() -> None:
        async with trio.open_nursery() as nursery:
            if shutdown is None:
                nursery.start_soon(wait_signal, stop)
            await stop.wait()
            nursery.cancel_scope.cancel()
        await drain(runtime)
        outer.start_soon(_watchdog)

    config = hypercorn_config(host, port, ping_interval_s=runtime.settings.ping_interval_s,
                              reuse_port=runtime.settings.reuse_port)
    async with trio.open_nursery() as outer:
        await hypercorn.trio.serve(create_app(runtime), config, shutdown_trigger=trigger,
                                   task_status=task_status)
        outer.cancel_scope.cancel()


@asynccontextmanager
async def open_server(settings: Settings, *, llm: LLM | None = None,
                      registry: ToolRegistry | None = None
                      ) -> AsyncIterator[tuple[str, Runtime]]:
    """The whole service in this process on the settings' host and port (port 0 picks a free
    one), yielding its URL and runtime; leaving drains and stops it. For the demo, tests and
    ``voiceagent.testing``."""
    async with open_runtime(settings, llm=llm, registry=registry) as runtime, \
            trio.open_nursery() as nursery:
        stop = trio.Event()
        binds = await nursery.start(partial(serve, runtime, host=settings.host,
                                            port=settings.port, shutdown=stop))
        try:
            yield binds[0], runtime
        finally:
            stop.set()


async def drain(runtime: Runtime) -> None:
    """Stop taking calls, let live ones finish up to DRAIN_TIMEOUT_S, then end them politely
    and flush pending writes. /health fails from the first moment, so the load balancer
    stops routing while the calls run on."""
    runtime.draining = True
    settings = runtime.settings
    log.info("draining", extra={"active_calls": runtime.calls.active,
                                "deadline_s": settings.drain_timeout_s})
    with trio.move_on_after(settings.drain_timeout_s):
        await runtime.calls.wait_idle()
    if runtime.calls.active:
        log.info("drain deadline reached, ending calls", extra={
            "active_calls": runtime.calls.active})
        runtime.end_calls.set()
        with trio.move_on_after(settings.end_grace_s):
            await runtime.calls.wait_idle()
    if runtime.calls.active:
        log.warning("calls stuck at shutdown", extra={
            "active_calls": runtime.calls.active, "messages": runtime.persist_stuck_calls()})
    flushed = await runtime.writer.flush(timeout_s=settings.flush_timeout_s)
    log.info("drained", extra={"active_calls": runtime.calls.active, "flushed": flushed})


async def _watchdog() -> None:
    """hypercorn shields a WebSocket send; a peer that stopped reading would hold the process
    past any deadline. Everything is flushed by now, so exiting is safe."""
    await trio.sleep(GRACEFUL_S + WATCHDOG_S)
    log.error("shutdown stuck on a connection that stopped reading; exiting")
    logging.shutdown()
    os._exit(0)


async def wait_signal(stop: trio.Event) -> None:
    """Set ``stop`` on the first SIGINT or SIGTERM."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("signal received", extra={"signal": signal.Signals(signum).name})
            stop.set()
            return
