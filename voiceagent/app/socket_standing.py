"""A relay socket's place before and after its setup: the waiting budget, and its call."""

from __future__ import annotations

import trio

from actors.call import CallPlan, CallRejected, CallReport, CallUnavailable
from actors.messages import Setup
from voiceagent.app.runtime import Runtime
from voiceagent.catalog import UnknownUseCase
from voiceagent.errors import ConfigError, StoreError

CAPACITY_MARGIN = 10     # sockets for calls /twiml admitted just before the limit was reached


class SocketStanding:
    """One relay socket's place. Until its setup is resolved a socket is not a call: it waits
    in a budget of its own (MAX_SOCKETS_WAITING, each for SETUP_TIMEOUT_S at most), so sockets
    that never send setup cannot take the places of calls. When that budget is full, the
    socket that has waited longest is closed to make room: Twilio's own socket sends setup
    within milliseconds of connecting, so what has waited longest is an idle one.

    A setup leaves the budget while its call is looked up: Twilio's own sockets find their
    session at the first read, however slow the store (a mass reconnect after a task died
    lands hundreds on a process that did not mint them), and must not evict each other. One
    whose call is not there at the first read is looked up again for ~3.5 s (its session
    may still be on its way from another process), and waits in the budget again meanwhile:
    a flood of setups naming calls nobody prepared costs a bounded number of sockets and
    store reads. A drain waits for either lookup (``CallCounters.lookups``): each may
    become a call. A socket whose setup claims its call is one of the calls until it ends."""

    def __init__(self, runtime: Runtime, *, call_sid: str | None = None) -> None:
        self._runtime = runtime
        self._bound = call_sid                  # a phone page socket claims only its call
        self.report = CallReport(via="twilio" if call_sid is None else "phone-page")
        self.scope = trio.CancelScope()         # cancelled only to evict it while waiting
        self._resolving: trio.CancelScope | None = None   # its call's lookup, while it runs
        self._waiting = False
        self._call_sid: str | None = None
        self._generation = 0                    # of the session it claimed
        self._socket_closed = False
        self._looking = False                   # in runtime.calls.lookups
        self._counted = False                   # in runtime.calls.claims (its first read)
        self._matched = False                   # in runtime.calls.matched
        self._enter_waiting()

    def _enter_waiting(self) -> None:
        waiting = self._runtime.sockets_waiting
        if len(waiting) >= self._runtime.settings.max_sockets_waiting:
            next(iter(waiting))._evict()
        waiting[self] = None
        self._waiting = True

    def _evict(self) -> None:
        """Close it to make room: before setup, its whole call; during its lookup, only the
        lookup, so that a cancel arriving after the lookup has already claimed the call (its
        task rescheduled, not yet run) is ignored rather than ending a claimed call."""
        self._leave_waiting()
        (self._resolving or self.scope).cancel()

    async def claim(self, setup: Setup) -> CallPlan:
        runtime = self._runtime
        self._leave_waiting()
        if self.scope.cancel_called:    # evicted as its setup arrived: the cancel lands on
            raise CallRejected(         # the call's first checkpoint, after a claim
                "closed to make room for newer sockets as its setup arrived")
        if self._bound is not None and setup.call_sid != self._bound:
            raise CallRejected("this socket was opened for another call")
        # lookups at their first read count: each may become a call while the others await
        # it (a mass reconnect). One looked up again waits in the budget instead, where it
        # can be evicted: its call was nowhere at the first read, and a flood of made-up
        # CallSids must not refuse real calls.
        if (runtime.calls.active + runtime.calls.claims
                >= runtime.settings.max_calls + CAPACITY_MARGIN):
            raise CallRejected("over capacity")
        plan = None
        runtime.calls.claim_started()
        self._looking = self._counted = True
        try:
            with trio.CancelScope() as self._resolving:
                plan = await runtime.sessions.resolve(setup, on_retry=self._looked_up_again,
                                                      on_match=self._token_matched)
        except (StoreError, UnknownUseCase, ConfigError) as err:
            raise CallUnavailable(f"{type(err).__name__}: {err}") from err
        finally:                        # refused too: out of the budget, no scope to cancel
            self._lookup_over()
            self._resolving = None
            self._leave_waiting()
        if plan is None:
            raise CallRejected("closed while its call was looked up, to make room for newer "
                               "sockets")
        self._call_sid, self._generation = plan.call_sid, plan.generation
        if self._socket_closed:
            runtime.sessions.socket_closed(plan.call_sid)
        runtime.calls.started(self.report)
        return plan

    def _looked_up_again(self) -> None:
        if self._counted:
            self._counted = False
            self._runtime.calls.looked_up_again()
        self._enter_waiting()

    def _token_matched(self) -> None:
        if self._looking and not self._matched:
            self._matched = True
            self._runtime.calls.token_matched()

    def _lookup_over(self) -> None:
        if self._looking:
            self._looking = False
            self._runtime.calls.claim_done(at_first_read=self._counted, matched=self._matched)
            self._counted = self._matched = False

    def socket_closed(self) -> None:
        """Its socket closed (the peer left, a send failed, or we closed it): a reconnect
        waits for the call's wind-down instead of refusing it as connected."""
        self._socket_closed = True
        if self._call_sid is not None:
            self._runtime.sessions.socket_closed(self._call_sid)

    def end(self) -> None:
        self._leave_waiting()
        if self._call_sid is not None:
            self._runtime.sessions.release(self._call_sid, self._generation)
            self._runtime.calls.finished(self.report)
            return
        if self.scope.cancelled_caught:         # evicted: run_call had no say in it
            self.report.ended_by = "evicted"
        # never a call, yet counted by how it ended: during a store outage the sockets
        # closed "unavailable" are what an alarm should see
        self._runtime.calls.never_started(self.report)

    def _leave_waiting(self) -> None:
        if self._waiting:
            self._waiting = False
            self._runtime.sockets_waiting.pop(self, None)
