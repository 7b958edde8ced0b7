"""A ping that reaches the caller while it closes the relay socket: ``voiceagent call --say
/interrupt --say /hangup`` ended in a traceback about one time in two (s26 README walk).

hypercorn pings every relay socket (PING_INTERVAL_S: its first ping goes out as the socket
opens, a few hundred milliseconds in), and a caller that hangs up just then sent its Close
before the ping arrived. trio-websocket answers every ping from its reader task; wsproto,
after our Close (LOCAL_CLOSING), refuses to send the pong, and the LocalProtocolError ended
the reader task, the call and the command (python-trio/trio-websocket#184, open). The server
here pings at the worst moment on purpose: between the caller's Close and its own."""

from __future__ import annotations

from functools import partial

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, Pong, Request, TextMessage

from voiceagent.app.caller import Identity, RelayTarget, open_relay


async def _ping_between_closes(stream: trio.SocketStream, got: list[object],
                               ponged: trio.Event) -> None:
    """A relay endpoint whose ping crosses the caller's Close on the wire: framed while the
    socket was open (as hypercorn's was), it arrives after the caller's Close went out."""
    ws = WSConnection(ConnectionType.SERVER)
    ping = b""
    async with stream:
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            ws.receive_data(data)
            for event in ws.events():
                got.append(event)
                if isinstance(event, Pong):
                    ponged.set()
                elif isinstance(event, Request):
                    await stream.send_all(ws.send(AcceptConnection()) + ws.send(Ping(b"early")))
                    ping = ws.send(Ping(b"late"))
                elif isinstance(event, CloseConnection):
                    await stream.send_all(ping + ws.send(event.response()))
                    return


async def test_a_ping_between_the_callers_close_and_the_servers_is_not_answered() -> None:
    got: list[object] = []
    ponged = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            endpoint = partial(_ping_between_closes, got=got, ponged=ponged)
            listeners = await nursery.start(partial(trio.serve_tcp, endpoint, 0,
                                                    host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            target = RelayTarget(url=f"ws://127.0.0.1:{port}/relay", action="", greeting=None,
                                 attributes={}, parameters={})
            async with open_relay(target, Identity()) as call:
                await ponged.wait()         # a ping while the socket is open is answered
                await call.hang_up()
            nursery.cancel_scope.cancel()
    assert [type(event) for event in got if not isinstance(event, Pong)] == [
        Request, TextMessage, CloseConnection]
    assert [event.payload for event in got if isinstance(event, Pong)] == [b"early"]
    close = got[-1]
    assert isinstance(close, CloseConnection)
    assert close.code == 1000
