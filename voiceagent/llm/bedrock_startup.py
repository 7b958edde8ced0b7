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
from voiceagent.llm.bedrock_api_key import (
    KEY_ADVICE,
    SETTING,
    expired_problem,
    expiry_notice,
    key_expiry,
)
from voiceagent.settings import Settings

log = logging.getLogger("voiceagent.llm.bedrock")     # as before the split: same logger

OFFLINE_HINT = "or run `voiceagent demo` for an offline try-out"
KEY_LAST_WARNING_S = 3600.0         # the second warning, while there is time to act on it


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
    runtime's botocore session, lent while the store's client is made from it too. With a
    short-term API key, a task of its own says when the key is about to stop working and
    when it has (``warn_as_the_key_expires``)."""
    if os.environ.get("BEDROCK_TRANSPORT"):
        log.warning("BEDROCK_TRANSPORT is no longer read: there is one transport (trio HTTP, "
                    "through HTTPS_PROXY when one applies); remove the setting")
    key, now = os.environ.get(SETTING), time.time()
    log_api_key_expiry(key, now)
    llm = BedrockLLM.from_settings(settings, session=session)
    try:
        try:
            await llm.warm_up()
        except ModelUnavailable as err:
            raise SettingsError([f"Bedrock: {err}; {OFFLINE_HINT}"]) from err
        async with trio.open_nursery() as nursery:
            if (left := api_key_left(key, now)) is not None:
                await nursery.start(warn_as_the_key_expires, key, now, left)
            try:
                yield llm
            finally:
                nursery.cancel_scope.cancel(reason="bedrock closing")
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


def api_key_left(key: str | None, now: float) -> float | None:
    """Seconds until a short-term key stops working; None when there is nothing to wait
    for (no key, an expiry that cannot be read, or one already past, which start said)."""
    expiry = key_expiry(key) if key else None
    if expiry is None or expiry.expires_at <= now:
        return None
    return expiry.expires_at - now


async def warn_as_the_key_expires(
        key: str, now: float, left: float, *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """A warning an hour before the key expires (unless start's line was already that
    close) and an error when it does: a key said once at start, hours before, was seen
    again only as Bedrock refusing every call. The key's expiry is a wall time; ``left`` is
    read from the wall clock once, at start (``now``), and waited for on trio's clock."""
    start = trio.current_time()
    task_status.started()
    if left > KEY_LAST_WARNING_S:
        await trio.sleep_until(start + left - KEY_LAST_WARNING_S)
        notice = expiry_notice(key, now + left - KEY_LAST_WARNING_S)
        log.warning("bedrock's API key expires within the hour",
                    extra={"api_key": notice[0] if notice else "", "what_to_do": KEY_ADVICE})
    await trio.sleep_until(start + left)
    notice = expiry_notice(key, now + left)
    log.error("bedrock's API key has expired: Bedrock refuses every call until it is replaced",
              extra={"api_key": notice[0] if notice else "", "what_to_do": KEY_ADVICE})
