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
from typing import Any

from botocore.credentials import Credentials
from botocore.utils import percent_encode

from voiceagent.aws_http import Endpoint, Signer
from voiceagent.errors import ModelRejected

SIGNING_NAME = "bedrock"            # the endpoint prefix is bedrock-runtime, the signer's is not


class BedrockSigner(Signer):
    """The model's signer: SigV4 as ``bedrock``, or the Bedrock API key as a bearer token."""

    def __init__(self, endpoint: Endpoint, resolve: Callable[[], Credentials | None],
                 bearer_token: str | None, user_agent: str) -> None:
        super().__init__(endpoint, resolve, bearer_token, user_agent,
                         signing_name=SIGNING_NAME)

    @property
    def api_key(self) -> str | None:
        """The Bedrock API key sent, if one is: to recognise its refusal and keep it out of
        what is said about it."""
        return self._bearer_token

    async def request(self, model_id: str, body: bytes) -> tuple[str, list[tuple[str, str]]]:
        """The ConverseStream request target and its headers (signed)."""
        path = f"{self._endpoint.base_path}/model/{percent_encode(model_id)}/converse-stream"
        return path, await self.headers(path, body, {"Content-Type": "application/json"})


def request_body(payload: dict[str, Any]) -> tuple[str, bytes]:
    """``(modelId, body)``: the operation's input minus the path label, as botocore sends it.

    Raises ``ModelRejected`` for a value JSON cannot hold (NaN, an infinity): Python would
    write ``NaN``, which is not JSON, and Bedrock would refuse the request anyway, so it is
    not sent; the turn apologises and the log names the code."""
    body = dict(payload)
    model_id = str(body.pop("modelId"))
    try:
        text = json.dumps(body, separators=(",", ":"), allow_nan=False)
    except ValueError as err:
        raise ModelRejected("InvalidRequestBody",
                            f"the request cannot be written as JSON ({err}); not sent") from err
    return model_id, text.encode()
