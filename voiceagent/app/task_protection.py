"""ECS task scale-in protection, held while this process has live calls (or sockets claiming
theirs with a token that matched) or unsaved writes.

A stopping ECS task loses its calls, and the writes its write-behind queue has not got into
the store yet (a store outage or throttling keeps them there; a stopping task gets only
``FLUSH_TIMEOUT_S`` to write them). So while either is there the task asks the ECS agent
(``$ECS_AGENT_URI/task-protection/v1/state``) not to be picked by a scale-in or a deployment.
The hold is short and renewed (``EXPIRES_MINUTES``), so a hung process stops protecting its
task within minutes; it is released when the process has had neither for
``TASK_PROTECTION_IDLE_S``; and it is given up after ``TASK_PROTECTION_MAX_MINUTES`` of
continuous hold, so a task that never goes idle cannot block a deployment forever (the target
group's deregistration delay still lets its calls finish). See docs/deploy.md for the whole
story.

Protection is best effort: a failure to set it is logged and retried, never fatal, because a
call without protection is still a call.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from voiceagent.threads import run_blocking

log = logging.getLogger(__name__)

STATE_PATH = "/task-protection/v1/state"
EXPIRES_MINUTES = 10         # each hold; renewed while calls run
RENEW_BEFORE_S = 240.0       # renew when less than this is left of the hold
RETRY_S = (5.0, 15.0, 30.0, 60.0)   # after a failed request, while it still matters
REQUEST_TIMEOUT_S = 3.0


class ProtectionError(Exception):
    """The agent refused or could not be reached; the message says which and why."""


class Agent(Protocol):
    async def set(self, enabled: bool, expires_minutes: int | None) -> None: ...


class Busy(Protocol):
    """What the holder watches: the process's live calls (``CallCounters``), and the
    sockets claiming a call, their token found to match its session: each becomes a call a
    moment later (its saved history and the claim's conditional write to go: seconds on a
    store slowed by a mass reconnect), so a task being claimed is as busy as one whose
    calls have started. A socket whose lookup has not found its session yet does not count
    (``CallCounters.token_matched`` says why): the one read of it is left unprotected."""

    @property
    def active(self) -> int: ...

    @property
    def matched(self) -> int: ...

    async def wait_changed(self) -> None: ...


class Unsaved(Protocol):
    """The writes not in the store yet (``WriteBehind``): a task that stops loses them."""

    @property
    def pending(self) -> int: ...

    @property
    def filled_or_emptied(self) -> trio.Event: ...


@dataclass(frozen=True)
class Policy:
    idle_release_s: float = 30.0       # a short gap between calls keeps the hold
    max_hold_minutes: int = 120
    # several server processes share the task (WORKERS > 1): one idle process must not
    # release the task's protection while another has calls, so holds only lapse
    shared: bool = False


class AgentEndpoint:
    """The container agent's task-protection endpoint, over plain HTTP on the task's link-local
    address. urllib in a worker thread: one small request every few minutes."""

    def __init__(self, agent_uri: str, *, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.url = agent_uri.rstrip("/") + STATE_PATH
        self._timeout_s = timeout_s
        self._limiter = trio.CapacityLimiter(1)

    async def set(self, enabled: bool, expires_minutes: int | None) -> None:
        body: dict[str, Any] = {"ProtectionEnabled": enabled}
        if enabled and expires_minutes is not None:
            body["ExpiresInMinutes"] = expires_minutes
        reply = await run_blocking(lambda: self._put(body), limiter=self._limiter,
                                   abandon_on_cancel=True)
        _check_reply(reply, enabled)

    def _put(self, body: dict[str, Any]) -> tuple[int, bytes]:
        request = urllib.request.Request(
            self.url, data=json.dumps(body).encode(), method="PUT",
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                return response.status, response.read(64 * 1024)
        except urllib.error.HTTPError as err:
            return err.code, err.read(64 * 1024)
        except (OSError, ValueError) as err:        # refused, reset, timeout, bad URL
            raise ProtectionError(f"ECS agent not reachable at {self.url}: {err}") from None


def _check_reply(reply: tuple[int, bytes], enabled: bool) -> None:
    """The agent answers ``{"protection": ...}``, ``{"failure": ...}`` (the ECS API refused,
    e.g. TASK_NOT_VALID for a task outside a service) or ``{"error": ...}`` (e.g. the task
    role lacks ecs:UpdateTaskProtection)."""
    status, raw = reply
    try:
        document = json.loads(raw) if raw else {}
    except ValueError:
        document = {}
    if not isinstance(document, dict):
        document = {}
    problem = document.get("failure") or document.get("error")
    if status == 200 and not problem:
        state = document.get("protection")
        if isinstance(state, dict) and state.get("ProtectionEnabled") not in (None, enabled):
            raise ProtectionError(f"ECS agent answered ProtectionEnabled="
                                  f"{state.get('ProtectionEnabled')}, asked {enabled}")
        return
    if isinstance(problem, dict):
        code = problem.get("Code") or problem.get("Reason") or "error"
        detail = problem.get("Message") or problem.get("Detail") or ""
        hint = (" (the task role needs ecs:UpdateTaskProtection on this task)"
                if "AccessDenied" in str(code) else "")
        raise ProtectionError(f"ECS agent refused (HTTP {status}): {code} {detail}{hint}".strip())
    raise ProtectionError(f"ECS agent answered HTTP {status}")


async def hold_while_busy(calls: Busy, writes: Unsaved, agent: Agent, policy: Policy, *,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                          ) -> None:
    """Run until cancelled. On the way out an unshared hold is released (bounded, shielded):
    it is the process's last act, after its final flush.

    The loop wakes when calls start or end and when the write queue fills or empties, never
    per write. While calls run the queue is not watched: it cannot change the answer."""
    holder = _Holder(agent, policy)
    task_status.started()
    try:
        while True:
            seen = (_calls(calls), writes.pending)
            wake_in = await holder.step(*seen, trio.current_time())
            writes_changed = writes.filled_or_emptied
            if _busy(_calls(calls), writes.pending) != _busy(*seen):
                continue                  # changed while the agent was asked: look again
            with trio.move_on_after(wake_in):
                if _calls(calls):
                    await calls.wait_changed()
                else:
                    await _calls_or_writes_change(calls, writes_changed)
    finally:
        if holder.held and not policy.shared:
            with trio.move_on_after(REQUEST_TIMEOUT_S + 1, shield=True):
                await holder.release(trio.current_time())


def _calls(calls: Busy) -> int:
    """The calls live and those being claimed (``Busy``)."""
    return calls.active + calls.matched


def _busy(active: int, pending: int) -> bool:
    return active > 0 or pending > 0


async def _calls_or_writes_change(calls: Busy, writes_changed: trio.Event) -> None:
    """Until either changes. ``writes_changed`` is taken by the caller before it looked at the
    queue, and this task waits for the calls before any checkpoint, so neither change can
    slip in unseen."""
    async with trio.open_nursery() as nursery:
        async def writes() -> None:
            await writes_changed.wait()
            nursery.cancel_scope.cancel(reason="the write queue filled or emptied")

        nursery.start_soon(writes)
        await calls.wait_changed()
        nursery.cancel_scope.cancel(reason="a call started or ended")


class _Holder:
    """The decisions, apart from the waiting, so each rule reads on its own."""

    def __init__(self, agent: Agent, policy: Policy) -> None:
        self.agent = agent
        self.policy = policy
        self.held_until: float | None = None     # trio time our last hold ends
        self.held_since: float | None = None     # start of the current continuous hold
        self.idle_since: float | None = None
        self.gave_up = False                     # max hold reached; re-armed when idle
        self.failures = 0
        self.retry_at = 0.0

    @property
    def held(self) -> bool:
        return self.held_until is not None

    async def step(self, active: int, pending: int, now: float) -> float:
        """Act on the state at ``now`` (live calls, unsaved writes); return how long to wait
        at most before the next step (a change in either wakes the loop earlier)."""
        busy = _busy(active, pending)
        if self.held_until is not None and now >= self.held_until:
            self.held_until = None                # lapsed by itself
            if not busy:
                self.held_since = None
        if busy:
            self.idle_since = None
            return await self._busy(active, pending, now)
        if self.idle_since is None:
            self.idle_since = now
        self.gave_up = False
        if self.held_until is None:
            self.held_since = None
            return 3600.0
        release_at = self.idle_since + self.policy.idle_release_s
        if self.policy.shared:
            return max(self.held_until - now, 0.0)
        if now < release_at:
            return release_at - now
        if now < self.retry_at:
            return self.retry_at - now
        await self.release(now)
        return self.retry_at - now if self.held else 3600.0

    async def _busy(self, active: int, pending: int, now: float) -> float:
        """The cap counts a backlog of writes as it counts calls: the hold is given up after
        ``max_hold_minutes`` without an idle moment, whatever kept it. A queue that has not
        emptied for that long is a store refusing writes for that long; holding on past it
        would block every deployment for as long as the fault lasts, the one that fixes its
        cause (a table name, say) included. The warning then says how many writes are still
        waiting, so a stop that loses them is not a surprise."""
        if self.gave_up:
            return 3600.0
        held_for = now - self.held_since if self.held_since is not None else 0.0
        if held_for >= self.policy.max_hold_minutes * 60:
            self.gave_up = True
            log.warning("task protection: held for %d minutes without an idle moment; "
                        "letting it lapse so a deployment or scale-in can go ahead (the "
                        "load balancer's deregistration delay still lets live calls finish; "
                        "writes not in the store by the end of the stop's flush are lost)",
                        self.policy.max_hold_minutes,
                        extra={"calls": active, "pending_writes": pending})
            return 3600.0
        renew_at = (self.held_until - RENEW_BEFORE_S) if self.held_until is not None else now
        if now < max(renew_at, self.retry_at):
            return max(renew_at, self.retry_at) - now
        try:
            await self.agent.set(True, EXPIRES_MINUTES)
        except ProtectionError as err:
            return self._failed("set", err, now)
        if self.held_until is None:
            log.info("task protection on", extra={"expires_minutes": EXPIRES_MINUTES,
                                                  "calls": active, "pending_writes": pending})
        self.held_until = now + EXPIRES_MINUTES * 60
        self.held_since = self.held_since if self.held_since is not None else now
        self.failures = 0
        return self.held_until - RENEW_BEFORE_S - now

    async def release(self, now: float) -> None:
        try:
            await self.agent.set(False, None)
        except ProtectionError as err:
            self._failed("release", err, now)
            return
        log.info("task protection off: no calls and no unsaved writes")
        self.held_until = self.held_since = None
        self.failures = 0

    def _failed(self, what: str, err: ProtectionError, now: float) -> float:
        delay = RETRY_S[min(self.failures, len(RETRY_S) - 1)]
        self.failures += 1
        self.retry_at = now + delay
        log.warning("task protection: could not %s it: %s; retrying in %.0f s", what, err,
                    delay, extra={"failures": self.failures})
        return delay
