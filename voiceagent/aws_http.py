"""HTTP/1.1 to AWS endpoints from the event loop, shared by the model's streams and the
store's writes: where a request goes (``Endpoint``), who sent it (``Signer``: botocore's SigV4
with boto3's credential chain), and kept-alive connections to one endpoint
(``ConnectionPool``) over ``voiceagent.net`` (TCP, a CONNECT proxy, the standard library's TLS).
Neither user's protocol is here: ConverseStream's event stream is ``voiceagent.llm``'s,
DynamoDB's JSON is ``voiceagent.store``'s.
"""

from __future__ import annotations

import logging
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import botocore
import botocore.session
import h11
import trio
from botocore.credentials import Credentials, ReadOnlyCredentials
from botocore.exceptions import NoCredentialsError
from botocore.httpsession import get_cert_path

from voiceagent import __version__
from voiceagent.net import Link, Proxy, open_link, proxy_for, redact_url
from voiceagent.sigv4 import BytesRequest, KeptKeySigV4Auth, SigningKeys
from voiceagent.threads import run_blocking

log = logging.getLogger(__name__)

IDLE_MAX_S = 30.0                   # AWS front ends drop idle connections after ~60 s
REFRESH_THREADS = 4                 # credential lookups and refreshes in flight, per signer
USER_AGENT = f"voiceagent/{__version__} trio botocore/{botocore.__version__}"


class ConnectTimeout(Exception):
    """No connection (TCP, proxy tunnel and TLS handshake) within the connect timeout."""


class LinkSettingsError(ValueError):
    """The CA bundle or the proxy the environment names cannot be used; the message names
    the setting and the value at fault, so each user turns it into its own error."""

    def __init__(self, setting: str, message: str) -> None:
        self.setting = setting              # "ca_bundle" or "proxy"
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Endpoint:
    scheme: str
    host: str
    port: int
    base_path: str                  # "" unless the endpoint URL has a path
    region: str

    @classmethod
    def from_url(cls, url: str, region: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) endpoint URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"), region)

    @property
    def netloc(self) -> str:
        """``host[:port]`` as SigV4 canonicalises it: the default port is left out."""
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    def url(self, path: str) -> str:
        """The full URL of ``path`` (which includes ``base_path``)."""
        return f"{self.scheme}://{self.netloc}{path}"


class Signer:
    """What goes in the headers to prove who we are: SigV4 (as ``signing_name``), or a bearer
    token (a Bedrock API key) when one is given.

    ``resolve`` (blocking) finds credentials through boto3's standard chain; it runs once at
    start-up and again by ``renew`` when Bedrock refuses the ones we have as expired or
    unknown (rotated or revoked before their stated expiry), so one refusal costs one retry,
    not every call until the process restarts.

    Credential work has threads of its own (``REFRESH_THREADS``), abandoned when their caller
    is cancelled (a barge-in, a hang-up: nothing was sent yet, and the next turn waits for the
    cut one, so not for a fetch that botocore gives ~8 s against a hanging container
    endpoint); never a limiter its callers may hold: the store signed while holding a token
    of the limiter its refreshes waited on, so STORE_THREADS requests in a refresh window (or
    refused as expired) waited for each other forever, their writes shielded. botocore
    refreshes one at a time and, until the last minutes, hands the others the current
    credentials at once, so a few threads keep requests moving while one refresh waits on
    the network.
    """

    def __init__(self, endpoint: Endpoint, resolve: Callable[[], Credentials | None],
                 bearer_token: str | None, user_agent: str, *, signing_name: str) -> None:
        self._endpoint = endpoint
        self._signing_name = signing_name
        self._resolve = resolve
        self._credentials = None if bearer_token else resolve()
        self._bearer_token = bearer_token
        self._user_agent = user_agent
        self._refresh_limiter = trio.CapacityLimiter(REFRESH_THREADS)
        self._renewing = trio.Lock()
        self._keys = SigningKeys()
        self.renewals = 0                   # completed lookups through the chain

    @property
    def uses_bearer_token(self) -> bool:
        return bool(self._bearer_token)

    async def renew(self) -> None:
        """Credentials found anew through the whole chain, in a thread. Requests refused at
        once share one lookup. A chain that finds nothing (the instance metadata service
        failing for a moment) keeps the credentials we had: with none, nothing would be sent,
        so no refusal would ever ask for another lookup."""
        seen = self.renewals
        async with self._renewing:
            if self.renewals != seen:
                return                      # renewed while this request waited its turn
            found = await run_blocking(self._resolve, limiter=self._refresh_limiter,
                                       abandon_on_cancel=True)
            self.renewals += 1
        if found is None:
            log.warning("the AWS credential chain found nothing; keeping the credentials "
                        "we had", extra={"service": self._signing_name})
            return
        self._credentials = found

    async def _frozen(self) -> ReadOnlyCredentials:
        credentials = self._credentials
        if credentials is None:
            raise NoCredentialsError()
        refresh_needed = getattr(credentials, "refresh_needed", None)   # temporary ones
        if refresh_needed is not None and refresh_needed():
            # near expiry: fetching new ones may do network I/O (STS, the container endpoint)
            frozen: ReadOnlyCredentials = await run_blocking(
                credentials.get_frozen_credentials, limiter=self._refresh_limiter,
                abandon_on_cancel=True)
            return frozen
        return credentials.get_frozen_credentials()

    async def headers(self, path: str, body: bytes, headers: dict[str, str]
                      ) -> list[tuple[str, str]]:
        """``headers`` plus what proves who sent a POST of ``body`` to ``path``."""
        sent: list[tuple[str, str]]
        if self._bearer_token:
            bearer = {**headers, "Authorization": f"Bearer {self._bearer_token}"}
            sent = [("Host", self._endpoint.netloc), *bearer.items()]
        else:
            # the Host sent is the Host signed: botocore would parse it out of the URL again
            signed = BytesRequest(self._endpoint.url(path), body,
                                  {"Host": self._endpoint.netloc, **headers})
            KeptKeySigV4Auth(await self._frozen(), self._signing_name, self._endpoint.region,
                             self._keys).add_auth(signed)
            sent = signed.header_list()
        return [*sent, ("User-Agent", self._user_agent), ("Content-Length", str(len(body)))]


class Connection:
    __slots__ = ("h11", "idle_since", "link")

    def __init__(self, link: Link) -> None:
        self.link = link
        self.h11 = h11.Connection(h11.CLIENT)
        self.idle_since = 0.0

    def usable_idle(self) -> bool:
        """An idle connection has nothing to read: anything there is the server's close (an
        EOF, a TLS alert) or garbage, and it cannot carry a request."""
        try:
            return self.link.receive_nowait() is None
        except (OSError, ssl.SSLError, trio.ClosedResourceError):
            return False


class ConnectionPool:
    """Kept-alive connections to one endpoint, newest first."""

    def __init__(self, endpoint: Endpoint, *, connect_timeout_s: float, max_idle: int,
                 ssl_context: ssl.SSLContext | None, proxy: Proxy | None = None) -> None:
        self.endpoint = endpoint
        self.connect_timeout_s = connect_timeout_s
        self.max_idle = max_idle
        self.proxy = proxy
        self._ssl = ssl_context
        self._idle: deque[Connection] = deque()
        self.opened = 0
        self.reused = 0
        self.expired = 0                    # closed for idling past IDLE_MAX_S
        self.dropped = 0                    # closed after a stall (``close_idle_since``)

    async def acquire(self, *, fresh: bool = False) -> tuple[Connection, bool]:
        """A connection and whether it had carried a request before."""
        now = trio.current_time()
        self._close_expired(now)
        while self._idle and not fresh:
            connection = self._idle.pop()
            if connection.usable_idle():
                self.reused += 1
                return connection, True
            connection.link.close_now()
        return await self._connect(), False

    async def _connect(self) -> Connection:
        endpoint = self.endpoint
        with trio.move_on_after(self.connect_timeout_s):
            link = await open_link(endpoint.host, endpoint.port,
                                   tls=self._ssl if endpoint.scheme == "https" else None,
                                   proxy=self.proxy)
            self.opened += 1
            return Connection(link)
        via = f" through the proxy {self.proxy.host}:{self.proxy.port}" if self.proxy else ""
        raise ConnectTimeout(f"no connection to {endpoint.host}:{endpoint.port}{via} within "
                             f"{self.connect_timeout_s:g} s")

    def keep_idle(self, connection: Connection) -> None:
        """A new connection that has carried nothing yet (the warm-up's)."""
        connection.idle_since = trio.current_time()
        self._close_expired(connection.idle_since)
        self._idle.append(connection)

    def release(self, connection: Connection) -> None:
        """After a complete exchange: keep it if both sides may go on, else close it."""
        state = connection.h11
        if (state.our_state is h11.DONE and state.their_state is h11.DONE
                and len(self._idle) < self.max_idle):
            state.start_next_cycle()
            connection.idle_since = trio.current_time()
            self._close_expired(connection.idle_since)
            self._idle.append(connection)
        else:
            connection.link.close_now()

    def _close_expired(self, now: float) -> None:
        """Oldest first. A burst leaves many connections below the few that steady traffic
        reuses, and the newest-first pop never reaches them: AWS closes them after ~60 s idle,
        and each sat half-closed (CLOSE_WAIT: a descriptor, kernel buffers, TLS state) for the
        life of the process, up to ``max_idle`` of them. The deque is in ``idle_since`` order,
        so the expired ones are at its left end."""
        idle = self._idle
        while idle and now - idle[0].idle_since >= IDLE_MAX_S:
            idle.popleft().link.close_now()
            self.expired += 1

    def close_idle_since(self, since: float) -> int:
        """Close the connections idle since ``since`` or before; how many. After a stall on
        a connection last heard from at ``since``: a path that died (a NAT or firewall that
        forgot the flow, a proxy restarted, a network change) kills every connection on it
        without a FIN, so these look usable and would cost a later turn the same stall. One
        released later has answered since the stalled one went quiet: its path works, and it
        is kept (a handshake saved). The deque is in ``idle_since`` order."""
        idle = self._idle
        count = 0
        while idle and idle[0].idle_since <= since:
            idle.popleft().link.close_now()
            count += 1
        self.dropped += count
        return count

    def close(self) -> None:
        while self._idle:
            self._idle.pop().link.close_now()

    @property
    def idle(self) -> int:
        return len(self._idle)


@dataclass(frozen=True)
class LinkSettings:
    """How to reach one endpoint as boto3 would: its TLS trust and its proxy."""

    ssl_context: ssl.SSLContext | None      # None for http://
    proxy: Proxy | None
    proxy_url: str | None                   # its URL, password redacted, for a log line


def link_settings(endpoint: Endpoint, url: str, *, service: str,
                  session: botocore.session.Session | None = None) -> LinkSettings:
    """Blocking (the CA bundle is read from disk). The CA bundle is AWS_CA_BUNDLE, else the
    profile's ca_bundle, else botocore's own; the proxy is HTTPS_PROXY / HTTP_PROXY unless
    NO_PROXY excludes the host. ``service`` names the user in errors ("Bedrock");
    ``session``, when the caller already made one, saves reading the AWS config again."""
    context = None
    if endpoint.scheme == "https":
        core = session or botocore.session.Session()
        bundle = core.get_config_variable("ca_bundle") or get_cert_path(True)
        try:
            context = ssl_context(bundle)
        except (OSError, ssl.SSLError) as err:
            raise LinkSettingsError("ca_bundle", f"AWS_CA_BUNDLE (or the profile's "
                                    f"ca_bundle): cannot load {bundle} for {service}: "
                                    f"{err}") from None
    proxy, proxy_url = None, proxy_for(url)
    if proxy_url is not None:
        try:
            proxy = Proxy.from_url(proxy_url)
        except ValueError as err:
            raise LinkSettingsError("proxy", f"HTTPS_PROXY / HTTP_PROXY for {service}: "
                                    f"{err}") from None
    return LinkSettings(context, proxy, None if proxy_url is None else redact_url(proxy_url))


def resolve_credentials() -> Credentials | None:
    """Blocking: boto3's standard chain, from its start (a fresh session), for ``Signer``."""
    credentials: Credentials | None = botocore.session.Session().get_credentials()
    return credentials


def ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    """Certificates checked against ``ca_bundle`` (AWS_CA_BUNDLE, the profile's ca_bundle,
    else botocore's bundle), host names checked, TLS 1.2 at least, as botocore does."""
    context = ssl.create_default_context(cafile=ca_bundle)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    return context
