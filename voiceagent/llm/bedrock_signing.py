"""Where a ConverseStream request goes and how it proves who sent it.

The request: ConverseStream is rest-json, so the body is the operation's input as JSON minus
``modelId``, which goes in the path, percent-encoded as botocore does. botocore's ``SigV4Auth``
signs it with the credentials boto3's standard chain finds (temporary ones are refreshed in a
worker thread when they near expiry, since the refresh may do network I/O), or a Bedrock API
key is sent as a bearer token, as botocore prefers when one is set.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import trio
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials
from botocore.exceptions import NoCredentialsError
from botocore.utils import percent_encode

from voiceagent.threads import run_blocking

SIGNING_NAME = "bedrock"            # the endpoint prefix is bedrock-runtime, the signer's is not


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
    """What goes in the headers to prove who we are: SigV4 or a Bedrock API key.

    ``resolve`` (blocking) finds credentials through boto3's standard chain; it runs once at
    start-up and again by ``renew`` when Bedrock refuses the ones we have as expired or
    unknown (rotated or revoked before their stated expiry), so one refusal costs one retry,
    not every call until the process restarts.
    """

    def __init__(self, endpoint: Endpoint, resolve: Callable[[], Credentials | None],
                 bearer_token: str | None, user_agent: str,
                 refresh_limiter: trio.CapacityLimiter, *,
                 signing_name: str = SIGNING_NAME) -> None:
        self._endpoint = endpoint
        self._signing_name = signing_name
        self._resolve = resolve
        self._credentials = None if bearer_token else resolve()
        self._bearer_token = bearer_token
        self._user_agent = user_agent
        self._refresh_limiter = refresh_limiter

    @property
    def uses_bearer_token(self) -> bool:
        return bool(self._bearer_token)

    async def renew(self) -> None:
        """Credentials found anew through the whole chain, in a thread."""
        self._credentials = await run_blocking(self._resolve, limiter=self._refresh_limiter)

    async def _frozen(self) -> ReadOnlyCredentials:
        credentials = self._credentials
        if credentials is None:
            raise NoCredentialsError()
        refresh_needed = getattr(credentials, "refresh_needed", None)   # temporary ones
        if refresh_needed is not None and refresh_needed():
            # near expiry: fetching new ones may do network I/O (STS, the container endpoint)
            frozen: ReadOnlyCredentials = await run_blocking(
                credentials.get_frozen_credentials, limiter=self._refresh_limiter)
            return frozen
        return credentials.get_frozen_credentials()

    async def request(self, model_id: str, body: bytes) -> tuple[str, list[tuple[str, str]]]:
        """The ConverseStream request target and its headers (signed)."""
        path = f"{self._endpoint.base_path}/model/{percent_encode(model_id)}/converse-stream"
        return path, await self.headers(path, body, {"Content-Type": "application/json"})

    async def headers(self, path: str, body: bytes, headers: dict[str, str]
                      ) -> list[tuple[str, str]]:
        """``headers`` plus what proves who sent a POST of ``body`` to ``path``."""
        if self._bearer_token:
            headers = {**headers, "Authorization": f"Bearer {self._bearer_token}"}
        else:
            signed = AWSRequest(method="POST", url=self._endpoint.url(path), data=body,
                                headers=headers)
            SigV4Auth(await self._frozen(), self._signing_name,
                      self._endpoint.region).add_auth(signed)
            headers = dict(signed.headers.items())
        return [("Host", self._endpoint.netloc), *headers.items(),
                ("User-Agent", self._user_agent), ("Content-Length", str(len(body)))]


def request_body(payload: dict[str, Any]) -> tuple[str, bytes]:
    """``(modelId, body)``: the operation's input minus the path label, as botocore sends it."""
    body = dict(payload)
    model_id = str(body.pop("modelId"))
    return model_id, json.dumps(body, separators=(",", ":")).encode()
