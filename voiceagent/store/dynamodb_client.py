"""The DynamoDB store's two clients, made in a worker thread from one botocore session: boto3's
(queries, table checks, ``voiceagent check``) and the event loop's HTTP requests (item writes
and reads, ``dynamodb_http``), with one set of timeouts."""

from __future__ import annotations

from typing import Any

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, NoRegionError

from voiceagent.aws_session import StartupSession, new_session, session_from
from voiceagent.errors import SettingsError, StoreError
from voiceagent.settings import Settings
from voiceagent.store.dynamodb_http import DynamoDBHttp, make_http

CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 4.0
TOTAL_MAX_ATTEMPTS = 2               # botocore's own retry; the write-behind retries beyond


def make_client(settings: Settings, *, max_pool_connections: int,
                session: botocore.session.Session | None = None) -> Any:
    """The process's DynamoDB client, from ``session`` or a session of its own (blocking:
    call it in a worker thread)."""
    config = Config(
        retries={"mode": "standard", "total_max_attempts": TOTAL_MAX_ATTEMPTS},
        connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
        max_pool_connections=max_pool_connections, tcp_keepalive=True)
    try:
        core = session or new_session()
        return core.create_client("dynamodb", region_name=settings.aws_region, config=config)
    except NoRegionError:
        raise SettingsError(["AWS_REGION: required for the DynamoDB store (the table's "
                             "region, e.g. us-east-1)"]) from None
    except BotoCoreError as err:
        raise StoreError(f"cannot create the DynamoDB client: {err}") from err


def make_both(settings: Settings, pool: int,
              lender: StartupSession | None) -> tuple[Any, DynamoDBHttp]:
    """Worker thread: the boto3 client and the loop's requests, from one session that
    nothing keeps once they exist (``voiceagent.aws_session``)."""
    try:
        core = session_from(lender)
    except BotoCoreError as err:
        raise StoreError(f"cannot create the DynamoDB client: {err}") from err
    client = make_client(settings, max_pool_connections=pool, session=core)
    try:
        http = make_http(client.meta.endpoint_url, client.meta.region_name,
                         connect_timeout_s=CONNECT_TIMEOUT_S, read_timeout_s=READ_TIMEOUT_S,
                         max_idle=pool, session=core)
    except BaseException:
        client.close()
        raise
    return client, http
