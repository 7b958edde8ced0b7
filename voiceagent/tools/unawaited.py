"""The coroutines a tool's context hands it (``ctx.store.put(...)``, ``ctx.send(...)``), kept
until the tool is done, so one it never awaited is named instead of lost.

A forgotten ``await`` is silent data loss: the write or the message never happens, the tool
"succeeds", and the only sign was Python's "coroutine ... was never awaited" on stderr, with
no CallSid, once the object was collected. Holding each coroutine until the tool returns keeps
it from being collected early; the executor then fails the tool with the names of those never
started and closes them, so that warning does not fire as well. The cost is one list append
and one small wrapper per store or send call, none per token.
"""

from __future__ import annotations

import inspect
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from voiceagent.store.base import Store

T = TypeVar("T")


class Handouts:
    """One tool call's coroutines, in the order handed out. A blocking tool's thread may
    add to it while the loop settles it: ``settle`` takes a copy, and what comes after it
    (an abandoned thread running on) is no longer held."""

    __slots__ = ("_held", "_settled")

    def __init__(self) -> None:
        self._held: list[tuple[str, Coroutine[Any, Any, Any]]] = []
        self._settled = False

    def track(self, label: str, coroutine: Coroutine[Any, Any, T]) -> Coroutine[Any, Any, T]:
        if not self._settled:
            self._held.append((label, coroutine))
        return coroutine

    def settle(self) -> list[str]:
        """The labels of the coroutines never started, each closed (a closed coroutine
        raises no RuntimeWarning); nothing is held after this."""
        self._settled = True
        held, self._held = list(self._held), []
        forgotten: list[str] = []
        for label, coroutine in held:
            if inspect.getcoroutinestate(coroutine) == inspect.CORO_CREATED:
                coroutine.close()
                if label not in forgotten:
                    forgotten.append(label)
        return forgotten


class TrackedStore:
    """The service's store as a tool sees it: the same methods, each coroutine they return
    held by ``handouts``. Anything that is not a method (``name``) is the store's own."""

    __slots__ = ("_handouts", "_store")

    def __init__(self, store: Store, handouts: Handouts) -> None:
        self._store = store
        self._handouts = handouts

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if not callable(attribute):
            return attribute
        label = f"ctx.store.{name}(...)"
        handouts = self._handouts

        def call(*args: Any, **kwargs: Any) -> Any:
            # by what it returns, not how it is defined: a store wrapped by a plain def
            # that returns the inner store's coroutine is held alike
            result = attribute(*args, **kwargs)
            return handouts.track(label, result) if inspect.iscoroutine(result) else result
        return call

    def __repr__(self) -> str:
        return repr(self._store)


def tracked_store(store: Store, handouts: Handouts) -> Store:
    """``store`` for a tool's context: typed as the ``Store`` it stands for."""
    return cast("Store", TrackedStore(store, handouts))


def advice(forgotten: list[str], *, blocking: bool) -> str:
    """What to write instead, for the log and the model: an async tool awaits; a blocking
    one (a plain def, in a thread) cannot, and reaches the loop through trio."""
    first = forgotten[0]
    named = ", ".join(forgotten)
    verb = "was" if len(forgotten) == 1 else "were"
    if blocking:
        function = first.removesuffix("(...)")
        return (f"{named} {verb} never awaited (it did nothing): a blocking tool runs in a "
                f"thread, so write `trio.from_thread.run({function}, ...)`")
    return f"{named} {verb} never awaited (it did nothing): write `await {first}`"
