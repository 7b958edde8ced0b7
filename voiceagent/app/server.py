"""Serve the app on hypercorn's trio worker: one port for webhooks and the relay socket."""

from __future__ import annotations

import errno
import logging
import math
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, nullcontext
from functools import partial
from typing import NoReturn

import hypercorn.trio
import trio
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    HTTPScope,
    Scope,
)

from voiceagent.app import asgi_queue, connection_cycle, http1_only, ws_compression, ws_pings
from voiceagent.app.connection_cycle import EdgeConfig
from voiceagent.app.ctrl_c import interrupt_alone, interrupts_escape
from voiceagent.app.open_connections import OpenConnections
from voiceagent.app.open_files import connection_limit
from voiceagent.app.runtime import Runtime, open_runtime
from voiceagent.app.stop_budget import GRACEFUL_S, budget_s, log_dropped
from voiceagent.app.web import create_app
from voiceagent.errors import ListenError
from voiceagent.llm.base import LLM
from voiceagent.log_episodes import Episode
from voiceagent.relay import first_look, peer_close
from voiceagent.settings import Settings
from voiceagent.tools.registry import ToolRegistry

log = logging.getLogger(__name__)

WATCHDOG_S = 10.0                  # a peer that stopped reading can hold a shielded send
                                   # (until DEAD_PEER_S, on Linux)
EMBEDDED_STUCK_EXIT = 1            # a program embedding the server, cut short by the watchdog
HARD_FRAME_LIMIT = 1024 * 1024     # hypercorn closes the socket (1009) beyond this; the
                                   # reader drops frames over MAX_FRAME_BYTES before that
BODY_TIMEOUT_S = 10.0              # a request's whole body, from the end of its headers:
                                   # Twilio sends its few KB at once
# A peer gone without a FIN (a NAT or balancer dropped the flow) or one that stopped reading
# (its window at zero) would hold a call's send for ever: hypercorn shields send_all from
# cancellation, so neither the call's teardown nor a drain can end it, and the call keeps its
# place, its session and its socket. The kernel drops such a connection once data has gone
# unacknowledged this long (zero-window probes included, Linux 5.10 and later); keepalive
# probes do the same for a connection with nothing to send (pings off).
DEAD_PEER_S = 30.0
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES = 20, 5, 3


def hypercorn_config(host: str, port: int, *, ping_interval_s: float = 20.0,
                     reuse_port: bool = False, idle_timeout_s: float = 310.0) -> EdgeConfig:
    config = EdgeConfig()
    # Bound here and handed to hypercorn as an fd: accepted connections inherit the
    # listener's options (``_drop_dead_peers``), which hypercorn offers no hook for; and for
    # one trio process per core (docker/entrypoint.sh starts them) SO_REUSEPORT, which
    # hypercorn 0.18 sets only for its own multi-worker mode.
    host = host.strip("[]")               # HOST=[::1] is allowed, as hypercorn took it
    listener = None
    try:
        listener = unbound_listener(host, reuse_port=reuse_port)
        listener.bind((host, port))
        listener.listen()
    except OSError as err:
        if listener is not None:
            listener.close()
        raise ListenError(host, port, _listen_problem(err)) from err
    config.bind = [f"fd://{listener.detach()}"]
    config.websocket_max_message_size = HARD_FRAME_LIMIT
    config.alpn_protocols = ["http/1.1"]   # HTTP/1.1 only, should TLS ever be ours (http1_only)
    # Twilio sends nothing on a quiet call and the ALB cuts idle connections (60 s default):
    # WebSocket pings keep the path alive without a frame Twilio would reject.
    config.websocket_ping_interval = ping_interval_s or None
    config.graceful_timeout = GRACEFUL_S
    # A connection's idle time before its first request and between requests, each
    # request's headers included (hypercorn has one timer for both): HTTP_IDLE_TIMEOUT_S, by
    # default above the ALB's idle timeout (300 s, sam/cloud-deploy-infra-template.yml): a
    # target that closes a kept-alive connection first races the ALB's next request on it,
    # which the ALB answers 502 (AWS's own advice). Without a proxy in front, set it lower.
    config.keep_alive_timeout = idle_timeout_s
    # Slow bodies are bounded by ``bounded_bodies``, not by ``config.read_timeout``: that one
    # bounds every read of a connection, WebSockets included, so it would cut a quiet call
    # (Twilio sends nothing between utterances, and pings may be off), while a body trickled
    # a byte at a time, just under it, would never trip it. Slow headers are already bounded
    # by ``keep_alive_timeout``, which runs from the connection's start, or its last answer
    # (see ``bounded_bodies``), to its next request.
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


def unbound_listener(host: str, *, reuse_port: bool = False) -> socket.socket:
    """The listener for ``host`` (no brackets) with all its options, before it is bound:
    what socket.create_server would make, built apart so that the one for "::" (every
    interface) can be checked without listening on every interface. On an IPv6 address
    IPV6_V6ONLY is off, so "::" lets IPv4 callers in too, as hypercorn's own bind did."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # restart at once
        if reuse_port:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and socket.has_dualstack_ipv6():
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        _drop_dead_peers(listener)
    except OSError:
        listener.close()
        raise
    return listener


def _listen_problem(err: OSError) -> str:
    """What went wrong and which setting fixes it; the commonest is a second ``serve``."""
    if err.errno == errno.EADDRINUSE:
        return ("the port is in use (another `voiceagent serve`, or another program): choose "
                "a free one (PORT; `demo --port`), or stop the process that holds it")
    if err.errno == errno.EADDRNOTAVAIL:
        return ("HOST is not an address of this machine: set HOST to one of its addresses, "
                "0.0.0.0 for all of them or 127.0.0.1 for this machine only")
    if err.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges): set PORT to 1024 or more"
    if isinstance(err, socket.gaierror):
        return ("HOST is neither an IP address nor a name that resolves: set HOST to an "
                "address of this machine (0.0.0.0 for all, 127.0.0.1 for this one only)")
    return f"{err.strerror or err} (errno {err.errno})"


def _drop_dead_peers(listener: socket.socket) -> None:
    """See DEAD_PEER_S. Options the platform lacks (TCP_USER_TIMEOUT is Linux's) are left
    out: a laptop without them serves as before."""
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_USER_TIMEOUT", int(DEAD_PEER_S * 1000)),
                        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
                        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
                        ("TCP_KEEPCNT", KEEPALIVE_PROBES)):
        option = getattr(socket, name, None)
        if option is not None:
            listener.setsockopt(socket.IPPROTO_TCP, option, value)


def exit_at_once(code: int) -> NoReturn:
    """The watchdog's exit: the log lines out, then the process ends without unwinding,
    since the task a stuck send holds would never let it unwind."""
    logging.shutdown()
    os._exit(code)


async def serve(runtime: Runtime, *, host: str, port: int,
                shutdown: trio.Event | None = None, exit_code: Callable[[], int] = lambda: 0,
                exit_process: Callable[[int], object] = exit_at_once,
                task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until ``shutdown`` is set (by default: until SIGINT/SIGTERM). ``task_status``
    gets the bound URLs (port 0 picks a free port: tests and the demo use that).
    ``exit_code``: what the process exits with when a connection holds the shutdown past
    the watchdog, the code it would have exited with had the shutdown gone through.
    ``exit_process``: how the watchdog exits, ``exit_at_once`` but in the tests of its
    deadline, whose exit returns (the watchdog then ends, and the stop waits on as before).

    A KeyboardInterrupt raised in the server's code (no SIGINT receiver, as in a program that
    embeds it) ends it at once and goes on up, as anywhere else (see ``ctrl_c``)."""
    stop = shutdown if shutdown is not None else trio.Event()
    stopped = False

    async def trigger() -> None:
        nonlocal stopped
        if shutdown is None:
            outer.start_soon(serve_signals, stop)
        await stop.wait()
        await drain(runtime)
        outer.start_soon(_watchdog, runtime, exit_code, exit_process)
        stopped = True

    config = hypercorn_config(host, port, ping_interval_s=runtime.settings.ping_interval_s,
                              reuse_port=runtime.settings.reuse_port,
                              idle_timeout_s=runtime.settings.http_idle_timeout_s)
    config.edge_refusals = runtime.edge_refusals
    config.open_connections = runtime.connections = OpenConnections(
        connection_limit(runtime.settings), runtime.edge_refusals)
    connection_cycle.install()
    asgi_queue.install()
    ws_compression.install()
    http1_only.install()
    peer_close.install()
    ws_pings.install()          # after peer_close: these two build on that stream class
    first_look.install()
    async with trio.open_nursery() as outer:
        app = interrupts_escape(bounded_bodies(create_app(runtime), runtime.edge_refusals,
                                               config.open_connections))
        await hypercorn.trio.serve(app, config, shutdown_trigger=trigger,
                                   task_status=task_status)
        if not stopped:
            # hypercorn ended before its trigger, which only a KeyboardInterrupt in one of
            # its own tasks does (max_requests is not set): taken for its shutdown, it was
            # lost on the way
            raise KeyboardInterrupt
        outer.cancel_scope.cancel()


def bounded_bodies(app: ASGIFramework, refusals: Episode,
                   connections: OpenConnections | None = None) -> ASGIFramework:
    """An HTTP request whose body has not all arrived ``BODY_TIMEOUT_S`` after its headers is
    answered 408 and its connection closed (hypercorn closes a connection whose request body
    was left unread), however slowly the bytes keep coming. Its last body is sent shielded,
    so that the connection's idle timer runs again after it. Quart's own BODY_TIMEOUT (60 s)
    applies only to a handler that reads the body; this applies to every request. WebSocket
    upgrades have no body and pass untouched. While the body arrives, ``connections`` may
    close it sooner to make room for a new connection: then it is answered 503."""
    def asgi(scope: Scope, receive: ASGIReceiveCallable,
             send: ASGISendCallable) -> Awaitable[None]:
        # the app's own coroutine, not awaited here: a WebSocket lasts its whole call, and a
        # frame awaiting it (~300 B) would last as long, in every call
        if scope["type"] != "http":
            return app(scope, receive, send)
        return bounded(scope, receive, send)

    async def bounded(scope: HTTPScope, receive: ASGIReceiveCallable,
                      send: ASGISendCallable) -> None:
        responded = False
        client = scope.get("client")
        peer = (str(client[0]), int(client[1])) if client and _has_body(scope) else None

        async def receive_in_time() -> ASGIReceiveEvent:
            message = await receive()
            if not message.get("more_body", False):
                body_clock.deadline = math.inf        # all there: the handler takes its time
                if connections is not None:
                    connections.body_arrived(peer)
            return message

        async def send_noting(message: ASGISendEvent) -> None:
            nonlocal responded
            responded = responded or message["type"] == "http.response.start"
            if message["type"] == "http.response.body" and not message.get("more_body"):
                # hypercorn restarts the connection's idle timer (HTTP_IDLE_TIMEOUT_S) in this
                # send, and quart-trio cancels the task once the body is out: unshielded, a
                # kept-alive connection had no timer at all after its first answer
                with trio.move_on_after(BODY_TIMEOUT_S, shield=True):
                    await send(message)
                return
            await send(message)

        with trio.CancelScope(deadline=trio.current_time() + BODY_TIMEOUT_S) as body_clock, \
                (connections.body_arriving(peer, body_clock) if connections is not None
                 else nullcontext()):
            await app(scope, receive_in_time, send_noting)
        if not body_clock.cancelled_caught:
            return
        status, text = 408, b"request body too slow"
        if connections is not None and connections.made_room(peer):   # counted there
            status, text = 503, b"server busy: too many connections, try again"
        else:
            refusals.note("body_too_slow", "request body too slow",
                          path=scope.get("path", ""), timeout_s=BODY_TIMEOUT_S)
        if not responded:
            await send(HTTPResponseStartEvent(
                type="http.response.start", status=status, trailers=False,
                headers=[(b"content-type", b"text/plain"), (b"connection", b"close")]))
            await send(HTTPResponseBodyEvent(type="http.response.body", body=text,
                                             more_body=False))
    return asgi


def _has_body(scope: HTTPScope) -> bool:
    return any(name.lower() == b"transfer-encoding"
               or (name.lower() == b"content-length" and value.strip() != b"0")
               for name, value in scope["headers"])


@asynccontextmanager
async def open_server(settings: Settings, *, llm: LLM | None = None,
                      registry: ToolRegistry | None = None,
                      exit_code: Callable[[], int] = lambda: EMBEDDED_STUCK_EXIT
                      ) -> AsyncIterator[tuple[str, Runtime]]:
    """The whole service in this process on the settings' host and port (port 0 picks a free
    one), yielding its URL and runtime; leaving drains and stops it. For the demo, tests and
    ``voiceagent.app.testing``. ``exit_code``: see ``serve``; by default not 0, since the
    program that embeds the server was cut short. A KeyboardInterrupt comes out bare."""
    try:
        async with open_runtime(settings, llm=llm, registry=registry) as runtime, \
                trio.open_nursery() as nursery:
            stop = trio.Event()
            binds = await nursery.start(partial(serve, runtime, host=settings.host,
                                                port=settings.port, shutdown=stop,
                                                exit_code=exit_code))
            try:
                yield binds[0], runtime
            finally:
                stop.set()
    except BaseExceptionGroup as group:
        interrupt = interrupt_alone(group)
        if interrupt is None:
            raise
        raise interrupt from None


async def drain(runtime: Runtime) -> None:
    """Stop taking calls, let live ones finish up to DRAIN_TIMEOUT_S, then end them politely
    and flush pending writes. /health fails from the first moment, so the load balancer
    stops routing while the calls run on. The stop's budget (``stop_budget``) starts here."""
    runtime.begin_stop()
    settings = runtime.settings
    log.info("draining", extra={"active_calls": runtime.calls.active,
                                "deadline_s": settings.drain_timeout_s,
                                "stop_budget_s": budget_s(settings)})
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
    flushed = await runtime.flush_writes(timeout_s=settings.flush_timeout_s)
    log.info("drained", extra={"active_calls": runtime.calls.active, "flushed": flushed})


async def _watchdog(runtime: Runtime, exit_code: Callable[[], int],
                    exit_process: Callable[[int], object]) -> None:
    """hypercorn shields a WebSocket send; a peer that stopped reading would hold the process
    past any deadline. The drain has flushed; what the store has not taken by now (it is
    down, or stalled) is lost, and said so. Never past the stop's budget."""
    deadline = trio.current_time() + GRACEFUL_S + WATCHDOG_S
    if runtime.stop is not None:
        deadline = min(deadline, runtime.stop.deadline)
    await trio.sleep_until(deadline)
    code = exit_code()
    log.error("shutdown stuck on a connection that stopped reading; exiting",
              extra={"exit_code": code})
    log_dropped(runtime.writer.unwritten(), why="the process exits under a stuck connection")
    exit_process(code)


async def serve_signals(stop: trio.Event,
                        first: Callable[[signal.Signals], None] | None = None) -> None:
    """Set ``stop`` on the first SIGINT or SIGTERM (told to ``first``), and take the later
    ones until cancelled (after the drain): the multi-worker entrypoint signals each worker
    twice, and a person or supervisor may repeat it. Left to the default action, a repeat
    would kill the process mid-drain: calls cut without their goodbye, pending writes lost."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if stop.is_set():
                log.info("signal received again: already draining",
                         extra={"signal": name, "to_stop_at_once": "SIGKILL"})
                continue
            log.info("signal received", extra={"signal": name})
            if first is not None:
                first(signal.Signals(signum))
            stop.set()
