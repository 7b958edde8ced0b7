"""The signer keeps the SigV4 signing key from one request to the next: what it sends must
stay byte for byte what botocore's own ``SigV4Auth`` sends at the same instant, across a
credential refresh (a new secret, even under the same access key id) and a new day."""

from __future__ import annotations

import datetime
from collections import Counter
from typing import Any

import botocore.auth
import pytest
import trio
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials, RefreshableCredentials

from voiceagent.aws_http import Endpoint, Signer
from voiceagent.sigv4 import BytesRequest, KeptKeySigV4Auth, SigningKeys

ENDPOINT = Endpoint.from_url("https://bedrock-runtime.us-east-1.amazonaws.com", "us-east-1")
PATH = "/model/us.amazon.nova-lite-v1%3A0/converse-stream"
BODY = b'{"messages":[{"role":"user","content":[{"text":"When do you open?"}]}]}'
JSON = {"Content-Type": "application/json"}


class Clock:
    """What ``botocore.auth`` reads as now, set by the test."""

    def __init__(self) -> None:
        self.now = datetime.datetime(2026, 12, 6, 12, 0, 0)

    def __call__(self) -> datetime.datetime:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fixed = Clock()
    monkeypatch.setattr("botocore.auth.get_current_datetime", fixed)
    return fixed


def botocores(credentials: Credentials, body: bytes, headers: dict[str, str],
              path: str = PATH, endpoint: Endpoint = ENDPOINT) -> list[tuple[str, str]]:
    """The headers botocore's own signer gives the same request, as ``Signer`` lays them out:
    botocore finds the Host it signs in the URL."""
    request = AWSRequest(method="POST", url=endpoint.url(path), data=body, headers=headers)
    SigV4Auth(credentials.get_frozen_credentials(), "bedrock", "us-east-1").add_auth(request)
    return [("Host", endpoint.netloc), *request.headers.items(), ("User-Agent", "ua"),
            ("Content-Length", str(len(body)))]


def signer_of(credentials: list[Credentials], endpoint: Endpoint = ENDPOINT) -> Signer:
    """A signer whose credential chain finds ``credentials[0]``, whatever it holds then."""
    return Signer(endpoint, lambda: credentials[0], None, "ua", signing_name="bedrock")


@pytest.mark.parametrize("token", [None, "session-token"])
@pytest.mark.parametrize("body", [BODY, b"", "é".encode() * 3000])
async def test_what_is_sent_is_what_botocore_sends(
        clock: Clock, token: str | None, body: bytes) -> None:
    credentials = Credentials("AKIDEXAMPLE", "not-a-secret", token)
    signer = signer_of([credentials])
    with trio.fail_after(5):
        for path in (PATH, "/model/arn%3Aaws%3Abedrock%3Aprofile%2Fa1b2%20c3/converse-stream"):
            for _ in range(2):                      # a fresh key, then the kept one
                assert await signer.headers(path, body, JSON) == botocores(
                    credentials, body, JSON, path)


async def test_a_renewal_with_a_new_secret_signs_with_it_at_once(clock: Clock) -> None:
    """Same access key id, same day, same scope: only the secret tells the keys apart."""
    found = [Credentials("AKIDEXAMPLE", "not-a-secret", "token-1")]
    signer = signer_of(found)
    with trio.fail_after(5):
        before = await signer.headers(PATH, BODY, JSON)
        assert before == botocores(found[0], BODY, JSON)
        found[0] = Credentials("AKIDEXAMPLE", "rotated-secret", "token-1")
        await signer.renew()
        after = await signer.headers(PATH, BODY, JSON)
    assert after == botocores(found[0], BODY, JSON)
    assert after != before


async def test_credentials_refreshed_before_expiry_sign_with_the_new_secret(
        clock: Clock) -> None:
    """Container credentials inside botocore's refresh window are fetched anew for each
    signature; the key kept from the old secret must not outlive it."""
    secrets = iter(["secret-2", "secret-3"])

    def soon() -> str:
        return (datetime.datetime.now(datetime.UTC)
                + datetime.timedelta(minutes=5)).isoformat()

    def refresh() -> dict[str, str]:
        return {"access_key": "ASIAFAKE", "secret_key": next(secrets), "token": "t",
                "expiry_time": soon()}

    credentials = RefreshableCredentials.create_from_metadata(
        {"access_key": "ASIAFAKE", "secret_key": "secret-1", "token": "t",
         "expiry_time": soon()}, refresh_using=refresh, method="container-role")
    signer = signer_of([credentials])
    with trio.fail_after(5):
        first = await signer.headers(PATH, BODY, JSON)
        second = await signer.headers(PATH, BODY, JSON)
    expected = [Credentials("ASIAFAKE", secret, "t") for secret in ("secret-2", "secret-3")]
    assert [first, second] == [botocores(c, BODY, JSON) for c in expected]


async def test_a_new_day_derives_a_new_key(clock: Clock) -> None:
    credentials = Credentials("AKIDEXAMPLE", "not-a-secret")
    signer = signer_of([credentials])
    with trio.fail_after(5):
        for now in (datetime.datetime(2026, 12, 6, 23, 59, 59),
                    datetime.datetime(2026, 12, 7, 0, 0, 1)):
            clock.now = now
            assert await signer.headers(PATH, BODY, JSON) == botocores(credentials, BODY, JSON)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8123",                        # the local endpoints tests and check use
    "https://bedrock-runtime.us-east-1.amazonaws.com:443",
    "http://dynamodb.local:80/base",
    "https://vpce-0a1b.Bedrock-Runtime.US-EAST-1.vpce.amazonaws.com:8443",
    "http://[::1]:8000",
    "https://[2001:db8::1]",
])
@pytest.mark.parametrize(("path", "headers"), [
    ("/model/m/converse-stream?b=2&a=1&a=0", JSON),
    ("/", {"content-TYPE": "  application/x-amz-json-1.0 ",
           "X-Amz-Target": "DynamoDB_20120810.PutItem   with\t spaces"}),
])
async def test_the_host_signed_is_the_host_botocore_finds_in_the_url(
        clock: Clock, url: str, path: str, headers: dict[str, str]) -> None:
    """``Signer`` signs the Host it sends; botocore works it out from the URL (lower case,
    the default port left out, an IPv6 address bracketed). Both must agree."""
    endpoint = Endpoint.from_url(url, "us-east-1")
    credentials = Credentials("AKIDEXAMPLE", "not-a-secret", "session-token")
    signer = signer_of([credentials], endpoint)
    path = endpoint.base_path + path
    with trio.fail_after(5):
        for body in (BODY, b""):
            assert await signer.headers(path, body, headers) == botocores(
                credentials, body, headers, path, endpoint)


async def test_one_signature_lists_the_signed_headers_once(
        clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's ``add_auth`` asks for the header list and its names twice (the canonical
    request, then the Authorization header), each a new email-style header map, and finds
    the Host in the URL; the signer builds them once and parses no URL."""
    built: Counter[str] = Counter()

    def counted(name: str) -> None:
        original = getattr(SigV4Auth, name)

        def count(*args: Any) -> Any:
            built[name] += 1
            return original(*args)
        monkeypatch.setattr(SigV4Auth, name, count)

    counted("headers_to_sign")
    counted("signed_headers")
    host_from_url = botocore.auth._host_from_url

    def parsed(url: str) -> str:
        built["host from URL"] += 1
        return host_from_url(url)
    monkeypatch.setattr(botocore.auth, "_host_from_url", parsed)
    signer = signer_of([Credentials("AKIDEXAMPLE", "not-a-secret", "session-token")])
    with trio.fail_after(5):
        for _ in range(3):
            await signer.headers(PATH, BODY, JSON)
    assert built == {"headers_to_sign": 3, "signed_headers": 3}


def test_a_kept_header_list_is_not_given_for_other_headers() -> None:
    """The list is kept by what it is made from: asked again after the request's headers or
    URL, or the list itself, changed, the signer answers as botocore would then."""
    credentials = ReadOnlyCredentials("AKIDEXAMPLE", "not-a-secret", None)
    ours = KeptKeySigV4Auth(credentials, "bedrock", "us-east-1", SigningKeys())
    theirs = SigV4Auth(credentials, "bedrock", "us-east-1")
    request = BytesRequest(ENDPOINT.url(PATH), BODY, {"Content-Type": "application/json"})

    def agree() -> list[tuple[str, str]]:
        listed = ours.headers_to_sign(request)
        expected = theirs.headers_to_sign(request)
        assert listed.items() == expected.items()
        assert ours.signed_headers(listed) == theirs.signed_headers(expected)
        return listed.items()

    first = agree()
    assert agree() == first
    request.headers["X-Amz-Date"] = "20261206T120000Z"
    agree()
    request.headers.replace_header("X-Amz-Date", "20261206T120001Z")
    agree()
    request.url = Endpoint.from_url("http://127.0.0.1:8123", "us-east-1").url(PATH)
    agree()
    ours.headers_to_sign(request)["X-Amz-Target"] = "added to the list after it was made"
    agree()
    del request.headers["Content-Type"]
    request.headers["X-Amz-Target"] = "DynamoDB_20120810.PutItem"   # as many, other names
    assert "content-type" not in dict(agree())
