"""Start-up for the Bedrock backend: what stops it from working, said before the event loop
starts (``check_bedrock_ready``, for ``voiceagent check`` and ``serve``), and the backend
opened, warmed up and closed for a runtime (``open_bedrock_llm``).

Apart from ``bedrock.py``, which is the backend a call streams through: these run once per
process, and their failures are settings to fix (``SettingsError``, each naming what to set
and the offline demo), not a call's fault.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import boto3
import trio
from botocore.exceptions import BotoCoreError

from voiceagent.aws_session import StartupSession
from voiceagent.errors import ModelUnavailable, SettingsError
from voiceagent.llm.bedrock import BedrockLLM
from voiceagent.llm.bedrock_api_key import SETTING, expired_problem, expiry_notice
from voiceagent.settings import Settings

log = logging.getLogger("voiceagent.llm.bedrock")     # as before the split: same logger

OFFLINE_HINT = "or run `voiceagent demo` for an offline try-out"


def check_bedrock_ready(settings: Settings) -> list[str]:
    """What stops the Bedrock backend from working, as messages that say what to set; empty
    when a region and credentials resolve through boto3's standard chain. Blocking: call it
    before the event loop starts."""
    try:
        session = boto3.session.Session(region_name=settings.aws_region)
    except BotoCoreError as err:            # e.g. AWS_PROFILE names no profile
        return [f"AWS configuration: {err}; fix AWS_PROFILE or ~/.aws/config, {OFFLINE_HINT}"]
    problems = []
    if not session.region_name:
        problems.append("AWS_REGION: not set, and no region in the AWS config; set it to the "
                        f"Bedrock region (for example us-east-1), {OFFLINE_HINT}")
    key = os.environ.get(SETTING)
    if expired := expired_problem(key, time.time()):
        problems.append(expired)
    if not key:
        try:
            credentials = session.get_credentials()
            detail = ""
        except BotoCoreError as err:
            credentials, detail = None, f" ({err})"
        if credentials is None:
            problems.append(
                f"AWS credentials: none found{detail} (environment, AWS_PROFILE and ~/.aws, "
                "SSO, container or instance role); set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
                f"AWS_SECRET_ACCESS_KEY, or AWS_BEARER_TOKEN_BEDROCK, {OFFLINE_HINT}")
    if not settings.model_identifier.strip():
        problems.append("MODEL_IDENTIFIER: empty; set a Bedrock model id, inference profile "
                        "id or ARN")
    return problems


@asynccontextmanager
async def open_bedrock_llm(settings: Settings, *, session: StartupSession | None = None
                           ) -> AsyncIterator[BedrockLLM]:
    """The backend for ``settings``, warmed up; its client is closed on exit. A client that
    cannot be created (no region, bad profile) raises ``SettingsError``. ``session``: the
    runtime's botocore session, lent while the store's client is made from it too."""
    if os.environ.get("BEDROCK_TRANSPORT"):
        log.warning("BEDROCK_TRANSPORT is no longer read: there is one transport (trio HTTP, "
                    "through HTTPS_PROXY when one applies); remove the setting")
    log_api_key_expiry(os.environ.get(SETTING), time.time())
    llm = BedrockLLM.from_settings(settings, session=session)
    try:
        try:
            await llm.warm_up()
        except ModelUnavailable as err:
            raise SettingsError([f"Bedrock: {err}; {OFFLINE_HINT}"]) from err
        yield llm
    finally:
        with trio.move_on_after(settings.flush_timeout_s, shield=True):
            await llm.aclose()


def log_api_key_expiry(key: str | None, now: float) -> None:
    """One line at start when Bedrock takes an API key: when it stops working, as a warning
    (with what to set instead) when that is within hours, which a short-term key always is."""
    notice = expiry_notice(key, now)
    if notice is None:
        return
    what, advice = notice
    if advice is None:
        log.info("bedrock takes an API key", extra={"api_key": what})
    else:
        log.warning("bedrock takes an API key that expires within hours",
                    extra={"api_key": what, "what_to_do": advice})
