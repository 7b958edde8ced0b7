"""One process's quota of retries for one AWS service, as botocore's ``standard`` retry mode
keeps it (its own ``RetryQuota`` class and costs): each retry takes from it, each success
gives some back. Under sustained throttling or an outage the process stops multiplying its
load on a service that is already failing, and retries again once requests succeed.

Our own transports retry outside botocore (the model's streams, the store's reads from the
event loop), so each keeps one of these, as botocore keeps one per client.
"""

from __future__ import annotations

from botocore.retries.quota import RetryQuota

# botocore.retries.standard.RetryQuotaChecker's costs (private there, so restated here)
RETRY_COST = 14
THROTTLING_RETRY_COST = 5
NO_RETRY_INCREMENT = 1


class RetryBudget:
    """The quota, with botocore's standard-mode costs."""

    def __init__(self, capacity: int = RetryQuota.INITIAL_CAPACITY) -> None:
        self._quota = RetryQuota(capacity)

    @property
    def available(self) -> int:
        return int(self._quota.available_capacity)

    def take(self, *, throttled: bool) -> int:
        """The cost of one retry, taken from the quota; 0 if it is spent (do not retry)."""
        cost = THROTTLING_RETRY_COST if throttled else RETRY_COST
        return cost if self._quota.acquire(cost) else 0

    def succeeded(self, taken: int) -> None:
        """A request succeeded after retries that took ``taken`` (0: none)."""
        self._quota.release(taken or NO_RETRY_INCREMENT)
