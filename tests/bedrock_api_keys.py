"""Bedrock API keys built as AWS's aws-bedrock-token-generator libraries build them: a SigV4
query-presigned ``POST https://bedrock.amazonaws.com/?Action=CallWithBearerToken``, its URL
without the scheme plus ``&Version=1``, base64-encoded behind ``bedrock-api-key-``. Signed
with dummy credentials at a time the test chooses: no real credentials, nothing sent."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from unittest import mock

import botocore.auth
from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

TWELVE_HOURS_S = 43_200


def short_term_key(signed_at: datetime, expires_s: int = TWELVE_HOURS_S, *,
                   session_token: str | None = "dummy-session-token") -> str:
    request = AWSRequest(method="POST", url="https://bedrock.amazonaws.com/",
                         headers={"host": "bedrock.amazonaws.com"},
                         params={"Action": "CallWithBearerToken"})
    credentials = Credentials("AKIDEXAMPLE", "not-a-secret", session_token)
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=signed_at):
        SigV4QueryAuth(credentials, "bedrock", "us-east-1", expires=expires_s).add_auth(request)
    url = str(request.url).replace("https://", "") + "&Version=1"
    return "bedrock-api-key-" + base64.b64encode(url.encode()).decode()


def key_signed_ago(hours: float, expires_s: int = TWELVE_HOURS_S) -> str:
    return short_term_key(datetime.now(UTC) - timedelta(hours=hours), expires_s)


def secret_parts(key: str) -> list[str]:
    """What must reach no log line nor error: the key, its encoded body, its signature."""
    body = key.removeprefix("bedrock-api-key-")
    url = base64.b64decode(body).decode()
    signature = url.split("X-Amz-Signature=", 1)[1].split("&", 1)[0]
    return [key, body, body[:40], signature]
