"""The load generator sends each call's webhook when it is due, as Twilio does: never held
back by a limit of its own on threads (``caller.HTTP_THREADS``), which at 500 calls queued a
burst of /action callbacks for seconds and had them timed as the server's reconnect."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from tests.http_server_support import serving
from voiceagent.app.bench import BenchOptions, run_bench
from voiceagent.app.caller import HTTP_THREADS

CALLS = HTTP_THREADS + 1        # one webhook more than the caller's default lets out at once
BARRIER_S = 5.0


async def _relay(request: WebSocketRequest) -> None:
    """A relay that takes the setup and whatever follows until Twilio's side hangs up."""
    ws = await request.accept()
    try:
        while True:
            await ws.get_message()
    except ConnectionClosed:
        pass


async def test_every_call_webhook_is_in_flight_at_once() -> None:
    """The fake voice webhook answers none until all CALLS are waiting on it together."""
    together = threading.Barrier(CALLS, timeout=BARRIER_S)
    relay_url: list[str] = []

    class Webhook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                together.wait()
            except threading.BrokenBarrierError:
                self.send_response(503)
                self.end_headers()
                self.wfile.write(b"not every call's webhook was in flight at once")
                return
            body = (f'<Response><Connect action="/action"><ConversationRelay '
                    f'url="{relay_url[0]}"/></Connect></Response>').encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_websocket, _relay, "127.0.0.1", 0, None)
            relay_url.append(f"ws://127.0.0.1:{server.port}/relay")
            with serving(Webhook, backlog=CALLS) as base:
                result = await run_bench(BenchOptions(url=base, calls=CALLS, ramp_s=0,
                                                      script=(), progress=False))
            nursery.cancel_scope.cancel()
    assert result["error_kinds"] == {}
    assert result["calls_completed"] == CALLS
