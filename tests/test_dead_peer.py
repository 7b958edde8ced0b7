"""A peer that stops reading, through the real server and a real TCP connection.

hypercorn shields its ``send_all`` from cancellation, so a relay socket whose peer keeps the
connection open but no longer reads (its receive window at zero) held the call's send, and
with it the call, its place under MAX_CALLS and its session, for ever: no teardown deadline
or drain could end it. The listener's TCP_USER_TIMEOUT (``DEAD_PEER_S``) has the kernel drop
such a connection; here it is one second, and the peer is a socket with a 4 KiB receive
buffer that stops reading after its prompt, while the model streams megabytes.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import trio
import wsproto
import wsproto.events

import voiceagent.app.server as server_module
from tests.fakes import FakeLLM
from tests.server_harness import AUTH_TOKEN, make_settings, running_server
from voiceagent.app.caller import Identity, open_call, parse_relay_twiml, post_form
from voiceagent.llm.base import StreamEnd, TextDelta
from voiceagent.signature import sign

pytestmark = pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"),
                                reason="TCP_USER_TIMEOUT is Linux's")

CHUNK = "word " * 6_000              # 30 KB a delta; 200 of them: far more than the buffers


async def _stalled_call(url: str, identity: Identity) -> trio.SocketStream:
    """A call whose socket sent setup and a prompt, then reads nothing more."""
    target = parse_relay_twiml(await post_form(url + "/twiml", {
        "CallSid": identity.call_sid, "From": identity.from_number,
        "To": identity.to_number}, AUTH_TOKEN))
    host, port = url.removeprefix("http://").split(":")
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)     # before connect: the window
    await sock.connect((host, int(port)))
    stream = trio.SocketStream(sock)
    client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    signature = sign(AUTH_TOKEN, target.url)
    await stream.send_all(client.send(wsproto.events.Request(
        host=f"{host}:{port}", target="/relay",
        extra_headers=[(b"X-Twilio-Signature", signature.encode())])))
    accepted = False
    while not accepted:
        client.receive_data(await stream.receive_some(4096))
        accepted = any(isinstance(e, wsproto.events.AcceptConnection)
                       for e in client.events())
    for frame in ({"type": "setup", "sessionId": "VX" + "1" * 32,
                   "callSid": identity.call_sid, "from": identity.from_number,
                   "to": identity.to_number, "customParameters": target.parameters},
                  {"type": "prompt", "voicePrompt": "tell me everything", "lang": "en-US",
                   "last": True}):
        await stream.send_all(client.send(wsproto.events.TextMessage(json.dumps(frame))))
    return stream


async def test_a_peer_that_stops_reading_loses_its_call_and_frees_its_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "DEAD_PEER_S", 1.0)
    llm = FakeLLM([[0.0, *[TextDelta(CHUNK) for _ in range(200)], StreamEnd("end_turn")],
                   [0.0, TextDelta("We are open."), StreamEnd("end_turn")]])
    identity = Identity()
    with trio.fail_after(30):
        async with running_server(make_settings(tmp_path, MAX_CALLS="1"), llm=llm) as server:
            # closed on the way out even when the test fails, before the server shuts down:
            # a send still stalled there would hold the shutdown too
            async with await _stalled_call(server.url, identity):
                while server.runtime.calls.active == 0:     # until it claims
                    await server.runtime.calls.wait_changed()
                await server.runtime.calls.wait_idle()     # the kernel dropped the connection
                assert identity.call_sid not in server.runtime.sessions._live
                async with open_call(server.url, auth_token=AUTH_TOKEN) as call:  # its place
                    await call.say("what are your hours?")
                    assert (await call.read_reply()).text == "We are open."
                    await call.hang_up()
                await server.runtime.calls.wait_idle()
    stalled = server.runtime.calls.reports[0]
    assert stalled.call_sid == identity.call_sid
    assert stalled.ended_by == "dropped"               # the connection lost: not a hang-up
    assert llm.closed_at                               # the model stream was closed too


def _assert_dead_peer_options(accepted: socket.socket) -> None:
    assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == int(
        server_module.DEAD_PEER_S * 1000)
    assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == (
        server_module.KEEPALIVE_IDLE_S)


@pytest.mark.parametrize(("host", "connect_to"), [("127.0.0.1", "127.0.0.1"), ("[::1]", "::1")])
def test_the_listener_hands_its_limits_to_every_connection(host: str, connect_to: str) -> None:
    """Accepted sockets inherit the listener's options (hypercorn has no hook for its
    accepted sockets), and HOST=[::1] binds, as with hypercorn's own bind."""
    if ":" in host and not socket.has_dualstack_ipv6():
        pytest.skip("no dual-stack IPv6 here")
    config = server_module.hypercorn_config(host, 0)
    with socket.socket(fileno=int(config.bind[0].removeprefix("fd://"))) as listener:
        listener.settimeout(5)
        port = listener.getsockname()[1]
        with socket.create_connection((connect_to, port), timeout=5):
            accepted, _ = listener.accept()
        with accepted:
            _assert_dead_peer_options(accepted)


def test_the_listener_on_every_address_lets_ipv4_callers_in() -> None:
    """HOST=:: is one IPv6 socket, which must take IPv4 callers too (IPV6_V6ONLY off), as
    hypercorn's own bind did. The socket hypercorn_config builds for "::" is checked without
    listening on every interface: bound instead to 127.0.0.1 as IPv6 writes it
    (::ffff:127.0.0.1), which an IPv6-only socket cannot bind, and called over IPv4."""
    if not socket.has_dualstack_ipv6():
        pytest.skip("no dual-stack IPv6 here")
    with server_module.unbound_listener("::") as listener:
        assert listener.family == socket.AF_INET6
        assert listener.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        listener.bind(("::ffff:127.0.0.1", 0))
        listener.listen()
        listener.settimeout(5)
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as caller:
            accepted, peer = listener.accept()
            assert caller.family == socket.AF_INET
        with accepted:
            assert peer[0] == "::ffff:127.0.0.1"
            _assert_dead_peer_options(accepted)
