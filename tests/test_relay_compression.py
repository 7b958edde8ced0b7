"""The relay socket declines permessage-deflate. hypercorn accepted it for any client that
offered it, and wsproto inflates each received chunk without a bound before hypercorn's 1 MiB
message limit looks at it: 200 KB of deflated zeros, sent on a replayed signed upgrade (see
test_session_binding), held every call in the process still for ~0.7 s. Twilio's frames are
small JSON, so compression saves nothing worth that."""

from __future__ import annotations

import json
from pathlib import Path

import trio
import wsproto
import wsproto.events as ev
from wsproto.extensions import PerMessageDeflate

from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from voiceagent.signature import sign


async def test_a_socket_offering_compression_gets_none_and_is_served(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with running_server(make_settings(tmp_path)) as server:
            host = server.url.removeprefix("http://")
            address, port = host.split(":")
            url = server.url.replace("http://", "ws://") + "/relay"
            client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
            async with await trio.open_tcp_stream(address, int(port)) as stream:
                await stream.send_all(client.send(ev.Request(
                    host=host, target="/relay", extensions=[PerMessageDeflate()],
                    extra_headers=[(b"X-Twilio-Signature", sign(AUTH_TOKEN, url).encode())])))
                events: list[ev.Event] = []
                while not events:
                    client.receive_data(await stream.receive_some(65536))
                    events = list(client.events())
                assert isinstance(events[0], ev.AcceptConnection)
                assert events[0].extensions == []
                # uncompressed, as agreed: a frame the server reads (no setup: it asks again)
                await stream.send_all(client.send(ev.TextMessage(json.dumps({"type": "info"}))))
                await stream.send_all(client.send(ev.CloseConnection(code=1000)))
                while data := await stream.receive_some(65536):
                    client.receive_data(data)
                closes = [e for e in client.events() if isinstance(e, ev.CloseConnection)]
    assert [c.code for c in closes] == [1000]
