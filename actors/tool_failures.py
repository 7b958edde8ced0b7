"""Which of what a tool raised is the tool's own failure, told to the model, and which must go
on up; and how a failure is described to the model and placed for the developer.

A tool that opens a nursery of its own (two lookups at once) raises what the nursery raises:
an exception group, never a bare exception, so each rule holds for a group's leaves too.
"""

from __future__ import annotations

import traceback

# SystemExit too: a library written for the command line exits on its errors, and in a tool
# it would end the call, not the process. Not a Cancelled (the turn's or the call's: its
# cancel scope must see it) nor KeyboardInterrupt (the operator's Ctrl-C).
TOOL_FAILURES = (Exception, SystemExit)


def split(err: BaseException) -> tuple[BaseException | None, BaseException | None]:
    """(the tool's failures, the rest): a group mixing both is split, so a Cancelled goes up
    without the error beside it (left in, the cancel scope strips the Cancelled and the
    error ends the call) and an error does not carry a Ctrl-C into the model's answer."""
    if isinstance(err, BaseExceptionGroup):
        return err.split(TOOL_FAILURES)
    return (err, None) if isinstance(err, TOOL_FAILURES) else (None, err)


def holds(err: BaseException, kind: type[BaseException]) -> bool:
    """``err`` is ``kind``, or a group with one among its leaves."""
    if isinstance(err, BaseExceptionGroup):
        return err.subgroup(kind) is not None
    return isinstance(err, kind)


def described(err: BaseException) -> str:
    """``Type: message``; for an exception group (a nursery in the tool), its leaves', so
    the message the tool wrote for the model reaches it."""
    if isinstance(err, BaseExceptionGroup):
        return "; ".join(described(inner) for inner in err.exceptions)
    try:
        return f"{type(err).__name__}: {err}"
    except Exception as broken:     # its own __str__ raised: the type still says what failed
        return f"{type(err).__name__} (its message could not be read: {type(broken).__name__})"


def raised_at(err: BaseException) -> str:
    """``file:line in function`` where it was raised (an exception group's first leaf): the
    place, for the developer, and never the message, which may hold the caller's words."""
    while isinstance(err, BaseExceptionGroup) and err.exceptions:
        err = err.exceptions[0]
    frames = traceback.extract_tb(err.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""
