"""One request to DynamoDB by either path, its errors translated: through botocore's client
in a worker thread (``_call``), or from the event loop over ``dynamodb_http`` (``_call_http``).

Apart from ``dynamodb.py``, which says what each ``Store`` operation asks of the table: this
module is how a request goes and what its failure means (``StoreError`` for what may pass,
``StoreRejected`` for what never will), the same for the item calls and the table calls
(``TableAdmin``). Mixed into ``DynamoDBStore``.

A read from the loop is tried a second time when its failure may pass (throttled, a 5xx, the
connection lost or silent, credentials renewed), as botocore's client tries every request
(``TOTAL_MAX_ATTEMPTS``): ``/twiml`` refuses a call whose session read fails, and a single
throttled read would otherwise cost a caller their call. Within the store's retry quota, as
botocore's (``voiceagent.retry_quota``): in an outage the reads stop doubling the load.
The retries are logged as an episode (the first of each kind, then counts a minute), since
throttling fails the reads of every call alike. Writes are not tried again here: the
write-behind tries them on its own schedule, and a caller waiting on a write has a deadline
for it.
"""

from __future__ import annotations

import logging
import math
import random
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import h11
import trio
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
)

from voiceagent.aws_http import ConnectTimeout
from voiceagent.errors import StoreError, StoreRejected
from voiceagent.log_episodes import Episode
from voiceagent.net import ProxyRefused
from voiceagent.retry_quota import RetryBudget
from voiceagent.store.dynamodb_admin import store_error
from voiceagent.store.dynamodb_http import RENEW_CREDENTIALS, DynamoDBHttp, DynamoDBHttpError
from voiceagent.store.dynamodb_values import Key, error_code, where
from voiceagent.threads import run_blocking

T = TypeVar("T")

READ_ATTEMPTS = 2                   # botocore's client too (``dynamodb_client.TOTAL_MAX_ATTEMPTS``)
READ_RETRY_DELAY_S = 0.05           # times a factor in [0.5, 1]: a caller is waiting on it
THROTTLED = frozenset({"ProvisionedThroughputExceededException", "ThrottlingException",
                       "RequestLimitExceeded", "TransactionInProgressException"})


@dataclass
class ReadCounts:
    """The loop's reads that failed in a way that may pass, for ``GET /metrics``: one
    throttled read is retried unseen, and throttling that grows shows here before calls
    are refused (the episode's log lines say it once a minute)."""

    retried: int = 0            # tried a second time
    failed: int = 0             # failed on their last try, or not tried again (quota spent)


class _StoreParts(Protocol):
    """What ``DynamoDBCalls`` uses of the store it is mixed into (``DynamoDBStore``)."""

    table_name: str
    _http: DynamoDBHttp | None
    _limiter: trio.CapacityLimiter
    _closed: bool
    _read_quota: RetryBudget
    _read_faults: Episode
    read_counts: ReadCounts

    @property
    def endpoint(self) -> str: ...


class DynamoDBCalls(_StoreParts):
    """Mixed into ``DynamoDBStore``: how each of its requests goes, apart from what it asks."""

    async def _call(self, operation: str, fn: Callable[[], T], *,
                    keys: Sequence[Key] = (), read: bool = False) -> T:
        """Run one client call in a worker thread; translate botocore's errors. Reads are
        abandoned when cancelled (nobody wants the answer); writes finish their attempt."""
        if self._closed:
            raise StoreError(f"dynamodb {operation} on {self.table_name}: the store is closed")
        try:
            return await run_blocking(fn, limiter=self._limiter, abandon_on_cancel=read)
        except ClientError as err:
            raise self._client_error(operation, err, keys) from err
        except ParamValidationError as err:
            raise StoreRejected(f"dynamodb {operation} refused {where(keys)}before sending: "
                                f"{err}") from err
        except NoCredentialsError as err:
            raise StoreError(f"dynamodb {operation}: no AWS credentials found; set them the "
                             "usual AWS way (role, profile, or AWS_ACCESS_KEY_ID)") from err
        except EndpointConnectionError as err:
            # the first thing `store init`, `config load` or `serve` meets when DynamoDB Local
            # is not started yet, or the endpoint setting is wrong: say where to look
            raise StoreError(f"dynamodb {operation} on {self.table_name}: cannot reach "
                             f"{self.endpoint} ({err}); is DynamoDB running there? Check "
                             "AWS_ENDPOINT_URL_DYNAMODB (DynamoDB Local must be up at it), or, "
                             "for AWS itself, AWS_REGION and the network path (HTTPS_PROXY / "
                             "NO_PROXY)") from err
        except BotoCoreError as err:
            raise StoreError(f"dynamodb {operation} on {self.table_name} failed: {err}") from err

    async def _call_http(self, operation: str, target: str, payload: dict[str, Any],
                         keys: Sequence[Key], *, read: bool = False) -> dict[str, Any]:
        """One request from the event loop, errors translated as ``_call`` does. A cancel
        waits for a write's attempt to end (bounded by the connect and read timeouts), as a
        write in a thread would; a read is abandoned (its connection closed). A caller's
        deadline still ends a write's attempt: ``write_now``'s 2 s for a session became the
        attempt's 4 s read timeout, or ~10 s with a dead kept-alive connection, under a
        stalled DynamoDB (``/twiml`` and ``/action`` wait on it, and Twilio on them). A
        read whose failure may pass is tried once more (see the module docstring)."""
        if not read:
            return await self._attempt_http(operation, target, payload, keys, read=False)
        taken = 0
        for _ in range(READ_ATTEMPTS - 1):
            try:
                answer = await self._attempt_http(operation, target, payload, keys, read=True)
            except StoreError as err:
                if not may_pass(err.__cause__):
                    raise
                kind = describe_failure(err.__cause__)
                taken = self._read_quota.take(throttled=kind in THROTTLED)
                if not taken:
                    self.read_counts.failed += 1
                    self._read_faults.note(f"{kind}, not tried again", "dynamodb read failed "
                                           "and the retry quota is spent: not tried again",
                                           level=logging.WARNING, operation=operation,
                                           error=kind)
                    raise
                self._read_faults.note(kind, "dynamodb read failed, trying it again",
                                       operation=operation, error=kind)
                self.read_counts.retried += 1
            else:
                self._read_answered(0)
                return answer
            await trio.sleep(READ_RETRY_DELAY_S * random.uniform(0.5, 1.0))
        try:
            answer = await self._attempt_http(operation, target, payload, keys, read=True)
        except StoreError as err:
            if may_pass(err.__cause__):
                self.read_counts.failed += 1
            raise
        self._read_answered(taken)
        return answer

    def _read_answered(self, taken: int) -> None:
        self._read_quota.succeeded(taken)
        self._read_faults.succeeded()

    async def _attempt_http(self, operation: str, target: str, payload: dict[str, Any],
                            keys: Sequence[Key], *, read: bool) -> dict[str, Any]:
        if self._closed or self._http is None:
            raise StoreError(f"dynamodb {operation} on {self.table_name}: the store is closed")
        deadline = math.inf if read else trio.current_effective_deadline()
        try:
            async with self._limiter:       # at most STORE_THREADS requests at once, as threads
                with trio.CancelScope(shield=not read):
                    with trio.CancelScope(deadline=deadline) as budget:
                        answer = await self._http.call(target, payload)
                if budget.cancelled_caught:
                    raise StoreError(f"dynamodb {operation} on {self.table_name}: no answer "
                                     "within the caller's time; it may still be applied")
        except DynamoDBHttpError as err:
            raise self._error(operation, err.code, err.message, keys) from err
        except NoCredentialsError as err:
            raise StoreError(f"dynamodb {operation}: no AWS credentials found; set them the "
                             "usual AWS way (role, profile, or AWS_ACCESS_KEY_ID)") from err
        except trio.TooSlowError as err:
            raise StoreError(f"dynamodb {operation} on {self.table_name}: no answer from "
                             f"{self.endpoint} within {self._http.read_timeout_s:g} s") from err
        except ssl.SSLCertVerificationError as err:
            raise StoreError(f"dynamodb {operation}: the certificate of {self.endpoint} is not "
                             f"trusted ({err}); if a proxy or a private endpoint signs with "
                             "its own CA, point AWS_CA_BUNDLE at that CA") from err
        except (OSError, ssl.SSLError, socket.gaierror, h11.ProtocolError, ConnectTimeout,
                ProxyRefused, BotoCoreError, trio.BrokenResourceError,
                trio.ClosedResourceError) as err:
            raise StoreError(f"dynamodb {operation} on {self.table_name} failed: "
                             f"{type(err).__name__}: {err}") from err
        return answer

    def _client_error(self, operation: str, err: ClientError, keys: Sequence[Key]
                      ) -> StoreError:
        message = str(err.response.get("Error", {}).get("Message", ""))
        return self._error(operation, error_code(err), message, keys)

    def _error(self, operation: str, code: str | None, message: str, keys: Sequence[Key]
               ) -> StoreError:
        return store_error(self.table_name, self.endpoint, operation, code, message, keys)


def may_pass(cause: BaseException | None) -> bool:
    """Whether a loop request's failure may not happen again at once: DynamoDB throttled
    it, failed on its side (5xx, a proxy's page for one), or called the credentials expired
    (``DynamoDBHttp`` has renewed them); or the connection failed, or answered nothing in
    time, or a proxy failed on its side. Not: DynamoDB refusing the request, the table
    missing, access denied, no credentials, a certificate not trusted, a proxy refusing us."""
    if isinstance(cause, DynamoDBHttpError):
        return cause.status >= 500 or cause.code in THROTTLED or cause.code in RENEW_CREDENTIALS
    if isinstance(cause, ProxyRefused):
        return cause.status >= 500          # not 407: the proxy wants credentials
    if isinstance(cause, ssl.SSLCertVerificationError):
        return False
    return isinstance(cause, OSError | ssl.SSLError | h11.ProtocolError | ConnectTimeout
                      | trio.TooSlowError | trio.BrokenResourceError)


def describe_failure(cause: BaseException | None) -> str:
    """For the log: DynamoDB's code, or the exception's type (never a payload)."""
    if isinstance(cause, DynamoDBHttpError):
        return cause.code
    return type(cause).__name__
