"""The signer keeps the SigV4 signing key from one request to the next: what it sends must
stay byte for byte what botocore's own ``SigV4Auth`` sends at the same instant, across a
credential refresh (a new secret, even under the same access key id) and a new day."""

from __future__ import annotations

import datetime

import pytest
import trio
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, RefreshableCredentials

from voiceagent.aws_http import Endpoint, Signer

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
              path: str = PATH) -> list[tuple[str, str]]:
    """The headers botocore's own signer gives the same request, as ``Signer`` lays them out."""
    request = AWSRequest(method="POST", url=ENDPOINT.url(path), data=body, headers=headers)
    SigV4Auth(credentials.get_frozen_credentials(), "bedrock", "us-east-1").add_auth(request)
    return [("Host", ENDPOINT.netloc), *request.headers.items(), ("User-Agent", "ua"),
            ("Content-Length", str(len(body)))]


def signer_of(credentials: list[Credentials]) -> Signer:
    """A signer whose credential chain finds ``credentials[0]``, whatever it holds then."""
    return Signer(ENDPOINT, lambda: credentials[0], None, "ua", signing_name="bedrock")


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
