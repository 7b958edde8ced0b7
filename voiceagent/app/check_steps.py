"""The checks of ``voiceagent check`` that need the settings and AWS: who the credentials are
(STS GetCallerIdentity), the store (the DynamoDB table, or the SQLite data folder). The model
and Twilio checks are in ``check_models`` and ``check_twilio``.

Each check uses the service's own code and settings (the store's DynamoDB client and table
rules, boto3's credential chain), runs its blocking calls through ``run_blocking`` with the
check's own limiter, is bounded by a timeout, and turns every failure it knows into an
``Outcome`` whose advice says what to set or allow. A failure never stops a later check.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import boto3
import trio
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    SSOError,
    TokenRetrievalError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

import voiceagent.store.config_records as config_records
from voiceagent.app import unset_public_url
from voiceagent.errors import ConfigError, SettingsError, StoreError
from voiceagent.settings import DEFAULT_MODEL, Settings
from voiceagent.store.base import INDEX_NAME
from voiceagent.store.dynamodb import DynamoDBStore
from voiceagent.store.dynamodb_client import make_client
from voiceagent.store.dynamodb_table import is_active, table_problems
from voiceagent.store.dynamodb_values import error_code
from voiceagent.threads import run_blocking
from voiceagent.usecases import UseCase

AWS_TIMEOUT_S = 15.0                 # one check's AWS calls, botocore's own retries included
AWS_CONNECT_TIMEOUT_S = 3.0
AWS_READ_TIMEOUT_S = 5.0
STS_FALLBACK_REGION = "us-east-1"

Status = Literal["pass", "fail", "skip"]

NETWORK_ADVICE = ("check the network path to AWS: HTTPS_PROXY / NO_PROXY, and AWS_CA_BUNDLE "
                  "when a proxy or private endpoint presents its own CA")
CREDENTIALS_ADVICE = ("set AWS credentials the usual way: AWS_PROFILE (after `aws sso login`), "
                      "or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; on ECS the task role "
                      "supplies them")
STORE_ACTIONS = ("dynamodb:DescribeTable, dynamodb:GetItem, dynamodb:PutItem, "
                 "dynamodb:DeleteItem, dynamodb:BatchWriteItem and dynamodb:Query")
# an SSO profile whose sign-in is missing or has run out (`aws configure sso` signs in once,
# for a session that ends): botocore's errors, by class and by name (as Bedrock codes them)
SSO_ERRORS = (SSOError, TokenRetrievalError)
SSO_CODES = frozenset({"SSOError", "SSOTokenLoadError", "UnauthorizedSSOTokenError",
                       "TokenRetrievalError"})
_REFUSED_KEYS = frozenset({"InvalidClientTokenId", "SignatureDoesNotMatch",
                           "UnrecognizedClientException", "InvalidSignatureException",
                           "MissingAuthenticationTokenException"})
_EXPIRED = frozenset({"ExpiredToken", "ExpiredTokenException", "RequestExpired"})


@dataclass(frozen=True, slots=True)
class Outcome:
    """One line of the checklist, and what to do under it (failures, some skips, and notes
    on a pass)."""

    name: str
    status: Status
    detail: str
    advice: tuple[str, ...] = ()


def passed(name: str, detail: str, *notes: str) -> Outcome:
    """``notes``: said under the line as advice is, for what passes but is worth a look."""
    return Outcome(name, "pass", detail, notes)


def failed(name: str, detail: str, *advice: str) -> Outcome:
    return Outcome(name, "fail", detail, advice)


def skipped(name: str, detail: str, *advice: str) -> Outcome:
    return Outcome(name, "skip", detail, advice)


@dataclass
class CheckContext:
    """What the checks share: the settings, and what an earlier check learnt that a later one
    uses (the account for IAM ARNs in advice, the use cases the table holds, the use cases
    checked against the tools, whose models the model check asks)."""

    settings: Settings
    limiter: trio.CapacityLimiter
    number: str | None = None
    account_id: str | None = None
    stored_use_cases: tuple[UseCase, ...] | None = None    # None: the table was not read
    use_cases: tuple[UseCase, ...] | None = None    # what the service reads; None: unreadable
    use_cases_from: str = ""


# ---------------------------------------------------------------- settings

def serving_problems() -> tuple[Settings | None, list[str]]:
    """The settings (None when invalid) and every problem that would stop ``serve``; also
    what ``check`` reports, so the two agree (it said "valid" where serve refused)."""
    problems: list[str] = []
    settings: Settings | None = None
    try:
        settings = Settings.from_env()
    except SettingsError as err:
        problems.extend(err.problems)
    if settings is not None and (unset := unset_public_url.problem(settings)):
        problems.append(unset)
    llm = settings.llm if settings is not None else os.environ.get("LLM") or "bedrock"
    if llm == "bedrock":
        from voiceagent.llm.bedrock_startup import check_bedrock_ready
        problems.extend(check_bedrock_ready(settings or Settings.model_construct(
            aws_region=os.environ.get("AWS_REGION") or None,
            model_identifier=os.environ.get("MODEL_IDENTIFIER") or DEFAULT_MODEL)))
    return settings, problems


def settings_outcome(dotenv: Path | None) -> tuple[Settings | None, Outcome]:
    """The settings as ``serve`` builds them, every problem listed when they are invalid."""
    source = "environment" + (f" and {dotenv}" if dotenv is not None else "")
    settings, problems = serving_problems()
    if problems or settings is None:
        # valid settings that serve would still refuse (no AWS region or credentials) go on
        # to the other checks, which say more about them
        return settings, failed("settings", f"{len(problems)} problem(s) in the {source}",
                                *problems, "every setting is described in .env.example")
    return settings, passed("settings", f"valid ({source}; STORE={settings.store}, "
                                        f"LLM={settings.llm})")


# ---------------------------------------------------------------- AWS credentials

async def aws_identity(ctx: CheckContext) -> list[Outcome]:
    """STS GetCallerIdentity: which account and principal boto3's chain finds."""
    settings, name = ctx.settings, "AWS credentials"
    if settings.store == "sqlite" and settings.llm == "scripted":
        return [skipped(name, "STORE=sqlite and LLM=scripted: nothing calls AWS")]
    if settings.store == "sqlite" and os.environ.get("AWS_BEARER_TOKEN_BEDROCK"):
        return [skipped(name, "STORE=sqlite, and Bedrock takes AWS_BEARER_TOKEN_BEDROCK")]
    if settings.store == "dynamodb" and (settings.llm == "scripted"
                                         or os.environ.get("AWS_BEARER_TOKEN_BEDROCK")):
        local, sts = await run_blocking(partial(_resolved_endpoints, settings),
                                        limiter=ctx.limiter)
        if local and not _sts_on_purpose(sts, local):
            # DynamoDB Local takes any keys (compose's dummy ones), which STS would refuse;
            # an STS endpoint set on purpose is still asked
            model = ("LLM=scripted" if settings.llm == "scripted"
                     else "Bedrock takes AWS_BEARER_TOKEN_BEDROCK")
            return [skipped(name, f"{model}, and DynamoDB is at {local}, not AWS")]
    try:
        with trio.fail_after(AWS_TIMEOUT_S):
            identity = await run_blocking(partial(_caller_identity, settings.aws_region),
                                          limiter=ctx.limiter, abandon_on_cancel=True)
    except trio.TooSlowError:
        return [failed(name, f"STS did not answer within {AWS_TIMEOUT_S:g} s", NETWORK_ADVICE)]
    except NoCredentialsError:
        return [failed(name, "no AWS credentials found (environment, AWS_PROFILE and ~/.aws, "
                             "SSO, container or instance role)", CREDENTIALS_ADVICE)]
    except ClientError as err:
        return [_sts_refused(name, err)]
    except (BotoConnectionError, HTTPClientError) as err:
        return [failed(name, f"cannot reach STS: {err}", NETWORK_ADVICE)]
    except SSO_ERRORS as err:
        return [failed(name, f"AWS SSO sign-in missing or expired: {err}", sso_advice())]
    except BotoCoreError as err:        # a profile that does not exist, a bad config file
        return [failed(name, f"AWS configuration: {err}",
                       "fix AWS_PROFILE or ~/.aws/config, or unset AWS_PROFILE")]
    ctx.account_id = str(identity["Account"])
    return [passed(name, f"account {identity['Account']}, {identity['Arn']}")]


def _resolved_endpoints(settings: Settings) -> tuple[str | None, str | None]:
    """Worker thread: the DynamoDB endpoint when it is not AWS's (DynamoDB Local, moto), else
    None, and STS's endpoint; as botocore resolves them for the clients the store and this
    check build (AWS_ENDPOINT_URL_<SERVICE>, AWS_ENDPOINT_URL, the AWS config file's
    ``services`` sections and ``endpoint_url``), which reading the environment missed. A
    client that cannot be built counts as AWS's: the store check says why."""
    try:
        dynamodb = make_client(settings, max_pool_connections=1)
    except (SettingsError, StoreError):
        local = None
    else:
        try:
            local = _not_aws(str(dynamodb.meta.endpoint_url))
        finally:
            dynamodb.close()
    try:
        sts = _sts_client(settings.aws_region)
    except BotoCoreError:
        return local, None
    try:
        return local, str(sts.meta.endpoint_url)
    finally:
        sts.close()


def _not_aws(endpoint: str) -> str | None:
    """``endpoint`` unless it is AWS's own: hosts ending in amazonaws.com (.com.cn in China)
    or api.aws."""
    host = urlsplit(endpoint).hostname or ""
    if not host or host.endswith((".amazonaws.com", ".amazonaws.com.cn", ".api.aws")):
        return None
    return endpoint


def _sts_on_purpose(sts: str | None, local_dynamodb: str) -> bool:
    """Whether STS was pointed somewhere that may take DynamoDB Local's dummy keys (moto,
    LocalStack): an endpoint that is not AWS's, and either its own variable or another than
    DynamoDB's. One endpoint for every service (AWS_ENDPOINT_URL, or ``endpoint_url`` in the
    config file) is DynamoDB Local's, which does not answer STS."""
    if sts is None or _not_aws(sts) is None:
        return False
    return sts != local_dynamodb or bool(os.environ.get("AWS_ENDPOINT_URL_STS"))


def sso_advice() -> str:
    profile = os.environ.get("AWS_PROFILE")
    return (f"sign in again: `aws sso login{f' --profile {profile}' if profile else ''}`, "
            "then run the check again")


def _caller_identity(region: str | None) -> dict[str, Any]:
    """Worker thread: one STS call with short timeouts. Without a region (the other checks
    say so) the credentials are still checked, in STS's global endpoint's region."""
    client = _sts_client(region)
    try:
        return dict(client.get_caller_identity())
    finally:
        client.close()


def _sts_client(region: str | None) -> Any:
    """Blocking: the STS client of ``_caller_identity``, short timeouts."""
    config = Config(connect_timeout=AWS_CONNECT_TIMEOUT_S, read_timeout=AWS_READ_TIMEOUT_S,
                    retries={"mode": "standard", "total_max_attempts": 2})
    session = boto3.session.Session(region_name=region)
    return session.client("sts", region_name=session.region_name or STS_FALLBACK_REGION,
                          config=config)


def _sts_refused(name: str, err: ClientError) -> Outcome:
    code = error_code(err)
    message = str(err.response.get("Error", {}).get("Message", ""))[:200]
    if code in _EXPIRED:
        return failed(name, f"the credentials have expired ({code})",
                      "get new ones: `aws sso login` for an SSO profile, or a fresh "
                      "AWS_SESSION_TOKEN with its key pair")
    if code in _REFUSED_KEYS:
        return failed(name, f"AWS refused the access key ({code}): {message}",
                      "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE; IAM "
                      "console > Users > Security credentials shows whether a key is active",
                      "SignatureDoesNotMatch can also mean this machine's clock is wrong")
    return failed(name, f"STS refused GetCallerIdentity ({code}): {message}",
                  CREDENTIALS_ADVICE)


# ---------------------------------------------------------------- the store

async def store_check(ctx: CheckContext) -> list[Outcome]:
    if ctx.settings.store == "sqlite":
        return [await run_blocking(partial(data_dir_outcome, ctx.settings.data_dir),
                                   limiter=ctx.limiter)]
    return [await _table_outcome(ctx)]


async def _table_outcome(ctx: CheckContext) -> Outcome:
    settings = ctx.settings
    name = f"DynamoDB table {settings.table_name}"
    region = settings.aws_region or "<region>"
    try:
        with trio.fail_after(AWS_TIMEOUT_S):
            client = await run_blocking(partial(make_client, settings, max_pool_connections=2),
                                        limiter=ctx.limiter)
            region = str(client.meta.region_name)
            store = DynamoDBStore(str(settings.table_name), client, limiter=ctx.limiter)
            try:
                return await _inspect_table(ctx, store, name, region)
            finally:
                await store.aclose()
    except trio.TooSlowError:
        return failed(name, f"DynamoDB did not answer within {AWS_TIMEOUT_S:g} s",
                      NETWORK_ADVICE)
    except SettingsError as err:
        return failed(name, "; ".join(err.problems))
    except StoreError as err:
        return _store_failure(ctx, name, region, err)


async def _inspect_table(ctx: CheckContext, store: DynamoDBStore, name: str,
                         region: str) -> Outcome:
    table = await store.describe()
    if table is None:
        return failed(name, f"does not exist at {store.endpoint}",
                      "create it with `voiceagent store init` (same settings)",
                      f"or set TABLE_NAME to an existing table: DynamoDB console > Tables "
                      f"(region {region}) lists them; check AWS_REGION too")
    problems = table_problems(table)
    if problems:
        return failed(name, "exists, but is not keyed the way voiceagent needs", *problems,
                      f"voiceagent needs pk/sk (strings) and a GSI {INDEX_NAME} on pk1/sk1 "
                      "projecting ALL: run `voiceagent store init` with a new TABLE_NAME")
    if not is_active(table):
        return failed(name, f"is {table.get('TableStatus')}, not ACTIVE yet",
                      "wait until DynamoDB console > Tables shows it Active, then check again")
    use_cases, unreadable = await _stored_use_cases(store)
    ctx.stored_use_cases = use_cases
    names = sorted(u.name for u in use_cases)
    load = "run `voiceagent config load` to write config/ to the table"
    if unreadable:
        return failed(name, f"{len(unreadable)} use case item(s) cannot be read",
                      *unreadable, load)
    wanted = ctx.settings.stack_use_case
    if wanted not in names:
        advice = [load] + ([f"or set STACK_USE_CASE to one of: {', '.join(names)}"]
                           if names else [])
        return failed(name, f"has voiceagent's keys, but no use case {wanted!r} "
                            "(STACK_USE_CASE) in it", *advice)
    return passed(name, f"pk/sk, GSI {INDEX_NAME} on pk1/sk1, ACTIVE; "
                        f"{len(names)} use case(s), {wanted} among them")


async def _stored_use_cases(store: DynamoDBStore) -> tuple[tuple[UseCase, ...], list[str]]:
    use_cases: list[UseCase] = []
    unreadable: list[str] = []
    for item in await store.query_index(config_records.USE_CASE_INDEX):
        try:
            use_cases.append(config_records.use_case_from_item(item))
        except ConfigError as err:
            unreadable.append(f"use case {item.get('pk')}: {err.problem}")
    return tuple(use_cases), unreadable


def _store_failure(ctx: CheckContext, name: str, region: str, err: StoreError) -> Outcome:
    code = error_code(err.__cause__)
    if code == "AccessDeniedException":
        arn = (f"arn:aws:dynamodb:{region}:{ctx.account_id or '<account>'}:table/"
               f"{ctx.settings.table_name}")
        return failed(name, f"access denied: {err}",
                      f"allow {STORE_ACTIONS} on {arn} and {arn}/index/* in the IAM policy of "
                      "the role or user these credentials belong to")
    if code in _REFUSED_KEYS | _EXPIRED or isinstance(err.__cause__, NoCredentialsError):
        return failed(name, str(err), CREDENTIALS_ADVICE)
    if isinstance(err.__cause__, BotoConnectionError | HTTPClientError):
        return failed(name, f"cannot reach DynamoDB: {err.__cause__}", NETWORK_ADVICE,
                      "a DynamoDB endpoint set (AWS_ENDPOINT_URL_DYNAMODB, AWS_ENDPOINT_URL, "
                      "or endpoint_url in the AWS config file) must point at a running one")
    return failed(name, str(err))


def data_dir_outcome(data_dir: Path) -> Outcome:
    """Blocking (file system): DATA_DIR can hold the SQLite file, now or once created."""
    name = "SQLite data dir"
    path = data_dir.absolute()
    if path.exists() and not path.is_dir():
        return failed(name, f"DATA_DIR={data_dir} is a file, not a folder",
                      "set DATA_DIR to a folder (it is created when missing)")
    existing = path
    while not existing.exists():
        existing = existing.parent
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".voiceagent-check-"):
            pass
    except OSError as err:
        return failed(name, f"cannot write in {existing}: {err.strerror}",
                      "set DATA_DIR to a folder this user can write, or fix its permissions")
    database = path / "voiceagent.db"
    if database.exists() and not os.access(database, os.R_OK | os.W_OK):
        return failed(name, f"{database} is not readable and writable by this user",
                      "fix its permissions, or set DATA_DIR to another folder")
    if existing != path:
        return passed(name, f"{path} will be created (in {existing}, which is writable)")
    return passed(name, f"{path} is writable")
