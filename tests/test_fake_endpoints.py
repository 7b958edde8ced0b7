"""The test infrastructure itself: the fake Bedrock endpoint over TLS, its fault replies and
credential check, the local container-credentials endpoint (with botocore's own provider), and
a real CONNECT proxy process in front of the TLS fake."""

from __future__ import annotations

import json
import ssl
import struct
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
import trio
import trustme
from botocore.config import Config
from botocore.credentials import Credentials, ReadOnlyCredentials
from botocore.exceptions import ClientError

from tests.aws_credentials_server import running_credentials_server
from tests.fake_bedrock import (
    EXPIRED_TOKEN_MESSAGE,
    FakeBedrock,
    Hangup,
    HangupBeforeHeaders,
    Stall,
    burst_reply,
    hangup_reply,
    message_start,
    running_fake_bedrock,
    text_events,
    text_reply,
)
from tests.proxy_support import running_proxy

BODY = json.dumps({"messages": [{"role": "user", "content": [{"text": "Hi"}]}]}).encode()
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
                   "http_proxy", "https_proxy", "all_proxy", "no_proxy")


# ---------------------------------------------------------------------------- helpers

def converse_request(host: str, model: str = "m", *, authorization: str | None = None) -> bytes:
    head = [f"POST /model/{model}/converse-stream HTTP/1.1", f"Host: {host}",
            "Content-Type: application/json", f"Content-Length: {len(BODY)}"]
    if authorization is not None:
        head.append(f"Authorization: {authorization}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + BODY


def parse_chunked(data: bytes) -> tuple[int, list[bytes], bool]:
    """Status, the complete chunks so far, and whether the terminating chunk came."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return 0, [], False
    status = int(head.split(b" ", 2)[1])
    chunks: list[bytes] = []
    while True:
        line, sep, after = rest.partition(b"\r\n")
        if not sep:
            return status, chunks, False
        size = int(line, 16)
        if size == 0:
            return status, chunks, True
        if len(after) < size + 2:
            return status, chunks, False
        chunks.append(after[:size])
        rest = after[size + 2:]


async def read_to_end(stream: trio.abc.ReceiveStream) -> tuple[bytes, BaseException | None]:
    """Everything until EOF, and the error that ended it instead, if one did."""
    data = bytearray()
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except trio.BrokenResourceError as err:
            return bytes(data), err.__cause__ or err
        if not chunk:
            return bytes(data), None
        data += chunk


async def read_whole_reply(stream: trio.abc.ReceiveStream) -> bytes:
    """Reads a chunked reply to its terminating chunk."""
    data = b""
    while not parse_chunked(data)[2]:
        data += await stream.receive_some(65536)
    return data


async def read_chunks(stream: trio.abc.ReceiveStream, count: int) -> list[bytes]:
    """Reads until ``count`` chunks of a chunked 200 have come."""
    data = b""
    while True:
        status, chunks, _ = parse_chunked(data)
        if len(chunks) >= count:
            assert status == 200
            return chunks
        data += await stream.receive_some(65536)


async def get_json(stream: trio.abc.Stream, path: str, host: str) -> tuple[int, Any]:
    """GET with keep-alive, a Content-Length reply read."""
    await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive_some(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    length = next(int(line.split(":")[1]) for line in lines
                  if line.lower().startswith("content-length:"))
    while len(body) < length:
        body += await stream.receive_some(65536)
    return int(lines[0].split(" ")[1]), json.loads(body)


async def open_tls(fake: FakeBedrock, *, server_hostname: str = "localhost",
                   context: ssl.SSLContext | None = None) -> trio.SSLStream[trio.SocketStream]:
    raw = await trio.open_tcp_stream("127.0.0.1", fake.port)
    stream = trio.SSLStream(raw, context or fake.client_ssl_context(),
                            server_hostname=server_hostname)
    try:
        await stream.do_handshake()
    except BaseException:
        await raw.aclose()
        raise
    return stream


def boto3_converse(endpoint: str, verify: str | bool, *,
                   proxies: dict[str, str] | None = None) -> str:
    """The text of one ConverseStream call made by the real boto3 client (in a thread)."""
    config = Config(retries={"total_max_attempts": 1}, proxies=proxies,
                    connect_timeout=5, read_timeout=5)
    client = boto3.client("bedrock-runtime", endpoint_url=endpoint, verify=verify,
                          config=config)
    try:
        response = client.converse_stream(
            modelId="m", messages=[{"role": "user", "content": [{"text": "Hi"}]}])
        return "".join(e["contentBlockDelta"]["delta"]["text"] for e in response["stream"]
                       if "contentBlockDelta" in e)
    finally:
        client.close()


class Tap(trio.abc.Stream):
    """A transport that keeps a copy of every byte received (to count TLS records)."""

    def __init__(self, inner: trio.SocketStream) -> None:
        self.inner = inner
        self.received = bytearray()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        self.received += data
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


def tls_records(data: bytes) -> list[tuple[int, int]]:
    """(content type, length) of each TLS record in ``data``."""
    records, offset = [], 0
    while offset + 5 <= len(data):
        kind, _version, length = struct.unpack("!BHH", data[offset:offset + 5])
        records.append((kind, length))
        offset += 5 + length
    return records


# ---------------------------------------------------------------------------- TLS

@pytest.mark.usefixtures("aws_env")
async def test_boto3_streams_over_tls_with_the_private_ca() -> None:
    with trio.fail_after(10):
        async with running_fake_bedrock(tls=True) as fake:
            assert fake.endpoint_url == f"https://localhost:{fake.port}"
            assert fake.ca_bundle is not None
            assert fake.ca is not None
            bundle = trio.Path(fake.ca_bundle)
            assert await bundle.read_bytes() == fake.ca.cert_pem.bytes()
            fake.push(text_reply(["Hello", " there"]))
            text = await trio.to_thread.run_sync(boto3_converse, fake.endpoint_url,
                                                 fake.ca_bundle)
            (request,) = fake.requests
            await request.done.wait()
    assert text == "Hello there"
    assert request.outcome == "complete"
    assert request.connection.tls
    assert request.access_key == "AKIDEXAMPLE"
    assert fake.violations == []
    assert fake.tls_failures == 0
    assert not await bundle.exists()            # the temporary directory went with the fake


async def test_the_certificate_names_127_0_0_1_and_stats_work_over_tls(tmp_path: Path) -> None:
    with trio.fail_after(5):
        async with running_fake_bedrock(tls=True, ca_dir=tmp_path) as fake:
            assert fake.ca_bundle == str(tmp_path / "fake-bedrock-ca.pem")
            context = ssl.create_default_context(cafile=fake.ca_bundle)
            stream = await open_tls(fake, server_hostname="127.0.0.1", context=context)
            async with stream:
                status, stats = await get_json(stream, "/stats", "127.0.0.1")
                assert status == 200
                assert [c["id"] for c in stats["connections"]] == [0]
            await fake.connections[0].closed.wait()
    assert fake.connections[0].closed_at is not None


async def test_a_client_that_distrusts_the_ca_fails_and_the_server_carries_on() -> None:
    with trio.fail_after(5):
        async with running_fake_bedrock(tls=True) as fake:
            stranger = ssl.create_default_context()
            trustme.CA().configure_trust(stranger)
            with pytest.raises(trio.BrokenResourceError) as refused:
                await open_tls(fake, context=stranger)
            assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)
            await fake.wait_tls_failures(1)
            assert fake.connections == []
            async with await open_tls(fake) as stream:
                status, _ = await get_json(stream, "/stats", "localhost")
    assert status == 200
    assert fake.tls_failures == 1
    assert len(fake.tls_errors) == 1


async def test_each_event_is_its_own_tls_record() -> None:
    reply = burst_reply(["a", "b", "c"], first_delay_s=0.01)
    assert [f.delay_s for f in reply.frames][:3] == [0.0, 0.01, 0.0]
    with trio.fail_after(5):
        async with running_fake_bedrock(tls=True) as fake:
            fake.push(reply)
            context = fake.client_ssl_context()
            context.maximum_version = ssl.TLSVersion.TLSv1_2    # no tickets after handshake
            tap = Tap(await trio.open_tcp_stream("127.0.0.1", fake.port))
            async with trio.SSLStream(tap, context, server_hostname="localhost") as stream:
                await stream.do_handshake()
                mark = len(tap.received)
                await stream.send_all(converse_request("localhost"))
                _, chunks, _ = parse_chunked(await read_whole_reply(stream))
                records = tls_records(bytes(tap.received[mark:]))
    assert chunks == [f.data for f in reply.frames]
    # the headers, one record per frame, the terminating chunk: all application data
    assert records
    assert {kind for kind, _ in records} == {23}
    assert len(records) == 1 + len(reply.frames) + 1


# ---------------------------------------------------------------------------- faults

@pytest.mark.parametrize("tls", [False, True])
async def test_hangup_sends_some_frames_then_a_fin(tls: bool) -> None:
    reply = hangup_reply(["We open", " at", " nine."], after=2)
    with trio.fail_after(5):
        async with running_fake_bedrock(tls=tls) as fake:
            fake.push(reply)
            stream: trio.abc.Stream
            if tls:
                stream = await open_tls(fake)
            else:
                stream = await trio.open_tcp_stream("127.0.0.1", fake.port)
            async with stream:
                await stream.send_all(converse_request("localhost"))
                data, error = await read_to_end(stream)
            (request,) = fake.requests
            await request.done.wait()
    status, chunks, terminated = parse_chunked(data)
    assert (status, chunks, terminated) == (200, [f.data for f in reply.frames[:2]], False)
    if tls:     # a FIN with no close_notify: the TLS layer calls it a truncation
        assert isinstance(error, ssl.SSLError)
    else:
        assert error is None
    assert request.outcome == "hangup"
    assert request.frames_sent == 2
    assert request.connection.hung_up_at is not None
    assert request.connection.closed_at is None


async def test_hangup_with_reset_and_before_headers() -> None:
    with trio.fail_after(5):
        async with running_fake_bedrock() as fake:
            fake.push(Hangup(1, reset=True, frames=(message_start(),)),
                      HangupBeforeHeaders(), HangupBeforeHeaders(reset=True))
            errors: list[BaseException | None] = []
            for _ in range(3):
                async with await trio.open_tcp_stream("127.0.0.1", fake.port) as stream:
                    await stream.send_all(converse_request("127.0.0.1"))
                    data, error = await read_to_end(stream)
                    errors.append(error)
                    if len(errors) > 1:
                        assert data == b""          # not one byte before the close
            requests = await fake.wait_requests(3)
            for request in requests:
                await request.done.wait()
    assert isinstance(errors[0], ConnectionResetError)
    assert errors[1] is None
    assert isinstance(errors[2], ConnectionResetError)
    assert [r.outcome for r in requests] == ["reset", "hangup", "reset"]
    assert [r.frames_sent for r in requests] == [1, 0, 0]


@pytest.mark.parametrize("tls", [False, True])
async def test_stall_holds_the_connection_until_the_client_gives_up(tls: bool) -> None:
    frames = (message_start(), *text_events(["Hmm"], stop=False))
    with trio.fail_after(5):
        async with running_fake_bedrock(tls=tls) as fake:
            fake.push(Stall(frames))
            stream: trio.abc.Stream
            if tls:
                stream = await open_tls(fake)
            else:
                stream = await trio.open_tcp_stream("127.0.0.1", fake.port)
            async with stream:
                await stream.send_all(converse_request("localhost"))
                chunks = await read_chunks(stream, len(frames))
                with trio.move_on_after(0.1) as read_timeout:    # the client's read timeout
                    await stream.receive_some(65536)
                assert read_timeout.cancelled_caught
                (request,) = fake.requests
                assert request.outcome == "stalled"
                assert not request.done.is_set()
            await request.done.wait()
    assert chunks == [f.data for f in frames]
    assert request.outcome == "client_closed"
    assert request.connection.closed_at is not None
    assert request.connection.hung_up_at is None


# ---------------------------------------------------------------------------- credentials

@pytest.mark.usefixtures("aws_env")
async def test_a_key_outside_accepted_keys_is_an_expired_token() -> None:
    with trio.fail_after(10):
        async with running_fake_bedrock(accepted_keys={"ASIAOTHER"}) as fake:
            fake.push(text_reply(["Fresh."]))
            with pytest.raises(ClientError) as refused:
                await trio.to_thread.run_sync(boto3_converse, fake.endpoint_url, False)
            assert fake.accepted_keys is not None
            fake.accepted_keys.add("AKIDEXAMPLE")
            text = await trio.to_thread.run_sync(boto3_converse, fake.endpoint_url, False)
    error = refused.value.response
    assert error["Error"]["Code"] == "ExpiredTokenException"
    assert error["Error"]["Message"] == EXPIRED_TOKEN_MESSAGE
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert text == "Fresh."                 # the refused request took no scripted reply
    assert [(r.access_key, r.outcome) for r in fake.requests] == [
        ("AKIDEXAMPLE", "http_error"), ("AKIDEXAMPLE", "complete")]


def container_credentials() -> Credentials:
    credentials = botocore.session.Session().get_credentials()
    assert credentials is not None
    return credentials


def frozen(credentials: Credentials) -> ReadOnlyCredentials:
    keys: ReadOnlyCredentials = credentials.get_frozen_credentials()
    return keys


@pytest.fixture
def container_env(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing but what an ECS task would have: no keys in the environment, no proxy."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("container_env")
async def test_botocore_refetches_container_credentials_inside_the_mandatory_window(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with trio.fail_after(10):
        async with running_credentials_server(expires_in_s=300,
                                              auth_token="Bearer task") as server:
            monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", server.url)
            monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "Bearer task")
            credentials = await trio.to_thread.run_sync(container_credentials)
            first = await trio.to_thread.run_sync(frozen, credentials)
            rotated = server.rotate()
            second = await trio.to_thread.run_sync(frozen, credentials)
    assert credentials.method == "container-role"
    assert first.access_key == "ASIAFAKE000000000001"
    assert first.token == "fake-session-token-1"
    assert second.access_key == rotated != first.access_key
    # 5 minutes left is inside the 10-minute mandatory window: every read fetches again
    assert server.served == server.requests == 3
    assert set(server.authorizations) == {"Bearer task"}


@pytest.mark.usefixtures("container_env")
async def test_botocore_keeps_container_credentials_outside_the_refresh_window(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with trio.fail_after(10):
        async with running_credentials_server(expires_in_s=3600) as server:
            monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", server.url)
            credentials = await trio.to_thread.run_sync(container_credentials)
            server.rotate()
            kept = await trio.to_thread.run_sync(frozen, credentials)   # an hour left: cached
            # A new session whose first fetch fails once (botocore sleeps 1 s, then retries)
            # and says a minute is left: the next read must fetch again.
            server.expires_in_s = 60
            server.fail_next(1)
            credentials = await trio.to_thread.run_sync(container_credentials)
            rotated = server.rotate()
            fresh = await trio.to_thread.run_sync(frozen, credentials)
    assert kept.access_key == "ASIAFAKE000000000001"
    assert fresh.access_key == rotated
    assert server.requests == 4         # the first; a 500 and its retry; the refresh
    assert server.served == 3
    assert server.authorizations == [None] * 4      # no AWS_CONTAINER_AUTHORIZATION_TOKEN


async def test_the_credentials_endpoint_fails_and_checks_its_token_on_demand() -> None:
    with trio.fail_after(5):
        async with running_credentials_server(auth_token="secret") as server:
            server.fail_next(1)
            async with await trio.open_tcp_stream("127.0.0.1", server.port) as stream:
                failed, _ = await get_json(stream, server.path, "127.0.0.1")
                denied, _ = await get_json(stream, server.path, "127.0.0.1")
                server.failing = True
                failing, _ = await get_json(stream, server.path, "127.0.0.1")
                missing, _ = await get_json(stream, "/other", "127.0.0.1")
    assert (failed, denied, failing, missing) == (500, 401, 500, 404)
    assert server.requests == 4
    assert server.served == 0


# ---------------------------------------------------------------------------- proxy

async def connect_through(proxy_port: int, target: str,
                          authorization: str | None = None) -> tuple[int, trio.SocketStream]:
    """``CONNECT target`` on a new connection: the status, and the stream (the tunnel)."""
    stream = await trio.open_tcp_stream("127.0.0.1", proxy_port)
    head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
    if authorization is not None:
        head += f"Proxy-Authorization: {authorization}\r\n"
    await stream.send_all((head + "\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]), stream


async def test_a_connect_tunnel_reaches_the_tls_fake() -> None:
    with trio.fail_after(10):
        async with running_fake_bedrock(tls=True) as fake, running_proxy() as proxy:
            target = f"localhost:{fake.port}"
            status, tunnel = await connect_through(proxy.port, target)
            assert status == 200
            async with trio.SSLStream(tunnel, fake.client_ssl_context(),
                                      server_hostname="localhost") as stream:
                stats_status, stats = await get_json(stream, "/stats", target)
            assert await proxy.wait_tunnels(1) == [target]
    assert stats_status == 200
    assert len(stats["connections"]) == 1
    assert proxy.url == f"http://127.0.0.1:{proxy.port}"


async def test_the_proxy_wants_its_password() -> None:
    reply = text_reply(["Through", " the proxy."])
    with trio.fail_after(10):
        async with running_fake_bedrock(tls=True) as fake, \
                running_proxy(basic_auth="agent:s3cret/+") as proxy:
            target = f"localhost:{fake.port}"
            statuses = []
            for credentials in (None, "agent:wrong"):
                authorization = None if credentials is None else \
                    proxy.proxy_authorization(credentials)
                status, refused = await connect_through(proxy.port, target, authorization)
                statuses.append(status)
                await refused.aclose()
            fake.push(reply)
            status, tunnel = await connect_through(proxy.port, target,
                                                   proxy.proxy_authorization())
            statuses.append(status)
            async with trio.SSLStream(tunnel, fake.client_ssl_context(),
                                      server_hostname="localhost") as stream:
                await stream.send_all(converse_request(target))
                chunks = await read_chunks(stream, len(reply.frames))
            await proxy.wait_tunnels(1)
    assert statuses == [407, 407, 200]
    assert chunks == [f.data for f in reply.frames]
    assert proxy.auth_failures() == 2
    assert proxy.auth_url == f"http://agent:s3cret%2F%2B@127.0.0.1:{proxy.port}"


@pytest.mark.usefixtures("aws_env")
async def test_boto3_streams_through_the_authenticated_proxy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with trio.fail_after(10):
        async with running_fake_bedrock(tls=True) as fake, \
                running_proxy(basic_auth="agent:s3cret") as proxy:
            fake.push(text_reply(["Proxied."]))
            assert fake.ca_bundle is not None
            text = await trio.to_thread.run_sync(
                lambda: boto3_converse(fake.endpoint_url, str(fake.ca_bundle),
                                       proxies={"https": proxy.auth_url}))
            tunnels = await proxy.wait_tunnels(1)
    assert text == "Proxied."
    assert tunnels == [f"localhost:{fake.port}"]
    assert fake.violations == []
