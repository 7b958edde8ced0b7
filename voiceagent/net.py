"""One client connection for HTTP exchanges with AWS (the model's streams, the store's writes):
TCP, optionally tunnelled through an HTTP CONNECT proxy (``proxy_for`` reads HTTPS_PROXY and
NO_PROXY as botocore does), optionally TLS, with a read that can say "nothing has arrived"
without waiting.

Why not ``trio.SSLStream``. A turn that holds text reads the model once per hold window and
must take everything that has arrived by then, wherever it sits: in the kernel, or already
read into the TLS layer as whole records waiting to be decrypted. ``SSLStream`` keeps those
records in a private buffer and offers no read that returns without waiting, so a burst of
events that came in one segment stayed there until the next segment woke the reader (seconds
later, one event per wake). Here the TLS layer is the standard library's own ``SSLObject``
over two ``MemoryBIO`` buffers, driven by a non-blocking socket and trio's
``wait_readable``/``wait_writable``: every buffer is ours to look at, and a read that finds
nothing returns at once. OpenSSL does the protocol (handshake, records, certificate and
hostname checks); this module only moves bytes.

Cancellation. ``receive`` waits only in ``wait_readable``, which consumes nothing, so a cancel
loses no byte. ``close_now`` is synchronous and wakes any task waiting on the socket
(``notify_closing``), which is how a barge-in or a read timeout stops a read at once.
"""

from __future__ import annotations

import base64
import re
import socket
import ssl
import urllib.request
from contextlib import suppress
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import h11
import trio

READ_SIZE = 65536
MAX_PROXY_ANSWER = 16 * 1024


class ProxyRefused(Exception):
    """The HTTP proxy answered the CONNECT with something other than 2xx."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        super().__init__(f"the HTTP proxy refused the tunnel: {status} {reason}".rstrip())


@dataclass(frozen=True, slots=True)
class Proxy:
    """An ``http://[user:password@]host:port`` proxy, reached with CONNECT."""

    host: str
    port: int
    authorization: str | None = None        # the Proxy-Authorization value, if any

    @classmethod
    def from_url(cls, url: str) -> Proxy:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"proxy URL {redact_url(url)!r}: only http:// proxies are "
                             "supported (the tunnel through it is TLS to Bedrock anyway)")
        authorization = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(pair.encode()).decode()
        return cls(parts.hostname, parts.port or 80, authorization)


# an optional scheme and //, then everything up to the authority's last @ (a password may
# hold an @ of its own); the authority ends at the first / ? or #
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://|//)?[^/?#]*@")


def redact_url(url: str) -> str:
    """``url`` without its user name and password, for logs and errors: a proxy or gateway
    often takes its token as the user name alone (``http://TOKEN@proxy:3128``). Also for a
    URL given without its scheme, as HTTPS_PROXY may be."""
    return _USERINFO.sub(r"\1***@", url, count=1)



class Link:
    """A connected socket, plain or TLS. Not for concurrent use by two tasks, except that
    ``close_now`` may come from anywhere in the trio thread."""

    __slots__ = ("_failed", "_incoming", "_outgoing", "_sock", "_tls", "_unsent")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._tls: ssl.SSLObject | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._unsent = b""                  # TLS bytes produced by a read, not yet sent
        self._failed: OSError | None = None     # met after data that was handed over first

    @property
    def closed(self) -> bool:
        return self._sock.fileno() < 0

    def close_now(self) -> None:
        """Synchronous: the peer gets a FIN now, and a task waiting on the socket wakes with
        ``ClosedResourceError``."""
        if self.closed:
            return
        with suppress(OSError, ValueError):
            trio.lowlevel.notify_closing(self._sock)
        self._sock.close()

    # ------------------------------------------------------------------ TLS

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str,
                        already_read: bytes = b"") -> None:
        """Handshake as a client; certificate and host name are checked as ``context`` says.
        ``already_read``: bytes that followed a proxy's answer, the server's first ones."""
        self._incoming.write(already_read)
        self._tls = context.wrap_bio(self._incoming, self._outgoing,
                                     server_hostname=server_hostname)
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._send_raw(self._outgoing.read())
                data = await self._receive_raw()
                if data:
                    self._incoming.write(data)
                else:
                    self._incoming.write_eof()  # the next step raises SSLEOFError
        await self._send_raw(self._outgoing.read())

    # ------------------------------------------------------------------ sending

    async def send_all(self, data: bytes) -> None:
        if self._tls is None:
            await self._send_raw(data)
            return
        view = memoryview(data)
        while view:
            written = self._tls.write(view)
            view = view[written:]
        await self._send_raw(self._unsent + self._outgoing.read())
        self._unsent = b""

    async def _send_raw(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.closed:
                raise trio.ClosedResourceError("the connection was closed")
            try:
                sent = self._sock.send(view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._sock)
                continue
            view = view[sent:]
        await trio.lowlevel.checkpoint_if_cancelled()

    # ------------------------------------------------------------------ receiving

    def unread(self) -> bool:
        """Bytes have reached the socket that no read has taken: the peer spoke and this side
        has not listened yet. False for nothing, a FIN or a reset (nothing to read)."""
        if self.closed:
            return False
        try:
            return bool(self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except OSError:             # BlockingIOError: nothing has; a reset: nothing will
            return False

    async def receive(self) -> bytes:
        """What has arrived, waiting until something has; ``b""`` at the end."""
        while True:
            data = self.receive_nowait()
            if data is not None:
                await trio.lowlevel.checkpoint_if_cancelled()
                return data
            await trio.lowlevel.wait_readable(self._sock)

    def receive_nowait(self) -> bytes | None:
        """Everything that has arrived, from every layer, without waiting: None when nothing
        has (a TLS record only partly in counts as nothing yet), ``b""`` at the end. Asked
        after each first-clause token, mostly to find nothing: ``closed`` inline, not a frame."""
        if self._sock.fileno() < 0:
            raise trio.ClosedResourceError("the connection was closed")
        if self._failed is not None:
            raise self._failed
        if self._tls is None:
            return self._recv_nowait()
        return self._read_tls()

    def _recv_nowait(self) -> bytes | None:
        try:
            return self._sock.recv(READ_SIZE)
        except BlockingIOError:
            return None

    def _read_tls(self) -> bytes | None:
        tls = self._tls
        assert tls is not None
        chunks: list[bytes] = []
        while True:
            try:
                data = tls.read(READ_SIZE)
            except ssl.SSLWantReadError:
                try:
                    raw = self._recv_nowait()
                except OSError as err:      # a reset: what was decrypted before it goes first
                    if not chunks:
                        raise
                    self._failed = err
                    break
                if raw is None:
                    break
                if raw:
                    self._incoming.write(raw)
                else:
                    self._incoming.write_eof()
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                data = b""                  # close_notify, or a plain FIN: HTTP judges it
            if not data:
                if not chunks:
                    return b""
                break
            chunks.append(data)
        if self._outgoing.pending:          # a post-handshake answer (a key update, say)
            self._unsent += self._outgoing.read()
        return b"".join(chunks) if chunks else None

    async def _receive_raw(self) -> bytes:
        while True:
            data = self._recv_nowait()
            if data is not None:
                return data
            await trio.lowlevel.wait_readable(self._sock)


async def open_link(host: str, port: int, *, tls: ssl.SSLContext | None,
                    proxy: Proxy | None = None) -> Link:
    """Connect (through ``proxy``'s CONNECT tunnel if given) and do the TLS handshake.
    The caller bounds the time; a failure closes what was opened."""
    target_host, target_port = (proxy.host, proxy.port) if proxy else (host, port)
    stream = await trio.open_tcp_stream(target_host, target_port)
    # The socket leaves trio's stream object (detach is public), to be read without waiting.
    sock = socket.socket(fileno=stream.socket.detach())
    link = Link(sock)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        already_read = b""
        if proxy is not None:
            already_read = await _tunnel(link, proxy, host, port)
        if tls is not None:
            await link.start_tls(tls, host, already_read)
        elif already_read:
            raise ProxyRefused(0, "sent bytes before the server did")
    except BaseException:
        link.close_now()
        raise
    return link


async def _tunnel(link: Link, proxy: Proxy, host: str, port: int) -> bytes:
    """CONNECT host:port; returns any bytes that came after the proxy's answer."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    headers = [("Host", authority)]
    if proxy.authorization:
        headers.append(("Proxy-Authorization", proxy.authorization))
    connection = h11.Connection(h11.CLIENT)
    request = connection.send(h11.Request(method="CONNECT", target=authority,
                                          headers=headers)) or b""
    request += connection.send(h11.EndOfMessage()) or b""
    await link.send_all(request)
    received = 0
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            data = await link.receive()
            received += len(data)
            if received > MAX_PROXY_ANSWER:
                raise ProxyRefused(0, "answered CONNECT with more than 16 KiB of headers")
            connection.receive_data(data)
            continue
        if isinstance(event, h11.Response):
            if 200 <= event.status_code < 300:
                trailing, _ = connection.trailing_data
                return bytes(trailing)
            raise ProxyRefused(event.status_code, event.reason.decode("latin-1"))
        if isinstance(event, h11.ConnectionClosed):
            raise ProxyRefused(0, "closed the connection before answering CONNECT")


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url`` (HTTPS_PROXY etc., unless NO_PROXY
    excludes the host), as botocore and requests read them."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]  # no stub
    if not proxy or bypass(parts.hostname or "", proxies):
        return None
    return proxy
