"""The memory channels between a call's actors: trio's semantics, a fifth of the memory.

Every connected call holds three channels for its whole life (outbound, inbound, commands),
each with a task waiting to receive on it. ``trio.open_memory_channel`` costs ~2.6 KiB for
that (measured: a pair, a clone and a waiting receiver, against a task waiting without one):
an empty ``deque`` (760 bytes, a block allocated up front), two ``OrderedDict`` of waiting
tasks, a ``set`` and a ``__dict__`` per endpoint, and per wait an entry in each. It is the
largest thing an idle call holds of trio (issue 20: ~8 of an idle call's 54 KiB, ~16 MB at
2000 calls). trio's channels serve any number of receivers and clones of each end; each of
ours has one reader, so it needs one slot for the waiting receiver, a list for the senders
that wait, and slotted objects: ~0.5 KiB with the reader waiting (``tests/test_channel.py``
measures it against trio's).

What a caller sees is trio's memory channel, which the tests check side by side against it
(``tests/test_channel.py``): ``send`` waits for room (with no buffer, for the reader to take
the value), values arrive in the order sent and blocked senders are served first come,
first served; every ``send`` and ``receive`` is a checkpoint; a cancelled ``send`` delivers
nothing; the reader gets ``EndOfChannel`` once every sender clone is closed, senders get
``BrokenResourceError`` once the reader is closed, and a closed end raises
``ClosedResourceError``. The differences, on purpose: a second task receiving while one
already waits raises ``trio.BusyResourceError``, not a second wait, since no actor shares its
input; and the receiving end has no clones (``ends`` opens once; senders ``clone``). The ends
are ``trio.abc`` channels, so an actor typed with ``Sends``/``Receives`` takes these and
trio's alike (the tests drive actors with trio's).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Generic, Protocol, Self, TypeVar

import trio
from outcome import Error, Value
from trio.lowlevel import enable_ki_protection

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
T_contra = TypeVar("T_contra", contravariant=True)


class Sends(Protocol[T_contra]):
    """What an actor does with a sending end: trio's ``MemorySendChannel`` or ``Sender``."""

    async def send(self, value: T_contra) -> None: ...
    def send_nowait(self, value: T_contra) -> None: ...
    def clone(self) -> Sends[T_contra]: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


class Receives(Protocol[T_co]):
    """What an actor does with a receiving end: trio's ``MemoryReceiveChannel`` or
    ``Receiver``."""

    async def receive(self) -> T_co: ...
    def receive_nowait(self) -> T_co: ...
    def __aiter__(self) -> Self: ...
    async def __anext__(self) -> T_co: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


class _Waiting(Generic[T]):
    """A sender parked until there is room: its task, its value, and which end it used (closing
    that end wakes it with ``ClosedResourceError``)."""

    __slots__ = ("sender", "task", "value")

    def __init__(self, task: trio.lowlevel.Task, value: T, sender: Sender[T]) -> None:
        self.task = task
        self.value = value
        self.sender = sender

    def abort(self, _: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        """A cancelled send: its value is never delivered. A bound method, not a closure per
        wait: a waiting task keeps its abort for as long as it waits."""
        self.sender._channel._waiting.remove(self)
        return trio.lowlevel.Abort.SUCCEEDED


class Channel(Generic[T]):
    """The state the ends share. ``Channel[Outgoing](0).ends()`` opens one."""

    __slots__ = ("_buffered", "_limit", "_receiver_open", "_receiving", "_senders_open",
                 "_waiting")

    def __init__(self, max_buffer_size: int) -> None:
        if max_buffer_size < 0:
            raise ValueError("max_buffer_size must be >= 0")
        self._limit = max_buffer_size
        self._buffered: list[T] = []            # at most a handful: pop(0) is cheap
        self._waiting: list[_Waiting[T]] = []   # senders parked, first come first
        self._receiving: trio.lowlevel.Task | None = None
        self._senders_open = 0
        self._receiver_open: bool | None = None     # None until ``ends``, False once closed

    def ends(self) -> tuple[Sender[T], Receiver[T]]:
        """The first sending end (``clone`` it for more) and the one receiving end; once, since
        a second reader would break the one-reader rule everything here rests on."""
        if self._receiver_open is not None:
            raise RuntimeError("a channel's ends are opened once: clone the sender for more")
        self._receiver_open = True
        return Sender(self), Receiver(self)

    def _stop_receiving(self, _: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        self._receiving = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _put(self, value: T) -> bool:
        """Hands ``value`` to the waiting reader or the buffer; False when neither has room."""
        if (task := self._receiving) is not None:
            self._receiving = None
            trio.lowlevel.reschedule(task, Value(value))
            return True
        if len(self._buffered) < self._limit:
            self._buffered.append(value)
            return True
        return False

    def _take(self) -> tuple[bool, T | None]:
        """The next value, if one is buffered or a sender waits with it; a waiting sender
        moves into the room its value leaves."""
        if self._waiting:
            parked = self._waiting.pop(0)
            trio.lowlevel.reschedule(parked.task)
            if not self._limit:
                return True, parked.value
            self._buffered.append(parked.value)
        if self._buffered:
            return True, self._buffered.pop(0)
        return False, None


class _End(ABC):
    """What both ends share: they close once and synchronously (not a checkpoint, so a
    cancelled task can close on its way out), on ``with`` too, and ``aclose`` is that plus a
    checkpoint, as trio's."""

    __slots__ = ("_closed",)

    def __init__(self) -> None:
        self._closed = False

    @enable_ki_protection
    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    @abstractmethod
    def _close(self) -> None:
        """What closing this end does to the channel: run once, by ``close``."""

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class Sender(_End, trio.abc.SendChannel[T]):
    """A sending end. Each clone is closed on its own; the reader sees the end of the
    channel once all of them are."""

    __slots__ = ("_channel",)

    def __init__(self, channel: Channel[T]) -> None:
        super().__init__()
        self._channel = channel
        channel._senders_open += 1

    @enable_ki_protection
    def send_nowait(self, value: T) -> None:
        if not self._handed(value):
            raise trio.WouldBlock

    def _handed(self, value: T) -> bool:
        if self._closed:
            raise trio.ClosedResourceError
        if not self._channel._receiver_open:
            raise trio.BrokenResourceError
        return self._channel._put(value)

    @enable_ki_protection
    async def send(self, value: T) -> None:
        """Waits without raising ``WouldBlock`` first: an exception on the way to a wait
        costs its raise and keeps the frame it passed through for as long as it waits."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._handed(value):
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        parked = _Waiting(trio.lowlevel.current_task(), value, self)
        self._channel._waiting.append(parked)
        await trio.lowlevel.wait_task_rescheduled(parked.abort)

    def reader_waiting(self) -> bool:
        """Whether the reader waits, so the next value sent is the next one it reads (it
        waits only with nothing buffered). ``trio.MemorySendChannel.statistics`` says as much
        with ``tasks_waiting_receive`` and ``current_buffer_used``."""
        return self._channel._receiving is not None

    @enable_ki_protection
    def clone(self) -> Sender[T]:
        if self._closed:
            raise trio.ClosedResourceError
        return Sender(self._channel)

    def _close(self) -> None:
        channel = self._channel
        if channel._waiting:
            mine = [parked for parked in channel._waiting if parked.sender is self]
            for parked in mine:
                channel._waiting.remove(parked)
                trio.lowlevel.reschedule(parked.task, Error(trio.ClosedResourceError()))
        channel._senders_open -= 1
        if not channel._senders_open and (task := channel._receiving) is not None:
            channel._receiving = None
            trio.lowlevel.reschedule(task, Error(trio.EndOfChannel()))


class Receiver(_End, trio.abc.ReceiveChannel[T]):
    """The one receiving end. Closing it breaks the channel for every sender: those waiting
    get ``BrokenResourceError`` and what was buffered is dropped, as with trio's."""

    __slots__ = ("_channel",)

    def __init__(self, channel: Channel[T]) -> None:
        super().__init__()
        self._channel = channel

    @enable_ki_protection
    def receive_nowait(self) -> T:
        taken, value = self._taken()
        if taken:
            return value        # type: ignore[return-value]  # a T whenever taken
        raise trio.WouldBlock

    def _taken(self) -> tuple[bool, T | None]:
        if self._closed:
            raise trio.ClosedResourceError
        taken, value = self._channel._take()
        if not taken and not self._channel._senders_open:
            raise trio.EndOfChannel
        return taken, value

    @enable_ki_protection
    async def receive(self) -> T:
        """Waits without raising ``WouldBlock`` first, as ``Sender.send`` does."""
        await trio.lowlevel.checkpoint_if_cancelled()
        taken, value = self._taken()
        if taken:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return value        # type: ignore[return-value]  # a T whenever taken
        channel = self._channel
        if channel._receiving is not None:
            raise trio.BusyResourceError("another task is already receiving on this channel")
        channel._receiving = trio.lowlevel.current_task()
        return await trio.lowlevel.wait_task_rescheduled(   # type: ignore[no-any-return]
            channel._stop_receiving)

    def _close(self) -> None:
        channel = self._channel
        channel._receiver_open = False
        if (task := channel._receiving) is not None:
            channel._receiving = None
            trio.lowlevel.reschedule(task, Error(trio.ClosedResourceError()))
        waiting, channel._waiting = channel._waiting, []
        for parked in waiting:
            trio.lowlevel.reschedule(parked.task, Error(trio.BrokenResourceError()))
        channel._buffered.clear()
