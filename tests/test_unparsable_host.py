"""A request whose Host (or trusted X-Forwarded-Host) makes no URL is refused like any other
bad signature: 403 and one line, never a 500 with a traceback. The signed URL is built from
that header, and the twilio package's validator raises ValueError on a port that is not a
number or an unclosed IPv6 bracket; anyone can send such a header, signed or not."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.server_harness import RunningServer, make_settings, running_server

BAD_HOSTS = ["127.0.0.1:abc", "[::1"]


async def status_of(server: RunningServer, head: list[str], body: bytes = b"") -> int:
    """Send a request head by hand (the Host among ``head``); the answer's status."""
    host, port = server.url.removeprefix("http://").split(":")
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        answer = await stream.receive_some(4096)
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize("host", BAD_HOSTS)
async def test_a_relay_upgrade_with_an_unparsable_host_is_refused(
        tmp_path: Path, host: str) -> None:
    with trio.fail_after(10):
        async with running_server(make_settings(tmp_path)) as server:
            status = await status_of(server, [
                "GET /relay HTTP/1.1", f"Host: {host}", "Upgrade: websocket",
                "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version: 13", "X-Twilio-Signature: bm90LWEtc2lnbmF0dXJl"])
    assert status == 403


@pytest.mark.parametrize("host", BAD_HOSTS)
async def test_a_webhook_with_an_unparsable_forwarded_host_is_refused(
        tmp_path: Path, host: str) -> None:
    with trio.fail_after(10):
        async with running_server(make_settings(tmp_path, TRUST_PROXY_HEADERS="true")) as server:
            status = await status_of(server, [
                "POST /action HTTP/1.1", f"Host: {server.url.removeprefix('http://')}",
                f"X-Forwarded-Host: {host}", "X-Twilio-Signature: bm90LWEtc2lnbmF0dXJl",
                "Content-Type: application/x-www-form-urlencoded", "Content-Length: 3"],
                b"a=b")
    assert status == 403
