"""The store, the model and the AWS session they share, opened as the settings say: the
runtime's (``open_runtime``) and the store commands' (``cli_store``) way in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

from voiceagent.catalog import Catalog
from voiceagent.errors import StoreError
from voiceagent.llm.base import LLM
from voiceagent.llm.scripted import ScriptedLLM
from voiceagent.settings import Settings
from voiceagent.store.base import Store
from voiceagent.usecases import UseCase

if TYPE_CHECKING:
    from voiceagent.aws_session import StartupSession


def shared_aws_session(settings: Settings, *, store_given: bool,
                 llm_given: bool) -> StartupSession | None:
    """One botocore session for the DynamoDB client and the Bedrock endpoint, when both are
    ours to open: the AWS config is read and botocore's data parsed once. Each session loads
    its own copy of that data (~10 MB); a second one cost every server process ~7 MB at
    start, and the session's data kept after start-up another ~8 MB (benchmarks/RESULTS.md,
    issue 20), hence one, released once both clients exist."""
    if (store_given or settings.store != "dynamodb") or (llm_given or settings.llm != "bedrock"):
        return None                     # one AWS user at most: it makes its own
    from voiceagent.aws_session import StartupSession
    return StartupSession()


@asynccontextmanager
async def open_store(settings: Settings, *, aws: StartupSession | None = None,
                     create: bool = True) -> AsyncIterator[Store]:
    """The store the settings name, with its own thread limiter (never trio's default).
    ``aws``: the session to make the DynamoDB client from (else its own). ``create=False``
    is for commands that only read: run in the wrong folder, they should say where they
    looked, not leave an empty ``.voiceagent/`` behind."""
    limiter = trio.CapacityLimiter(settings.store_threads)
    if settings.store == "sqlite":
        from voiceagent.store.sqlite import open_sqlite_store
        path = settings.data_dir / "voiceagent.db"
        if not create and not path.exists():
            raise StoreError(f"no SQLite store at {path}: nothing has been stored there yet "
                             "(the server creates it when it starts, `voiceagent config "
                             "load` writes config into it); run this in the project's folder "
                             "or set DATA_DIR (`voiceagent demo` keeps its calls in a "
                             "temporary folder unless given --data-dir .voiceagent)")
        async with open_sqlite_store(path, limiter=limiter) as store:
            yield store
    else:
        from voiceagent.store.dynamodb import open_dynamodb_store
        async with open_dynamodb_store(settings, limiter=limiter, session=aws) as store:
            yield store


@asynccontextmanager
async def open_llm(settings: Settings, catalog: Catalog, *,
                    aws: StartupSession | None = None) -> AsyncIterator[LLM]:
    if settings.llm == "scripted":
        async def current(name: str) -> UseCase:
            return await catalog.use_case(name)

        yield ScriptedLLM(
            {uc.name: uc for uc in await catalog.all_use_cases()},
            first_token_delay_s=settings.scripted_first_token_delay_ms / 1000,
            token_delay_s=settings.scripted_token_delay_ms / 1000, current=current)
        return
    from voiceagent.llm.bedrock_startup import open_bedrock_llm
    async with open_bedrock_llm(settings, session=aws) as bedrock:
        yield bedrock
