"""What a tool is: a function registered by name with ``@tool``, the context it runs with, and
how it behaves under barge-in.

The input schema is declared in the use case (a Bedrock ``toolSpec``); the code registers
here. Every tool, built-in or plugin, is a module-level function decorated with ``tool``: the
decorator records a ``ToolDefinition`` on a collector keyed by the function's module, and
``voiceagent.tools.plugins.build_registry`` takes each named module's definitions from it at
start-up. A use case naming a tool nobody registered fails at load time.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, MutableMapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, cast

import trio

from voiceagent.errors import ToolMessageRefused
from voiceagent.relay.outbound import Config, End, Hints, Language, Play, SendDigits
from voiceagent.threads import run_blocking
from voiceagent.tools.unawaited import Handouts
from voiceagent.usecases import MAX_TOOL_TIMEOUT_S, TOOL_NAME

if TYPE_CHECKING:
    from voiceagent.settings import Settings
    from voiceagent.store.base import Store
    from voiceagent.usecases import UseCase

ToolResult = dict[str, Any]           # a JSON object: Bedrock rejects arrays and scalars here

# What a tool may ask the relay writer to send. Not ``Text``: the model is the one who speaks,
# so a tool returns what should be said in its result instead.
ToolMessage = Play | SendDigits | Language | End | Config | Hints


class ToolLog(logging.LoggerAdapter[logging.Logger]):
    """A logger that puts the call and the tool on every entry, keeping the entry's own
    fields (the standard adapter would replace them)."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]
                ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolContext:
    """Everything a running tool may use; the same for built-in and plugin tools.

    Tools never see the socket: ``send`` asks the relay writer for a message. ``store`` and
    ``send`` are async: a blocking tool (in a worker thread) reaches them through
    ``trio.from_thread.run(ctx.send, message)``.
    """

    call_sid: str
    caller: str                       # E.164 From number ("" when unknown)
    called: str                       # E.164 To number ("" when unknown)
    use_case: UseCase                 # the call's use case; its name is ``use_case.name``
    tool_name: str
    tool_use_id: str                  # the model's id for this call of the tool
    store: Store                      # the service's store (async get / put / query_index)
    settings: Settings                # the process's settings (defaults in a settings-less test)
    log: ToolLog                      # entries carry call_sid, tool and tool_use_id
    _sender: Callable[[ToolMessage], Awaitable[bool]] = field(repr=False)
    # the executor's: holds each ``send`` until the tool is done, to name one never awaited
    _handouts: Handouts | None = field(default=None, repr=False)

    def send(self, message: ToolMessage) -> Coroutine[Any, Any, bool]:
        """Queue a ``Play``, ``SendDigits``, ``Language``, ``End``, ``Config`` or ``Hints``
        for the relay writer. Anything else (a ``Text``) raises ``ToolMessageRefused``, which
        the model sees as the tool's error. A ``Language`` naming the languages Twilio already
        speaks and hears (the automatic switch or an earlier tool set them) is not sent: the
        call keeps one record of them, shared with the automatic switch.

        False: a ``Play`` or ``SendDigits`` was withheld, since the caller had cut off the
        turn that called the tool (Twilio dropped what was queued then; sent now, it would
        start over the caller's words), or since the call's ``end`` had gone out (nothing
        follows it), or since the tool's own call had ended before the writer took it (a
        blocking tool's timeout: its thread runs on). Nothing reached the caller: say so in
        the result, so the model asks before trying again. A tool that does not look still
        runs to its end.

        A plain def returning the coroutine, so the executor can hold it: one never awaited
        (a forgotten ``await``) fails the tool, naming it, instead of sending nothing."""
        sending = self._send(message)
        return self._handouts.track("ctx.send(...)", sending) if self._handouts else sending

    async def _send(self, message: ToolMessage) -> bool:
        if not isinstance(message, ToolMessage):
            raise ToolMessageRefused(self.tool_name, (
                f"a tool cannot send {type(message).__name__}: only the model speaks to the "
                "caller; return what should be said in the tool's result instead"))
        return await self._sender(message)


ToolFunction = Callable[[ToolContext, Mapping[str, Any]], Awaitable[ToolResult]]
BlockingToolFunction = Callable[[ToolContext, Mapping[str, Any]], ToolResult]


@dataclass(frozen=True, slots=True)
class ToolDefinition:
    name: str
    function: ToolFunction | BlockingToolFunction
    side_effect: bool = False         # True: shielded from barge-in, runs once per toolUseId
    timeout_s: float = 10.0
    ends_turn: bool = False           # True: the model is not called again after it (endCall)
    blocking: bool = False            # True: a plain def, run in a worker thread
    plays_audio: bool = False         # True: it sends the caller audio itself (no filler asked)
    instant: bool = False             # True: it answers at once, waiting on nothing (no filler)

    def __post_init__(self) -> None:
        """The same checks ``@tool`` makes, for a definition built directly (a test's, a
        plugin's own registry): a name Bedrock refuses failed only as the use case loaded,
        and ``timeout_s="5"`` or ``side_effect="no"`` only in a live call."""
        _check_name(self.name)
        _check_options(self.name, self.timeout_s, side_effect=self.side_effect,
                       ends_turn=self.ends_turn, blocking=self.blocking,
                       plays_audio=self.plays_audio, instant=self.instant)
        is_async = inspect.iscoroutinefunction(self.function)
        if inspect.isasyncgenfunction(self.function):
            raise TypeError(f"tool {self.name!r} is an async generator (it yields): a tool "
                            "returns one dict; return it instead of yielding")
        if self.blocking and is_async:
            raise TypeError(f"tool {self.name!r} is an async def with blocking=True: drop "
                            "blocking (it runs on trio), or make it a plain def")
        if not self.blocking and not is_async:
            raise TypeError(f"tool {self.name!r} is a plain def: make it an async def, or "
                            "pass blocking=True to run it in a worker thread")
        try:
            inspect.signature(self.function).bind(None, None)
        except TypeError:
            raise TypeError(f"tool {self.name!r} is called as function(ctx, args): give it "
                            "those two parameters (ctx: ToolContext, args: Mapping[str, Any])"
                            ) from None
        except ValueError:              # no signature to read (a builtin): called as is
            pass

    async def call(self, context: ToolContext, args: Mapping[str, Any], *,
                   threads: trio.CapacityLimiter) -> object:
        """Run the function: awaited on trio, or, when ``blocking``, in a worker thread taken
        from ``threads``. A cancelled blocking tool (its timeout, a barge-in) is abandoned:
        its thread runs on to its end, holding its token of ``threads`` until then."""
        if self.blocking:
            function = cast(BlockingToolFunction, self.function)
            return await run_blocking(partial(function, context, args), limiter=threads,
                                      abandon_on_cancel=True)
        return await cast(ToolFunction, self.function)(context, args)


# ------------------------------------------------------------------ the decorator

F = TypeVar("F", bound=Callable[..., Any])

# module name -> tool name -> (function's qualified name, definition). Filled as modules are
# imported; read by ``tools_defined_in``. A module imported again replaces its own entries.
_COLLECTED: dict[str, dict[str, tuple[str, ToolDefinition]]] = {}


def tool(name: str, *, side_effect: bool = False, timeout_s: float = 10.0,
         ends_turn: bool = False, blocking: bool = False,
         plays_audio: bool = False, instant: bool = False) -> Callable[[F], F]:
    """Register the decorated function as the tool ``name``; returns it unchanged.

    ``side_effect``: it changes the world, so it runs once per toolUseId and a barge-in does
    not cut it. ``timeout_s``: the limit unless the use case sets its own. ``ends_turn``: the
    model is not called again after it (it ended the call). ``blocking``: a plain ``def`` run
    in a worker thread (TOOL_THREADS of them); otherwise an ``async def`` run on trio.
    ``plays_audio``: it sends the caller audio (``Play``) or keys itself as it starts, which
    fills the wait a ``filler`` is for; only ``voiceagent check`` reads it (the call itself
    sees the ``Play`` go out), so its note on slow tools without a filler leaves it out.
    ``instant``: it answers at once from what the process has, waiting on no service, store
    or thread (``switchLanguage`` queues a message and returns): its ``timeout_s`` is a
    guard, not a wait a caller could hear, so that note leaves it out too; only ``voiceagent
    check`` reads it.
    Mistakes (a bad name, an async/plain mismatch, a name used twice in one module) raise
    when the module is imported.
    """
    if not isinstance(name, str):
        function = getattr(name, "__qualname__", type(name).__name__)
        raise TypeError(f"@tool needs the tool's name, as the use case declares it: "
                        f"@tool(\"ToolName\") above {function}, not a bare @tool")
    _check_name(name)
    _check_options(name, timeout_s, side_effect=side_effect, ends_turn=ends_turn,
                   blocking=blocking, plays_audio=plays_audio, instant=instant)

    def decorate(function: F) -> F:
        if not (isinstance(getattr(function, "__qualname__", None), str)
                and isinstance(getattr(function, "__module__", None), str)):
            # a functools.partial or a callable object: its module is not the one that
            # registers it (a partial's is "functools"), so TOOLS would find no tool there
            raise TypeError(f"tool {name!r}: @tool registers a function written with def or "
                            f"async def, not a {type(function).__name__} object; write a small "
                            "function that calls it")
        definition = ToolDefinition(name, function, side_effect=side_effect,
                                    timeout_s=timeout_s, ends_turn=ends_turn, blocking=blocking,
                                    plays_audio=plays_audio, instant=instant)
        module = _COLLECTED.setdefault(function.__module__, {})
        earlier = module.get(name)
        if earlier is not None and earlier[0] != function.__qualname__:
            raise ValueError(f"tool {name!r} is registered twice in {function.__module__}: "
                             f"by {earlier[0]} and by {function.__qualname__}")
        module[name] = (function.__qualname__, definition)
        return function
    return decorate


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not TOOL_NAME.match(name):
        raise ValueError(f"tool name {name!r}: 1-64 of a-z A-Z 0-9 _ - (Bedrock's rule)")


def _check_options(name: str, timeout_s: object, **flags: object) -> None:
    """Options of the wrong type: a timeout read from the environment is a str, which
    failed as "'>' not supported between instances of 'str' and 'int'", and one of
    ``math.inf`` let a hung side-effect tool hold its call open for good."""
    if (isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float)
            or not 0 < timeout_s <= MAX_TOOL_TIMEOUT_S):
        raise ValueError(f"tool {name!r}: timeout_s must be a number of seconds, more than 0 "
                         f"and at most {MAX_TOOL_TIMEOUT_S:g}, not {timeout_s!r}"
                         + (" (convert it with float())" if isinstance(timeout_s, str) else ""))
    for option, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"tool {name!r}: {option} must be True or False, not {value!r}")


def modules_defining(name: str) -> list[str]:
    """The imported modules with a ``@tool(name)``: one that no TOOLS module covers (a
    sibling the TOOLS module imports) registers nothing, and is what to add to TOOLS."""
    return [module for module, tools in list(_COLLECTED.items())
            if any(definition.name == name for _, definition in tools.values())]


def tools_defined_in(module: str) -> tuple[ToolDefinition, ...]:
    """Definitions ``@tool`` recorded in ``module`` or its submodules (a package may spread
    its tools over files), in the order they were defined, module by module."""
    return tuple(definition for name, tools in list(_COLLECTED.items())
                 if name == module or name.startswith(module + ".")
                 for _, definition in tools.values())
