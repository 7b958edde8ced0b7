"""The heap, settled for a latency-bound server.

CPython's cyclic collector stops the event loop while it runs, for every call at once, and a
full collection walks every object the process tracks. Everything built at start-up (modules,
botocore's service models, pydantic schemas, the catalog) lives as long as the process, so it
is frozen out of the collector's walks. Measured at 200 calls (benchmarks/RESULTS.md): the
longest full collection fell from 144 ms to 81 ms. Young collections (5-36 ms here) are not
changed; they are the price of CPython's collector.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def settle_after_startup() -> None:
    """Call once the service is built, before it takes calls."""
    gc.collect()
    gc.freeze()
    log.info("heap settled", extra={"frozen_objects": gc.get_freeze_count()})
