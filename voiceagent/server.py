"""Serve the app on hypercorn's trio worker: one port for webhooks and the relay socket."""

from __future__ import annotations

import logging
import signal

import hypercorn.trio
import trio
from hypercorn.config import Config

from voiceagent.runtime import Runtime
from voiceagent.web import create_app

log = logging.getLogger(__name__)

HARD_FRAME_LIMIT = 1024 * 1024     # hypercorn closes the socket (1009) beyond this; the
                                   # reader drops frames over MAX_FRAME_BYTES before that


def hypercorn_config(host: str, port: int) -> Config:
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.websocket_max_message_size = HARD_FRAME_LIMIT
    config.graceful_timeout = 5.0
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


async def serve(runtime: Runtime, *, host: str, port: int,
                shutdown: trio.Event | None = None,
                task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until SIGINT/SIGTERM or ``shutdown`` is set. ``task_status`` gets the bound
    URLs (port 0 picks a free port: tests and the demo use that)."""
    stop = shutdown if shutdown is not None else trio.Event()

    async def trigger() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_wait_signal, stop)
            await stop.wait()
            nursery.cancel_scope.cancel()
        runtime.draining = True
        log.info("shutting down", extra={"active_calls": runtime.calls.active})

    await hypercorn.trio.serve(create_app(runtime), hypercorn_config(host, port),
                               shutdown_trigger=trigger, task_status=task_status)


async def _wait_signal(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("signal received", extra={"signal": signal.Signals(signum).name})
            stop.set()
            return
